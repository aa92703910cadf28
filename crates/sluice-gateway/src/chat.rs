//! `POST /v1/chat/completions`: authenticate → estimate → hold → call the
//! upstream → settle at actual → respond with the cost.
//!
//! The upstream call and its settlement run in a tracked task, not in the
//! handler's future: if the client goes away the work is still settled, and
//! shutdown waits for it. Failure rules:
//! - the upstream fails before any output: the whole hold is released (502/504);
//! - the client disconnects mid-stream: charged for the tokens generated until
//!   the gateway noticed, never above the hold;
//! - the gateway dies mid-request: the hold is released at the next start by
//!   the reconciler (see `background.rs`).

use std::{sync::Arc, time::Instant};

use axum::{
    Extension, Json,
    body::Body,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use sluice_core::{BtcUsd, Msat, TokenUsage, charge_for};
use sluice_store::{
    GrantKind, HoldOutcome, NewHold, RequestStatus, SettleRequest, Settled, SpendCap,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    auth,
    error::ApiError,
    identity::Identity,
    request::ChatBody,
    state::{AppState, new_id, now_ms},
    tokens,
    upstream::{ChatCall, ChunkStream, Upstream, UpstreamError, chunk_text, usage_of},
};

/// Everything needed to settle one request.
struct Meter {
    state: AppState,
    request_id: String,
    /// The paying session; `None` for a request the pool pays in full.
    session_id: Option<String>,
    /// The free-tier decision, when one applies (free or partial).
    free: Option<crate::free::FreeDecision>,
    public_model: String,
    rates: sluice_core::ModelRates,
    tokenizer: crate::config::TokenizerKind,
    btc: BtcUsd,
    hold: Msat,
    input_estimate: u64,
    upstream: Arc<dyn Upstream>,
    started: Instant,
    class: sluice_core::RequestClass,
    default_max_output: u64,
    p90_cost: Option<Msat>,
}

impl Meter {
    fn count_output(&self, text: &str) -> u64 {
        self.upstream
            .count_completion(text)
            .unwrap_or_else(|| tokens::count_text(self.tokenizer, text))
    }

    async fn settle(&self, usage: TokenUsage, status: RequestStatus) -> Result<Settled, ApiError> {
        let actual =
            charge_for(&self.rates, usage, self.btc).map_err(|e| ApiError::internal(&e))?;
        self.learn(usage.output, actual);
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
                        now_ms: now_ms(),
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
                                now_ms(),
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
    fn learn(&self, output_tokens: u64, actual: Msat) {
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
        };
        let state = self.state.clone();
        self.state
            .tasks
            .spawn(async move { state.estimates.observe(&state.store, o).await });
    }

    async fn release(&self, why: &UpstreamError) {
        let Some(session_id) = &self.session_id else {
            tracing::warn!(request_id = %self.request_id, error = %why, "upstream failed before output; nothing was held");
            return;
        };
        tracing::warn!(request_id = %self.request_id, error = %why, "upstream failed before output; releasing the hold");
        if let Err(e) = self
            .state
            .store
            .release(
                &self.request_id,
                RequestStatus::Failed,
                now_ms(),
                &self.state.policy_for(session_id),
            )
            .await
        {
            tracing::error!(request_id = %self.request_id, error = %e, "could not release a hold");
        }
    }

    /// The `sluice` receipt object added to responses.
    fn receipt(&self, usage: TokenUsage, s: &Settled) -> Value {
        let mut v = json!({
            "request_id": self.request_id,
            "input_tokens_estimated": self.input_estimate,
            "hold_msat": self.hold.msat(),
            "cost_msat": s.charged.msat(),
            "released_msat": s.released.msat(),
            "btc_usd": sluice_core::UsdMicros(self.btc.micros()).to_decimal_string(),
            "input_tokens": usage.input,
            "output_tokens": usage.output,
            "real_money": self.state.lightning.is_real_money(),
        });
        if self.session_id.is_some() {
            v["balance_msat"] = s.balance.msat().into();
        }
        if let Some(f) = &self.free {
            v["free_tier"] = f.decision.as_str().into();
            v["absorbed_msat"] = s.absorbed.msat().into();
            v["tier"] = f.tier.as_str().into();
        }
        v
    }

    /// Add `free_tier` and `absorbed_msat` to a response object that used the free tier.
    fn mark_free(&self, v: &mut Value, s: &Settled) {
        if let Some(f) = &self.free {
            v["free_tier"] = f.decision.as_str().into();
            v["absorbed_msat"] = s.absorbed.msat().into();
        }
    }
}

fn usage_json(usage: TokenUsage, cost: Msat) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "cost_msat": cost.msat(),
    })
}

