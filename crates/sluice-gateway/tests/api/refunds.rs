//! Refunds of sessions and L402 tokens: closing pays the unused balance back,
//! once, to the payer's own invoice.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::helpers::{Db, TestApp, error_code, user};

#[tokio::test]
async fn closing_a_session_refunds_its_unused_balance_once() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(100).await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "max_tokens": 10, "messages": user("hi")}),
        )
        .await;
    let cost: u64 = r.headers()["x-sluice-cost-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let left = 100_000 - cost;

    // Only the session's own credential can close it.
    let (_, other) = app.funded_session(10).await;
    let r = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&other))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "session_mismatch".into())
    );

    let r = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["refund"]["amount_msat"], left);
    let payout = v["refund"]["payout_sats"].as_u64().unwrap();
    assert_eq!(payout, left / 1000, "whole sats; the rest goes to the pool");
    // Closed: no more requests.
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
        .await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);

    // Claim with an invoice for exactly the payout (a dev invoice: a new session's deposit).
    let (sid2, mac2, bolt11) = app.new_session(payout).await;
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": bolt11}),
            Some(&mac),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let paid: Value = r.json().await.unwrap();
    assert_eq!(paid["state"], "claimed");
    app.eventually("the refund to reach the payer", || async {
        app.session(&sid2, &mac2).await["balance_msat"] == payout * 1000
    })
    .await;
    let (_, _, again) = app.new_session(payout).await;
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": again}),
            Some(&mac),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["payment_hash"], paid["payment_hash"]);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// Buy an L402 token (21 sats) and spend some of it: (macaroon, preimage, balance left).
async fn bought_token(app: &TestApp) -> (String, String, u64) {
    let r = app
        .post(
            "/v1/chat/completions",
            json!({"model": "fake-model", "max_tokens": 100, "messages": user("hi")}),
            None,
        )
        .await;
    let v: Value = r.json().await.unwrap();
    let mac = v["l402"]["macaroon"].as_str().unwrap().to_owned();
    let preimage = app
        .pay(v["l402"]["invoice"]["bolt11"].as_str().unwrap())
        .await["preimage"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("authorization", format!("L402 {mac}:{preimage}"))
        .json(&json!({"model": "fake-model", "max_tokens": 100, "messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let balance: u64 = r.headers()["x-sluice-balance-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (mac, preimage, balance)
}

#[tokio::test]
async fn an_l402_token_is_refunded_with_its_credential_or_by_preimage() {
    let app = TestApp::spawn(Db::Sqlite).await;

    // With the token itself.
    let (mac, preimage, left) = bought_token(&app).await;
    assert!(left >= 1000, "{left}");
    let (_, _, bolt11) = app.new_session(left / 1000).await;
    let r = app
        .http
        .post(app.url("/v1/l402/refund"))
        .header("authorization", format!("L402 {mac}:{preimage}"))
        .json(&json!({"invoice": bolt11}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);

    // With only the preimage of the invoice that bought the token.
    let (_, preimage, left) = bought_token(&app).await;
    let (_, _, wrong) = app.new_session(left / 1000 + 1).await;
    let r = app
        .post(
            "/v1/l402/refund",
            json!({"invoice": wrong, "preimage": preimage}),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "wrong_amount".into())
    );
    let (_, _, bolt11) = app.new_session(left / 1000).await;
    let r = app
        .post(
            "/v1/l402/refund",
            json!({"invoice": bolt11, "preimage": preimage}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, _, again) = app.new_session(left / 1000).await;
    let r = app
        .post(
            "/v1/l402/refund",
            json!({"invoice": again, "preimage": preimage}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // A preimage that bought nothing authorises nothing.
    let r = app
        .post(
            "/v1/l402/refund",
            json!({"invoice": again, "preimage": "00".repeat(32)}),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_credential".into())
    );
    app.assert_ledger_consistent().await;
    app.stop().await;
}
