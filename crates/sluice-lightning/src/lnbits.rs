//! The LNbits adapter: a small client of the LNbits v1 REST API (tested against
//! LNbits 1.6.2).
//!
//! sluice holds one LNbits wallet's keys: the invoice key (create and look up
//! invoices) and, optionally, the admin key (pay invoices: refunds and
//! withdrawals). Keys travel only in the `X-Api-Key` header and are never
//! logged or printed (`Debug` redacts them).
//!
//! Settlements reach [`Lightning::subscribe`] two ways, both only after an
//! authenticated lookup says the invoice is paid:
//! - a background task looks up, every `poll_interval`, the invoices this
//!   instance created that are still pending (and any added with
//!   [`LnBits::watch`]);
//! - LNbits' webhook, when [`LnBitsConfig::webhook_url`] is set: the gateway
//!   receives the POST and hands its body to [`LnBits::handle_webhook`]. The
//!   body is never trusted; only its payment hash is used, to look up.
//!
//! Amounts: LNbits invoices are for whole sats, so `create_invoice` refuses an
//! amount that is not a whole number of sats rather than silently rounding
//! (LNbits itself would round `1.5` sats down). sluice's deposit invoices are
//! whole sats by construction (see `sluice_core`).
//!
//! Payment lookups ([`Lightning::lookup_payment`]) read
//! `GET /api/v1/payments/{hash}` with this wallet's key: only its outgoing
//! record (negative amount) counts, `paid` → succeeded, `status` `failed` →
//! failed, otherwise pending. A payment LNbits refused before starting it
//! (insufficient balance, expired) leaves no record, so it reads as not
//! found, with nothing paid.
//!
//! Fees: the LNbits API has no per-payment fee limit; the server bounds
//! routing fees with its own fee reserve settings. `pay_invoice` reports the
//! fee LNbits charged and logs a warning when it exceeds `max_fee`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::Msat;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bolt11::{self, now_secs};
use crate::{
    Invoice, InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus,
    Preimage, Settled,
};

/// Default interval between lookups of pending invoices.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default timeout of one HTTP call to LNbits.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// LNbits' limit on an invoice memo, in characters.
pub const MAX_MEMO_CHARS: usize = 640;

const EVENT_BUFFER: usize = 1024;
/// How many recent settlements are remembered to avoid announcing one twice
/// (poller and webhook racing). Duplicates beyond that are harmless: crediting
/// is idempotent downstream.
const ANNOUNCED_MEMORY: usize = 4096;
/// While a payment LNbits reports as pending completes, how often to look.
const PAY_PENDING_POLL: Duration = Duration::from_millis(250);

/// How to reach one LNbits wallet.
#[derive(Clone)]
pub struct LnBitsConfig {
    /// Base URL of the LNbits server, e.g. `https://lnbits.example.com`.
    pub url: String,
    /// The wallet's invoice/read key.
    pub invoice_key: String,
    /// The wallet's admin key; needed only to pay invoices.
    pub admin_key: Option<String>,
    /// How often pending invoices are looked up.
    pub poll_interval: Duration,
    /// Timeout of every HTTP call.
    pub timeout: Duration,
    /// Where LNbits should POST settlements (the gateway's webhook route),
    /// written into every invoice; `None` relies on polling alone.
    pub webhook_url: Option<String>,
    /// LNbits' `LNBITS_RESERVE_FEE_MIN`, msat: it has no per-payment fee
    /// limit and may spend up to its reserve on any payment.
    pub fee_reserve_min: Msat,
    /// LNbits' `LNBITS_RESERVE_FEE_PERCENT`, in parts per million of the amount.
    pub fee_reserve_ppm: u64,
}

/// LNbits' default `LNBITS_RESERVE_FEE_MIN` (2 sats).
pub const DEFAULT_FEE_RESERVE_MIN: Msat = Msat::from_msat(2_000);
/// LNbits' default `LNBITS_RESERVE_FEE_PERCENT` (1 %), in ppm.
pub const DEFAULT_FEE_RESERVE_PPM: u64 = 10_000;

