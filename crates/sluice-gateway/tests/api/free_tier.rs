//! The free tier end to end: an identity pays, earns a tier, then gets free
//! and partly free answers that are audited and never overdraw the pool; the
//! pool holds under hundreds of concurrent free requests on both databases;
//! free and partly free jobs; the demo endpoint.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_core::{Interaction, Msat};
use sluice_proto::nostr::Keys;

use super::helpers::{Db, TestApp, error_code, user};

fn chat_body(max_tokens: u64) -> Value {
    json!({"model": "fake-model", "messages": user("hi"), "max_tokens": max_tokens})
}

/// Make `keys` established by paying history recorded directly in the store:
/// the default threshold (2,000 sats) over two distinct days.
async fn establish(app: &TestApp, keys: &Keys) {
    let trust = app.state.sluice.free.accounting.trust;
    let now = app.state.sluice.now_ms();
    for at in [now - sluice_core::DAY_MS, now] {
        app.state
            .sluice
            .store
            .record_interaction(
                &keys.public_hex(),
                Interaction::Paid {
                    paid: Msat::from_sats(1_000).unwrap(),
                },
                &trust,
                at,
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_new_identity_pays_earns_a_tier_then_gets_free_and_partly_free_answers() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.trust.established = 3; // three paid answers of 1.8 sats (one point each)
        c.trust.established_days = 1;
        c.trust.min_tier_cost_days = 1; // 3 sats of standing for a 3-sat daily allowance
        c.free_tier.allowance_established_sats = 3;
    })
    .await;
    let keys = Keys::generate();
    let token = app.login(&keys).await;
    let (sid, mac) = app.funded_session(1_000).await;

    // New: every answer is paid.
    for _ in 0..3 {
        let r = app
            .post_as(
                "/v1/chat/completions",
                chat_body(10),
                Some(&mac),
                Some(&token),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert!(v.get("free_tier").is_none(), "{v}");
        assert!(v["usage"]["cost_msat"].as_u64().unwrap() > 0);
    }
    let me = app.me(&token).await;
    assert_eq!(me["tier"], "established", "{me}");
    assert_eq!(me["interactions"]["successful"], 3);
    assert!(me["paid_msat"].as_u64().unwrap() > 0);
    assert_eq!(me["free_allowance"]["left_today_msat"], 3_000);

    // Established: a request the allowance covers is free, without any payment credential.
    let pool_before = app.pool().await["balance_msat"].as_u64().unwrap();
    let r = app
        .post_as("/v1/chat/completions", chat_body(10), None, Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-sluice-free-tier"], "free");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["free_tier"], "free");
    assert_eq!(v["usage"]["cost_msat"], 0, "the payer pays nothing");
    let absorbed1 = v["absorbed_msat"].as_u64().unwrap();
    // The fake counts 4 prompt tokens and answers 7 tokens: 4*100 + 7*200 msat.
    assert_eq!(absorbed1, 4 * 100 + 7 * 200);
    let pool_after = app.pool().await["balance_msat"].as_u64().unwrap();
    assert_eq!(
        pool_before - pool_after,
        absorbed1,
        "the pool paid exactly the actual cost"
    );

    // What is left of the allowance covers only part of the next estimate: partial.
    let balance_before = app.session(&sid, &mac).await["balance_msat"]
        .as_u64()
        .unwrap();
    let r = app
        .post_as(
            "/v1/chat/completions",
            chat_body(10),
            Some(&mac),
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["free_tier"], "partial", "{v}");
    let absorbed2 = v["absorbed_msat"].as_u64().unwrap();
    assert_eq!(
        absorbed2,
        3_000 - absorbed1,
        "the rest of today's allowance"
    );
    let paid = v["usage"]["cost_msat"].as_u64().unwrap();
    assert_eq!(
        absorbed2 + paid,
        4 * 100 + 7 * 200,
        "pool + payer = actual cost"
    );
    let balance_after = app.session(&sid, &mac).await["balance_msat"]
        .as_u64()
        .unwrap();
    assert_eq!(
        balance_before - balance_after,
        paid,
        "only the payer's part left the session"
    );

    // Allowance spent: no free help, and without a payer it is a payment challenge.
    let r = app
        .post_as("/v1/chat/completions", chat_body(10), None, Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::PAYMENT_REQUIRED);
    let me = app.me(&token).await;
    assert_eq!(me["free_allowance"]["left_today_msat"], 0);
    assert_eq!(me["absorbed_msat"], 3_000);

    // Audited: one row per grant with what was actually absorbed.
    let grants = app
        .state
        .sluice
        .store
        .grants_for(&keys.public_hex())
        .await
        .unwrap();
    let mut absorbed: Vec<u64> = grants.iter().map(|g| g.absorbed.msat()).collect();
    absorbed.sort_unstable();
    let mut expected = vec![absorbed1, absorbed2];
    expected.sort_unstable();
    assert_eq!(absorbed, expected);
    let pool = app.pool().await;
    assert_eq!(pool["today"]["grants"], 2);
    assert_eq!(pool["today"]["absorbed_msat"], 3_000);
    assert!(
        pool["credited_msat"].as_u64().unwrap() > 0,
        "paid answers fed the pool"
    );
    assert_eq!(pool["daily_allowance_sats"]["established"], 3);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn the_estimate_shows_the_free_tier_decision() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let keys = Keys::generate();
    establish(&app, &keys).await;
    let token = app.login(&keys).await;
    let r = app
        .post_as("/v1/estimate", chat_body(10), None, Some(&token))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["free_tier"]["decision"], "free", "{v}");
    assert_eq!(v["free_tier"]["tier"], "established");
    assert_eq!(v["free_tier"]["charge_msat"], 0);
    assert_eq!(v["free_tier"]["absorb_msat"], v["hold_msat"]);
    // Anonymous: no decision.
    let r = app.post("/v1/estimate", chat_body(10), None).await;
    let v: Value = r.json().await.unwrap();
    assert!(v["free_tier"].is_null());
    app.stop().await;
}

async fn pool_holds_under_concurrent_free_requests(db: Db) {
    let app = TestApp::spawn_with(db, Default::default(), |c| {
        c.free_tier.pool_seed_sats = 20;
        c.free_tier.allowance_established_sats = 4;
        c.server.public_rate_per_minute = 0;
        c.server.max_connections_per_ip = 1024;
    })
    .await;
    let allowance = 4_000u64;
    let mut tokens = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..30 {
        let k = Keys::generate();
        establish(&app, &k).await;
        tokens.push(app.login(&k).await);
        keys.push(k);
    }
    let requests = 300;
    let futs = (0..requests).map(|i| {
        let token = tokens[i % tokens.len()].clone();
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        async move {
            let r = http
                .post(url)
                .header("X-Nostr-Token", token)
                .json(&chat_body(10))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v)
        }
    });
    let results = futures::future::join_all(futs).await;
    let served: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, v)| v)
        .collect();
    for (s, v) in &results {
        assert!(
            *s == StatusCode::OK || *s == StatusCode::PAYMENT_REQUIRED,
            "unexpected {s}: {v}"
        );
    }
    assert!(!served.is_empty());
    assert!(
        served.len() < requests,
        "a 20-sat pool cannot pay for all 300"
    );
    eprintln!(
        "{db:?}: {} of {requests} concurrent free requests served",
        served.len()
    );

    let status = app
        .state
        .sluice
        .store
        .pool_status(sluice_core::day_of(app.state.sluice.now_ms()))
        .await
        .unwrap();
    // Conserved: seed (+ credits, none here) = balance + grants.
    assert_eq!(status.seeded, Msat::from_sats(20).unwrap());
    assert_eq!(
        status.seeded.checked_add(status.credited).unwrap(),
        status.balance.checked_add(status.absorbed).unwrap()
    );
    let absorbed_in_responses: u64 = served
        .iter()
        .map(|v| v["absorbed_msat"].as_u64().unwrap())
        .sum();
    assert_eq!(absorbed_in_responses, status.absorbed.msat());
    // Decisions count what is already promised to requests in flight, so every
    // free answer was paid by the pool in full (4 prompt + 7 output tokens):
    // none was left to the operator.
    for v in &served {
        assert_eq!(v["free_tier"], "free", "{v}");
        assert_eq!(v["absorbed_msat"], 4 * 100 + 7 * 200, "{v}");
    }
    assert_eq!(app.pool().await["promised_in_flight_msat"], 0);
    assert_eq!(status.absorbed_today, status.absorbed);
    // No identity exceeded its allowance.
    for k in &keys {
        let grants = app
            .state
            .sluice
            .store
            .grants_for(&k.public_hex())
            .await
            .unwrap();
        let sum: u64 = grants.iter().map(|g| g.absorbed.msat()).sum();
        assert!(sum <= allowance, "{} absorbed {sum}", k.public_hex());
        let row = app
            .state
            .sluice
            .store
            .identity(&k.public_hex())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.absorbed_today.msat(), sum);
    }
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_holds_under_hundreds_of_concurrent_free_requests_sqlite() {
    pool_holds_under_concurrent_free_requests(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_holds_under_hundreds_of_concurrent_free_requests_postgres() {
    pool_holds_under_concurrent_free_requests(Db::Postgres).await;
}

/// A gateway with a judge that accepts every job.
async fn jobs_app(
    tweak: impl FnOnce(&mut sluice_gateway::Config),
) -> (TestApp, sluice_gateway::testing::FakeUpstream) {
    super::jobs::app_with_judge(r#"{"accepted": true, "reason": "fine"}"#, tweak).await
}

#[tokio::test]
async fn a_free_job_has_no_work_invoice_and_a_partial_job_a_discounted_one() {
    let (app, _judge) = jobs_app(|_| {}).await;
    let keys = Keys::generate();
    establish(&app, &keys).await;
    let token = app.login(&keys).await;
    let r = app
        .post_as(
            "/v1/jobs",
            json!({"request": "What is the capital of France?"}),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["trust_tier"], "established");
    let id = v["job_id"].as_str().unwrap().to_owned();
    app.pay(v["eval_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "complete").await;
    assert_eq!(v["free_tier"], "free", "{v}");
    assert!(v.get("work_invoice").is_none());
    assert!(v["cost"]["work_paid_msat"].is_null());
    // Re-priced at actual: 9 prompt tokens, 7 output tokens; the pool paid it all.
    assert_eq!(v["absorbed_msat"], 9 * 100 + 7 * 200);
    assert!(v.get("refund").is_none());
    app.assert_ledger_consistent().await;
    app.stop().await;

    // A 10-sat allowance covers part of a ~21-sat work quote: a discounted invoice.
    let (app, _judge) = jobs_app(|c| c.free_tier.allowance_established_sats = 10).await;
    let keys = Keys::generate();
    establish(&app, &keys).await;
    let token = app.login(&keys).await;
    let r = app
        .post_as(
            "/v1/jobs",
            json!({"request": "What is the capital of France?"}),
            None,
            Some(&token),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    let id = v["job_id"].as_str().unwrap().to_owned();
    app.pay(v["eval_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "awaiting_work_payment").await;
    assert_eq!(v["free_tier"], "partial", "{v}");
    assert_eq!(v["absorb_cap_msat"], 10_000);
    let work_sats = v["work_invoice"]["amount_sats"].as_u64().unwrap();
    // Without the free tier the same quote invoices 10 sats more.
    let (plain, _j) = jobs_app(|c| c.free_tier.enabled = false).await;
    let r = plain
        .post(
            "/v1/jobs",
            json!({"request": "What is the capital of France?"}),
            None,
        )
        .await;
    let pv: Value = r.json().await.unwrap();
    let pid = pv["job_id"].as_str().unwrap().to_owned();
    plain
        .pay(pv["eval_invoice"]["bolt11"].as_str().unwrap())
        .await;
    let pv = plain.wait_for_job(&pid, "awaiting_work_payment").await;
    assert_eq!(
        pv["work_invoice"]["amount_sats"].as_u64().unwrap(),
        work_sats + 10
    );
    plain.stop().await;

    app.pay(v["work_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "complete").await;
    // The actual cost (2,300 msat) is under the cap: the pool pays it all and
    // the whole work payment is owed back.
    assert_eq!(v["absorbed_msat"], 9 * 100 + 7 * 200);
    assert_eq!(v["cost"]["work_charged_msat"], 0);
    assert_eq!(v["refund"]["amount_msat"], work_sats * 1000);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn the_demo_answers_from_the_pool_and_is_limited_per_ip() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.demo.per_hour = 2;
    })
    .await;
    let pool_before = app.pool().await["balance_msat"].as_u64().unwrap();
    let r = app
        .get(
            "/v1/demo?request=What%20is%20the%20capital%20of%20France%3F",
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["answer"], "The capital of France is Paris .");
    assert_eq!(v["free_tier"], "demo");
    let absorbed = v["absorbed_msat"].as_u64().unwrap();
    assert_eq!(absorbed, v["cost_msat"].as_u64().unwrap());
    assert!(absorbed > 0);
    assert_eq!(
        pool_before - app.pool().await["balance_msat"].as_u64().unwrap(),
        absorbed
    );
    let grant = app
        .state
        .sluice
        .store
        .grant(v["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.absorbed.msat(), absorbed);
    assert_eq!(grant.pubkey, None);

    // Bad input is refused without counting against the limit.
    let r = app.get("/v1/demo", None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "request_missing".into())
    );
    let long = "a".repeat(501);
    let r = app.get(&format!("/v1/demo?request={long}"), None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "request_too_long".into())
    );

    let r = app.get("/v1/demo?request=again", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get("/v1/demo?request=and%20again", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 3600);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 requests per hour")
    );
    app.assert_ledger_consistent().await;
    app.stop().await;

    // An empty pool cannot pay for demo answers.
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.free_tier.pool_seed_sats = 0;
    })
    .await;
    let r = app.get("/v1/demo?request=hi", None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::SERVICE_UNAVAILABLE, "pool_empty".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_session_created_with_an_identity_earns_for_it() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let keys = Keys::generate();
    let token = app.login(&keys).await;
    let r = app
        .post_as(
            "/v1/sessions",
            json!({"amount_sats": 1_000}),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["pubkey"], keys.public_hex());
    let mac = v["macaroon"].as_str().unwrap().to_owned();
    app.pay(v["invoice"]["bolt11"].as_str().unwrap()).await;
    // Requests on the session without any identity header count for its identity.
    for _ in 0..2 {
        let r = app.chat(&mac, chat_body(10)).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let me = app.me(&token).await;
    assert_eq!(me["interactions"]["successful"], 2, "{me}");
    assert!(me["paid_msat"].as_u64().unwrap() > 0);
    app.stop().await;
}

#[tokio::test]
async fn a_free_streamed_answer_carries_the_free_tier_in_its_last_chunk() {
    let app = TestApp::spawn(Db::Postgres).await;
    let keys = Keys::generate();
    establish(&app, &keys).await;
    let token = app.login(&keys).await;
    let mut body = chat_body(10);
    body["stream"] = true.into();
    let r = app
        .post_as("/v1/chat/completions", body, None, Some(&token))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-sluice-free-tier"], "free");
    assert!(r.headers().get("x-sluice-balance-msat").is_none());
    let text = r.text().await.unwrap();
    let last = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .rfind(|d| *d != "[DONE]")
        .unwrap();
    let v: Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["free_tier"], "free", "{v}");
    assert_eq!(v["absorbed_msat"], 4 * 100 + 7 * 200);
    assert_eq!(v["usage"]["cost_msat"], 0);
    assert_eq!(v["sluice"]["tier"], "established");
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// A demo answer without usage was metered on its content alone: tool-call
/// output (or reasoning) the pool paid the upstream for was counted as nothing.
#[tokio::test]
async fn a_demo_answer_meters_everything_generated() {
    let app = TestApp::spawn_with(
        Db::Sqlite,
        sluice_gateway::testing::FakeBehaviour {
            tool_calls: true,
            report_usage: false,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let r = app.get("/v1/demo?request=hi", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "tool-call arguments are output: {v}"
    );
    assert_eq!(v["absorbed_msat"], v["cost_msat"]);
    app.assert_ledger_consistent().await;
    app.stop().await;
}
