//! The Core Lightning adapter: a client of `clnrest`, the REST plugin shipped
//! with CLN since 23.08 (`POST /v1/<method>` with the method's JSON
//! parameters, authorised by a `Rune` header). Field names are those of CLN's
//! JSON-RPC (`doc/schemas/*.json`). `cln-rpc` (the unix socket) would need
//! sluice on the node's machine, so REST is the one transport.
//!
//! Methods used (the rune must allow all four):
//! - `invoice` with `amount_msat`, a unique `label` (`sluice-<random hex>`),
//!   `description`, `expiry`;
//! - `listinvoices` with `payment_hash` (status `unpaid`/`paid`/`expired`);
//! - `listpays` with `payment_hash`, before paying: CLN's `pay` is idempotent
//!   (paying a paid invoice again returns the earlier success), while the
//!   port promises [`LightningError::AlreadyPaid`] for a second payment;
//!   and for [`Lightning::lookup_payment`]: any `complete` entry →
//!   succeeded (its `preimage`, fee `amount_sent_msat - amount_msat`), else
//!   any `pending` → pending, else (all `failed`) → failed, no entry → not
//!   found;
//! - `pay` with `bolt11`, `maxfee` (an absolute fee cap in msat) and
//!   `retry_for`.
//!
//! Errors come back with HTTP 500 as the JSON-RPC error `{code, message}`;
//! `pay`'s codes (`doc/schemas/pay.json`) map to the port's errors: 201
//! (already paid with another amount or destination) → `AlreadyPaid`, 207
//! → `Expired`, 215 → `InsufficientBalance`, 205/206/210 (no route, too
//! expensive, ran out of routes, e.g. under `maxfee`) → `Backend` with the
//! reason. A missing or wrong rune is HTTP 401/403.
//!
//! Settlements reach [`Lightning::subscribe`] by polling `listinvoices` for
//! the invoices this instance created (and any added with [`Cln::watch`]).
//! `waitanyinvoice` would be quicker, but it needs a long-held request and a
//! persisted `pay_index`; polling needs neither, and lookups are the truth.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::Msat;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bolt11::{self, now_secs};
use crate::lnd::base_url;
use crate::poll::{PayLocks, Polled, Watcher, poll_loop};
use crate::{
    Invoice, InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus,
    Preimage, Settled,
};

/// Default interval between lookups of pending invoices.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default timeout of one HTTP call to clnrest.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time `pay` may keep retrying routes (`retry_for`).
pub const DEFAULT_PAY_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of the labels of invoices sluice creates.
pub const LABEL_PREFIX: &str = "sluice-";

/// How to reach one Core Lightning node's clnrest.
#[derive(Clone)]
pub struct ClnConfig {
    /// Base URL of clnrest, e.g. `https://127.0.0.1:3010`.
    pub url: String,
    /// A rune allowing `invoice`, `listinvoices`, `listpays` and `pay`.
    pub rune: String,
    /// clnrest's certificate (PEM; by default the node's `ca.pem`, the CA
    /// of clnrest's self-signed `server.pem`). When set it is the only
    /// trusted root; when `None` the system's web roots apply.
    pub tls_cert_pem: Option<String>,
    /// How often pending invoices are looked up.
    pub poll_interval: Duration,
    /// Timeout of every HTTP call except `pay`.
    pub timeout: Duration,
    /// How long `pay` may keep retrying routes (`retry_for`); the call
    /// waits this plus `timeout`.
    pub pay_timeout: Duration,
}

