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
    /// The id a completion the adapter synthesises carries (an upstream
    /// that names its own answers keeps its name).
    pub id: String,
    /// Its `created`, Unix seconds: the service's clock, so an answer made
    /// on a manual clock is stamped with that clock's time.
    pub created: u64,
}

/// Bytes a non-streamed answer may take per output token it is allowed
/// (JSON escaping, tool-call arguments), on top of [`ANSWER_OVERHEAD_BYTES`].
const ANSWER_BYTES_PER_TOKEN: usize = 64;
/// Bytes each requested log-probability adds per output token.
const LOGPROB_BYTES: usize = 160;
/// Bytes of a non-streamed answer's envelope (ids, usage, metadata).
const ANSWER_OVERHEAD_BYTES: usize = 64 * 1024;

impl ChatCall {
    /// The most bytes a non-streamed answer to this call may take: twice the
    /// output limit's worth. An upstream that ignores its limit cannot make
    /// the gateway buffer (and a client receive) more than that.
    pub fn answer_byte_cap(&self) -> usize {
        let logprobs = self.body.get("logprobs").and_then(Value::as_bool) == Some(true);
        let top = self
            .body
            .get("top_logprobs")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .min(20) as usize;
        let per_token = ANSWER_BYTES_PER_TOKEN
            + if logprobs {
                (1 + top) * LOGPROB_BYTES
            } else {
                0
            };
        let tokens = usize::try_from(self.max_tokens.saturating_mul(2)).unwrap_or(usize::MAX);
        ANSWER_OVERHEAD_BYTES.saturating_add(tokens.saturating_mul(per_token))
    }

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
        let status = resp.status().as_u16();
        // For the operator (never relayed to the client: it may hold internals).
        let body = tokio::time::timeout(timeout, resp.bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_LOGGED)]).into_owned())
            .unwrap_or_default();
        tracing::warn!(status, body = %body.escape_debug(), "the upstream answered an error");
        return Err(UpstreamError::Status(status));
    }
    Ok(resp)
}

/// How much of an upstream's error body the log keeps.
const ERROR_BODY_LOGGED: usize = 512;

/// The JSON body of an answer, read within `timeout` and refused past
/// `max_bytes` (see [`ChatCall::answer_byte_cap`]).
pub(crate) async fn read_json(
    mut resp: reqwest::Response,
    timeout: std::time::Duration,
    max_bytes: usize,
) -> Result<Value, UpstreamError> {
    let too_large = || {
        UpstreamError::Protocol(format!(
            "the answer is larger than its output limit allows ({max_bytes} bytes)"
        ))
    };
    if resp
        .content_length()
        .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > max_bytes))
    {
        return Err(too_large());
    }
    let read = async move {
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| UpstreamError::Unreachable(redact(&e)))?
        {
            if body.len().saturating_add(chunk.len()) > max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| UpstreamError::Protocol(format!("invalid JSON: {e}")))
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| UpstreamError::Timeout)?
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
    /// The answer's content (the job result, the demo answer).
    pub text: String,
    /// Everything generated (content, reasoning, refusal, tool-call names and
    /// arguments): what is counted when `usage` is missing.
    pub generated: String,
    /// Why generation stopped (`"length"`: the output limit cut it).
    pub finish_reason: Option<String>,
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

/// The most tokens an upstream's report is taken at: more than any answer,
/// and small enough that every sum and stored count stays exact.
pub const MAX_REPORTED_TOKENS: u64 = 1 << 40;

/// A token count from an upstream's usage report (a non-negative integer),
/// capped at [`MAX_REPORTED_TOKENS`]: an absurd count is charged the hold,
/// never fails the settlement.
pub fn reported_tokens(v: &Value) -> Option<u64> {
    v.as_u64().map(|n| n.min(MAX_REPORTED_TOKENS))
}

/// Usage from an OpenAI-shaped `usage` object.
pub fn usage_of(v: &Value) -> Option<TokenUsage> {
    let u = v.get("usage")?;
    Some(TokenUsage {
        input: reported_tokens(u.get("prompt_tokens")?)?,
        output: reported_tokens(u.get("completion_tokens")?)?,
    })
}