impl LnBitsConfig {
    /// A config with the default poll interval and timeout and no webhook.
    pub fn new(url: impl Into<String>, invoice_key: impl Into<String>) -> Self {
        LnBitsConfig {
            url: url.into(),
            invoice_key: invoice_key.into(),
            admin_key: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            webhook_url: None,
            fee_reserve_min: DEFAULT_FEE_RESERVE_MIN,
            fee_reserve_ppm: DEFAULT_FEE_RESERVE_PPM,
        }
    }
}

impl std::fmt::Debug for LnBitsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LnBitsConfig")
            .field("url", &self.url)
            .field("invoice_key", &"<redacted>")
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("poll_interval", &self.poll_interval)
            .field("timeout", &self.timeout)
            .field("webhook_url", &self.webhook_url)
            .field("fee_reserve_min", &self.fee_reserve_min)
            .field("fee_reserve_ppm", &self.fee_reserve_ppm)
            .finish()
    }
}

/// The LNbits backend. Dropping it stops its poller.
pub struct LnBits {
    inner: Arc<Inner>,
    poller: JoinHandle<()>,
}

impl std::fmt::Debug for LnBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LnBits")
            .field("url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for LnBits {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

struct Inner {
    http: reqwest::Client,
    /// Base URL, always ending in `/`.
    base: Url,
    invoice_key: HeaderValue,
    admin_key: Option<HeaderValue>,
    webhook_url: Option<String>,
    timeout: Duration,
    fee_reserve_min: Msat,
    fee_reserve_ppm: u64,
    events: broadcast::Sender<Settled>,
    watch: Mutex<Watch>,
}

#[derive(Default)]
struct Watch {
    pending: HashSet<PaymentHash>,
    announced: HashSet<PaymentHash>,
    announced_order: VecDeque<PaymentHash>,
}

impl LnBits {
    /// A client for the wallet in `config`. Must be called inside a tokio
    /// runtime: it starts the settlement poller there.
    pub fn new(config: LnBitsConfig) -> Result<LnBits, LightningError> {
        let mut base = Url::parse(config.url.trim()).map_err(|e| {
            LightningError::Backend(format!("bad LNbits URL {:?}: {e}", config.url))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(LightningError::Backend(format!(
                "LNbits URL must be http(s), got {:?}",
                config.url
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if config.poll_interval.is_zero() || config.timeout.is_zero() {
            return Err(LightningError::Backend(
                "LNbits poll_interval and timeout must be positive".into(),
            ));
        }
        let invoice_key = key_header(&config.invoice_key, "invoice")?;
        let admin_key = config
            .admin_key
            .as_deref()
            .map(|k| key_header(k, "admin"))
            .transpose()?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| {
                LightningError::Backend(format!(
                    "cannot build the HTTP client (is a rustls crypto provider installed?): {e}"
                ))
            })?;
        let runtime = crate::runtime("LnBits::new")?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            http,
            base,
            invoice_key,
            admin_key,
            webhook_url: config.webhook_url,
            timeout: config.timeout,
            fee_reserve_min: config.fee_reserve_min,
            fee_reserve_ppm: config.fee_reserve_ppm,
            events,
            watch: Mutex::new(Watch::default()),
        });
        let poller = runtime.spawn(poll_loop(Arc::downgrade(&inner), config.poll_interval));
        Ok(LnBits { inner, poller })
    }

    /// Also watch an invoice this instance did not create (e.g. one created
    /// before a restart), so its settlement is announced.
    pub fn watch(&self, hash: PaymentHash) {
        self.inner.with_watch(|w| {
            w.pending.insert(hash);
        });
    }

    /// The wallet's balance (also a cheap check that the invoice key works).
    pub async fn wallet_balance(&self) -> Result<Msat, LightningError> {
        #[derive(Deserialize)]
        struct WalletResponse {
            balance: i64,
        }
        let resp = self
            .inner
            .get("api/v1/wallet", &self.inner.invoice_key)
            .await?;
        let wallet: WalletResponse = read_json(resp).await?;
        Msat::from_i64(wallet.balance.max(0))
            .map_err(|e| LightningError::Backend(format!("bad balance from LNbits: {e}")))
    }

    /// Handle the body of an LNbits webhook POST.
    ///
    /// LNbits posts a JSON string that itself holds the payment as JSON; a
    /// plain JSON object (or a `{"payment": {...}}` wrapper, as on its
    /// websocket) is accepted too. Only the payment hash is taken from the
    /// body: the invoice is then looked up with this wallet's key, and only a
    /// paid invoice of this wallet is announced on [`Lightning::subscribe`]
    /// (once, even if the poller saw it too) and returned.
    ///
    /// Returns `Ok(None)` when the invoice is not (yet) paid or not this
    /// wallet's; `Err(InvalidInvoice)` when the body holds no payment hash.
    pub async fn handle_webhook(&self, body: &[u8]) -> Result<Option<Settled>, LightningError> {
        let hash = webhook_payment_hash(body)?;
        match self.inner.lookup(&hash).await {
            Ok(InvoiceStatus::Settled { preimage, amount }) => {
                let settled = Settled {
                    payment_hash: hash,
                    preimage,
                    amount,
                };
                self.inner.announce(settled);
                Ok(Some(settled))
            }
            Ok(InvoiceStatus::Pending | InvoiceStatus::Expired) | Err(LightningError::NotFound) => {
                tracing::debug!(payment_hash = %hash.to_hex(), "LNbits webhook for an unpaid or foreign invoice ignored");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Lightning for LnBits {
    fn name(&self) -> &'static str {
        "lnbits"
    }

    fn is_real_money(&self) -> bool {
        true
    }

    async fn create_invoice(
        &self,
        amount: Msat,
        memo: &str,
        expiry: Duration,
    ) -> Result<Invoice, LightningError> {
        crate::positive_amount(amount)?;
        if !amount.msat().is_multiple_of(1000) {
            return Err(LightningError::InvalidInvoice(format!(
                "LNbits invoices are for whole sats; {} msat is not a whole number of sats",
                amount.msat()
            )));
        }
        if memo.chars().count() > MAX_MEMO_CHARS {
            return Err(LightningError::InvalidInvoice(format!(
                "the memo is longer than {MAX_MEMO_CHARS} characters"
            )));
        }
        let expiry_secs = crate::expiry_secs(expiry)?;
        let mut body = json!({
            "out": false,
            "unit": "sat",
            "amount": amount.to_sats_floor(),
            "memo": memo,
            "expiry": expiry_secs,
        });
        if let (Some(url), Some(obj)) = (&self.inner.webhook_url, body.as_object_mut()) {
            obj.insert("webhook".into(), Value::String(url.clone()));
        }

        #[derive(Deserialize)]
        struct Created {
            payment_hash: String,
            #[serde(default)]
            bolt11: Option<String>,
            #[serde(default)]
            payment_request: Option<String>,
        }
        let resp = self
            .inner
            .post("api/v1/payments", &self.inner.invoice_key, &body)
            .await?;
        let created: Created = read_json(resp).await?;
        let bolt11 = created
            .bolt11
            .or(created.payment_request)
            .ok_or_else(|| LightningError::Backend("LNbits returned no bolt11".into()))?;
        let payment_hash = PaymentHash::from_hex(&created.payment_hash).map_err(|_| {
            LightningError::Backend("LNbits returned a malformed payment hash".into())
        })?;
        // Check what LNbits signed is what we asked for before handing it out.
        let decoded = bolt11::decode(&bolt11)
            .map_err(|e| LightningError::Backend(format!("LNbits returned {e}")))?;
        if decoded.payment_hash != payment_hash || decoded.amount != Some(amount) {
            return Err(LightningError::Backend(
                "LNbits returned an invoice for another hash or amount".into(),
            ));
        }
        self.watch(payment_hash);
        Ok(Invoice {
            bolt11,
            payment_hash,
            amount,
            expires_at: decoded.expires_at,
        })
    }

    async fn lookup_invoice(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        self.inner.lookup(hash).await
    }

    async fn pay_invoice(&self, bolt11: &str, max_fee: Msat) -> Result<Payment, LightningError> {
        let admin_key = self.inner.admin_key.as_ref().ok_or_else(|| {
            LightningError::Backend(
                "paying needs the LNbits wallet's admin key, and none is configured".into(),
            )
        })?;
        let decoded = bolt11::decode(bolt11)?;
        if decoded.amount.is_none() {
            return Err(LightningError::InvalidInvoice(
                "amountless invoices are not supported".into(),
            ));
        }
        // LNbits pays an expired internal invoice if nobody has looked it up
        // since it expired, so check here.
        if decoded.is_expired_at(now_secs()) {
            return Err(LightningError::Expired);
        }
        let body = json!({"out": true, "bolt11": bolt11.trim()});
        let resp = self.inner.post("api/v1/payments", admin_key, &body).await?;
        if !resp.status().is_success() {
            return Err(pay_error(resp).await);
        }

        #[derive(Deserialize)]
        struct Paid {
            #[serde(default)]
            status: Option<String>,
            #[serde(default)]
            preimage: Option<String>,
            #[serde(default)]
            fee: Option<i64>,
        }
        let paid: Paid = read_json(resp).await?;
        let hash = decoded.payment_hash;
        let (preimage, fee) = match paid.status.as_deref() {
            Some("success") => (paid.preimage, paid.fee),
            Some("failed") => {
                return Err(LightningError::Backend(
                    "LNbits reports the payment failed".into(),
                ));
            }
            _ => self.inner.await_outgoing(&hash, admin_key).await?,
        };
        let preimage = preimage
            .as_deref()
            .map(Preimage::from_hex)
            .transpose()?
            .ok_or_else(|| {
                LightningError::Backend("LNbits reported success without a preimage".into())
            })?;
        if preimage.payment_hash() != hash {
            return Err(LightningError::Backend(
                "LNbits returned a preimage that does not match the invoice".into(),
            ));
        }
        let fee = Msat::from_msat(fee.unwrap_or(0).unsigned_abs());
        if fee > max_fee {
            tracing::warn!(
                payment_hash = %hash.to_hex(),
                fee_msat = fee.msat(),
                max_fee_msat = max_fee.msat(),
                "LNbits charged more routing fee than allowed (LNbits has no per-payment fee limit)"
            );
        }
        Ok(Payment {
            payment_hash: hash,
            preimage,
            fee,
        })
    }

    /// LNbits takes no per-payment fee limit: it spends up to its reserve,
    /// `max(LNBITS_RESERVE_FEE_MIN, LNBITS_RESERVE_FEE_PERCENT of the amount)`.
    fn fee_reserve(&self, amount: Msat) -> Option<Msat> {
        let pct = u128::from(amount.msat()) * u128::from(self.inner.fee_reserve_ppm) / 1_000_000;
        let pct = Msat::from_msat(u64::try_from(pct).unwrap_or(u64::MAX));
        Some(pct.max(self.inner.fee_reserve_min))
    }

    /// `GET /api/v1/payments/{hash}` with this wallet's admin key (its
    /// invoice key when no admin key is configured: both see the wallet's
    /// payments). Only an outgoing record (negative amount) of this wallet
    /// counts (see the module docs).
    async fn lookup_payment(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        let key = self
            .inner
            .admin_key
            .as_ref()
            .unwrap_or(&self.inner.invoice_key);
        self.inner.payment_status(hash, key).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Settled> {
        self.inner.events.subscribe()
    }
}

/// The lookup response of `GET /api/v1/payments/{hash}`.
#[derive(Deserialize)]
struct LookupResponse {
    paid: bool,
    #[serde(default)]
    preimage: Option<String>,
    #[serde(default)]
    status: Option<String>,
    /// Present only when the key belongs to the payment's wallet.
    #[serde(default)]
    details: Option<LookupDetails>,
}

#[derive(Deserialize)]
struct LookupDetails {
    payment_hash: String,
    /// Msat; positive for incoming, negative for outgoing.
    amount: i64,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    fee: Option<i64>,
}

impl Inner {
    fn url(&self, path: &str) -> Result<Url, LightningError> {
        self.base
            .join(path)
            .map_err(|e| LightningError::Backend(format!("bad LNbits path {path:?}: {e}")))
    }

    fn headers(key: &HeaderValue) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("X-Api-Key", key.clone());
        h
    }

    async fn get(
        &self,
        path: &str,
        key: &HeaderValue,
    ) -> Result<reqwest::Response, LightningError> {
        self.http
            .get(self.url(path)?)
            .headers(Self::headers(key))
            .send()
            .await
            .map_err(transport_error)
    }

    async fn post(
        &self,
        path: &str,
        key: &HeaderValue,
        body: &Value,
    ) -> Result<reqwest::Response, LightningError> {
        self.http
            .post(self.url(path)?)
            .headers(Self::headers(key))
            .json(body)
            .send()
            .await
            .map_err(transport_error)
    }

    /// Look up `hash` with `key`; `None` when the key's wallet has no such payment.
    async fn fetch_payment(
        &self,
        hash: &PaymentHash,
        key: &HeaderValue,
    ) -> Result<Option<LookupResponse>, LightningError> {
        let resp = self
            .get(&format!("api/v1/payments/{}", hash.to_hex()), key)
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let lookup: LookupResponse = read_json(resp).await?;
        match &lookup.details {
            // Without details the payment belongs to another wallet.
            None => Ok(None),
            Some(d) if !d.payment_hash.eq_ignore_ascii_case(&hash.to_hex()) => Err(
                LightningError::Backend("LNbits answered a lookup with another payment".into()),
            ),
            Some(_) => Ok(Some(lookup)),
        }
    }

    async fn lookup(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        let lookup = self
            .fetch_payment(hash, &self.invoice_key)
            .await?
            .ok_or(LightningError::NotFound)?;
        let Some(details) = lookup.details else {
            return Err(LightningError::NotFound);
        };
        // A negative amount is one of our own outgoing payments with this
        // hash, not an invoice we issued: it must never read as money received.
        if details.amount <= 0 {
            return Err(LightningError::NotFound);
        }
        if lookup.paid {
            let preimage = lookup
                .preimage
                .as_deref()
                .map(Preimage::from_hex)
                .transpose()?
                .ok_or_else(|| {
                    LightningError::Backend("LNbits reports paid without a preimage".into())
                })?;
            if preimage.payment_hash() != *hash {
                return Err(LightningError::Backend(
                    "LNbits returned a preimage that does not match the invoice".into(),
                ));
            }
            let amount = Msat::from_msat(details.amount.unsigned_abs());
            return Ok(InvoiceStatus::Settled { preimage, amount });
        }
        // LNbits marks an incoming invoice "failed" (labelled "expired") once
        // it is looked up past its expiry; nothing else fails an invoice.
        let failed = |s: &Option<String>| s.as_deref() == Some("failed");
        if failed(&lookup.status) || failed(&details.status) {
            Ok(InvoiceStatus::Expired)
        } else {
            Ok(InvoiceStatus::Pending)
        }
    }

    /// The state of this wallet's outgoing payment to `hash`.
    ///
    /// LNbits 1.6 answers a wallet's key with that wallet's record for the
    /// hash, its outgoing record first when it has both (`ORDER BY amount`),
    /// with `details` (`amount` negative for outgoing, `status`
    /// `success`/`pending`/`failed`). A payment refused before it started
    /// (insufficient balance, expired, foreign bolt11 rejected) leaves no
    /// record: `NotFound`, and nothing moved. A failed attempt keeps its
    /// record as `failed`. An incoming record (an invoice this wallet issued
    /// for the same hash) is not a payment this wallet made.
    async fn payment_status(
        &self,
        hash: &PaymentHash,
        key: &HeaderValue,
    ) -> Result<PaymentStatus, LightningError> {
        let Some(lookup) = self.fetch_payment(hash, key).await? else {
            return Ok(PaymentStatus::NotFound);
        };
        let Some(details) = &lookup.details else {
            return Ok(PaymentStatus::NotFound);
        };
        if details.amount >= 0 {
            return Ok(PaymentStatus::NotFound);
        }
        if lookup.paid {
            let preimage = lookup
                .preimage
                .as_deref()
                .map(Preimage::from_hex)
                .transpose()?
                .ok_or_else(|| {
                    LightningError::Backend("LNbits reports paid without a preimage".into())
                })?;
            if preimage.payment_hash() != *hash {
                return Err(LightningError::Backend(
                    "LNbits returned a preimage that does not match the payment".into(),
                ));
            }
            // LNbits stores an outgoing payment's fee as a negative amount.
            let fee = Msat::from_msat(details.fee.unwrap_or(0).unsigned_abs());
            return Ok(PaymentStatus::Succeeded { preimage, fee });
        }
        let failed = |s: &Option<String>| s.as_deref() == Some("failed");
        if failed(&lookup.status) || failed(&details.status) {
            Ok(PaymentStatus::Failed)
        } else {
            Ok(PaymentStatus::Pending)
        }
    }

    /// Wait (up to the call timeout) for an outgoing payment LNbits reported
    /// as pending; returns its preimage and fee.
    async fn await_outgoing(
        &self,
        hash: &PaymentHash,
        admin_key: &HeaderValue,
    ) -> Result<(Option<String>, Option<i64>), LightningError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(lookup) = self.fetch_payment(hash, admin_key).await? {
                let fee = lookup.details.as_ref().and_then(|d| d.fee);
                let status = lookup.details.as_ref().and_then(|d| d.status.clone());
                if lookup.paid {
                    return Ok((lookup.preimage, fee));
                }
                if status.as_deref() == Some("failed") {
                    return Err(LightningError::Backend(
                        "LNbits reports the payment failed".into(),
                    ));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LightningError::Backend(
                    "the payment is still pending at LNbits; look it up later before retrying"
                        .into(),
                ));
            }
            tokio::time::sleep(PAY_PENDING_POLL).await;
        }
    }

    fn with_watch<T>(&self, f: impl FnOnce(&mut Watch) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of
        // this bookkeeping; the sets are still usable.
        let mut guard = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Broadcast a settlement unless it was announced recently.
    fn announce(&self, settled: Settled) {
        let fresh = self.with_watch(|w| {
            w.pending.remove(&settled.payment_hash);
            if !w.announced.insert(settled.payment_hash) {
                return false;
            }
            w.announced_order.push_back(settled.payment_hash);
            if w.announced_order.len() > ANNOUNCED_MEMORY
                && let Some(old) = w.announced_order.pop_front()
            {
                w.announced.remove(&old);
            }
            true
        });
        if fresh {
            // No receiver is fine: subscribers are a hint, lookups are the truth.
            let _ = self.events.send(settled);
        }
    }

    async fn poll_once(&self) {
        let hashes: Vec<PaymentHash> = self.with_watch(|w| w.pending.iter().copied().collect());
        for hash in hashes {
            match self.lookup(&hash).await {
                Ok(InvoiceStatus::Settled { preimage, amount }) => {
                    self.announce(Settled {
                        payment_hash: hash,
                        preimage,
                        amount,
                    });
                }
                Ok(InvoiceStatus::Pending) => {}
                Ok(InvoiceStatus::Expired) | Err(LightningError::NotFound) => {
                    self.with_watch(|w| w.pending.remove(&hash));
                }
                Err(e) => {
                    tracing::debug!(payment_hash = %hash.to_hex(), error = %e, "LNbits lookup failed; will retry");
                }
            }
        }
    }
}

async fn poll_loop(inner: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.poll_once().await;
    }
}

fn key_header(key: &str, which: &str) -> Result<HeaderValue, LightningError> {
    let mut v = HeaderValue::from_str(key.trim()).map_err(|_| {
        LightningError::Backend(format!(
            "the LNbits {which} key is not a valid header value"
        ))
    })?;
    if key.trim().is_empty() {
        return Err(LightningError::Backend(format!(
            "the LNbits {which} key is empty"
        )));
    }
    v.set_sensitive(true);
    Ok(v)
}

fn transport_error(e: reqwest::Error) -> LightningError {
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    LightningError::Backend(format!("LNbits {what}: {}", e.without_url()))
}

/// `detail` of an LNbits error body, shortened.
async fn error_detail(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("detail").map(|d| {
                d.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| d.to_string())
            })
        })
        .unwrap_or(text);
    (status, detail.chars().take(200).collect())
}

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T, LightningError> {
    if !resp.status().is_success() {
        let (status, detail) = error_detail(resp).await;
        return Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                LightningError::Backend(format!("LNbits refused the key ({status}): {detail}"))
            }
            _ => LightningError::Backend(format!("LNbits answered {status}: {detail}")),
        });
    }
    resp.json::<T>().await.map_err(|e| {
        LightningError::Backend(format!("unexpected LNbits response: {}", e.without_url()))
    })
}

