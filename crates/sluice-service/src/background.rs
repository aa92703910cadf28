//! The background loops: invoice crediting (push and poll), the heartbeat,
//! and the reconcilers (holds of stopped processes or past their deadline,
//! jobs, refunds), started by [`Sluice::start`] and stopped by
//! [`Running::shutdown`].

use std::{sync::Arc, time::Duration};

use sluice_lightning::Settled;
use sluice_store::RequestStatus;
use tokio::sync::broadcast::error::RecvError;

use crate::{
    Sluice,
    payments::{credit, poll_all},
};

/// How often this process says it is alive: four times per staleness window.
pub fn heartbeat_every(stale_after: Duration) -> Duration {
    (stale_after / 4).max(Duration::from_millis(250))
}

/// Release the holds of gateway processes that stopped without settling, and
/// every hold past its deadline (whichever process took it): a hold always ends.
pub async fn reconcile_abandoned(state: &Sluice) {
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
    state: Arc<Sluice>,
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
pub fn spawn(state: &Arc<Sluice>) -> Heartbeat {
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

/// The service running: its background loops, until [`Running::shutdown`].
pub struct Running {
    sluice: Arc<Sluice>,
    heartbeat: Heartbeat,
}

impl Sluice {
    /// Start the background work. This process says it is alive first, so
    /// no other process's reconciler can mistake its first holds for
    /// abandoned ones.
    pub async fn start(self: &Arc<Self>) -> Running {
        if let Err(e) = self.store.heartbeat(&self.instance_id, self.now_ms()).await {
            tracing::error!(error = %e, "first heartbeat failed");
        }
        Running {
            sluice: self.clone(),
            heartbeat: spawn(self),
        }
    }
}

impl Running {
    /// Stop: crediting stops, tracked work (settlements, payouts, job phases)
    /// gets up to `drain` to finish while the heartbeat keeps this process's
    /// holds its own, then the heartbeat stops — the instance row retired at
    /// once if everything drained, else left to go stale so peers release
    /// what is left only after the staleness window — and the estimators are
    /// saved.
    pub async fn shutdown(self, drain: Duration) {
        let s = &self.sluice;
        s.shutdown.cancel();
        s.tasks.close();
        let drained = tokio::time::timeout(drain, s.tasks.wait()).await.is_ok();
        if !drained {
            tracing::warn!(
                "background work still running after {} s; stopping anyway",
                drain.as_secs()
            );
        }
        self.heartbeat.stop(drained).await;
        s.estimates.flush(&s.store, s.now_ms()).await;
    }
}
