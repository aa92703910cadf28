//! LND under the conformance suite, against a **sample-response fake**
//! (`lnd_sample_fake`): no LND binary runs here, so an axum server answers
//! LND's REST calls with bodies shaped exactly like the samples in
//! `samples/lnd/` — constructed field by field from LND's published REST
//! schema, not captured from a node (see `samples/README.md`),
//! backed by a [`FakeNetwork`] of two nodes: the receiver that sluice's
//! [`Lnd`] drives, and a funded payer driven by a second [`Lnd`].
//!
//! Backend-specific tests: parsing sample responses verbatim, the fee limit
//! and timeout passed through, the macaroon header, a wrong macaroon, a
//! silent node.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde_json::{Value, json};
use sluice_core::Msat;
use sluice_lightning::lnd::{Lnd, LndConfig};
use sluice_lightning::{
    InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus, Preimage,
};

use crate::sample_fake::{
    self, FailedPayment, FakeNetwork, NodeId, OutPayment, PayFailure, ROUTE_FEE_MSAT, Replay,
    as_u64, fill, invoice_for_hash, json_response, now, replay, sample, sample_json, serve,
    silent_server,
};
use crate::suite::{AMOUNT, Fixture};

const TEST_POLL: Duration = Duration::from_millis(100);
const PAYER_FUNDS_MSAT: u64 = 100_000_000;
const MAX_FEE: Msat = Msat::from_msat(10_000);

/// One fake LND node's REST front-end.
struct LndFake {
    net: Arc<FakeNetwork>,
    node: NodeId,
    macaroon_hex: String,
    /// Every macaroon header received (None when absent).
    macaroons: Mutex<Vec<Option<String>>>,
    /// Every SendPaymentV2 request body received.
    sends: Mutex<Vec<Value>>,
}

type Fake = State<Arc<LndFake>>;

fn rpc_error(status: StatusCode, sample: &str, message: Option<String>) -> Response {
    let mut body = sample_json(sample);
    if let Some(m) = message {
        if body.get("error").is_some() {
            body["error"]["message"] = Value::String(m);
        } else {
            body["message"] = Value::String(m);
        }
    }
    json_response(status, &body)
}

impl LndFake {
    async fn spawn(net: Arc<FakeNetwork>, node: NodeId) -> (String, Arc<LndFake>) {
        let fake = Arc::new(LndFake {
            net,
            node,
            macaroon_hex: hex::encode(rand::random::<[u8; 24]>()),
            macaroons: Mutex::default(),
            sends: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/v1/invoices", post(add_invoice))
            .route("/v1/invoice/{r_hash_str}", get(lookup_invoice))
            .route("/v2/router/send", post(send_payment))
            .route("/v2/router/track/{payment_hash}", get(track_payment))
            .with_state(fake.clone());
        (serve(app).await, fake)
    }

    /// LND's macaroon check, answering as LND does when it fails.
    fn authorise(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let got = headers
            .get("grpc-metadata-macaroon")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.macaroons.lock().unwrap().push(got.clone());
        match got {
            None => Err(Box::new(rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "lnd/error_no_macaroon.json",
                None,
            ))),
            Some(m) if m != self.macaroon_hex => Err(Box::new(rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "lnd/error_bad_macaroon.json",
                None,
            ))),
            Some(_) => Ok(()),
        }
    }
}

async fn add_invoice(State(fake): Fake, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = fake.authorise(&headers) {
        return *r;
    }
    let req: Value = serde_json::from_slice(&body).unwrap();
    let amount = as_u64(req.get("value_msat")).unwrap_or(0);
    let memo = req["memo"].as_str().unwrap_or_default();
    let expiry = as_u64(req.get("expiry")).unwrap_or(86_400);
    let inv = fake
        .net
        .create_invoice(fake.node, amount, memo, expiry, "")
        .unwrap();
    json_response(
        StatusCode::OK,
        &fill(
            sample_json("lnd/add_invoice.json"),
            &[
                ("r_hash", json!(STANDARD.encode(inv.hash))),
                ("payment_request", json!(inv.bolt11)),
                ("add_index", json!(inv.index.to_string())),
                ("payment_addr", json!(STANDARD.encode(inv.payment_secret))),
            ],
        ),
    )
}

