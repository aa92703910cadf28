//! What the **sample-response fakes** of LND and Core Lightning share (no
//! LND or CLN binary runs here; see `samples/README.md`):
//! - [`FakeNetwork`]: fake nodes with real signing keys that issue real
//!   BOLT11 invoices and settle each other's invoices atomically, charging
//!   [`ROUTE_FEE_MSAT`] per payment, and remembering their failed attempts;
//! - the samples, and [`fill`], which puts values into a sample but
//!   refuses to invent a field the sample does not have;
//! - [`replay`], a server answering fixed paths with samples verbatim, and
//!   [`silent_server`], which accepts connections and never answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use bitcoin::hashes::{Hash as _, sha256};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use lightning_invoice::{Bolt11Invoice, Currency, InvoiceBuilder, PaymentSecret};
use serde_json::Value;
use tokio::net::TcpListener;

/// The routing fee of any payment between two fake nodes.
pub const ROUTE_FEE_MSAT: u64 = 1_234;

pub type NodeId = usize;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An invoice a fake node issued.
#[derive(Debug, Clone)]
pub struct FakeInvoice {
    pub bolt11: String,
    pub hash: [u8; 32],
    pub preimage: [u8; 32],
    pub payment_secret: [u8; 32],
    pub amount_msat: u64,
    pub label: String,
    pub description: String,
    pub created_at: u64,
    pub expiry: u64,
    pub index: u64,
    pub paid: Option<Received>,
}

impl FakeInvoice {
    pub fn expires_at(&self) -> u64 {
        self.created_at + self.expiry
    }

    pub fn is_expired(&self) -> bool {
        self.paid.is_none() && now() >= self.expires_at()
    }
}

/// How a fake invoice was paid.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub amount_msat: u64,
    pub at: u64,
    pub pay_index: u64,
}

/// A payment a fake node made.
#[derive(Debug, Clone)]
pub struct OutPayment {
    pub bolt11: String,
    pub hash: [u8; 32],
    pub preimage: [u8; 32],
    pub amount_msat: u64,
    pub fee_msat: u64,
    pub destination: String,
    pub created_at: u64,
    pub index: u64,
}

/// A payment attempt a fake node started and that failed (nothing moved).
/// Attempts refused before starting (unparseable, expired, already paid)
/// leave none, as with LND and CLN.
#[derive(Debug, Clone)]
pub struct FailedPayment {
    pub bolt11: String,
    pub hash: [u8; 32],
    pub amount_msat: u64,
    pub destination: String,
    pub created_at: u64,
    pub index: u64,
}

/// Why a fake payment failed.
#[derive(Debug, Clone)]
pub enum PayFailure {
    Unparseable(String),
    /// The payer already paid this hash (`OutPayment` is that payment).
    AlreadyPaid(Box<OutPayment>),
    Expired,
    /// No node with the payee's key in the network.
    NoRoute,
    /// The route costs more than the fee limit.
    FeeTooLow,
    InsufficientBalance,
    /// The payee does not know the invoice, or it is paid already.
    IncorrectDetails,
}

struct NodeState {
    secret: SecretKey,
    pubkey: PublicKey,
    invoices: HashMap<[u8; 32], FakeInvoice>,
    pays: HashMap<[u8; 32], OutPayment>,
    /// The last failed attempt per hash.
    failed: HashMap<[u8; 32], FailedPayment>,
    balance_msat: u64,
    next_index: u64,
}

/// Fake nodes that pay each other. One lock over everything makes every
/// payment atomic, as a settled HTLC is.
pub struct FakeNetwork {
    secp: Secp256k1<All>,
    nodes: Mutex<Vec<NodeState>>,
}

impl FakeNetwork {
    pub fn new() -> Arc<FakeNetwork> {
        Arc::new(FakeNetwork {
            secp: Secp256k1::new(),
            nodes: Mutex::new(Vec::new()),
        })
    }

    pub fn add_node(&self, balance_msat: u64) -> NodeId {
        let secret = SecretKey::new(&mut rand::thread_rng());
        let pubkey = PublicKey::from_secret_key(&self.secp, &secret);
        let mut nodes = self.nodes.lock().unwrap();
        nodes.push(NodeState {
            secret,
            pubkey,
            invoices: HashMap::new(),
            pays: HashMap::new(),
            failed: HashMap::new(),
            balance_msat,
            next_index: 1,
        });
        nodes.len() - 1
    }

