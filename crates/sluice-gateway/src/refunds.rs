//! Refunds on the wire: closing a session, claiming a session's, a job's or
//! an L402 token's refund to the caller's invoice. The rules — at most once,
//! a fee budget, the outcome of a payout never guessed — are the service's
//! (`sluice_service::refunds`).

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use sluice_proto::api::{
    AlreadyClaimed, ClaimBody, ClaimPaid, ClaimPaying, ErrorBody, ErrorDetail, L402RefundBody,
    SessionClosed,
};
use sluice_service::{Sluice, refunds::ClaimOutcome};

use crate::{auth::authenticate_owner, error::ApiError, extract::ApiPath, state::AppState, views};

/// Pay refund `refund_id` to `invoice`, and answer with the outcome.
pub async fn claim(sluice: &Sluice, refund_id: &str, invoice: &str) -> Result<Response, ApiError> {
    Ok(claim_answer(sluice.claim_refund(refund_id, invoice).await?))
}

/// A claim's outcome on the wire: 200 paid, 202 not known yet (never paid
/// twice), 409 already claimed, 502 refused (nothing paid; claim again).
fn claim_answer(outcome: ClaimOutcome) -> Response {
    match outcome {
        ClaimOutcome::Paid {
            payment_hash,
            preimage,
            amount,
            fee,
        } => {
            let body = ClaimPaid {
                state: "claimed".into(),
                payment_hash,
                preimage,
                amount_msat: amount.msat(),
                amount_sats: amount.to_sats_floor(),
                fee_msat: fee.msat(),
            };
            (StatusCode::OK, Json(body)).into_response()
        }
        ClaimOutcome::Refused { reason } => {
            let message = format!(
                "the payout was refused and nothing was paid ({reason}); claim again with a new invoice"
            );
            let body = ErrorBody::new("upstream_error", "payout_failed", message);
            (StatusCode::BAD_GATEWAY, Json(body)).into_response()
        }
        ClaimOutcome::Unknown {
            payment_hash,
            reason,
        } => {
            let message = format!(
                "the payout's outcome is not known yet ({reason}); it will not be paid twice"
            );
            let body = ClaimPaying {
                state: "paying".into(),
                payment_hash,
                message,
            };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        ClaimOutcome::AlreadyClaimed {
            payment_hash,
            message,
        } => {
            let error = ErrorDetail {
                message,
                kind: "invalid_request_error".into(),
                code: "refund_already_claimed".into(),
            };
            (
                StatusCode::CONFLICT,
                Json(AlreadyClaimed {
                    error,
                    payment_hash,
                }),
            )
                .into_response()
        }
    }
}

/// Close a session: what is left becomes a refund to claim (the
/// unrestricted credential required).
#[utoipa::path(post, path = "/v1/sessions/{id}/close", tag = "sessions",
    params(("id" = String, Path, description = "the session's id")),
    security(("session" = [])),
    responses((status = 200, body = SessionClosed), (status = "4XX", body = ErrorBody)))]
pub async fn close_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<SessionClosed>, ApiError> {
    let sluice = &state.sluice;
    authenticate_owner(sluice, &headers, &id, sluice.clock.now_secs())?;
    let refund = sluice_service::refunds::close(sluice, &id).await?;
    tracing::info!(session_id = %id, refund = refund.is_some(), "session closed");
    let path = format!("/v1/sessions/{id}/refund");
    Ok(Json(SessionClosed {
        refund: refund.as_ref().map(|r| views::refund(sluice, r, None)),
        claim: refund.as_ref().map(|r| views::claim_hint(sluice, &path, r)),
        session_id: id,
        state: "closed".into(),
    }))
}

/// Claim a closed or expired session's refund (the unrestricted credential required).
#[utoipa::path(post, path = "/v1/sessions/{id}/refund", tag = "sessions",
    params(("id" = String, Path, description = "the session's id")),
    request_body = ClaimBody, security(("session" = [])),
    responses((status = 200, body = ClaimPaid), (status = 202, body = ClaimPaying),
        (status = 409, body = AlreadyClaimed), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub async fn claim_session(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Json<ClaimBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let sluice = &state.sluice;
    authenticate_owner(sluice, &headers, &id, sluice.clock.now_secs())?;
    let Json(b) = body?;
    let r = sluice_service::refunds::refund_to_claim(sluice, &id, b.refund_id.as_deref()).await?;
    claim(sluice, &r.id, &b.invoice).await
}

/// Claim what an L402 token has left (its unrestricted macaroon and preimage required).
#[utoipa::path(post, path = "/v1/l402/refund", tag = "l402",
    request_body = L402RefundBody, security(("l402" = [])),
    responses((status = 200, body = ClaimPaid), (status = 202, body = ClaimPaying),
        (status = 409, body = AlreadyClaimed), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub async fn claim_l402(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<L402RefundBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let session_id = l402_owner(&state.sluice, &headers, b.preimage.is_some()).await?;
    let outcome = state
        .sluice
        .claim_l402_refund(&session_id, &b.invoice, b.refund_id.as_deref())
        .await?;
    Ok(claim_answer(outcome))
}

/// The token an L402 refund claim is for: its unrestricted credential, never a bare preimage.
async fn l402_owner(
    sluice: &Sluice,
    headers: &HeaderMap,
    preimage: bool,
) -> Result<String, ApiError> {
    match crate::auth::authorization(headers)? {
        Some(h) if sluice_proto::l402::is_l402(h) => {
            let payer = sluice.l402_authenticate(h).await?;
            crate::auth::require_unrestricted(&payer)?;
            Ok(payer.session_id)
        }
        _ if preimage => Err(ApiError::unauthorized(
            "missing_credential",
            "a preimage alone cannot claim a token's refund (every holder of the token has it); send Authorization: L402 <macaroon>:<preimage> with the token's unrestricted macaroon",
        )),
        _ => Err(ApiError::unauthorized(
            "missing_credential",
            "send Authorization: L402 <macaroon>:<preimage> with the token's unrestricted macaroon",
        )),
    }
}
