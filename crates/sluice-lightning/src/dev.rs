//! The dev wallet: real BOLT11 invoices signed by a locally generated node
//! key, on regtest (`lnbcrt`), **not real money**.
//!
//! It is the embedded default backend so that sluice runs end to end with no
//! Lightning node. It is a tiny closed network of two parties sharing one
//! store: the **gateway** side (what the gateway is given as its backend:
//! [`DevWallet::open`]) and the **customer** side ([`DevWallet::counterparty`]:
//! what `POST /v1/dev/pay`, `sluice wallet` and the tests use to play the
//! payer). Each side pays only the other side's invoices and looks up only its
//! own, so an invoice the gateway issued and was paid for is never mistaken
//! for a payment the gateway made ([`Lightning::lookup_payment`]), and the
//! gateway cannot "pay" one of its own invoices.
//!
//! Its state (node key, invoices, preimages, who issued each) lives behind
//! [`DevWalletStore`], which the gateway implements over its SQL store, so
//! invoices (and with them the record of its payments) survive a restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bitcoin::hashes::{Hash as _, sha256};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1, SecretKey};
use lightning_invoice::{Currency, InvoiceBuilder, PaymentSecret};
use sluice_core::Msat;
use sluice_env::Clock;
use tokio::sync::broadcast;

use crate::bolt11::{describe, parse, since_epoch};
use crate::{
    Invoice, InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus,
    Preimage, Settled,
};

/// The minimum final CLTV delta written into dev invoices (the common LND
/// default); nothing enforces it, but real decoders expect a sane value.
pub const DEV_MIN_FINAL_CLTV_EXPIRY_DELTA: u64 = 144;

/// How many settlement events a slow subscriber may fall behind before it
/// starts missing some (it then has to look invoices up, which it does anyway).
const EVENT_BUFFER: usize = 1024;

/// Which side of the dev network an invoice (or a wallet) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevSide {
    /// The gateway: its invoices are what payers pay.
    Gateway,
    /// The payer: its invoices are what refunds pay.
    Customer,
}

impl DevSide {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DevSide::Gateway => "gateway",
            DevSide::Customer => "customer",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<DevSide> {
        match s {
            "gateway" => Some(DevSide::Gateway),
            "customer" => Some(DevSide::Customer),
            _ => None,
        }
    }

    fn other(self) -> DevSide {
        match self {
            DevSide::Gateway => DevSide::Customer,
            DevSide::Customer => DevSide::Gateway,
        }
    }
}

/// A dev-wallet invoice with its preimage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInvoiceRecord {
    /// Who issued it (and so may be paid by it).
    pub issuer: DevSide,
    /// Its hash.
    pub payment_hash: PaymentHash,
    /// Its preimage.
    pub preimage: crate::Preimage,
    /// BOLT11.
    pub bolt11: String,
    /// Amount.
    pub amount: sluice_core::Msat,
    /// Expires, unix ms.
    pub expires_at_ms: i64,
    /// Paid, unix ms.
    pub paid_at_ms: Option<i64>,
}

/// Where the dev wallet keeps its node key and invoices (the gateway's store).
#[async_trait]
pub trait DevWalletStore: Send + Sync {
    /// The node's secret key, created from `fresh` the first time.
    async fn node_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], LightningError>;
    /// Record a new invoice.
    async fn insert(&self, invoice: &DevInvoiceRecord) -> Result<(), LightningError>;
    /// An invoice by hash.
    async fn get(&self, hash: &PaymentHash) -> Result<Option<DevInvoiceRecord>, LightningError>;
    /// Mark paid; false if already paid or unknown.
    async fn mark_paid(&self, hash: &PaymentHash, paid_at_ms: i64) -> Result<bool, LightningError>;
}

/// A [`DevWalletStore`] in memory, for tests and the simulator. Clones share
/// the same state, so a wallet reopened over a clone sees the same invoices.
#[derive(Debug, Clone, Default)]
pub struct MemoryDevWalletStore {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    node_key: Option<[u8; 32]>,
    invoices: HashMap<PaymentHash, DevInvoiceRecord>,
}

