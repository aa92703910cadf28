//! Regressions of the payment audit: each test reproduces one hole through
//! which a sat leaked (named after what it reproduces), against a real
//! gateway, a real store and the fake upstream.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_gateway::testing::FakeBehaviour;

use super::helpers::{Db, TestApp, error_code, user};

fn long_reply(words: usize) -> String {
    (0..words)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A gateway in front of a fake upstream behaving as `b`, and a session
/// funded with 5,000 sats: `(app, session id, macaroon)`.
async fn funded_app(b: FakeBehaviour) -> (TestApp, String, String) {
    let app = TestApp::spawn_with(Db::Sqlite, b, |_| {}).await;
    let (id, mac) = app.funded_session(5_000).await;
    (app, id, mac)
}

async fn last_body(app: &TestApp) -> Value {
    app.upstream.last_body.lock().unwrap().clone().unwrap()
}

/// A megabyte of tool descriptions with `max_tokens = 1` was held and charged
/// as nine input tokens; `/v1/estimate` said 9.
#[tokio::test]
async fn input_the_gateway_did_not_count_is_now_held_and_priced() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let description = "weather in a city ".repeat(2_500); // ~45 KB, ~10,000 tokens
    let body = json!({
        "model": "fake-model",
        "max_tokens": 1,
        "messages": user("hi"),
        "tools": [{"type": "function", "function": {"name": "lookup", "description": description, "parameters": {}}}],
    });
    let v: Value = app
        .post("/v1/estimate", body.clone(), None)
        .await
        .json()
        .await
        .unwrap();
    let input = v["input_tokens"].as_u64().unwrap();
    assert!(input > 9_000, "the tools were not counted: {input}");
    let (_, mac) = app.funded_session(5_000).await;
    let r = app.chat(&mac, body).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["sluice"]["hold_msat"].as_u64().unwrap() >= input * 100,
        "the hold covers what is forwarded: {}",
        v["sluice"]
    );
    // What is forwarded is what was counted.
    assert_eq!(
        last_body(&app).await["tools"][0]["function"]["description"],
        description
    );
    // The context window is checked on the same count.
    let app2 = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.models[0].context_length = 5_000
    })
    .await;
    let big = json!({"model": "fake-model", "messages": user("hi"),
        "tools": [{"type": "function", "function": {"name": "f", "description": "weather in a city ".repeat(2_500)}}]});
    assert_eq!(
        error_code(app2.post("/v1/estimate", big, None).await).await,
        (StatusCode::BAD_REQUEST, "context_length_exceeded".into())
    );
    app.stop().await;
    app2.stop().await;
}

