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
    // Closed: no more requests, and it says so.
    let r = app
        .chat(&mac, json!({"model": "fake-model", "messages": user("hi")}))
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYMENT_REQUIRED, "session_closed".into())
    );
    assert_eq!(app.session(&id, &mac).await["state"], "closed");

    // Claim with an invoice of the payer's own wallet for exactly the payout.
    let (bolt11, hash) = app.customer_invoice(payout).await;
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
    assert!(
        app.customer_paid(&hash).await,
        "the refund reached the payer"
    );
    let (again, _) = app.customer_invoice(payout).await;
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

/// A holder of a macaroon attenuated to a spend cap closed the
/// session and claimed its whole balance to their own invoice: `close` and
/// `refund` checked only the session id.
#[tokio::test]
async fn a_delegated_credential_cannot_close_or_refund_the_session() {
    use sluice_proto::macaroon::{Macaroon, max_spend_caveat, models_caveat};
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(100).await;
    let root = Macaroon::from_base64(&mac).unwrap();
    let capped = root
        .clone()
        .with_first_party_caveat(&max_spend_caveat(sluice_core::Msat::from_msat(5_000)))
        .to_base64();
    let narrowed = root
        .clone()
        .with_first_party_caveat(&models_caveat(&["fake-model"]).unwrap())
        .to_base64();
    // The capped delegate may still spend within its cap.
    let r = app
        .chat(
            &capped,
            json!({"model": "fake-model", "max_tokens": 1, "messages": user("hi")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    for delegate in [&capped, &narrowed] {
        let r = app
            .post(
                &format!("/v1/sessions/{id}/close"),
                json!({}),
                Some(delegate),
            )
            .await;
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "credential_restricted".into())
        );
    }
    // Nothing was closed: the owner closes, and only the owner claims.
    assert_eq!(app.session(&id, &mac).await["state"], "active");
    let r = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await;
    let payout = r.json::<Value>().await.unwrap()["refund"]["payout_sats"]
        .as_u64()
        .unwrap();
    let (invoice, _) = app.customer_invoice(payout).await;
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": invoice}),
            Some(&capped),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "credential_restricted".into())
    );
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": invoice}),
            Some(&mac),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// A session closed, revived by a late top-up and closed again owed two
