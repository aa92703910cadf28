//! Two-phase jobs: pay a small evaluation fee; a model decides whether to
//! take the request; if accepted, pay the work invoice (priced from the
//! estimate); the work runs in the background and is re-priced at its actual
//! cost at the BTC price locked at invoice time; what was overpaid is a
//! refund the payer claims with an invoice of their own.
//!
//! Every transition is conditional in the store, so a state advances once
//! even under concurrent polls or several gateway processes. The process
//! whose credit of a payment succeeded runs the next phase, and owns the job
//! while it runs (`job_attempt` records its instance). A job is taken over
//! only when its owner has stopped sending heartbeats — at start and on every
//! heartbeat: one left `evaluating` is evaluated again (idempotent), one left
//! `executing` is failed and its work payment refunded
//! (`sluice_core::job::on_restart`). Work that merely runs long is never
//! failed by another process.
//!
//! The work is limited to the output its payment covers (the work invoice,
//! plus what the free tier absorbs), at the price locked at invoice time.
//! Job ids are capabilities (they claim a job's refund): logs show
//! [`log_ref`]s instead.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use sluice_core::{
    BtcUsd, JobError, JobState, Msat, RefundEvent, RestartAction, UsdMicros, covered_output,
    job::validate_request, on_restart, output_budget,
};
use sluice_store::{Evaluation, GrantKind, JobInvoice, JobRow, NewJob, StoreError, WorkOutcome};

use crate::{
    JobModels, ServiceError, Sluice, log_ref, request::ChatBody, sessions::lightning_error,
    upstream::Completion,
};

/// The instruction given to the evaluation model.
const EVAL_PROMPT: &str = "You decide whether an AI assistant should take on a user's request. \
Accept ordinary questions and tasks; reject requests that are harmful, illegal, or impossible to answer in text. \
Reply with JSON only: {\"accepted\": true or false, \"reason\": \"one short sentence\"}.";
/// Output limit of an evaluation.
const EVAL_MAX_TOKENS: u64 = 128;

impl Sluice {
    /// The jobs' models; not found when jobs are not enabled.
    pub fn jobs_enabled(&self) -> Result<&JobModels, ServiceError> {
        self.job_models.as_ref().ok_or_else(|| {
            ServiceError::not_found("not_found", "jobs are not enabled on this gateway")
        })
    }
}

fn ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn invoice_of(inv: &sluice_lightning::Invoice) -> JobInvoice {
    JobInvoice {
        payment_hash: inv.payment_hash.to_hex(),
        bolt11: inv.bolt11.clone(),
        amount: inv.amount,
        expires_at_ms: ms(inv.expires_at),
    }
}

fn store_error(e: StoreError) -> ServiceError {
    match e {
        StoreError::NotFound => ServiceError::not_found("job_not_found", "no such job"),
        other => other.into(),
    }
}

/// Check a job's or demo's request text against `jobs.max_request_chars`,
/// with distinct errors for missing and too long; `hint` ends the missing one.
pub fn check_request(state: &Sluice, text: Option<&str>, hint: &str) -> Result<(), ServiceError> {
    validate_request(text, state.jobs.max_request_chars).map_err(|e| match e {
        JobError::RequestTooLong { .. } => {
            ServiceError::bad_request("request_too_long", e.to_string())
        }
        other => ServiceError::bad_request("request_missing", format!("{other}{hint}")),
    })
}

