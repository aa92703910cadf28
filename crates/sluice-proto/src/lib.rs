//! sluice's wire formats: macaroons (libmacaroons-compatible), the session and identity
//! credentials, L402 as deployed by Aperture, and the Nostr formats used for identity.

pub mod api;
pub mod l402;
pub mod macaroon;
pub mod market;
pub mod nostr;
pub mod openai;

pub use nostr::{Event as NostrEvent, Keys as NostrKeys, NostrError};
