//! `/v1/estimate`: P50/P90 from learned output lengths, saved across restarts,
//! with the P90 calibration at `/metrics`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::helpers::{Db, TestApp, user};

async fn estimate(app: &TestApp) -> Value {
    let r = app
        .post(
            "/v1/estimate",
            json!({"model": "fake-model", "messages": user("hi")}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test]
async fn estimates_learn_from_paid_requests_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db: &'static str = Box::leak(
        dir.path()
            .join("est.db")
            .display()
            .to_string()
            .into_boxed_str(),
    );
    let app = TestApp::spawn(Db::SqliteAt(db)).await;

    // Before any request: the configured default (100 output tokens) is the P90.
    let e = estimate(&app).await;
    assert_eq!(e["input_tokens"], 9);
    assert_eq!(e["request_class"], "short");
    assert_eq!(e["output_tokens"]["max"], 100);
    assert_eq!(e["output_tokens"]["p90"], 100);
    assert_eq!(e["cost_msat"]["max"], 9 * 100 + 100 * 200);
    assert_eq!(e["confidence"], 0);

    // The fake upstream always answers 7 tokens.
    let (_, mac) = app.funded_session(1000).await;
    for _ in 0..40 {
        let r = app
            .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    app.eventually("the estimator to learn", || async {
        estimate(&app).await["output_tokens"]["p50"]
            .as_u64()
            .unwrap()
            <= 8
    })
    .await;
    let learned = estimate(&app).await;
    assert!(learned["confidence"].as_u64().unwrap() > 0, "{learned}");
    assert!(
        learned["cost_msat"]["p50"].as_u64().unwrap()
            < learned["cost_msat"]["max"].as_u64().unwrap()
    );
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("sluice_estimate_requests_total{model=\"fake-model\"} 40"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_estimate_p90_calibration{model=\"fake-model\"}"),
        "{metrics}"
    );
    app.stop().await;

    // A new gateway on the same database starts from what was learned.
    let app = TestApp::spawn(Db::SqliteAt(db)).await;
    let again = estimate(&app).await;
    assert_eq!(again["output_tokens"], learned["output_tokens"]);
    app.stop().await;
}

#[tokio::test]
async fn estimates_refuse_bad_requests() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let r = app
        .post(
            "/v1/estimate",
            json!({"model": "nope", "messages": user("hi")}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .post(
            "/v1/estimate",
            json!({"model": "fake-model", "max_tokens": 100000, "messages": user("hi")}),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}
