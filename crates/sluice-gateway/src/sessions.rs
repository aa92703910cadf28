//! Pre-funded sessions on the wire: create (deposit invoice + bearer
//! macaroon), inspect, top up. The rules are the service's
//! (`sluice_service::sessions`).

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use sluice_proto::api::{AmountBody, ErrorBody, SessionCreated, SessionView, TopUp};

use crate::{
    auth::authenticate_for,
    error::ApiError,
    extract::{ApiPath, ClientIp},
    identity::Identity,
    state::AppState,
    views,
};

/// Open a session: a deposit invoice and the session's bearer credential.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions", operation_id = "create_session",
    request_body = AmountBody,
    responses((status = 201, body = SessionCreated), (status = "4XX", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    identity: Option<axum::Extension<Identity>>,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<(StatusCode, Json<SessionCreated>), ApiError> {
    let Json(b) = body?;
    let pubkey = crate::identity::pubkey_of(&identity);
    let s = state.sluice.open_session(b.amount_sats, pubkey).await?;
    Ok((
        StatusCode::CREATED,
        Json(SessionCreated {
            invoice: views::invoice(&state.sluice, &s.invoice),
            session_id: s.id,
            macaroon: s.macaroon,
            state: "awaiting_payment".into(),
            credential_expires_at: s.credential_expires_at,
            pubkey: s.pubkey,
        }),
    ))
}

/// A session's balance, holds and refunds (its credential required).
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions", operation_id = "get_session",
    params(("id" = String, Path, description = "the session's id")),
    security(("session" = [])),
    responses((status = 200, body = SessionView), (status = "4XX", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let sluice = &state.sluice;
    authenticate_for(sluice, &headers, &id, sluice.clock.now_secs())?;
    let (s, st) = sluice.session(&id).await?;
    let refunds = sluice.store.refunds_for(&id).await?;
    Ok(Json(SessionView {
        session_id: s.id,
        state: st.as_str().to_owned(),
        balance_msat: s.balance.msat(),
        held_msat: s.held.msat(),
        deposited_msat: s.deposited.msat(),
        spent_msat: s.spent.msat(),
        minimum_balance_msat: sluice.policy.min_balance.msat(),
        expires_at: s.expires_at_ms / 1000,
        refunds: refunds
            .iter()
            .map(|r| views::refund(sluice, r, None))
            .collect(),
        real_money: sluice.lightning.is_real_money(),
    }))
}

/// Top a session up: another deposit invoice. A top-up writes an invoice
/// for a caller who may never pay (an unfunded session's credential is free
/// to get), so it is limited per client IP like session creation.
#[utoipa::path(post, path = "/v1/sessions/{id}/topup", tag = "sessions", operation_id = "top_up_session",
    params(("id" = String, Path, description = "the session's id")),
    request_body = AmountBody, security(("session" = [])),
    responses((status = 201, body = TopUp), (status = "4XX", body = ErrorBody)))]
pub async fn topup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let sluice = &state.sluice;
    authenticate_for(sluice, &headers, &id, sluice.clock.now_secs())?;
    let Json(b) = body?;
    sluice.may_top_up(&id).await?;
    if let Err(wait) = state.limiter.check(ip) {
        let why = format!("too many invoices from this client; retry in {wait} s");
        return Ok(crate::ratelimit::too_many(wait, why));
    }
    let inv = sluice.top_up(&id, b.amount_sats).await?;
    let invoice = views::invoice(sluice, &inv);
    let body = TopUp {
        session_id: id,
        invoice,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
