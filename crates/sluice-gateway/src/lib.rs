//! The sluice gateway: an OpenAI-compatible HTTP API whose requests are paid
//! in sats from pre-funded sessions over Lightning. It is HTTP only: every
//! decision is the service's (`sluice_service::Sluice`).
//!
//! Where a sat enters: a deposit invoice settles → `sluice_service::payments::credit`.
//! Where it is held and where it leaves the payer: `Sluice::chat`, called by [`chat`].

pub mod app;
pub mod auth;
pub mod chat;
pub mod error;
pub mod extract;
pub mod free;
pub mod health;
pub mod identity;
pub mod jobs;
pub mod l402;
pub mod limiter;
pub mod pricing;
pub mod ratelimit;
pub mod refunds;
pub mod server;
pub mod sessions;
pub mod state;
pub mod testing;
pub mod views;
pub mod wiring;

// The service layer's modules, at the paths the gateway has always had.
pub use sluice_service::{config, estimates, oracle, request, tokens, upstream};

pub use app::{app, serve};
pub use config::Config;
pub use state::AppState;
pub use wiring::{BuildError, Env, build_state, build_state_with, build_state_with_store};
