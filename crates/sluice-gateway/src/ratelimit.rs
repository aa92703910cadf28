//! Rate limits on unauthenticated endpoints (session creation and dev
//! payments create invoices, so they are worth abusing): the middleware and
//! its 429. The counter itself is [`crate::limiter`].

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

pub use crate::limiter::{RateLimiter, client_ip, client_key};
use crate::{error::ApiError, state::AppState};

/// Middleware applying the limiter only to requests without payment
/// credentials (an unauthenticated paid request creates an L402 invoice and
/// token). A Nostr identity is not a payment credential: anyone can make keys.
pub async fn limit_anonymous(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let paying = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !crate::auth::is_nostr_auth(v));
    if paying {
        return next.run(req).await;
    }
    limit(State(state), req, next).await
}

/// Middleware applying the limiter.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let ip = client_ip(&req);
    match state.limiter.check(ip) {
        Ok(()) => next.run(req).await,
        Err(wait) => too_many(wait, format!("too many requests; retry in {wait} s")),
    }
}

/// A 429 with `Retry-After: wait` and `message`.
pub fn too_many(wait: u64, message: String) -> Response {
    let mut r = ApiError::rate_limited(message).into_response();
    if let Ok(v) = wait.to_string().parse() {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    r
}