    /// Issue a signed regtest invoice; `Err` on a duplicate label.
    pub fn create_invoice(
        &self,
        node: NodeId,
        amount_msat: u64,
        description: &str,
        expiry: u64,
        label: &str,
    ) -> Result<FakeInvoice, String> {
        let mut nodes = self.nodes.lock().unwrap();
        let n = &mut nodes[node];
        if !label.is_empty() && n.invoices.values().any(|i| i.label == label) {
            return Err(format!("Duplicate label '{label}'"));
        }
        let preimage: [u8; 32] = rand::random();
        let hash = sha256::Hash::hash(&preimage).to_byte_array();
        let payment_secret: [u8; 32] = rand::random();
        let created = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let bolt11 = InvoiceBuilder::new(Currency::Regtest)
            .description(description.to_owned())
            .amount_milli_satoshis(amount_msat)
            .payment_hash(sha256::Hash::from_byte_array(hash))
            .payment_secret(PaymentSecret(payment_secret))
            .duration_since_epoch(created)
            .expiry_time(Duration::from_secs(expiry))
            .min_final_cltv_expiry_delta(80)
            .build_signed(|m| self.secp.sign_ecdsa_recoverable(m, &n.secret))
            .map_err(|e| e.to_string())?
            .to_string();
        let index = n.next_index;
        n.next_index += 1;
        let invoice = FakeInvoice {
            bolt11,
            hash,
            preimage,
            payment_secret,
            amount_msat,
            label: label.to_owned(),
            description: description.to_owned(),
            created_at: created.as_secs(),
            expiry,
            index,
            paid: None,
        };
        n.invoices.insert(hash, invoice.clone());
        Ok(invoice)
    }

    pub fn invoice(&self, node: NodeId, hash: &[u8; 32]) -> Option<FakeInvoice> {
        self.nodes.lock().unwrap()[node].invoices.get(hash).cloned()
    }

    pub fn payment(&self, node: NodeId, hash: &[u8; 32]) -> Option<OutPayment> {
        self.nodes.lock().unwrap()[node].pays.get(hash).cloned()
    }

    pub fn failed_payment(&self, node: NodeId, hash: &[u8; 32]) -> Option<FailedPayment> {
        self.nodes.lock().unwrap()[node].failed.get(hash).cloned()
    }

    pub fn balance(&self, node: NodeId) -> u64 {
        self.nodes.lock().unwrap()[node].balance_msat
    }

    /// `payer` pays `bolt11` spending at most `fee_limit_msat` on fees.
    pub fn pay(
        &self,
        payer: NodeId,
        bolt11: &str,
        fee_limit_msat: u64,
    ) -> Result<OutPayment, PayFailure> {
        let inv: Bolt11Invoice =
            bolt11
                .trim()
                .parse()
                .map_err(|e: lightning_invoice::ParseOrSemanticError| {
                    PayFailure::Unparseable(e.to_string())
                })?;
        let hash = inv.payment_hash().to_byte_array();
        let amount_msat = inv
            .amount_milli_satoshis()
            .ok_or_else(|| PayFailure::Unparseable("amount must be specified".into()))?;
        let mut nodes = self.nodes.lock().unwrap();
        if let Some(prev) = nodes[payer].pays.get(&hash) {
            return Err(PayFailure::AlreadyPaid(Box::new(prev.clone())));
        }
        let expires_at = inv.duration_since_epoch().as_secs() + inv.expiry_time().as_secs();
        if now() >= expires_at {
            return Err(PayFailure::Expired);
        }
        let payee_key = inv.get_payee_pub_key();
        let at = now();
        // From here on the attempt has started: a failure is recorded.
        let fail = |nodes: &mut Vec<NodeState>, why: PayFailure| {
            let n = &mut nodes[payer];
            let failed = FailedPayment {
                bolt11: bolt11.trim().to_owned(),
                hash,
                amount_msat,
                destination: payee_key.to_string(),
                created_at: at,
                index: n.next_index,
            };
            n.next_index += 1;
            n.failed.insert(hash, failed);
            Err(why)
        };
        let Some(payee) = nodes
            .iter()
            .position(|n| n.pubkey == payee_key)
            .filter(|p| *p != payer)
        else {
            return fail(&mut nodes, PayFailure::NoRoute);
        };
        if fee_limit_msat < ROUTE_FEE_MSAT {
            return fail(&mut nodes, PayFailure::FeeTooLow);
        }
        let total = amount_msat + ROUTE_FEE_MSAT;
        if nodes[payer].balance_msat < total {
            return fail(&mut nodes, PayFailure::InsufficientBalance);
        }
        let pay_index = nodes[payee].next_index;
        let preimage = {
            let Some(target) = nodes[payee]
                .invoices
                .get_mut(&hash)
                .filter(|i| i.paid.is_none() && i.amount_msat <= amount_msat)
            else {
                return fail(&mut nodes, PayFailure::IncorrectDetails);
            };
            target.paid = Some(Received {
                amount_msat,
                at,
                pay_index,
            });
            target.preimage
        };
        nodes[payee].next_index += 1;
        nodes[payee].balance_msat += amount_msat;
        let n = &mut nodes[payer];
        n.balance_msat -= total;
        let out = OutPayment {
            bolt11: bolt11.trim().to_owned(),
            hash,
            preimage,
            amount_msat,
            fee_msat: ROUTE_FEE_MSAT,
            destination: payee_key.to_string(),
            created_at: at,
            index: n.next_index,
        };
        n.next_index += 1;
        n.pays.insert(hash, out.clone());
        Ok(out)
    }
}

