//! The LND adapter: a client of LND's REST API (the grpc-gateway on port
//! 8080), field names as in `lnrpc/lightning.swagger.json` and
//! `lnrpc/routerrpc/router.swagger.json`.
//!
//! Calls used:
//! - `POST /v1/invoices` (AddInvoice) with `value_msat`, `memo`, `expiry`;
//! - `GET /v1/invoice/{r_hash_str}` (LookupInvoice, hash in hex);
//! - `POST /v2/router/send` (SendPaymentV2) with `payment_request`,
//!   `fee_limit_msat`, `timeout_seconds`, `no_inflight_updates`: its answer
//!   is a stream of JSON lines, `{"result": Payment}` or `{"error": Status}`;
//!   sluice reads until a final `SUCCEEDED`/`FAILED` status. (The older
//!   SendPaymentSync, `/v1/channels/transactions`, is deprecated and gone from
//!   current LND's REST API, so it is not used.)
//! - `GET /v2/router/track/{payment_hash}` (TrackPaymentV2, the hash in
//!   URL-safe base64 as grpc-gateway reads `bytes` path parameters) for
//!   [`Lightning::lookup_payment`]: a stream whose first message is the
//!   payment's current state (`IN_FLIGHT`/`INITIATED` → pending, `SUCCEEDED`
//!   → succeeded, `FAILED` → failed); sluice reads that one line and hangs
//!   up. A payment LND never started is gRPC `NotFound` with "payment isn't
//!   initiated" → not found; any other error, a bare 404 included, is an
//!   error, never "not found", since "not found" means safe to pay again.
//!
//! Encoding, as grpc-gateway writes it: `bytes` fields (`r_hash`,
//! `r_preimage`) are base64; 64-bit integers are JSON strings; enums are
//! their names. Errors are a `google.rpc.Status` (`code`, `message`), bare
//! for unary calls and wrapped in `{"error": ...}` on streams.
//!
//! Authentication: the macaroon, hex-encoded, in the `Grpc-Metadata-macaroon`
//! header on every call (never logged; `Debug` redacts it). LND serves a
//! self-signed certificate marked as a CA, which rustls refuses as a server
//! certificate (`CaUsedAsEndEntity`, lnd#5450); so when
//! [`LndConfig::tls_cert_pem`] is given, the connection is pinned to exactly
//! that certificate instead (see the `pinned` module).
//!
//! Settlements reach [`Lightning::subscribe`] by polling: a background task
//! looks up, every `poll_interval`, the invoices this instance created (and
//! any added with [`Lnd::watch`]) that are still pending. LND's streaming
//! `GET /v1/invoices/subscribe` would be quicker, but a poll needs no
//! long-lived connection and lookups are the truth anyway.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use futures::StreamExt as _;
use reqwest::header::HeaderValue;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::Msat;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::bolt11::{self, now_secs};
use crate::poll::{PayLocks, Polled, Watcher, poll_loop};
use crate::{
    Invoice, InvoiceStatus, Lightning, LightningError, Payment, PaymentHash, PaymentStatus,
    Preimage, Settled,
};

/// Default interval between lookups of pending invoices.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default timeout of one HTTP call to LND.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time LND may spend finding a route (`timeout_seconds`).
pub const DEFAULT_PAY_TIMEOUT: Duration = Duration::from_secs(60);
/// The header LND's REST gateway reads the macaroon from.
pub const MACAROON_HEADER: &str = "Grpc-Metadata-macaroon";

/// How to reach one LND node over REST.
#[derive(Clone)]
pub struct LndConfig {
    /// Base URL of LND's REST listener, e.g. `https://127.0.0.1:8080`.
    pub url: String,
    /// The macaroon, hex-encoded (`xxd -p -c 10000 admin.macaroon`). It needs
    /// `invoices:read`, `invoices:write` and, to pay, `offchain:write` (and
    /// `offchain:read` to look payments up).
    pub macaroon_hex: String,
    /// LND's `tls.cert` (PEM). When set, the server must present exactly this
    /// certificate (no other is trusted; host name and validity dates are
    /// not checked, the pin is stronger); when `None` the system's web roots
    /// apply (a node behind a proxy with a public certificate, or plain
    /// `http`).
    pub tls_cert_pem: Option<String>,
    /// How often pending invoices are looked up.
    pub poll_interval: Duration,
    /// Timeout of every HTTP call except the payment's route search.
    pub timeout: Duration,
    /// How long LND may look for a route before giving up
    /// (`timeout_seconds`); the payment call waits this plus `timeout`.
    pub pay_timeout: Duration,
}

