//! L402 pay-per-request: an unauthenticated paid request is answered `402`
//! with a Lightning invoice for its estimated cost and an Aperture-layout
//! macaroon; the retry `Authorization: L402 <macaroon>:<preimage>` is served.
//!
//! A token is a prepaid balance: it is stored as a session (`l402_<token id>`)
//! so holds, settlement and the ledger are exactly those of sessions. What a
//! request does not use stays on the token for the next one. A token whose
//! balance is too low gets a fresh 402 whose invoice tops up the same token,
//! with a new macaroon for the new payment hash (so clients that retry with
//! the new invoice's preimage, as deployed clients do, work unchanged).
//! Root keys are random per macaroon and stored under `sha256(identifier)`;
//! deleting one revokes that macaroon.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use sluice_core::Msat;
use sluice_proto::{
    l402::{self, Identifier, L402Error},
    macaroon::MacaroonError,
};
use sluice_store::{InvoicePurpose, InvoiceState, NewSession, StoreError};

use crate::{
    auth::Payer,
    error::ApiError,
    sessions::{invoice_json, invoice_row, lightning_error, ms},
    state::AppState,
};

/// The service name in `services=` and the prefix of `_capabilities`/`_valid_until`.
pub const SERVICE: &str = "sluice";
/// The capability chat completions need.
pub const CAPABILITY_CHAT: &str = "chat";
use sluice_service::TOKEN_SESSION_PREFIX as SESSION_PREFIX;

/// The balance (session) id of a token.
pub fn token_session(token_id: &[u8; 32]) -> String {
    format!("{SESSION_PREFIX}{}", hex::encode(token_id))
}

pub use sluice_service::is_token_session;

/// The store name of a macaroon's root key.
pub fn root_key_name(id: &Identifier) -> String {
    format!("l402:{}", hex::encode(id.key_id()))
}

fn unix(now_ms: i64) -> u64 {
    u64::try_from(now_ms / 1000).unwrap_or(0)
}