impl MemoryDevWalletStore {
    /// An empty store (the wallet will create a node key on first open).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, MemoryState>, LightningError> {
        self.inner
            .lock()
            .map_err(|_| LightningError::Backend("dev wallet memory store poisoned".into()))
    }
}

#[async_trait]
impl DevWalletStore for MemoryDevWalletStore {
    async fn node_key(&self, fresh: [u8; 32]) -> Result<[u8; 32], LightningError> {
        let mut state = self.lock()?;
        Ok(*state.node_key.get_or_insert(fresh))
    }

    async fn insert(&self, invoice: &DevInvoiceRecord) -> Result<(), LightningError> {
        let mut state = self.lock()?;
        if state.invoices.contains_key(&invoice.payment_hash) {
            return Err(LightningError::Backend(
                "duplicate dev invoice payment hash".into(),
            ));
        }
        state.invoices.insert(invoice.payment_hash, invoice.clone());
        Ok(())
    }

    async fn get(&self, hash: &PaymentHash) -> Result<Option<DevInvoiceRecord>, LightningError> {
        Ok(self.lock()?.invoices.get(hash).cloned())
    }

    async fn mark_paid(&self, hash: &PaymentHash, paid_at_ms: i64) -> Result<bool, LightningError> {
        let mut state = self.lock()?;
        match state.invoices.get_mut(hash) {
            Some(record) if record.paid_at_ms.is_none() => {
                record.paid_at_ms = Some(paid_at_ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// The embedded dev wallet, one side of it. See the module docs: **not real money**.
pub struct DevWallet {
    side: DevSide,
    shared: Arc<Shared>,
}

impl DevWallet {
    fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }
}

/// What both sides share: the store, the node key and each side's settlement events.
struct Shared {
    store: Arc<dyn DevWalletStore>,
    /// The time invoices are dated and expire by.
    clock: Arc<dyn Clock>,
    secp: Secp256k1<All>,
    secret: SecretKey,
    pubkey: PublicKey,
    gateway_events: broadcast::Sender<Settled>,
    customer_events: broadcast::Sender<Settled>,
}

impl Shared {
    fn events(&self, side: DevSide) -> &broadcast::Sender<Settled> {
        match side {
            DevSide::Gateway => &self.gateway_events,
            DevSide::Customer => &self.customer_events,
        }
    }
}

impl std::fmt::Debug for DevWallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevWallet")
            .field("node_pubkey", &self.node_pubkey())
            .finish_non_exhaustive()
    }
}

impl DevWallet {
    /// Open the gateway's side of the wallet over `store`, creating its node
    /// key the first time; invoices are dated by the host's clock.
    pub async fn open(store: Arc<dyn DevWalletStore>) -> Result<DevWallet, LightningError> {
        Self::open_with_clock(store, Arc::new(sluice_env::SystemClock)).await
    }

    /// [`DevWallet::open`], dating and expiring invoices by `clock` (a manual
    /// one in tests and the simulator).
    pub async fn open_with_clock(
        store: Arc<dyn DevWalletStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<DevWallet, LightningError> {
        let fresh = fresh_node_key();
        let key = store.node_key(fresh).await?;
        let secret = SecretKey::from_slice(&key).map_err(|_| {
            LightningError::Backend(
                "the stored dev wallet node key is not a valid secp256k1 key".into(),
            )
        })?;
        let secp = Secp256k1::new();
        let pubkey = PublicKey::from_secret_key(&secp, &secret);
        let wallet = DevWallet {
            side: DevSide::Gateway,
            shared: Arc::new(Shared {
                store,
                clock,
                secp,
                secret,
                pubkey,
                gateway_events: broadcast::channel(EVENT_BUFFER).0,
                customer_events: broadcast::channel(EVENT_BUFFER).0,
            }),
        };
        tracing::warn!(
            node_pubkey = %wallet.node_pubkey(),
            "DEV WALLET: this is NOT real money. Invoices are regtest (lnbcrt) invoices signed by a local key \
             and are settled only by this wallet itself; configure a real Lightning backend to take payments"
        );
        Ok(wallet)
    }

    /// The node public key that signs this wallet's invoices (compressed, hex).
    pub fn node_pubkey(&self) -> String {
        self.shared.pubkey.to_string()
    }

    /// The other side of the same dev network: the customer's wallet for the
    /// gateway's, and back. It pays this side's invoices and issues the
    /// invoices this side pays.
    pub fn counterparty(&self) -> DevWallet {
        DevWallet {
            side: self.side.other(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Which side this is.
    pub fn side(&self) -> DevSide {
        self.side
    }
}

#[async_trait]
impl Lightning for DevWallet {
    fn name(&self) -> &'static str {
        "dev"
    }

    fn is_real_money(&self) -> bool {
        false
    }

    async fn create_invoice(
        &self,
        amount: Msat,
        memo: &str,
        expiry: Duration,
    ) -> Result<Invoice, LightningError> {
        crate::positive_amount(amount)?;
        let preimage = Preimage(sluice_env::secret());
        let payment_hash = preimage.payment_hash();
        let payment_secret = PaymentSecret(sluice_env::secret());
        let invoice = InvoiceBuilder::new(Currency::Regtest)
            .description(memo.to_owned())
            .amount_milli_satoshis(amount.msat())
            .payment_hash(sha256::Hash::from_byte_array(payment_hash.0))
            .payment_secret(payment_secret)
            .duration_since_epoch(since_epoch(self.now_ms()))
            .expiry_time(expiry)
            .min_final_cltv_expiry_delta(DEV_MIN_FINAL_CLTV_EXPIRY_DELTA)
            .build_signed(|msg| {
                self.shared
                    .secp
                    .sign_ecdsa_recoverable(msg, &self.shared.secret)
            })
            .map_err(|e| LightningError::InvalidInvoice(format!("cannot build invoice: {e}")))?;
        let decoded = describe(&invoice);
        let expires_at_ms = i64::try_from(decoded.expires_at)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| LightningError::InvalidInvoice("expiry too far in the future".into()))?;
        let bolt11 = invoice.to_string();
        let record = DevInvoiceRecord {
            issuer: self.side,
            payment_hash,
            preimage,
            bolt11: bolt11.clone(),
            amount,
            expires_at_ms,
            paid_at_ms: None,
        };
        self.shared.store.insert(&record).await?;
        Ok(Invoice {
            bolt11,
            payment_hash,
            amount,
            expires_at: decoded.expires_at,
        })
    }

    /// Only this side's own invoices: the other side's are not invoices it issued.
    async fn lookup_invoice(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        let record = self
            .shared
            .store
            .get(hash)
            .await?
            .filter(|r| r.issuer == self.side)
            .ok_or(LightningError::NotFound)?;
        Ok(status_of(&record, self.now_ms()))
    }

    /// Only the other side's invoices: a wallet cannot pay itself.
    async fn pay_invoice(&self, bolt11: &str, _max_fee: Msat) -> Result<Payment, LightningError> {
        let foreign = || {
            LightningError::InvalidInvoice(
                "the dev wallet can only pay invoices of its own dev network".into(),
            )
        };
        let invoice = parse(bolt11)?;
        if invoice.get_payee_pub_key() != self.shared.pubkey {
            return Err(foreign());
        }
        let hash = PaymentHash(invoice.payment_hash().to_byte_array());
        let record = self.shared.store.get(&hash).await?.ok_or_else(foreign)?;
        if record.issuer == self.side {
            return Err(LightningError::InvalidInvoice(format!(
                "this is the {} side's own invoice; a wallet cannot pay itself",
                self.side.as_str()
            )));
        }
        let now = self.now_ms();
        match status_of(&record, now) {
            InvoiceStatus::Settled { .. } => return Err(LightningError::AlreadyPaid),
            InvoiceStatus::Expired => return Err(LightningError::Expired),
            InvoiceStatus::Pending => {}
        }
        // The store decides the race between two concurrent payers.
        if !self.shared.store.mark_paid(&hash, now).await? {
            return Err(LightningError::AlreadyPaid);
        }
        // No receiver is fine: subscribers are a hint, lookups are the truth.
        let _ = self.shared.events(record.issuer).send(Settled {
            payment_hash: hash,
            preimage: record.preimage,
            amount: record.amount,
        });
        tracing::debug!(payment_hash = %hash.to_hex(), amount_msat = record.amount.msat(), "dev wallet settled its own invoice");
        Ok(Payment {
            payment_hash: hash,
            preimage: record.preimage,
            fee: Msat::ZERO,
        })
    }

    /// A side pays only the other side's invoices, and settles one
    /// atomically (one `mark_paid`), so a paid invoice of the other side is a
    /// payment this side made, and anything else (unknown hash, an unpaid or
    /// expired invoice, an invoice of this side's own) is a payment it never
    /// made. Never `Pending` or `Failed`.
    async fn lookup_payment(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        Ok(match self.shared.store.get(hash).await? {
            Some(record) if record.issuer != self.side && record.paid_at_ms.is_some() => {
                PaymentStatus::Succeeded {
                    preimage: record.preimage,
                    fee: Msat::ZERO,
                }
            }
            _ => PaymentStatus::NotFound,
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Settled> {
        self.shared.events(self.side).subscribe()
    }
}

/// A fresh node key: 32 secret bytes that are a valid secp256k1 key (all
/// but a 2^-128 share of them are; others are drawn again).
fn fresh_node_key() -> [u8; 32] {
    loop {
        let bytes = sluice_env::secret::<32>();
        if SecretKey::from_slice(&bytes).is_ok() {
            return bytes;
        }
    }
}

/// The status of a stored invoice at `now_ms`.
fn status_of(record: &DevInvoiceRecord, now_ms: i64) -> InvoiceStatus {
    if record.paid_at_ms.is_some() {
        InvoiceStatus::Settled {
            preimage: record.preimage,
            amount: record.amount,
        }
    } else if now_ms >= record.expires_at_ms {
        InvoiceStatus::Expired
    } else {
        InvoiceStatus::Pending
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_marks_paid_once_and_keeps_the_first_key() {
        let store = MemoryDevWalletStore::new();
        assert_eq!(store.node_key([1; 32]).await.unwrap(), [1; 32]);
        assert_eq!(store.node_key([2; 32]).await.unwrap(), [1; 32]);
        let record = DevInvoiceRecord {
            issuer: DevSide::Gateway,
            payment_hash: PaymentHash([3; 32]),
            preimage: Preimage([4; 32]),
            bolt11: "lnbcrt1".into(),
            amount: Msat::from_msat(1000),
            expires_at_ms: 10,
            paid_at_ms: None,
        };
        store.insert(&record).await.unwrap();
        assert!(
            store.insert(&record).await.is_err(),
            "a duplicate hash must be refused"
        );
        assert!(store.mark_paid(&record.payment_hash, 5).await.unwrap());
        assert!(!store.mark_paid(&record.payment_hash, 6).await.unwrap());
        assert!(!store.mark_paid(&PaymentHash([9; 32]), 6).await.unwrap());
        assert_eq!(
            store
                .get(&record.payment_hash)
                .await
                .unwrap()
                .unwrap()
                .paid_at_ms,
            Some(5)
        );
    }

    #[test]
    fn a_paid_invoice_stays_settled_after_its_expiry() {
        let record = DevInvoiceRecord {
            issuer: DevSide::Gateway,
            payment_hash: PaymentHash([3; 32]),
            preimage: Preimage([4; 32]),
            bolt11: String::new(),
            amount: Msat::from_msat(1000),
            expires_at_ms: 10,
            paid_at_ms: Some(5),
        };
        assert!(matches!(
            status_of(&record, 100),
            InvoiceStatus::Settled { .. }
        ));
        let unpaid = DevInvoiceRecord {
            paid_at_ms: None,
            ..record
        };
        assert_eq!(status_of(&unpaid, 9), InvoiceStatus::Pending);
        assert_eq!(status_of(&unpaid, 10), InvoiceStatus::Expired);
    }
}
