//! Paying refunds: a payer claims what they are owed with an invoice of
//! their own for exactly its amount, and it is paid once.
//!
//! The claim moves the refund to `paying` (in the store, under the core's
//! state machine) before any payment is sent, so a second claim is refused
//! with the first invoice's payment hash. The payment and the record of its
//! outcome run in a tracked task, so a client that hangs up cannot leave the
//! outcome unrecorded: success → `claimed`; a definite failure → claimable
//! again; an unknown outcome stays `paying` until a look-up settles it.
//!
//! Jobs (`POST /v1/jobs/{id}/refund`), sessions (`POST /v1/sessions/{id}/close`
//! then `/refund`) and L402 tokens (`POST /v1/l402/refund`, with the token or
//! just the preimage of the invoice that bought it) all claim here.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use sluice_core::{Msat, RefundError, RefundEvent};
use sluice_lightning::{LightningError, bolt11};
use sluice_store::{RefundEventError, RefundRow, StoreError};

use crate::{
    auth::authenticate_for,
    error::ApiError,
    state::{AppState, now_ms},
};

/// Body of a refund claim.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// A BOLT11 invoice for exactly the refund.
    pub invoice: String,
}

fn refund_error(e: RefundError) -> ApiError {
    match e {
        RefundError::WrongAmount { .. } => ApiError::bad_request("wrong_amount", e.to_string()),
        RefundError::AlreadyClaimed { .. } | RefundError::PayoutInFlight { .. } => {
            ApiError::conflict("refund_already_claimed", e.to_string())
        }
        RefundError::Expired { .. } => ApiError {
            status: StatusCode::GONE,
            kind: "invalid_request_error",
            code: "refund_expired",
            message: e.to_string(),
        },
        other => ApiError::bad_request("nothing_to_refund", other.to_string()),
    }
}

/// The refund as clients see it.
pub fn refund_json(r: &RefundRow) -> Value {
    json!({
        "refund_id": r.id,
        "state": r.refund.state.as_str(),
        "amount_msat": r.refund.amount.msat(),
        "payout_sats": r.refund.payout_sats(),
        "expires_at": r.refund.expires_at_ms / 1000,
        "payment_hash": r.refund.payment_hash,
    })
}

