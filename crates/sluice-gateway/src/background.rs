//! Background work is the service's (`sluice_service::background` and
//! `sluice_service::payments`); these are its entry points at the gateway's
//! paths.

use crate::state::AppState;

pub use sluice_service::{
    background::{Heartbeat, heartbeat_every, reconcile_abandoned},
    invoices::{EXPIRY_GRACE_MS, past_expiry_grace},
};

/// Credit one settled invoice (idempotent): `sluice_service::payments::credit`.
pub async fn credit(state: &AppState, hash: &sluice_lightning::PaymentHash, preimage_hex: &str) {
    sluice_service::payments::credit(&state.sluice, hash, preimage_hex).await;
}

/// Look up every pending invoice once: `sluice_service::payments::poll_pending`.
pub async fn poll_pending(state: &AppState) {
    sluice_service::payments::poll_pending(&state.sluice).await;
}