/// refunds, and only the newest could be claimed.
#[tokio::test]
async fn every_refund_of_a_session_is_listed_and_claimed_by_id() {
    let app = TestApp::spawn(Db::Sqlite).await;
    let (id, mac) = app.funded_session(100).await;
    // A top-up invoice made before the close, paid after it.
    let r = app
        .post(
            &format!("/v1/sessions/{id}/topup"),
            json!({"amount_sats": 40}),
            Some(&mac),
        )
        .await;
    let late = r.json::<Value>().await.unwrap()["invoice"]["bolt11"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await
        .json::<Value>()
        .await
        .unwrap()["refund"]
        .clone();
    // A closed session takes no new top-ups...
    let r = app
        .post(
            &format!("/v1/sessions/{id}/topup"),
            json!({"amount_sats": 40}),
            Some(&mac),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "session_closed".into())
    );
    // ...but a payment of an earlier invoice is the payer's: it revives the session.
    app.pay(&late).await;
    assert_eq!(app.session(&id, &mac).await["state"], "active");
    let second = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await
        .json::<Value>()
        .await
        .unwrap()["refund"]
        .clone();
    assert_ne!(first["refund_id"], second["refund_id"]);
    let listed = app.session(&id, &mac).await["refunds"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    // Without an id the claim is ambiguous; each is claimed by its own.
    let (inv, _) = app
        .customer_invoice(first["payout_sats"].as_u64().unwrap())
        .await;
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": inv}),
            Some(&mac),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "refund_id_required".into())
    );
    for refund in [&first, &second] {
        let (inv, hash) = app
            .customer_invoice(refund["payout_sats"].as_u64().unwrap())
            .await;
        let r = app
            .post(
                &format!("/v1/sessions/{id}/refund"),
                json!({"invoice": inv, "refund_id": refund["refund_id"]}),
                Some(&mac),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{refund}");
        assert!(app.customer_paid(&hash).await);
    }
    let states: Vec<Value> = app.session(&id, &mac).await["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].clone())
        .collect();
    assert_eq!(states, vec![json!("claimed"), json!("claimed")]);
    app.assert_ledger_consistent().await;
    app.stop().await;
}

/// Claiming a refund with the session's own, already settled, deposit
/// invoice answered 202, and the reconciler then recorded it paid: the
/// ledger posted a payout that never happened.
#[tokio::test]
async fn a_refund_claimed_with_an_invoice_already_paid_is_not_recorded_as_paid() {
    let app = TestApp::spawn_with(Db::Sqlite, Default::default(), |c| {
        c.server.instance_stale_secs = 1
    })
    .await;
    let (id, mac, deposit) = app.new_session(100).await;
    app.pay(&deposit).await;
    app.post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await;
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": deposit}),
            Some(&mac),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "invoice_is_ours".into())
    );
    // The payer's own invoice, already paid by an earlier refund, proves nothing
    // for this one.
    let (a, amac) = app.funded_session(100).await;
    app.post(&format!("/v1/sessions/{a}/close"), json!({}), Some(&amac))
        .await;
    let (invoice, _) = app.customer_invoice(100).await;
    let r = app
        .post(
            &format!("/v1/sessions/{a}/refund"),
            json!({"invoice": invoice}),
            Some(&amac),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .post(
            &format!("/v1/sessions/{id}/refund"),
            json!({"invoice": invoice}),
            Some(&mac),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "invoice_already_used".into())
    );
    app.advance(std::time::Duration::from_millis(1100)).await;
    sluice_service::refunds::reconcile(&app.state.sluice).await;
    let refunds = app.state.sluice.store.refunds_for(&id).await.unwrap();
    assert_eq!(refunds[0].refund.state, sluice_core::RefundState::Pending);
    let report = app.assert_ledger_consistent().await;
    assert_eq!(report.paid_out.msat(), 100_000, "one payout, the real one");
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

