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
use serde_json::json;
use sluice_core::Msat;
use sluice_proto::l402;

pub use sluice_service::l402::root_key_name;

use sluice_service::auth::Payer;

use crate::{error::ApiError, sessions::invoice_json, state::AppState};

/// Issue a 402 challenge for `amount` (see `Sluice::l402_challenge`): a new
/// token, or a top-up of `token`.
///
/// Every challenge writes an invoice (and a root key) for a caller who has
/// not paid, so it is limited per client IP (`server.public_rate_per_minute`)
/// whatever credential came with the request: a request without one is
/// counted by the route's limiter, and an exhausted token asking for a
/// top-up is counted here.
pub async fn challenge(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    amount: Msat,
    token: Option<[u8; 32]>,
    pubkey: Option<String>,
    why: &str,
    presented: Option<&Payer>,
) -> Result<Response, ApiError> {
    if token.is_some()
        && let Err(wait) = state.limiter.check(ip)
    {
        return Ok(crate::ratelimit::too_many(
            wait,
            format!("too many payment challenges from this client; retry in {wait} s"),
        ));
    }
    let c = state
        .l402_challenge(amount, token, pubkey, presented)
        .await?;
    let Some((mac, valid_until)) = c.macaroon else {
        let body = json!({
            "error": {
                "message": format!("{why}: pay the invoice to top the token up, then retry with the credential you have (a restricted credential gets no new macaroon)"),
                "type": "insufficient_quota",
                "code": "payment_required",
            },
            "l402": {"invoice": invoice_json(state, &c.invoice)},
        });
        return Ok((StatusCode::PAYMENT_REQUIRED, Json(body)).into_response());
    };
    let body = json!({
        "error": {
            "message": format!("{why}: pay the invoice, then retry with Authorization: L402 <macaroon>:<preimage>"),
            "type": "insufficient_quota",
            "code": "payment_required",
        },
        "l402": {"macaroon": mac, "invoice": invoice_json(state, &c.invoice), "valid_until": valid_until},
    });
    let mut r = (StatusCode::PAYMENT_REQUIRED, Json(body)).into_response();
    for h in l402::challenge_headers(&mac, &c.invoice.bolt11) {
        if let Ok(v) = HeaderValue::from_str(&h) {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    Ok(r)
}

/// Verify `Authorization: L402|LSAT <macaroon>:<preimage>` (see `Sluice::l402_authenticate`).
pub async fn authenticate(state: &AppState, header: &str) -> Result<Payer, ApiError> {
    Ok(state.l402_authenticate(header).await?)
}
