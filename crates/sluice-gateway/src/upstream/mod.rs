//! Upstreams: where a paid request is answered. Every upstream speaks to the
//! gateway in OpenAI's chat completion shapes (a response object, or a stream
//! of `chat.completion.chunk` objects), whatever it speaks on the wire.

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde_json::{Map, Value};
use sluice_core::TokenUsage;

pub mod anthropic;
#[cfg(feature = "local")]
pub mod local;
pub mod openai;

/// A call to an upstream: the client's body (model already mapped and
/// `max_tokens` set to what was reserved) and the flattened messages.
#[derive(Debug, Clone)]
pub struct ChatCall {
    /// The OpenAI-shaped request body to send.
    pub body: Map<String, Value>,
    /// `(role, text)` of each message, for adapters and counting.
    pub messages: Vec<(String, String)>,
    /// Output tokens reserved for (the upstream is told this limit).
    pub max_tokens: u64,
}

impl ChatCall {
    /// The upstream's model name, as set in the body.
    pub fn model(&self) -> String {
        self.body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }
}

/// Send `req`, allowing `timeout` for the upstream to start answering; an
/// error status is an error (its body is not relayed: it may hold internals).
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    timeout: std::time::Duration,
) -> Result<reqwest::Response, UpstreamError> {
    let resp = tokio::time::timeout(timeout, req.send())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(|e| {
            if e.is_timeout() {
                UpstreamError::Timeout
            } else {
                UpstreamError::Unreachable(redact(&e))
            }
        })?;
    if !resp.status().is_success() {
        return Err(UpstreamError::Status(resp.status().as_u16()));
    }
    Ok(resp)
}

/// The JSON body of an answer, read within `timeout`.
pub(crate) async fn read_json(
    resp: reqwest::Response,
    timeout: std::time::Duration,
) -> Result<Value, UpstreamError> {
    tokio::time::timeout(timeout, resp.json())
        .await
        .map_err(|_| UpstreamError::Timeout)?
        .map_err(|e| UpstreamError::Protocol(format!("invalid JSON: {}", redact(&e))))
}

/// A reqwest error without its URL (which may carry credentials).
pub(crate) fn redact(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<upstream>");
    }
    if e.is_connect() {
        format!("connection failed ({s})")
    } else {
        s
    }
}

/// A finished non-streaming answer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The OpenAI-shaped response object.
    pub response: Value,
    /// Token counts, when the upstream reported them.
    pub usage: Option<TokenUsage>,
    /// The answer text (to count tokens when `usage` is missing).
    pub text: String,
}

/// Why an upstream call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect or the connection broke.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The upstream answered an error status.
    #[error("upstream answered HTTP {0}")]
    Status(u16),
    /// No answer (or no next chunk) in time.
    #[error("upstream timed out")]
    Timeout,
    /// The answer was not what the protocol promises.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
}

/// A stream of OpenAI-shaped chunks.
pub type ChunkStream = BoxStream<'static, Result<Value, UpstreamError>>;

/// An inference backend.
#[async_trait]
pub trait Upstream: Send + Sync {
    /// Exact prompt tokens, when this upstream can count them itself.
    fn count_prompt(&self, _messages: &[(String, String)]) -> Option<u64> {
        None
    }

    /// Exact tokens of generated text, when this upstream can count them itself.
    fn count_completion(&self, _text: &str) -> Option<u64> {
        None
    }

    /// Answer without streaming.
    async fn complete(&self, call: ChatCall) -> Result<Completion, UpstreamError>;

    /// Answer as a stream of chunks. Returns once the upstream has accepted the
    /// request (so a refusal is an error here, before any output).
    async fn stream(&self, call: ChatCall) -> Result<ChunkStream, UpstreamError>;
}

/// Usage from an OpenAI-shaped `usage` object.
pub fn usage_of(v: &Value) -> Option<TokenUsage> {
    let u = v.get("usage")?;
    Some(TokenUsage {
        input: u.get("prompt_tokens")?.as_u64()?,
        output: u.get("completion_tokens")?.as_u64()?,
    })
}

/// Text content of a chunk's deltas (all choices).
pub fn chunk_text(v: &Value) -> String {
    let mut s = String::new();
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
                s.push_str(t);
            }
        }
    }
    s
}

/// A fresh id for synthesised completions.
pub fn completion_id() -> String {
    format!("chatcmpl-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An OpenAI chunk with one text delta (or a finish reason).
pub fn text_chunk(
    id: &str,
    model: &str,
    created: u64,
    text: Option<&str>,
    finish: Option<&str>,
) -> Value {
    let mut delta = Map::new();
    if let Some(t) = text {
        delta.insert("role".into(), "assistant".into());
        delta.insert("content".into(), t.into());
    }
    serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// An OpenAI usage-only chunk (`choices: []`).
pub fn usage_chunk(id: &str, model: &str, created: u64, usage: TokenUsage) -> Value {
    serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
        "usage": {"prompt_tokens": usage.input, "completion_tokens": usage.output, "total_tokens": usage.input + usage.output},
    })
}

/// An OpenAI non-streaming response object.
pub fn completion_object(
    id: &str,
    model: &str,
    created: u64,
    text: &str,
    finish: &str,
    usage: TokenUsage,
) -> Value {
    serde_json::json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage.input, "completion_tokens": usage.output, "total_tokens": usage.input + usage.output},
    })
}
