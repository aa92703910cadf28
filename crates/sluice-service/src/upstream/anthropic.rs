//! Anthropic's Messages API, translated to and from OpenAI's chat shapes.

use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use sluice_core::TokenUsage;

use super::{
    ChatCall, ChunkStream, Completion, Upstream, UpstreamError, completion_object, read_json, send,
    text_chunk, usage_chunk,
};
use crate::config::Secret;

/// The API version header sent.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An Anthropic Messages API upstream.
pub struct AnthropicUpstream {
    client: reqwest::Client,
    url: String,
    key: Option<Secret>,
    timeout: Duration,
    idle: Duration,
}

impl AnthropicUpstream {
    /// An upstream at `base_url` (e.g. `https://api.anthropic.com/v1`).
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        key: Option<Secret>,
        timeout: Duration,
        idle: Duration,
    ) -> Self {
        AnthropicUpstream {
            client,
            url: format!("{}/messages", base_url.trim_end_matches('/')),
            key,
            timeout,
            idle,
        }
    }

    async fn send(&self, body: Value) -> Result<reqwest::Response, UpstreamError> {
        let mut req = self
            .client
            .post(&self.url)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&body);
        if let Some(k) = &self.key {
            req = req.header("x-api-key", k.expose());
        }
        send(req, self.timeout).await
    }
}

/// The Messages API request for an OpenAI-shaped call.
pub fn to_messages_request(call: &ChatCall, stream: bool) -> Value {
    let system: Vec<&str> = call
        .messages
        .iter()
        .filter(|(r, _)| r == "system" || r == "developer")
        .map(|(_, c)| c.as_str())
        .collect();
    let messages: Vec<Value> = call
        .messages
        .iter()
        .filter(|(r, _)| r != "system" && r != "developer")
        .map(|(r, c)| json!({"role": if r == "assistant" { "assistant" } else { "user" }, "content": c}))
        .collect();
    let mut body = json!({
        "model": call.body.get("model").cloned().unwrap_or(Value::Null),
        "max_tokens": call.max_tokens,
        "messages": messages,
        "stream": stream,
    });
    if !system.is_empty() {
        body["system"] = Value::String(system.join("\n\n"));
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = call.body.get(key) {
            body[key] = v.clone();
        }
    }
    match call.body.get("stop") {
        Some(Value::String(s)) => body["stop_sequences"] = json!([s]),
        Some(Value::Array(a)) => body["stop_sequences"] = Value::Array(a.clone()),
        _ => {}
    }
    body
}

/// OpenAI's finish reason for an Anthropic stop reason.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
}

