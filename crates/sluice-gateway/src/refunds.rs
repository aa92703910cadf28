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
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{Msat, RefundError, RefundEvent};
use sluice_lightning::{LightningError, PaymentStatus, bolt11};
use sluice_store::{RefundEventError, RefundRow, StoreError};

use crate::{
    auth::authenticate_owner,
    error::ApiError,
    extract::ApiPath,
    state::{AppState, log_ref},
};

/// Body of a refund claim.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// A BOLT11 invoice for exactly the refund.
    pub invoice: String,
    /// Which refund (a balance closed, revived and closed again owes several);
    /// may be left out when only one can be claimed.
    pub refund_id: Option<String>,
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
        RefundError::RetrySameInvoice { .. } => {
            ApiError::conflict("retry_same_invoice", e.to_string())
        }
        other => ApiError::bad_request("nothing_to_refund", other.to_string()),
    }
}

/// The smallest refund paid out over Lightning: `jobs.dust_msat`, or more
/// when the backend reserves a routing fee on every payment (LNbits): a
/// payout must leave an invoice of at least a sat after the reserve, or no
/// claim could ever fit it. Smaller refunds go to the pool.
pub fn dust_threshold(state: &AppState) -> Msat {
    let one_sat = Msat::from_msat(1_000);
    let reserve = state.lightning.fee_reserve(one_sat).unwrap_or(Msat::ZERO);
    Msat::from_msat(state.jobs.dust_msat).max(Msat::from_msat(reserve.msat().saturating_add(1_000)))
}

/// The routing-fee budget a claim of a `payout` refund may leave, (least,
/// most): the most is configured (`[refunds]`), the least is what the
/// backend may spend whatever limit it is given (LNbits' reserve; zero for
/// backends that honour the limit).
fn fee_budget(state: &AppState, payout: Msat) -> (Msat, Msat) {
    sluice_core::fee_budget_bounds(
        payout,
        state.lightning.fee_reserve(payout).unwrap_or(Msat::ZERO),
        state.refunds.max_fee_budget(payout),
    )
}

/// The refund as clients see it: claim it with an invoice for `payout_sats`
/// less a routing-fee budget between `fee_budget_min_msat` and `fee_budget_max_msat`.
pub fn refund_json(r: &RefundRow, state: &AppState) -> Value {
    let (least, most) = fee_budget(state, r.refund.payout);
    json!({
        "refund_id": r.id,
        "state": r.refund.state.as_str(),
        "amount_msat": r.refund.amount.msat(),
        "payout_sats": r.refund.payout_sats(),
        "expires_at": r.refund.expires_at_ms / 1000,
        "payment_hash": r.refund.payment_hash,
        "fee_budget_min_msat": least.msat(),
        "fee_budget_max_msat": most.msat(),
        "paid_msat": (r.refund.state == sluice_core::RefundState::Claimed).then(|| r.refund.claimed.msat()),
        "fee_msat": (r.refund.state == sluice_core::RefundState::Claimed).then(|| r.refund.fee.msat()),
    })
}

/// How to claim refund `r` at `path`: the request, with the invoice amount
/// and the routing-fee budget it may leave.
pub fn claim_hint(state: &AppState, path: &str, r: &RefundRow) -> String {
    let (least, most) = fee_budget(state, r.refund.payout);
    format!(
        "POST {path} {{\"invoice\": \"<bolt11 for {} sats less a routing-fee budget of {} to {} msat>\"}}",
        r.refund.payout_sats(),
        least.msat(),
        most.msat()
    )
}

/// How far past `refunds.max_invoice_expiry_secs` a claim invoice may expire
/// (a wallet whose clock runs ahead).
const EXPIRY_SLACK_SECS: u64 = 600;