/// A sample's text (`samples/<path>`).
pub fn sample(path: &str) -> String {
    let full = format!(
        "{}/tests/conformance/samples/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// A JSON sample.
pub fn sample_json(path: &str) -> Value {
    serde_json::from_str(&sample(path)).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// Put `fields` into a sample object, refusing any field it lacks: the
/// fakes answer only in the sample shape.
pub fn fill(mut sample: Value, fields: &[(&str, Value)]) -> Value {
    for (k, v) in fields {
        assert!(
            sample.get(*k).is_some(),
            "the sample has no field {k:?}: {sample}"
        );
        sample[*k] = v.clone();
    }
    sample
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// A route of [`replay`]: the path, and the status and body it answers.
pub struct Replay {
    pub path: String,
    pub status: StatusCode,
    pub body: String,
}

impl Replay {
    pub fn new(path: impl Into<String>, status: u16, file: &str) -> Replay {
        Replay {
            path: path.into(),
            status: StatusCode::from_u16(status).unwrap(),
            body: sample(file),
        }
    }
}

/// Paths requested from a [`replay`] server, in order.
pub type Hits = Arc<Mutex<Vec<String>>>;

/// A server on port 0 answering each route's path (any method) with its
/// sample verbatim, and 404 otherwise.
pub async fn replay(routes: Vec<Replay>) -> (String, Hits) {
    let routes: Arc<HashMap<String, (StatusCode, String)>> = Arc::new(
        routes
            .into_iter()
            .map(|r| (r.path, (r.status, r.body)))
            .collect(),
    );
    let hits: Hits = Arc::default();
    let seen = hits.clone();
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let routes = routes.clone();
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(uri.path().to_owned());
            match routes.get(uri.path()) {
                Some((status, body)) => Response::builder()
                    .status(*status)
                    .header("content-type", "application/json")
                    .body(Body::from(body.clone()))
                    .unwrap(),
                None => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::from("no sample response for this path"))
                    .unwrap(),
            }
        }
    });
    (serve(app).await, hits)
}

/// Serve `app` on 127.0.0.1 port 0; returns its base URL.
pub async fn serve(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    url
}

/// A server that accepts connections and never answers.
pub async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock);
        }
    });
    url
}

/// A regtest invoice for `hash` signed by a throwaway key, valid 10 minutes:
/// the adapters check an invoice before paying it, so verbatim-replay tests
/// need one matching their sample preimage.
pub fn invoice_for_hash(hash: [u8; 32], amount_msat: u64) -> String {
    let secp = Secp256k1::new();
    let key = SecretKey::new(&mut rand::thread_rng());
    InvoiceBuilder::new(Currency::Regtest)
        .description("sample".into())
        .amount_milli_satoshis(amount_msat)
        .payment_hash(sha256::Hash::from_byte_array(hash))
        .payment_secret(PaymentSecret(rand::random()))
        .duration_since_epoch(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
        .expiry_time(Duration::from_secs(600))
        .min_final_cltv_expiry_delta(80)
        .build_signed(|m| secp.sign_ecdsa_recoverable(m, &key))
        .unwrap()
        .to_string()
}

/// A JSON number or string as u64 (LND sends int64 as strings; CLN msat
/// amounts may be `"123msat"`).
pub fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim_end_matches("msat").parse().ok(),
        _ => None,
    }
}
