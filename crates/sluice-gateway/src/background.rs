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

use crate::state::AppState;

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

pub use sluice_service::invoices::{EXPIRY_GRACE_MS, past_expiry_grace};

/// Look up every pending invoice once; credit the settled, expire the expired
/// (once past [`EXPIRY_GRACE_MS`]).
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
async fn poll_all(state: &AppState) {
    poll_pending(state).await;
    if state.job_models.is_some() {
        crate::jobs::poll_pending(state).await;
    }
}

/// Release the holds of gateway processes that stopped without settling, and
/// every hold past its deadline (whichever process took it): a hold always ends.
pub async fn reconcile_abandoned(state: &AppState) {
    let now = state.now_ms();
    let open = match state
        .store
        .abandoned_holds(state.stale_before(now), now, &state.instance_id)
        .await
    {
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
                state.now_ms(),
                &state.policy_for(&r.session_id),
            )
            .await
        {
            Ok(s) => {
                tracing::warn!(request_id = %r.id, released_msat = s.released.msat(), "released a hold abandoned by a stopped gateway or past its deadline")
            }
            Err(sluice_store::StoreError::Conflict(_)) => {} // another process got there first
            Err(e) => {
                tracing::error!(request_id = %r.id, error = %e, "could not release an abandoned hold")
            }
        }
    }
}

/// The heartbeat and reconciler loops, which outlive shutdown's drain (see [`Heartbeat::stop`]).
pub struct Heartbeat {
    stop: tokio_util::sync::CancellationToken,
    handles: [tokio::task::JoinHandle<()>; 2],
    state: AppState,
}

impl Heartbeat {
    /// Stop saying this process is alive. When its in-flight work has
    /// `drained`, retire its instance row at once; otherwise leave the row to
    /// go stale, so peers release its holds only after the staleness window.
    pub async fn stop(self, drained: bool) {
        self.stop.cancel();
        for handle in self.handles {
            let _ = handle.await;
        }
        if !drained {
            return;
        }
        if let Err(e) = self
            .state
            .store
            .retire_instance(&self.state.instance_id)
            .await
        {
            tracing::warn!(error = %e, "could not retire this gateway instance");
        }
    }
}

/// Start the background loops: invoice crediting stops when `state.shutdown`
/// is cancelled; the heartbeat (with the reconcilers it drives) runs until
/// [`Heartbeat::stop`], so it keeps going while shutdown drains in-flight work.
pub fn spawn(state: &AppState) -> Heartbeat {
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
    let stop = tokio_util::sync::CancellationToken::new();
    // Neither is on `state.tasks`: shutdown waits for that work while these
    // keep going (they are stopped after it, through `stop`). The heartbeat has a loop of its own, so a reconciler stuck
    // on a slow Lightning node or database never lets this process's
    // heartbeat go stale (which would let peers take over its live holds).
    let (s, token) = (state.clone(), stop.clone());
    let loops = tokio_util::task::TaskTracker::new();
    let beat = loops.spawn(async move {
        let mut tick = tokio::time::interval(heartbeat_every(s.stale_after));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = s.store.heartbeat(&s.instance_id, s.now_ms()).await {
                        tracing::error!(error = %e, "heartbeat failed");
                    }
                }
            }
        }
    });
    let (s, token) = (state.clone(), stop.clone());
    let reconcilers = loops.spawn(async move {
        let mut tick = tokio::time::interval(heartbeat_every(s.stale_after));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    reconcile_abandoned(&s).await;
                    crate::jobs::reconcile(&s).await;
                    crate::jobs::expire_refunds(&s).await;
                    crate::refunds::reconcile(&s).await;
                }
            }
        }
    });
    Heartbeat {
        stop,
        handles: [beat, reconcilers],
        state: state.clone(),
    }
}
