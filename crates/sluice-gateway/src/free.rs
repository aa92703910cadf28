//! The free tier on the wire: the generosity pool's state (`GET /v1/pool`)
//! and the demo (`GET /v1/demo`). The decisions are the service's
//! (`sluice_service::free`, `sluice_service::demo`).

use std::net::SocketAddr;

use axum::{
    Json,
    extract::{ConnectInfo, State},
    response::{IntoResponse, Response},
};
use sluice_core::day_of;
use sluice_proto::api::{DemoAnswer, DemoQuery, DemoUsage, ErrorBody, Pool};

use crate::{error::ApiError, extract::ApiQuery, state::AppState, views};

/// The generosity pool: what it holds, what it absorbed, the allowances and tiers.
#[utoipa::path(get, path = "/v1/pool", tag = "free tier",
    responses((status = 200, body = Pool), (status = "5XX", body = ErrorBody)))]
pub async fn pool(State(state): State<AppState>) -> Result<Json<Pool>, ApiError> {
    let sluice = &state.sluice;
    let p = sluice.store.pool_status(day_of(sluice.now_ms())).await?;
    Ok(Json(views::pool(sluice, &p)))
}

/// A free answer from the demo model, paid by the pool, a few per hour per client.
#[utoipa::path(get, path = "/v1/demo", tag = "free tier",
    params(DemoQuery),
    responses((status = 200, body = DemoAnswer), (status = "4XX", body = ErrorBody)))]
pub async fn demo(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiQuery(q): ApiQuery<DemoQuery>,
) -> Result<Response, ApiError> {
    let sluice = &state.sluice;
    let hint = "; ask with GET /v1/demo?request=<your question>";
    sluice_service::jobs::check_request(sluice, q.request.as_deref(), hint)?;
    if let Err(wait) = state.demo_limiter.check(Some(addr.ip())) {
        let per_hour = sluice.demo.per_hour;
        let why = format!(
            "the demo answers {per_hour} requests per hour per client; retry in {wait} s, or pay for answers (POST /v1/sessions)"
        );
        return Ok(crate::ratelimit::too_many(wait, why));
    }
    let d = sluice.demo(&q.request.unwrap_or_default()).await?;
    Ok(Json(DemoAnswer {
        id: d.id,
        model: d.model,
        answer: d.answer,
        free_tier: "demo".into(),
        cost_msat: d.cost.msat(),
        absorbed_msat: d.absorbed.msat(),
        usage: DemoUsage {
            prompt_tokens: d.usage.input,
            completion_tokens: d.usage.output,
        },
        real_money: sluice.lightning.is_real_money(),
    })
    .into_response())
}
