//! `POST /v1/chat/completions` on the wire: the payer from the headers, the
//! body parsed, one call to `Sluice::chat`, and its outcome answered — a
//! JSON completion with the cost headers, an SSE stream, or an L402 402.
//! Holding, metering and settling are the service's (`sluice_service::chat`).

use axum::{
    Extension, Json,
    body::Body,
    extract::{State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use sluice_proto::{
    api::{ErrorBody, PaymentRequired},
    openai::{ChatCompletion, ChatCompletionRequest},
};
use sluice_service::chat::{ChatEvent, ChatOutcome, ChatRequest, CompleteAnswer, StreamAnswer};
use sluice_service::request::ChatBody;

pub use sluice_service::chat::upstream_error;

use crate::{auth, error::ApiError, extract::ClientIp, identity::Identity, state::AppState};

fn header_value(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

/// An OpenAI chat completion, paid from a session (`Authorization: Bearer`),
/// an L402 token (`Authorization: L402`; without one: 402 with an invoice)
/// or the free tier (an identity); `stream: true` answers server-sent
/// events of `ChatCompletionChunk`s.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "chat",
    request_body = ChatCompletionRequest,
    security((), ("session" = []), ("l402" = []), ("nostr_token" = []), ("nip98" = [])),
    responses(
        (status = 200, description = "the answer (or an SSE stream of `ChatCompletionChunk`s)",
            body = ChatCompletion,
            headers(("x-sluice-cost-msat" = u64, description = "what the request cost"),
                ("x-sluice-request-id" = String, description = "the request's id"))),
        (status = 402, body = PaymentRequired), (status = "4XX", body = ErrorBody),
        (status = "5XX", body = ErrorBody)))]
pub async fn chat_completions(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let sluice = &state.sluice;
    let payer = auth::payer(sluice, &headers, sluice.clock.now_secs()).await?;
    let Json(v) = body?;
    let request = ChatRequest {
        body: ChatBody::parse(v)?,
        payer,
        pubkey: identity.map(|Extension(i)| i.pubkey),
        anonymous: ip
            .map(crate::ratelimit::client_key)
            .map_or_else(String::new, |i| i.to_string()),
    };
    match sluice.chat(request).await? {
        ChatOutcome::Complete(a) => Ok(complete(a)),
        ChatOutcome::Stream(s) => Ok(stream(s)),
        ChatOutcome::PayFirst(p) => crate::l402::challenge(&state, ip, p).await,
    }
}

/// A complete answer with its cost headers.
fn complete(a: CompleteAnswer) -> Response {
    let free_tier = a
        .response
        .get("free_tier")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut r = (StatusCode::OK, Json(a.response)).into_response();
    let h = r.headers_mut();
    h.insert("x-sluice-cost-msat", header_value(a.settled.charged.msat()));
    if a.paid {
        h.insert(
            "x-sluice-balance-msat",
            header_value(a.settled.balance.msat()),
        );
    }
    if let Some(f) = free_tier {
        h.insert("x-sluice-free-tier", header_value(f));
        h.insert(
            "x-sluice-absorbed-msat",
            header_value(a.settled.absorbed.msat()),
        );
    }
    h.insert("x-sluice-request-id", header_value(a.request_id));
    r
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// A streamed answer as server-sent events.
fn stream(s: StreamAnswer) -> Response {
    let events = tokio_stream::wrappers::ReceiverStream::new(s.events).map(|e| {
        Ok::<_, std::convert::Infallible>(match e {
            ChatEvent::Chunk(v) => sse(&v),
            ChatEvent::Error(e) => sse(&ApiError::from(e).body()),
            ChatEvent::Done => Bytes::from_static(b"data: [DONE]\n\n"),
        })
    });
    let mut r = Response::new(Body::from_stream(events));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-sluice-request-id", header_value(s.request_id));
    h.insert("x-sluice-hold-msat", header_value(s.hold.msat()));
    if let Some(b) = s.balance_after_hold {
        h.insert("x-sluice-balance-msat", header_value(b.msat()));
    }
    if let Some(f) = s.free_tier {
        h.insert("x-sluice-free-tier", header_value(f));
    }
    r
}
