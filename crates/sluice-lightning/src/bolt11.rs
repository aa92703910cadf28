//! BOLT11 decoding shared by the adapters (and useful to the gateway, e.g. to
//! check a withdrawal invoice before handing it to a backend).
//!
//! Decoding checks the signature, so the payee key is the one that signed.

use std::str::FromStr;
use std::time::Duration;

use sluice_env::Clock as _;

use bitcoin::hashes::Hash as _;
use lightning_invoice::{
    Bolt11Invoice, DEFAULT_EXPIRY_TIME, DEFAULT_MIN_FINAL_CLTV_EXPIRY_DELTA, SignedRawBolt11Invoice,
};
use sluice_core::Msat;

use crate::{LightningError, PaymentHash};

/// The parts of a BOLT11 invoice sluice cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedInvoice {
    /// The payment hash.
    pub payment_hash: PaymentHash,
    /// The amount, if the invoice names one.
    pub amount: Option<Msat>,
    /// Creation time, unix seconds.
    pub timestamp: u64,
    /// Unix seconds after which it can no longer be paid.
    pub expires_at: u64,
    /// The payee's node public key (compressed, hex).
    pub payee: String,
    /// The description, if it is a direct one (not a hash).
    pub description: Option<String>,
    /// The minimum final CLTV expiry delta.
    pub min_final_cltv_expiry_delta: u64,
}

impl DecodedInvoice {
    /// Whether the invoice is past its expiry at `now` (unix seconds).
    pub fn is_expired_at(&self, now: u64) -> bool {
        now >= self.expires_at
    }
}

/// Parse a BOLT11 string (any network) and check its signature.
///
/// Deliberately more lenient than [`lightning_invoice::Bolt11Invoice`]'s
/// parser: that one insists on the feature bits field (with
/// `payment_secret`), which some issuers omit — LNbits' FakeWallet, for one.
/// sluice only reads an invoice here; the paying node applies its own rules.
pub fn decode(bolt11: &str) -> Result<DecodedInvoice, LightningError> {
    let bad =
        |why: String| LightningError::InvalidInvoice(format!("not a valid BOLT11 invoice: {why}"));
    let signed = SignedRawBolt11Invoice::from_str(bolt11.trim()).map_err(|e| bad(e.to_string()))?;
    if !signed.check_signature() {
        return Err(bad("bad signature".into()));
    }
    let payee = match signed.raw_invoice().payee_pub_key() {
        Some(pk) => pk.0,
        None => {
            signed
                .recover_payee_pub_key()
                .map_err(|_| bad("bad signature".into()))?
                .0
        }
    };
    let raw = signed.raw_invoice();
    let payment_hash = raw
        .payment_hash()
        .ok_or_else(|| bad("no payment hash".into()))?;
    let amount = match raw.amount_pico_btc() {
        None => None,
        // BOLT11: an amount that is not a whole number of msat is invalid.
        Some(pico) if !pico.is_multiple_of(10) => {
            return Err(bad("amount is not a whole number of msat".into()));
        }
        Some(pico) => Some(Msat::from_msat(pico / 10)),
    };
    let timestamp = raw.data.timestamp.as_unix_timestamp();
    let expiry = raw
        .expiry_time()
        .map_or(DEFAULT_EXPIRY_TIME, |e| e.as_seconds());
    Ok(DecodedInvoice {
        payment_hash: PaymentHash(payment_hash.0.to_byte_array()),
        amount,
        timestamp,
        expires_at: timestamp.saturating_add(expiry),
        payee: payee.to_string(),
        description: raw.description().map(|d| d.to_string()),
        min_final_cltv_expiry_delta: raw
            .min_final_cltv_expiry_delta()
            .map_or(DEFAULT_MIN_FINAL_CLTV_EXPIRY_DELTA, |d| d.0),
    })
}

/// Parse strictly into lightning-invoice's type (the dev wallet's own
/// invoices always pass), mapping errors to [`LightningError`].
pub(crate) fn parse(bolt11: &str) -> Result<Bolt11Invoice, LightningError> {
    Bolt11Invoice::from_str(bolt11.trim())
        .map_err(|e| LightningError::InvalidInvoice(format!("not a valid BOLT11 invoice: {e}")))
}

/// The sluice view of a parsed invoice.
pub(crate) fn describe(invoice: &Bolt11Invoice) -> DecodedInvoice {
    let timestamp = invoice.duration_since_epoch().as_secs();
    let description = match invoice.description() {
        lightning_invoice::Bolt11InvoiceDescriptionRef::Direct(d) => Some(d.to_string()),
        lightning_invoice::Bolt11InvoiceDescriptionRef::Hash(_) => None,
    };
    DecodedInvoice {
        payment_hash: PaymentHash(invoice.payment_hash().to_byte_array()),
        amount: invoice.amount_milli_satoshis().map(Msat::from_msat),
        timestamp,
        expires_at: timestamp.saturating_add(invoice.expiry_time().as_secs()),
        payee: invoice.get_payee_pub_key().to_string(),
        description,
        min_final_cltv_expiry_delta: invoice.min_final_cltv_expiry_delta(),
    }
}

/// Unix time now, in seconds, by the host's clock: the real backends' nodes
/// run on it. A clock before 1970 reads as 0 (invoices then look unexpired,
/// which errs towards a later, authoritative lookup).
pub(crate) fn now_secs() -> u64 {
    sluice_env::SystemClock.now_secs()
}

/// Unix milliseconds as time since the epoch (0 before it).
pub(crate) fn since_epoch(now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(now_ms).unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An invoice from LNbits 1.6.2's FakeWallet: no feature bits field, which
    /// lightning-invoice's strict parser rejects.
    const LNBITS_FAKEWALLET: &str = "lnbc100n1p4sr9tqdqzd5xqzjcsp5gk75xdmpg6qcg7w9htdw6ec9vlek2a54uxmkvsmkeak9f88ur4xspp5vgam7y5landxa6lmepstea62c0xdd7f8t7dsz879zjza0ptawxqqmxtyu99rr7u9t6rdk66mcxsurt57p8llvlkfx2z9nt8kcjmmgpy4gxefaaaex7cc7tn28v7k0czf09admmvfd9p58rwwkw9lxslmlngq2sa4tg";

    #[test]
    fn decodes_lnbits_fakewallet_invoices_without_feature_bits() {
        assert!(
            parse(LNBITS_FAKEWALLET).is_err(),
            "the strict parser rejects it"
        );
        let d = decode(LNBITS_FAKEWALLET).unwrap();
        assert_eq!(
            d.payment_hash.to_hex(),
            "623bbf129fecda6eebfbc860bcf74ac3ccd6f9275f9b011fc51485d7857d7180"
        );
        assert_eq!(d.amount, Some(Msat::from_msat(10_000)));
        assert_eq!(d.expires_at - d.timestamp, 600);
        assert_eq!(d.description.as_deref(), Some("m"));
    }

    #[test]
    fn rejects_corrupted_invoices() {
        // One changed character breaks the checksum (or, failing that, the signature).
        let mut s = LNBITS_FAKEWALLET.to_owned();
        s.replace_range(20..21, if &s[20..21] == "q" { "p" } else { "q" });
        assert!(matches!(decode(&s), Err(LightningError::InvalidInvoice(_))));
        assert!(matches!(
            decode("lnbc1garbage"),
            Err(LightningError::InvalidInvoice(_))
        ));
    }
}
