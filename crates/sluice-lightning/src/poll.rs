//! Machinery shared by the node adapters (LND, Core Lightning): the set of
//! invoices to poll, the once-only announcement of settlements, the poller
//! task, and a per-payment-hash lock that serialises an instance's own
//! payments of one invoice.
//!
//! Polling is the settlement source for these adapters because it needs
//! nothing but the lookup call (and the rights it already has) and cannot
//! silently stall the way a half-open streaming connection can; lookups are
//! the truth anyway (see the crate docs).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::{InvoiceStatus, LightningError, PaymentHash, Settled};

const EVENT_BUFFER: usize = 1024;
/// How many recent settlements are remembered so one is not announced twice.
/// Beyond that a duplicate is harmless: crediting is idempotent downstream.
const ANNOUNCED_MEMORY: usize = 4096;

/// Pending invoices to poll and the broadcast of their settlements.
pub(crate) struct Watcher {
    events: broadcast::Sender<Settled>,
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    pending: HashSet<PaymentHash>,
    announced: HashSet<PaymentHash>,
    announced_order: VecDeque<PaymentHash>,
}

impl Watcher {
    pub(crate) fn new() -> Self {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Watcher {
            events,
            state: Mutex::new(WatchState::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut WatchState) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of
        // this bookkeeping; the sets are still usable.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub(crate) fn watch(&self, hash: PaymentHash) {
        self.with(|w| {
            w.pending.insert(hash);
        });
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Settled> {
        self.events.subscribe()
    }

    /// Broadcast a settlement unless it was announced recently.
    pub(crate) fn announce(&self, settled: Settled) {
        let fresh = self.with(|w| {
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
}

/// A backend whose pending invoices can be polled.
pub(crate) trait Polled: Send + Sync + 'static {
    /// Short name for logs.
    const NAME: &'static str;
    fn watcher(&self) -> &Watcher;
    fn lookup(
        &self,
        hash: &PaymentHash,
    ) -> impl Future<Output = Result<InvoiceStatus, LightningError>> + Send;
}

async fn poll_once<B: Polled>(backend: &B) {
    let hashes: Vec<PaymentHash> = backend
        .watcher()
        .with(|w| w.pending.iter().copied().collect());
    for hash in hashes {
        match backend.lookup(&hash).await {
            Ok(InvoiceStatus::Settled { preimage, amount }) => {
                backend.watcher().announce(Settled {
                    payment_hash: hash,
                    preimage,
                    amount,
                });
            }
            Ok(InvoiceStatus::Pending) => {}
            Ok(InvoiceStatus::Expired) | Err(LightningError::NotFound) => {
                backend.watcher().with(|w| w.pending.remove(&hash));
            }
            Err(e) => {
                tracing::debug!(backend = B::NAME, payment_hash = %hash.to_hex(), error = %e, "lookup failed; will retry");
            }
        }
    }
}

/// Poll every `interval` until the backend is dropped.
pub(crate) async fn poll_loop<B: Polled>(backend: Weak<B>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(backend) = backend.upgrade() else {
            return;
        };
        poll_once(backend.as_ref()).await;
    }
}

/// One async lock per payment hash being paid by this instance, so that two
/// concurrent `pay_invoice` calls for one invoice run one after the other:
/// the second then sees the first's outcome (already paid, or free to retry
/// after a failure) instead of racing it inside the node.
#[derive(Default)]
pub(crate) struct PayLocks {
    locks: Mutex<HashMap<PaymentHash, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while paying; releases (and forgets the lock when nobody waits).
pub(crate) struct PayGuard<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: &'a PayLocks,
    hash: PaymentHash,
}

impl PayLocks {
    pub(crate) async fn lock(&self, hash: PaymentHash) -> PayGuard<'_> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(hash).or_default().clone()
        };
        PayGuard {
            guard: Some(lock.lock_owned().await),
            locks: self,
            hash,
        }
    }
}

impl Drop for PayGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.locks.lock().unwrap_or_else(|p| p.into_inner());
        self.guard = None;
        // Only the map holds it now: nobody waits, so forget it. Waiters take
        // their clone under the map lock, so this cannot race one.
        if map
            .get(&self.hash)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.hash);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pay_locks_serialise_one_hash_and_are_forgotten() {
        let locks = PayLocks::default();
        let hash = PaymentHash([7; 32]);
        let first = locks.lock(hash).await;
        let other = locks.lock(PaymentHash([8; 32])).await;
        let second = tokio::time::timeout(Duration::from_millis(50), locks.lock(hash)).await;
        assert!(second.is_err(), "the same hash must wait");
        drop(first);
        drop(other);
        assert!(locks.locks.lock().unwrap().is_empty());
        let _again = locks.lock(hash).await;
    }

    #[test]
    fn announces_once() {
        let w = Watcher::new();
        let mut rx = w.subscribe();
        let s = Settled {
            payment_hash: PaymentHash([1; 32]),
            preimage: crate::Preimage([2; 32]),
            amount: sluice_core::Msat::from_msat(5),
        };
        w.watch(s.payment_hash);
        w.announce(s);
        w.announce(s);
        assert_eq!(rx.try_recv().unwrap(), s);
        assert!(rx.try_recv().is_err());
        assert!(w.with(|st| st.pending.is_empty()));
    }
}
