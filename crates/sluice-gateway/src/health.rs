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
use serde_json::{Value, json};

use crate::state::AppState;

/// How long one round of checks answers `/healthz`.
pub const CACHE: Duration = Duration::from_secs(2);

pub use crate::state::Health;

/// `GET /healthz`.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
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

async fn check(state: &AppState) -> (StatusCode, Value) {
    let h = state.health().await;
    let database = if h.database_ok {
        json!({"dialect": h.dialect, "ok": true})
    } else {
        json!({"dialect": h.dialect, "ok": false, "error": "the database does not accept writes"})
    };
    let lightning = if h.lightning_ok {
        json!({"backend": h.backend, "ok": true})
    } else {
        json!({"backend": h.backend, "ok": false, "error": "the Lightning backend does not answer"})
    };
    let (code, status) = match (h.is_down(), h.price.stale) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (false, true) => (StatusCode::OK, "degraded"),
        (false, false) => (StatusCode::OK, "ok"),
    };
    let price = json!({
        "source": h.price.source.as_str(),
        "age_secs": h.price.age.map(|a| a.as_secs()),
        "stale": h.price.stale,
    });
    let body = json!({"status": status, "database": database, "lightning": lightning, "price": price, "real_money": h.real_money});
    (code, body)
}
