//! The dev network's customer side (with the dev wallet only): paying the
//! gateway's invoices and issuing invoices for it to pay — clearly not real
//! money — and the LNbits webhook's look-up.

use std::{sync::Arc, time::Duration};

use sluice_core::Msat;
use sluice_lightning::{
    Invoice, InvoiceStatus, Lightning, LightningError, PaymentHash, dev::DevWallet,
};

use crate::{ServiceError, Sluice};

/// A dev payment made.
#[derive(Debug, Clone)]
pub struct DevPaid {
    /// What was paid.
    pub payment_hash: PaymentHash,
    /// Its proof.
    pub preimage: String,
}

impl Sluice {
    /// The customer's side of the dev wallet; not found without it.
    fn dev_customer(&self) -> Result<DevWallet, ServiceError> {
        self.dev_wallet
            .as_ref()
            .map(|w| w.counterparty())
            .ok_or_else(|| ServiceError::not_found("not_found", "no such endpoint"))
    }

    /// The customer pays one of the gateway's dev invoices; it is credited at
    /// once rather than when the settlement event arrives.
    pub async fn dev_pay(self: &Arc<Self>, bolt11: &str) -> Result<DevPaid, ServiceError> {
        let wallet = self.dev_customer()?;
        match wallet.pay_invoice(bolt11.trim(), Msat::ZERO).await {
            Ok(p) => {
                crate::payments::credit(self, &p.payment_hash, &p.preimage.to_hex()).await;
                Ok(DevPaid {
                    payment_hash: p.payment_hash,
                    preimage: p.preimage.to_hex(),
                })
            }
            Err(LightningError::InvalidInvoice(m)) => {
                Err(ServiceError::bad_request("invalid_invoice", m))
            }
            Err(LightningError::AlreadyPaid) => Err(ServiceError::bad_request(
                "invoice_already_paid",
                "this invoice is already paid",
            )),
            Err(LightningError::Expired) => Err(ServiceError::bad_request(
                "invoice_expired",
                "this invoice has expired",
            )),
            Err(LightningError::NotFound) => Err(ServiceError::bad_request(
                "invalid_invoice",
                "the dev wallet did not issue this invoice",
            )),
            Err(e) => Err(ServiceError::internal(&e)),
        }
    }

    /// An invoice of the customer's own dev wallet, for the gateway to pay (a
    /// refund claim): `memo` at most 256 bytes, `expiry_secs` 1 s to a week
    /// (default: invoices' usual expiry).
    pub async fn dev_invoice(
        &self,
        amount_sats: u64,
        memo: Option<String>,
        expiry_secs: Option<u64>,
    ) -> Result<Invoice, ServiceError> {
        let wallet = self.dev_customer()?;
        let amount = Msat::from_sats(amount_sats)
            .ok()
            .filter(|a| *a > Msat::ZERO)
            .ok_or_else(|| {
                ServiceError::bad_request(
                    "amount_out_of_range",
                    "amount_sats must be a positive number of sats",
                )
            })?;
        let memo = memo.unwrap_or_else(|| "sluice dev wallet: customer invoice".into());
        if memo.len() > 256 {
            return Err(ServiceError::bad_request(
                "invalid_request",
                "memo is longer than 256 bytes",
            ));
        }
        let expiry = expiry_secs.map_or(self.invoice_expiry, |s| {
            Duration::from_secs(s.clamp(1, 7 * 86_400))
        });
        wallet
            .create_invoice(amount, &memo, expiry)
            .await
            .map_err(|e| ServiceError::internal(&e))
    }

    /// Whether a customer dev invoice was paid: `pending`, `paid` or `expired`.
    pub async fn dev_invoice_status(
        &self,
        hash: &PaymentHash,
    ) -> Result<&'static str, ServiceError> {
        let wallet = self.dev_customer()?;
        match wallet.lookup_invoice(hash).await {
            Ok(InvoiceStatus::Pending) => Ok("pending"),
            Ok(InvoiceStatus::Settled { .. }) => Ok("paid"),
            Ok(InvoiceStatus::Expired) => Ok("expired"),
            Err(LightningError::NotFound) => Err(ServiceError::not_found(
                "invoice_not_found",
                "the customer's dev wallet issued no invoice with this hash",
            )),
            Err(e) => Err(ServiceError::internal(&e)),
        }
    }

    /// LNbits says an invoice settled. The body is only a hint: the invoice is
    /// looked up (in a tracked task, after the caller has its answer: LNbits
    /// waits for that answer before it will answer the look-up) before
    /// anything is credited. False without LNbits.
    pub fn lnbits_webhook(self: &Arc<Self>, body: bytes::Bytes) -> bool {
        let Some(ln) = self.lnbits.clone() else {
            return false;
        };
        let s = self.clone();
        self.tasks.spawn(async move {
            match ln.handle_webhook(&body).await {
                Ok(Some(settled)) => {
                    crate::payments::credit(&s, &settled.payment_hash, &settled.preimage.to_hex())
                        .await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "an LNbits webhook could not be checked"),
            }
        });
        true
    }
}