impl ClnConfig {
    /// A config with default intervals and timeouts and no pinned certificate.
    pub fn new(url: impl Into<String>, rune: impl Into<String>) -> Self {
        ClnConfig {
            url: url.into(),
            rune: rune.into(),
            tls_cert_pem: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            pay_timeout: DEFAULT_PAY_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ClnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClnConfig")
            .field("url", &self.url)
            .field("rune", &"<redacted>")
            .field("tls_cert_pem", &self.tls_cert_pem.as_ref().map(|_| "<pem>"))
            .field("poll_interval", &self.poll_interval)
            .field("timeout", &self.timeout)
            .field("pay_timeout", &self.pay_timeout)
            .finish()
    }
}

/// The Core Lightning backend. Dropping it stops its poller.
pub struct Cln {
    inner: Arc<Inner>,
    poller: JoinHandle<()>,
}

impl std::fmt::Debug for Cln {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cln")
            .field("url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for Cln {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

struct Inner {
    http: reqwest::Client,
    /// Base URL, always ending in `/`.
    base: Url,
    rune: HeaderValue,
    timeout: Duration,
    pay_timeout: Duration,
    watcher: Watcher,
    pay_locks: PayLocks,
}

/// A JSON-RPC error from clnrest.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RpcError {
    /// Absent (`null`) for errors clnrest raises itself.
    #[serde(default)]
    pub(crate) code: Option<i64>,
    #[serde(default)]
    pub(crate) message: String,
}

impl Cln {
    /// A client for the node in `config`. Must be called inside a tokio
    /// runtime: it starts the settlement poller there.
    pub fn new(config: ClnConfig) -> Result<Cln, LightningError> {
        let base = base_url(&config.url, "CLN")?;
        if config.poll_interval.is_zero() || config.timeout.is_zero() {
            return Err(LightningError::Backend(
                "CLN poll_interval and timeout must be positive".into(),
            ));
        }
        if config.pay_timeout < Duration::from_secs(1) {
            return Err(LightningError::Backend(
                "CLN pay_timeout must be at least one second".into(),
            ));
        }
        if config.rune.trim().is_empty() {
            return Err(LightningError::Backend("the CLN rune is empty".into()));
        }
        let mut rune = HeaderValue::from_str(config.rune.trim())
            .map_err(|_| LightningError::Backend("the CLN rune is not a valid header".into()))?;
        rune.set_sensitive(true);
        let mut builder = reqwest::Client::builder().connect_timeout(config.timeout);
        if let Some(pem) = &config.tls_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                LightningError::Backend(format!("CLN tls_cert_pem is not a PEM certificate: {e}"))
            })?;
            builder = builder.tls_certs_only([cert]);
        }
        let http = builder.build().map_err(|e| {
            LightningError::Backend(format!(
                "cannot build the HTTP client for CLN (bad tls_cert_pem, or no rustls crypto provider installed?): {e}"
            ))
        })?;
        let runtime = crate::runtime("Cln::new")?;
        let inner = Arc::new(Inner {
            http,
            base,
            rune,
            timeout: config.timeout,
            pay_timeout: config.pay_timeout,
            watcher: Watcher::new(),
            pay_locks: PayLocks::default(),
        });
        let poller = runtime.spawn(poll_loop(Arc::downgrade(&inner), config.poll_interval));
        Ok(Cln { inner, poller })
    }

    /// Also watch an invoice this instance did not create (e.g. one created
    /// before a restart), so its settlement is announced.
    pub fn watch(&self, hash: PaymentHash) {
        self.inner.watcher.watch(hash);
    }
}

#[async_trait]
impl Lightning for Cln {
    fn name(&self) -> &'static str {
        "cln"
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
        let expiry_secs = crate::expiry_secs(expiry)?;
        let label = format!(
            "{LABEL_PREFIX}{}",
            sluice_env::Ids::new_hex(&sluice_env::OsIds)
        );
        let params = json!({
            "amount_msat": amount.msat(),
            "label": label,
            "description": memo,
            "expiry": expiry_secs,
        });