/// With `max_completion_tokens: 1, max_tokens: 4000` the hold covered one token
/// and an upstream honouring `max_tokens` produced 4,000.
#[tokio::test]
async fn an_upstream_honouring_another_limit_field_gets_only_the_one_held_for() {
    let (app, _, mac) = funded_app(FakeBehaviour {
        reply: long_reply(400),
        limit_field: Some("max_tokens"),
        ..Default::default()
    })
    .await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"),
                   "max_completion_tokens": 1, "max_tokens": 400, "n_predict": 400}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 1, "{v}");
    assert_eq!(v["sluice"]["output_limit"], 1);
    let sent = last_body(&app).await;
    assert_eq!(sent["max_tokens"], 1);
    for other in ["max_completion_tokens", "n_predict"] {
        assert!(sent.get(other).is_none(), "{other} was forwarded: {sent}");
    }
    // `n` as a float or a string is refused, not forwarded.
    for n in [json!(5.0), json!("5")] {
        let r = app
            .chat(
                &mac,
                json!({"model": "fake-model", "messages": user("hi"), "n": n}),
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_REQUEST, "unsupported_parameter".into())
        );
    }
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// An upstream that ignores every limit field streams on past the hold: the
/// gateway cuts the stream itself where the hold ends.
#[tokio::test]
async fn a_stream_that_ignores_its_limit_is_cut_where_the_hold_ends() {
    let (app, id, mac) = funded_app(FakeBehaviour {
        reply: long_reply(600),
        ignore_limits: true,
        report_usage: false,
        ..Default::default()
    })
    .await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 20, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let hold: u64 = r.headers()["x-sluice-hold-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = r.text().await.unwrap();
    let deltas = text.matches("\"content\"").count();
    assert!(deltas < 40, "{deltas} chunks relayed for a 20-token limit");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let s = app.session(&id, &mac).await;
    assert_eq!(s["held_msat"], 0);
    assert!(s["spent_msat"].as_u64().unwrap() <= hold);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// L402 prepays the P90 estimate but the upstream was told the maximum: an
/// answer could run far past what was paid.
#[tokio::test]
async fn an_l402_answer_is_limited_to_what_its_prepayment_covers() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        FakeBehaviour {
            reply: long_reply(5),
            ..Default::default()
        },
        |c| {
            c.estimates.per_payer_per_hour = 0;
            c.models[0].default_max_tokens = 400;
        },
    )
    .await;
    // Teach the estimator that answers are five tokens long.
    let (_, mac) = app.funded_session(50_000).await;
    for _ in 0..120 {
        let r = app
            .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let est: Value = app
        .post(
            "/v1/estimate",
            json!({"model": "fake-model", "messages": user("hi")}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let p90 = est["output_tokens"]["p90"].as_u64().unwrap();
    assert!(p90 < 100, "{est}");
    // The 402 prepays the P90; the upstream is told exactly what that covers.
    let r = app
        .post(
            "/v1/chat/completions",
            json!({"model": "fake-model", "messages": user("hi")}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let v: Value = r.json().await.unwrap();
    let macaroon = v["l402"]["macaroon"].as_str().unwrap().to_owned();
    let preimage = app
        .pay(v["l402"]["invoice"]["bolt11"].as_str().unwrap())
        .await["preimage"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("authorization", format!("L402 {macaroon}:{preimage}"))
        .json(&json!({"model": "fake-model", "messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let limit = last_body(&app).await["max_tokens"].as_u64().unwrap();
    assert!(limit < 400, "the upstream was told the maximum ({limit})");
    assert!(limit >= p90, "{limit} < P90 {p90}");
    assert_eq!(v["sluice"]["output_limit"], limit);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

async fn p90_of(app: &TestApp) -> u64 {
    let est: Value = app
        .post(
            "/v1/estimate",
            json!({"model": "fake-model", "messages": user("hi")}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    est["output_tokens"]["p90"].as_u64().unwrap()
}

/// About 300 one-sat requests with `max_tokens = 1` drove a class's P90 to
/// one token: answers cut by the client's own limit were learned as lengths.
#[tokio::test]
async fn requests_cut_by_a_tiny_limit_do_not_poison_the_estimate() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.estimates.per_payer_per_hour = 0;
    })
    .await;
    let before = p90_of(&app).await;
    let (_, mac) = app.funded_session(50_000).await;
    for _ in 0..300 {
        let r = app
            .chat(
                &mac,
                json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 1}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Learning runs off the response path: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = p90_of(&app).await;
    assert!(after * 8 >= before * 7, "P90 fell from {before} to {after}");
    app.stop().await;
}

/// One payer cannot move a class on its own: it teaches at most
/// `estimates.per_payer_per_hour` observations an hour.
#[tokio::test]
async fn one_payer_moves_an_estimate_only_by_its_hourly_share() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.estimates.per_payer_per_hour = 8;
    })
    .await;
    let before = p90_of(&app).await;
    let (_, mac) = app.funded_session(50_000).await;
    for _ in 0..200 {
        app.chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = p90_of(&app).await;
    assert!(
        after * 2 >= before,
        "200 short answers of one payer moved P90 from {before} to {after}"
    );
    app.stop().await;
}

/// Tool-call arguments were not metered when the upstream gave no usage, and
/// an upstream failure after them released the whole hold.
#[tokio::test]
async fn tool_call_output_is_metered_even_without_usage_or_when_the_stream_fails() {
    let (app, id, mac) = funded_app(FakeBehaviour {
        reply: long_reply(30),
        tool_calls: true,
        report_usage: false,
        stall_after: Some(10),
        ..Default::default()
    })
    .await;
    // Non-streamed: the arguments are counted.
    let app_ns = TestApp::spawn_with(
        Db::Sqlite,
        FakeBehaviour {
            reply: long_reply(30),
            tool_calls: true,
            report_usage: false,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let (_, mac_ns) = app_ns.funded_session(5_000).await;
    let v: Value = app_ns
        .chat(
            &mac_ns,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 50}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() >= 30,
        "{v}"
    );
    // Streamed, then the upstream stalls: the arguments delivered are charged.
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 50, "stream": true}),
        )
        .await;
    let text = r.text().await.unwrap();
    assert!(text.contains("upstream_interrupted"), "{text}");
    let s = app.session(&id, &mac).await;
    assert_eq!(s["held_msat"], 0);
    let spent = s["spent_msat"].as_u64().unwrap();
    assert!(spent > 3 * 100 + 5 * 200, "only input was charged: {spent}");
    app.assert_ledger_consistent().await;
    app_ns.assert_ledger_consistent().await;
    app.stop().await;
    app_ns.stop().await;
}

/// A client that hung up before the upstream answered headers dropped the
/// future that held the upstream call: the hold was never settled or
/// released, and blocked `close` until a restart.
#[tokio::test]
async fn a_client_gone_before_the_upstream_answers_leaves_no_hold() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        FakeBehaviour {
            response_delay: Duration::from_millis(800),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let (id, mac) = app.funded_session(1_000).await;
    let send = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&mac)
        .json(&json!({"model": "fake-model", "messages": user("hi"), "stream": true}))
        .send();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), send)
            .await
            .is_err(),
        "the request should still be waiting for the upstream"
    );
    app.eventually("the hold to end", || async {
        app.session(&id, &mac).await["held_msat"] == 0
    })
    .await;
    let r = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "close is not blocked");
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// Shutdown deleted the instance row at once while tracked requests ran for
/// up to 30 s: a peer released those holds, and the owner's settle conflicted.
#[tokio::test]
async fn shutdown_keeps_its_holds_its_own_until_they_settle() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        FakeBehaviour {
            chunk_delay: Duration::from_millis(300),
            ..Default::default()
        },
        |c| c.server.instance_stale_secs = 1,
    )
    .await;
    let (_, mac) = app.funded_session(1_000).await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "stream": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // Another gateway process on the same database.
    let mut peer = app.state.clone();
    peer.sluice = std::sync::Arc::new(sluice_gateway::state::Sluice {
        instance_id: "gw-peer".into(),
        ..(*app.state.sluice).clone()
    });
    let request_id = r.headers()["x-sluice-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    app.begin_stop();
    // A peer looks for abandoned holds while this process drains.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        sluice_service::background::reconcile_abandoned(&peer.sluice).await;
    }
    let text = r.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let row = app
        .state
        .sluice
        .store
        .request(&request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, sluice_store::RequestStatus::Settled, "{row:?}");
    assert!(row.charged.unwrap().msat() > 0);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// After the disk filled every write failed until a restart, and `/healthz`
/// still said "ok". Now: while writes fail nothing is charged and the health
/// check says so; once the fault is gone the gateway serves again.
#[tokio::test]
async fn a_database_that_refuses_writes_charges_nothing_and_recovers_without_a_restart() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(1_000).await;
    app.sqlite_exec(
        "CREATE TRIGGER fault_ledger BEFORE INSERT ON ledger_entry BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END; \
         CREATE TRIGGER fault_pool BEFORE UPDATE ON pool BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END; \
         CREATE TRIGGER fault_probe_insert BEFORE INSERT ON health_probe BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END; \
         CREATE TRIGGER fault_probe_update BEFORE UPDATE ON health_probe BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END;",
    )
    .await;
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable".into())
    );
    let calls = app
        .upstream
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(calls, 0, "nothing is sent upstream that could not be held");
    tokio::time::sleep(sluice_gateway::health::CACHE).await;
    let r = app.get("/healthz", None).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "unavailable");
    assert_eq!(h["database"]["ok"], false, "{h}");
    app.sqlite_exec("DROP TRIGGER fault_ledger; DROP TRIGGER fault_pool; DROP TRIGGER fault_probe_insert; DROP TRIGGER fault_probe_update;")
        .await;
    for _ in 0..10 {
        let r = app
            .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    tokio::time::sleep(sluice_gateway::health::CACHE).await;
    let h: Value = app.get("/healthz", None).await.json().await.unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(app.session(&id, &mac).await["held_msat"], 0);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// Any non-Nostr `Authorization` header bypassed the per-IP limiter, and each
/// 402 top-up of an exhausted L402 token wrote an invoice and a root key:
/// 1,000 of them in 1.8 s against a limit of 60 a minute.
#[tokio::test]
async fn top_up_challenges_of_an_exhausted_token_are_rate_limited() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.server.public_rate_per_minute = 5
    })
    .await;
    let body = json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 1});
    let v: Value = app
        .post("/v1/chat/completions", body.clone(), None)
        .await
        .json()
        .await
        .unwrap();
    let mac = v["l402"]["macaroon"].as_str().unwrap().to_owned();
    let preimage = app
        .pay(v["l402"]["invoice"]["bolt11"].as_str().unwrap())
        .await["preimage"]
        .as_str()
        .unwrap()
        .to_owned();
    // A request bigger than the token's balance: each answer is a top-up 402.
    let big = json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 900});
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = app
            .http
            .post(app.url("/v1/chat/completions"))
            .header("authorization", format!("L402 {mac}:{preimage}"))
            .json(&big)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&402), "{statuses:?}");
    assert!(statuses.contains(&429), "top-ups are limited: {statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 402).count() <= 5,
        "{statuses:?}"
    );
    app.stop().await;
    // Top-ups of a session (whose credential an unpaid session gives for free) too.
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.server.public_rate_per_minute = 5
    })
    .await;
    let (id, smac, _) = app.new_session(10).await;
    let mut topups = Vec::new();
    for _ in 0..8 {
        let r = app
            .post(
                &format!("/v1/sessions/{id}/topup"),
                json!({"amount_sats": 10}),
                Some(&smac),
            )
            .await;
        topups.push(r.status().as_u16());
    }
    assert!(topups.contains(&429), "{topups:?}");
    app.stop().await;
}

