//! The paid request path end to end, on SQLite and PostgreSQL.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::helpers::{Db, TestApp, error_code, user};

async fn sessions_are_paid_and_debited_at_actual_cost(db: Db) {
    let app = TestApp::spawn(db).await;
    let (id, mac, bolt11) = app.new_session(1000).await;

    // Unpaid: visible but not usable.
    let s = app.session(&id, &mac).await;
    assert_eq!(s["state"], "awaiting_payment");
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
        .await;
    assert_eq!(
        error_code(r).await,
        (
            StatusCode::PAYMENT_REQUIRED,
            "session_awaiting_payment".into()
        )
    );

    // Paid with the dev wallet: the preimage opens the invoice's hash.
    let paid = app.pay(&bolt11).await;
    assert_eq!(paid["real_money"], false);
    let s = app.session(&id, &mac).await;
    assert_eq!(s["state"], "active");
    assert_eq!(s["balance_msat"], 1_000_000);

    // A non-streaming request is charged its actual usage at the locked price.
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("What is the capital of France?")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cost: u64 = r.headers()["x-sluice-cost-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let balance: u64 = r.headers()["x-sluice-balance-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["model"], "fake-model",
        "the public name is shown, not the upstream's"
    );
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The capital of France is Paris ."
    );
    // The fake reports 3 + 6 words = 9 prompt tokens and 7 completion tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 9);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(cost, 9 * 100 + 7 * 200);
    assert_eq!(v["usage"]["cost_msat"], cost);
    assert_eq!(balance, 1_000_000 - cost);
    let hold = v["sluice"]["hold_msat"].as_u64().unwrap();
    assert_eq!(v["sluice"]["released_msat"].as_u64().unwrap(), hold - cost);
    // The upstream was told its model name and the reserved output limit.
    let sent = app.upstream.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(sent["model"], "upstream-name");
    assert_eq!(sent["max_tokens"], 100);

    let s = app.session(&id, &mac).await;
    assert_eq!(s["balance_msat"], balance);
    assert_eq!(s["held_msat"], 0);
    assert_eq!(s["spent_msat"], cost);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn sessions_are_paid_and_debited_at_actual_cost_sqlite() {
    sessions_are_paid_and_debited_at_actual_cost(Db::Sqlite).await;
}

#[tokio::test]
async fn sessions_are_paid_and_debited_at_actual_cost_postgres() {
    sessions_are_paid_and_debited_at_actual_cost(Db::Postgres).await;
}

async fn read_sse(r: reqwest::Response) -> Vec<Value> {
    let text = r.text().await.unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            if d == "[DONE]" {
                out.push(Value::String("[DONE]".into()));
            } else {
                out.push(serde_json::from_str(d).unwrap());
            }
        }
    }
    out
}

