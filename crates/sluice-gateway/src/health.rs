//! `GET /healthz`: whether the gateway can take money now — the database
//! accepts a write, the Lightning backend answers, the BTC price is fresh
//! (the checks are the service's: `Sluice::health`).
//!
//! The checks touch the database and the backend, so their answer is kept
//! for [`CACHE`]: an unauthenticated endpoint must not be a way to load them.
//! A failing database or backend answers 503 (`"status": "unavailable"`), so
//! a load balancer stops sending paid requests that could not be recorded; a
//! stale price answers 200 `"degraded"`.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use sluice_proto::api::{Health, HealthDatabase, HealthLightning, HealthPrice};

use crate::state::AppState;

/// How long one round of checks answers `/healthz`.
pub const CACHE: Duration = Duration::from_secs(2);

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    if let Ok(last) = state.health.last.lock()
        && let Some((at, code, v)) = last.as_ref()
        && at.elapsed() < CACHE
    {
        return (*code, Json(v.clone()));
    }
    let (code, v) = check(&state).await;
    if let Ok(mut last) = state.health.last.lock() {
        *last = Some((sluice_env::Stopwatch::start(), code, v.clone()));
    }
    (code, Json(v))
}

async fn check(state: &AppState) -> (StatusCode, Health) {
    let h = state.sluice.health().await;
    let database = HealthDatabase {
        dialect: h.dialect.to_string(),
        ok: h.database_ok,
        error: (!h.database_ok).then(|| "the database does not accept writes".into()),
    };
    let lightning = HealthLightning {
        backend: h.backend.to_string(),
        ok: h.lightning_ok,
        error: (!h.lightning_ok).then(|| "the Lightning backend does not answer".into()),
    };
    let (code, status) = match (h.is_down(), h.price.stale) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (false, true) => (StatusCode::OK, "degraded"),
        (false, false) => (StatusCode::OK, "ok"),
    };
    let price = HealthPrice {
        source: h.price.source.as_str().to_owned(),
        age_secs: h.price.age.map(|a| a.as_secs()),
        stale: h.price.stale,
    };
    let status = status.to_owned();
    let body = Health {
        status,
        database,
        lightning,
        price,
        real_money: h.real_money,
    };
    (code, body)
}