async fn raw_connection(app: &TestApp) -> tokio::net::TcpStream {
    let addr = app.base.trim_start_matches("http://").to_owned();
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Read until the peer closes (or `within` passes): what arrived, and whether it closed.
async fn read_to_close(s: &mut tokio::net::TcpStream, within: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

/// 500 sockets — silent, trickling headers a byte every 5 s, or stalling a
/// body — all stayed open for 75 s.
#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.server.header_timeout_secs = 1;
        c.server.body_timeout_secs = 1;
        c.server.max_connections_per_ip = 3;
    })
    .await;
    // Silent.
    let mut silent = raw_connection(&app).await;
    let (_, closed) = read_to_close(&mut silent, Duration::from_secs(4)).await;
    assert!(closed, "a silent connection stayed open");
    // Trickling headers.
    let mut trickle = raw_connection(&app).await;
    let trickling = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
            if trickle.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), trickling).await;
    let (_, closed) = read_to_close(&mut trickle, Duration::from_secs(2)).await;
    assert!(closed, "a trickling client stayed connected");
    // A stalled body.
    let mut stalled = raw_connection(&app).await;
    stalled
        .write_all(
            b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"amount",
        )
        .await
        .unwrap();
    let (answer, closed) = read_to_close(&mut stalled, Duration::from_secs(4)).await;
    assert!(closed, "a stalled body kept its connection");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    // One client's connections are capped: the one over the cap is answered 503.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw_connection(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = raw_connection(&app).await;
    let (answer, closed) = read_to_close(&mut extra, Duration::from_secs(2)).await;
    assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    drop(held);
    app.stop().await;
}

