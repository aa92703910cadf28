//! Any OpenAI-compatible chat completions server: Ollama, llama.cpp server,
//! vLLM, OpenAI, OpenRouter. The body passes through as the client sent it,
//! with the model name mapped and the reserved `max_tokens` set.

use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

use super::{
    ChatCall, ChunkStream, Completion, Upstream, UpstreamError, finish_reason_of, generated_text,
    read_json, send, usage_of,
};
use crate::config::Secret;

/// An OpenAI-compatible upstream.
pub struct OpenAiUpstream {
    client: reqwest::Client,
    url: String,
    key: Option<Secret>,
    timeout: Duration,
    idle: Duration,
}

impl OpenAiUpstream {
    /// An upstream at `base_url` (ending in `/v1` for most servers).
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        key: Option<Secret>,
        timeout: Duration,
        idle: Duration,
    ) -> Self {
        OpenAiUpstream {
            client,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            key,
            timeout,
            idle,
        }
    }

    async fn send(
        &self,
        body: &serde_json::Map<String, Value>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self.client.post(&self.url).json(body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose());
        }
        send(req, self.timeout).await
    }
}

#[async_trait]
impl Upstream for OpenAiUpstream {
    async fn complete(&self, call: ChatCall) -> Result<Completion, UpstreamError> {
        let cap = call.answer_byte_cap();
        let mut body = call.body;
        body.insert("stream".into(), Value::Bool(false));
        body.remove("stream_options");
        let resp = self.send(&body).await?;
        let mut v = read_json(resp, self.timeout, cap).await?;
        // One answer per request (`n` is refused): choices beyond the first,
        // from an upstream that ignored that, are neither relayed nor paid for.
        let choices = v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| UpstreamError::Protocol("no choices".into()))?;
        choices.truncate(1);
        let choices = &*choices;
        let text = choices
            .iter()
            .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("");
        let mut generated = String::new();
        for m in choices.iter().filter_map(|c| c.get("message")) {
            generated_text(m, &mut generated);
        }
        Ok(Completion {
            usage: usage_of(&v),
            finish_reason: finish_reason_of(&v),
            response: v,
            text,
            generated,
        })
    }

    async fn stream(&self, call: ChatCall) -> Result<ChunkStream, UpstreamError> {
        let mut body = call.body;
        body.insert("stream".into(), Value::Bool(true));
        body.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
        let resp = self.send(&body).await?;
        let idle = self.idle;
        let events = resp.bytes_stream().eventsource();
        let s = futures::stream::unfold(Some(events), move |state| async move {
            let mut events = state?;
            // Empty `data:` events (keep-alives) do not restart the idle clock.
            let deadline = tokio::time::Instant::now() + idle;
            loop {
                match tokio::time::timeout_at(deadline, events.next()).await {
                    Err(_) => return Some((Err(UpstreamError::Timeout), None)),
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => {
                        return Some((Err(UpstreamError::Unreachable(e.to_string())), None));
                    }
                    Ok(Some(Ok(ev))) => {
                        let data = ev.data.trim();
                        if data.is_empty() {
                            continue;
                        }
                        if data == "[DONE]" {
                            return None;
                        }
                        return match serde_json::from_str::<Value>(data) {
                            Ok(v) if v.get("error").is_some() => Some((
                                Err(UpstreamError::Protocol(
                                    "upstream sent an error event".into(),
                                )),
                                None,
                            )),
                            Ok(v) if v.is_object() => Some((Ok(v), Some(events))),
                            Ok(_) => Some((
                                Err(UpstreamError::Protocol(
                                    "a chunk that is not an object".into(),
                                )),
                                None,
                            )),
                            Err(e) => Some((
                                Err(UpstreamError::Protocol(format!("bad chunk: {e}"))),
                                None,
                            )),
                        };
                    }
                }
            }
        });
        Ok(s.boxed())
    }
}
