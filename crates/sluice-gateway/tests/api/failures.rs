//! Failure rules: nothing charged when the upstream fails before output;
//! charged for what was generated when the client leaves; holds of a dead
//! gateway released by the reconciler.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use sluice_gateway::testing::FakeBehaviour;
use sluice_store::{NewHold, RequestStatus};

use super::helpers::{Db, TestApp, error_code, user};

#[tokio::test]
async fn an_upstream_error_charges_nothing() {
    for stream in [false, true] {
        let b = FakeBehaviour {
            fail_status: Some(500),
            ..Default::default()
        };
        let app = TestApp::spawn_with(Db::Sqlite, b, |_| {}).await;
        let (id, mac) = app.funded_session(1000).await;
        let r = app
            .chat(
                &mac,
                json!({"model": "fake-model", "stream": stream, "messages": user("hi")}),
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::BAD_GATEWAY, "upstream_error".into())
        );
        let s = app.session(&id, &mac).await;
        assert_eq!(s["balance_msat"], 1_000_000, "stream={stream}");
        assert_eq!(s["held_msat"], 0);
        assert_eq!(s["spent_msat"], 0);
        app.assert_ledger_consistent().await;
        app.stop().await;
    }
}

#[tokio::test]
async fn an_unreachable_upstream_charges_nothing() {
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let app = TestApp::spawn_with(Db::Sqlite, FakeBehaviour::default(), |c| {
        c.models[0].base_url = Some(dead)
    })
    .await;
    let (id, mac) = app.funded_session(1000).await;
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_GATEWAY, "upstream_unreachable".into())
    );
    let s = app.session(&id, &mac).await;
    assert_eq!(
        (s["balance_msat"].as_u64(), s["held_msat"].as_u64()),
        (Some(1_000_000), Some(0))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_stream_is_cut_and_charged_for_what_was_generated() {
    let b = FakeBehaviour {
        stall_after: Some(3),
        ..Default::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, b, |_| {}).await;
    let (id, mac) = app.funded_session(1000).await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "stream": true, "messages": user("hi")}),
        )
        .await;
    let body = r.text().await.unwrap(); // ends after the 2 s idle timeout
    assert!(body.contains("upstream_interrupted"), "{body}");
    assert!(body.ends_with("data: [DONE]\n\n"));
    let s = app.session(&id, &mac).await;
    assert_eq!(s["held_msat"], 0);
    let spent = s["spent_msat"].as_u64().unwrap();
    // Exactly what was generated: three words ("The capital of" = 3 cl100k tokens at
    // 200 msat) and the counted prompt (3 priming + 4 per message + "user" + "hi" =
    // 9 tokens at 100 msat), no usage having arrived.
    assert_eq!(spent, 3 * 200 + 9 * 100);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_pays_only_for_what_was_generated() {
    let b = FakeBehaviour {
        reply: "word ".repeat(200),
        chunk_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, b, |_| {}).await;
    let (id, mac) = app.funded_session(1000).await;
    let mut r = app.chat(&mac, json!({"model": "fake-model", "stream": true, "max_tokens": 200, "messages": user("hi")})).await;
    let hold: u64 = r.headers()["x-sluice-hold-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Read a few chunks, then hang up.
    for got in 0..5 {
        if r.chunk().await.unwrap().is_none() {
            panic!("the stream ended after {got} chunks");
        }
    }
    drop(r);
    app.eventually("the request to settle", || async {
        app.session(&id, &mac).await["held_msat"] == 0
    })
    .await;
    let s = app.session(&id, &mac).await;
    let spent = s["spent_msat"].as_u64().unwrap();
    assert!(spent < hold, "charged {spent} of a {hold} hold");
    assert!(spent > 0);
    // The upstream was stopped early, not run to the end.
    assert!(
        app.upstream
            .words_streamed
            .load(std::sync::atomic::Ordering::SeqCst)
            < 200
    );
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn holds_of_a_dead_gateway_are_released() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(1000).await;
    let store = app.state.sluice.store.clone();
    // A hold taken by a gateway process that then died (it never sent a heartbeat).
    let out = store
        .hold(&NewHold {
            request_id: "req_dead".into(),
            session_id: id.clone(),
            model: "fake-model".into(),
            est_input_tokens: 10,
            max_output_tokens: 10,
            hold: sluice_core::Msat::from_msat(5_000),
            btc_usd_micros: 100_000_000_000,
            caps: vec![],
            instance_id: "gw_dead".into(),
            stream: false,
            now_ms: app.state.sluice.now_ms(),
            ttl_ms: 60_000,
            pubkey: None,
            deadline_ms: app.state.sluice.now_ms() + 600_000,
        })
        .await
        .unwrap();
    assert!(matches!(out, sluice_store::HoldOutcome::Held { .. }));
    assert_eq!(app.session(&id, &mac).await["held_msat"], 5_000);
    // This gateway's own in-flight holds are not touched; the dead one's are.
    sluice_service::background::reconcile_abandoned(&app.state.sluice).await;
    let s = app.session(&id, &mac).await;
    assert_eq!(
        (s["held_msat"].as_u64(), s["balance_msat"].as_u64()),
        (Some(0), Some(1_000_000))
    );
    let r = store.request("req_dead").await.unwrap().unwrap();
    assert_eq!(r.status, RequestStatus::Abandoned);
    app.assert_ledger_consistent().await;
    app.stop().await;
}