        #[derive(Deserialize)]
        struct Created {
            bolt11: String,
            payment_hash: String,
        }
        let created: Created =
            self.inner
                .call("invoice", &params, None)
                .await
                .map_err(|e| match e {
                    CallError::Rpc(st) => rpc_error(&st),
                    CallError::Other(e) => e,
                })?;
        let payment_hash = PaymentHash::from_hex(&created.payment_hash)
            .map_err(|_| LightningError::Backend("CLN returned a malformed payment hash".into()))?;
        let decoded = bolt11::decode(&created.bolt11)
            .map_err(|e| LightningError::Backend(format!("CLN returned {e}")))?;
        if decoded.payment_hash != payment_hash || decoded.amount != Some(amount) {
            return Err(LightningError::Backend(
                "CLN returned an invoice for another hash or amount".into(),
            ));
        }
        self.inner.watcher.watch(payment_hash);
        Ok(Invoice {
            bolt11: created.bolt11,
            payment_hash,
            amount,
            expires_at: decoded.expires_at,
        })
    }

    async fn lookup_invoice(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        self.inner.lookup(hash).await
    }

    async fn pay_invoice(&self, bolt11: &str, max_fee: Msat) -> Result<Payment, LightningError> {
        let decoded = bolt11::decode(bolt11)?;
        if decoded.amount.is_none() {
            return Err(LightningError::InvalidInvoice(
                "amountless invoices are not supported".into(),
            ));
        }
        if decoded.is_expired_at(now_secs()) {
            return Err(LightningError::Expired);
        }
        let hash = decoded.payment_hash;
        let _serialised = self.inner.pay_locks.lock(hash).await;
        self.inner.refuse_if_paid(&hash).await?;
        let params = json!({
            "bolt11": bolt11.trim(),
            "maxfee": max_fee.msat(),
            "retry_for": self.inner.pay_timeout.as_secs(),
        });
        let wait = self.inner.pay_timeout.saturating_add(self.inner.timeout);

        #[derive(Deserialize)]
        struct Paid {
            payment_preimage: String,
            #[serde(default)]
            payment_hash: Option<String>,
            amount_msat: MsatField,
            amount_sent_msat: MsatField,
            status: String,
        }
        let paid: Paid =
            self.inner
                .call("pay", &params, Some(wait))
                .await
                .map_err(|e| match e {
                    CallError::Rpc(st) => pay_error(&st),
                    CallError::Other(e) => e,
                })?;
        if paid.status != "complete" {
            return Err(LightningError::Backend(format!(
                "CLN reports the payment {}; look it up before retrying",
                short(&paid.status)
            )));
        }
        if let Some(h) = &paid.payment_hash
            && !h.eq_ignore_ascii_case(&hash.to_hex())
        {
            return Err(LightningError::Backend(
                "CLN paid another payment hash".into(),
            ));
        }
        let preimage = Preimage::from_hex(&paid.payment_preimage)?;
        if preimage.payment_hash() != hash {
            return Err(LightningError::Backend(
                "CLN returned a preimage that does not match the invoice".into(),
            ));
        }
        let fee = paid
            .amount_sent_msat
            .0
            .checked_sub(paid.amount_msat.0)
            .map(Msat::from_msat)
            .ok_or_else(|| {
                LightningError::Backend("CLN reports sending less than the amount".into())
            })?;
        Ok(Payment {
            payment_hash: hash,
            preimage,
            fee,
        })
    }

    async fn lookup_payment(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        let pays = self.inner.list_pays(hash).await?;
        pays_status(&pays, hash)
    }

    fn subscribe(&self) -> broadcast::Receiver<Settled> {
        self.inner.watcher.subscribe()
    }
}

/// An msat amount as CLN writes it: a number (current), or a string ending
/// in `msat` (before v23.05).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MsatField(pub(crate) u64);

impl<'de> Deserialize<'de> for MsatField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let n = match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().trim_end_matches("msat").parse().ok(),
            _ => None,
        };
        n.map(MsatField)
            .ok_or_else(|| serde::de::Error::custom(format!("not an msat amount: {v}")))
    }
}

/// One entry of `listinvoices`.
#[derive(Debug, Deserialize)]
pub(crate) struct ListedInvoice {
    payment_hash: String,
    status: String,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    payment_preimage: Option<String>,
    #[serde(default)]
    amount_received_msat: Option<MsatField>,
}

