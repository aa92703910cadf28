//! Core Lightning under the conformance suite, against a **sample-response
//! fake** (`cln_sample_fake`): no CLN binary runs here, so an axum server
//! answers clnrest's `POST /v1/<method>` with bodies shaped exactly like the
//! samples in `samples/cln/` (mostly CLN's own documented examples, which its
//! example generator captured on regtest; see `samples/README.md`), backed by a [`FakeNetwork`] of two nodes: the
//! receiver that sluice's [`Cln`] drives, and a funded payer driven by a
//! second [`Cln`]. Like CLN, the fake's `pay` replays an earlier success for
//! an invoice already paid.
//!
//! Backend-specific tests: parsing sample responses verbatim, the sample
//! `pay` errors, `maxfee` and `retry_for` passed through, the rune header, a
//! wrong rune, a silent node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use sluice_core::Msat;
use sluice_lightning::cln::{Cln, ClnConfig};
use sluice_lightning::{
    InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus, Preimage,
};

use crate::sample_fake::{
    FakeInvoice, FakeNetwork, NodeId, OutPayment, PayFailure, ROUTE_FEE_MSAT, Replay, as_u64, fill,
    invoice_for_hash, json_response, replay, sample_json, serve, silent_server,
};
use crate::suite::{AMOUNT, Fixture};

const TEST_POLL: Duration = Duration::from_millis(100);
const PAYER_FUNDS_MSAT: u64 = 100_000_000;
const MAX_FEE: Msat = Msat::from_msat(10_000);

/// One fake CLN node's clnrest.
struct ClnFake {
    net: Arc<FakeNetwork>,
    node: NodeId,
    rune: String,
    /// Every `Rune` header received (None when absent).
    runes: Mutex<Vec<Option<String>>>,
    /// Every (method, params) received.
    calls: Mutex<Vec<(String, Value)>>,
}

type Fake = State<Arc<ClnFake>>;

/// A JSON-RPC error as clnrest sends it: the sample, code and message set.
fn rpc_error(status: StatusCode, sample: &str, code: i64, message: &str) -> Response {
    json_response(
        status,
        &fill(
            sample_json(sample),
            &[("code", json!(code)), ("message", json!(message))],
        ),
    )
}