impl Sluice {
    /// Create a job for `request` (bound to `pubkey` if an identity was
    /// presented) and its evaluation invoice.
    pub async fn create_job(
        &self,
        request: Option<String>,
        pubkey: Option<String>,
    ) -> Result<CreatedJob, ServiceError> {
        let models = self.jobs_enabled()?.clone();
        check_request(self, request.as_deref(), "")?;
        let request = request.unwrap_or_default();
        let fee =
            Msat::from_sats(self.jobs.eval_fee_sats).map_err(|e| ServiceError::internal(&e))?;
        let inv = self
            .lightning
            .create_invoice(fee, "sluice job evaluation fee", self.invoice_expiry)
            .await
            .map_err(lightning_error)?;
        let id = self.new_id("job");
        let eval_invoice = invoice_of(&inv);
        self.store
            .create_job(&NewJob {
                id: id.clone(),
                request,
                eval_model: models.eval,
                work_model: models.work,
                eval_invoice: eval_invoice.clone(),
                created_at_ms: self.now_ms(),
                pubkey: pubkey.clone(),
            })
            .await?;
        tracing::info!(job = %log_ref(&id), "job created");
        let standing = match &pubkey {
            Some(pk) => Some(crate::free::standing(self, pk, self.now_ms()).await?),
            None => None,
        };
        Ok(CreatedJob {
            id,
            eval_invoice,
            standing,
        })
    }

    /// Job `id`; with `wait` seconds (at most 60), once its state changed or
    /// the time is up.
    pub async fn job(&self, id: &str, wait: Option<u64>) -> Result<JobRow, ServiceError> {
        self.jobs_enabled()?;
        let read = || async {
            self.store
                .job(id)
                .await?
                .ok_or_else(|| store_error(StoreError::NotFound))
        };
        let mut job = read().await?;
        if let Some(wait) = wait.filter(|w| *w > 0) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(60));
            let first = job.state;
            while job.state == first
                && !first.is_terminal()
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
                job = read().await?;
            }
        }
        Ok(job)
    }

    /// The refund job `id` owes (`wanted`: the id the caller named, if any).
    pub async fn job_refund_id(
        &self,
        id: &str,
        wanted: Option<&str>,
    ) -> Result<String, ServiceError> {
        let job = self.job(id, None).await?;
        let rid = job.refund_id.ok_or_else(|| {
            ServiceError::bad_request("nothing_to_refund", "this job owes no refund")
        })?;
        if wanted.is_some_and(|w| w != rid) {
            return Err(ServiceError::not_found(
                "refund_not_found",
                "this job owes no refund with that id",
            ));
        }
        Ok(rid)
    }
}

/// A job just created: pay its evaluation invoice.
#[derive(Debug, Clone)]
pub struct CreatedJob {
    /// The job's id (a capability: it claims the job's refund).
    pub id: String,
    /// The evaluation fee's invoice.
    pub eval_invoice: JobInvoice,
    /// The standing of the identity it is bound to, if any.
    pub standing: Option<crate::free::Standing>,
}

/// A settled invoice: if it pays a job, record it and start the next phase.
/// Returns whether the invoice was a job's.
pub async fn invoice_paid(state: &Arc<Sluice>, payment_hash: &str, preimage_hex: &str) -> bool {
    match state
        .store
        .job_invoice_paid(
            payment_hash,
            preimage_hex,
            &state.instance_id,
            state.now_ms(),
        )
        .await
    {
        Ok(Some(job)) => {
            tracing::info!(job = %log_ref(&job.id), state = job.state.as_str(), "job invoice paid");
            spawn_phase(state, job.id.clone(), job.state);
            true
        }
        Ok(None) => true,
        Err(StoreError::NotFound) => false,
        Err(e) => {
            tracing::error!(error = %e, "could not record a job payment");
            true
        }
    }
}

fn spawn_phase(state: &Arc<Sluice>, id: String, st: JobState) {
    let s = state.clone();
    match st {
        JobState::Evaluating => {
            state.tasks.spawn(async move { evaluate(&s, &id).await });
        }
        JobState::Executing => {
            state.tasks.spawn(async move { execute(&s, &id).await });
        }
        _ => {}
    }
}

fn parse_verdict(text: &str) -> Option<(bool, String)> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let v: Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    let accepted = v.get("accepted")?.as_bool()?;
    let reason = v
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_owned();
    Some((accepted, reason))
}

fn refund_expiry(state: &Sluice) -> i64 {
    state
        .now_ms()
        .saturating_add(ms(state.jobs.refund_expiry_secs))
}

fn dust(state: &Sluice) -> Msat {
    crate::refunds::dust_threshold(state)
}

