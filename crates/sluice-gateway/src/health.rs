//! `GET /healthz`: whether the gateway can take money now — the database
//! accepts a write, the Lightning backend answers, the BTC price is fresh.
//!
//! The checks touch the database and the backend, so their answer is kept
//! for [`CACHE`]: an unauthenticated endpoint must not be a way to load them.
//! A failing database or backend answers 503 (`"status": "unavailable"`), so
//! a load balancer stops sending paid requests that could not be recorded; a
//! stale price answers 200 `"degraded"`.

use std::time::Duration;

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};
use sluice_lightning::{LightningError, PaymentHash};

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

/// A payment hash no invoice has.
fn probe_hash(state: &AppState) -> [u8; 32] {
    let mut h = [0u8; 32];
    state.ids.fill(&mut h);
    h
}

async fn check(state: &AppState) -> (StatusCode, Value) {
    let database = match state.store.ping().await {
        Ok(()) => json!({"dialect": state.store.dialect(), "ok": true}),
        Err(e) => {
            tracing::error!(error = %e, "health check: the database refused a write");
            json!({"dialect": state.store.dialect(), "ok": false, "error": "the database does not accept writes"})
        }
    };
    // Any answer about an unknown invoice shows the backend is there.
    let lightning = match state
        .lightning
        .lookup_invoice(&PaymentHash(probe_hash(state)))
        .await
    {
        Ok(_) | Err(LightningError::NotFound) => {
            json!({"backend": state.lightning.name(), "ok": true})
        }
        Err(e) => {
            tracing::error!(error = %e, "health check: the Lightning backend did not answer");
            json!({"backend": state.lightning.name(), "ok": false, "error": "the Lightning backend does not answer"})
        }
    };
    let p = state.oracle.status();
    let price = json!({
        "source": p.source.as_str(),
        "age_secs": p.age.map(|a| a.as_secs()),
        "stale": p.stale,
    });
    let down = database["ok"] == false || lightning["ok"] == false;
    let (code, status) = match (down, p.stale) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (false, true) => (StatusCode::OK, "degraded"),
        (false, false) => (StatusCode::OK, "ok"),
    };
    (
        code,
        json!({
            "status": status,
            "database": database,
            "lightning": lightning,
            "price": price,
            "real_money": state.lightning.is_real_money(),
        }),
    )
}