#[async_trait]
impl Upstream for AnthropicUpstream {
    async fn complete(&self, call: ChatCall) -> Result<Completion, UpstreamError> {
        let model = call
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let resp = self.send(to_messages_request(&call, false)).await?;
        let v = read_json(resp, self.timeout, call.answer_byte_cap()).await?;
        let blocks = v
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| UpstreamError::Protocol("no content".into()))?;
        let text: String = blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect();
        // Thinking and tool-use blocks are generated output too.
        let mut generated = text.clone();
        for b in blocks {
            if let Some(t) = b.get("thinking").and_then(Value::as_str) {
                generated.push_str(t);
            }
            if let Some(input) = b.get("input") {
                generated.push_str(&input.to_string());
            }
        }
        let usage = v.get("usage").and_then(|u| {
            Some(TokenUsage {
                input: super::reported_tokens(u.get("input_tokens")?)?,
                output: super::reported_tokens(u.get("output_tokens")?)?,
            })
        });
        let finish = finish_reason(v.get("stop_reason").and_then(Value::as_str));
        let response = completion_object(
            v.get("id").and_then(Value::as_str).unwrap_or(&call.id),
            &model,
            call.created,
            &text,
            finish,
            usage.unwrap_or_default(),
        );
        Ok(Completion {
            response,
            usage,
            text,
            generated,
            finish_reason: Some(finish.to_owned()),
        })
    }

    async fn stream(&self, call: ChatCall) -> Result<ChunkStream, UpstreamError> {
        let model = call
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let resp = self.send(to_messages_request(&call, true)).await?;
        let idle = self.idle;
        let (id, created) = (call.id.clone(), call.created);
        struct St<E> {
            events: E,
            usage: TokenUsage,
            done: bool,
        }
        let st = St {
            events: resp.bytes_stream().eventsource(),
            usage: TokenUsage::default(),
            done: false,
        };
        let s = futures::stream::unfold(st, move |mut st| {
            let (id, model) = (id.clone(), model.clone());
            async move {
                if st.done {
                    return None;
                }
                // Pings and other events without output do not restart the idle clock.
                let deadline = tokio::time::Instant::now() + idle;
                loop {
                    let ev = match tokio::time::timeout_at(deadline, st.events.next()).await {
                        Err(_) => {
                            st.done = true;
                            return Some((Err(UpstreamError::Timeout), st));
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => {
                            st.done = true;
                            return Some((Err(UpstreamError::Unreachable(e.to_string())), st));
                        }
                        Ok(Some(Ok(ev))) => ev,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                        continue;
                    };
                    match v.get("type").and_then(Value::as_str) {
                        Some("message_start") => {
                            if let Some(n) = v
                                .pointer("/message/usage/input_tokens")
                                .and_then(super::reported_tokens)
                            {
                                st.usage.input = n;
                            }
                        }
                        Some("content_block_delta") => {
                            if let Some(t) = v.pointer("/delta/text").and_then(Value::as_str) {
                                return Some((
                                    Ok(text_chunk(&id, &model, created, Some(t), None)),
                                    st,
                                ));
                            }
                            // Thinking and tool-use input deltas: metered as reasoning.
                            let other = v
                                .pointer("/delta/thinking")
                                .or_else(|| v.pointer("/delta/partial_json"))
                                .and_then(Value::as_str);
                            if let Some(t) = other {
                                let mut chunk = text_chunk(&id, &model, created, None, None);
                                chunk["choices"][0]["delta"]["reasoning_content"] = t.into();
                                return Some((Ok(chunk), st));
                            }
                        }
                        Some("message_delta") => {
                            if let Some(n) = v
                                .pointer("/usage/output_tokens")
                                .and_then(super::reported_tokens)
                            {
                                st.usage.output = n;
                            }
                            let finish = finish_reason(
                                v.pointer("/delta/stop_reason").and_then(Value::as_str),
                            );
                            return Some((
                                Ok(text_chunk(&id, &model, created, None, Some(finish))),
                                st,
                            ));
                        }
                        Some("message_stop") => {
                            st.done = true;
                            return Some((Ok(usage_chunk(&id, &model, created, st.usage)), st));
                        }
                        Some("error") => {
                            st.done = true;
                            return Some((
                                Err(UpstreamError::Protocol(
                                    "upstream sent an error event".into(),
                                )),
                                st,
                            ));
                        }
                        _ => {}
                    }
                }
            }
        });
        Ok(s.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_call_becomes_a_messages_request() {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), "claude-x".into());
        body.insert("temperature".into(), json!(0.5));
        body.insert("stop".into(), json!("END"));
        let call = ChatCall {
            body,
            messages: vec![
                ("system".into(), "be brief".into()),
                ("user".into(), "hi".into()),
            ],
            max_tokens: 64,
            id: "chatcmpl-test".into(),
            created: 0,
        };
        let r = to_messages_request(&call, true);
        assert_eq!(r["system"], "be brief");
        assert_eq!(r["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(r["max_tokens"], 64);
        assert_eq!(r["stop_sequences"], json!(["END"]));
        assert_eq!(r["temperature"], 0.5);
        assert_eq!(finish_reason(Some("max_tokens")), "length");
    }
}