/// A claim invoice decoded and checked before anything changes: it states
/// its amount, expires soon enough, and was not issued by this gateway.
async fn usable_invoice(
    state: &AppState,
    invoice: &str,
) -> Result<(bolt11::DecodedInvoice, Msat), ApiError> {
    let inv = bolt11::decode(invoice)
        .map_err(|e| ApiError::bad_request("invalid_invoice", e.to_string()))?;
    let amount = inv.amount.ok_or_else(|| {
        ApiError::bad_request("invalid_invoice", "the invoice must state its amount")
    })?;
    let hash = inv.payment_hash.to_hex();
    // A few minutes' slack for the wallet's clock.
    let latest = state
        .clock
        .now_secs()
        .saturating_add(state.refunds.max_invoice_expiry_secs)
        .saturating_add(EXPIRY_SLACK_SECS);
    if inv.expires_at > latest {
        return Err(ApiError::bad_request(
            "invoice_expiry_too_long",
            format!(
                "the invoice must expire within {} s (a failed payout may be retried only with the same invoice until it expires)",
                state.refunds.max_invoice_expiry_secs
            ),
        ));
    }
    if state.store.issued_invoice(&hash).await? {
        return Err(ApiError::bad_request(
            "invoice_is_ours",
            "this invoice was issued by this gateway; claim with an invoice from your own wallet",
        ));
    }
    Ok((inv, amount))
}

/// Claim refund `refund_id` with `invoice` and pay it, once.
///
/// - An invoice this gateway issued (a session's or a job's) is refused: a
///   refund is paid to the payer's own wallet, never back into this one.
/// - The invoice may be for less than the refund, by at most the configured
///   fee budget: what it leaves is the most the payout spends on routing (the
///   claimant bears routing fees; what the fee does not use goes to the pool).
/// - After a payout the backend reported failed, only that same invoice is
///   retried until it expires; a new one is accepted after that, once a last
///   look-up of the old payment has found it not paid.
pub async fn claim(state: &AppState, refund_id: &str, invoice: &str) -> Result<Response, ApiError> {
    let invoice = invoice.trim();
    let (inv, amount) = usable_invoice(state, invoice).await?;
    let hash = inv.payment_hash.to_hex();
    let current = state
        .store
        .refund(refund_id)
        .await?
        .ok_or_else(|| ApiError::not_found("refund_not_found", "no such refund"))?;
    if let Some(answer) = settle_failed_before_new_invoice(state, &current, &hash).await? {
        return Ok(answer);
    }
    let (least, most) = fee_budget(state, current.refund.payout);
    let claim = RefundEvent::Claim {
        invoice_amount: amount,
        invoice_hash: hash.clone(),
        invoice_expires_at_ms: i64::try_from(inv.expires_at.saturating_mul(1000))
            .unwrap_or(i64::MAX),
        max_fee_budget: most,
        min_fee_budget: least,
        now_ms: state.now_ms(),
    };
    let claimed = match state
        .store
        .refund_event(refund_id, claim, state.now_ms())
        .await
    {
        Ok(r) => r,
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
                .refund_event(
                    refund_id,
                    RefundEvent::Expire {
                        now_ms: state.now_ms(),
                    },
                    state.now_ms(),
                )
                .await;
            return Err(refund_error(RefundError::Expired { expires_at_ms }));
        }
        Err(RefundEventError::Refused(e)) => return Err(refund_error(e)),
        Err(RefundEventError::Store(StoreError::NotFound)) => {
            return Err(ApiError::not_found("refund_not_found", "no such refund"));
        }
        Err(RefundEventError::Store(StoreError::Conflict(m))) => {
            return Err(ApiError::conflict("invoice_already_used", m));
        }
        Err(RefundEventError::Store(e)) => return Err(e.into()),
    };
    // Now `paying` this invoice: no other claim can start a payout.
    let max_fee = claimed.refund.payout.saturating_sub(amount);
    let inv_hash = inv.payment_hash;
    let (s, rid, bolt11) = (state.clone(), refund_id.to_owned(), invoice.to_owned());
    let handle = state.tasks.spawn(async move {
        let paid = s.lightning.pay_invoice(&bolt11, max_fee).await;
        // A refusal is believed only when the backend also has no record of
        // an outgoing payment (its error text is not proof: LNbits' is matched
        // by words).
        let refused = match &paid {
            Err(LightningError::InvalidInvoice(_) | LightningError::Expired | LightningError::InsufficientBalance | LightningError::NotFound) => {
                matches!(
                    s.lightning.lookup_payment(&inv_hash).await,
                    Ok(PaymentStatus::NotFound)
                )
            }
            _ => false,
        };
        let (status, event, body) = match paid {
            Ok(p) => (
                StatusCode::OK,
                RefundEvent::PayoutSucceeded { payment_hash: hash.clone(), preimage: p.preimage.to_hex(), fee: p.fee },
                json!({"state": "claimed", "payment_hash": hash, "preimage": p.preimage.to_hex(), "amount_msat": amount.msat(), "amount_sats": amount.to_sats_floor(), "fee_msat": p.fee.msat()}),
            ),
            // Refused before anything was sent: any invoice may be tried next.
            Err(e) if refused => (
                StatusCode::BAD_GATEWAY,
                RefundEvent::PayoutRefused { payment_hash: hash.clone() },
                json!({"error": {"message": format!("the payout was refused and nothing was paid ({e}); claim again with a new invoice"), "type": "upstream_error", "code": "payout_failed"}}),
            ),
            // Already paid (by this gateway, or by someone else), a backend
            // error, a timeout: only a look-up can tell what happened.
            Err(e) => (
                StatusCode::ACCEPTED,
                RefundEvent::PayoutUnknown { payment_hash: hash.clone() },
                json!({"state": "paying", "payment_hash": hash, "message": format!("the payout's outcome is not known yet ({e}); it will not be paid twice")}),
            ),
        };
        if let Err(e) = s.store.refund_event(&rid, event, s.now_ms()).await {
            tracing::error!(refund = %log_ref(&rid), error = %e, "could not record a payout outcome");
        }
        (status, body)
    });
    let (status, body) = handle.await.map_err(|e| ApiError::internal(&e))?;
    Ok((status, Json(body)).into_response())
}

