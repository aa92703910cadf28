//! The Lightning port and its adapters.
//!
//! [`Lightning`] is what the gateway needs from a Lightning backend: create an
//! invoice, look one up, pay one, and hear about settlements as they happen.
//! Adapters: [`dev::DevWallet`] (the embedded default: real BOLT11 invoices
//! signed by a local key, **not real money**), [`lnbits::LnBits`],
//! [`lnd::Lnd`] (LND's REST API) and [`cln::Cln`] (Core Lightning's clnrest).
//! [`bolt11::decode`] reads an invoice (hash, amount, expiry, payee) without
//! paying it.
//!
//! [`Lightning::lookup_payment`] answers what became of a payment sluice made
//! (a refund or withdrawal) whose outcome is unknown, before anything is
//! retried: refunds must never be paid twice.
//!
//! Settlement events are a hint for speed, not the source of truth: the
//! gateway also looks up every pending invoice at start and on a timer, so an
//! invoice settled while the gateway was down or while a webhook was lost is
//! still credited (exactly once: crediting is idempotent in the store).

use std::time::Duration;

use async_trait::async_trait;
use sluice_core::Msat;

pub mod bolt11;
pub mod cln;
pub mod dev;
pub mod lnbits;
pub mod lnd;
mod poll;

/// A 32-byte payment hash, hex-encoded lowercase in every wire and store form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentHash(pub [u8; 32]);

impl PaymentHash {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, LightningError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| LightningError::InvalidInvoice(format!("bad payment hash {s:?}")))?;
        Ok(PaymentHash(out))
    }
}

/// A 32-byte preimage; `sha256(preimage) == payment_hash`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Preimage(pub [u8; 32]);

impl Preimage {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, LightningError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| LightningError::Backend("bad preimage from backend".into()))?;
        Ok(Preimage(out))
    }

    /// The payment hash this preimage opens.
    pub fn payment_hash(&self) -> PaymentHash {
        use sha2::Digest;
        PaymentHash(sha2::Sha256::digest(self.0).into())
    }
}

impl std::fmt::Debug for Preimage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Preimage(..)")
    }
}

/// An invoice the backend created for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// The BOLT11 string.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: PaymentHash,
    /// Its amount.
    pub amount: Msat,
    /// Unix seconds after which it can no longer be paid.
    pub expires_at: u64,
}

/// The state of an invoice we created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceStatus {
    /// Not paid yet and not expired.
    Pending,
    /// Paid; the preimage proves it.
    Settled {
        /// The preimage.
        preimage: Preimage,
        /// The amount received (may exceed the invoice amount for some backends).
        amount: Msat,
    },
    /// Past its expiry without payment.
    Expired,
}

/// A payment we made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    /// The hash paid.
    pub payment_hash: PaymentHash,
    /// The preimage received, proof of payment.
    pub preimage: Preimage,
    /// Routing fee paid.
    pub fee: Msat,
}

/// The state of a payment this backend made (or tried to make), as
/// [`Lightning::lookup_payment`] finds it. When a payment's outcome is unknown
/// (a timeout, a backend error), this is what tells the gateway whether money
/// left, so a refund is never paid twice: only [`PaymentStatus::NotFound`]
/// and [`PaymentStatus::Failed`] mean that nothing was paid.
///
/// After `NotFound` or `Failed`, retry with the *same* invoice, never a new
/// one for the same refund: a request that timed out may still reach the
/// backend after the lookup, and a second payment of a hash already paid or
/// in flight is refused (by the backend, or for CLN by the adapter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// No payment to this hash was attempted by this backend.
    NotFound,
    /// In flight: it may still succeed or fail; look again later.
    Pending,
    /// Paid; the preimage proves it.
    Succeeded {
        /// The preimage received (`sha256(preimage)` is the hash).
        preimage: Preimage,
        /// The routing fee paid.
        fee: Msat,
    },
    /// Failed for good: nothing was paid.
    Failed,
}

/// An invoice settled (pushed by the backend or found by a lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The invoice's hash.
    pub payment_hash: PaymentHash,
    /// Its preimage.
    pub preimage: Preimage,
    /// The amount received.
    pub amount: Msat,
}

/// Errors from a Lightning backend.
#[derive(Debug, thiserror::Error)]
pub enum LightningError {
    /// The invoice is malformed, foreign or otherwise unusable here.
    #[error("invalid invoice: {0}")]
    InvalidInvoice(String),
    /// The backend does not know this invoice.
    #[error("invoice not found")]
    NotFound,
    /// The invoice was already paid.
    #[error("invoice already paid")]
    AlreadyPaid,
    /// The invoice has expired.
    #[error("invoice expired")]
    Expired,
    /// Not enough funds to pay.
    #[error("insufficient balance")]
    InsufficientBalance,
    /// The backend failed or could not be reached.
    #[error("lightning backend error: {0}")]
    Backend(String),
}

/// Refuse a zero-amount invoice (every backend's rule).
pub(crate) fn positive_amount(amount: Msat) -> Result<(), LightningError> {
    if amount == Msat::ZERO {
        return Err(LightningError::InvalidInvoice(
            "the amount must be positive".into(),
        ));
    }
    Ok(())
}

/// An invoice expiry in whole seconds, at least one.
pub(crate) fn expiry_secs(expiry: Duration) -> Result<u64, LightningError> {
    match expiry.as_secs() {
        0 => Err(LightningError::InvalidInvoice(
            "the expiry must be at least one second".into(),
        )),
        s => Ok(s),
    }
}

/// The tokio runtime a backend's poller runs on; `what` names the constructor.
pub(crate) fn runtime(what: &str) -> Result<tokio::runtime::Handle, LightningError> {
    tokio::runtime::Handle::try_current()
        .map_err(|_| LightningError::Backend(format!("{what} must run inside a tokio runtime")))
}

/// What the gateway needs from a Lightning backend.
#[async_trait]
pub trait Lightning: Send + Sync {
    /// A short name: `"dev"`, `"lnbits"`, `"lnd"`, `"cln"`.
    fn name(&self) -> &'static str;

    /// False for the dev wallet: its sats are not real money.
    fn is_real_money(&self) -> bool;

    /// Create an invoice for `amount` with `memo`, payable for `expiry`.
    async fn create_invoice(
        &self,
        amount: Msat,
        memo: &str,
        expiry: Duration,
    ) -> Result<Invoice, LightningError>;

    /// Look up an invoice this backend created.
    async fn lookup_invoice(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError>;

    /// Pay a BOLT11 invoice, spending at most `max_fee` on routing (see
    /// [`Lightning::fee_reserve`] for a backend that cannot cap it).
    async fn pay_invoice(&self, bolt11: &str, max_fee: Msat) -> Result<Payment, LightningError>;

    /// What this backend may spend on routing a payment of `amount` whatever
    /// `max_fee` it is given, when it cannot cap a payment's fee itself
    /// (LNbits: its own fee reserve). `None`: it honours `max_fee`. A payout
    /// must leave at least this much for fees.
    fn fee_reserve(&self, _amount: Msat) -> Option<Msat> {
        None
    }

    /// The state of a payment this backend made (or tried to make) to
    /// `hash`. Only outgoing payments count: an invoice this backend issued
    /// for the same hash is not a payment it made.
    async fn lookup_payment(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError>;

    /// A stream of settlements of invoices this backend created. Events may be
    /// missed (lagging receiver, lost webhook); callers also poll.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Settled>;
}
