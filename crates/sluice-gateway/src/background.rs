//! Background work: crediting settled invoices, heartbeats, and releasing
//! holds abandoned by a crashed gateway process.
//!
//! Settlement pushes from the Lightning backend are a hint for speed; the
//! truth is a lookup. Every pending invoice is looked up at start (invoices
//! settled while the gateway was down) and then every `poll_interval`.
//! Crediting is idempotent in the store, so a push and a poll that both see
//! the same settlement credit it once.

use std::time::Duration;

use sluice_lightning::{InvoiceStatus, PaymentHash, Settled};
use sluice_store::{Credit, RequestStatus};
use tokio::sync::broadcast::error::RecvError;

use crate::state::{AppState, now_ms};

/// How often this process says it is alive: four times per staleness window.
pub fn heartbeat_every(stale_after: Duration) -> Duration {
    (stale_after / 4).max(Duration::from_millis(250))
}

/// Credit one settled invoice (idempotent).
pub async fn credit(state: &AppState, hash: &PaymentHash, preimage_hex: &str) {
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
        .credit_invoice(&h, preimage_hex, now_ms(), &policy)
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

/// Look up every pending invoice once; credit the settled, expire the expired.
pub async fn poll_pending(state: &AppState) {
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
            Ok(InvoiceStatus::Expired) => {
                if let Err(e) = state.store.expire_invoice(&inv.payment_hash).await {
                    tracing::error!(error = %e, "could not expire an invoice");
                }
            }
            Ok(InvoiceStatus::Pending) => {}
            Err(e) => {
                tracing::warn!(payment_hash = %inv.payment_hash, error = %e, "invoice lookup failed")
            }
        }
    }
}

/// Look up everything unpaid: session invoices and job invoices.
async fn poll_all(state: &AppState) {
    poll_pending(state).await;
    if state.job_models.is_some() {
        crate::jobs::poll_pending(state).await;
    }
}

/// Release the holds of gateway processes that stopped without settling.
pub async fn reconcile_abandoned(state: &AppState) {
    let stale_before = now_ms() - i64::try_from(state.stale_after.as_millis()).unwrap_or(i64::MAX);
    let open = match state.store.abandoned_holds(stale_before).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "could not list abandoned holds");
            return;
        }
    };
    for r in open {
        match state
            .store
            .release(
                &r.id,
                RequestStatus::Abandoned,
                now_ms(),
                &state.policy_for(&r.session_id),
            )
            .await
        {
            Ok(s) => {
                tracing::warn!(request_id = %r.id, released_msat = s.released.msat(), "released a hold abandoned by a stopped gateway")
            }
            Err(sluice_store::StoreError::Conflict(_)) => {} // another process got there first
            Err(e) => {
                tracing::error!(request_id = %r.id, error = %e, "could not release an abandoned hold")
            }
        }
    }
}

/// Start the background loops; they stop when `state.shutdown` is cancelled.
pub fn spawn(state: &AppState) {
    if state.job_models.is_some() {
        let s = state.clone();
        state
            .tasks
            .spawn(async move { crate::jobs::resume_at_start(&s).await });
    }
    let s = state.clone();
    state.tasks.spawn(async move {
        let mut events = s.lightning.subscribe();
        let mut tick = tokio::time::interval(s.poll_interval);
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(Settled { payment_hash, preimage, .. }) => credit(&s, &payment_hash, &preimage.to_hex()).await,
                    Err(RecvError::Lagged(_)) => poll_all(&s).await,
                    Err(RecvError::Closed) => {
                        tokio::time::sleep(s.poll_interval).await;
                        events = s.lightning.subscribe();
                    }
                },
                _ = tick.tick() => poll_all(&s).await,
            }
        }
    });
    let s = state.clone();
    state.tasks.spawn(async move {
        let mut tick = tokio::time::interval(heartbeat_every(s.stale_after));
        loop {
            tokio::select! {
                _ = s.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = s.store.heartbeat(&s.instance_id, now_ms()).await {
                        tracing::error!(error = %e, "heartbeat failed");
                    }
                    reconcile_abandoned(&s).await;
                    crate::jobs::expire_refunds(&s).await;
                    crate::refunds::reconcile(&s).await;
                }
            }
        }
        if let Err(e) = s.store.retire_instance(&s.instance_id).await {
            tracing::warn!(error = %e, "could not retire this gateway instance");
        }
    });
}