pub(crate) fn upstream_error(e: &UpstreamError) -> ApiError {
    match e {
        UpstreamError::Timeout => {
            ApiError::upstream_timeout("the model's upstream timed out; nothing was charged")
        }
        UpstreamError::Unreachable(_) => ApiError::upstream(
            "upstream_unreachable",
            "the model's upstream could not be reached; nothing was charged",
        ),
        UpstreamError::Status(s) => ApiError::upstream(
            "upstream_error",
            format!("the model's upstream answered HTTP {s}; nothing was charged"),
        ),
        UpstreamError::Protocol(_) => ApiError::upstream(
            "upstream_error",
            "the model's upstream sent an invalid answer; nothing was charged",
        ),
    }
}

fn header_value(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

/// The handler.
pub async fn chat_completions(
    State(state): State<AppState>,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let payer = auth::payer(&state, &headers, u64::try_from(now / 1000).unwrap_or(0)).await?;
    let Json(v) = body?;
    let req = ChatBody::parse(v)?;
    let priced = crate::pricing::price(&state, &req).await?;
    let model = priced.model;
    if let Some(allowed) = payer.as_ref().and_then(|p| p.models.as_ref())
        && !allowed.iter().any(|m| m == &req.model)
    {
        return Err(ApiError::forbidden(
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
    // The free-tier decision, on the estimate, before any work.
    let identity = identity.map(|Extension(i)| i);
    let free = crate::free::decide(
        &state,
        identity.as_ref(),
        estimate,
        &model.name,
        GrantKind::Chat,
    )
    .await?;
    let hold = free.decision.charge(estimate);
    let free = (free.decision.absorb() > Msat::ZERO).then_some(free);
    let pubkey = identity.as_ref().map(|i| i.pubkey.clone());
    let meter = |session_id: Option<String>, free: Option<crate::free::FreeDecision>| Meter {
        state: state.clone(),
        request_id: new_id("req"),
        session_id,
        free,
        public_model: model.name.clone(),
        rates: model.rates,
        tokenizer: model.tokenizer,
        btc,
        hold,
        input_estimate: input,
        upstream: model.upstream.clone(),
        started: Instant::now(),
        class: priced.class,
        default_max_output: model.budget.default_max_output,
        p90_cost: priced.quote.as_ref().map(|q| q.cost_p90),
    };
    let call = ChatCall {
        body: req.upstream_body(&model.upstream_model, max_out),
        messages: req.messages.clone(),
        max_tokens: max_out,
    };
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
            return crate::l402::challenge(&state, hold, None, pubkey, why).await;
        }
        return Err(ApiError::unauthorized(
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
    let outcome = state
        .store
        .hold(&NewHold {
            request_id: request_id.clone(),
            session_id: payer.session_id.clone(),
            model: model.name.clone(),
            est_input_tokens: input,
            max_output_tokens: max_out,
            hold,
            btc_usd_micros: btc.micros(),
            caps,
            instance_id: state.instance_id.clone(),
            stream: req.stream,
            now_ms: now,
            ttl_ms: i64::try_from(state.policy.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            pubkey,
        })
        .await?;
    let balance_after_hold = match outcome {
        HoldOutcome::Held { balance } => balance,
        HoldOutcome::Insufficient { balance } => {
            if let Some(token) = payer.l402_token {
                let top_up = hold.saturating_sub(balance);
                return crate::l402::challenge(
                    &state,
                    top_up,
                    Some(token),
                    None,
                    "this token's balance is too low",
                )
                .await;
            }
            return Err(ApiError::payment_required(
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
                _ => (
                    "session_expired",
                    "the session has expired; top up to revive it",
                ),
            };
            return Err(ApiError::payment_required(code, msg));
        }
        HoldOutcome::CapExceeded { cap, committed } => {
            return Err(ApiError::payment_required(
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
            return Err(ApiError::unauthorized(
                "invalid_credential",
                "this credential's session does not exist",
            ));
        }
    };
    tracing::info!(request_id = %request_id, model = %model.name, hold_msat = hold.msat(), input_tokens = input, max_output_tokens = max_out, "hold taken");
    if req.stream {
        stream_response(meter, call, req.include_usage, Some(balance_after_hold)).await
    } else {
        complete_response(meter, call).await
    }
}

async fn complete_response(meter: Meter, call: ChatCall) -> Result<Response, ApiError> {
    let tasks = meter.state.tasks.clone();
    // The task owns the settlement: a client that hangs up does not leave a hold open.
    let handle = tasks.spawn(
        async move {
            match meter.upstream.complete(call).await {
                Err(e) => {
                    meter.release(&e).await;
                    Err(upstream_error(&e))
                }
                Ok(c) => {
                    let usage = c.usage.unwrap_or_else(|| TokenUsage {
                        input: meter.input_estimate,
                        output: meter.count_output(&c.text),
                    });
                    let s = meter.settle(usage, RequestStatus::Settled).await?;
                    let mut resp = c.response;
                    resp["model"] = Value::String(meter.public_model.clone());
                    resp["usage"] = usage_json(usage, s.charged);
                    resp["sluice"] = meter.receipt(usage, &s);
                    meter.mark_free(&mut resp, &s);
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
    let (resp, s, request_id, paid) = handle.await.map_err(|e| ApiError::internal(&e))??;
    let free_tier = resp
        .get("free_tier")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut r = (StatusCode::OK, Json(resp)).into_response();
    let h = r.headers_mut();
    h.insert("x-sluice-cost-msat", header_value(s.charged.msat()));
    if paid {
        h.insert("x-sluice-balance-msat", header_value(s.balance.msat()));
    }
    if let Some(f) = free_tier {
        h.insert("x-sluice-free-tier", header_value(f));
        h.insert("x-sluice-absorbed-msat", header_value(s.absorbed.msat()));
    }
    h.insert("x-sluice-request-id", header_value(request_id));
    Ok(r)
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

async fn stream_response(
    meter: Meter,
    call: ChatCall,
    include_usage: bool,
    balance_after_hold: Option<Msat>,
) -> Result<Response, ApiError> {
    let upstream = match meter.upstream.stream(call).await {
        Ok(s) => s,
        Err(e) => {
            meter.release(&e).await;
            return Err(upstream_error(&e));
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let request_id = meter.request_id.clone();
    let hold = meter.hold;
    let free_tier = meter.free.as_ref().map(|f| f.decision.as_str());
    meter
        .state
        .tasks
        .clone()
        .spawn(pump(meter, upstream, tx, include_usage));
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>),
    );
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-sluice-request-id", header_value(request_id));
    h.insert("x-sluice-hold-msat", header_value(hold.msat()));
    if let Some(b) = balance_after_hold {
        h.insert("x-sluice-balance-msat", header_value(b.msat()));
    }
    if let Some(f) = free_tier {
        h.insert("x-sluice-free-tier", header_value(f));
    }
    Ok(r)
}

/// Forward chunks to the client, then settle and send the cost in the final chunk.
async fn pump(
    meter: Meter,
    mut upstream: ChunkStream,
    tx: mpsc::Sender<Bytes>,
    include_usage: bool,
) {
    let mut text = String::new();
    let mut usage: Option<TokenUsage> = None;
    let mut held_finish: Option<Value> = None;
    let mut meta: Option<(Value, Value)> = None; // (id, created) of the stream
    let mut client_gone = false;
    let mut failure: Option<UpstreamError> = None;
    while let Some(item) = upstream.next().await {
        let mut chunk = match item {
            Ok(c) => c,
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
        if let Some(u) = usage_of(&chunk) {
            usage = Some(u);
        }
        text.push_str(&chunk_text(&chunk));
        let choices = chunk.get("choices").and_then(Value::as_array);
        if choices.is_none_or(|c| c.is_empty()) {
            continue; // the usage chunk: re-sent at the end with the cost
        }
        let finished = choices.is_some_and(|c| {
            c.iter()
                .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
        });
        if let Some(obj) = chunk.as_object_mut() {
            obj.remove("usage");
        }
        if finished && !include_usage {
            held_finish = Some(chunk); // the cost rides on the last chunk
            continue;
        }
        if tx.send(sse(&chunk)).await.is_err() {
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
        let _ = tx.send(sse(&err.body())).await;
        return;
    }
    let usage = TokenUsage {
        input: usage.map_or(meter.input_estimate, |u| u.input),
        output: match usage {
            Some(u) if failure.is_none() && !client_gone => u.output,
            _ => meter.count_output(&text),
        },
    };
    let status = if client_gone {
        RequestStatus::ClientGone
    } else {
        RequestStatus::Settled
    };
    let settled = match meter.settle(usage, status).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(sse(&e.body())).await;
            return;
        }
    };
    if client_gone {
        return;
    }
    let (id, created) = meta.unwrap_or((Value::Null, 0.into()));
    let final_chunk = if include_usage {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": meter.public_model, "choices": []})
    } else {
        held_finish.unwrap_or_else(|| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": meter.public_model,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        })
    };
    let mut final_chunk = final_chunk;
    final_chunk["usage"] = usage_json(usage, settled.charged);
    final_chunk["sluice"] = meter.receipt(usage, &settled);
    meter.mark_free(&mut final_chunk, &settled);
    if let Some(e) = &failure {
        tracing::warn!(request_id = %meter.request_id, error = %e, "upstream failed mid-stream; charged for what was generated");
        let err = ApiError::upstream(
            "upstream_interrupted",
            "the model's upstream failed mid-answer; you were charged only for what was generated",
        );
        let _ = tx.send(sse(&err.body())).await;
    }
    let _ = tx.send(sse(&final_chunk)).await;
    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
}
