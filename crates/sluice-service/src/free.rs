//! The free tier's shared parts: its settings and what this process has
//! promised from the pool to requests in flight.

use sluice_core::{Allowances, Decision, Msat};
use sluice_store::Accounting;

/// Free-tier settings.
#[derive(Debug, Clone, Copy)]
pub struct FreeTier {
    /// Give free or partly free answers.
    pub enabled: bool,
    /// Daily allowances per tier.
    pub allowances: Allowances,
    /// Pool credit share and trust rules.
    pub accounting: Accounting,
}

/// What this process has decided the pool will absorb for requests whose
/// grants are not recorded yet, in all and per identity. Decisions subtract
/// it, so a burst of concurrent requests cannot all be promised the same
/// sats: without it they would all be served, and the pool (bounded at the
/// grant) would pay for only some of them, the operator for the rest.
/// Other gateway processes on the database keep their own; the grant's
/// bounds in the store are what hold across them.
#[derive(Debug, Default)]
pub struct InFlight {
    inner: std::sync::Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    pool: u64,
    by_identity: std::collections::HashMap<String, u64>,
}

impl InFlight {
    /// Decide with `f(pending for the pool, pending for this identity)` and
    /// reserve what the decision absorbs, under one lock.
    pub fn decide(
        self: &std::sync::Arc<Self>,
        pubkey: &str,
        f: impl FnOnce(Msat, Msat) -> Decision,
    ) -> (Decision, Option<std::sync::Arc<Reservation>>) {
        let Ok(mut p) = self.inner.lock() else {
            return (f(Msat::ZERO, Msat::ZERO), None);
        };
        let mine = p.by_identity.get(pubkey).copied().unwrap_or(0);
        let d = f(Msat::from_msat(p.pool), Msat::from_msat(mine));
        let amount = d.absorb().msat();
        if amount == 0 {
            return (d, None);
        }
        p.pool = p.pool.saturating_add(amount);
        *p.by_identity.entry(pubkey.to_owned()).or_default() += amount;
        let r = Reservation {
            inflight: self.clone(),
            pubkey: pubkey.to_owned(),
            amount,
        };
        (d, Some(std::sync::Arc::new(r)))
    }

    /// What is promised now, in all.
    pub fn pending(&self) -> Msat {
        self.inner
            .lock()
            .map_or(Msat::ZERO, |p| Msat::from_msat(p.pool))
    }
}

/// A promise of the pool's sats to one request; released when dropped (after
/// its grant is recorded, or when the request ends without one).
#[derive(Debug)]
pub struct Reservation {
    inflight: std::sync::Arc<InFlight>,
    pubkey: String,
    amount: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut p) = self.inflight.inner.lock() {
            p.pool = p.pool.saturating_sub(self.amount);
            if let Some(v) = p.by_identity.get_mut(&self.pubkey) {
                *v = v.saturating_sub(self.amount);
                if *v == 0 {
                    p.by_identity.remove(&self.pubkey);
                }
            }
        }
    }
}