/// The status of a `listinvoices` entry at `now` (unix seconds).
pub(crate) fn invoice_status(
    inv: &ListedInvoice,
    hash: &PaymentHash,
    now: u64,
) -> Result<InvoiceStatus, LightningError> {
    if !inv.payment_hash.eq_ignore_ascii_case(&hash.to_hex()) {
        return Err(LightningError::Backend(
            "CLN answered a lookup with another invoice".into(),
        ));
    }
    match inv.status.as_str() {
        "paid" => {
            let preimage = inv
                .payment_preimage
                .as_deref()
                .map(Preimage::from_hex)
                .transpose()?
                .ok_or_else(|| {
                    LightningError::Backend("CLN reports paid without a preimage".into())
                })?;
            if preimage.payment_hash() != *hash {
                return Err(LightningError::Backend(
                    "CLN returned a preimage that does not match the invoice".into(),
                ));
            }
            let amount = inv
                .amount_received_msat
                .map(|m| Msat::from_msat(m.0))
                .ok_or_else(|| {
                    LightningError::Backend("CLN reports paid without amount_received_msat".into())
                })?;
            Ok(InvoiceStatus::Settled { preimage, amount })
        }
        "expired" => Ok(InvoiceStatus::Expired),
        // CLN flips `unpaid` to `expired` on a timer; do not wait for it.
        "unpaid" if inv.expires_at.is_some_and(|e| now >= e) => Ok(InvoiceStatus::Expired),
        "unpaid" => Ok(InvoiceStatus::Pending),
        other => Err(LightningError::Backend(format!(
            "CLN reports an unknown invoice status {:?}",
            short(other)
        ))),
    }
}

/// One entry of `listpays` (`doc/schemas/listpays.json`).
#[derive(Debug, Deserialize)]
pub(crate) struct ListedPay {
    #[serde(default)]
    payment_hash: Option<String>,
    status: String,
    /// Only for `complete`.
    #[serde(default)]
    preimage: Option<String>,
    /// "If known" (always, for an invoice with an amount).
    #[serde(default)]
    amount_msat: Option<MsatField>,
    /// Only for `complete`.
    #[serde(default)]
    amount_sent_msat: Option<MsatField>,
}

/// What `listpays` entries for `hash` say about our payment of it. One
/// hash can have several attempts (a failed one retried): a `complete` one
/// means paid, whatever else is listed; a `pending` one may still complete;
/// only when every attempt failed did nothing move.
pub(crate) fn pays_status(
    pays: &[ListedPay],
    hash: &PaymentHash,
) -> Result<PaymentStatus, LightningError> {
    if pays.iter().any(|p| {
        p.payment_hash
            .as_deref()
            .is_some_and(|h| !h.eq_ignore_ascii_case(&hash.to_hex()))
    }) {
        return Err(LightningError::Backend(
            "CLN answered a payment lookup with another payment".into(),
        ));
    }
    if let Some(done) = pays.iter().find(|p| p.status == "complete") {
        let preimage = done
            .preimage
            .as_deref()
            .map(Preimage::from_hex)
            .transpose()?
            .ok_or_else(|| {
                LightningError::Backend("CLN reports a complete payment without a preimage".into())
            })?;
        if preimage.payment_hash() != *hash {
            return Err(LightningError::Backend(
                "CLN returned a preimage that does not match the payment".into(),
            ));
        }
        let fee = match (done.amount_sent_msat, done.amount_msat) {
            (Some(sent), Some(amount)) => sent.0.checked_sub(amount.0).map(Msat::from_msat),
            _ => None,
        }
        .ok_or_else(|| {
            LightningError::Backend(
                "CLN reports a complete payment without consistent amounts; it was paid, \
                 but its fee is unknown"
                    .into(),
            )
        })?;
        return Ok(PaymentStatus::Succeeded { preimage, fee });
    }
    if pays.iter().any(|p| p.status == "pending") {
        return Ok(PaymentStatus::Pending);
    }
    if let Some(odd) = pays.iter().find(|p| p.status != "failed") {
        return Err(LightningError::Backend(format!(
            "CLN reports an unknown payment status {:?}",
            short(&odd.status)
        )));
    }
    Ok(if pays.is_empty() {
        PaymentStatus::NotFound
    } else {
        PaymentStatus::Failed
    })
}

/// Why a clnrest call failed.
enum CallError {
    /// The method ran and returned a JSON-RPC error (HTTP 500).
    Rpc(RpcError),
    /// Transport, authorisation or decoding failure, already mapped.
    Other(LightningError),
}

impl Inner {
    fn url(&self, method: &str) -> Result<Url, LightningError> {
        self.base
            .join(&format!("v1/{method}"))
            .map_err(|e| LightningError::Backend(format!("bad CLN method {method:?}: {e}")))
    }