/// Issue a 402 challenge for `amount`: a new token (bound to `pubkey`, the
/// identity presented, if any), or a top-up of `token`.
///
/// Every challenge writes an invoice (and a root key) for a caller who has
/// not paid, so it is limited per client IP (`server.public_rate_per_minute`)
/// whatever credential came with the request: a request without one is
/// counted by the route's limiter, and an exhausted token asking for a
/// top-up is counted here.
///
/// A top-up asked for through a **restricted** credential (a spend cap or a
/// model list: a delegate's) mints no new macaroon: a fresh one would carry
/// none of the delegate's caveats and so hand it the whole balance. Its
/// invoice still tops up the token, and the delegate retries with the
/// credential it has. A top-up macaroon never outlives the credential that
/// asked for it (an expiry caveat narrows it too).
pub async fn challenge(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    amount: Msat,
    token: Option<[u8; 32]>,
    pubkey: Option<String>,
    why: &str,
    presented: Option<&Payer>,
) -> Result<Response, ApiError> {
    let restricted = presented.is_some_and(|p| !p.is_unrestricted());
    if token.is_some()
        && let Err(wait) = state.limiter.check(ip)
    {
        return Ok(crate::ratelimit::too_many(
            wait,
            format!("too many payment challenges from this client; retry in {wait} s"),
        ));
    }
    let sats = amount.to_sats_ceil().max(1);
    let amount = Msat::from_sats(sats).map_err(|e| ApiError::internal(&e))?;
    let inv = state
        .lightning
        .create_invoice(amount, "sluice L402 token", state.invoice_expiry)
        .await
        .map_err(lightning_error)?;
    let now = state.now_ms();
    let token_id = token.unwrap_or_else(|| {
        let mut id = [0u8; 32];
        state.ids.fill(&mut id);
        id
    });
    let session_id = token_session(&token_id);
    match token {
        None => {
            let row = invoice_row(&inv, InvoicePurpose::Deposit, &session_id, now);
            state
                .store
                .create_session(
                    &NewSession {
                        id: session_id.clone(),
                        created_at_ms: now,
                        expires_at_ms: ms(inv.expires_at),
                        pubkey,
                    },
                    &row,
                )
                .await?;
        }
        Some(_) => {
            state
                .store
                .add_invoice(&invoice_row(&inv, InvoicePurpose::Topup, &session_id, now))
                .await?
        }
    }
    if restricted {
        tracing::info!(token = %session_id, amount_sats = sats, "L402 top-up invoice issued to a restricted credential");
        let body = json!({
            "error": {
                "message": format!("{why}: pay the invoice to top the token up, then retry with the credential you have (a restricted credential gets no new macaroon)"),
                "type": "insufficient_quota",
                "code": "payment_required",
            },
            "l402": {"invoice": invoice_json(state, &inv)},
        });
        return Ok((StatusCode::PAYMENT_REQUIRED, Json(body)).into_response());
    }
    let id = Identifier {
        payment_hash: inv.payment_hash.0,
        token_id,
    };
    let root = state
        .store
        .secret(&root_key_name(&id), sluice_env::secret())
        .await?;
    let valid_until = unix(now)
        .saturating_add(state.l402.valid_secs)
        .min(presented.and_then(|p| p.valid_until).unwrap_or(u64::MAX));
    let mac = l402::mint(&root, &id, SERVICE, &[CAPABILITY_CHAT], valid_until).to_base64();
    tracing::info!(token = %session_id, amount_sats = sats, topup = token.is_some(), "L402 challenge issued");
    let body = json!({
        "error": {
            "message": format!("{why}: pay the invoice, then retry with Authorization: L402 <macaroon>:<preimage>"),
            "type": "insufficient_quota",
            "code": "payment_required",
        },
        "l402": {"macaroon": mac, "invoice": invoice_json(state, &inv), "valid_until": valid_until},
    });
    let mut r = (StatusCode::PAYMENT_REQUIRED, Json(body)).into_response();
    for h in l402::challenge_headers(&mac, &inv.bolt11) {
        if let Ok(v) = HeaderValue::from_str(&h) {
            r.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
    }
    Ok(r)
}

fn l402_error(e: L402Error) -> ApiError {
    match e {
        L402Error::Expired { .. } => {
            ApiError::unauthorized("credential_expired", "this L402 token has expired")
        }
        L402Error::Caveat(m) => ApiError::forbidden("caveat_not_satisfied", m),
        L402Error::Macaroon(MacaroonError::BadSignature) => {
            ApiError::unauthorized("invalid_credential", "invalid L402 token: bad signature")
        }
        other => {
            ApiError::unauthorized("invalid_credential", format!("invalid L402 token: {other}"))
        }
    }
}

/// Verify `Authorization: L402|LSAT <macaroon>:<preimage>` in Aperture's order,
/// and credit the invoice the preimage proves paid (idempotent).
pub async fn authenticate(state: &AppState, header: &str) -> Result<Payer, ApiError> {
    let (m, preimage) = l402::parse_authorization(header).map_err(l402_error)?;
    let id = l402::check_preimage(&m, &preimage).map_err(l402_error)?;
    let root = state
        .store
        .secret_get(&root_key_name(&id))
        .await?
        .ok_or_else(|| l402_error(L402Error::UnknownToken))?;
    let now = state.now_ms();
    let claims =
        l402::verify(&m, id, &root, SERVICE, CAPABILITY_CHAT, unix(now)).map_err(l402_error)?;
    let session_id = token_session(&id.token_id);
    // Only the payer (and we) can know the preimage once the invoice is paid:
    // it proves payment, so the token is usable even before the backend's
    // settlement event arrives.
    let hash = hex::encode(id.payment_hash);
    match state.store.invoice(&hash).await? {
        None => return Err(l402_error(L402Error::UnknownToken)),
        Some(inv) if inv.state == InvoiceState::Settled => {}
        // A read first: only the first use of each payment needs a write.
        Some(_) => {
            match state
                .store
                .credit_invoice(
                    &hash,
                    &hex::encode(preimage),
                    now,
                    &state.policy_for(&session_id),
                )
                .await
            {
                Ok(_) => {}
                Err(StoreError::NotFound) => return Err(l402_error(L402Error::UnknownToken)),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Payer {
        session_id,
        models: claims.models,
        spend_caps: claims.spend_caps,
        l402_token: Some(id.token_id),
        valid_until: claims.valid_until,
    })
}
