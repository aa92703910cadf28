//! Two-phase jobs end to end on the dev wallet: evaluation fee, accept or
//! reject, work invoice, background work, result, re-pricing and a refund
//! claimed exactly once.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_gateway::testing::{FakeBehaviour, FakeUpstream, spawn_fake_openai};

use super::helpers::{Db, TestApp, error_code, fake_model};

/// A gateway whose "judge" model answers `verdict` and whose "fake-model" does the work.
pub(super) async fn app_with_judge(
    verdict: &str,
    tweak: impl FnOnce(&mut sluice_gateway::Config),
) -> (TestApp, FakeUpstream) {
    let judge = spawn_fake_openai(FakeBehaviour {
        reply: verdict.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = judge.base_url.clone();
    let app = TestApp::spawn_with(Db::Sqlite, FakeBehaviour::default(), move |c| {
        let mut j = fake_model(&url);
        j.name = "judge".into();
        c.models.push(j);
        c.jobs.eval_model = Some("judge".into());
        c.jobs.work_model = Some("fake-model".into());
        tweak(c);
    })
    .await;
    (app, judge)
}

#[tokio::test]
async fn a_job_runs_eval_then_work_then_refunds_the_overpayment_once() {
    let (app, _judge) = app_with_judge(
        r#"{"accepted": true, "reason": "a plain question"}"#,
        |_| {},
    )
    .await;
    let r = app
        .post(
            "/v1/jobs",
            json!({"request": "What is the capital of France?"}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    let id = v["job_id"].as_str().unwrap().to_owned();
    assert_eq!(v["state"], "awaiting_eval_payment");
    assert_eq!(v["eval_invoice"]["amount_sats"], 10);

    app.pay(v["eval_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "awaiting_work_payment").await;
    let work_sats = v["work_invoice"]["amount_sats"].as_u64().unwrap();
    assert!(work_sats > 0);

    app.pay(v["work_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "complete").await;
    assert_eq!(v["result"], "The capital of France is Paris .");
    // Re-priced at actual: the fake counts 3 + 6 prompt tokens and 7 output tokens.
    let charged = v["cost"]["work_charged_msat"].as_u64().unwrap();
    assert_eq!(charged, 9 * 100 + 7 * 200);
    let refund = &v["refund"];
    assert_eq!(refund["state"], "pending");
    assert_eq!(
        refund["amount_msat"].as_u64().unwrap(),
        work_sats * 1000 - charged
    );
    let payout = refund["payout_sats"].as_u64().unwrap();
    assert_eq!(
        payout,
        (work_sats * 1000 - charged) / 1000,
        "refunds round down; the rest goes to the pool"
    );

    // The payer claims with an invoice of their own wallet (the dev wallet's
    // customer side). One for more than the refund is refused.
    let (wrong, _) = app.customer_invoice(payout + 1).await;
    let r = app
        .post(
            &format!("/v1/jobs/{id}/refund"),
            json!({"invoice": wrong}),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "wrong_amount".into())
    );
    // One of the gateway's own invoices is refused: a refund is not paid back into it.
    let (_, _, ours) = app.new_session(payout).await;
    let r = app
        .post(
            &format!("/v1/jobs/{id}/refund"),
            json!({"invoice": ours}),
            None,
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invoice_is_ours".into())
    );
    let (bolt11, customer_hash) = app.customer_invoice(payout).await;
    let r = app
        .post(
            &format!("/v1/jobs/{id}/refund"),
            json!({"invoice": bolt11}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let paid: Value = r.json().await.unwrap();
    assert_eq!(paid["state"], "claimed");
    let hash = paid["payment_hash"].as_str().unwrap().to_owned();
    assert_eq!(hash, customer_hash);
    assert!(
        app.customer_paid(&hash).await,
        "the refund reached the payer's wallet"
    );

    // A second claim is refused with the original payment hash.
    let (other, _) = app.customer_invoice(payout).await;
    let r = app
        .post(
            &format!("/v1/jobs/{id}/refund"),
            json!({"invoice": other}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["payment_hash"], hash);
    let v: Value = app
        .get(&format!("/v1/jobs/{id}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["refund"]["state"], "claimed");
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn a_rejected_job_keeps_its_fee_and_asks_for_no_work() {
    let (app, _judge) = app_with_judge(
        r#"{"accepted": false, "reason": "not something I do"}"#,
        |_| {},
    )
    .await;
    let v: Value = app
        .post("/v1/jobs", json!({"request": "Do something bad"}), None)
        .await
        .json()
        .await
        .unwrap();
    let id = v["job_id"].as_str().unwrap().to_owned();
    app.pay(v["eval_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "rejected").await;
    assert_eq!(v["reason"], "not something I do");
    assert!(v.get("work_invoice").is_none());
    assert!(v.get("refund").is_none());
    let report = app.assert_ledger_consistent().await;
    // The evaluation fee is earned; 10% of it feeds the generosity pool.
    assert_eq!(report.revenue.msat(), 9_000);
    assert_eq!(report.pool.msat() - report.seeded.msat(), 1_000);
    app.stop().await;
}

#[tokio::test]
async fn an_unreadable_evaluation_fails_the_job_and_refunds_the_fee() {
    let (app, _judge) = app_with_judge("I would rather not say", |_| {}).await;
    let v: Value = app
        .post("/v1/jobs", json!({"request": "Hello"}), None)
        .await
        .json()
        .await
        .unwrap();
    let id = v["job_id"].as_str().unwrap().to_owned();
    app.pay(v["eval_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "failed").await;
    assert_eq!(v["refund"]["payout_sats"], 10);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn job_requests_are_validated_with_distinct_errors() {
    let (app, _judge) = app_with_judge(r#"{"accepted": true}"#, |_| {}).await;
    let r = app.post("/v1/jobs", json!({}), None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "request_missing".into())
    );
    let r = app.post("/v1/jobs", json!({"request": "   "}), None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "request_missing".into())
    );
    let r = app
        .post("/v1/jobs", json!({"request": "x".repeat(501)}), None)
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "request_too_long".into())
    );
    let r = app
        .post("/v1/jobs", json!({"request": "é".repeat(500)}), None)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "500 characters, counted as characters"
    );
    let r = app.get("/v1/jobs/job_nope", None).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "job_not_found".into())
    );
    app.stop().await;
}

/// A gateway starting while another ran a long job failed it after 20 s of
/// quiet (`updated_at` is written once per attempt): jobs belong to the
/// process running them, and are taken over only once it is dead.
#[tokio::test]
async fn work_interrupted_by_a_restart_is_failed_and_refunded() {
    // The work upstream hangs, as a crashed gateway's would never answer.
    let (app, _judge) = app_with_judge(r#"{"accepted": true, "reason": "ok"}"#, |c| {
        c.server.instance_stale_secs = 1;
        c.models[0].timeout_secs = 30;
    })
    .await;
    let v: Value = app
        .post(
            "/v1/jobs",
            json!({"request": "What is the capital of France?"}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let id = v["job_id"].as_str().unwrap().to_owned();
    app.pay(v["eval_invoice"]["bolt11"].as_str().unwrap()).await;
    let v = app.wait_for_job(&id, "awaiting_work_payment").await;
    let work_sats = v["work_invoice"]["amount_sats"].as_u64().unwrap();
    // Record the work payment without running the work (the gateway "died" here).
    let hash = v["work_invoice"]["payment_hash"].as_str().unwrap();
    let job = app
        .state
        .sluice
        .store
        .job_invoice_paid(hash, &"11".repeat(32), "gw-test", app.state.sluice.now_ms())
        .await
        .unwrap();
    assert_eq!(job.unwrap().state, sluice_core::JobState::Executing);
    // This (live) process runs it: however quiet, no reconciler touches it.
    let now = app.state.sluice.now_ms();
    app.state
        .sluice
        .store
        .job_attempt(&id, &app.state.sluice.instance_id, now)
        .await
        .unwrap();
    app.advance(Duration::from_millis(1100)).await;
    sluice_service::jobs::reconcile(&app.state.sluice).await;
    let v: Value = app
        .get(&format!("/v1/jobs/{id}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["state"], "executing",
        "a live process's long work is not failed"
    );
    // The process running it dies (it never beats again).
    app.state
        .sluice
        .store
        .job_attempt(&id, "gw_dead", now)
        .await
        .unwrap();
    app.advance(Duration::from_millis(1100)).await;
    // The next start finds it orphaned in `executing`: failed, the whole work
    // payment refunded (this process's own reconciler may take it first: the
    // clock moved for it too).
    sluice_service::jobs::resume_at_start(&app.state.sluice).await;
    let v = app.wait_for_job(&id, "failed").await;
    assert_eq!(v["state"], "failed");
    assert_eq!(v["refund"]["payout_sats"], work_sats);
    app.assert_ledger_consistent().await;
    app.stop().await;
}