async fn lookup_invoice(
    State(fake): Fake,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Response {
    if let Err(r) = fake.authorise(&headers) {
        return *r;
    }
    let mut key = [0u8; 32];
    if hex::decode_to_slice(&hash, &mut key).is_err() {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            "lnd/error_not_found.json",
            Some("payment hash must be exactly 32 bytes".into()),
        );
    }
    let Some(inv) = fake.net.invoice(fake.node, &key) else {
        return rpc_error(StatusCode::NOT_FOUND, "lnd/error_not_found.json", None);
    };
    let body = match inv.paid {
        Some(paid) => {
            let mut htlcs = sample_json("lnd/invoice_settled.json")["htlcs"].clone();
            htlcs[0] = fill(
                htlcs[0].clone(),
                &[
                    ("amt_msat", json!(paid.amount_msat.to_string())),
                    ("mpp_total_amt_msat", json!(paid.amount_msat.to_string())),
                    ("accept_time", json!(paid.at.to_string())),
                    ("resolve_time", json!(paid.at.to_string())),
                ],
            );
            fill(
                sample_json("lnd/invoice_settled.json"),
                &[
                    ("memo", json!(inv.description)),
                    ("r_preimage", json!(STANDARD.encode(inv.preimage))),
                    ("r_hash", json!(STANDARD.encode(inv.hash))),
                    ("value", json!((inv.amount_msat / 1000).to_string())),
                    ("value_msat", json!(inv.amount_msat.to_string())),
                    ("creation_date", json!(inv.created_at.to_string())),
                    ("settle_date", json!(paid.at.to_string())),
                    ("payment_request", json!(inv.bolt11)),
                    ("expiry", json!(inv.expiry.to_string())),
                    ("add_index", json!(inv.index.to_string())),
                    ("settle_index", json!(paid.pay_index.to_string())),
                    ("amt_paid", json!(paid.amount_msat.to_string())),
                    ("amt_paid_sat", json!((paid.amount_msat / 1000).to_string())),
                    ("amt_paid_msat", json!(paid.amount_msat.to_string())),
                    ("payment_addr", json!(STANDARD.encode(inv.payment_secret))),
                    ("htlcs", htlcs),
                ],
            )
        }
        None => fill(
            sample_json("lnd/invoice_open.json"),
            &[
                ("memo", json!(inv.description)),
                ("r_preimage", json!(STANDARD.encode(inv.preimage))),
                ("r_hash", json!(STANDARD.encode(inv.hash))),
                ("value", json!((inv.amount_msat / 1000).to_string())),
                ("value_msat", json!(inv.amount_msat.to_string())),
                ("creation_date", json!(inv.created_at.to_string())),
                ("payment_request", json!(inv.bolt11)),
                ("expiry", json!(inv.expiry.to_string())),
                ("add_index", json!(inv.index.to_string())),
                ("payment_addr", json!(STANDARD.encode(inv.payment_secret))),
                // LND's invoice registry cancels an open invoice at expiry.
                (
                    "state",
                    json!(if inv.is_expired() { "CANCELED" } else { "OPEN" }),
                ),
            ],
        ),
    };
    json_response(StatusCode::OK, &body)
}

async fn send_payment(State(fake): Fake, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = fake.authorise(&headers) {
        return *r;
    }
    let req: Value = serde_json::from_slice(&body).unwrap();
    fake.sends.lock().unwrap().push(req.clone());
    let bolt11 = req["payment_request"].as_str().unwrap_or_default();
    // proto3: an absent fee limit is 0, which allows only fee-free routes.
    let fee_limit = as_u64(req.get("fee_limit_msat")).unwrap_or(0);
    let quiet = req["no_inflight_updates"].as_bool().unwrap_or(false);
    let sample_lines: Vec<Value> = sample("lnd/send_payment_succeeded.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed = |reason: &str| {
        let line: Value =
            serde_json::from_str(sample("lnd/send_payment_failed_no_route.jsonl").trim()).unwrap();
        let result = fill(
            line["result"].clone(),
            &[
                ("payment_request", json!(bolt11)),
                ("failure_reason", json!(reason)),
            ],
        );
        stream(vec![json!({ "result": result })])
    };
    match fake.net.pay(fake.node, bolt11, fee_limit) {
        Ok(out) => {
            let fields = |status: &str, preimage: String, fee: u64| {
                payment_fields((&out).into(), status, preimage, fee)
            };
            let in_flight = fill(
                sample_lines[0]["result"].clone(),
                &fields("IN_FLIGHT", String::new(), 0),
            );
            let done = fill(
                sample_lines[1]["result"].clone(),
                &fields("SUCCEEDED", hex::encode(out.preimage), out.fee_msat),
            );
            let mut lines = Vec::new();
            if !quiet {
                lines.push(json!({ "result": in_flight }));
            }
            lines.push(json!({ "result": done }));
            stream(lines)
        }
        Err(PayFailure::AlreadyPaid(_)) => {
            rpc_error(StatusCode::CONFLICT, "lnd/error_already_paid.json", None)
        }
        Err(PayFailure::Expired) => rpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "lnd/error_invoice_expired.json",
            None,
        ),
        Err(PayFailure::Unparseable(why)) => rpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "lnd/error_invoice_expired.json",
            Some(format!("invalid payment request: {why}")),
        ),
        Err(PayFailure::NoRoute | PayFailure::FeeTooLow) => failed("FAILURE_REASON_NO_ROUTE"),
        Err(PayFailure::InsufficientBalance) => failed("FAILURE_REASON_INSUFFICIENT_BALANCE"),
        Err(PayFailure::IncorrectDetails) => failed("FAILURE_REASON_INCORRECT_PAYMENT_DETAILS"),
    }
}

