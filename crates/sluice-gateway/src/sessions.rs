//! Pre-funded sessions on the wire: create (deposit invoice + bearer
//! macaroon), inspect, top up. The rules are the service's
//! (`sluice_service::sessions`).

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_lightning::Invoice;

use crate::{
    auth::authenticate_for,
    error::ApiError,
    extract::{ApiPath, ClientIp},
    state::AppState,
};

/// Body of `POST /v1/sessions` and `POST /v1/sessions/{id}/topup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountBody {
    /// Sats to deposit.
    pub amount_sats: u64,
}

pub(crate) fn invoice_json(state: &AppState, inv: &Invoice) -> Value {
    let mut v = json!({
        "bolt11": inv.bolt11,
        "payment_hash": inv.payment_hash.to_hex(),
        "amount_sats": inv.amount.to_sats_floor(),
        "expires_at": inv.expires_at,
    });
    if !state.lightning.is_real_money() {
        v["warning"] = Value::String(
            "dev wallet invoice: NOT real money. Pay it with POST /v1/dev/pay or `sluice wallet pay`.".into(),
        );
    }
    v
}

fn parse_amount(body: Result<Json<AmountBody>, JsonRejection>) -> Result<u64, ApiError> {
    let Json(b) = body?;
    Ok(b.amount_sats)
}

/// `POST /v1/sessions`
pub async fn create(
    State(state): State<AppState>,
    identity: Option<axum::Extension<crate::identity::Identity>>,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let sats = parse_amount(body)?;
    let s = state
        .open_session(sats, crate::identity::pubkey_of(&identity))
        .await?;
    let mut body = json!({
        "session_id": s.id,
        "macaroon": s.macaroon,
        "state": "awaiting_payment",
        "credential_expires_at": s.credential_expires_at,
        "invoice": invoice_json(&state, &s.invoice),
    });
    if let Some(p) = s.pubkey {
        body["pubkey"] = p.into();
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/sessions/{id}`
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate_for(&state, &headers, &id, state.clock.now_secs())?;
    let (s, st) = state.session(&id).await?;
    Ok(Json(json!({
        "session_id": s.id,
        "state": st.as_str(),
        "balance_msat": s.balance.msat(),
        "held_msat": s.held.msat(),
        "deposited_msat": s.deposited.msat(),
        "spent_msat": s.spent.msat(),
        "minimum_balance_msat": state.policy.min_balance.msat(),
        "expires_at": s.expires_at_ms / 1000,
        "refunds": crate::refunds::refunds_json(&state, &id).await?,
        "real_money": state.lightning.is_real_money(),
    })))
}

/// `POST /v1/sessions/{id}/topup`. A top-up writes an invoice for a caller
/// who may never pay (an unfunded session's credential is free to get), so
/// it is limited per client IP like session creation.
pub async fn topup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    authenticate_for(&state, &headers, &id, state.clock.now_secs())?;
    let sats = parse_amount(body)?;
    state.may_top_up(&id).await?;
    if let Err(wait) = state.limiter.check(ip) {
        return Ok(crate::ratelimit::too_many(
            wait,
            format!("too many invoices from this client; retry in {wait} s"),
        ));
    }
    let inv = state.top_up(&id, sats).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"session_id": id, "invoice": invoice_json(&state, &inv)})),
    )
        .into_response())
}
