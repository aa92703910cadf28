//! The gateway's state: the service and what only HTTP needs.

use std::{sync::Arc, time::Duration};

use crate::limiter::RateLimiter;

pub use sluice_service::{ModelEntry, Sluice};

/// Everything a handler needs: the service, and the HTTP-only parts
/// (limiters, CORS, body and connection limits, the health cache).
#[derive(Clone)]
pub struct AppState {
    /// The service.
    pub sluice: Arc<Sluice>,
    /// Per-IP limiter for unauthenticated endpoints.
    pub limiter: Arc<RateLimiter>,
    /// Per-IP limiter of NIP-98 signed requests.
    pub nip98_limiter: Arc<RateLimiter>,
    /// Per-IP hourly limiter of the demo endpoint.
    pub demo_limiter: Arc<RateLimiter>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Browser origins allowed by CORS (`*`: any; empty: none).
    pub cors_origins: Vec<String>,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// Time allowed for a request's body.
    pub body_timeout: Duration,
    /// The last `/healthz` answer.
    pub health: Arc<HealthCache>,
}

/// Connection limits and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed for a request's headers (and an idle keep-alive connection).
    pub header_timeout: Duration,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one client (IPv6: one /64).
    pub per_ip: usize,
    /// Largest header block hyper buffers; larger is answered 431 by hyper itself.
    pub max_header_buffer: usize,
}

/// The last answer of `/healthz`.
#[derive(Default)]
pub struct HealthCache {
    pub(crate) last: std::sync::Mutex<
        Option<(
            sluice_env::Stopwatch,
            axum::http::StatusCode,
            sluice_proto::api::Health,
        )>,
    >,
}