/// The L402 refund checked only the token id: an attenuated token (and the
/// bare preimage, which every holder of the token has) claimed the whole balance.
#[tokio::test]
async fn an_l402_token_is_refunded_only_with_its_unrestricted_credential() {
    use sluice_proto::macaroon::{Macaroon, max_spend_caveat};
    let app = TestApp::spawn(Db::Sqlite).await;
    let (mac, preimage, left) = bought_token(&app).await;
    assert!(left >= 1000, "{left}");
    let (invoice, _) = app.customer_invoice(left / 1000).await;
    let l402 = |m: &str| format!("L402 {m}:{preimage}");
    let post = |auth: Option<String>, body: Value| {
        let mut r = app.http.post(app.url("/v1/l402/refund")).json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    // The preimage alone: every delegate of the token holds it.
    let r = post(None, json!({"invoice": invoice, "preimage": preimage}))
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "missing_credential".into())
    );
    // An attenuated token may spend within its cap, not take the balance.
    let capped = Macaroon::from_base64(&mac)
        .unwrap()
        .with_first_party_caveat(&max_spend_caveat(sluice_core::Msat::from_msat(2_000)))
        .to_base64();
    let r = post(Some(l402(&capped)), json!({"invoice": invoice}))
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "credential_restricted".into())
    );
    // Caveats sluice does not know are refused, on L402 tokens as on session macaroons.
    for caveat in [&b"foo=bar"[..], b"expires=1000"] {
        let odd = Macaroon::from_base64(&mac)
            .unwrap()
            .with_first_party_caveat(caveat)
            .to_base64();
        let r = post(Some(l402(&odd)), json!({"invoice": invoice}))
            .await
            .unwrap();
        assert_ne!(
            r.status(),
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(caveat)
        );
        let r = app
            .http
            .post(app.url("/v1/chat/completions"))
            .header("authorization", l402(&odd))
            .json(&json!({"model": "fake-model", "max_tokens": 1, "messages": user("hi")}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_client_error(),
            "{}: {}",
            String::from_utf8_lossy(caveat),
            r.status()
        );
    }
    // A claim that cannot succeed (the wrong amount) leaves the token open.
    let (wrong, _) = app.customer_invoice(left / 1000 + 5).await;
    let r = post(Some(l402(&mac)), json!({"invoice": wrong}))
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "wrong_amount".into())
    );
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("authorization", l402(&mac))
        .json(&json!({"model": "fake-model", "max_tokens": 1, "messages": user("hi")}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the token was closed by a refused claim"
    );
    let left = r.headers()["x-sluice-balance-msat"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let (invoice, hash) = app.customer_invoice(left / 1000).await;
    // The unrestricted token itself.
    let r = post(Some(l402(&mac)), json!({"invoice": invoice}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
    assert!(app.customer_paid(&hash).await);
    let (again, _) = app.customer_invoice(left / 1000).await;
    let r = post(Some(l402(&mac)), json!({"invoice": again}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
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
        /// Pay, then report a refusal (an adapter that read an error's words wrongly).
        PayThenRefuse,
        /// Hold the payment (an HTLC someone on the route sits on) and report
        /// it failed, to the payer and to look-ups, until [`MockFlakyLightning::release`].
        HoldAndReportFailed,
    }

    /// A test gateway whose payouts take `faults` in turn (then succeed),
    /// with a one-second staleness window so reconcilers run at once.
    pub async fn spawn(
        faults: VecDeque<Fault>,
    ) -> (crate::api::helpers::TestApp, Arc<MockFlakyLightning>) {
        let mock: Arc<std::sync::OnceLock<Arc<MockFlakyLightning>>> = Arc::default();
        let slot = mock.clone();
        let app = crate::api::helpers::TestApp::spawn_wrapped(
            crate::api::helpers::Db::Sqlite,
            Default::default(),
            |c| c.server.instance_stale_secs = 1,
            move |inner| {
                let m = Arc::new(MockFlakyLightning {
                    inner,
                    faults: Mutex::new(faults),
                    payouts_sent: Default::default(),
                    held: Default::default(),
                });
                let _ = slot.set(m.clone());
                m
            },
        )
        .await;
        let mock = mock
            .get()
            .cloned()
            .expect("the gateway wraps its Lightning backend");
        (app, mock)
    }

    pub struct MockFlakyLightning {
        pub inner: Arc<dyn Lightning>,
        pub faults: Mutex<VecDeque<Fault>>,
        pub payouts_sent: AtomicU32,
        /// The invoice held by `HoldAndReportFailed`, and its hash.
        pub held: Mutex<Option<(String, PaymentHash)>>,
    }

    impl MockFlakyLightning {
        /// The held HTLC settles after all: the payment arrives.
        pub async fn release(&self) {
            let held = self.held.lock().unwrap().take();
            if let Some((bolt11, _)) = held {
                self.inner.pay_invoice(&bolt11, Msat::ZERO).await.unwrap();
                self.payouts_sent.fetch_add(1, Ordering::SeqCst);
            }
        }
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
            if self
                .held
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|(_, h)| h == hash)
            {
                return Ok(PaymentStatus::Failed);
            }
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
                Some(Fault::HoldAndReportFailed) => {
                    let hash = sluice_lightning::bolt11::decode(bolt11)?.payment_hash;
                    *self.held.lock().unwrap() = Some((bolt11.to_owned(), hash));
                    Err(LightningError::Backend("the payment failed".into()))
                }
                Some(Fault::PayThenRefuse) => {
                    self.inner.pay_invoice(bolt11, max_fee).await?;
                    self.payouts_sent.fetch_add(1, Ordering::SeqCst);
                    Err(LightningError::InsufficientBalance)
                }
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
    use flaky::Fault;
    use std::sync::atomic::Ordering;
    let (app, mock) = flaky::spawn([Fault::Fail, Fault::PayThenTimeOut].into()).await;
    let (id, mac) = app.funded_session(50).await;
    let v: Value = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["refund"]["payout_sats"], 50);
    let (invoice, invoice_hash) = app.customer_invoice(50).await;

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
    let (other, _) = app.customer_invoice(50).await;
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
    app.advance(std::time::Duration::from_millis(1100)).await;
    sluice_service::refunds::reconcile(&app.state.sluice).await;
    let refunds = app.state.sluice.store.refunds_for(&id).await.unwrap();
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
    assert!(
        app.customer_paid(&invoice_hash).await,
        "the refund reached the payer"
    );
    let report = app.assert_ledger_consistent().await;
    assert_eq!(report.paid_out.msat(), 50_000);
    app.stop().await;
}

/// After a payout the backend reported failed, a new invoice was accepted at
/// once: a backend wrong about the failure (an HTLC held on the route) would
/// then pay the refund twice.
#[tokio::test]
async fn after_a_payout_reported_failed_only_the_same_invoice_is_retried_until_it_expires() {
    use flaky::Fault;
    use std::sync::atomic::Ordering;
    let (app, mock) = flaky::spawn([Fault::HoldAndReportFailed].into()).await;
    let (id, mac) = app.funded_session(50).await;
    app.post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await;
    let r = app
        .post(
            "/v1/dev/invoice",
            json!({"amount_sats": 50, "expiry_secs": 3}),
            None,
        )
        .await;
    let first: Value = r.json().await.unwrap();
    let path = format!("/v1/sessions/{id}/refund");
    let claim = |invoice: Value| app.post(&path, json!({"invoice": invoice}), Some(&mac));
    let r = claim(first["bolt11"].clone()).await;
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "an error is an unknown outcome"
    );
    // The look-up says failed (wrongly: the HTLC is held).
    app.advance(std::time::Duration::from_millis(1100)).await;
    sluice_service::refunds::reconcile(&app.state.sluice).await;
    let refund = &app.state.sluice.store.refunds_for(&id).await.unwrap()[0];
    assert_eq!(refund.refund.state, sluice_core::RefundState::Pending);
    // A new invoice is refused while the failed one lives.
    let (second, _) = app.customer_invoice(50).await;
    let r = claim(json!(second)).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "retry_same_invoice".into())
    );
    // The held HTLC settles: the payer was paid after all.
    mock.release().await;
    // Once the first invoice has expired, a new one is looked at — and the
    // earlier payment is found and recorded instead of paying again.
    app.advance(std::time::Duration::from_millis(3_200)).await;
    let r = claim(json!(second)).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["payment_hash"], first["payment_hash"]);
    let refund = &app.state.sluice.store.refunds_for(&id).await.unwrap()[0];
    assert_eq!(refund.refund.state, sluice_core::RefundState::Claimed);
    assert_eq!(
        mock.payouts_sent.load(Ordering::SeqCst),
        1,
        "exactly one payout"
    );
    let report = app.assert_ledger_consistent().await;
    assert_eq!(report.paid_out.msat(), 50_000);
    app.stop().await;
}