impl LndConfig {
    /// A config with default intervals and timeouts and no pinned certificate.
    pub fn new(url: impl Into<String>, macaroon_hex: impl Into<String>) -> Self {
        LndConfig {
            url: url.into(),
            macaroon_hex: macaroon_hex.into(),
            tls_cert_pem: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            pay_timeout: DEFAULT_PAY_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for LndConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LndConfig")
            .field("url", &self.url)
            .field("macaroon_hex", &"<redacted>")
            .field("tls_cert_pem", &self.tls_cert_pem.as_ref().map(|_| "<pem>"))
            .field("poll_interval", &self.poll_interval)
            .field("timeout", &self.timeout)
            .field("pay_timeout", &self.pay_timeout)
            .finish()
    }
}

/// The LND backend. Dropping it stops its poller.
pub struct Lnd {
    inner: Arc<Inner>,
    poller: JoinHandle<()>,
}

impl std::fmt::Debug for Lnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lnd")
            .field("url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for Lnd {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

struct Inner {
    http: reqwest::Client,
    /// Base URL, always ending in `/`.
    base: Url,
    macaroon: HeaderValue,
    timeout: Duration,
    pay_timeout: Duration,
    watcher: Watcher,
    pay_locks: PayLocks,
}

impl Lnd {
    /// A client for the node in `config`. Must be called inside a tokio
    /// runtime: it starts the settlement poller there.
    pub fn new(config: LndConfig) -> Result<Lnd, LightningError> {
        let base = base_url(&config.url, "LND")?;
        if config.poll_interval.is_zero() || config.timeout.is_zero() {
            return Err(LightningError::Backend(
                "LND poll_interval and timeout must be positive".into(),
            ));
        }
        if config.pay_timeout < Duration::from_secs(1) {
            return Err(LightningError::Backend(
                "LND pay_timeout must be at least one second".into(),
            ));
        }
        let hex_ok = !config.macaroon_hex.trim().is_empty()
            && hex::decode(config.macaroon_hex.trim()).is_ok();
        if !hex_ok {
            return Err(LightningError::Backend(
                "the LND macaroon must be the hex encoding of the macaroon file".into(),
            ));
        }
        let mut macaroon = HeaderValue::from_str(config.macaroon_hex.trim())
            .map_err(|_| LightningError::Backend("the LND macaroon is not valid hex".into()))?;
        macaroon.set_sensitive(true);
        let mut builder = reqwest::Client::builder().connect_timeout(config.timeout);
        if let Some(pem) = &config.tls_cert_pem {
            builder = builder.tls_backend_preconfigured(pinned::client_config(pem)?);
        }
        let http = builder.build().map_err(|e| {
            LightningError::Backend(format!(
                "cannot build the HTTP client for LND (bad tls_cert_pem, or no rustls crypto provider installed?): {e}"
            ))
        })?;
        let runtime = crate::runtime("Lnd::new")?;
        let inner = Arc::new(Inner {
            http,
            base,
            macaroon,
            timeout: config.timeout,
            pay_timeout: config.pay_timeout,
            watcher: Watcher::new(),
            pay_locks: PayLocks::default(),
        });
        let poller = runtime.spawn(poll_loop(Arc::downgrade(&inner), config.poll_interval));
        Ok(Lnd { inner, poller })
    }

    /// Also watch an invoice this instance did not create (e.g. one created
    /// before a restart), so its settlement is announced.
    pub fn watch(&self, hash: PaymentHash) {
        self.inner.watcher.watch(hash);
    }
}

#[async_trait]
impl Lightning for Lnd {
    fn name(&self) -> &'static str {
        "lnd"
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
        // int64 fields travel as JSON strings in LND's REST encoding.
        let body = json!({
            "value_msat": amount.msat().to_string(),
            "memo": memo,
            "expiry": expiry_secs.to_string(),
        });

        #[derive(Deserialize)]
        struct Added {
            r_hash: String,
            payment_request: String,
        }
        let resp = self
            .inner
            .send(self.inner.post("v1/invoices")?.json(&body))
            .await?;
        let added: Added = read_json(resp).await?;
        let payment_hash =
            PaymentHash(decode_bytes32(&added.r_hash).ok_or_else(|| {
                LightningError::Backend("LND returned a malformed r_hash".into())
            })?);
        let decoded = bolt11::decode(&added.payment_request)
            .map_err(|e| LightningError::Backend(format!("LND returned {e}")))?;
        if decoded.payment_hash != payment_hash || decoded.amount != Some(amount) {
            return Err(LightningError::Backend(
                "LND returned an invoice for another hash or amount".into(),
            ));
        }
        self.inner.watcher.watch(payment_hash);
        Ok(Invoice {
            bolt11: added.payment_request,
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
        let timeout_seconds = i32::try_from(self.inner.pay_timeout.as_secs()).unwrap_or(i32::MAX);
        let body = json!({
            "payment_request": bolt11.trim(),
            "fee_limit_msat": max_fee.msat().to_string(),
            "timeout_seconds": timeout_seconds,
            "no_inflight_updates": true,
        });
        let request = self
            .inner
            .post("v2/router/send")?
            .timeout(self.inner.pay_timeout.saturating_add(self.inner.timeout))
            .json(&body);
        let resp = self.inner.send(request).await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(pay_error(&rpc_status(status, &text), max_fee));
        }
        let payment = read_final_payment(resp, max_fee).await?;
        let preimage = Preimage::from_hex(&payment.payment_preimage)?;
        if preimage.payment_hash() != hash {
            return Err(LightningError::Backend(
                "LND returned a preimage that does not match the invoice".into(),
            ));
        }
        let fee = parse_msat(payment.fee_msat.as_deref(), "fee_msat")?;
        Ok(Payment {
            payment_hash: hash,
            preimage,
            fee,
        })
    }

    async fn lookup_payment(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        self.inner.track(hash).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Settled> {
        self.inner.watcher.subscribe()
    }
}

/// LND's `lnrpc.Invoice`, the fields sluice reads.
#[derive(Debug, Deserialize)]
pub(crate) struct LndInvoice {
    #[serde(default)]
    r_hash: Option<String>,
    #[serde(default)]
    r_preimage: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    amt_paid_msat: Option<String>,
    #[serde(default)]
    creation_date: Option<String>,
    #[serde(default)]
    expiry: Option<String>,
}

/// One streamed update of `lnrpc.Payment`, the fields sluice reads.
#[derive(Debug, Deserialize)]
struct LndPayment {
    #[serde(default)]
    payment_hash: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    payment_preimage: String,
    #[serde(default)]
    fee_msat: Option<String>,
    #[serde(default)]
    failure_reason: Option<String>,
}

/// A `google.rpc.Status` as grpc-gateway writes it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RpcStatus {
    #[serde(default)]
    pub(crate) code: i64,
    #[serde(default)]
    pub(crate) message: String,
    /// The HTTP status it came with (not part of the body).
    #[serde(skip)]
    pub(crate) http: u16,
}

/// The status of an `lnrpc.Invoice` at `now` (unix seconds).
pub(crate) fn invoice_status(
    inv: &LndInvoice,
    hash: &PaymentHash,
    now: u64,
) -> Result<InvoiceStatus, LightningError> {
    if let Some(r_hash) = &inv.r_hash
        && decode_bytes32(r_hash) != Some(hash.0)
    {
        return Err(LightningError::Backend(
            "LND answered a lookup with another invoice".into(),
        ));
    }
    match inv.state.as_deref().unwrap_or("OPEN") {
        "SETTLED" => {
            let preimage = inv
                .r_preimage
                .as_deref()
                .and_then(decode_bytes32)
                .map(Preimage)
                .ok_or_else(|| {
                    LightningError::Backend("LND reports settled without a preimage".into())
                })?;
            if preimage.payment_hash() != *hash {
                return Err(LightningError::Backend(
                    "LND returned a preimage that does not match the invoice".into(),
                ));
            }
            let amount = parse_msat(inv.amt_paid_msat.as_deref(), "amt_paid_msat")?;
            Ok(InvoiceStatus::Settled { preimage, amount })
        }
        // LND cancels an open invoice once it expires.
        "CANCELED" => Ok(InvoiceStatus::Expired),
        // ACCEPTED: a hold invoice's HTLCs are held, not settled yet.
        "OPEN" | "ACCEPTED" => {
            let created = parse_u64(inv.creation_date.as_deref()).unwrap_or(0);
            let expiry = parse_u64(inv.expiry.as_deref()).unwrap_or(0);
            if inv.state.as_deref() == Some("OPEN")
                && created > 0
                && now >= created.saturating_add(expiry)
            {
                Ok(InvoiceStatus::Expired)
            } else {
                Ok(InvoiceStatus::Pending)
            }
        }
        other => Err(LightningError::Backend(format!(
            "LND reports an unknown invoice state {other:?}"
        ))),
    }
}

impl Inner {
    fn url(&self, path: &str) -> Result<Url, LightningError> {
        self.base
            .join(path)
            .map_err(|e| LightningError::Backend(format!("bad LND path {path:?}: {e}")))
    }

    fn post(&self, path: &str) -> Result<reqwest::RequestBuilder, LightningError> {
        Ok(self
            .http
            .post(self.url(path)?)
            .timeout(self.timeout)
            .header(MACAROON_HEADER, self.macaroon.clone()))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, LightningError> {
        request.send().await.map_err(transport_error)
    }

    async fn lookup(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        let request = self
            .http
            .get(self.url(&format!("v1/invoice/{}", hash.to_hex()))?)
            .timeout(self.timeout)
            .header(MACAROON_HEADER, self.macaroon.clone());
        let resp = self.send(request).await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let st = rpc_status(status, &text);
            // gRPC NotFound (5): "unable to locate invoice".
            if st.code == 5 || status == StatusCode::NOT_FOUND {
                return Err(LightningError::NotFound);
            }
            return Err(call_error(&st));
        }
        let inv: LndInvoice = resp.json().await.map_err(|e| {
            LightningError::Backend(format!("unexpected LND response: {}", e.without_url()))
        })?;
        invoice_status(&inv, hash, now_secs())
    }
}

impl Inner {
    /// TrackPaymentV2's first message: the current state of our payment.
    async fn track(&self, hash: &PaymentHash) -> Result<PaymentStatus, LightningError> {
        let path = format!("v2/router/track/{}", URL_SAFE.encode(hash.0));
        let request = self
            .http
            .get(self.url(&path)?)
            .timeout(self.timeout)
            .header(MACAROON_HEADER, self.macaroon.clone());
        let resp = self.send(request).await?;
        let http = resp.status();
        if !http.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let st = rpc_status(http, &text);
            return if is_not_initiated(&st) {
                Ok(PaymentStatus::NotFound)
            } else {
                Err(call_error(&st))
            };
        }
        let line = read_first_line(resp).await?;
        let value: Value = serde_json::from_slice(&line).map_err(|_| {
            LightningError::Backend("LND sent a payment update that is not JSON".into())
        })?;
        if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
            let mut st: RpcStatus = serde_json::from_value(err.clone()).unwrap_or_default();
            st.http = http.as_u16();
            return if is_not_initiated(&st) {
                Ok(PaymentStatus::NotFound)
            } else {
                Err(call_error(&st))
            };
        }
        let result = value.get("result").unwrap_or(&value);
        let payment: LndPayment = serde_json::from_value(result.clone())
            .map_err(|e| LightningError::Backend(format!("unexpected LND payment update: {e}")))?;
        payment_status(&payment, hash)
    }
}

