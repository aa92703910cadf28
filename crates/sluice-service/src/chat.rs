//! A chat request paid and answered: estimate → decide (free tier, L402
//! prepayment) → hold → call the upstream → meter → settle at actual → the
//! answer, complete or streamed, with its cost.
//!
//! Once a hold is taken, the upstream call and its settlement run in a
//! tracked task, never in the handler's future: a client that hangs up (even
//! before the upstream answers headers) cannot drop the work that ends the
//! hold, and shutdown waits for it. Every hold also has a deadline (the
//! model's longest request plus a grace), past which any process releases it.
//!
//! The upstream is told exactly one output limit: the most output the hold
//! (plus what the free tier covers) pays for. A stream is also cut by the
//! gateway itself when its counted output passes that limit, when it goes
//! idle (chunks without output do not count), or when it reaches the model's
//! longest duration.
//!
//! Failure rules:
//! - the upstream fails before any output: the whole hold is released (502/504);
//! - the client disconnects mid-stream: charged for the tokens generated until
//!   the gateway noticed, never above the hold;
//! - a settlement that fails (the database refuses a write) is retried until
//!   the hold's deadline; after it the hold is released and the answer's cost
//!   is recorded as the operator's loss;
//! - the gateway dies mid-request: the hold is released by any live process
//!   (see [`crate::background`]).

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use serde_json::{Value, json};
use sluice_core::{BtcUsd, Msat, TokenUsage};
use sluice_proto::{
    api::Receipt,
    openai::{ChatCompletionChunk, Usage},
};
use sluice_store::{
    GrantKind, HoldOutcome, NewHold, RequestStatus, SettleRequest, Settled, SpendCap,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    ServiceError, Sluice,
    auth::Payer,
    metering::Metering,
    request::ChatBody,
    upstream::{ChatCall, ChunkStream, UpstreamError, chunk_text, finish_reason_of, usage_of},
};

/// A chat request, parsed, with who pays for it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The request.
    pub body: ChatBody,
    /// Who pays: `None` when no credential came with it (free, or L402).
    pub payer: Option<Payer>,
    /// The identity presented, if any (the free tier decides for it).
    pub pubkey: Option<String>,
    /// Who the caller is when neither pays nor identifies (its client
    /// address, IPv6 by /64): bounds what one caller teaches the estimators.
    pub anonymous: String,
}

/// What a chat request came to.
#[derive(Debug)]
pub enum ChatOutcome {
    /// The whole answer, settled.
    Complete(CompleteAnswer),
    /// The answer as it is generated; settled when it ends.
    Stream(StreamAnswer),
    /// Pay first, over L402 (a new token, or a top-up of the one presented).
    PayFirst(PayFirst),
}

/// A complete answer.
#[derive(Debug)]
pub struct CompleteAnswer {
    /// The OpenAI chat completion, with `usage` and the `sluice` receipt.
    pub response: Value,
    /// What was charged, absorbed and released.
    pub settled: Settled,
    /// The request's id.
    pub request_id: String,
    /// Whether a balance paid (its balance after is then meaningful).
    pub paid: bool,
}

/// A streamed answer.
#[derive(Debug)]
pub struct StreamAnswer {
    /// The chunks, then the last one with the cost, then [`ChatEvent::Done`]
    /// (or an error). A receiver that stops reading is a client gone.
    pub events: mpsc::Receiver<ChatEvent>,
    /// The request's id.
    pub request_id: String,
    /// What was held.
    pub hold: Msat,
    /// The balance after the hold, when a balance pays.
    pub balance_after_hold: Option<Msat>,
    /// The free-tier decision, when the free tier covers part of it.
    pub free_tier: Option<&'static str>,
}

/// One event of a streamed answer.
#[derive(Debug)]
pub enum ChatEvent {
    /// An OpenAI chat completion chunk.
    Chunk(Value),
    /// The answer failed (what was generated is still charged, and said so).
    Error(ServiceError),
    /// The end.
    Done,
}

/// An L402 challenge to issue before the request is served.
#[derive(Debug)]
pub struct PayFirst {
    /// What to ask for.
    pub amount: Msat,
    /// The token to top up, if one was presented.
    pub token: Option<[u8; 32]>,
    /// The identity a new token is bound to.
    pub pubkey: Option<String>,
    /// Why, for the message.
    pub why: &'static str,
    /// The credential that asked (a restricted one gets no new macaroon).
    pub presented: Option<Payer>,
}