/// Before a claim with a new invoice after a payout the backend reported
/// failed (and whose invoice has expired), look the old payment up once
/// more: a payment reported failed that in fact arrived is recorded as the
/// refund's payout, and one still in flight blocks the new claim.
async fn settle_failed_before_new_invoice(
    state: &AppState,
    r: &RefundRow,
    new_hash: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(failed) = r.refund.failed_hash.clone() else {
        return Ok(None);
    };
    if failed == new_hash
        || r.refund.state != sluice_core::RefundState::Pending
        || state.now_ms() < r.refund.invoice_expires_at_ms
    {
        // Same invoice, or not yet expired: the state machine decides.
        return Ok(None);
    }
    let h = sluice_lightning::PaymentHash::from_hex(&failed).map_err(|e| ApiError::internal(&e))?;
    match state.lightning.lookup_payment(&h).await {
        Ok(PaymentStatus::Succeeded { preimage, fee }) => {
            let event = RefundEvent::PayoutSucceeded {
                payment_hash: failed.clone(),
                preimage: preimage.to_hex(),
                fee,
            };
            if let Err(e) = state.store.refund_event(&r.id, event, state.now_ms()).await {
                tracing::error!(refund = %log_ref(&r.id), error = %e, "could not record a late payout");
            }
            let body = json!({
                "error": {"message": format!("this refund was paid after all, by invoice {failed}"), "type": "invalid_request_error", "code": "refund_already_claimed"},
                "payment_hash": failed,
            });
            Ok(Some((StatusCode::CONFLICT, Json(body)).into_response()))
        }
        Ok(PaymentStatus::Pending) => Err(ApiError::conflict(
            "payout_in_flight",
            format!("the payout to invoice {failed} may still arrive; try again later"),
        )),
        Ok(PaymentStatus::Failed | PaymentStatus::NotFound) => Ok(None),
        Err(e) => {
            tracing::warn!(refund = %log_ref(&r.id), error = %e, "could not look a failed payout up");
            Err(ApiError::unavailable(
                "lightning_unavailable",
                "the Lightning backend could not be asked about the earlier payout; try again shortly",
            ))
        }
    }
}

