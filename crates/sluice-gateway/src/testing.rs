//! A fake OpenAI-compatible upstream on a real port, for tests, benchmarks
//! and the simulator. It is a real HTTP server; only the "model" is fake:
//! it answers with words from a fixed reply, one token per word.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router, body::Body, extract::State, http::StatusCode, response::Response, routing::post,
};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

/// How the fake upstream behaves.
#[derive(Debug, Clone)]
pub struct FakeBehaviour {
    /// The words it answers with (one token each), cut at `max_tokens`.
    pub reply: String,
    /// Report `usage` (prompt tokens = words in the messages + 3 per message).
    pub report_usage: bool,
    /// Answer this HTTP status instead of a completion.
    pub fail_status: Option<u16>,
    /// Pause between streamed words.
    pub chunk_delay: Duration,
    /// Stop sending (without closing) after this many streamed words.
    pub stall_after: Option<usize>,
    /// Pause before answering at all.
    pub response_delay: Duration,
    /// The only output-limit field the fake reads (an older server's); `None`:
    /// `max_completion_tokens`, else `max_tokens`.
    pub limit_field: Option<&'static str>,
    /// Ignore every output limit (a server that does not honour them).
    pub ignore_limits: bool,
    /// Answer with tool-call arguments instead of content (the words become the arguments).
    pub tool_calls: bool,
    /// After this many streamed words, send only empty `data:` events (keep-alives)
    /// every 200 ms, forever.
    pub keepalive_after: Option<usize>,
    /// Close the stream after this many streamed words, with no finish
    /// reason and no `[DONE]` (an upstream that died mid-answer).
    pub close_after: Option<usize>,
    /// Answer this many more choices than asked for (a server that ignores `n`).
    pub extra_choices: usize,
    /// Bytes of padding (a long `system_fingerprint`) in every streamed chunk.
    pub chunk_padding: usize,
}

impl Default for FakeBehaviour {
    fn default() -> Self {
        FakeBehaviour {
            reply: "The capital of France is Paris .".into(),
            report_usage: true,
            fail_status: None,
            chunk_delay: Duration::ZERO,
            stall_after: None,
            response_delay: Duration::ZERO,
            limit_field: None,
            ignore_limits: false,
            tool_calls: false,
            keepalive_after: None,
            close_after: None,
            extra_choices: 0,
            chunk_padding: 0,
        }
    }
}

/// A running fake upstream.
pub struct FakeUpstream {
    /// Base URL ending in `/v1`.
    pub base_url: String,
    /// Requests received.
    pub requests: Arc<AtomicU64>,
    /// The last request body.
    pub last_body: Arc<Mutex<Option<Value>>>,
    /// Words actually sent in streams (summed).
    pub words_streamed: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

#[derive(Clone)]
struct Fake {
    b: Arc<FakeBehaviour>,
    requests: Arc<AtomicU64>,
    last_body: Arc<Mutex<Option<Value>>>,
    words_streamed: Arc<AtomicU64>,
}

/// Prompt tokens as the fake counts them.
pub fn fake_prompt_tokens(body: &Value) -> u64 {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    3 + m
                        .get("content")
                        .and_then(Value::as_str)
                        .map_or(0, |c| c.split_whitespace().count() as u64)
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn chat(State(f): State<Fake>, Json(body): Json<Value>) -> Response {
    f.requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut l) = f.last_body.lock() {
        *l = Some(body.clone());
    }
    if !f.b.response_delay.is_zero() {
        tokio::time::sleep(f.b.response_delay).await;
    }
    if let Some(s) = f.b.fail_status {
        let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = Response::new(Body::from(
            json!({"error": {"message": "fake failure", "type": "server_error"}}).to_string(),
        ));
        *r.status_mut() = status;
        return r;
    }
    let limit = match f.b.limit_field {
        _ if f.b.ignore_limits => None,
        Some(field) => body.get(field),
        None => body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens")),
    };
    let max = limit.and_then(Value::as_u64).unwrap_or(u64::MAX);
    let words: Vec<String> =
        f.b.reply
            .split_whitespace()
            .take(max as usize)
            .map(str::to_owned)
            .collect();
    let finish = if (words.len() as u64) < f.b.reply.split_whitespace().count() as u64 {
        "length"
    } else {
        "stop"
    };
    let prompt = fake_prompt_tokens(&body);
    let usage = json!({"prompt_tokens": prompt, "completion_tokens": words.len(), "total_tokens": prompt + words.len() as u64});
    let model = body.get("model").cloned().unwrap_or(Value::Null);
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let include = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (delay, stall) = (f.b.chunk_delay, f.b.stall_after);
        let report = f.b.report_usage;
        let counter = f.words_streamed.clone();
        let n = words.len();
        let s = async_stream(
            words,
            model,
            finish,
            usage,
            include && report,
            delay,
            stall,
            counter,
            n,
            (f.b.tool_calls, f.b.keepalive_after),
            (f.b.close_after, f.b.extra_choices, f.b.chunk_padding),
        );
        let mut r = Response::new(Body::from_stream(s));
        r.headers_mut().insert(
            "content-type",
            axum::http::HeaderValue::from_static("text/event-stream"),
        );
        return r;
    }
    let message = if f.b.tool_calls {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
               "function": {"name": "answer", "arguments": words.join(" ")}}]})
    } else {
        json!({"role": "assistant", "content": words.join(" ")})
    };
    let choices: Vec<Value> = (0..=f.b.extra_choices)
        .map(|i| json!({"index": i, "message": message, "finish_reason": finish}))
        .collect();
    let mut resp = json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
        "choices": choices,
    });
    if f.b.report_usage {
        resp["usage"] = usage;
    }
    Response::new(Body::from(resp.to_string()))
}