/// Map a refused payment to the port's errors by LNbits' messages.
async fn pay_error(resp: reqwest::Response) -> LightningError {
    let (status, detail) = error_detail(resp).await;
    let lower = detail.to_ascii_lowercase();
    if lower.contains("already paid") {
        LightningError::AlreadyPaid
    } else if lower.contains("insufficient balance") {
        LightningError::InsufficientBalance
    } else if lower.contains("expired") {
        LightningError::Expired
    } else if lower.contains("bolt11")
        || lower.contains("amountless")
        || lower.contains("invalid invoice")
    {
        LightningError::InvalidInvoice(detail)
    } else {
        LightningError::Backend(format!("LNbits refused the payment ({status}): {detail}"))
    }
}

/// The payment hash in a webhook body (see [`LnBits::handle_webhook`]).
fn webhook_payment_hash(body: &[u8]) -> Result<PaymentHash, LightningError> {
    let bad =
        |why: &str| LightningError::InvalidInvoice(format!("unusable LNbits webhook body: {why}"));
    let mut value: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    // LNbits double-encodes: the body is a JSON string holding the payment JSON.
    for _ in 0..2 {
        match value {
            Value::String(s) => {
                value = serde_json::from_str(&s).map_err(|_| bad("a string that is not JSON"))?
            }
            _ => break,
        }
    }
    let payment = value
        .get("payment")
        .filter(|p| p.is_object())
        .unwrap_or(&value);
    let hash = payment
        .get("payment_hash")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no payment_hash"))?;
    PaymentHash::from_hex(hash).map_err(|_| bad("malformed payment_hash"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HASH: &str = "623bbf129fecda6eebfbc860bcf74ac3ccd6f9275f9b011fc51485d7857d7180";

    #[test]
    fn webhook_bodies_are_decoded_leniently() {
        let payment =
            json!({"payment_hash": HASH, "amount": 10000, "status": "success"}).to_string();
        let double = serde_json::to_vec(&Value::String(payment.clone())).unwrap();
        let expected = PaymentHash::from_hex(HASH).unwrap();
        assert_eq!(webhook_payment_hash(&double).unwrap(), expected);
        assert_eq!(webhook_payment_hash(payment.as_bytes()).unwrap(), expected);
        let wrapped = json!({"wallet_balance": 1, "payment": {"payment_hash": HASH}}).to_string();
        assert_eq!(webhook_payment_hash(wrapped.as_bytes()).unwrap(), expected);
        for bad in [
            &b"not json"[..],
            b"{}",
            b"\"{\\\"payment_hash\\\": \\\"zz\\\"}\"",
            b"42",
        ] {
            assert!(
                matches!(
                    webhook_payment_hash(bad),
                    Err(LightningError::InvalidInvoice(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_never_shows_keys() {
        let mut config = LnBitsConfig::new("http://127.0.0.1:1", "secret-invoice-key");
        config.admin_key = Some("secret-admin-key".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret-"), "{shown}");
    }
}
