//! The sluice gateway: an OpenAI-compatible HTTP API whose requests are paid
//! in sats from pre-funded sessions over Lightning.
//!
//! Where a sat enters: a deposit invoice settles → [`background::credit`].
//! Where it is held: [`chat`] takes a hold before calling the upstream.
//! Where it leaves the payer: [`chat`] settles the hold at the actual cost.

pub mod app;
pub mod auth;
pub mod background;
pub mod chat;
pub mod config;
pub mod error;
pub mod estimates;
pub mod extract;
pub mod free;
pub mod health;
pub mod identity;
pub mod jobs;
pub mod l402;
pub mod oracle;
pub mod pricing;
pub mod ratelimit;
pub mod refunds;
pub mod request;
pub mod server;
pub mod sessions;
pub mod state;
pub mod testing;
pub mod tokens;
pub mod upstream;
pub mod wiring;

pub use app::{app, serve};
pub use config::Config;
pub use state::AppState;
pub use wiring::{BuildError, Env, build_state, build_state_with, build_state_with_store};