/// An upstream sending empty `data:` events every second kept a stream alive
/// for 45 s with `idle_timeout_secs = 3`; and a stream had no length cap.
#[tokio::test]
async fn keep_alive_events_do_not_keep_a_stream_alive_and_streams_have_a_length_cap() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        FakeBehaviour {
            keepalive_after: Some(2),
            report_usage: false,
            ..Default::default()
        },
        |c| c.models[0].idle_timeout_secs = 1,
    )
    .await;
    let (id, mac) = app.funded_session(1_000).await;
    let started = std::time::Instant::now();
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "stream": true}),
        )
        .await;
    let text = tokio::time::timeout(Duration::from_secs(8), r.text())
        .await
        .expect("the stream was never cut")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(text.contains("[DONE]"), "{text}");
    let s = app.session(&id, &mac).await;
    assert_eq!(s["held_msat"], 0);
    assert!(
        s["spent_msat"].as_u64().unwrap() > 0,
        "the two words delivered are charged"
    );
    app.stop().await;

    // A stream that keeps producing, slowly, is cut at the model's longest duration.
    let app = TestApp::spawn_with(
        Db::Sqlite,
        FakeBehaviour {
            reply: long_reply(200),
            chunk_delay: Duration::from_millis(100),
            report_usage: false,
            ..Default::default()
        },
        |c| c.models[0].max_duration_secs = 2,
    )
    .await;
    let (_, mac) = app.funded_session(1_000).await;
    let started = std::time::Instant::now();
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "stream": true, "max_tokens": 300}),
        )
        .await;
    let text = r.text().await.unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(text.matches("\"content\"").count() < 100, "not cut");
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// 405 and 431 answered with an empty body, and `%ff` in the path with text/plain.
#[tokio::test]
async fn every_error_is_in_the_openai_error_shape() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let check = |r: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string());
    };
    check(
        app.http.delete(app.url("/v1/models")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    check(
        app.get("/v1/sessions/%ff", Some("x")).await,
        400,
        "invalid_path",
    )
    .await;
    check(
        app.get("/v1/jobs/job_x?wait=soon", None).await,
        400,
        "invalid_query",
    )
    .await;
    check(
        app.http
            .get(app.url("/v1/models"))
            .header("x-big", "a".repeat(40_000))
            .send()
            .await
            .unwrap(),
        431,
        "headers_too_large",
    )
    .await;
    app.stop().await;
}

/// `/v1/models` showed 2,200 / 11,000 sats per million tokens, but a 13 + 11
/// token answer cost 3,450 msat: 3,300 of it a per-request share shown nowhere.
#[tokio::test]
async fn every_component_of_a_price_is_listed_quoted_and_itemized() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.models[0].infra_monthly_usd = Some(30.0);
        c.models[0].expected_monthly_requests = Some(10_000);
        c.models[0].margin_pct = Some(10.0);
    })
    .await;
    let v: Value = app.get("/v1/models", None).await.json().await.unwrap();
    let p = &v["data"][0]["pricing"];
    assert_eq!(p["per_request_msat"], 3_300, "{p}");
    assert_eq!(p["margin_pct"], "10");
    let est: Value = app
        .post(
            "/v1/estimate",
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 10}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(est["itemized_max"]["per_request_msat"], 3_000);
    assert_eq!(
        est["itemized_max"]["total_msat"], est["cost_msat"]["max"],
        "{est}"
    );
    let (_, mac) = app.funded_session(1_000).await;
    let v: Value = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 10}),
        )
        .await
        .json()
        .await
        .unwrap();
    let item = &v["sluice"]["price"];
    let sum: u64 = [
        "input_msat",
        "output_msat",
        "per_request_msat",
        "margin_msat",
        "rounding_msat",
        "minimum_msat",
    ]
    .iter()
    .map(|k| item[k].as_u64().unwrap())
    .sum();
    assert_eq!(sum, v["usage"]["cost_msat"].as_u64().unwrap(), "{item}");
    assert_eq!(item["total_msat"], v["usage"]["cost_msat"]);
    app.stop().await;
}

