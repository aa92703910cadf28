//! Any OpenAI-compatible chat completions server: Ollama, llama.cpp server,
//! vLLM, OpenAI, OpenRouter. The body passes through as the client sent it,
//! with the model name mapped and the reserved `max_tokens` set.

use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

use super::{
    ChatCall, ChunkStream, Completion, Upstream, UpstreamError, read_json, send, usage_of,
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
        let mut body = call.body;
        body.insert("stream".into(), Value::Bool(false));
        body.remove("stream_options");
        let resp = self.send(&body).await?;
        let v = read_json(resp, self.timeout).await?;
        let choices = v
            .get("choices")
            .and_then(Value::as_array)
            .ok_or_else(|| UpstreamError::Protocol("no choices".into()))?;
        let text = choices
            .iter()
            .filter_map(|c| c.pointer("/message/content").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("");
        Ok(Completion {
            usage: usage_of(&v),
            response: v,
            text,
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
            loop {
                match tokio::time::timeout(idle, events.next()).await {
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
                            Ok(v) => Some((Ok(v), Some(events))),
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