/// Routing fees were dropped: a payout's fee was not in the ledger, and the
/// operator paid whatever routing cost (up to max(1 %, 10 sats)).
#[tokio::test]
async fn a_payout_spends_only_the_claimants_fee_budget_and_books_the_fee() {
    use std::sync::Arc;
    /// The dev wallet, charging a routing fee: a mock for a routed payout.
    struct Fee(
        Arc<dyn sluice_lightning::Lightning>,
        std::sync::Mutex<Option<sluice_core::Msat>>,
    );
    #[async_trait::async_trait]
    impl sluice_lightning::Lightning for Fee {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn is_real_money(&self) -> bool {
            self.0.is_real_money()
        }
        async fn create_invoice(
            &self,
            a: sluice_core::Msat,
            m: &str,
            e: std::time::Duration,
        ) -> Result<sluice_lightning::Invoice, sluice_lightning::LightningError> {
            self.0.create_invoice(a, m, e).await
        }
        async fn lookup_invoice(
            &self,
            h: &sluice_lightning::PaymentHash,
        ) -> Result<sluice_lightning::InvoiceStatus, sluice_lightning::LightningError> {
            self.0.lookup_invoice(h).await
        }
        async fn lookup_payment(
            &self,
            h: &sluice_lightning::PaymentHash,
        ) -> Result<sluice_lightning::PaymentStatus, sluice_lightning::LightningError> {
            self.0.lookup_payment(h).await
        }
        async fn pay_invoice(
            &self,
            b: &str,
            max_fee: sluice_core::Msat,
        ) -> Result<sluice_lightning::Payment, sluice_lightning::LightningError> {
            *self.1.lock().unwrap() = Some(max_fee);
            let mut p = self.0.pay_invoice(b, max_fee).await?;
            p.fee = sluice_core::Msat::from_msat(max_fee.msat() / 2);
            Ok(p)
        }
        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<sluice_lightning::Settled> {
            self.0.subscribe()
        }
    }
    let seen: Arc<std::sync::OnceLock<Arc<Fee>>> = Arc::default();
    let slot = seen.clone();
    let app = TestApp::spawn_wrapped(
        Db::Sqlite,
        Default::default(),
        |_| {},
        move |inner| {
            let f = Arc::new(Fee(inner, Default::default()));
            let _ = slot.set(f.clone());
            f
        },
    )
    .await;
    let (id, mac) = app.funded_session(100).await;
    let v: Value = app
        .post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await
        .json()
        .await
        .unwrap();
    // 100 sats: the invoice may leave at most max(5 %, 2 sats) = 5 sats for routing.
    assert_eq!(v["refund"]["fee_budget_max_msat"], 5_000);
    let path = format!("/v1/sessions/{id}/refund");
    let claim = |invoice: String| app.post(&path, json!({"invoice": invoice}), Some(&mac));
    let (greedy, _) = app.customer_invoice(94).await;
    assert_eq!(
        error_code(claim(greedy).await).await,
        (StatusCode::BAD_REQUEST, "wrong_amount".into())
    );
    let (invoice, hash) = app.customer_invoice(97).await;
    let r = claim(invoice).await;
    assert_eq!(r.status(), StatusCode::OK);
    let paid: Value = r.json().await.unwrap();
    assert_eq!(paid["fee_msat"], 1_500);
    assert_eq!(
        *seen.get().unwrap().1.lock().unwrap(),
        Some(sluice_core::Msat::from_msat(3_000)),
        "the payout spends at most what the claimant left"
    );
    assert!(app.customer_paid(&hash).await);
    let report = app.assert_ledger_consistent().await;
    assert_eq!(
        (report.paid_out.msat(), report.fees.msat()),
        (97_000, 1_500)
    );
    app.stop().await;
}

