//! Where a sat enters: the one place a settled invoice is dispatched — to
//! its session (or L402 token) as a credit, or to its job.
//!
//! Settlement pushes from the Lightning backend are a hint for speed; the
//! truth is a lookup. Every pending invoice is looked up at start (invoices
//! settled while the gateway was down) and then every `poll_interval`.
//! Crediting is idempotent in the store, so a push and a poll that both see
//! the same settlement credit it once.

use std::sync::Arc;

use sluice_lightning::{InvoiceStatus, PaymentHash};
use sluice_store::Credit;

use crate::{Sluice, invoices::past_expiry_grace};

/// Credit one settled invoice (idempotent).
pub async fn credit(state: &Arc<Sluice>, hash: &PaymentHash, preimage_hex: &str) {
    let h = hash.to_hex();
    let policy = match state.store.invoice(&h).await {
        Ok(Some(inv)) => state.policy_for(&inv.session_id),
        // Not a session's invoice: perhaps a job's.
        Ok(None) => {
            crate::jobs::invoice_paid(state, &h, preimage_hex).await;
            return;
        }
        Err(e) => {
            tracing::error!(payment_hash = %h, error = %e, "could not read an invoice");
            return;
        }
    };
    match state
        .store
        .credit_invoice(&h, preimage_hex, state.now_ms(), &policy)
        .await
    {
        Ok(Credit::Credited {
            session_id,
            state: st,
            balance,
        }) => {
            tracing::info!(session_id = %session_id, payment_hash = %h, balance_msat = balance.msat(), state = st.as_str(), real_money = state.lightning.is_real_money(), "invoice settled and credited");
        }
        Ok(Credit::AlreadyCredited) => {}
        Err(sluice_store::StoreError::NotFound) => {
            tracing::debug!(payment_hash = %h, "settlement for an invoice this gateway did not issue");
        }
        Err(e) => {
            tracing::error!(payment_hash = %h, error = %e, "could not credit a settled invoice")
        }
    }
}

/// Look up every pending invoice once; credit the settled, expire the expired
/// (once past [`EXPIRY_GRACE_MS`](crate::invoices::EXPIRY_GRACE_MS)).
pub async fn poll_pending(state: &Arc<Sluice>) {
    let pending = match state.store.pending_invoices(500).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "could not list pending invoices");
            return;
        }
    };
    for inv in pending {
        let Ok(hash) = PaymentHash::from_hex(&inv.payment_hash) else {
            continue;
        };
        match state.lightning.lookup_invoice(&hash).await {
            Ok(InvoiceStatus::Settled { preimage, .. }) => {
                credit(state, &hash, &preimage.to_hex()).await
            }
            Ok(InvoiceStatus::Expired) if past_expiry_grace(state.now_ms(), inv.expires_at_ms) => {
                if let Err(e) = state.store.expire_invoice(&inv.payment_hash).await {
                    tracing::error!(error = %e, "could not expire an invoice");
                }
            }
            Ok(InvoiceStatus::Expired | InvoiceStatus::Pending) => {}
            Err(e) => {
                tracing::warn!(payment_hash = %inv.payment_hash, error = %e, "invoice lookup failed")
            }
        }
    }
}

/// Look up everything unpaid: session invoices and job invoices.
pub async fn poll_all(state: &Arc<Sluice>) {
    poll_pending(state).await;
    if state.job_models.is_some() {
        crate::jobs::poll_pending(state).await;
    }
}