async fn call(
    state: &Arc<Sluice>,
    model: &str,
    messages: Vec<(String, String)>,
    max_tokens: u64,
) -> Result<Completion, String> {
    let m = state
        .models
        .get(model)
        .ok_or_else(|| format!("model {model} is not configured"))?;
    let mut body = serde_json::Map::new();
    body.insert("model".into(), m.upstream_model.clone().into());
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .iter()
                .map(|(r, c)| json!({"role": r, "content": c}))
                .collect(),
        ),
    );
    body.insert(m.limit_field.as_str().into(), max_tokens.into());
    m.upstream
        .complete(state.call(body, messages, max_tokens))
        .await
        .map_err(|e| e.to_string())
}

/// Job `id` if it is in `phase`, with this process's attempt at it counted
/// (the attempt records this instance as the job's owner).
async fn begin_phase(state: &Sluice, id: &str, phase: JobState) -> Option<JobRow> {
    let job = state.store.job(id).await.ok()??;
    if job.state != phase {
        return None;
    }
    if let Err(e) = state
        .store
        .job_attempt(id, &state.instance_id, state.now_ms())
        .await
    {
        tracing::error!(job = %log_ref(id), error = %e, "could not count an attempt");
    }
    Some(job)
}

/// Run (or re-run) the evaluation of a job in `evaluating`.
pub async fn evaluate(state: &Arc<Sluice>, id: &str) {
    let Some(job) = begin_phase(state, id, JobState::Evaluating).await else {
        return;
    };
    let messages = vec![
        ("system".to_owned(), EVAL_PROMPT.to_owned()),
        ("user".to_owned(), job.request.clone()),
    ];
    let outcome = match call(state, &job.eval_model, messages, EVAL_MAX_TOKENS).await {
        Err(e) => Evaluation::Failed {
            reason: format!("the evaluation could not be done: {e}"),
        },
        Ok(c) => match parse_verdict(&c.text) {
            None => Evaluation::Failed {
                reason: "the evaluator's answer could not be read".into(),
            },
            Some((false, reason)) => Evaluation::Rejected { reason },
            Some((true, _)) => match quote_work(state, &job).await {
                Ok(o) => o,
                Err(reason) => Evaluation::Failed { reason },
            },
        },
    };
    match state
        .store
        .job_evaluated(
            id,
            &outcome,
            &state.free.accounting,
            state.now_ms(),
            refund_expiry(state),
            dust(state),
        )
        .await
    {
        Ok(j) => {
            tracing::info!(job = %log_ref(id), state = j.state.as_str(), "job evaluated");
            // A free job has no work invoice: its work starts now.
            spawn_phase(state, j.id.clone(), j.state);
        }
        Err(StoreError::Conflict(_)) => {} // another process recorded it first
        Err(e) => tracing::error!(job = %log_ref(id), error = %e, "could not record an evaluation"),
    }
}

/// Price the work from the estimate and invoice it.
async fn quote_work(state: &Arc<Sluice>, job: &JobRow) -> Result<Evaluation, String> {
    let body = ChatBody::parse(
        json!({"model": job.work_model, "messages": [{"role": "user", "content": job.request}]}),
    )
    .map_err(|e| e.message)?;
    let p = crate::pricing::price(state, &body)
        .await
        .map_err(|e| e.message)?;
    let (amount, est_out) = match &p.quote {
        Some(q) => (q.charged, q.charged_output_tokens),
        None => (p.hold.hold, p.max_out),
    };
    let amount = Msat::from_sats(amount.to_sats_ceil().max(1)).map_err(|e| e.to_string())?;
    // The free-tier decision, on the quote, before the work invoice.
    let free = match &job.pubkey {
        Some(pk) => Some(
            crate::free::decide_for_pubkey(state, pk, amount, &job.work_model, GrantKind::Job)
                .await
                .map_err(|e| e.message)?,
        ),
        None => None,
    };
    let ask = free.and_then(|f| f.ask);
    let charge = amount.saturating_sub(ask.as_ref().map_or(Msat::ZERO, |a| a.cap));
    if let Some(grant) = ask.clone()
        && charge == Msat::ZERO
    {
        return Ok(Evaluation::AcceptedFree {
            grant,
            btc_usd_micros: p.btc.micros(),
            est_input_tokens: p.input,
            est_output_tokens: est_out,
        });
    }
    // A partial decision invoices the payer's part, in whole sats (at least 1).
    let amount = Msat::from_sats(charge.to_sats_ceil().max(1)).map_err(|e| e.to_string())?;
    let inv = state
        .lightning
        .create_invoice(amount, "sluice job work", state.invoice_expiry)
        .await
        .map_err(|e| format!("could not create the work invoice: {e}"))?;
    Ok(Evaluation::Accepted {
        work_invoice: invoice_of(&inv),
        grant: ask,
        btc_usd_micros: p.btc.micros(),
        est_input_tokens: p.input,
        est_output_tokens: est_out,
    })
}

