//! Two-phase jobs on the wire: `POST /v1/jobs`, `GET /v1/jobs/{id}` and
//! `POST /v1/jobs/{id}/refund`. The jobs themselves — evaluation, the work
//! invoice, the work, re-pricing, takeover after a crash — are the service's
//! (`sluice_service::jobs`). Job ids are capabilities: logs show `log_ref`s.

use axum::{
    Extension, Json,
    extract::{State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{JobState, Msat, UsdMicros};
use sluice_store::{JobInvoice, JobRow};

pub use sluice_service::jobs::check_request;

use crate::{
    error::ApiError,
    extract::{ApiPath, ApiQuery},
    state::AppState,
};

fn invoice_json(state: &AppState, i: &JobInvoice) -> Value {
    let mut v = json!({
        "bolt11": i.bolt11,
        "payment_hash": i.payment_hash,
        "amount_sats": i.amount.to_sats_floor(),
        "expires_at": i.expires_at_ms / 1000,
    });
    if !state.lightning.is_real_money() {
        v["warning"] = Value::String("dev wallet invoice: NOT real money".into());
    }
    v
}

/// Body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// What to do.
    pub request: Option<String>,
}

/// `POST /v1/jobs`: a job and its evaluation invoice.
pub async fn create(
    State(state): State<AppState>,
    identity: Option<Extension<crate::identity::Identity>>,
    body: Result<Json<CreateJob>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.jobs_enabled()?;
    let Json(b) = body?;
    let pubkey = crate::identity::pubkey_of(&identity);
    let job = state.create_job(b.request, pubkey.clone()).await?;
    let mut body = json!({
        "job_id": job.id,
        "state": JobState::AwaitingEvalPayment.as_str(),
        "eval_invoice": invoice_json(&state, &job.eval_invoice),
    });
    if let (Some(pk), Some(s)) = (pubkey, job.standing) {
        body["pubkey"] = pk.into();
        body["trust_tier"] = s.tier.as_str().into();
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `?wait=N`: long-poll up to N seconds (at most 60) for the state to change.
#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    /// Seconds to wait.
    pub wait: Option<u64>,
}

/// `GET /v1/jobs/{id}`
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<Value>, ApiError> {
    let job = state.job(&id, q.wait).await?;
    job_json(&state, &job).await.map(Json)
}

async fn job_json(state: &AppState, job: &JobRow) -> Result<Value, ApiError> {
    let mut v = json!({
        "job_id": job.id,
        "state": job.state.as_str(),
        "eval_model": job.eval_model,
        "work_model": job.work_model,
        "created_at": job.created_at_ms / 1000,
        "updated_at": job.updated_at_ms / 1000,
    });
    match job.state {
        JobState::AwaitingEvalPayment => v["eval_invoice"] = invoice_json(state, &job.eval_invoice),
        JobState::AwaitingWorkPayment => {
            if let Some(w) = &job.work_invoice {
                v["work_invoice"] = invoice_json(state, w);
            }
        }
        _ => {}
    }
    if let Some(r) = &job.reason {
        v["reason"] = Value::String(r.clone());
    }
    if let Some(r) = &job.result {
        v["result"] = Value::String(r.clone());
    }
    if let Some(p) = &job.pubkey {
        v["pubkey"] = p.clone().into();
    }
    if let Some(f) = &job.free_tier {
        v["free_tier"] = f.clone().into();
        v["absorb_cap_msat"] = job.absorb_cap.map(Msat::msat).into();
        v["absorbed_msat"] = job.absorbed.map(Msat::msat).into();
    }
    v["cost"] = json!({
        "eval_fee_msat": job.eval_invoice.amount.msat(),
        "work_paid_msat": job.work_invoice.as_ref().map(|w| w.amount.msat()),
        "work_charged_msat": job.work_charged.map(Msat::msat),
        "estimated_input_tokens": job.est_input_tokens,
        "estimated_output_tokens": job.est_output_tokens,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "btc_usd": job.work_btc_usd_micros.map(|m| UsdMicros(m).to_decimal_string()),
    });
    if let Some(rid) = &job.refund_id
        && let Some(r) = state.store.refund(rid).await?
    {
        let mut refund = crate::refunds::refund_json(&r, state);
        refund["claim"] = json!(crate::refunds::claim_hint(
            state,
            &format!("/v1/jobs/{}/refund", job.id),
            &r
        ));
        v["refund"] = refund;
    }
    Ok(v)
}

/// `POST /v1/jobs/{id}/refund`: pay the job's refund to the caller's invoice, once.
pub async fn claim_refund(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<Json<crate::refunds::ClaimBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.jobs_enabled()?;
    let Json(b) = body?;
    let rid = state.job_refund_id(&id, b.refund_id.as_deref()).await?;
    crate::refunds::claim(&state, &rid, &b.invoice).await
}

/// Resume or fail the jobs a stopped process left (`sluice_service::jobs::resume_at_start`).
pub async fn resume_at_start(state: &AppState) {
    sluice_service::jobs::resume_at_start(&state.sluice).await;
}

/// Take over the jobs of processes that stopped (`sluice_service::jobs::reconcile`).
pub async fn reconcile(state: &AppState) {
    sluice_service::jobs::reconcile(&state.sluice).await;
}
