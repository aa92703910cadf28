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

/// A Lightning backend with injected payout faults (a mock around the real dev
/// wallet): each payout takes the next scripted behaviour.
mod flaky {
    use std::{
        collections::VecDeque,
        sync::{
            Arc, Mutex,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use async_trait::async_trait;
    use sluice_core::Msat;
    use sluice_lightning::{
        Invoice, InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus,
        Settled,
    };

    #[derive(Debug, Clone, Copy)]
    pub enum Fault {
        /// Refuse without paying.
        Fail,
        /// Pay, then report a timeout: the outcome is unknown to the caller.
        PayThenTimeOut,
    }

    pub struct MockFlakyLightning {
        pub inner: Arc<dyn Lightning>,
        pub faults: Mutex<VecDeque<Fault>>,
        pub payouts_sent: AtomicU32,
    }

    #[async_trait]
    impl Lightning for MockFlakyLightning {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn is_real_money(&self) -> bool {
            self.inner.is_real_money()
        }
        async fn create_invoice(
            &self,
            amount: Msat,
            memo: &str,
            expiry: Duration,
        ) -> Result<Invoice, LightningError> {
            self.inner.create_invoice(amount, memo, expiry).await
        }
        async fn lookup_invoice(
            &self,
            hash: &PaymentHash,
        ) -> Result<InvoiceStatus, LightningError> {
            self.inner.lookup_invoice(hash).await
        }
        async fn lookup_payment(
            &self,
            hash: &PaymentHash,
        ) -> Result<PaymentStatus, LightningError> {
            self.inner.lookup_payment(hash).await
        }
        async fn pay_invoice(
            &self,
            bolt11: &str,
            max_fee: Msat,
        ) -> Result<Payment, LightningError> {
            let fault = self.faults.lock().unwrap().pop_front();
            match fault {
                Some(Fault::Fail) => Err(LightningError::InsufficientBalance),
                Some(Fault::PayThenTimeOut) => {
                    self.inner.pay_invoice(bolt11, max_fee).await?;
                    self.payouts_sent.fetch_add(1, Ordering::SeqCst);
                    Err(LightningError::Backend(
                        "timed out waiting for the node".into(),
                    ))
                }
                None => {
                    let p = self.inner.pay_invoice(bolt11, max_fee).await?;
                    self.payouts_sent.fetch_add(1, Ordering::SeqCst);
                    Ok(p)
                }
            }
        }
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Settled> {
            self.inner.subscribe()
        }
    }
}

#[tokio::test]
async fn payouts_that_fail_time_out_or_could_succeed_twice_pay_exactly_once() {
    use flaky::{Fault, MockFlakyLightning};
    use std::sync::{Arc, atomic::Ordering};
    let mock: Arc<std::sync::OnceLock<Arc<MockFlakyLightning>>> = Arc::default();
    let slot = mock.clone();
    let app = TestApp::spawn_wrapped(
        Db::Sqlite,
        Default::default(),
        |c| c.server.instance_stale_secs = 1,
        move |inner| {
            let m = Arc::new(MockFlakyLightning {
                inner,
                faults: std::sync::Mutex::new([Fault::Fail, Fault::PayThenTimeOut].into()),
                payouts_sent: Default::default(),
            });
            let _ = slot.set(m.clone());
            m
        },
    )
    .await;
    let mock = mock.get().unwrap().clone();
    let (id, mac) = app.funded_session(50).await;
    let v: Value = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["refund"]["payout_sats"], 50);
    let (sid, smac, invoice) = app.new_session(50).await;

    // 1. The backend refuses: nothing paid, the refund can be claimed again.
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": invoice}),
            Some(&mac),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_GATEWAY, "payout_failed".into())
    );
    assert_eq!(mock.payouts_sent.load(Ordering::SeqCst), 0);

    // 2. The backend pays but times out: the outcome is unknown, so nothing else may pay.
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": invoice}),
            Some(&mac),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["state"], "paying");
    let hash = v["payment_hash"].as_str().unwrap().to_owned();
    let (_, _, other) = app.new_session(50).await;
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": other}),
            Some(&mac),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CONFLICT,
        "a claim while the payout is unknown is refused"
    );

    // 3. The reconciler looks the payment up and records the success.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sluice_gateway::refunds::reconcile(&app.state).await;
    let refunds = app.state.store.refunds_for(&id).await.unwrap();
    assert_eq!(refunds[0].refund.state, sluice_core::RefundState::Claimed);
    assert_eq!(
        refunds[0].refund.payment_hash.as_deref(),
        Some(hash.as_str())
    );

    // 4. A backend that would happily pay again never gets the chance.
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": other}),
            Some(&mac),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["payment_hash"], hash.as_str());
    assert_eq!(
        mock.payouts_sent.load(Ordering::SeqCst),
        1,
        "exactly one payout"
    );
    app.eventually("the refund to reach the payer", || async {
        app.session(&sid, &smac).await["balance_msat"] == 50_000
    })
    .await;
    let report = app.state.store.check_ledger().await.unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.paid_out.msat(), 50_000);
    app.stop().await;
}