/// Everything a model generated in one message or delta: its content, its
/// reasoning, a refusal, an audio transcript, legacy `text`, and the names
/// and arguments (or custom input) of tool calls. All of it is output the
/// upstream bills, so all of it is metered. Reasoning sent under several
/// names at once (OpenRouter sends `reasoning` and `reasoning_details`) is
/// counted once, by its longest form; signatures, encrypted reasoning and
/// annotations are not generated text.
pub fn generated_text(message: &Value, out: &mut String) {
    fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
        v.get(key).and_then(Value::as_str)
    }
    for key in ["content", "refusal", "text"] {
        out.extend(str_at(message, key));
    }
    out.extend(message.get("audio").and_then(|a| str_at(a, "transcript")));
    let details: String = message
        .get("reasoning_details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| str_at(d, "text").or_else(|| str_at(d, "summary")))
        .collect();
    let reasoning = ["reasoning_content", "reasoning", "thinking"]
        .iter()
        .filter_map(|k| str_at(message, k))
        .chain(std::iter::once(details.as_str()))
        .max_by_key(|t| t.len())
        .unwrap_or_default();
    out.push_str(reasoning);
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        for f in [call.get("function"), call.get("custom")]
            .into_iter()
            .flatten()
        {
            for key in ["name", "arguments", "input"] {
                out.extend(str_at(f, key));
            }
        }
    }
    if let Some(f) = message.get("function_call") {
        for key in ["name", "arguments"] {
            out.extend(str_at(f, key));
        }
    }
}

/// Everything generated in a chunk's deltas (all choices).
pub fn chunk_text(v: &Value) -> String {
    let mut s = String::new();
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            if let Some(d) = c.get("delta") {
                generated_text(d, &mut s);
            }
        }
    }
    s
}

/// The first finish reason in a chunk or response, if any.
pub fn finish_reason_of(v: &Value) -> Option<String> {
    v.get("choices")
        .and_then(Value::as_array)?
        .iter()
        .find_map(|c| c.get("finish_reason").and_then(Value::as_str))
        .map(str::to_owned)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Output in `delta.audio.transcript`, `thinking` or `text` was relayed
    /// but metered as nothing; reasoning sent twice must not count twice.
    #[test]
    fn every_generated_string_is_metered_once_and_labels_are_not() {
        let mut out = String::new();
        generated_text(
            &json!({"role": "assistant", "content": "a", "thinking": "b", "text": "c",
                    "audio": {"id": "audio_1", "transcript": "d", "data": "QUJD"},
                    "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                    "function": {"name": "e", "arguments": "f"}}]}),
            &mut out,
        );
        let mut letters: Vec<char> = out.chars().collect();
        letters.sort_unstable();
        assert_eq!(letters.into_iter().collect::<String>(), "abcdef");
        let mut out = String::new();
        generated_text(
            &json!({"reasoning": "think", "reasoning_details": [{"type": "reasoning.text", "text": "think", "signature": "sig"},
                                                              {"type": "reasoning.encrypted", "data": "opaque"}]}),
            &mut out,
        );
        assert_eq!(out, "think");
    }

    #[test]
    fn a_non_streamed_answer_may_take_twice_its_limit_in_bytes() {
        let call = |body: serde_json::Value, max_tokens| ChatCall {
            body: body.as_object().unwrap().clone(),
            messages: vec![],
            max_tokens,
            id: "chatcmpl-test".into(),
            created: 0,
        };
        let plain = call(json!({}), 100).answer_byte_cap();
        assert_eq!(plain, ANSWER_OVERHEAD_BYTES + 200 * ANSWER_BYTES_PER_TOKEN);
        let with_logprobs =
            call(json!({"logprobs": true, "top_logprobs": 5}), 100).answer_byte_cap();
        assert!(with_logprobs > plain + 200 * 5 * LOGPROB_BYTES);
        assert!(call(json!({}), u64::MAX).answer_byte_cap() == usize::MAX);
    }
}
