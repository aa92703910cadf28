//! Refunds on the wire: the claim endpoints of closed sessions and L402
//! tokens, a claim's answer, and refunds as clients see them. Claiming and
//! paying once are the service's (`sluice_service::refunds`).
//!
//! Jobs (`POST /v1/jobs/{id}/refund`), sessions (`POST /v1/sessions/{id}/close`
//! then `/refund`) and L402 tokens (`POST /v1/l402/refund`, with the token's
//! unrestricted credential) all claim through [`claim`].

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_store::RefundRow;

use sluice_service::refunds::{ClaimOutcome, fee_budget};

use crate::{auth::authenticate_owner, error::ApiError, extract::ApiPath, state::AppState};

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

/// Claim refund `refund_id` with `invoice`, and answer as the outcome says:
/// 200 paid, 202 not known yet, 409 already claimed, 502 refused.
pub async fn claim(state: &AppState, refund_id: &str, invoice: &str) -> Result<Response, ApiError> {
    claim_answer(state.claim_refund(refund_id, invoice).await?)
}

/// A claim's outcome as an answer.
fn claim_answer(outcome: ClaimOutcome) -> Result<Response, ApiError> {
    let (status, body) = match outcome {
        ClaimOutcome::Paid {
            payment_hash,
            preimage,
            amount,
            fee,
        } => (
            StatusCode::OK,
            json!({"state": "claimed", "payment_hash": payment_hash, "preimage": preimage, "amount_msat": amount.msat(), "amount_sats": amount.to_sats_floor(), "fee_msat": fee.msat()}),
        ),
        ClaimOutcome::Refused { reason } => (
            StatusCode::BAD_GATEWAY,
            json!({"error": {"message": format!("the payout was refused and nothing was paid ({reason}); claim again with a new invoice"), "type": "upstream_error", "code": "payout_failed"}}),
        ),
        ClaimOutcome::Unknown {
            payment_hash,
            reason,
        } => (
            StatusCode::ACCEPTED,
            json!({"state": "paying", "payment_hash": payment_hash, "message": format!("the payout's outcome is not known yet ({reason}); it will not be paid twice")}),
        ),
        ClaimOutcome::AlreadyClaimed {
            payment_hash,
            message,
        } => (
            StatusCode::CONFLICT,
            json!({
                "error": {"message": message, "type": "invalid_request_error", "code": "refund_already_claimed"},
                "payment_hash": payment_hash,
            }),
        ),
    };
    Ok((status, Json(body)).into_response())
}

/// Settle payouts whose outcome was never recorded (`sluice_service::refunds::reconcile`).
pub async fn reconcile(state: &AppState) {
    sluice_service::refunds::reconcile(state).await;
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
    let refund = sluice_service::refunds::close(&state, &id).await?;
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
    let r = sluice_service::refunds::refund_to_claim(&state, &id, b.refund_id.as_deref()).await?;
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
            let payer = state.l402_authenticate(h).await?;
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
    let outcome = state
        .claim_l402_refund(&session_id, &b.invoice, b.refund_id.as_deref())
        .await?;
    claim_answer(outcome)
}