#[allow(clippy::too_many_arguments)]
fn async_stream(
    words: Vec<String>,
    model: Value,
    finish: &'static str,
    usage: Value,
    include_usage: bool,
    delay: Duration,
    stall: Option<usize>,
    counter: Arc<AtomicU64>,
    n: usize,
    (tool_calls, keepalive_after): (bool, Option<usize>),
    (close_after, extra_choices, padding): (Option<usize>, usize, usize),
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let fingerprint = "f".repeat(padding);
    let chunk = move |delta: Value, fin: Value| {
        let choices: Vec<Value> = (0..=extra_choices)
            .map(|i| json!({"index": i, "delta": delta, "finish_reason": fin}))
            .collect();
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "system_fingerprint": fingerprint, "choices": choices})
        ))
    };
    futures::stream::unfold(0usize, move |i| {
        let (words, chunk, usage, counter) = (words.clone(), chunk.clone(), usage.clone(), counter.clone());
        async move {
            if close_after.is_some_and(|c| i >= c) {
                return None;
            }
            if stall.is_some_and(|s| i >= s) {
                // Hang without closing, like a wedged upstream.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return None;
            }
            if keepalive_after.is_some_and(|k| i >= k) {
                // Alive but producing nothing: an empty event every 200 ms.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Some((Bytes::from_static(b"data: \n\n"), i));
            }
            if i < n {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let text = if i == 0 { words[i].clone() } else { format!(" {}", words[i]) };
                let delta = if tool_calls {
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "function": {"arguments": text}}]})
                } else {
                    json!({"role": "assistant", "content": text})
                };
                return Some((chunk(delta, Value::Null), i + 1));
            }
            if i == n {
                return Some((chunk(json!({}), json!(finish)), i + 1));
            }
            if i == n + 1 {
                let mut tail = String::new();
                if include_usage {
                    tail.push_str(&format!(
                        "data: {}\n\n",
                        json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "choices": [], "usage": usage})
                    ));
                }
                tail.push_str("data: [DONE]\n\n");
                return Some((Bytes::from(tail), i + 1));
            }
            None
        }
    })
    .map(Ok)
}

/// Start a fake upstream on `127.0.0.1:0`.
#[allow(
    clippy::disallowed_methods,
    reason = "a stand-in upstream, not the gateway's documented API"
)]
pub async fn spawn_fake_openai(b: FakeBehaviour) -> std::io::Result<FakeUpstream> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let f = Fake {
        b: Arc::new(b),
        requests: Arc::new(AtomicU64::new(0)),
        last_body: Arc::new(Mutex::new(None)),
        words_streamed: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(f.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // The fake lives until its `FakeUpstream` is dropped (which sends `tx`).
    tokio_util::task::TaskTracker::new().spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Ok(FakeUpstream {
        base_url: format!("http://{addr}/v1"),
        requests: f.requests,
        last_body: f.last_body,
        words_streamed: f.words_streamed,
        shutdown: Some(tx),
    })
}