async fn streams_carry_the_cost_in_the_final_chunk(db: Db) {
    let app = TestApp::spawn(db).await;
    let (id, mac) = app.funded_session(1000).await;

    // With include_usage: a final usage chunk (choices: []) with the cost.
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "stream": true, "stream_options": {"include_usage": true}, "messages": user("What is the capital of France?")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = read_sse(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events
        .iter()
        .filter_map(|e| {
            e.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "The capital of France is Paris .");
    let last = &events[events.len() - 2];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 7);
    let cost1 = last["usage"]["cost_msat"].as_u64().unwrap();
    assert_eq!(cost1, 9 * 100 + 7 * 200);
    assert!(
        events
            .iter()
            .all(|e| e.get("model").is_none_or(|m| m == "fake-model"))
    );

    // Without include_usage: the cost rides on the finishing chunk; no empty-choices chunk.
    let r = app.chat(&mac, json!({"model": "fake-model", "stream": true, "messages": user("What is the capital of France?")})).await;
    let events = read_sse(r).await;
    assert!(
        events
            .iter()
            .all(|e| e.get("choices").is_none_or(|c| c != &json!([])))
    );
    let fin = &events[events.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    let cost2 = fin["usage"]["cost_msat"].as_u64().unwrap();
    assert_eq!(cost2, cost1);

    let s = app.session(&id, &mac).await;
    assert_eq!(s["balance_msat"], 1_000_000 - cost1 - cost2);
    assert_eq!(s["held_msat"], 0);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn streams_carry_the_cost_in_the_final_chunk_sqlite() {
    streams_carry_the_cost_in_the_final_chunk(Db::Sqlite).await;
}

#[tokio::test]
async fn streams_carry_the_cost_in_the_final_chunk_postgres() {
    streams_carry_the_cost_in_the_final_chunk(Db::Postgres).await;
}

#[tokio::test]
async fn usage_is_counted_when_the_upstream_omits_it() {
    let behaviour = sluice_gateway::testing::FakeBehaviour {
        report_usage: false,
        ..Default::default()
    };
    let app = TestApp::spawn_with(Db::Sqlite, behaviour, |_| {}).await;
    let (_, mac) = app.funded_session(1000).await;
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": user("What is the capital of France?")}),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    // Counted with cl100k: the answer text and the estimated prompt.
    let out = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((6..=9).contains(&out), "{out}");
    assert_eq!(
        v["usage"]["prompt_tokens"],
        v["sluice"]["input_tokens_estimated"]
    );
    assert!(v["usage"]["cost_msat"].as_u64().unwrap() > 0);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn models_list_prices_in_sats() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let r = app.get("/v1/models", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let m = &v["data"][0];
    assert_eq!(m["id"], "fake-model");
    // 100 USD/Mtok at 100k USD/BTC = 0.001 BTC = 100,000 sats per million tokens.
    assert_eq!(m["pricing"]["input_sats_per_mtok"], 100_000);
    assert_eq!(m["pricing"]["output_sats_per_mtok"], 200_000);
    let h: Value = app.get("/healthz", None).await.json().await.unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["real_money"], false);
    app.stop().await;
}

#[tokio::test]
async fn a_topup_resumes_a_paused_session() {
    // A minimum balance of 999 sats: one request (1,800 msat) drops a 1000-sat session below it.
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.sessions.min_balance_sats = 999
    })
    .await;
    let (id, mac) = app.funded_session(1000).await;
    assert_eq!(
        app.chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
            .await
            .status(),
        StatusCode::OK
    );
    let s = app.session(&id, &mac).await;
    assert_eq!(s["state"], "paused");
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYMENT_REQUIRED, "session_paused".into())
    );

    let r = app
        .post(
            &format!("/v1/sessions/{id}/topup"),
            json!({"amount_sats": 500}),
            Some(&mac),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    app.pay(v["invoice"]["bolt11"].as_str().unwrap()).await;
    let s = app.session(&id, &mac).await;
    assert_eq!(s["state"], "active");
    assert_eq!(
        app.chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
            .await
            .status(),
        StatusCode::OK
    );
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn attenuated_credentials_are_enforced() {
    use sluice_proto::macaroon::{Macaroon, max_spend_caveat, models_caveat};
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(1000).await;
    let parent = Macaroon::from_base64(&mac).unwrap();

    // A sub-agent limited to another model is refused this one.
    let other = parent
        .clone()
        .with_first_party_caveat(&models_caveat(&["other-model"]).unwrap())
        .to_base64();
    let r = app
        .chat(
            &other,
            json!({"model": "fake-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "model_not_allowed".into())
    );

    // A spend cap of 22 sats: the first request's hold (20,900 msat) fits; the next
    // must fit beside what the first cost (1,800 msat), and 22,700 does not.
    let capped = parent
        .clone()
        .with_first_party_caveat(&max_spend_caveat(sluice_core::Msat::from_msat(22_000)))
        .to_base64();
    let r = app
        .chat(
            &capped,
            json!({"model": "fake-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cost: u64 = r.headers()["x-sluice-cost-msat"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Refused, and nothing held.
    let r = app
        .chat(
            &capped,
            json!({"model": "fake-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYMENT_REQUIRED, "spend_cap_exceeded".into())
    );
    // The parent credential is not capped.
    assert_eq!(
        app.chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
            .await
            .status(),
        StatusCode::OK
    );
    let s = app.session(&id, &mac).await;
    assert_eq!(s["held_msat"], 0);
    assert!(s["spent_msat"].as_u64().unwrap() > cost);

    // A widened copy (caveat dropped, signature kept) is refused.
    // (the parent's caveats with the capped macaroon's signature: the V2 encoding ends in it).
    let forged = {
        let mut enc = parent.encode_v2();
        let sig_at = enc.len() - 32;
        enc[sig_at..].copy_from_slice(Macaroon::from_base64(&capped).unwrap().signature());
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(enc)
    };
    let r = app
        .chat(
            &forged,
            json!({"model": "fake-model", "messages": user("hi")}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "invalid_credential".into())
    );
    app.assert_ledger_consistent().await;
    app.stop().await;
}
