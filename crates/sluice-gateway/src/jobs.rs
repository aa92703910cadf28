//! Two-phase jobs on the wire: `POST /v1/jobs`, `GET /v1/jobs/{id}` and
//! `POST /v1/jobs/{id}/refund`. The jobs themselves — evaluation, the work
//! invoice, the work, re-pricing, takeover after a crash — are the service's
//! (`sluice_service::jobs`). Job ids are capabilities: logs show `log_ref`s.

use axum::{
    Extension, Json,
    extract::{State, rejection::JsonRejection},
    http::StatusCode,
    response::Response,
};
use sluice_core::JobState;
use sluice_proto::api::{
    AlreadyClaimed, ClaimBody, ClaimPaid, ClaimPaying, CreateJob, ErrorBody, JobCreated, JobView,
    WaitQuery,
};

use crate::{
    error::ApiError,
    extract::{ApiPath, ApiQuery},
    identity::Identity,
    state::AppState,
    views,
};

/// Create a job: its evaluation invoice. Paying it starts the evaluation,
/// which prices the work and asks for a second invoice.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", operation_id = "create_job",
    request_body = CreateJob,
    responses((status = 201, body = JobCreated), (status = "4XX", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    identity: Option<Extension<Identity>>,
    body: Result<Json<CreateJob>, JsonRejection>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let sluice = &state.sluice;
    sluice.jobs_enabled()?;
    let Json(b) = body?;
    let pubkey = crate::identity::pubkey_of(&identity);
    let job = sluice.create_job(b.request, pubkey.clone()).await?;
    let tier = job.standing.as_ref().map(|s| s.tier.as_str().to_owned());
    Ok((
        StatusCode::CREATED,
        Json(JobCreated {
            job_id: job.id,
            state: JobState::AwaitingEvalPayment.as_str().to_owned(),
            eval_invoice: views::job_invoice(sluice, &job.eval_invoice),
            trust_tier: tier.filter(|_| pubkey.is_some()),
            pubkey: pubkey.filter(|_| job.standing.is_some()),
        }),
    ))
}

/// A job, as far as it got; `?wait=N` long-polls up to N seconds (at most
/// 60) for its state to change.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, description = "the job's id"), WaitQuery),
    responses((status = 200, body = JobView), (status = "4XX", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.sluice.job(&id, q.wait).await?;
    views::job(&state.sluice, &job).await.map(Json)
}

/// Pay the job's refund to the caller's invoice, once.
#[utoipa::path(post, path = "/v1/jobs/{id}/refund", tag = "jobs", operation_id = "claim_job_refund",
    params(("id" = String, Path, description = "the job's id")),
    request_body = ClaimBody,
    responses((status = 200, body = ClaimPaid), (status = 202, body = ClaimPaying),
        (status = 409, body = AlreadyClaimed), (status = "4XX", body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub async fn claim_refund(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: Result<Json<ClaimBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.sluice.jobs_enabled()?;
    let Json(b) = body?;
    let rid = state
        .sluice
        .job_refund_id(&id, b.refund_id.as_deref())
        .await?;
    crate::refunds::claim(&state.sluice, &rid, &b.invoice).await
}