/// Settle payouts whose outcome was never recorded (unknown, or the gateway
/// stopped mid-payout) by looking the payment up: paid → `claimed`; failed or
/// never attempted → claimable again (the same invoice until it expires);
/// still in flight → look again later. Only payouts quiet for the staleness
/// window are looked at, so a payment still being sent is not mistaken for
/// one that was never made. A look-up counts only a payment this backend
/// made: an invoice of the same hash that was paid to it is not one.
pub async fn reconcile(state: &AppState) {
    let Ok(paying) = state
        .store
        .paying_refunds(state.stale_before(state.now_ms()))
        .await
    else {
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
            Ok(PaymentStatus::Succeeded { preimage, fee }) => RefundEvent::PayoutSucceeded {
                payment_hash: hash,
                preimage: preimage.to_hex(),
                fee,
            },
            Ok(PaymentStatus::Failed | PaymentStatus::NotFound) => {
                RefundEvent::PayoutFailed { payment_hash: hash }
            }
            Ok(PaymentStatus::Pending) => continue,
            Err(e) => {
                tracing::warn!(refund = %log_ref(&r.id), error = %e, "could not look a payout up");
                continue;
            }
        };
        match state.store.refund_event(&r.id, event, state.now_ms()).await {
            Ok(row) => {
                tracing::info!(refund = %log_ref(&r.id), state = row.refund.state.as_str(), "payout reconciled")
            }
            Err(e) => {
                tracing::warn!(refund = %log_ref(&r.id), error = %e, "could not record a reconciled payout")
            }
        }
    }
}

