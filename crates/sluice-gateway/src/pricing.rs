//! Prices on the wire: `/v1/estimate`, the price card `/v1/models` lists and
//! itemized charges. Pricing itself is the service's (`sluice_service::pricing`).

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
};
use serde_json::{Value, json};
use sluice_core::{BtcUsd, UsdMicros};

use sluice_service::pricing::itemized_json;

use crate::{
    error::ApiError,
    request::ChatBody,
    state::{AppState, ModelEntry},
};

/// Every component of a model's price at `btc`, as `/v1/models` lists it: the
/// token rates (margin included), the per-request share of the
/// infrastructure (margin included), the margin itself and the minimum charge.
pub fn price_card(m: &ModelEntry, btc: BtcUsd) -> Result<Value, ApiError> {
    let (i, o) = m
        .rates
        .per_mtok_msat(btc)
        .map_err(|e| ApiError::internal(&e))?;
    let fixed = sluice_core::itemize(&m.rates, sluice_core::TokenUsage::default(), btc)
        .map_err(|e| ApiError::internal(&e))?;
    let per_request = fixed.total.saturating_sub(fixed.minimum);
    Ok(json!({
        "input_msat_per_mtok": i.msat(),
        "output_msat_per_mtok": o.msat(),
        "input_sats_per_mtok": i.to_sats_ceil(),
        "output_sats_per_mtok": o.to_sats_ceil(),
        "per_request_msat": per_request.msat(),
        "margin_pct": UsdMicros(u64::from(m.rates.margin_bps) * 10_000).to_decimal_string(),
        "minimum_charge_msat": sluice_core::MIN_CHARGE.msat(),
        "note": "token rates and the per-request share include the margin; a request costs input + output + per request, rounded up to the msat, at least the minimum",
    }))
}

/// `POST /v1/estimate`: what a chat request would cost, without paying.
pub async fn estimate(
    State(state): State<AppState>,
    identity: Option<axum::Extension<crate::identity::Identity>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(v) = body?;
    let req = ChatBody::parse(v)?;
    let pubkey = identity.map(|axum::Extension(i)| i.pubkey);
    let q = state.quote(&req, pubkey.as_deref()).await?;
    let p = &q.priced;
    let (p50, p90, c50, c90, confidence) = match &p.quote {
        Some(q) => (
            q.output_p50,
            q.output_p90,
            q.cost_p50.msat(),
            q.cost_p90.msat(),
            q.confidence,
        ),
        None => (
            p.max_out,
            p.max_out,
            p.hold.hold.msat(),
            p.hold.hold.msat(),
            0,
        ),
    };
    let free_tier = q.free.as_ref().map_or(Value::Null, |f| f.json(p.hold.hold));
    Ok(Json(json!({
        "free_tier": free_tier,
        "pricing": price_card(p.model, p.btc)?,
        "itemized_max": itemized_json(&q.at_max),
        "model": p.model.name,
        "request_class": p.class.as_str(),
        "input_tokens": p.input,
        "input_tokens_held": p.input_held,
        "output_tokens": {"p50": p50, "p90": p90, "max": p.max_out},
        "cost_msat": {"p50": c50, "p90": c90, "max": p.hold.hold.msat()},
        "hold_msat": p.hold.hold.msat(),
        "btc_usd": UsdMicros(p.btc.micros()).to_decimal_string(),
        "confidence": confidence,
    })))
}
