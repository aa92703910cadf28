//! Background work is the service's (`sluice_service::background` and
//! `sluice_service::payments`); this is the entry point the tests call at the
//! gateway's path.

pub use sluice_service::background::reconcile_abandoned;
