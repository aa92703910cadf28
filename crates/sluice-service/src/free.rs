//! The free tier: its settings, an identity's standing, the decision on an
//! estimated cost, and what this process has promised from the pool to
//! requests in flight.
//!
//! The rules are `sluice_core::free`'s; the store records grants (see
//! `sluice_store::GrantAsk`). The order, for every kind of request:
//! 1. price the request and decide on the **estimate** (free, partial, gate),
//!    before any work or invoice;
//! 2. do the work (a partial decision holds or invoices only the payer's part);
//! 3. record the grant **after** the work, capped at the actual cost, the
//!    pool's balance and the identity's allowance left, in the same
//!    transaction as the request's settlement.
//!
//! Decisions count what this process has already promised to requests in
//! flight ([`InFlight`]). When the pool has still run dry between decision
//! and grant (another process, or a job, spent it), the pool absorbs
//! what it has; a payer is charged the rest up to what it held or paid, and
//! what is left is the operator's loss (never the payer's, never the pool's).

use sluice_core::{
    Allowances, Decision, Msat, Tier, day_of, decide_for, effective_tier, remaining_allowance,
};
use sluice_store::{Accounting, GrantAsk, GrantKind, IdentityRow};

use crate::{ServiceError, Sluice};

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

/// An identity's standing now.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The stored row (created if it was new).
    pub row: IdentityRow,
    /// The score after lazy decay.
    pub score: u64,
    /// The tier its own score gives.
    pub own_tier: Tier,
    /// The tier it acts with (a vouch from a current elite lifts it).
    pub tier: Tier,
    /// Current elite identities vouching for it.
    pub vouchers: Vec<String>,
    /// Its daily allowance.
    pub allowance: Msat,
    /// What is left of it today.
    pub left_today: Msat,
}

/// Look up (and mark seen) an identity's standing.
pub async fn standing(state: &Sluice, pubkey: &str, now: i64) -> Result<Standing, ServiceError> {
    let rules = state.free.accounting.trust;
    let row = state.store.touch_identity(pubkey, &rules, now).await?;
    let score = rules.decayed(row.score, row.last_seen_ms, now);
    let own_tier = rules.tier_of(score, row.paid_days);
    let vouchers: Vec<String> = state
        .store
        .vouchers_of(pubkey)
        .await?
        .into_iter()
        .filter(|v| {
            rules.tier_of(rules.decayed(v.score, v.last_seen_ms, now), v.paid_days) == Tier::Elite
        })
        .map(|v| v.pubkey)
        .collect();
    let tier = effective_tier(own_tier, !vouchers.is_empty());
    let allowance = state.free.allowances.of(tier);
    let left_today =
        remaining_allowance(allowance, row.absorbed_today, row.absorbed_day, day_of(now));
    Ok(Standing {
        row,
        score,
        own_tier,
        tier,
        vouchers,
        allowance,
        left_today,
    })
}

/// A free-tier decision and what recording it will need.
#[derive(Debug, Clone)]
pub struct FreeDecision {
    /// The decision.
    pub decision: Decision,
    /// The tier it was made for.
    pub tier: Tier,
    /// What to record after the work (absent for a gate).
    pub ask: Option<GrantAsk>,
    /// This process's promise of the pool's sats, held until the grant is
    /// recorded (chat requests keep it with their meter).
    pub reservation: Option<std::sync::Arc<Reservation>>,
}

impl FreeDecision {
    /// No identity, or the free tier is off.
    pub fn anonymous() -> FreeDecision {
        FreeDecision {
            decision: Decision::Gate {
                reason: sluice_core::GateReason::Anonymous,
            },
            tier: Tier::Anonymous,
            ask: None,
            reservation: None,
        }
    }

    /// The decision on `estimate`, as estimates show it.
    pub fn view(&self, estimate: Msat) -> sluice_proto::api::FreeTierDecision {
        sluice_proto::api::FreeTierDecision {
            decision: self.decision.as_str().to_owned(),
            tier: self.tier.as_str().to_owned(),
            estimate_msat: estimate.msat(),
            absorb_msat: self.decision.absorb().msat(),
            charge_msat: self.decision.charge(estimate).msat(),
            reason: match self.decision {
                Decision::Gate { reason } => Some(reason.as_str().to_owned()),
                _ => None,
            },
        }
    }
}

/// Decide on `estimate` for a known pubkey (jobs decide for the key bound at creation).
pub async fn decide_for_pubkey(
    state: &Sluice,
    pubkey: &str,
    estimate: Msat,
    model: &str,
    kind: GrantKind,
) -> Result<FreeDecision, ServiceError> {
    let now = state.now_ms();
    let s = standing(state, pubkey, now).await?;
    if !state.free.enabled {
        return Ok(FreeDecision {
            decision: Decision::Gate {
                reason: sluice_core::GateReason::Disabled,
            },
            tier: s.tier,
            ask: None,
            reservation: None,
        });
    }
    let pool = state.store.pool_balance().await?;
    let absorbed_today = s.allowance.saturating_sub(s.left_today);
    // Decide against what is not already promised to this process's requests
    // in flight, and promise this one's share until its grant is recorded.
    let (decision, reservation) = state
        .free_inflight
        .decide(pubkey, |pending_pool, pending_id| {
            decide_for(
                s.tier,
                &state.free.allowances,
                absorbed_today
                    .checked_add(pending_id)
                    .unwrap_or(s.allowance),
                pool.saturating_sub(pending_pool),
                estimate,
            )
        });
    let ask = (decision.absorb() > Msat::ZERO).then(|| GrantAsk {
        kind,
        pubkey: Some(pubkey.to_owned()),
        tier: s.tier,
        model: model.to_owned(),
        cap: decision.absorb(),
        allowance: Some(s.allowance),
    });
    Ok(FreeDecision {
        decision,
        tier: s.tier,
        ask,
        reservation,
    })
}