fn refund_expiry(state: &AppState) -> i64 {
    state.now_ms().saturating_add(
        i64::try_from(state.jobs.refund_expiry_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
    )
}

/// Close a balance (session or L402 token) and return its refund, if any.
async fn close(state: &AppState, session_id: &str) -> Result<Option<RefundRow>, ApiError> {
    match state
        .store
        .close_session(
            session_id,
            state.now_ms(),
            refund_expiry(state),
            dust_threshold(state),
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

/// The refund of a closed balance to claim: the one named, else the only one
/// that can still be claimed (or is being paid), else the newest (whose state
/// says why it cannot be claimed). A balance closed, revived by a late
/// payment and closed again owes several; each is claimed by its id.
pub(crate) async fn refund_to_claim(
    state: &AppState,
    owner: &str,
    wanted: Option<&str>,
) -> Result<RefundRow, ApiError> {
    let all = state.store.refunds_for(owner).await?;
    if let Some(id) = wanted {
        return all.into_iter().find(|r| r.id == id).ok_or_else(|| {
            ApiError::not_found(
                "refund_not_found",
                "this balance owes no refund with that id",
            )
        });
    }
    let open: Vec<&RefundRow> = all
        .iter()
        .filter(|r| {
            matches!(
                r.refund.state,
                sluice_core::RefundState::Pending | sluice_core::RefundState::Paying
            )
        })
        .collect();
    match open.as_slice() {
        [one] => return Ok((*one).clone()),
        [] => {}
        several => {
            let ids: Vec<&str> = several.iter().map(|r| r.id.as_str()).collect();
            return Err(ApiError::bad_request(
                "refund_id_required",
                format!(
                    "this balance owes {} refunds; name the one to claim with refund_id: {}",
                    ids.len(),
                    ids.join(", ")
                ),
            ));
        }
    }
    all.into_iter().next().ok_or_else(|| {
        ApiError::bad_request(
            "nothing_to_refund",
            "nothing is owed; close the balance first (POST …/close)",
        )
    })
}

/// Every refund a balance owes or owed, newest first, as clients see them.
pub(crate) async fn refunds_json(state: &AppState, owner: &str) -> Result<Vec<Value>, ApiError> {
    Ok(state
        .store
        .refunds_for(owner)
        .await?
        .iter()
        .map(|r| refund_json(r, state))
        .collect())
}

/// `POST /v1/sessions/{id}/close` (bearer): end the session; its balance becomes a refund.
pub async fn close_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate_owner(&state, &headers, &id, state.clock.now_secs())?;
    let refund = close(&state, &id).await?;
    tracing::info!(session_id = %id, refund = refund.is_some(), "session closed");
    Ok(Json(json!({
        "session_id": id,
        "state": "closed",
        "refund": refund.as_ref().map(|r| refund_json(r, &state)),
        "claim": refund
            .as_ref()
            .map(|r| claim_hint(&state, &format!("/v1/sessions/{id}/refund"), r)),
    })))
}

/// `POST /v1/sessions/{id}/refund` (bearer): claim the closed session's refund.
pub async fn claim_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Json<ClaimBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    authenticate_owner(&state, &headers, &id, state.clock.now_secs())?;
    let Json(b) = body?;
    let r = refund_to_claim(&state, &id, b.refund_id.as_deref()).await?;
    claim(&state, &r.id, &b.invoice).await
}

/// Body of an L402 refund.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L402RefundBody {
    /// A BOLT11 invoice for exactly the refund.
    pub invoice: String,
    /// Which refund, when the token owes several.
    pub refund_id: Option<String>,
    /// No longer accepted (see [`claim_l402`]); named so the refusal can say why.
    pub preimage: Option<String>,
}

/// `POST /v1/l402/refund`: close an L402 token and pay out its unused balance,
/// authorised by the token itself, unrestricted (no spend cap, no model list).
///
/// The preimage alone is not enough: it is half of every L402 credential, so
/// whoever was handed an attenuated token also holds it, and a delegate must
/// not be able to take the whole balance.
pub async fn claim_l402(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<L402RefundBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let session_id = match crate::auth::authorization(&headers)? {
        Some(h) if sluice_proto::l402::is_l402(h) => {
            let payer = crate::l402::authenticate(&state, h).await?;
            crate::auth::require_unrestricted(&payer)?;
            payer.session_id
        }
        _ if b.preimage.is_some() => {
            return Err(ApiError::unauthorized(
                "missing_credential",
                "a preimage alone cannot claim a token's refund (every holder of the token has it); send Authorization: L402 <macaroon>:<preimage> with the token's unrestricted macaroon",
            ));
        }
        _ => {
            return Err(ApiError::unauthorized(
                "missing_credential",
                "send Authorization: L402 <macaroon>:<preimage> with the token's unrestricted macaroon",
            ));
        }
    };
    // Refuse a claim that cannot succeed before the token is closed for it.
    let (_, amount) = usable_invoice(&state, b.invoice.trim()).await?;
    if b.refund_id.is_none()
        && let Some(session) = state.store.session(&session_id).await?
        && session.held == Msat::ZERO
    {
        let split = sluice_core::split_refund(session.balance, dust_threshold(&state));
        if !split.is_dust() {
            let (least, most) = fee_budget(&state, split.payout);
            sluice_core::check_claim_amount(split.payout, amount, least, most)
                .map_err(refund_error)?;
        }
    }
    let refund = match close(&state, &session_id).await? {
        Some(r) if b.refund_id.as_deref().is_none_or(|w| w == r.id) => r,
        _ => refund_to_claim(&state, &session_id, b.refund_id.as_deref()).await?,
    };
    claim(&state, &refund.id, &b.invoice).await
}