/// Everything needed to settle one request.
struct Meter {
    state: Arc<Sluice>,
    request_id: String,
    /// The paying session; `None` for a request the pool pays in full.
    session_id: Option<String>,
    /// The free-tier decision, when one applies (free or partial).
    free: Option<crate::free::FreeDecision>,
    public_model: String,
    /// How the model's answers are metered (rates, tokenizer, upstream).
    metering: Metering,
    btc: BtcUsd,
    hold: Msat,
    input_estimate: u64,
    started: sluice_env::Stopwatch,
    class: sluice_core::RequestClass,
    default_max_output: u64,
    p90_cost: Option<Msat>,
    /// The output limit the upstream was told (what the hold pays for).
    limit: u64,
    /// Time allowed between chunks that carry output.
    idle: Duration,
    /// The most the request may take.
    max_duration: Duration,
    /// When the hold must have ended: settlement is retried until shortly before.
    deadline: tokio::time::Instant,
    /// Who pays, for bounding what one payer teaches the estimators.
    payer_key: String,
}

/// Settlement attempts are spaced out from this, doubling.
const SETTLE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// ...up to this.
const SETTLE_RETRY_MAX: Duration = Duration::from_secs(5);

impl Meter {
    fn count_output(&self, text: &str) -> u64 {
        self.metering.count_output(text)
    }

    /// Settle, retrying a failed write until shortly before the hold's
    /// deadline (after it, any process releases the hold).
    async fn settle(
        &self,
        usage: TokenUsage,
        status: RequestStatus,
        censored: bool,
    ) -> Result<Settled, ServiceError> {
        let actual = self.metering.cost_of(usage, self.btc);
        let (result, retried) = self
            .retrying("settle", || self.settle_once(usage, status, actual))
            .await;
        match result {
            Ok(s) => {
                self.learn(usage.output, actual, censored);
                Ok(s)
            }
            // A retry after a commit that reported an error but went through.
            Err(sluice_store::StoreError::Conflict(_)) if retried => {
                if let Some(s) = self.settled_already().await {
                    self.learn(usage.output, actual, censored);
                    return Ok(s);
                }
                Err(ServiceError::internal(
                    &"the request was finished elsewhere",
                ))
            }
            Err(sluice_store::StoreError::Released { loss, .. }) => {
                tracing::warn!(request_id = %self.request_id, loss_msat = loss.msat(), "the hold was released before this answer settled; its cost is the operator's loss");
                Err(ServiceError::unavailable(
                    "settlement_failed",
                    "this answer could not be recorded in time; nothing was charged",
                ))
            }
            Err(e) => {
                tracing::error!(request_id = %self.request_id, error = %e, "could not settle; the hold is released at its deadline");
                Err(e.into())
            }
        }
    }