/// Whether an error status is LND's "no payment to this hash was started"
/// (`ErrPaymentNotInitiated`, sent as gRPC NotFound).
fn is_not_initiated(st: &RpcStatus) -> bool {
    st.message
        .to_ascii_lowercase()
        .contains("payment isn't initiated")
}

/// The port's view of a tracked `lnrpc.Payment` for `hash`.
fn payment_status(
    payment: &LndPayment,
    hash: &PaymentHash,
) -> Result<PaymentStatus, LightningError> {
    if let Some(h) = payment.payment_hash.as_deref().filter(|h| !h.is_empty())
        && !h.eq_ignore_ascii_case(&hash.to_hex())
    {
        return Err(LightningError::Backend(
            "LND answered a payment lookup with another payment".into(),
        ));
    }
    match payment.status.as_deref() {
        Some("SUCCEEDED") => {
            let preimage = Preimage::from_hex(&payment.payment_preimage)?;
            if preimage.payment_hash() != *hash {
                return Err(LightningError::Backend(
                    "LND returned a preimage that does not match the payment".into(),
                ));
            }
            let fee = parse_msat(payment.fee_msat.as_deref(), "fee_msat")?;
            Ok(PaymentStatus::Succeeded { preimage, fee })
        }
        Some("FAILED") => Ok(PaymentStatus::Failed),
        // INITIATED (LND 0.18+): created, no HTLC sent yet; it may still go out.
        Some("IN_FLIGHT" | "INITIATED") => Ok(PaymentStatus::Pending),
        other => Err(LightningError::Backend(format!(
            "LND reports an unknown payment status {:?}",
            other.map(short)
        ))),
    }
}

