//! Sessions paid over a real LNbits (FakeWallet funding source, started by
//! `scripts/lnbits.sh`): by a second LNbits wallet, found by webhook, and
//! found at start when paid while the gateway was down.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::Msat;
use sluice_gateway::config::{Config, LightningBackend, Secret};
use sluice_lightning::{
    Lightning,
    lnbits::{LnBits, LnBitsConfig},
};

use super::helpers::{Db, TestApp};

struct Server {
    url: String,
    token: String,
    http: reqwest::Client,
}

struct Wallet {
    id: String,
    inkey: String,
    adminkey: String,
}

fn server() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let var = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!("{name} is not set: run `scripts/lnbits.sh start` and load its env file (scripts/test.sh does)")
        })
    };
    Server {
        url: var("SLUICE_TEST_LNBITS_URL"),
        token: var("SLUICE_TEST_LNBITS_ADMIN_TOKEN"),
        http: reqwest::Client::new(),
    }
}

impl Server {
    async fn wallet(&self, name: &str) -> Wallet {
        let v: Value = self
            .http
            .post(format!("{}/api/v1/account", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let f = |k: &str| v[k].as_str().unwrap().to_owned();
        Wallet {
            id: f("id"),
            inkey: f("inkey"),
            adminkey: f("adminkey"),
        }
    }

    /// A second wallet, funded, that pays through sluice's own LNbits client.
    async fn payer(&self) -> LnBits {
        self.payer_with_keys().await.0
    }

    /// The payer and its keys.
    async fn payer_with_keys(&self) -> (LnBits, Wallet) {
        let w = self.wallet("payer").await;
        let r = self
            .http
            .put(format!("{}/users/api/v1/balance", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"id": w.id, "amount": 100_000}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut c = LnBitsConfig::new(&self.url, &w.inkey);
        c.admin_key = Some(w.adminkey.clone());
        (LnBits::new(c).unwrap(), w)
    }

    fn configure(&self, receiver: &Wallet, poll_secs: u64) -> impl FnOnce(&mut Config) + use<> {
        let (url, key) = (self.url.clone(), receiver.inkey.clone());
        move |c: &mut Config| {
            c.lightning.backend = LightningBackend::Lnbits;
            c.lightning.url = Some(url);
            c.lightning.invoice_key = Some(Secret::new(key));
            c.lightning.poll_interval_secs = poll_secs;
        }
    }
}

#[tokio::test]
async fn a_session_paid_from_another_lnbits_wallet_is_credited_by_webhook() {
    let server = server();
    let receiver = server.wallet("sluice").await;
    let payer = server.payer().await;
    // Polling every 10 minutes: only the webhook can credit this in time.
    let app = TestApp::spawn_with(
        Db::Sqlite,
        Default::default(),
        server.configure(&receiver, 600),
    )
    .await;
    let h: Value = app.get("/healthz", None).await.json().await.unwrap();
    assert_eq!(
        (
            h["lightning"]["backend"].as_str(),
            h["real_money"].as_bool()
        ),
        (Some("lnbits"), Some(true))
    );
    // The dev wallet's endpoint is not mounted with a real backend.
    assert_eq!(
        app.post("/v1/dev/pay", json!({"bolt11": "x"}), None)
            .await
            .status(),
        404
    );
    // …and the document says so: the webhook is in it, the dev wallet is not.
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert!(doc["paths"]["/v1/lightning/lnbits/webhook"]["post"].is_object());
    assert!(doc["paths"]["/v1/dev/pay"].is_null());

    let (id, mac, bolt11) = app.new_session(1000).await;
    let paid = payer
        .pay_invoice(&bolt11, Msat::from_sats(10).unwrap())
        .await
        .unwrap();
    assert_eq!(paid.preimage.payment_hash(), paid.payment_hash);
    app.eventually("the webhook to credit the deposit", || async {
        app.session(&id, &mac).await["state"] == "active"
    })
    .await;
    let s = app.session(&id, &mac).await;
    assert_eq!(s["balance_msat"], 1_000_000);
    let r = app
        .chat(
            &mac,
            json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn an_invoice_paid_while_the_gateway_was_down_is_credited_at_start() {
    let server = server();
    let receiver = server.wallet("sluice").await;
    let payer = server.payer().await;
    let dir = tempfile::tempdir().unwrap();
    let db: &'static str = Box::leak(
        dir.path()
            .join("down.db")
            .display()
            .to_string()
            .into_boxed_str(),
    );

    let app = TestApp::spawn_with(
        Db::SqliteAt(db),
        Default::default(),
        server.configure(&receiver, 1),
    )
    .await;
    let (id, mac, bolt11) = app.new_session(500).await;
    app.stop().await;

    payer
        .pay_invoice(&bolt11, Msat::from_sats(10).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let app = TestApp::spawn_with(
        Db::SqliteAt(db),
        Default::default(),
        server.configure(&receiver, 600),
    )
    .await;
    app.eventually("the start-up scan to credit the deposit", || async {
        app.session(&id, &mac).await["state"] == "active"
    })
    .await;
    assert_eq!(app.session(&id, &mac).await["balance_msat"], 500_000);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

#[tokio::test]
async fn a_job_runs_eval_work_result_and_refund_claim_on_lnbits() {
    use sluice_gateway::testing::{FakeBehaviour, spawn_fake_openai};
    let server = server();
    let receiver = server.wallet("sluice").await;
    let (payer, payer_keys) = server.payer_with_keys().await;
    let payer_wallet = LnBits::new(LnBitsConfig::new(&server.url, &payer_keys.inkey)).unwrap();
    let judge = spawn_fake_openai(FakeBehaviour {
        reply: r#"{"accepted": true, "reason": "ok"}"#.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let judge_url = judge.base_url.clone();
    let admin = receiver.adminkey.clone();
    let configure = server.configure(&receiver, 1);
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), move |c| {
        configure(c);
        c.lightning.admin_key = Some(Secret::new(admin)); // to pay refunds out
        let mut j = super::helpers::fake_model(&judge_url);
        j.name = "judge".into();
        c.models.push(j);
        c.jobs.eval_model = Some("judge".into());
        c.jobs.work_model = Some("fake-model".into());
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
    payer
        .pay_invoice(
            v["eval_invoice"]["bolt11"].as_str().unwrap(),
            Msat::from_sats(10).unwrap(),
        )
        .await
        .unwrap();
    let v = app.wait_for_job(&id, "awaiting_work_payment").await;
    payer
        .pay_invoice(
            v["work_invoice"]["bolt11"].as_str().unwrap(),
            Msat::from_sats(10).unwrap(),
        )
        .await
        .unwrap();
    let v = app.wait_for_job(&id, "complete").await;
    assert_eq!(v["result"], "The capital of France is Paris .");
    let payout = v["refund"]["payout_sats"].as_u64().unwrap();
    assert!(payout > 0);

    // LNbits reserves max(2 sats, 1 %) for routing on every payment: the
    // claimant's invoice must leave at least that (it is the claimant's fee).
    assert_eq!(v["refund"]["fee_budget_min_msat"], 2_000, "{v}");
    let too_big = payer_wallet
        .create_invoice(
            Msat::from_sats(payout).unwrap(),
            "sluice refund",
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/v1/jobs/{id}/refund"),
            json!({"invoice": too_big.bolt11}),
            None,
        )
        .await;
    assert_eq!(
        r.status(),
        400,
        "LNbits would refuse to pay it: its reserve does not fit"
    );
    // The payer's wallet makes the refund invoice; sluice pays it from its LNbits wallet.
    let refund_invoice = payer_wallet
        .create_invoice(
            Msat::from_sats(payout - 2).unwrap(),
            "sluice refund",
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/v1/jobs/{id}/refund"),
            json!({"invoice": refund_invoice.bolt11}),
            None,
        )
        .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let status = payer_wallet
        .lookup_invoice(&refund_invoice.payment_hash)
        .await
        .unwrap();
    assert!(
        matches!(status, sluice_lightning::InvoiceStatus::Settled { .. }),
        "{status:?}"
    );
    let r = app
        .post(
            &format!("/v1/jobs/{id}/refund"),
            json!({"invoice": refund_invoice.bolt11}),
            None,
        )
        .await;
    assert_eq!(r.status(), 409);
    app.assert_ledger_consistent().await;
    app.stop().await;
}