/// Two holders who add the very same spend cap to the very same macaroon hold
/// one budget between them: what one spent, the other cannot.
#[tokio::test]
async fn identical_caps_added_to_one_macaroon_share_a_budget() {
    use sluice_proto::macaroon::{Macaroon, max_spend_caveat};
    let app = TestApp::spawn(Db::Sqlite).await;
    let (_, mac) = app.funded_session(1_000).await;
    let capped = || {
        Macaroon::from_base64(&mac)
            .unwrap()
            .with_first_party_caveat(&max_spend_caveat(sluice_core::Msat::from_msat(5_000)))
            .to_base64()
    };
    let (a, b) = (capped(), capped());
    let body = json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 1});
    let mut spent = 0;
    loop {
        let r = app.chat(&a, body.clone()).await;
        if r.status() != StatusCode::OK {
            assert_eq!(
                error_code(r).await,
                (StatusCode::PAYMENT_REQUIRED, "spend_cap_exceeded".into())
            );
            break;
        }
        spent += r.headers()["x-sluice-cost-msat"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    assert!(spent > 0 && spent <= 5_000, "{spent}");
    // The second holder finds the budget spent.
    let r = app.chat(&b, body).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYMENT_REQUIRED, "spend_cap_exceeded".into())
    );
    app.stop().await;
}