impl ClnFake {
    async fn spawn(net: Arc<FakeNetwork>, node: NodeId) -> (String, Arc<ClnFake>) {
        let fake = Arc::new(ClnFake {
            net,
            node,
            rune: format!("{}==", hex::encode(rand::random::<[u8; 20]>())),
            runes: Mutex::default(),
            calls: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/v1/{method}", post(call))
            .with_state(fake.clone());
        (serve(app).await, fake)
    }

    fn calls_of(&self, method: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn listed_invoice(&self, inv: &FakeInvoice) -> Value {
        match inv.paid {
            Some(paid) => fill(
                sample_json("cln/listinvoices_paid.json")["invoices"][0].clone(),
                &[
                    ("label", json!(inv.label)),
                    ("bolt11", json!(inv.bolt11)),
                    ("payment_hash", json!(hex::encode(inv.hash))),
                    ("amount_msat", json!(inv.amount_msat)),
                    ("status", json!("paid")),
                    ("pay_index", json!(paid.pay_index)),
                    ("amount_received_msat", json!(paid.amount_msat)),
                    ("paid_at", json!(paid.at)),
                    ("payment_preimage", json!(hex::encode(inv.preimage))),
                    ("description", json!(inv.description)),
                    ("expires_at", json!(inv.expires_at())),
                    ("created_index", json!(inv.index)),
                    ("updated_index", json!(paid.pay_index)),
                ],
            ),
            None => fill(
                sample_json("cln/listinvoices_unpaid.json")["invoices"][0].clone(),
                &[
                    ("label", json!(inv.label)),
                    ("bolt11", json!(inv.bolt11)),
                    ("payment_hash", json!(hex::encode(inv.hash))),
                    ("amount_msat", json!(inv.amount_msat)),
                    (
                        "status",
                        json!(if inv.is_expired() {
                            "expired"
                        } else {
                            "unpaid"
                        }),
                    ),
                    ("description", json!(inv.description)),
                    ("expires_at", json!(inv.expires_at())),
                    ("created_index", json!(inv.index)),
                    ("updated_index", json!(inv.index)),
                ],
            ),
        }
    }

    /// `pay`'s success result for `out`, in the sample shape.
    fn paid(&self, out: &OutPayment) -> Response {
        json_response(
            StatusCode::CREATED,
            &fill(
                sample_json("cln/pay.json"),
                &[
                    ("payment_preimage", json!(hex::encode(out.preimage))),
                    ("amount_msat", json!(out.amount_msat)),
                    ("amount_sent_msat", json!(out.amount_msat + out.fee_msat)),
                    ("parts", json!(1)),
                    ("destination", json!(out.destination)),
                    ("payment_hash", json!(hex::encode(out.hash))),
                    ("status", json!("complete")),
                    ("created_at", json!(out.created_at as f64)),
                ],
            ),
        )
    }
}

async fn call(
    State(fake): Fake,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rune = headers
        .get("rune")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    fake.runes.lock().unwrap().push(rune.clone());
    match rune {
        None => {
            return json_response(
                StatusCode::FORBIDDEN,
                &sample_json("cln/error_missing_rune.json"),
            );
        }
        Some(r) if r != fake.rune => {
            return json_response(
                StatusCode::UNAUTHORIZED,
                &sample_json("cln/error_bad_rune.json"),
            );
        }
        Some(_) => {}
    }
    let params: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    fake.calls
        .lock()
        .unwrap()
        .push((method.clone(), params.clone()));
    match method.as_str() {
        "invoice" => {
            let amount = as_u64(params.get("amount_msat")).unwrap_or(0);
            let label = params["label"].as_str().unwrap_or_default();
            let description = params["description"].as_str().unwrap_or_default();
            let expiry = as_u64(params.get("expiry")).unwrap_or(604_800);
            match fake
                .net
                .create_invoice(fake.node, amount, description, expiry, label)
            {
                Ok(inv) => json_response(
                    StatusCode::CREATED,
                    &fill(
                        sample_json("cln/invoice.json"),
                        &[
                            ("payment_hash", json!(hex::encode(inv.hash))),
                            ("expires_at", json!(inv.expires_at())),
                            ("bolt11", json!(inv.bolt11)),
                            ("payment_secret", json!(hex::encode(inv.payment_secret))),
                            ("created_index", json!(inv.index)),
                        ],
                    ),
                ),
                Err(e) => rpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cln/error_pay_invoice_expired.json",
                    900,
                    &e,
                ),
            }
        }
        "listinvoices" => {
            let mut key = [0u8; 32];
            let hash = params["payment_hash"].as_str().unwrap_or_default();
            let invoices: Vec<Value> = if hex::decode_to_slice(hash, &mut key).is_ok() {
                fake.net
                    .invoice(fake.node, &key)
                    .map(|i| fake.listed_invoice(&i))
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            };
            json_response(
                StatusCode::CREATED,
                &fill(
                    sample_json("cln/listinvoices_empty.json"),
                    &[("invoices", json!(invoices))],
                ),
            )
        }
        "listpays" => {
            let mut key = [0u8; 32];
            let hash = params["payment_hash"].as_str().unwrap_or_default();
            let pays: Vec<Value> = if hex::decode_to_slice(hash, &mut key).is_ok() {
                // CLN lists every attempt: a failed one, then its retry.
                let failed = fake.net.failed_payment(fake.node, &key).map(|f| {
                    fill(
                        sample_json("cln/listpays_failed.json")["pays"][0].clone(),
                        &[
                            ("bolt11", json!(f.bolt11)),
                            ("destination", json!(f.destination)),
                            ("payment_hash", json!(hex::encode(f.hash))),
                            ("status", json!("failed")),
                            ("created_at", json!(f.created_at)),
                            ("completed_at", json!(f.created_at)),
                            ("amount_msat", json!(f.amount_msat)),
                            ("created_index", json!(f.index)),
                            ("updated_index", json!(f.index)),
                        ],
                    )
                });
                let complete = fake.net.payment(fake.node, &key).map(|out| {
                    fill(
                        sample_json("cln/listpays.json")["pays"][0].clone(),
                        &[
                            ("bolt11", json!(out.bolt11)),
                            ("destination", json!(out.destination)),
                            ("payment_hash", json!(hex::encode(out.hash))),
                            ("status", json!("complete")),
                            ("created_at", json!(out.created_at)),
                            ("completed_at", json!(out.created_at)),
                            ("preimage", json!(hex::encode(out.preimage))),
                            ("amount_msat", json!(out.amount_msat)),
                            ("amount_sent_msat", json!(out.amount_msat + out.fee_msat)),
                            ("created_index", json!(out.index)),
                            ("updated_index", json!(out.index)),
                        ],
                    )
                });
                failed.into_iter().chain(complete).collect()
            } else {
                Vec::new()
            };
            json_response(
                StatusCode::CREATED,
                &fill(
                    sample_json("cln/listpays_empty.json"),
                    &[("pays", json!(pays))],
                ),
            )
        }
        "pay" => {
            let bolt11 = params["bolt11"].as_str().unwrap_or_default();
            // No maxfee: CLN's default is 0.5% (with a 5 sat exemption).
            let maxfee = as_u64(params.get("maxfee")).unwrap_or(5_000);
            let err = |sample: &str, code: i64, message: &str| {
                rpc_error(StatusCode::INTERNAL_SERVER_ERROR, sample, code, message)
            };
            match fake.net.pay(fake.node, bolt11, maxfee) {
                Ok(out) => fake.paid(&out),
                // CLN's pay is idempotent: it replays the earlier success.
                Err(PayFailure::AlreadyPaid(prev)) => fake.paid(&prev),
                Err(PayFailure::Expired) => {
                    err("cln/error_pay_invoice_expired.json", 207, "Invoice expired")
                }
                Err(PayFailure::Unparseable(why)) => err(
                    "cln/error_pay_invoice_expired.json",
                    -32602,
                    &format!("Invalid bolt11: {why}"),
                ),
                Err(PayFailure::NoRoute | PayFailure::FeeTooLow) => err(
                    "cln/error_pay_ran_out_of_routes.json",
                    210,
                    "Ran out of routes to try after 1 attempt: see `paystatus`",
                ),
                Err(PayFailure::InsufficientBalance) => err(
                    "cln/error_pay_insufficient_funds.json",
                    215,
                    "Insufficient funds to perform the payment: spendable=0msat < payment=21000msat",
                ),
                Err(PayFailure::IncorrectDetails) => err(
                    "cln/error_pay_ran_out_of_routes.json",
                    203,
                    "Destination said it doesn't know invoice: incorrect_or_unknown_payment_details",
                ),
            }
        }
        other => rpc_error(
            StatusCode::NOT_FOUND,
            "cln/error_pay_invoice_expired.json",
            -32601,
            &format!("Unknown command '{other}'"),
        ),
    }
}

fn client(url: &str, rune: &str) -> Cln {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ClnConfig::new(url, rune);
    config.poll_interval = TEST_POLL;
    config.timeout = Duration::from_secs(10);
    config.pay_timeout = Duration::from_secs(7);
    Cln::new(config).unwrap()
}

pub struct ClnSampleFake {
    receiver: Cln,
    receiver_url: String,
    payer: Cln,
    /// A second client of the payer's node.
    second_payer: Cln,
    payer_url: String,
    receiver_fake: Arc<ClnFake>,
    payer_fake: Arc<ClnFake>,
}

impl Fixture for ClnSampleFake {
    fn backend(&self) -> &dyn Lightning {
        &self.receiver
    }

    /// CLN's `pay` returns the earlier success to a second `pay` of the
    /// same invoice; this adapter turns that into `AlreadyPaid` only for
    /// payments it serialises itself (one client).
    fn pay_is_idempotent(&self) -> bool {
        true
    }

    async fn pay(&self, bolt11: &str) -> Result<Payment, LightningError> {
        self.payer.pay_invoice(bolt11, MAX_FEE).await
    }

    async fn pay_from_another_client(&self, bolt11: &str) -> Result<Payment, LightningError> {
        self.second_payer.pay_invoice(bolt11, MAX_FEE).await
    }

    fn payer(&self) -> &dyn Lightning {
        &self.payer
    }

    /// A `maxfee` below the route's fee: `pay` tries, runs out of routes,
    /// and `listpays` keeps the attempt as `failed`.
    fn failing_payer(&self) -> (&dyn Lightning, Msat, PaymentStatus) {
        (
            &self.payer,
            Msat::from_msat(ROUTE_FEE_MSAT - 1),
            PaymentStatus::Failed,
        )
    }

    fn short_expiry(&self) -> Duration {
        Duration::from_secs(1)
    }
}

pub async fn cln_sample_fake() -> ClnSampleFake {
    let net = FakeNetwork::new();
    let receiver_node = net.add_node(0);
    let payer_node = net.add_node(PAYER_FUNDS_MSAT);
    let (receiver_url, receiver_fake) = ClnFake::spawn(net.clone(), receiver_node).await;
    let (payer_url, payer_fake) = ClnFake::spawn(net, payer_node).await;
    ClnSampleFake {
        receiver: client(&receiver_url, &receiver_fake.rune),
        receiver_url,
        payer: client(&payer_url, &payer_fake.rune),
        second_payer: client(&payer_url, &payer_fake.rune),
        payer_url,
        receiver_fake,
        payer_fake,
    }
}

lightning_conformance!(cln_sample_fake);

#[tokio::test]
async fn is_real_money_and_named_cln() {
    let f = cln_sample_fake().await;
    assert!(f.receiver.is_real_money());
    assert_eq!(f.receiver.name(), "cln");
}

#[tokio::test]
async fn invoices_get_unique_sluice_labels() {
    let f = cln_sample_fake().await;
    for memo in ["a", "b"] {
        f.receiver
            .create_invoice(AMOUNT, memo, Duration::from_secs(600))
            .await
            .unwrap();
    }
    let calls = f.receiver_fake.calls_of("invoice");
    let labels: Vec<&str> = calls.iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert_eq!(labels.len(), 2);
    assert!(
        labels.iter().all(|l| l.starts_with("sluice-")),
        "{labels:?}"
    );
    assert_ne!(labels[0], labels[1]);
    assert_eq!(calls[0]["amount_msat"], json!(AMOUNT.msat()));
    assert_eq!(calls[0]["description"], json!("a"));
    assert_eq!(calls[0]["expiry"], json!(600));
}

#[tokio::test]
async fn maxfee_and_retry_for_are_passed_through_and_the_fee_reported() {
    let f = cln_sample_fake().await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "fee", Duration::from_secs(600))
        .await
        .unwrap();
    let paid = f.payer.pay_invoice(&inv.bolt11, MAX_FEE).await.unwrap();
    assert_eq!(paid.fee, Msat::from_msat(ROUTE_FEE_MSAT));
    let pays = f.payer_fake.calls_of("pay");
    assert_eq!(pays.len(), 1);
    assert_eq!(pays[0]["bolt11"], json!(inv.bolt11));
    assert_eq!(pays[0]["maxfee"], json!(10_000));
    assert_eq!(pays[0]["retry_for"], json!(7));
    assert_eq!(
        f.payer_fake.net.balance(f.payer_fake.node),
        PAYER_FUNDS_MSAT - AMOUNT.msat() - ROUTE_FEE_MSAT
    );
}

#[tokio::test]
async fn cln_replays_a_repeated_pay_but_sluice_reports_already_paid() {
    let f = cln_sample_fake().await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "twice", Duration::from_secs(600))
        .await
        .unwrap();
    f.payer.pay_invoice(&inv.bolt11, MAX_FEE).await.unwrap();
    // Straight to clnrest, a second pay "succeeds" again, as CLN's does...
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/pay", f.payer_url))
        .header("Rune", &f.payer_fake.rune)
        .json(&json!({"bolt11": inv.bolt11}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::CREATED);
    // ...so the adapter asks listpays first and reports what happened.
    let again = f.payer.pay_invoice(&inv.bolt11, MAX_FEE).await;
    assert!(
        matches!(again, Err(LightningError::AlreadyPaid)),
        "{again:?}"
    );
    assert_eq!(
        f.payer_fake.calls_of("pay").len(),
        2,
        "the adapter must not call pay again"
    );
    assert_eq!(
        f.payer_fake.calls_of("listpays")[0]["payment_hash"],
        json!(inv.payment_hash.to_hex())
    );
}

#[tokio::test]
async fn a_maxfee_below_the_route_fee_runs_out_of_routes_and_pays_nothing() {
    let f = cln_sample_fake().await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "too cheap", Duration::from_secs(600))
        .await
        .unwrap();
    let got = f
        .payer
        .pay_invoice(&inv.bolt11, Msat::from_msat(ROUTE_FEE_MSAT - 1))
        .await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("ran out of routes")),
        "{got:?}"
    );
    assert_eq!(
        f.receiver.lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
}