/// What the `lnrpc.Payment` of a fake payment attempt is made of.
struct Attempt<'a> {
    hash: &'a [u8; 32],
    amount_msat: u64,
    created_at: u64,
    bolt11: &'a str,
    index: u64,
}

impl<'a> From<&'a OutPayment> for Attempt<'a> {
    fn from(out: &'a OutPayment) -> Self {
        Attempt {
            hash: &out.hash,
            amount_msat: out.amount_msat,
            created_at: out.created_at,
            bolt11: &out.bolt11,
            index: out.index,
        }
    }
}

impl<'a> From<&'a FailedPayment> for Attempt<'a> {
    fn from(failed: &'a FailedPayment) -> Self {
        Attempt {
            hash: &failed.hash,
            amount_msat: failed.amount_msat,
            created_at: failed.created_at,
            bolt11: &failed.bolt11,
            index: failed.index,
        }
    }
}

/// The `lnrpc.Payment` fields of a fake payment, for the sample shape.
fn payment_fields(
    a: Attempt<'_>,
    status: &str,
    preimage: String,
    fee: u64,
) -> Vec<(&'static str, Value)> {
    let Attempt {
        hash,
        amount_msat,
        created_at,
        bolt11,
        index,
    } = a;
    vec![
        ("payment_hash", json!(hex::encode(hash))),
        ("value", json!((amount_msat / 1000).to_string())),
        ("creation_date", json!(created_at.to_string())),
        ("fee", json!((fee / 1000).to_string())),
        ("payment_preimage", json!(preimage)),
        ("value_sat", json!((amount_msat / 1000).to_string())),
        ("value_msat", json!(amount_msat.to_string())),
        ("payment_request", json!(bolt11)),
        ("status", json!(status)),
        ("fee_sat", json!((fee / 1000).to_string())),
        ("fee_msat", json!(fee.to_string())),
        (
            "creation_time_ns",
            json!((created_at * 1_000_000_000).to_string()),
        ),
        ("payment_index", json!(index.to_string())),
    ]
}

/// TrackPaymentV2: the payment's current state as the first stream line
/// (the fake's payments are final, so the stream then ends), or gRPC
/// NotFound "payment isn't initiated" with HTTP 404, as grpc-gateway sends
/// a stream's error before its first message.
async fn track_payment(
    State(fake): Fake,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Response {
    if let Err(r) = fake.authorise(&headers) {
        return *r;
    }
    // grpc-gateway reads a `bytes` path parameter as base64 (URL-safe here).
    let Some(key) = URL_SAFE
        .decode(&hash)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
    else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            "lnd/error_payment_not_initiated.json",
            Some(format!("bad payment_hash {hash:?}")),
        );
    };
    let lines: Vec<Value> = sample("lnd/send_payment_succeeded.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    if let Some(out) = fake.net.payment(fake.node, &key) {
        let done = fill(
            lines[1]["result"].clone(),
            &payment_fields(
                (&out).into(),
                "SUCCEEDED",
                hex::encode(out.preimage),
                out.fee_msat,
            ),
        );
        return stream(vec![json!({ "result": done })]);
    }
    if let Some(failed) = fake.net.failed_payment(fake.node, &key) {
        let line: Value =
            serde_json::from_str(sample("lnd/send_payment_failed_no_route.jsonl").trim()).unwrap();
        let result = fill(
            line["result"].clone(),
            &payment_fields((&failed).into(), "FAILED", String::new(), 0),
        );
        return stream(vec![json!({ "result": result })]);
    }
    rpc_error(
        StatusCode::NOT_FOUND,
        "lnd/error_payment_not_initiated.json",
        None,
    )
}

