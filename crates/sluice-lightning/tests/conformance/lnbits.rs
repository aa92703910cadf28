//! LNbits under the conformance suite, against a real LNbits started by
//! `scripts/lnbits.sh start` (FakeWallet funding source: payments between its
//! wallets settle internally with real invoices and preimages).
//!
//! Each test makes fresh wallets through the API: sluice's [`LnBits`] holds
//! the receiving wallet's invoice key; the payer is a second wallet, funded
//! by the superuser, driven through another [`LnBits`] with its admin key.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::Msat;
use sluice_lightning::lnbits::{LnBits, LnBitsConfig};
use sluice_lightning::{
    InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::mpsc;

use crate::sample_fake::invoice_for_hash;
use crate::suite::{AMOUNT, Fixture, PATIENCE, wait_settled};

/// Fast polling so settlement events arrive promptly in tests.
const TEST_POLL: Duration = Duration::from_millis(200);
/// Long enough that only a webhook can announce within a test.
const NO_POLL: Duration = Duration::from_secs(3600);
const PAYER_FUNDS_SATS: u64 = 1_000_000;

struct Server {
    url: String,
    token: String,
    http: reqwest::Client,
}

/// Keys of a wallet created for one test.
struct Wallet {
    id: String,
    inkey: String,
    adminkey: String,
}

fn server() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let var = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!(
                "{name} is not set: the LNbits tests need a running LNbits. Run `scripts/lnbits.sh start` and load \
                 the env file it prints (`set -a; . <file>; set +a`), then `scripts/lnbits.sh stop` afterwards"
            )
        })
    };
    Server {
        url: var("SLUICE_TEST_LNBITS_URL"),
        token: var("SLUICE_TEST_LNBITS_ADMIN_TOKEN"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    }
}

impl Server {
    async fn wallet(&self, name: &str) -> Wallet {
        let resp = self
            .http
            .post(format!("{}/api/v1/account", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "creating a wallet: {}",
            resp.status()
        );
        let v: Value = resp.json().await.unwrap();
        let field = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("wallet without {k}: {v}"))
                .to_owned()
        };
        Wallet {
            id: field("id"),
            inkey: field("inkey"),
            adminkey: field("adminkey"),
        }
    }

    async fn fund(&self, wallet: &Wallet, sats: u64) {
        let resp = self
            .http
            .put(format!("{}/users/api/v1/balance", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"id": wallet.id, "amount": sats}))
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "funding a wallet: {} {}",
            resp.status(),
            resp.text().await.unwrap()
        );
    }

    fn client(
        &self,
        wallet: &Wallet,
        admin: bool,
        poll: Duration,
        webhook_url: Option<String>,
    ) -> LnBits {
        let mut config = LnBitsConfig::new(&self.url, &wallet.inkey);
        config.admin_key = admin.then(|| wallet.adminkey.clone());
        config.poll_interval = poll;
        config.timeout = Duration::from_secs(20);
        config.webhook_url = webhook_url;
        LnBits::new(config).unwrap()
    }

    /// A funded payer, driven through sluice's own client.
    async fn payer(&self) -> LnBits {
        let wallet = self.wallet("payer").await;
        self.fund(&wallet, PAYER_FUNDS_SATS).await;
        self.client(&wallet, true, NO_POLL, None)
    }
}

pub struct LnBitsFixture {
    receiver: LnBits,
    payer: LnBits,
    /// A second client of the payer's wallet.
    second_payer: LnBits,
    /// An unfunded wallet with its admin key.
    broke: LnBits,
}

impl Fixture for LnBitsFixture {
    fn backend(&self) -> &dyn Lightning {
        &self.receiver
    }

    async fn pay(&self, bolt11: &str) -> Result<Payment, LightningError> {
        self.payer
            .pay_invoice(bolt11, Msat::from_msat(10_000))
            .await
    }

    async fn pay_from_another_client(&self, bolt11: &str) -> Result<Payment, LightningError> {
        self.second_payer
            .pay_invoice(bolt11, Msat::from_msat(10_000))
            .await
    }

    fn payer(&self) -> &dyn Lightning {
        &self.payer
    }

    /// LNbits refuses an internal payment the wallet cannot afford before
    /// recording anything: `NotFound`. (A failed attempt that LNbits did
    /// start keeps a `failed` record: see
    /// `a_failed_external_payment_reads_as_failed`.)
    fn failing_payer(&self) -> (&dyn Lightning, Msat, PaymentStatus) {
        (
            &self.broke,
            Msat::from_msat(10_000),
            PaymentStatus::NotFound,
        )
    }

    fn short_expiry(&self) -> Duration {
        Duration::from_secs(2)
    }
}

pub async fn lnbits_fixture() -> LnBitsFixture {
    let server = server();
    let receiver = server.wallet("receiver").await;
    let broke = server.wallet("broke").await;
    let payer = server.wallet("payer").await;
    server.fund(&payer, PAYER_FUNDS_SATS).await;
    LnBitsFixture {
        receiver: server.client(&receiver, false, TEST_POLL, None),
        payer: server.client(&payer, true, NO_POLL, None),
        second_payer: server.client(&payer, true, NO_POLL, None),
        broke: server.client(&broke, true, NO_POLL, None),
    }
}