/// Claim refund `refund_id` with `invoice` and pay it, once.
pub async fn claim(state: &AppState, refund_id: &str, invoice: &str) -> Result<Response, ApiError> {
    let invoice = invoice.trim();
    let inv = bolt11::decode(invoice)
        .map_err(|e| ApiError::bad_request("invalid_invoice", e.to_string()))?;
    let amount = inv.amount.ok_or_else(|| {
        ApiError::bad_request("invalid_invoice", "the invoice must state its amount")
    })?;
    let hash = inv.payment_hash.to_hex();
    let claim = RefundEvent::Claim {
        invoice_amount: amount,
        invoice_hash: hash.clone(),
        now_ms: now_ms(),
    };
    match state.store.refund_event(refund_id, claim).await {
        Ok(_) => {}
        Err(RefundEventError::Refused(RefundError::AlreadyClaimed { payment_hash })) => {
            let body = json!({
                "error": {"message": format!("this refund was already claimed by invoice {payment_hash}"), "type": "invalid_request_error", "code": "refund_already_claimed"},
                "payment_hash": payment_hash,
            });
            return Ok((StatusCode::CONFLICT, Json(body)).into_response());
        }
        Err(RefundEventError::Refused(RefundError::Expired { expires_at_ms })) => {
            // Late: the payout goes to the pool now, in its own step.
            let _ = state
                .store
                .refund_event(refund_id, RefundEvent::Expire { now_ms: now_ms() })
                .await;
            return Err(refund_error(RefundError::Expired { expires_at_ms }));
        }
        Err(RefundEventError::Refused(e)) => return Err(refund_error(e)),
        Err(RefundEventError::Store(StoreError::NotFound)) => {
            return Err(ApiError::not_found("refund_not_found", "no such refund"));
        }
        Err(RefundEventError::Store(e)) => return Err(e.into()),
    }
    // Now `paying` this invoice: no other claim can start a payout.
    let max_fee = Msat::from_msat((amount.msat() / 100).max(10_000));
    let (s, rid, bolt11) = (state.clone(), refund_id.to_owned(), invoice.to_owned());
    let handle = state.tasks.spawn(async move {
        let (status, event, body) = match s.lightning.pay_invoice(&bolt11, max_fee).await {
            Ok(p) => (
                StatusCode::OK,
                RefundEvent::PayoutSucceeded { payment_hash: hash.clone(), preimage: p.preimage.to_hex() },
                json!({"state": "claimed", "payment_hash": hash, "preimage": p.preimage.to_hex(), "amount_sats": amount.to_sats_floor()}),
            ),
            Err(e @ (LightningError::InvalidInvoice(_) | LightningError::Expired | LightningError::InsufficientBalance | LightningError::NotFound)) => (
                StatusCode::BAD_GATEWAY,
                RefundEvent::PayoutFailed { payment_hash: hash.clone() },
                json!({"error": {"message": format!("the payout failed and nothing was paid ({e}); claim again with a new invoice"), "type": "upstream_error", "code": "payout_failed"}}),
            ),
            Err(e) => (
                StatusCode::ACCEPTED,
                RefundEvent::PayoutUnknown { payment_hash: hash.clone() },
                json!({"state": "paying", "payment_hash": hash, "message": format!("the payout's outcome is not known yet ({e}); it will not be paid twice")}),
            ),
        };
        if let Err(e) = s.store.refund_event(&rid, event).await {
            tracing::error!(refund_id = %rid, error = %e, "could not record a payout outcome");
        }
        (status, body)
    });
    let (status, body) = handle.await.map_err(|e| ApiError::internal(&e))?;
    Ok((status, Json(body)).into_response())
}

/// Settle payouts whose outcome was never recorded (unknown, or the gateway
/// stopped mid-payout) by looking the payment up: paid → `claimed`; failed or
/// never attempted → claimable again; still in flight → look again later.
/// Only payouts quiet for the staleness window are looked at, so a payment
/// still being sent is not mistaken for one that was never made.
pub async fn reconcile(state: &AppState) {
    let quiet_since = now_ms() - i64::try_from(state.stale_after.as_millis()).unwrap_or(i64::MAX);
    let Ok(paying) = state.store.paying_refunds(quiet_since).await else {
        return;
    };
    for r in paying {
        let Some(hash) = r.refund.payment_hash.clone() else {
            continue;
        };
        let Ok(h) = sluice_lightning::PaymentHash::from_hex(&hash) else {
            continue;
        };
        let event = match state.lightning.lookup_payment(&h).await {
            Ok(sluice_lightning::PaymentStatus::Succeeded { preimage, .. }) => {
                RefundEvent::PayoutSucceeded {
                    payment_hash: hash,
                    preimage: preimage.to_hex(),
                }
            }
            Ok(
                sluice_lightning::PaymentStatus::Failed | sluice_lightning::PaymentStatus::NotFound,
            ) => RefundEvent::PayoutFailed { payment_hash: hash },
            Ok(sluice_lightning::PaymentStatus::Pending) => continue,
            Err(e) => {
                tracing::warn!(refund_id = %r.id, error = %e, "could not look a payout up");
                continue;
            }
        };
        match state.store.refund_event(&r.id, event).await {
            Ok(row) => {
                tracing::info!(refund_id = %r.id, state = row.refund.state.as_str(), "payout reconciled")
            }
            Err(e) => {
                tracing::warn!(refund_id = %r.id, error = %e, "could not record a reconciled payout")
            }
        }
    }
}