/// A 200 stream of JSON lines, the last one split across two chunks as a
/// network may deliver it.
fn stream(lines: Vec<Value>) -> Response {
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = Vec::new();
    for line in lines {
        let text = format!("{line}\n");
        let (a, b) = text.split_at(text.len() / 2);
        chunks.push(Ok(Bytes::from(a.to_owned())));
        chunks.push(Ok(Bytes::from(b.to_owned())));
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap()
}

fn client(url: &str, macaroon_hex: &str) -> Lnd {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = LndConfig::new(url, macaroon_hex);
    config.poll_interval = TEST_POLL;
    config.timeout = Duration::from_secs(10);
    config.pay_timeout = Duration::from_secs(7);
    Lnd::new(config).unwrap()
}

pub struct LndSampleFake {
    receiver: Lnd,
    receiver_url: String,
    payer: Lnd,
    /// A second client of the payer's node.
    second_payer: Lnd,
    receiver_fake: Arc<LndFake>,
    payer_fake: Arc<LndFake>,
}

impl Fixture for LndSampleFake {
    fn backend(&self) -> &dyn Lightning {
        &self.receiver
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

    /// A fee limit below the route's fee: LND starts the payment, finds no
    /// route within it, and records it as `FAILED`.
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

pub async fn lnd_sample_fake() -> LndSampleFake {
    let net = FakeNetwork::new();
    let receiver_node = net.add_node(0);
    let payer_node = net.add_node(PAYER_FUNDS_MSAT);
    let (receiver_url, receiver_fake) = LndFake::spawn(net.clone(), receiver_node).await;
    let (payer_url, payer_fake) = LndFake::spawn(net, payer_node).await;
    LndSampleFake {
        receiver: client(&receiver_url, &receiver_fake.macaroon_hex),
        receiver_url,
        payer: client(&payer_url, &payer_fake.macaroon_hex),
        second_payer: client(&payer_url, &payer_fake.macaroon_hex),
        receiver_fake,
        payer_fake,
    }
}

lightning_conformance!(lnd_sample_fake);

#[tokio::test]
async fn is_real_money_and_named_lnd() {
    let f = lnd_sample_fake().await;
    assert!(f.receiver.is_real_money());
    assert_eq!(f.receiver.name(), "lnd");
}

#[tokio::test]
async fn the_fee_limit_and_timeout_are_passed_through_and_the_fee_reported() {
    let f = lnd_sample_fake().await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "fee", Duration::from_secs(600))
        .await
        .unwrap();
    let paid = f.payer.pay_invoice(&inv.bolt11, MAX_FEE).await.unwrap();
    assert_eq!(paid.fee, Msat::from_msat(ROUTE_FEE_MSAT));
    let sends = f.payer_fake.sends.lock().unwrap().clone();
    assert_eq!(sends.len(), 1);
    let sent = &sends[0];
    assert_eq!(sent["payment_request"], json!(inv.bolt11));
    assert_eq!(
        sent["fee_limit_msat"],
        json!("10000"),
        "int64 travels as a string"
    );
    assert_eq!(sent["timeout_seconds"], json!(7));
    assert_eq!(
        f.payer_fake.net.balance(f.payer_fake.node),
        PAYER_FUNDS_MSAT - AMOUNT.msat() - ROUTE_FEE_MSAT
    );
}

#[tokio::test]
async fn a_fee_limit_below_the_route_fee_finds_no_route_and_pays_nothing() {
    let f = lnd_sample_fake().await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "too cheap", Duration::from_secs(600))
        .await
        .unwrap();
    let got = f
        .payer
        .pay_invoice(&inv.bolt11, Msat::from_msat(ROUTE_FEE_MSAT - 1))
        .await;
    match got {
        Err(LightningError::Backend(m)) => {
            assert!(m.contains("no route") && m.contains("1233 msat"), "{m}")
        }
        other => panic!("expected no route, got {other:?}"),
    }
    assert_eq!(
        f.receiver.lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
}

#[tokio::test]
async fn an_unfunded_node_reports_insufficient_balance() {
    let f = lnd_sample_fake().await;
    let inv = f
        .payer
        .create_invoice(AMOUNT, "to the payer", Duration::from_secs(600))
        .await
        .unwrap();
    // The receiver node has no funds.
    let got = f.receiver.pay_invoice(&inv.bolt11, MAX_FEE).await;
    assert!(
        matches!(got, Err(LightningError::InsufficientBalance)),
        "{got:?}"
    );
}

#[tokio::test]
async fn the_macaroon_is_sent_on_every_call() {
    let f = lnd_sample_fake().await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "auth", Duration::from_secs(600))
        .await
        .unwrap();
    f.receiver.lookup_invoice(&inv.payment_hash).await.unwrap();
    let seen = f.receiver_fake.macaroons.lock().unwrap().clone();
    assert!(seen.len() >= 2);
    assert!(
        seen.iter()
            .all(|m| m.as_deref() == Some(f.receiver_fake.macaroon_hex.as_str())),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_wrong_macaroon_is_a_clear_error() {
    let f = lnd_sample_fake().await;
    assert!(
        !format!("{:?}", f.receiver).contains(&f.receiver_fake.macaroon_hex),
        "Debug must not show the macaroon"
    );
    let wrong = client(&f.receiver_url, "0201036c6e640000");
    let got = wrong
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await;
    match got {
        Err(LightningError::Backend(m)) => {
            assert!(m.contains("refused the macaroon"), "{m}");
            assert!(m.contains("signature mismatch"), "{m}");
        }
        other => panic!("expected a macaroon error, got {other:?}"),
    }
    let looked = wrong.lookup_invoice(&PaymentHash(rand::random())).await;
    assert!(
        matches!(&looked, Err(LightningError::Backend(m)) if m.contains("refused the macaroon")),
        "{looked:?}"
    );
}

#[tokio::test]
async fn a_malformed_macaroon_or_certificate_is_refused_at_start() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let not_hex = Lnd::new(LndConfig::new("https://127.0.0.1:8080", "not hex"));
    assert!(
        matches!(&not_hex, Err(LightningError::Backend(m)) if m.contains("hex")),
        "{not_hex:?}"
    );
    let mut config = LndConfig::new("https://127.0.0.1:8080", "0201");
    config.tls_cert_pem =
        Some("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into());
    let bad_cert = Lnd::new(config);
    assert!(
        matches!(&bad_cert, Err(LightningError::Backend(m)) if m.contains("tls_cert_pem")),
        "{bad_cert:?}"
    );
}

#[tokio::test]
async fn a_silent_node_times_out_instead_of_hanging() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = silent_server().await;
    let mut config = LndConfig::new(url, "0201036c6e64");
    config.timeout = Duration::from_millis(300);
    config.pay_timeout = Duration::from_secs(1);
    let lnd = Lnd::new(config).unwrap();
    let started = tokio::time::Instant::now();
    let created = lnd
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await;
    assert!(
        matches!(&created, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{created:?}"
    );
    let looked = lnd.lookup_invoice(&PaymentHash(rand::random())).await;
    assert!(
        matches!(&looked, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{looked:?}"
    );
    let paid = lnd
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

fn hash_of(sample: &str, field: &str) -> [u8; 32] {
    let v = sample_json(sample);
    STANDARD
        .decode(v[field].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn parses_a_sample_settled_invoice() {
    let hash = hash_of("lnd/invoice_settled.json", "r_hash");
    let (url, hits) = replay(vec![Replay::new(
        format!("/v1/invoice/{}", hex::encode(hash)),
        200,
        "lnd/invoice_settled.json",
    )])
    .await;
    let lnd = client(&url, "0201");
    let status = lnd.lookup_invoice(&PaymentHash(hash)).await.unwrap();
    assert_eq!(
        status,
        InvoiceStatus::Settled {
            preimage: Preimage([0x11; 32]),
            amount: Msat::from_msat(21_000),
        },
        "base64 r_preimage and the string amt_paid_msat must be read"
    );
    assert_eq!(hits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn reads_a_sample_open_invoice_past_its_expiry_as_expired() {
    // The sample was created on 2025-11-21 with a 600 s expiry.
    let hash = hash_of("lnd/invoice_open.json", "r_hash");
    let (url, _) = replay(vec![Replay::new(
        format!("/v1/invoice/{}", hex::encode(hash)),
        200,
        "lnd/invoice_open.json",
    )])
    .await;
    let status = client(&url, "0201")
        .lookup_invoice(&PaymentHash(hash))
        .await
        .unwrap();
    assert!(now() > 1_763_730_600);
    assert_eq!(status, InvoiceStatus::Expired);
}

#[tokio::test]
async fn sample_lookup_errors_map_to_port_errors() {
    let hash = PaymentHash(rand::random());
    let path = format!("/v1/invoice/{}", hash.to_hex());
    let (url, _) = replay(vec![Replay::new(&path, 404, "lnd/error_not_found.json")]).await;
    let got = client(&url, "0201").lookup_invoice(&hash).await;
    assert!(matches!(got, Err(LightningError::NotFound)), "{got:?}");

    let (url, _) = replay(vec![Replay::new(&path, 500, "lnd/error_no_macaroon.json")]).await;
    let got = client(&url, "0201").lookup_invoice(&hash).await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("refused the macaroon") && m.contains("expected 1 macaroon")),
        "{got:?}"
    );
}

#[tokio::test]
async fn parses_a_sample_payment_stream() {
    // The sample's final line pays the hash of preimage 0x22..22 with a
    // 1234 msat fee, after an IN_FLIGHT line.
    let preimage = Preimage([0x22; 32]);
    let bolt11 = invoice_for_hash(preimage.payment_hash().0, 21_000);
    let (url, hits) = replay(vec![Replay::new(
        "/v2/router/send",
        200,
        "lnd/send_payment_succeeded.jsonl",
    )])
    .await;
    let paid = client(&url, "0201")
        .pay_invoice(&bolt11, MAX_FEE)
        .await
        .unwrap();
    assert_eq!(
        paid.preimage, preimage,
        "payment_preimage is hex in Payment"
    );
    assert_eq!(paid.payment_hash, preimage.payment_hash());
    assert_eq!(paid.fee, Msat::from_msat(1_234));
    assert_eq!(*hits.lock().unwrap(), vec!["/v2/router/send".to_owned()]);
}

#[tokio::test]
async fn a_sample_payment_for_another_hash_is_refused() {
    // The sample stream pays 0x22..22's hash; this invoice has another.
    let bolt11 = invoice_for_hash(rand::random(), 21_000);
    let (url, _) = replay(vec![Replay::new(
        "/v2/router/send",
        200,
        "lnd/send_payment_succeeded.jsonl",
    )])
    .await;
    let got = client(&url, "0201").pay_invoice(&bolt11, MAX_FEE).await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("does not match")),
        "{got:?}"
    );
}

#[tokio::test]
async fn sample_payment_failures_map_to_port_errors() {
    let cases: [(u16, &str, Expect); 3] = [
        (
            200,
            "lnd/send_payment_failed_no_route.jsonl",
            |e| matches!(e, LightningError::Backend(m) if m.contains("no route") && m.contains("10000 msat")),
        ),
        (409, "lnd/error_already_paid.json", |e| {
            matches!(e, LightningError::AlreadyPaid)
        }),
        // The node's clock may be ahead of ours: its verdict wins.
        (500, "lnd/error_invoice_expired.json", |e| {
            matches!(e, LightningError::Expired)
        }),
    ];
    for (status, sample, expected) in cases {
        let (url, _) = replay(vec![Replay::new("/v2/router/send", status, sample)]).await;
        let got = client(&url, "0201")
            .pay_invoice(&invoice_for_hash(rand::random(), 21_000), MAX_FEE)
            .await;
        match got {
            Err(e) if expected(&e) => {}
            other => panic!("{sample}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn sample_payment_tracking_maps_to_payment_states() {
    // The samples are payments of the hash of preimage 0x22..22.
    let hash = Preimage([0x22; 32]).payment_hash();
    // grpc-gateway reads the `bytes` path parameter as (URL-safe) base64.
    let path = format!("/v2/router/track/{}", URL_SAFE.encode(hash.0));
    let cases: [(u16, &str, PaymentStatus); 3] = [
        // The first line of this stream is IN_FLIGHT: only it is read.
        (
            200,
            "lnd/send_payment_succeeded.jsonl",
            PaymentStatus::Pending,
        ),
        (
            200,
            "lnd/send_payment_failed_no_route.jsonl",
            PaymentStatus::Failed,
        ),
        (
            404,
            "lnd/error_payment_not_initiated.json",
            PaymentStatus::NotFound,
        ),
    ];
    for (status, sample, expected) in cases {
        let (url, hits) = replay(vec![Replay::new(&path, status, sample)]).await;
        let got = client(&url, "0201").lookup_payment(&hash).await.unwrap();
        assert_eq!(got, expected, "{sample}");
        assert_eq!(*hits.lock().unwrap(), vec![path.clone()]);
    }
}

#[tokio::test]
async fn a_payment_lookup_error_is_never_read_as_not_found() {
    let hash = Preimage([0x22; 32]).payment_hash();
    let path = format!("/v2/router/track/{}", URL_SAFE.encode(hash.0));
    // A bare 404 (an LND without the router REST API, a proxy's path) is
    // not LND saying it never paid: "not found" would allow paying again.
    let (url, _) = replay(Vec::new()).await;
    let got = client(&url, "0201").lookup_payment(&hash).await;
    assert!(matches!(got, Err(LightningError::Backend(_))), "{got:?}");

    let (url, _) = replay(vec![Replay::new(&path, 500, "lnd/error_no_macaroon.json")]).await;
    let got = client(&url, "0201").lookup_payment(&hash).await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("refused the macaroon")),
        "{got:?}"
    );

    // A stream about another payment is refused, not believed.
    let other = PaymentHash(rand::random());
    let other_path = format!("/v2/router/track/{}", URL_SAFE.encode(other.0));
    let (url, _) = replay(vec![Replay::new(
        &other_path,
        200,
        "lnd/send_payment_failed_no_route.jsonl",
    )])
    .await;
    let got = client(&url, "0201").lookup_payment(&other).await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("another payment")),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_payment_lookup_of_a_silent_node_times_out() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = silent_server().await;
    let mut config = LndConfig::new(url, "0201036c6e64");
    config.timeout = Duration::from_millis(300);
    let got = Lnd::new(config)
        .unwrap()
        .lookup_payment(&PaymentHash(rand::random()))
        .await;
    assert!(
        matches!(&got, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{got:?}"
    );
}

// ---- TLS: LND's self-signed certificate ----

/// An HTTPS server on a std thread presenting `cert`, answering every
/// request with `body` (a sample). Returns its port.
fn tls_server(cert: &str, key: &str, body: String) -> u16 {
    use std::io::{Read as _, Write as _};

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                if request.windows(4).any(|w| w == b"\r\n\r\n") {
                    break true;
                }
            };
            if complete {
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
    });
    port
}

fn tls_fixture(name: &str) -> String {
    sample_fake::sample(&format!("../tls/{name}"))
}

#[tokio::test]
async fn lnds_self_signed_ca_certificate_is_pinned_and_accepted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = tls_fixture("lnd.cert");
    let port = tls_server(
        &cert,
        &tls_fixture("lnd.key"),
        sample("lnd/invoice_settled.json"),
    );
    let url = format!("https://localhost:{port}");
    // Why pinning: as a plain trusted root, LND's CA-flagged self-signed
    // certificate is refused by rustls (CaUsedAsEndEntity, lnd#5450).
    let as_root = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.as_bytes()).unwrap()])
        .build()
        .unwrap()
        .get(format!("{url}/v1/getinfo"))
        .send()
        .await;
    assert!(as_root.is_err(), "{as_root:?}");

    let mut config = LndConfig::new(&url, "0201");
    config.tls_cert_pem = Some(cert);
    let lnd = Lnd::new(config).unwrap();
    let hash = hash_of("lnd/invoice_settled.json", "r_hash");
    assert!(matches!(
        lnd.lookup_invoice(&PaymentHash(hash)).await.unwrap(),
        InvoiceStatus::Settled { .. }
    ));
}

#[tokio::test]
async fn a_server_with_another_certificate_is_refused() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = tls_server(
        &tls_fixture("other.cert"),
        &tls_fixture("other.key"),
        sample("lnd/invoice_settled.json"),
    );
    let mut config = LndConfig::new(format!("https://localhost:{port}"), "0201");
    config.tls_cert_pem = Some(tls_fixture("lnd.cert"));
    let lnd = Lnd::new(config).unwrap();
    let got = lnd
        .lookup_invoice(&PaymentHash(hash_of("lnd/invoice_settled.json", "r_hash")))
        .await;
    assert!(matches!(got, Err(LightningError::Backend(_))), "{got:?}");
}
