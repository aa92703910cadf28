//! sluice's wire formats: macaroons (libmacaroons-compatible), the session
//! credential, and L402 as deployed by Aperture.

pub mod l402;
pub mod macaroon;