fn refund_expiry(state: &AppState) -> i64 {
    now_ms().saturating_add(
        i64::try_from(state.jobs.refund_expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
    )
}

/// Close a balance (session or L402 token) and return its refund, if any.
async fn close(state: &AppState, session_id: &str) -> Result<Option<RefundRow>, ApiError> {
    match state
        .store
        .close_session(
            session_id,
            now_ms(),
            refund_expiry(state),
            Msat::from_msat(state.jobs.dust_msat),
        )
        .await
    {
        Ok(r) => Ok(r),
        Err(StoreError::Conflict(m)) => Err(ApiError::conflict("cannot_close", m)),
        Err(StoreError::NotFound) => {
            Err(ApiError::not_found("session_not_found", "no such session"))
        }
        Err(e) => Err(e.into()),
    }
}

/// The refund of a closed balance that can still be claimed.
async fn open_refund(state: &AppState, owner: &str) -> Result<RefundRow, ApiError> {
    let all = state.store.refunds_for(owner).await?;
    all.into_iter().next().ok_or_else(|| {
        ApiError::bad_request(
            "nothing_to_refund",
            "nothing is owed; close the balance first (POST …/close)",
        )
    })
}

/// `POST /v1/sessions/{id}/close` (bearer): end the session; its balance becomes a refund.
pub async fn close_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate_for(
        &state,
        &headers,
        &id,
        u64::try_from(now_ms() / 1000).unwrap_or(0),
    )?;
    let refund = close(&state, &id).await?;
    tracing::info!(session_id = %id, refund = refund.is_some(), "session closed");
    Ok(Json(json!({
        "session_id": id,
        "state": "closed",
        "refund": refund.as_ref().map(refund_json),
        "claim": refund.as_ref().map(|r| format!("POST /v1/sessions/{id}/refund {{\"invoice\": \"<bolt11 for exactly {} sats>\"}}", r.refund.payout_sats())),
    })))
}

/// `POST /v1/sessions/{id}/refund` (bearer): claim the closed session's refund.
pub async fn claim_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ClaimBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    authenticate_for(
        &state,
        &headers,
        &id,
        u64::try_from(now_ms() / 1000).unwrap_or(0),
    )?;
    let Json(b) = body?;
    let r = open_refund(&state, &id).await?;
    claim(&state, &r.id, &b.invoice).await
}

/// Body of an L402 refund: the invoice to pay, and (without an L402
/// `Authorization`) the preimage of the invoice that bought the token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L402RefundBody {
    /// A BOLT11 invoice for exactly the refund.
    pub invoice: String,
    /// Hex preimage proving payment of the token's first invoice (refund by preimage).
    pub preimage: Option<String>,
}

/// `POST /v1/l402/refund`: close an L402 token and pay out its unused balance,
/// authorised by the token itself or by the preimage of the invoice that bought it.
pub async fn claim_l402(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<L402RefundBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let session_id = match (crate::auth::authorization(&headers)?, &b.preimage) {
        (Some(h), _) if sluice_proto::l402::is_l402(h) => {
            crate::l402::authenticate(&state, h).await?.session_id
        }
        (_, Some(p)) => {
            let mut preimage = [0u8; 32];
            hex::decode_to_slice(p.trim(), &mut preimage).map_err(|_| {
                ApiError::bad_request("invalid_preimage", "preimage must be 64 hex characters")
            })?;
            let hash = hex::encode(sha2::Sha256::digest(preimage));
            let inv = state
                .store
                .invoice(&hash)
                .await?
                .filter(|i| crate::l402::is_token_session(&i.session_id));
            let inv = inv.ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_credential",
                    "no L402 token was bought with this preimage",
                )
            })?;
            // The preimage proves that invoice was paid.
            crate::background::credit(
                &state,
                &sluice_lightning::PaymentHash::from_hex(&hash)
                    .map_err(|e| ApiError::internal(&e))?,
                p.trim(),
            )
            .await;
            inv.session_id
        }
        _ => {
            return Err(ApiError::unauthorized(
                "missing_credential",
                "send Authorization: L402 <macaroon>:<preimage>, or the preimage of the token's invoice",
            ));
        }
    };
    let refund = match close(&state, &session_id).await? {
        Some(r) => r,
        None => open_refund(&state, &session_id).await?,
    };
    claim(&state, &refund.id, &b.invoice).await
}