/// Run the work of a job in `executing`.
pub async fn execute(state: &Arc<Sluice>, id: &str) {
    let Some(job) = begin_phase(state, id, JobState::Executing).await else {
        return;
    };
    let outcome = run_work(state, &job)
        .await
        .unwrap_or_else(|reason| WorkOutcome::Failed { reason });
    match state
        .store
        .job_finished(
            id,
            &outcome,
            &state.free.accounting,
            state.now_ms(),
            refund_expiry(state),
            dust(state),
        )
        .await
    {
        Ok(j) => tracing::info!(job = %log_ref(id), state = j.state.as_str(), "job finished"),
        Err(StoreError::Conflict(_)) => {}
        Err(e) => {
            tracing::error!(job = %log_ref(id), error = %e, "could not record a finished job")
        }
    }
}

async fn run_work(state: &Arc<Sluice>, job: &JobRow) -> Result<WorkOutcome, String> {
    let m = state
        .models
        .get(&job.work_model)
        .ok_or_else(|| format!("model {} is not configured", job.work_model))?;
    let btc = job
        .work_btc_usd_micros
        .and_then(|p| BtcUsd::new(UsdMicros(p)).ok())
        .ok_or_else(|| "the job has no locked BTC price".to_owned())?;
    let messages = vec![("user".to_owned(), job.request.clone())];
    let input = job.est_input_tokens.unwrap_or(0);
    let max_out = output_budget(None, m.budget, input).map_err(|e| e.to_string())?;
    // No more output than the payment covers: the work invoice plus what the
    // free tier absorbs, at the price locked when the invoice was made.
    let paid = job
        .work_invoice
        .as_ref()
        .map_or(Msat::ZERO, |w| w.amount)
        .checked_add(job.absorb_cap.unwrap_or(Msat::ZERO))
        .map_err(|e| e.to_string())?;
    let limit = covered_output(&m.rates, btc, input, paid, max_out).map_err(|e| e.to_string())?;
    if limit == 0 {
        return Err("the work payment does not cover the request's input".to_owned());
    }
    let c = call(state, &job.work_model, messages, limit)
        .await
        .map_err(|e| format!("the work failed: {e}"))?;
    let metering = crate::metering::Metering::of(m);
    let usage = metering.usage_of(&c, input);
    let actual_charge = metering.cost_of(usage, btc);
    Ok(WorkOutcome::Completed {
        result: c.text,
        usage,
        actual_charge,
    })
}

/// Look up the unpaid job invoices (the fallback when a settlement push is
/// missed), expired or not, until the backend says each is settled or
/// definitely unpaid: a payment made while the gateway was down and seen
/// after the invoice's expiry is still credited.
pub async fn poll_pending(state: &Arc<Sluice>) {
    let Ok(pending) = state.store.pending_job_invoices(500).await else {
        return;
    };
    for p in pending {
        let Ok(hash) = sluice_lightning::PaymentHash::from_hex(&p.payment_hash) else {
            continue;
        };
        match state.lightning.lookup_invoice(&hash).await {
            Ok(sluice_lightning::InvoiceStatus::Settled { preimage, .. }) => {
                invoice_paid(state, &p.payment_hash, &preimage.to_hex()).await;
            }
            Ok(sluice_lightning::InvoiceStatus::Expired)
                if crate::invoices::past_expiry_grace(state.now_ms(), p.expires_at_ms) =>
            {
                if let Err(e) = state
                    .store
                    .job_invoice_dead(&p.payment_hash, state.now_ms())
                    .await
                {
                    tracing::warn!(job = %log_ref(&p.job_id), error = %e, "could not mark a job invoice expired");
                }
            }
            Ok(
                sluice_lightning::InvoiceStatus::Expired | sluice_lightning::InvoiceStatus::Pending,
            ) => {}
            Err(e) => {
                tracing::warn!(job = %log_ref(&p.job_id), error = %e, "job invoice lookup failed")
            }
        }
    }
}