/// The first non-empty line of a JSON-lines stream (the rest is not read:
/// an in-flight payment's stream stays open).
async fn read_first_line(resp: reqwest::Response) -> Result<Vec<u8>, LightningError> {
    /// A payment update is a few kB; refuse to buffer without bound.
    const MAX_LINE: usize = 1 << 20;
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if !line.trim_ascii().is_empty() {
                return Ok(line);
            }
        }
        if buf.len() > MAX_LINE {
            return Err(LightningError::Backend(
                "LND sent an oversized payment update".into(),
            ));
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(transport_error(e)),
            None if buf.trim_ascii().is_empty() => {
                return Err(LightningError::Backend(
                    "the LND payment tracking stream ended without an update".into(),
                ));
            }
            None => return Ok(buf),
        }
    }
}

impl Polled for Inner {
    const NAME: &'static str = "lnd";

    fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    async fn lookup(&self, hash: &PaymentHash) -> Result<InvoiceStatus, LightningError> {
        Inner::lookup(self, hash).await
    }
}

mod pinned {
    //! TLS pinned to one certificate, for LND's self-signed `tls.cert`.
    //!
    //! webpki refuses a certificate with the CA flag as a server certificate,
    //! and LND's is one. Instead of path building, the server's certificate
    //! must be byte-for-byte the configured one; the handshake signature is
    //! still verified against its key, so only the holder of LND's private
    //! key can complete the handshake.

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