/// A client that opened a stream and stopped reading (without hanging up)
/// kept the stream, its upstream generation and its hold open until the
/// request's overall deadline: the gateway waited on the client forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_gone_and_its_hold_ends() {
    use tokio::io::AsyncWriteExt;
    // 4,000 chunks of 8 KiB: far more than the sockets between gateway and client buffer.
    let app = TestApp::spawn_with(
        Db::Sqlite,
        FakeBehaviour {
            reply: long_reply(4_000),
            chunk_padding: 8 * 1024,
            ..Default::default()
        },
        |c| {
            c.models[0].max_output_tokens = 20_000;
            c.models[0].idle_timeout_secs = 1;
            c.models[0].max_duration_secs = 60;
        },
    )
    .await;
    let (id, mac) = app.funded_session(20_000).await;
    let body = json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 20_000, "stream": true}).to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr = app.base.trim_start_matches("http://").parse().unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    client
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nauthorization: Bearer {mac}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Never read: the socket's buffers fill, then the gateway's.
    let started = std::time::Instant::now();
    let s = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = app.session(&id, &mac).await;
        if s["held_msat"] == 0 && s["spent_msat"].as_u64().unwrap() > 0 {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the hold is still open while the client does not read: {s}"
        );
    };
    let streamed = app
        .upstream
        .words_streamed
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        streamed < 4_000,
        "generation went on to the end: {streamed}"
    );
    // Charged for what was generated, far less than the whole hold.
    let spent = s["spent_msat"].as_u64().unwrap();
    assert!(spent < 20_000 * 200, "{s}");
    drop(client);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// A non-streamed answer from an upstream that ignored its limit was relayed
/// whole however large (200 MB for 1.5 sats in the probe), buffered in memory.
#[tokio::test]
async fn a_non_streamed_answer_far_past_its_limit_is_refused_not_buffered() {
    let (app, id, mac) = funded_app(FakeBehaviour {
        reply: long_reply(30_000),
        ignore_limits: true,
        ..Default::default()
    })
    .await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 20}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "upstream_error", "{v}");
    let s = app.session(&id, &mac).await;
    assert_eq!(
        (s["held_msat"].as_u64(), s["spent_msat"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// An upstream that ignores `n = 1` sent several choices: all were relayed,
/// paid for as one.
#[tokio::test]
async fn only_the_first_choice_is_relayed_and_metered() {
    let (app, _, mac) = funded_app(FakeBehaviour {
        reply: long_reply(10),
        report_usage: false,
        extra_choices: 3,
        ..Default::default()
    })
    .await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 50}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 1, "{v}");
    let one_choice = v["usage"]["completion_tokens"].as_u64().unwrap();
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 50, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains("\"index\":1"), "{text}");
    assert_eq!(text.matches("\"content\"").count(), 10, "{text}");
    let usage: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|c| c.get("usage").cloned())
        .unwrap();
    assert_eq!(usage["completion_tokens"].as_u64(), Some(one_choice));
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// An upstream that closed mid-stream without a finish reason got a
/// synthesized `finish_reason: "stop"`: the client could not tell the answer
/// was cut short.
#[tokio::test]
async fn a_stream_that_ends_without_a_finish_reason_is_reported_interrupted() {
    let (app, id, mac) = funded_app(FakeBehaviour {
        reply: long_reply(10),
        close_after: Some(3),
        report_usage: false,
        ..Default::default()
    })
    .await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 50, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("upstream_interrupted"), "{text}");
    let s = app.session(&id, &mac).await;
    assert_eq!(s["held_msat"], 0);
    let spent = s["spent_msat"].as_u64().unwrap();
    assert!(
        spent > 0 && spent < 9 * 100 + 50 * 200,
        "charged for what came: {s}"
    );
    app.assert_ledger_consistent().await;
    app.stop().await;
}
