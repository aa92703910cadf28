//! Pre-funded sessions: create (deposit invoice + bearer macaroon), inspect,
//! top up. A session becomes usable when its deposit settles (see
//! `background.rs`, which credits settled invoices exactly once).

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{SessionPolicyError, effective_state};
use sluice_lightning::{Invoice, LightningError};
use sluice_store::{InvoicePurpose, NewInvoice, NewSession};

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

fn policy_error(e: SessionPolicyError) -> ApiError {
    match e {
        SessionPolicyError::DepositOutOfRange { .. } => {
            ApiError::bad_request("amount_out_of_range", e.to_string())
        }
        SessionPolicyError::Amount(a) => {
            ApiError::bad_request("amount_out_of_range", a.to_string())
        }
    }
}

pub(crate) fn lightning_error(e: LightningError) -> ApiError {
    tracing::error!(error = %e, "lightning backend failed");
    ApiError::unavailable(
        "lightning_unavailable",
        "the Lightning backend could not create an invoice; try again shortly",
    )
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

async fn new_invoice(state: &AppState, sats: u64, memo: &str) -> Result<Invoice, ApiError> {
    let amount = state.policy.deposit(sats).map_err(policy_error)?;
    state
        .lightning
        .create_invoice(amount, memo, state.invoice_expiry)
        .await
        .map_err(lightning_error)
}

pub(crate) fn ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The store's record of an invoice the backend created for session `id`.
pub(crate) fn invoice_row(
    inv: &Invoice,
    purpose: InvoicePurpose,
    id: &str,
    now: i64,
) -> NewInvoice {
    NewInvoice {
        payment_hash: inv.payment_hash.to_hex(),
        bolt11: inv.bolt11.clone(),
        amount: inv.amount,
        purpose,
        session_id: id.to_owned(),
        created_at_ms: now,
        expires_at_ms: ms(inv.expires_at),
    }
}

/// `POST /v1/sessions`
pub async fn create(
    State(state): State<AppState>,
    identity: Option<axum::Extension<crate::identity::Identity>>,
    body: Result<Json<AmountBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let sats = parse_amount(body)?;
    let id = state.new_id("ses");
    let inv = new_invoice(&state, sats, &format!("sluice session {id} deposit")).await?;
    let now = state.now_ms();
    state
        .store
        .create_session(
            &NewSession {
                id: id.clone(),
                created_at_ms: now,
                expires_at_ms: ms(inv.expires_at),
                pubkey: crate::identity::pubkey_of(&identity),
            },
            &invoice_row(&inv, InvoicePurpose::Deposit, &id, now),
        )
        .await?;
    let expires = u64::try_from(now / 1000)
        .unwrap_or(0)
        .saturating_add(state.credential_ttl.as_secs());
    let root = sluice_proto::macaroon::session_root_key(&state.root_secret, &id);
    let mac = sluice_proto::macaroon::mint_session_macaroon(&root, &id, expires)
        .map_err(|e| ApiError::internal(&e))?
        .to_base64();
    tracing::info!(session_id = %id, amount_sats = sats, "session created");
    let mut body = json!({
        "session_id": id,
        "macaroon": mac,
        "state": "awaiting_payment",
        "credential_expires_at": expires,
        "invoice": invoice_json(&state, &inv),
    });
    if let Some(p) = crate::identity::pubkey_of(&identity) {
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
    let now = state.now_ms();
    authenticate_for(
        &state,
        &headers,
        &id,
        u64::try_from(now / 1000).unwrap_or(0),
    )?;
    let s = state
        .store
        .session(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("session_not_found", "no such session"))?;
    let st = effective_state(s.state, s.expires_at_ms, now);
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
    let now = state.now_ms();
    authenticate_for(
        &state,
        &headers,
        &id,
        u64::try_from(now / 1000).unwrap_or(0),
    )?;
    let sats = parse_amount(body)?;
    let Some(session) = state.store.session(&id).await? else {
        return Err(ApiError::not_found("session_not_found", "no such session"));
    };
    if session.state == sluice_core::SessionState::Closed {
        return Err(ApiError::conflict(
            "session_closed",
            "this session was closed and its balance refunded; open a new session",
        ));
    }
    if let Err(wait) = state.limiter.check(ip) {
        return Ok(crate::ratelimit::too_many(
            wait,
            format!("too many invoices from this client; retry in {wait} s"),
        ));
    }
    let inv = new_invoice(&state, sats, &format!("sluice session {id} top-up")).await?;
    state
        .store
        .add_invoice(&invoice_row(&inv, InvoicePurpose::Topup, &id, now))
        .await?;
    tracing::info!(session_id = %id, amount_sats = sats, "top-up invoice created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"session_id": id, "invoice": invoice_json(&state, &inv)})),
    )
        .into_response())
}