/// A backend error classified as a refusal ("insufficient balance", matched
/// by its words) freed the refund for a new invoice although the payment had
/// gone out: the payer could be paid twice.
#[tokio::test]
async fn a_refusal_is_believed_only_when_the_backend_has_no_record_of_the_payment() {
    use flaky::Fault;
    use std::sync::atomic::Ordering;
    let (app, mock) = flaky::spawn([Fault::PayThenRefuse].into()).await;
    let (id, mac) = app.funded_session(50).await;
    app.post(&format!("/v1/sessions/{id}/close"), json!({}), Some(&mac))
        .await;
    let path = format!("/v1/sessions/{id}/refund");
    let claim = |invoice: String| app.post(&path, json!({"invoice": invoice}), Some(&mac));
    let (first, first_hash) = app.customer_invoice(50).await;
    let r = claim(first).await;
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "the backend knows of the payment: its outcome is unknown, not refused"
    );
    let (second, _) = app.customer_invoice(50).await;
    let r = claim(second).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    app.advance(std::time::Duration::from_millis(1100)).await;
    sluice_service::refunds::reconcile(&app.state.sluice).await;
    let refund = &app.state.sluice.store.refunds_for(&id).await.unwrap()[0];
    assert_eq!(refund.refund.state, sluice_core::RefundState::Claimed);
    assert_eq!(mock.payouts_sent.load(Ordering::SeqCst), 1, "paid once");
    assert!(app.customer_paid(&first_hash).await);
    let report = app.assert_ledger_consistent().await;
    assert_eq!(report.paid_out.msat(), 50_000);
    app.stop().await;
}