    /// Run the store write `op`, retrying it while the database refuses
    /// writes and there is time before the hold's deadline (after it, any
    /// process releases the hold). Returns the last result, and whether a
    /// retry happened (a retried commit may have gone through unreported).
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        op: F,
    ) -> (Result<T, sluice_store::StoreError>, bool)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, sluice_store::StoreError>>,
    {
        let mut wait = SETTLE_RETRY_FIRST;
        let mut retried = false;
        loop {
            match op().await {
                Err(e @ sluice_store::StoreError::Database(_))
                    if tokio::time::Instant::now() + wait + SETTLE_RETRY_MAX < self.deadline =>
                {
                    tracing::error!(request_id = %self.request_id, error = %e, retry_in_ms = wait.as_millis() as u64, "could not {what}; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(SETTLE_RETRY_MAX);
                    retried = true;
                }
                result => return (result, retried),
            }
        }
    }

    /// The settlement a previous attempt wrote, read back (when its commit
    /// went through although it reported an error).
    async fn settled_already(&self) -> Option<Settled> {
        let r = self.state.store.request(&self.request_id).await.ok()??;
        if !matches!(r.status, RequestStatus::Settled | RequestStatus::ClientGone) {
            return None;
        }
        let session = self.state.store.session(&r.session_id).await.ok()??;
        let charged = r.charged.unwrap_or(Msat::ZERO);
        Some(Settled {
            charged,
            absorbed: r.absorbed.unwrap_or(Msat::ZERO),
            released: r.hold.saturating_sub(charged),
            balance: session.balance,
            state: session.state,
        })
    }

    async fn settle_once(
        &self,
        usage: TokenUsage,
        status: RequestStatus,
        actual: Msat,
    ) -> Result<Settled, sluice_store::StoreError> {
        let ask = self.free.as_ref().and_then(|f| f.ask.clone());
        let s = match &self.session_id {
            Some(session_id) => {
                self.state
                    .store
                    .settle(&SettleRequest {
                        request_id: self.request_id.clone(),
                        usage,
                        actual_cost: actual,
                        latency_ms: u64::try_from(self.started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        status,
                        now_ms: self.state.now_ms(),
                        policy: self.state.policy_for(session_id),
                        grant: ask,
                        accounting: self.state.free.accounting,
                    })
                    .await?
            }
            // Free: no hold; the pool absorbs what it can of the actual cost.
            None => {
                let absorbed = match &ask {
                    Some(a) => {
                        self.state
                            .store
                            .record_grant(
                                &self.request_id,
                                a,
                                actual,
                                &self.state.free.accounting,
                                self.state.now_ms(),
                            )
                            .await?
                    }
                    None => Msat::ZERO,
                };
                if absorbed < actual {
                    tracing::warn!(request_id = %self.request_id, cost_msat = actual.msat(), absorbed_msat = absorbed.msat(), "the pool could not absorb all of a free request");
                }
                Settled {
                    charged: Msat::ZERO,
                    absorbed,
                    released: Msat::ZERO,
                    balance: Msat::ZERO,
                    state: sluice_core::SessionState::Active,
                }
            }
        };
        tracing::info!(
            request_id = %self.request_id,
            input_tokens = usage.input,
            output_tokens = usage.output,
            charged_msat = s.charged.msat(),
            absorbed_msat = s.absorbed.msat(),
            released_msat = s.released.msat(),
            status = status.as_str(),
            "request settled"
        );
        Ok(s)
    }

    /// Learn the output length and the estimate's calibration, off the response path.
    fn learn(&self, output_tokens: u64, actual: Msat, censored: bool) {
        let Some(p90_estimate) = self.p90_cost else {
            return;
        };
        let o = crate::estimates::Observed {
            model: self.public_model.clone(),
            class: self.class,
            default_max_output: self.default_max_output,
            output_tokens,
            actual,
            p90_estimate,
            censored: censored || output_tokens >= self.limit,
            payer: self.payer_key.clone(),
        };
        let state = self.state.clone();
        self.state.tasks.spawn(async move {
            state
                .estimates
                .observe(&state.store, o, state.now_ms())
                .await
        });
    }

    async fn release(&self, why: &UpstreamError) {
        let Some(session_id) = &self.session_id else {
            tracing::warn!(request_id = %self.request_id, error = %why, "upstream failed before output; nothing was held");
            return;
        };
        tracing::warn!(request_id = %self.request_id, error = %why, "upstream failed before output; releasing the hold");
        let policy = self.state.policy_for(session_id);
        let (result, _) = self
            .retrying("release a hold", || {
                self.state.store.release(
                    &self.request_id,
                    RequestStatus::Failed,
                    self.state.now_ms(),
                    &policy,
                )
            })
            .await;
        if let Err(e) = result {
            tracing::error!(request_id = %self.request_id, error = %e, "could not release a hold; it is released at its deadline");
        }
    }

    /// The `sluice` receipt object added to responses.
    fn receipt(&self, usage: TokenUsage, s: &Settled) -> Receipt {
        Receipt {
            request_id: self.request_id.clone(),
            input_tokens_estimated: self.input_estimate,
            hold_msat: self.hold.msat(),
            cost_msat: s.charged.msat(),
            released_msat: s.released.msat(),
            btc_usd: sluice_core::UsdMicros(self.btc.micros()).to_decimal_string(),
            input_tokens: usage.input,
            output_tokens: usage.output,
            output_limit: self.limit,
            real_money: self.state.lightning.is_real_money(),
            price: sluice_core::itemize(&self.metering.rates, usage, self.btc)
                .ok()
                .map(|i| crate::pricing::itemized(&i)),
            balance_msat: self.session_id.is_some().then(|| s.balance.msat()),
            free_tier: self.free.as_ref().map(|f| f.decision.as_str().to_owned()),
            absorbed_msat: self.free.as_ref().map(|_| s.absorbed.msat()),
            tier: self.free.as_ref().map(|f| f.tier.as_str().to_owned()),
        }
    }

    /// Write the metered usage and the receipt into an answer object.
    fn stamp(&self, v: &mut Value, usage: TokenUsage, s: &Settled) {
        v["usage"] = to_json(&Usage::new(usage.input, usage.output, s.charged.msat()));
        v["sluice"] = to_json(&self.receipt(usage, s));
        self.mark_free(v, s);
    }

    /// Add `free_tier` and `absorbed_msat` to a response object that used the free tier.
    fn mark_free(&self, v: &mut Value, s: &Settled) {
        if let Some(f) = &self.free {
            v["free_tier"] = f.decision.as_str().into();
            v["absorbed_msat"] = s.absorbed.msat().into();
        }
    }
}

/// A wire type as JSON (they serialize infallibly: plain fields, string keys).
fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The chunk that ends a stream: no delta, or the finish reason (`stop`).
fn end_chunk(id: Value, created: Value, model: &str, finish: Option<&str>) -> Value {
    let choices = finish
        .map(|f| vec![json!({"index": 0, "delta": {}, "finish_reason": f})])
        .unwrap_or_default();
    to_json(&ChatCompletionChunk {
        id,
        object: "chat.completion.chunk".into(),
        created,
        model: model.to_owned(),
        choices,
        usage: None,
        sluice: None,
    })
}

pub fn upstream_error(e: &UpstreamError) -> ServiceError {
    match e {
        UpstreamError::Timeout => {
            ServiceError::upstream_timeout("the model's upstream timed out; nothing was charged")
        }
        UpstreamError::Unreachable(_) => ServiceError::upstream(
            "upstream_unreachable",
            "the model's upstream could not be reached; nothing was charged",
        ),
        UpstreamError::Status(s) => ServiceError::upstream(
            "upstream_error",
            format!("the model's upstream answered HTTP {s}; nothing was charged"),
        ),
        UpstreamError::Protocol(_) => ServiceError::upstream(
            "upstream_error",
            "the model's upstream sent an invalid answer; nothing was charged",
        ),
    }
}

impl Sluice {
    /// Answer a chat request paid by `payer` (or free, or to be paid first):
    /// see [`ChatOutcome`].
    pub async fn chat(self: &Arc<Self>, request: ChatRequest) -> Result<ChatOutcome, ServiceError> {
        let state = self;
        let ChatRequest {
            body: req,
            payer,
            pubkey,
            anonymous,
        } = request;
        let now = state.now_ms();
        let priced = crate::pricing::price(state, &req).await?;
        let model = priced.model;
        if let Some(allowed) = payer.as_ref().and_then(|p| p.models.as_ref())
            && !allowed.iter().any(|m| m == &req.model)
        {
            return Err(ServiceError::forbidden(
                "model_not_allowed",
                format!("this credential may only use: {}", allowed.join(", ")),
            ));
        }

        let (input, max_out, btc) = (priced.input, priced.max_out, priced.btc);
        // Sessions hold the most a request may cost. L402 requests prepay (and so
        // hold) the P90 estimate unless configured to prepay the maximum.
        let l402_hold = match (state.l402.prepay, &priced.quote) {
            (crate::config::L402Prepay::P90, Some(q)) => q.charged.min(priced.hold.hold),
            _ => priced.hold.hold,
        };
        let is_l402 = payer.as_ref().is_none_or(|p| p.l402_token.is_some());
        let estimate = if is_l402 { l402_hold } else { priced.hold.hold };
        // The upstream may produce no more than what is paid for: the hold plus
        // what the free tier covers, which together are the estimate.
        let limit = priced.covered_output(estimate)?;
        if limit == 0 {
            return Err(ServiceError::bad_request(
                "context_length_exceeded",
                "this request's input alone costs more than it may hold; shorten it",
            ));
        }
        // The free-tier decision, on the estimate, before any work.
        let free = match &pubkey {
            Some(pk) => {
                crate::free::decide_for_pubkey(state, pk, estimate, &model.name, GrantKind::Chat)
                    .await?
            }
            None => crate::free::FreeDecision::anonymous(),
        };
        let hold = free.decision.charge(estimate);
        let free = (free.decision.absorb() > Msat::ZERO).then_some(free);
        let payer_key = match (&payer, &pubkey) {
            (Some(p), _) => p.session_id.clone(),
            (None, Some(pk)) => format!("nostr:{pk}"),
            (None, None) => format!("ip:{anonymous}"),
        };
        let hold_deadline = tokio::time::Instant::now() + model.hold_lifetime();
        let meter = |session_id: Option<String>, free: Option<crate::free::FreeDecision>| Meter {
            state: state.clone(),
            request_id: state.new_id("req"),
            session_id,
            free,
            public_model: model.name.clone(),
            metering: Metering::of(model),
            btc,
            hold,
            input_estimate: input,
            started: sluice_env::Stopwatch::start(),
            class: priced.class,
            default_max_output: model.budget.default_max_output,
            p90_cost: priced.quote.as_ref().map(|q| q.cost_p90),
            limit,
            idle: model.idle,
            max_duration: model.max_duration,
            deadline: hold_deadline,
            payer_key: payer_key.clone(),
        };
        let call = self.call(
            req.upstream_body(&model.upstream_model, model.limit_field, limit),
            req.messages.clone(),
            limit,
        );
        if hold == Msat::ZERO {
            // Free: nothing to hold; the pool pays after the work.
            let m = meter(None, free);
            tracing::info!(request_id = %m.request_id, model = %model.name, estimate_msat = estimate.msat(), "free request");
            return if req.stream {
                stream_response(m, call, req.include_usage, None).await
            } else {
                complete_response(m, call).await
            };
        }
        let Some(payer) = payer else {
            let why = match &free {
                Some(_) => "the free tier covers part of this request; pay the rest",
                None => "payment required",
            };
            if state.l402.enabled {
                return Ok(ChatOutcome::PayFirst(PayFirst {
                    amount: hold,
                    token: None,
                    pubkey,
                    why,
                    presented: None,
                }));
            }
            return Err(ServiceError::unauthorized(
                "missing_credential",
                "missing Authorization: Bearer <macaroon>; create a session with POST /v1/sessions",
            ));
        };

        // Hold, atomically.
        let meter = meter(Some(payer.session_id.clone()), free);
        let request_id = meter.request_id.clone();
        let caps = payer
            .spend_caps
            .iter()
            .map(|c| SpendCap {
                key: c.key.clone(),
                cap: c.limit,
            })
            .collect();
        let lifetime = i64::try_from(model.hold_lifetime().as_millis()).unwrap_or(i64::MAX);
        let outcome = state
            .store
            .hold(&NewHold {
                request_id: request_id.clone(),
                session_id: payer.session_id.clone(),
                model: model.name.clone(),
                est_input_tokens: input,
                max_output_tokens: limit,
                hold,
                btc_usd_micros: btc.micros(),
                caps,
                instance_id: state.instance_id.clone(),
                stream: req.stream,
                now_ms: now,
                ttl_ms: i64::try_from(state.policy.ttl_secs.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
                pubkey,
                deadline_ms: now.saturating_add(lifetime),
            })
            .await?;
        let balance_after_hold = match outcome {
            HoldOutcome::Held { balance } => balance,
            HoldOutcome::Insufficient { balance } => {
                if let Some(token) = payer.l402_token {
                    let top_up = hold.saturating_sub(balance);
                    return Ok(ChatOutcome::PayFirst(PayFirst {
                        amount: top_up,
                        token: Some(token),
                        pubkey: None,
                        why: "this token's balance is too low",
                        presented: Some(payer),
                    }));
                }
                return Err(ServiceError::payment_required(
                    "insufficient_balance",
                    format!(
                        "this request may cost up to {} msat ({input} input tokens + up to {max_out} output tokens) and the session has {} msat available; top up with POST /v1/sessions/{}/topup or lower max_tokens",
                        hold.msat(),
                        balance.msat(),
                        payer.session_id
                    ),
                ));
            }
            HoldOutcome::NotActive(s) => {
                let (code, msg) = match s {
                    sluice_core::SessionState::AwaitingPayment => (
                        "session_awaiting_payment",
                        "the session's deposit invoice is not paid yet",
                    ),
                    sluice_core::SessionState::Paused => (
                        "session_paused",
                        "the session's balance is below the minimum; top up to resume",
                    ),
                    sluice_core::SessionState::Closed => (
                        "session_closed",
                        "the session was closed and its balance refunded; open a new one",
                    ),
                    _ => (
                        "session_expired",
                        "the session has expired; top up to revive it",
                    ),
                };
                return Err(ServiceError::payment_required(code, msg));
            }
            HoldOutcome::CapExceeded { cap, committed } => {
                return Err(ServiceError::payment_required(
                    "spend_cap_exceeded",
                    format!(
                        "this credential's spend cap is {} msat and {} msat is already spent or held; this request may cost up to {} msat",
                        cap.msat(),
                        committed.msat(),
                        hold.msat()
                    ),
                ));
            }
            HoldOutcome::NoSession => {
                return Err(ServiceError::unauthorized(
                    "invalid_credential",
                    "this credential's session does not exist",
                ));
            }
        };
        tracing::info!(request_id = %request_id, model = %model.name, hold_msat = hold.msat(), input_tokens = input, output_limit = limit, "hold taken");
        if req.stream {
            stream_response(meter, call, req.include_usage, Some(balance_after_hold)).await
        } else {
            complete_response(meter, call).await
        }
    }
}

async fn complete_response(meter: Meter, call: ChatCall) -> Result<ChatOutcome, ServiceError> {
    let tasks = meter.state.tasks.clone();
    // The task owns the settlement: a client that hangs up does not leave a hold open.
    let handle = tasks.spawn(
        async move {
            let answer = tokio::time::timeout(meter.max_duration, meter.metering.upstream.complete(call))
                .await
                .unwrap_or(Err(UpstreamError::Timeout));
            match answer {
                Err(e) => {
                    meter.release(&e).await;
                    Err(upstream_error(&e))
                }
                Ok(c) => {
                    let usage = meter.metering.usage_of(&c, meter.input_estimate);
                    let censored = c.finish_reason.as_deref() == Some("length");
                    if usage.output > meter.limit {
                        tracing::warn!(request_id = %meter.request_id, output_tokens = usage.output, limit = meter.limit, "the upstream produced more than the output limit it was told");
                    }
                    let s = meter.settle(usage, RequestStatus::Settled, censored).await?;
                    let mut resp = c.response;
                    resp["model"] = Value::String(meter.public_model.clone());
                    meter.stamp(&mut resp, usage, &s);
                    Ok((
                        resp,
                        s,
                        meter.request_id.clone(),
                        meter.session_id.is_some(),
                    ))
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    let (response, settled, request_id, paid) =
        handle.await.map_err(|e| ServiceError::internal(&e))??;
    Ok(ChatOutcome::Complete(CompleteAnswer {
        response,
        settled,
        request_id,
        paid,
    }))
}

async fn stream_response(
    meter: Meter,
    call: ChatCall,
    include_usage: bool,
    balance_after_hold: Option<Msat>,
) -> Result<ChatOutcome, ServiceError> {
    let request_id = meter.request_id.clone();
    let hold = meter.hold;
    let free_tier = meter.free.as_ref().map(|f| f.decision.as_str());
    // The upstream call runs in the tracked task too: if the client goes away
    // before the upstream answers headers, the task still ends the hold.
    let (started_tx, started_rx) =
        tokio::sync::oneshot::channel::<Result<mpsc::Receiver<ChatEvent>, ServiceError>>();
    meter.state.tasks.clone().spawn(
        async move {
            let upstream = match tokio::time::timeout(
                meter.max_duration,
                meter.metering.upstream.stream(call),
            )
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
            {
                Ok(s) => s,
                Err(e) => {
                    meter.release(&e).await;
                    let _ = started_tx.send(Err(upstream_error(&e)));
                    return;
                }
            };
            let (tx, rx) = mpsc::channel::<ChatEvent>(16);
            if started_tx.send(Ok(rx)).is_err() {
                // The client left before any byte: stop the upstream now and
                // charge only what it was sent (its input).
                drop(upstream);
                let usage = TokenUsage {
                    input: meter.input_estimate,
                    output: 0,
                };
                let _ = meter.settle(usage, RequestStatus::ClientGone, false).await;
                return;
            }
            pump(meter, upstream, tx, include_usage).await;
        }
        .instrument(tracing::Span::current()),
    );
    let events = started_rx.await.map_err(|e| ServiceError::internal(&e))??;
    Ok(ChatOutcome::Stream(StreamAnswer {
        events,
        request_id,
        hold,
        balance_after_hold,
        free_tier,
    }))
}

/// Hand `event` to the client's side of the stream, waiting at most `within`:
/// a client that stops reading is gone, as one that hangs up is (it cannot
/// hold the stream, and its hold, open until the hold's deadline).
async fn send_within(tx: &mpsc::Sender<ChatEvent>, event: ChatEvent, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, tx.send(event)).await,
        Ok(Ok(()))
    )
}

/// How far past its limit a stream's counted output may run before the
/// gateway cuts it (the gateway's tokenizer only approximates the model's).
fn cut_after(limit: u64) -> u64 {
    limit.saturating_add(limit / 8).saturating_add(8)
}

/// Forward chunks to the client, then settle and send the cost in the final chunk.
async fn pump(
    meter: Meter,
    mut upstream: ChunkStream,
    tx: mpsc::Sender<ChatEvent>,
    include_usage: bool,
) {
    let mut text = String::new();
    let mut counted: u64 = 0;
    let mut usage: Option<TokenUsage> = None;
    let mut held_finish: Option<Value> = None;
    let mut meta: Option<(Value, Value)> = None; // (id, created) of the stream
    let mut client_gone = false;
    let mut censored = false;
    // The gateway stopped a stream that ran past its limit (its own count is then the truth).
    let mut cut = false;
    let mut failure: Option<UpstreamError> = None;
    // A finish reason was seen: the upstream ended the answer itself.
    let mut finished = false;
    let overall = tokio::time::Instant::now() + meter.max_duration;
    let mut idle_deadline = tokio::time::Instant::now() + meter.idle;
    loop {
        let item = match tokio::time::timeout_at(idle_deadline.min(overall), upstream.next()).await
        {
            Ok(Some(item)) => item,
            Ok(None) if finished => break,
            // Closed before saying why it stopped: the answer was cut short.
            Ok(None) => {
                failure = Some(UpstreamError::Protocol(
                    "the stream ended without a finish reason".into(),
                ));
                break;
            }
            Err(_) => {
                let why = if idle_deadline < overall {
                    "went idle"
                } else {
                    "reached its longest duration"
                };
                tracing::warn!(request_id = %meter.request_id, "the stream {why}; cut");
                failure = Some(UpstreamError::Timeout);
                break;
            }
        };
        let mut chunk = match item {
            Ok(c) if c.is_object() => c,
            Ok(_) => {
                failure = Some(UpstreamError::Protocol(
                    "a chunk that is not an object".into(),
                ));
                break;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        if meta.is_none() {
            meta = Some((
                chunk.get("id").cloned().unwrap_or(Value::Null),
                chunk.get("created").cloned().unwrap_or(0.into()),
            ));
        }
        chunk["model"] = Value::String(meter.public_model.clone());
        // One answer per request (`n` is refused): other choices, from an
        // upstream that ignored that, are neither relayed nor paid for.
        if let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) {
            choices.retain(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0);
        }
        let chunk_usage = usage_of(&chunk);
        if let Some(u) = chunk_usage {
            usage = Some(u);
        }
        let delta = chunk_text(&chunk);
        let finish = finish_reason_of(&chunk);
        finished |= finish.is_some();
        if !delta.is_empty() || finish.is_some() || chunk_usage.is_some() {
            // Only output (or the end) keeps a stream alive: keep-alive chunks do not.
            idle_deadline = tokio::time::Instant::now() + meter.idle;
        }
        if !delta.is_empty() {
            let tokens = meter.count_output(&delta);
            if counted.saturating_add(tokens) > cut_after(meter.limit) {
                // An upstream that ignores its limit: stop it where the hold ends.
                // Of this chunk, only the content that fits is relayed and charged.
                tracing::warn!(request_id = %meter.request_id, counted, limit = meter.limit, "the upstream ran past its output limit; cut");
                censored = true;
                cut = true;
                held_finish = Some(end_chunk(
                    chunk.get("id").cloned().unwrap_or(Value::Null),
                    chunk.get("created").cloned().unwrap_or(Value::Null),
                    &meter.public_model,
                    Some("length"),
                ));
                let room = cut_after(meter.limit).saturating_sub(counted);
                let content = chunk
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
                    .filter(|c| *c == delta)
                    .map(|c| {
                        crate::tokens::prefix_within(c, room, |t| meter.count_output(t)).to_owned()
                    })
                    .filter(|p| !p.is_empty());
                if let Some(part) = content {
                    text.push_str(&part);
                    chunk["choices"][0]["delta"]["content"] = Value::String(part);
                    chunk["choices"][0]["finish_reason"] = Value::Null;
                    if let Some(obj) = chunk.as_object_mut() {
                        obj.remove("usage");
                    }
                    if !send_within(&tx, ChatEvent::Chunk(chunk), meter.idle).await {
                        client_gone = true;
                    }
                }
                break;
            }
            counted = counted.saturating_add(tokens);
            text.push_str(&delta);
        }
        if finish.as_deref() == Some("length") {
            censored = true;
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        if choices.is_none_or(|c| c.is_empty()) {
            continue; // the usage chunk: re-sent at the end with the cost
        }
        if let Some(obj) = chunk.as_object_mut() {
            obj.remove("usage");
        }
        if finish.is_some() && !include_usage {
            held_finish = Some(chunk); // the cost rides on the last chunk
            continue;
        }
        if !send_within(&tx, ChatEvent::Chunk(chunk), meter.idle).await {
            client_gone = true;
            break;
        }
    }
    drop(upstream); // stops generation upstream

    let generated = !text.is_empty() || usage.is_some_and(|u| u.output > 0);
    if let Some(e) = &failure
        && !generated
    {
        meter.release(e).await;
        let err = upstream_error(e);
        let _ = send_within(&tx, ChatEvent::Error(err), meter.idle).await;
        return;
    }
    let usage = TokenUsage {
        input: usage.map_or(meter.input_estimate, |u| u.input),
        output: match usage {
            Some(u) if failure.is_none() && !client_gone && !cut => u.output,
            _ => meter.count_output(&text),
        },
    };
    let status = if client_gone {
        RequestStatus::ClientGone
    } else {
        RequestStatus::Settled
    };
    let settled = match meter.settle(usage, status, censored).await {
        Ok(s) => s,
        Err(e) => {
            let _ = send_within(&tx, ChatEvent::Error(e), meter.idle).await;
            return;
        }
    };
    if client_gone {
        return;
    }
    let (id, created) = meta.unwrap_or((Value::Null, 0.into()));
    let final_chunk = if include_usage {
        if let Some(f) = held_finish.take() {
            // A cut stream still tells the client why it ended.
            let _ = send_within(&tx, ChatEvent::Chunk(f), meter.idle).await;
        }
        end_chunk(id, created, &meter.public_model, None)
    } else {
        held_finish.unwrap_or_else(|| end_chunk(id, created, &meter.public_model, Some("stop")))
    };
    let mut final_chunk = final_chunk;
    meter.stamp(&mut final_chunk, usage, &settled);
    if let Some(e) = &failure {
        tracing::warn!(request_id = %meter.request_id, error = %e, "upstream failed mid-stream; charged for what was generated");
        let err = ServiceError::upstream(
            "upstream_interrupted",
            "the model's upstream failed mid-answer; you were charged only for what was generated",
        );
        let _ = send_within(&tx, ChatEvent::Error(err), meter.idle).await;
    }
    let _ = send_within(&tx, ChatEvent::Chunk(final_chunk), meter.idle).await;
    let _ = send_within(&tx, ChatEvent::Done, meter.idle).await;
}