    /// `POST /v1/<method>` with `params`; `timeout` overrides the default.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &Value,
        timeout: Option<Duration>,
    ) -> Result<T, CallError> {
        let resp = self
            .http
            .post(self.url(method).map_err(CallError::Other)?)
            .timeout(timeout.unwrap_or(self.timeout))
            .header("Rune", self.rune.clone())
            .json(params)
            .send()
            .await
            .map_err(|e| CallError::Other(transport_error(e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let err: RpcError = serde_json::from_str(&text).unwrap_or_else(|_| RpcError {
                code: None,
                message: text.chars().take(200).collect(),
            });
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    CallError::Other(LightningError::Backend(format!(
                        "CLN refused the rune ({status}; it must allow invoice, listinvoices, listpays and pay): {}",
                        short(&err.message)
                    )))
                }
                StatusCode::INTERNAL_SERVER_ERROR => CallError::Rpc(err),
                _ => CallError::Other(LightningError::Backend(format!(
                    "clnrest answered {status} to {method}: {}",
                    short(&err.message)
                ))),
            });
        }
        resp.json::<T>().await.map_err(|e| {
            CallError::Other(LightningError::Backend(format!(
                "unexpected CLN {method} response: {}",
                e.without_url()
            )))
        })
    }

    async fn lookup(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        #[derive(Deserialize)]
        struct Listed {
            invoices: Vec<ListedInvoice>,
        }
        let listed: Listed = self
            .call(
                "listinvoices",
                &json!({"payment_hash": hash.to_hex()}),
                None,
            )
            .await
            .map_err(|e| match e {
                CallError::Rpc(st) => rpc_error(&st),
                CallError::Other(e) => e,
            })?;
        let inv = listed.invoices.first().ok_or(LightningError::NotFound)?;
        invoice_status(inv, hash, now_secs())
    }

    /// `listpays` for `hash`: every payment attempt this node made to it.
    async fn list_pays(&self, hash: &PaymentHash) -> Result<Vec<ListedPay>, LightningError> {
        #[derive(Deserialize)]
        struct Pays {
            pays: Vec<ListedPay>,
        }
        let pays: Pays = self
            .call("listpays", &json!({"payment_hash": hash.to_hex()}), None)
            .await
            .map_err(|e| match e {
                CallError::Rpc(st) => rpc_error(&st),
                CallError::Other(e) => e,
            })?;
        Ok(pays.pays)
    }

    /// `AlreadyPaid` when this node already completed a payment of `hash`
    /// (CLN's `pay` would replay that success instead of failing).
    async fn refuse_if_paid(&self, hash: &PaymentHash) -> Result<(), LightningError> {
        let pays = self.list_pays(hash).await?;
        if pays.iter().any(|p| p.status == "complete") {
            return Err(LightningError::AlreadyPaid);
        }
        if pays.iter().any(|p| p.status == "pending") {
            return Err(LightningError::Backend(
                "a payment of this invoice is already in flight at CLN; look it up before retrying"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Polled for Inner {
    const NAME: &'static str = "cln";

    fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    async fn lookup(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        Inner::lookup(self, hash).await
    }
}

/// Map a `pay` error by its code (`doc/schemas/pay.json`).
pub(crate) fn pay_error(err: &RpcError) -> LightningError {
    match err.code.unwrap_or(0) {
        // 201: already paid with this hash (other amount or destination);
        // 219: injectpaymentonion's "already paid this invoice".
        201 | 219 => LightningError::AlreadyPaid,
        207 => LightningError::Expired,
        215 => LightningError::InsufficientBalance,
        205 => LightningError::Backend(format!(
            "CLN found no route to the payee: {}",
            short(&err.message)
        )),
        206 => LightningError::Backend(format!(
            "CLN found only routes above the fee limit: {}",
            short(&err.message)
        )),
        210 => LightningError::Backend(format!(
            "CLN ran out of routes to try (none within the fee limit, or retry_for passed): {}",
            short(&err.message)
        )),
        // JSON-RPC invalid params: a bolt11 CLN cannot use.
        -32602 => LightningError::InvalidInvoice(short(&err.message)),
        _ => rpc_error(err),
    }
}

/// Any other JSON-RPC error.
fn rpc_error(err: &RpcError) -> LightningError {
    match err.code {
        Some(code) => LightningError::Backend(format!("CLN error {code}: {}", short(&err.message))),
        None => LightningError::Backend(format!("CLN error: {}", short(&err.message))),
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

fn transport_error(e: reqwest::Error) -> LightningError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect (is the URL right, and clnrest-port set?)"
    } else {
        "request failed"
    };
    LightningError::Backend(format!("CLN {what}: {}", e.without_url()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_rune() {
        let config = ClnConfig::new("https://127.0.0.1:3010", "secret-rune-abc");
        let shown = format!("{config:?}");
        assert!(!shown.contains("secret-rune"), "{shown}");
    }

    #[test]
    fn msat_fields_read_numbers_and_old_strings() {
        let n: MsatField = serde_json::from_value(json!(50001)).unwrap();
        let s: MsatField = serde_json::from_value(json!("50001msat")).unwrap();
        assert_eq!(n, MsatField(50001));
        assert_eq!(s, MsatField(50001));
        assert!(serde_json::from_value::<MsatField>(json!(-1)).is_err());
    }

    #[test]
    fn pay_codes_map_to_port_errors() {
        let e = |code| RpcError {
            code: Some(code),
            message: "m".into(),
        };
        assert!(matches!(pay_error(&e(201)), LightningError::AlreadyPaid));
        assert!(matches!(pay_error(&e(207)), LightningError::Expired));
        assert!(matches!(
            pay_error(&e(215)),
            LightningError::InsufficientBalance
        ));
        assert!(matches!(pay_error(&e(205)), LightningError::Backend(_)));
        assert!(matches!(
            pay_error(&e(-32602)),
            LightningError::InvalidInvoice(_)
        ));
    }

    fn pay(hash: &PaymentHash, status: &str, preimage: Option<&Preimage>) -> ListedPay {
        ListedPay {
            payment_hash: Some(hash.to_hex()),
            status: status.into(),
            preimage: preimage.map(Preimage::to_hex),
            amount_msat: Some(MsatField(1000)),
            amount_sent_msat: preimage.map(|_| MsatField(1002)),
        }
    }

    #[test]
    fn several_attempts_of_one_hash_read_as_the_most_advanced() {
        let preimage = Preimage([7; 32]);
        let hash = preimage.payment_hash();
        assert_eq!(pays_status(&[], &hash).unwrap(), PaymentStatus::NotFound);
        let failed = pay(&hash, "failed", None);
        let pending = pay(&hash, "pending", None);
        let complete = pay(&hash, "complete", Some(&preimage));
        assert_eq!(
            pays_status(&[pay(&hash, "failed", None), failed], &hash).unwrap(),
            PaymentStatus::Failed
        );
        assert_eq!(
            pays_status(&[pay(&hash, "failed", None), pending], &hash).unwrap(),
            PaymentStatus::Pending,
            "a retry in flight may still pay"
        );
        assert_eq!(
            pays_status(&[pay(&hash, "failed", None), complete], &hash).unwrap(),
            PaymentStatus::Succeeded {
                preimage,
                fee: Msat::from_msat(2)
            }
        );
        let wrong = pay(&hash, "complete", Some(&Preimage([8; 32])));
        assert!(pays_status(&[wrong], &hash).is_err());
        let odd = pay(&hash, "weird", None);
        assert!(pays_status(&[odd], &hash).is_err());
    }

    #[test]
    fn an_unpaid_invoice_past_its_expiry_is_expired() {
        let hash = PaymentHash([3; 32]);
        let inv = ListedInvoice {
            payment_hash: hash.to_hex(),
            status: "unpaid".into(),
            expires_at: Some(100),
            payment_preimage: None,
            amount_received_msat: None,
        };
        assert_eq!(
            invoice_status(&inv, &hash, 99).unwrap(),
            InvoiceStatus::Pending
        );
        assert_eq!(
            invoice_status(&inv, &hash, 100).unwrap(),
            InvoiceStatus::Expired
        );
    }
}