/// At start: take over the jobs of stopped gateways (see [`reconcile`]).
pub async fn resume_at_start(state: &Arc<Sluice>) {
    reconcile(state).await;
}

/// Take over jobs whose gateway process stopped (no heartbeat for the
/// staleness window, or never owned): resume evaluations, fail (and refund)
/// interrupted work. A job whose owner is alive is left alone however long
/// its work runs. Each job is adopted by one process (a conditional update).
pub async fn reconcile(state: &Arc<Sluice>) {
    if state.job_models.is_none() {
        return;
    }
    let now = state.now_ms();
    let orphans = match state.store.orphaned_jobs(state.stale_before(now)).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "could not list jobs of stopped gateways");
            return;
        }
    };
    for job in orphans {
        match state
            .store
            .adopt_job(&job.id, job.instance_id.as_deref(), &state.instance_id, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue, // another process took it
            Err(e) => {
                tracing::warn!(job = %log_ref(&job.id), error = %e, "could not take a job over");
                continue;
            }
        }
        match on_restart(job.state) {
            RestartAction::Resume => spawn_phase(state, job.id.clone(), job.state),
            RestartAction::FailAndRefund => {
                let failed = WorkOutcome::Failed {
                    reason: "the gateway stopped while the work ran".into(),
                };
                match state
                    .store
                    .job_finished(
                        &job.id,
                        &failed,
                        &state.free.accounting,
                        state.now_ms(),
                        refund_expiry(state),
                        dust(state),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::warn!(job = %log_ref(&job.id), "interrupted job failed and refunded")
                    }
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => {
                        tracing::error!(job = %log_ref(&job.id), error = %e, "could not fail an interrupted job")
                    }
                }
            }
            RestartAction::Nothing => {}
        }
    }
}

/// Move unclaimed refunds past their expiry to the generosity pool. One whose
/// last payout the backend reported failed is looked up first: if that
/// payment arrived after all, it is the refund's payout, not the pool's.
pub async fn expire_refunds(state: &Arc<Sluice>) {
    let now = state.now_ms();
    let Ok(expired) = state.store.expired_refunds(now).await else {
        return;
    };
    for r in expired {
        let mut event = RefundEvent::Expire { now_ms: now };
        if let Some(failed) = r.refund.failed_hash.clone()
            && let Ok(h) = sluice_lightning::PaymentHash::from_hex(&failed)
        {
            match state.lightning.lookup_payment(&h).await {
                Ok(sluice_lightning::PaymentStatus::Succeeded { preimage, fee }) => {
                    event = RefundEvent::PayoutSucceeded {
                        payment_hash: failed,
                        preimage: preimage.to_hex(),
                        fee,
                    };
                }
                Ok(
                    sluice_lightning::PaymentStatus::Failed
                    | sluice_lightning::PaymentStatus::NotFound,
                ) => {}
                Ok(sluice_lightning::PaymentStatus::Pending) | Err(_) => continue,
            }
        }
        match state.store.refund_event(&r.id, event, state.now_ms()).await {
            Ok(row) => {
                tracing::info!(refund = %log_ref(&r.id), state = row.refund.state.as_str(), "unclaimed refund settled at its expiry")
            }
            Err(e) => {
                tracing::warn!(refund = %log_ref(&r.id), error = %e, "could not expire a refund")
            }
        }
    }
}