#[tokio::test]
async fn an_unfunded_node_reports_insufficient_balance() {
    let f = cln_sample_fake().await;
    let inv = f
        .payer
        .create_invoice(AMOUNT, "to the payer", Duration::from_secs(600))
        .await
        .unwrap();
    let got = f.receiver.pay_invoice(&inv.bolt11, MAX_FEE).await;
    assert!(
        matches!(got, Err(LightningError::InsufficientBalance)),
        "{got:?}"
    );
}

#[tokio::test]
async fn the_rune_is_sent_on_every_call() {
    let f = cln_sample_fake().await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "auth", Duration::from_secs(600))
        .await
        .unwrap();
    f.receiver.lookup_invoice(&inv.payment_hash).await.unwrap();
    let seen = f.receiver_fake.runes.lock().unwrap().clone();
    assert!(seen.len() >= 2);
    assert!(
        seen.iter()
            .all(|r| r.as_deref() == Some(f.receiver_fake.rune.as_str())),
        "{seen:?}"
    );
    assert!(!format!("{:?}", f.receiver).contains(&f.receiver_fake.rune));
}

#[tokio::test]
async fn a_wrong_rune_is_a_clear_error() {
    let f = cln_sample_fake().await;
    let wrong = client(&f.receiver_url, "bm90IG91ciBydW5l");
    let got = wrong
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await;
    match got {
        Err(LightningError::Backend(m)) => {
            assert!(m.contains("refused the rune"), "{m}");
            assert!(m.contains("Not derived from master"), "{m}");
        }
        other => panic!("expected a rune error, got {other:?}"),
    }
    let looked = wrong.lookup_invoice(&PaymentHash(rand::random())).await;
    assert!(
        matches!(&looked, Err(LightningError::Backend(m)) if m.contains("refused the rune")),
        "{looked:?}"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let empty = Cln::new(ClnConfig::new(&f.receiver_url, " "));
    assert!(
        matches!(&empty, Err(LightningError::Backend(m)) if m.contains("empty")),
        "{empty:?}"
    );
}

#[tokio::test]
async fn a_silent_node_times_out_instead_of_hanging() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = silent_server().await;
    let mut config = ClnConfig::new(url, "cnVuZQ==");
    config.timeout = Duration::from_millis(300);
    config.pay_timeout = Duration::from_secs(1);
    let cln = Cln::new(config).unwrap();
    let started = tokio::time::Instant::now();
    let created = cln
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await;
    assert!(
        matches!(&created, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{created:?}"
    );
    let looked = cln.lookup_invoice(&PaymentHash(rand::random())).await;
    assert!(
        matches!(&looked, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{looked:?}"
    );
    let paid = cln
        .pay_invoice(&invoice_for_hash(rand::random(), 1_000), MAX_FEE)
        .await;
    assert!(
        matches!(&paid, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{paid:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls must give up at the timeout"
    );
}

// ---- sample responses replayed verbatim ----

/// What a replayed failure must map to.
type Expect = fn(&LightningError) -> bool;

#[tokio::test]
async fn parses_sample_invoice_lookups() {
    let paid = sample_json("cln/listinvoices_paid.json");
    let hash =
        PaymentHash::from_hex(paid["invoices"][0]["payment_hash"].as_str().unwrap()).unwrap();
    let (url, _) = replay(vec![Replay::new(
        "/v1/listinvoices",
        201,
        "cln/listinvoices_paid.json",
    )])
    .await;
    assert_eq!(
        client(&url, "cnVuZQ==")
            .lookup_invoice(&hash)
            .await
            .unwrap(),
        InvoiceStatus::Settled {
            preimage: Preimage([0x33; 32]),
            amount: Msat::from_msat(500_000_000),
        }
    );

    // The unpaid sample expired in 2025 (CLN had not flipped its status).
    let (url, _) = replay(vec![Replay::new(
        "/v1/listinvoices",
        201,
        "cln/listinvoices_unpaid.json",
    )])
    .await;
    assert_eq!(
        client(&url, "cnVuZQ==")
            .lookup_invoice(&hash)
            .await
            .unwrap(),
        InvoiceStatus::Expired
    );

    let (url, _) = replay(vec![Replay::new(
        "/v1/listinvoices",
        201,
        "cln/listinvoices_empty.json",
    )])
    .await;
    let got = client(&url, "cnVuZQ==").lookup_invoice(&hash).await;
    assert!(matches!(got, Err(LightningError::NotFound)), "{got:?}");

    // A lookup answered with another invoice is refused.
    let (url, _) = replay(vec![Replay::new(
        "/v1/listinvoices",
        201,
        "cln/listinvoices_paid.json",
    )])
    .await;
    let other = client(&url, "cnVuZQ==")
        .lookup_invoice(&PaymentHash(rand::random()))
        .await;
    assert!(
        matches!(other, Err(LightningError::Backend(_))),
        "{other:?}"
    );
}

#[tokio::test]
async fn parses_a_sample_pay_result() {
    // The sample pays the hash of preimage 0x44..44: 50000 msat, 50001 sent.
    let preimage = Preimage([0x44; 32]);
    let bolt11 = invoice_for_hash(preimage.payment_hash().0, 50_000);
    let (url, hits) = replay(vec![
        Replay::new("/v1/listpays", 201, "cln/listpays_empty.json"),
        Replay::new("/v1/pay", 201, "cln/pay.json"),
    ])
    .await;
    let paid = client(&url, "cnVuZQ==")
        .pay_invoice(&bolt11, MAX_FEE)
        .await
        .unwrap();
    assert_eq!(paid.preimage, preimage);
    assert_eq!(
        paid.fee,
        Msat::from_msat(1),
        "amount_sent_msat - amount_msat"
    );
    assert_eq!(
        *hits.lock().unwrap(),
        vec!["/v1/listpays".to_owned(), "/v1/pay".to_owned()]
    );
}

#[tokio::test]
async fn a_sample_complete_listpays_means_already_paid_without_paying() {
    let (url, hits) = replay(vec![
        Replay::new("/v1/listpays", 201, "cln/listpays.json"),
        Replay::new("/v1/pay", 201, "cln/pay.json"),
    ])
    .await;
    let got = client(&url, "cnVuZQ==")
        .pay_invoice(&invoice_for_hash(rand::random(), 50_000), MAX_FEE)
        .await;
    assert!(matches!(got, Err(LightningError::AlreadyPaid)), "{got:?}");
    assert_eq!(*hits.lock().unwrap(), vec!["/v1/listpays".to_owned()]);
}

#[tokio::test]
async fn sample_listpays_map_to_payment_states() {
    // The pending and failed samples are attempts to pay this hash.
    let hash =
        PaymentHash::from_hex("8fad68e532db4edf02984be14e59dc5e8ffbbdf0f7c4e8cfa26a6bb8f9fe4c41")
            .unwrap();
    let cases = [
        ("cln/listpays_pending.json", PaymentStatus::Pending),
        ("cln/listpays_failed.json", PaymentStatus::Failed),
        ("cln/listpays_empty.json", PaymentStatus::NotFound),
    ];
    for (sample, expected) in cases {
        let (url, hits) = replay(vec![Replay::new("/v1/listpays", 201, sample)]).await;
        let got = client(&url, "cnVuZQ==")
            .lookup_payment(&hash)
            .await
            .unwrap();
        assert_eq!(got, expected, "{sample}");
        assert_eq!(*hits.lock().unwrap(), vec!["/v1/listpays".to_owned()]);
    }
}

#[tokio::test]
async fn a_listpays_about_other_payments_is_refused_not_believed() {
    // CLN's documented example lists seven payments of other hashes (and
    // placeholder preimages): none of it may read as our payment's state.
    let (url, _) = replay(vec![Replay::new("/v1/listpays", 201, "cln/listpays.json")]).await;
    let got = client(&url, "cnVuZQ==")
        .lookup_payment(&PaymentHash(rand::random()))
        .await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("another payment")),
        "{got:?}"
    );
    // A missing rune is an error, never "not found".
    let (url, _) = replay(vec![Replay::new(
        "/v1/listpays",
        403,
        "cln/error_missing_rune.json",
    )])
    .await;
    let got = client(&url, "cnVuZQ==")
        .lookup_payment(&PaymentHash(rand::random()))
        .await;
    assert!(matches!(got, Err(LightningError::Backend(_))), "{got:?}");
}

#[tokio::test]
async fn sample_pay_errors_map_to_port_errors() {
    let cases: [(&str, Expect); 4] = [
        // The node's clock may be ahead of ours: its verdict wins.
        ("cln/error_pay_invoice_expired.json", |e| {
            matches!(e, LightningError::Expired)
        }),
        ("cln/error_pay_already_paid.json", |e| {
            matches!(e, LightningError::AlreadyPaid)
        }),
        (
            "cln/error_pay_ran_out_of_routes.json",
            |e| matches!(e, LightningError::Backend(m) if m.contains("ran out of routes")),
        ),
        ("cln/error_pay_insufficient_funds.json", |e| {
            matches!(e, LightningError::InsufficientBalance)
        }),
    ];
    for (sample, expected) in cases {
        let (url, _) = replay(vec![
            Replay::new("/v1/listpays", 201, "cln/listpays_empty.json"),
            Replay::new("/v1/pay", 500, sample),
        ])
        .await;
        let got = client(&url, "cnVuZQ==")
            .pay_invoice(&invoice_for_hash(rand::random(), 50_000), MAX_FEE)
            .await;
        match got {
            Err(e) if expected(&e) => {}
            other => panic!("{sample}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_sample_missing_rune_refusal_is_a_clear_error() {
    let (url, _) = replay(vec![Replay::new(
        "/v1/listinvoices",
        403,
        "cln/error_missing_rune.json",
    )])
    .await;
    let got = client(&url, "cnVuZQ==")
        .lookup_invoice(&PaymentHash(rand::random()))
        .await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("refused the rune") && m.contains("Missing rune")),
        "{got:?}"
    );
}