lightning_conformance!(lnbits_fixture);

#[tokio::test]
async fn is_real_money() {
    let f = lnbits_fixture().await;
    assert!(f.receiver.is_real_money());
    assert_eq!(f.receiver.name(), "lnbits");
}

#[tokio::test]
async fn refuses_amounts_that_are_not_whole_sats() {
    let f = lnbits_fixture().await;
    let got = f
        .receiver
        .create_invoice(
            Msat::from_msat(1_500),
            "half a sat",
            Duration::from_secs(600),
        )
        .await;
    match got {
        Err(LightningError::InvalidInvoice(msg)) => assert!(msg.contains("whole"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn paying_without_the_admin_key_says_so() {
    let server = server();
    let f = lnbits_fixture().await;
    let other = server.wallet("other").await;
    let inv = server
        .client(&other, false, NO_POLL, None)
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await
        .unwrap();
    match f.receiver.pay_invoice(&inv.bolt11, Msat::ZERO).await {
        Err(LightningError::Backend(msg)) => assert!(msg.contains("admin key"), "{msg}"),
        other => panic!("expected an admin-key error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unfunded_wallet_reports_insufficient_balance() {
    let server = server();
    let f = lnbits_fixture().await;
    let broke = server.wallet("broke").await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await
        .unwrap();
    let got = server
        .client(&broke, true, NO_POLL, None)
        .pay_invoice(&inv.bolt11, Msat::ZERO)
        .await;
    assert!(
        matches!(got, Err(LightningError::InsufficientBalance)),
        "{got:?}"
    );
    assert_eq!(
        f.receiver.lookup_invoice(&inv.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
}

#[tokio::test]
async fn a_wrong_key_is_an_error_not_a_silence() {
    let s = server();
    let mut config = LnBitsConfig::new(&s.url, "0000000000000000000000000000dead");
    config.timeout = Duration::from_secs(20);
    let got = LnBits::new(config)
        .unwrap()
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await;
    assert!(matches!(got, Err(LightningError::Backend(_))), "{got:?}");
}

/// A one-route HTTP server on port 0 that hands over each POST body it gets.
async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/lnbits-hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(sock);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(body);
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_real_webhook_is_verified_and_announced() {
    let server = server();
    let (url, mut bodies) = webhook_receiver().await;
    let wallet = server.wallet("webhook receiver").await;
    let receiver = server.client(&wallet, false, NO_POLL, Some(url));
    let payer = server.payer().await;
    let mut rx = receiver.subscribe();

    let inv = receiver
        .create_invoice(AMOUNT, "webhook", Duration::from_secs(600))
        .await
        .unwrap();
    let payment = payer
        .pay_invoice(&inv.bolt11, Msat::from_msat(10_000))
        .await
        .unwrap();
    let body = tokio::time::timeout(PATIENCE, bodies.recv())
        .await
        .expect("LNbits never called the webhook")
        .unwrap();
    assert_eq!(
        body.first(),
        Some(&b'"'),
        "LNbits posts the payment JSON as a JSON string"
    );

    let settled = receiver
        .handle_webhook(&body)
        .await
        .unwrap()
        .expect("a paid invoice must be confirmed");
    assert_eq!(settled.payment_hash, inv.payment_hash);
    assert_eq!(settled.preimage, payment.preimage);
    assert_eq!(settled.amount, AMOUNT);
    assert_eq!(wait_settled(&mut rx, inv.payment_hash).await, settled);
    // A replayed webhook is confirmed again but not announced twice.
    assert_eq!(receiver.handle_webhook(&body).await.unwrap(), Some(settled));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

/// A webhook body claiming `hash` was paid, in LNbits' double-encoded shape.
fn forged_body(hash: &PaymentHash) -> Vec<u8> {
    let payment = json!({
        "payment_hash": hash.to_hex(),
        "checking_id": hash.to_hex(),
        "amount": 21_000_000,
        "status": "success",
        "preimage": "00".repeat(32),
    });
    serde_json::to_vec(&Value::String(payment.to_string())).unwrap()
}

#[tokio::test]
async fn a_forged_webhook_announces_nothing() {
    let server = server();
    let wallet = server.wallet("forgery target").await;
    let receiver = server.client(&wallet, false, NO_POLL, None);
    let mut rx = receiver.subscribe();

    // An unpaid invoice of ours.
    let unpaid = receiver
        .create_invoice(AMOUNT, "unpaid", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        receiver
            .handle_webhook(&forged_body(&unpaid.payment_hash))
            .await
            .unwrap(),
        None
    );

    // A paid invoice of another wallet on the same server.
    let stranger = server.wallet("stranger").await;
    let theirs = server
        .client(&stranger, false, NO_POLL, None)
        .create_invoice(AMOUNT, "theirs", Duration::from_secs(600))
        .await
        .unwrap();
    server
        .payer()
        .await
        .pay_invoice(&theirs.bolt11, Msat::from_msat(10_000))
        .await
        .unwrap();
    assert_eq!(
        receiver
            .handle_webhook(&forged_body(&theirs.payment_hash))
            .await
            .unwrap(),
        None
    );

    // A hash nobody knows, and bodies that are not webhooks at all.
    assert_eq!(
        receiver
            .handle_webhook(&forged_body(&PaymentHash(rand::random())))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        receiver.handle_webhook(b"{\"hello\": 1}").await,
        Err(LightningError::InvalidInvoice(_))
    ));

    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "nothing may be announced"
    );
    assert_eq!(
        receiver.lookup_invoice(&unpaid.payment_hash).await.unwrap(),
        InvoiceStatus::Pending
    );
}

#[tokio::test]
async fn our_own_outgoing_payment_never_reads_as_money_received() {
    let server = server();
    // sluice's wallet has its admin key and pays someone else's invoice...
    let ours = server.wallet("spender").await;
    server.fund(&ours, 10_000).await;
    let sluice = server.client(&ours, true, NO_POLL, None);
    let mut rx = sluice.subscribe();
    let payee = server.wallet("payee").await;
    let inv = server
        .client(&payee, false, NO_POLL, None)
        .create_invoice(AMOUNT, "refund", Duration::from_secs(600))
        .await
        .unwrap();
    let payment = sluice
        .pay_invoice(&inv.bolt11, Msat::from_msat(10_000))
        .await
        .unwrap();
    assert_eq!(payment.preimage.payment_hash(), inv.payment_hash);
    // ...so its wallet holds a paid payment with that hash, which is not an
    // invoice it issued: a lookup or a webhook naming it must not credit.
    let looked = sluice.lookup_invoice(&inv.payment_hash).await;
    assert!(
        matches!(looked, Err(LightningError::NotFound)),
        "{looked:?}"
    );
    assert_eq!(
        sluice
            .handle_webhook(&forged_body(&inv.payment_hash))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn a_failed_external_payment_reads_as_failed() {
    let f = lnbits_fixture().await;
    // An invoice of a node LNbits' FakeWallet cannot reach: LNbits records
    // the outgoing payment, the funding source fails it, the record stays.
    let hash = PaymentHash(rand::random());
    let foreign = invoice_for_hash(hash.0, AMOUNT.msat());
    assert_eq!(
        f.payer.lookup_payment(&hash).await.unwrap(),
        PaymentStatus::NotFound
    );
    let before = f.payer.wallet_balance().await.unwrap();
    let got = f.payer.pay_invoice(&foreign, Msat::from_msat(10_000)).await;
    assert!(matches!(got, Err(LightningError::Backend(_))), "{got:?}");
    assert_eq!(
        f.payer.lookup_payment(&hash).await.unwrap(),
        PaymentStatus::Failed
    );
    assert_eq!(
        f.payer.wallet_balance().await.unwrap(),
        before,
        "a failed payment moves no money"
    );
}

#[tokio::test]
async fn payments_are_found_with_the_invoice_key_too() {
    let server = server();
    let f = lnbits_fixture().await;
    let spender = server.wallet("spender").await;
    server.fund(&spender, 10_000).await;
    let inv = f
        .receiver
        .create_invoice(AMOUNT, "refund", Duration::from_secs(600))
        .await
        .unwrap();
    let payment = server
        .client(&spender, true, NO_POLL, None)
        .pay_invoice(&inv.bolt11, Msat::from_msat(10_000))
        .await
        .unwrap();
    // Without the admin key the same wallet still sees its payment.
    let read_only = server.client(&spender, false, NO_POLL, None);
    assert_eq!(
        read_only.lookup_payment(&inv.payment_hash).await.unwrap(),
        PaymentStatus::Succeeded {
            preimage: payment.preimage,
            fee: payment.fee
        }
    );
    // Another wallet's key sees nothing of it.
    assert_eq!(
        f.payer.lookup_payment(&inv.payment_hash).await.unwrap(),
        PaymentStatus::NotFound
    );
}

#[tokio::test]
async fn a_silent_server_times_out_instead_of_hanging() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            open.push(sock);
        }
    });
    let mut config = LnBitsConfig::new(url, "inkey");
    config.admin_key = Some("adminkey".into());
    config.timeout = Duration::from_millis(300);
    let lnbits = LnBits::new(config).unwrap();
    let started = tokio::time::Instant::now();
    let created = lnbits
        .create_invoice(AMOUNT, "x", Duration::from_secs(600))
        .await;
    assert!(
        matches!(&created, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{created:?}"
    );
    let looked = lnbits.lookup_invoice(&PaymentHash(rand::random())).await;
    assert!(
        matches!(&looked, Err(LightningError::Backend(m)) if m.contains("timed out")),
        "{looked:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls must give up at the timeout"
    );
}
