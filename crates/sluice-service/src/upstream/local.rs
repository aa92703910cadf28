//! A GGUF model run in-process (candle), answering like any other upstream,
//! with exact token counts from the model's own tokenizer.

use std::{ops::ControlFlow, sync::Arc};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;
use sluice_core::TokenUsage;
use sluice_local::{ChatMessage, FinishReason, GenParams, LocalModel};
use tokio::sync::mpsc;

use super::{
    ChatCall, ChunkStream, Completion, Upstream, UpstreamError, completion_object, text_chunk,
    usage_chunk,
};

/// An in-process model.
pub struct LocalUpstream {
    model: Arc<LocalModel>,
}

impl LocalUpstream {
    /// Serve `model`.
    pub fn new(model: Arc<LocalModel>) -> Self {
        LocalUpstream { model }
    }
}

fn messages(call: &ChatCall) -> Vec<ChatMessage> {
    call.messages
        .iter()
        .map(|(role, content)| ChatMessage {
            role: role.clone(),
            content: content.clone(),
        })
        .collect()
}

fn params(call: &ChatCall) -> GenParams {
    let stop = match call.body.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    GenParams {
        max_tokens: u32::try_from(call.max_tokens).unwrap_or(u32::MAX),
        temperature: call.body.get("temperature").and_then(Value::as_f64),
        top_p: call.body.get("top_p").and_then(Value::as_f64),
        seed: call.body.get("seed").and_then(Value::as_u64),
        stop,
    }
}

fn finish(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

enum Piece {
    Text(String),
    Done(TokenUsage, &'static str),
    Failed(String),
}

impl LocalUpstream {
    /// Run a generation on a blocking thread, sending pieces; stops when the receiver goes away.
    fn spawn(&self, call: &ChatCall) -> mpsc::Receiver<Piece> {
        let (tx, rx) = mpsc::channel(64);
        let model = self.model.clone();
        let msgs = messages(call);
        let p = params(call);
        tokio::task::spawn_blocking(move || {
            let mut on_text = |t: &str| {
                if tx.blocking_send(Piece::Text(t.to_owned())).is_err() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let piece = match model.generate(&msgs, &p, &mut on_text) {
                Ok(g) => Piece::Done(
                    TokenUsage {
                        input: u64::from(g.prompt_tokens),
                        output: u64::from(g.completion_tokens),
                    },
                    finish(g.finish_reason),
                ),
                Err(e) => Piece::Failed(e.to_string()),
            };
            let _ = tx.blocking_send(piece);
        });
        rx
    }
}

#[async_trait]
impl Upstream for LocalUpstream {
    fn count_prompt(&self, messages: &[(String, String)]) -> Option<u64> {
        let msgs: Vec<ChatMessage> = messages
            .iter()
            .map(|(role, content)| ChatMessage {
                role: role.clone(),
                content: content.clone(),
            })
            .collect();
        self.model.count_prompt_tokens(&msgs).ok().map(u64::from)
    }

    fn count_completion(&self, text: &str) -> Option<u64> {
        self.model.count_text_tokens(text).ok().map(u64::from)
    }

    async fn complete(&self, call: ChatCall) -> Result<Completion, UpstreamError> {
        let model = call
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut rx = self.spawn(&call);
        let mut text = String::new();
        while let Some(p) = rx.recv().await {
            match p {
                Piece::Text(t) => text.push_str(&t),
                Piece::Done(usage, fin) => {
                    let response =
                        completion_object(&call.id, &model, call.created, &text, fin, usage);
                    return Ok(Completion {
                        response,
                        usage: Some(usage),
                        generated: text.clone(),
                        text,
                        finish_reason: Some(fin.to_owned()),
                    });
                }
                Piece::Failed(e) => {
                    return Err(UpstreamError::Protocol(format!("local model failed: {e}")));
                }
            }
        }
        Err(UpstreamError::Protocol(
            "local model stopped without an answer".into(),
        ))
    }

    async fn stream(&self, call: ChatCall) -> Result<ChunkStream, UpstreamError> {
        let model = call
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let rx = self.spawn(&call);
        let (id, created) = (call.id.clone(), call.created);
        let s = tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(move |p| {
            let items: Vec<Result<Value, UpstreamError>> = match p {
                Piece::Text(t) => vec![Ok(text_chunk(&id, &model, created, Some(&t), None))],
                Piece::Done(usage, fin) => vec![
                    Ok(text_chunk(&id, &model, created, None, Some(fin))),
                    Ok(usage_chunk(&id, &model, created, usage)),
                ],
                Piece::Failed(e) => vec![Err(UpstreamError::Protocol(format!(
                    "local model failed: {e}"
                )))],
            };
            futures::stream::iter(items)
        });
        Ok(s.boxed())
    }
}
