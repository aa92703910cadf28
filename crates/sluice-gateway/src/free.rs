//! The free tier on the wire: `GET /v1/pool` and the demo endpoint
//! `GET /v1/demo`. The rules, an identity's standing and the decision are the service's
//! (`sluice_service::free`).

use std::net::SocketAddr;

use axum::{
    Json,
    extract::{ConnectInfo, State},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::day_of;

use crate::{error::ApiError, extract::ApiQuery, state::AppState};

/// `GET /v1/pool`: the generosity pool.
pub async fn pool(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let p = state.store.pool_status(day_of(state.now_ms())).await?;
    let a = state.free.allowances;
    let r = state.free.accounting.trust;
    Ok(Json(json!({
        "balance_msat": p.balance.msat(),
        "balance_sats": p.balance.to_sats_floor(),
        "seeded_msat": p.seeded.msat(),
        "credited_msat": p.credited.msat(),
        "absorbed_msat": p.absorbed.msat(),
        "today": {
            "grants": p.grants_today,
            "absorbed_msat": p.absorbed_today.msat(),
        },
        "promised_in_flight_msat": state.free_inflight.pending().msat(),
        "free_tier_enabled": state.free.enabled,
        "pool_credit_pct": state.free.accounting.pool_credit_pct,
        "daily_allowance_sats": {
            "anonymous": 0,
            "new": a.new.to_sats_floor(),
            "established": a.established.to_sats_floor(),
            "trusted": a.trusted.to_sats_floor(),
            "elite": a.elite.to_sats_floor(),
        },
        "tier_thresholds": {
            "established": r.established,
            "trusted": r.trusted,
            "elite": r.elite,
        },
        "tier_paid_days": {
            "established": r.established_days,
            "trusted": r.trusted_days,
            "elite": r.elite_days,
        },
        "sats_per_point": r.sats_per_point,
        "real_money": state.lightning.is_real_money(),
    })))
}

/// `?request=...`
#[derive(Debug, Deserialize)]
pub struct DemoQuery {
    /// The question.
    pub request: Option<String>,
}

/// `GET /v1/demo?request=...`: an answer without payment from the cheapest
/// model, limited per client IP, paid from the pool.
pub async fn demo(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiQuery(q): ApiQuery<DemoQuery>,
) -> Result<Response, ApiError> {
    crate::jobs::check_request(
        &state,
        q.request.as_deref(),
        "; ask with GET /v1/demo?request=<your question>",
    )?;
    let text = q.request.unwrap_or_default();
    if let Err(wait) = state.demo_limiter.check(Some(addr.ip())) {
        return Ok(crate::ratelimit::too_many(
            wait,
            format!(
                "the demo answers {} requests per hour per client; retry in {wait} s, or pay for answers (POST /v1/sessions)",
                state.demo.per_hour
            ),
        ));
    }
    let d = state.demo(&text).await?;
    Ok(Json(json!({
        "id": d.id,
        "model": d.model,
        "answer": d.answer,
        "free_tier": "demo",
        "cost_msat": d.cost.msat(),
        "absorbed_msat": d.absorbed.msat(),
        "usage": {"prompt_tokens": d.usage.input, "completion_tokens": d.usage.output},
        "real_money": state.lightning.is_real_money(),
    }))
    .into_response())
}
