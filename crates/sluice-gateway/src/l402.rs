//! L402 pay-per-request on the wire: an unauthenticated paid request is
//! answered `402` with a Lightning invoice for its estimated cost and an
//! Aperture-layout macaroon; the retry `Authorization: L402 <macaroon>:<preimage>`
//! is served. Tokens (prepaid balances stored as sessions) and challenges are
//! the service's (`sluice_service::l402`).

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sluice_proto::l402;
use sluice_service::chat::PayFirst;

pub use sluice_service::l402::root_key_name;

use crate::{error::ApiError, state::AppState, views};

/// Answer 402 with a challenge for what `p` asks (see `Sluice::l402_challenge`):
/// a new token, or a top-up of the token presented.
///
/// Every challenge writes an invoice (and a root key) for a caller who has
/// not paid, so it is limited per client IP (`server.public_rate_per_minute`)
/// whatever credential came with the request: a request without one is
/// counted by the route's limiter, and an exhausted token asking for a
/// top-up is counted here.
pub async fn challenge(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    p: PayFirst,
) -> Result<Response, ApiError> {
    if p.token.is_some()
        && let Err(wait) = state.limiter.check(ip)
    {
        let why = format!("too many payment challenges from this client; retry in {wait} s");
        return Ok(crate::ratelimit::too_many(wait, why));
    }
    let c = state
        .sluice
        .l402_challenge(p.amount, p.token, p.pubkey, p.presented.as_ref())
        .await?;
    let body = views::payment_required(&state.sluice, &c, p.why);
    let mut r = (StatusCode::PAYMENT_REQUIRED, Json(body)).into_response();
    let headers = (c.macaroon.as_ref()).map(|(m, _)| l402::challenge_headers(m, &c.invoice.bolt11));
    for h in headers.into_iter().flatten() {
        if let Ok(v) = HeaderValue::from_str(&h) {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    Ok(r)
}
