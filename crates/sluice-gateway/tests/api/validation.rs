//! Bad input gets a clear 4xx and changes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::helpers::{Db, TestApp, error_code, user};

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(1000).await;
    let (other_id, other_mac) = app.funded_session(1000).await;

    // Malformed JSON.
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&mac)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_json".into())
    );

    let cases: Vec<(Value, Option<&str>, StatusCode, &str)> = vec![
        (
            json!({"model": "nope", "messages": user("hi")}),
            Some(&mac),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            json!({"model": "fake-model"}),
            Some(&mac),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"model": "fake-model", "messages": user("hi"), "max_tokens": 100000}),
            Some(&mac),
            StatusCode::BAD_REQUEST,
            "invalid_max_tokens",
        ),
        (
            json!({"model": "fake-model", "messages": user("hi")}),
            None,
            StatusCode::PAYMENT_REQUIRED,
            "payment_required",
        ),
        (
            json!({"model": "fake-model", "messages": user("hi")}),
            Some("garbage"),
            StatusCode::UNAUTHORIZED,
            "invalid_credential",
        ),
    ];
    for (body, token, status, code) in cases {
        let r = app.post("/v1/chat/completions", body.clone(), token).await;
        assert_eq!(error_code(r).await, (status, code.to_owned()), "{body}");
    }

    // Oversized body (the test config allows 64 KiB).
    let big = "x".repeat(100 * 1024);
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user(&big)}))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );

    // A macaroon of another session cannot read or top up this one.
    let r = app
        .get(&format!("/v1/sessions/{id}"), Some(&other_mac))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "session_mismatch".into())
    );
    let r = app
        .post(
            &format!("/v1/sessions/{other_id}/topup"),
            json!({"amount_sats": 100}),
            Some(&mac),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "session_mismatch".into())
    );

    // Amounts out of range (test config: 10..=100000 sats).
    for bad in [
        json!({"amount_sats": 5}),
        json!({"amount_sats": 100_001}),
        json!({"amount_sats": -1}),
        json!({"amount": 10}),
    ] {
        let r = app.post("/v1/sessions", bad.clone(), None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // An expired credential (attenuated to an expiry in the past).
    use sluice_proto::macaroon::{Macaroon, expires_caveat};
    let expired = Macaroon::from_base64(&mac)
        .unwrap()
        .with_first_party_caveat(&expires_caveat(1))
        .to_base64();
    let r = app
        .chat(
            &expired,
            json!({"model": "fake-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "credential_expired".into())
    );

    // Dev pay of a garbage invoice.
    let r = app
        .post("/v1/dev/pay", json!({"bolt11": "lnbc1garbage"}), None)
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invalid_invoice".into())
    );

    // Nothing above moved any money.
    for (sid, m) in [(&id, &mac), (&other_id, &other_mac)] {
        let s = app.session(sid, m).await;
        assert_eq!(
            (s["balance_msat"].as_u64(), s["held_msat"].as_u64()),
            (Some(1_000_000), Some(0))
        );
    }
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn without_l402_a_missing_credential_is_a_401() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| c.l402.enabled = false).await;
    let r = app
        .post(
            "/v1/chat/completions",
            json!({"model": "fake-model", "messages": user("hi")}),
            None,
        )
        .await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"sluice\"");
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "missing_credential".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn insufficient_balance_is_a_clear_402() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(10).await; // 10,000 msat
    // max_tokens 100 holds about 21,000 msat.
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
        .await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(v["error"]["code"], "insufficient_balance");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10000 msat available"),
        "{v}"
    );
    // A smaller max_tokens fits.
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "max_tokens": 20, "messages": user("hi")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let s = app.session(&id, &mac).await;
    assert_eq!(s["held_msat"], 0);
    app.stop().await;
}

#[tokio::test]
async fn unauthenticated_endpoints_are_rate_limited() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.server.public_rate_per_minute = 4
    })
    .await;
    // Creating and paying a session: two unauthenticated requests.
    let (_, mac) = app.funded_session(100).await;
    for _ in 0..2 {
        let r = app
            .post("/v1/sessions", json!({"amount_sats": 100}), None)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = app
        .post("/v1/sessions", json!({"amount_sats": 100}), None)
        .await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(
        error_code(r).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    // So are L402 challenges (they create invoices too)...
    let ask = json!({"model": "fake-model", "max_tokens": 10, "messages": user("hi")});
    let r = app.post("/v1/chat/completions", ask.clone(), None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );
    // ...but not paying clients.
    assert_eq!(app.chat(&mac, ask).await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn lightning_backends_are_chosen_by_configuration_with_clear_errors() {
    use sluice_gateway::config::{LightningBackend, Secret};
    let dir = tempfile::tempdir().unwrap();
    let store = sluice_store::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
        .await
        .unwrap();
    let build = |f: &dyn Fn(&mut sluice_gateway::Config)| {
        let mut cfg = super::helpers::test_config("http://127.0.0.1:9/v1");
        f(&mut cfg);
        let store = store.clone();
        async move { sluice_gateway::build_state_with_store(&cfg, store, Default::default()).await }
    };
    let err = |r: Result<sluice_gateway::AppState, sluice_gateway::BuildError>| match r {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected a configuration error"),
    };
    let e = err(build(&|c| c.lightning.backend = LightningBackend::Lnd).await);
    assert!(e.contains("lightning.macaroon"), "{e}");
    let e = err(build(&|c| c.lightning.backend = LightningBackend::Cln).await);
    assert!(e.contains("lightning.rune"), "{e}");
    let e = err(build(&|c| c.lightning.backend = LightningBackend::Lnbits).await);
    assert!(e.contains("lightning.invoice_key"), "{e}");
    let e = err(build(&|c| {
        c.lightning.backend = LightningBackend::Lnd;
        c.lightning.url = Some("https://127.0.0.1:8080".into());
        c.lightning.macaroon = Some(Secret::new("00"));
        c.lightning.tls_cert = Some("/nonexistent/tls.cert".into());
    })
    .await);
    assert!(e.contains("tls_cert"), "{e}");
    for (backend, name) in [
        (LightningBackend::Lnd, "lnd"),
        (LightningBackend::Cln, "cln"),
    ] {
        let state = build(&|c| {
            c.lightning.backend = backend;
            c.lightning.url = Some("https://127.0.0.1:8080".into());
            c.lightning.macaroon = Some(Secret::new("0201"));
            c.lightning.rune = Some(Secret::new("rune"));
        })
        .await
        .unwrap();
        assert_eq!(state.sluice.lightning.name(), name);
        assert!(state.sluice.lightning.is_real_money());
        assert!(
            state.sluice.dev_wallet.is_none(),
            "no dev payments with a real node"
        );
    }
}
