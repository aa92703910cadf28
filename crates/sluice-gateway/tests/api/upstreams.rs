//! The Anthropic adapter and the BTC/USD oracle against real HTTP servers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    http::HeaderMap,
    response::IntoResponse,
    routing::{get, post},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_core::UsdMicros;
use sluice_gateway::{
    config::{ModelKind, Secret},
    oracle::{HttpOracle, PriceOracle, PriceSource},
};

use super::helpers::{Db, TestApp, fake_model, user};

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}")
}

/// A stand-in for Anthropic's Messages API (a real HTTP server speaking its shapes).
async fn fake_anthropic(headers: HeaderMap, Json(body): Json<Value>) -> axum::response::Response {
    assert_eq!(headers["x-api-key"], "secret-key");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(body["system"], "be brief");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": "Say hello in French"}])
    );
    assert_eq!(body["max_tokens"], 100);
    if body["stream"] == true {
        let events = [
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Bon"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "jour"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
            json!({"type": "message_stop"}),
        ];
        let sse: String = events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
            .collect();
        return ([("content-type", "text/event-stream")], sse).into_response();
    }
    Json(json!({
        "id": "msg_1", "type": "message", "role": "assistant",
        "content": [{"type": "text", "text": "Bonjour"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 3},
    }))
    .into_response()
}

#[tokio::test]
async fn anthropic_models_are_sold_like_any_other() {
    let url = serve(Router::new().route("/v1/messages", post(fake_anthropic))).await;
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        let mut m = fake_model(&format!("{url}/v1"));
        m.name = "claude".into();
        m.kind = ModelKind::Anthropic;
        m.api_key = Some(Secret::new("secret-key"));
        c.models.push(m);
    })
    .await;
    let (id, mac) = app.funded_session(1000).await;
    let messages = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "Say hello in French"}]);

    let r = app
        .chat(&mac, json!({"model": "claude", "messages": messages}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude");
    assert_eq!(v["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["cost_msat"], 12 * 100 + 3 * 200);

    let r = app
        .chat(&mac, json!({"model": "claude", "stream": true, "stream_options": {"include_usage": true}, "messages": messages}))
        .await;
    let text = r.text().await.unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let said: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(said, "Bonjour");
    let last = chunks.last().unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], 12);
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert_eq!(last["usage"]["cost_msat"], 12 * 100 + 3 * 200);

    let s = app.session(&id, &mac).await;
    assert_eq!(s["spent_msat"], 2 * (12 * 100 + 3 * 200));
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn the_http_oracle_caches_times_out_and_falls_back() {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let url = serve(
        Router::new()
            .route(
                "/price",
                get(move || {
                    let h = h.clone();
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        Json(json!({"bitcoin": {"usd": 50123.5}}))
                    }
                }),
            )
            .route(
                "/broken",
                get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Json(json!({"bitcoin": {"usd": 1}}))
                }),
            ),
    )
    .await;
    let fallback = sluice_core::BtcUsd::new(UsdMicros::from_dollars(90_000).unwrap()).unwrap();
    let mk = |path: &str, ttl| {
        HttpOracle::new(
            format!("{url}{path}"),
            "/bitcoin/usd".into(),
            ttl,
            Duration::from_millis(300),
            fallback,
            20,
            Duration::from_secs(900),
        )
    };

    let live = mk("/price", Duration::from_secs(60));
    let (p, src) = live.btc_usd().await;
    assert_eq!((p.micros(), src), (50_123_500_000, PriceSource::Live));
    live.btc_usd().await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second read is served from the cache"
    );
    let uncached = mk("/price", Duration::ZERO);
    uncached.btc_usd().await;
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    assert_eq!(
        mk("/broken", Duration::from_secs(60)).btc_usd().await,
        (fallback, PriceSource::Fallback)
    );
    let t0 = std::time::Instant::now();
    assert_eq!(
        mk("/slow", Duration::from_secs(60)).btc_usd().await,
        (fallback, PriceSource::Fallback)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the timeout bounds a slow source"
    );
    let _ = user("unused");
}

/// A glitched quote ten times too high made every request cost one sat: no
/// plausibility check, and no staleness bound on the fallback.
#[tokio::test]
async fn an_implausible_btc_quote_is_refused_and_a_stale_price_is_reported() {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let url = serve(Router::new().route(
        "/price",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                // Good, then a glitch ten times too high, then a real 10 % move.
                let usd = match n {
                    0 => 100_000.0,
                    1 => 1_000_000.0,
                    _ => 110_000.0,
                };
                Json(json!({"bitcoin": {"usd": usd}}))
            }
        }),
    ))
    .await;
    let fallback = sluice_core::BtcUsd::new(UsdMicros::from_dollars(95_000).unwrap()).unwrap();
    let oracle = HttpOracle::new(
        format!("{url}/price"),
        "/bitcoin/usd".into(),
        Duration::ZERO,
        Duration::from_millis(500),
        fallback,
        20,
        Duration::from_millis(300),
    );
    let dollars = |p: sluice_core::BtcUsd| p.micros() / 1_000_000;
    let (p, src) = oracle.btc_usd().await;
    assert_eq!((dollars(p), src), (100_000, PriceSource::Live));
    let (p, src) = oracle.btc_usd().await;
    assert_eq!(
        (dollars(p), src),
        (100_000, PriceSource::LastGood),
        "the glitch is refused and the last good price kept"
    );
    assert!(!oracle.status().stale);
    let (p, src) = oracle.btc_usd().await;
    assert_eq!(
        (dollars(p), src),
        (110_000, PriceSource::Live),
        "a real move is taken"
    );
    // The source goes quiet beyond max_age: the price in use is reported stale.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = oracle.status();
    assert!(s.stale && s.age.is_some(), "{s:?}");
    assert_eq!(s.source, PriceSource::LastGood);
    // Never a good quote: the fallback, stale from the start.
    let never = HttpOracle::new(
        format!("{url}/nothing-here"),
        "/bitcoin/usd".into(),
        Duration::ZERO,
        Duration::from_millis(300),
        fallback,
        20,
        Duration::from_secs(900),
    );
    assert_eq!(never.btc_usd().await, (fallback, PriceSource::Fallback));
    assert!(never.status().stale);
}