    use crate::LightningError;

    /// Accepts only the pinned certificate.
    #[derive(Debug)]
    struct PinnedCert {
        der: Vec<u8>,
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for PinnedCert {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if end_entity.as_ref() == self.der.as_slice() {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A rustls client config trusting exactly the first certificate in
    /// `pem`, with the process's default crypto provider (ring otherwise).
    pub fn client_config(pem: &str) -> Result<rustls::ClientConfig, LightningError> {
        let bad = |why: String| {
            LightningError::Backend(format!("LND tls_cert_pem is not a PEM certificate: {why}"))
        };
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or_else(|| bad("no CERTIFICATE block".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let verifier = PinnedCert {
            der: der.as_ref().to_vec(),
            provider: provider.clone(),
        };
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LightningError::Backend(format!("TLS setup for LND failed: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth())
    }
}

/// Read SendPaymentV2's stream of JSON lines until a final status.
async fn read_final_payment(
    resp: reqwest::Response,
    max_fee: Msat,
) -> Result<LndPayment, LightningError> {
    let http = resp.status().as_u16();
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if let Some(done) = stream_line(&line, http, max_fee)? {
                return Ok(done);
            }
        }
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(LightningError::Backend(format!(
                    "the LND payment stream broke ({}); the payment may still complete: look it up before retrying",
                    transport_error(e)
                )));
            }
            None => {
                // A last line without a newline.
                if let Some(done) = stream_line(&buf, http, max_fee)? {
                    return Ok(done);
                }
                return Err(LightningError::Backend(
                    "the LND payment stream ended before a final status; the payment may still complete".into(),
                ));
            }
        }
    }
}

/// One line of the payment stream: `Some` when it is the final success.
fn stream_line(
    line: &[u8],
    http: u16,
    max_fee: Msat,
) -> Result<Option<LndPayment>, LightningError> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(text).map_err(|_| {
        LightningError::Backend("LND sent a payment update that is not JSON".into())
    })?;
    if let Some(err) = value.get("error").filter(|e| !e.is_null()) {
        let mut st: RpcStatus = serde_json::from_value(err.clone()).unwrap_or_default();
        st.http = http;
        return Err(pay_error(&st, max_fee));
    }
    let result = value.get("result").unwrap_or(&value);
    let payment: LndPayment = serde_json::from_value(result.clone())
        .map_err(|e| LightningError::Backend(format!("unexpected LND payment update: {e}")))?;
    match payment.status.as_deref() {
        Some("SUCCEEDED") => Ok(Some(payment)),
        Some("FAILED") => Err(failure_reason(
            payment
                .failure_reason
                .as_deref()
                .unwrap_or("FAILURE_REASON_NONE"),
            max_fee,
        )),
        _ => Ok(None),
    }
}

/// Map a failed payment's `failure_reason`.
pub(crate) fn failure_reason(reason: &str, max_fee: Msat) -> LightningError {
    match reason {
        "FAILURE_REASON_INSUFFICIENT_BALANCE" => LightningError::InsufficientBalance,
        "FAILURE_REASON_NO_ROUTE" => LightningError::Backend(format!(
            "LND found no route to the payee within the fee limit of {} msat",
            max_fee.msat()
        )),
        "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS" => LightningError::Backend(
            "the payee rejected the payment (unknown invoice, wrong amount, or already paid)"
                .into(),
        ),
        "FAILURE_REASON_TIMEOUT" => {
            LightningError::Backend("LND gave up finding a route (payment timeout)".into())
        }
        other => LightningError::Backend(format!("LND reports the payment failed: {other}")),
    }
}

/// Map an error status of SendPaymentV2 (refused before any attempt).
pub(crate) fn pay_error(st: &RpcStatus, max_fee: Msat) -> LightningError {
    let lower = st.message.to_ascii_lowercase();
    if lower.contains("already paid") || lower.contains("already succeeded") {
        LightningError::AlreadyPaid
    } else if lower.contains("invoice expired") {
        LightningError::Expired
    } else if lower.contains("payment is in transition") || lower.contains("already exists") {
        LightningError::Backend(
            "a payment of this invoice is already in flight at LND; look it up before retrying"
                .into(),
        )
    } else if lower.contains("insufficient") {
        LightningError::InsufficientBalance
    } else if lower.contains("invalid payment request")
        || lower.contains("amount must be specified")
        || lower.contains("checksum failed")
    {
        LightningError::InvalidInvoice(short(&st.message))
    } else if lower.starts_with("failure_reason_") {
        failure_reason(&st.message, max_fee)
    } else {
        call_error(st)
    }
}

/// A non-payment error status, with the macaroon case spelled out.
pub(crate) fn call_error(st: &RpcStatus) -> LightningError {
    let lower = st.message.to_ascii_lowercase();
    // gRPC Unauthenticated (16) / PermissionDenied (7), or LND's macaroon
    // checks, which come back as Unknown (2) with these messages.
    if st.code == 16
        || st.code == 7
        || lower.contains("macaroon")
        || lower.contains("verification failed")
        || lower.contains("permission denied")
    {
        LightningError::Backend(format!(
            "LND refused the macaroon (is it the right node's, with invoice and offchain rights?): {}",
            short(&st.message)
        ))
    } else {
        LightningError::Backend(format!(
            "LND answered {} (code {}): {}",
            st.http,
            st.code,
            short(&st.message)
        ))
    }
}

/// The status in an error body: bare, or wrapped in `{"error": ...}`.
pub(crate) fn rpc_status(http: StatusCode, text: &str) -> RpcStatus {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let inner = value
        .get("error")
        .filter(|e| e.is_object())
        .unwrap_or(&value);
    let mut st: RpcStatus = serde_json::from_value(inner.clone()).unwrap_or_default();
    if st.message.is_empty() {
        st.message = text.chars().take(200).collect();
    }
    st.http = http.as_u16();
    st
}

/// A 32-byte `bytes` field: base64 (standard or URL-safe), or hex.
pub(crate) fn decode_bytes32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let bytes = STANDARD
        .decode(s)
        .or_else(|_| URL_SAFE.decode(s))
        .ok()
        .filter(|b| b.len() == 32)
        .or_else(|| hex::decode(s).ok().filter(|b| b.len() == 32))?;
    bytes.try_into().ok()
}

fn parse_u64(s: Option<&str>) -> Option<u64> {
    s.and_then(|s| s.trim().parse().ok())
}

/// An int64 msat string (absent means zero, as proto3 omits defaults).
fn parse_msat(s: Option<&str>, field: &str) -> Result<Msat, LightningError> {
    match s {
        None => Ok(Msat::ZERO),
        Some(s) => s
            .trim()
            .parse::<u64>()
            .map(Msat::from_msat)
            .map_err(|_| LightningError::Backend(format!("LND sent a malformed {field} {s:?}"))),
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T, LightningError> {
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(call_error(&rpc_status(status, &text)));
    }
    resp.json::<T>().await.map_err(|e| {
        LightningError::Backend(format!("unexpected LND response: {}", e.without_url()))
    })
}

/// Parse a node's base URL, checking the scheme and ending it in `/`.
pub(crate) fn base_url(url: &str, who: &str) -> Result<Url, LightningError> {
    let mut base = Url::parse(url.trim())
        .map_err(|e| LightningError::Backend(format!("bad {who} URL {url:?}: {e}")))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(LightningError::Backend(format!(
            "{who} URL must be http(s), got {url:?}"
        )));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

fn transport_error(e: reqwest::Error) -> LightningError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect (is the URL right, and tls_cert_pem its tls.cert?)"
    } else {
        "request failed"
    };
    LightningError::Backend(format!("LND {what}: {}", e.without_url()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_macaroon() {
        let config = LndConfig::new("https://127.0.0.1:8080", "0201036c6e64deadbeef");
        let shown = format!("{config:?}");
        assert!(!shown.contains("deadbeef"), "{shown}");
    }

    #[test]
    fn bytes_fields_decode_from_base64_or_hex() {
        let raw = [0xfbu8; 32];
        assert_eq!(decode_bytes32(&STANDARD.encode(raw)), Some(raw));
        assert_eq!(decode_bytes32(&URL_SAFE.encode(raw)), Some(raw));
        assert_eq!(decode_bytes32(&hex::encode(raw)), Some(raw));
        assert_eq!(decode_bytes32("AAAA"), None);
    }

    #[test]
    fn an_open_invoice_past_its_expiry_is_expired() {
        let hash = PaymentHash([1; 32]);
        let inv = LndInvoice {
            r_hash: Some(STANDARD.encode(hash.0)),
            r_preimage: None,
            state: Some("OPEN".into()),
            amt_paid_msat: Some("0".into()),
            creation_date: Some("1000".into()),
            expiry: Some("60".into()),
        };
        assert_eq!(
            invoice_status(&inv, &hash, 1059).unwrap(),
            InvoiceStatus::Pending
        );
        assert_eq!(
            invoice_status(&inv, &hash, 1060).unwrap(),
            InvoiceStatus::Expired
        );
        assert!(invoice_status(&inv, &PaymentHash([2; 32]), 1).is_err());
    }

    #[test]
    fn error_messages_map_to_port_errors() {
        let st = |code, message: &str| RpcStatus {
            code,
            message: message.into(),
            http: 500,
        };
        let fee = Msat::from_msat(1);
        assert!(matches!(
            pay_error(&st(6, "invoice is already paid"), fee),
            LightningError::AlreadyPaid
        ));
        assert!(matches!(
            pay_error(
                &st(
                    2,
                    "invoice expired. Valid until 2026-11-21 13:00:00 +0000 UTC"
                ),
                fee
            ),
            LightningError::Expired
        ));
        assert!(matches!(
            failure_reason("FAILURE_REASON_INSUFFICIENT_BALANCE", fee),
            LightningError::InsufficientBalance
        ));
        match call_error(&st(
            2,
            "verification failed: signature mismatch after caveat verification",
        )) {
            LightningError::Backend(m) => assert!(m.contains("refused the macaroon"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
