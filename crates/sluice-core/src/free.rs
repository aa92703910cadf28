//! Trust tiers and the free tier, as pure rules.
//!
//! # Trust
//! An identity (a Nostr public key) has a score. Trust is bought by paying:
//! - a **paid** interaction earns one point per [`TrustRules::sats_per_point`]
//!   sats it paid (rounded down), so a score is what the identity has paid,
//!   however many requests it took; a day on which it paid anything counts
//!   towards its distinct paying days;
//! - a **free** interaction (fully paid by the pool) earns nothing, so the free
//!   tier cannot be farmed for standing;
//! - a **failed** interaction (a rejected or failed job) costs
//!   [`TrustRules::failure_penalty`] points.
//!
//! A tier needs both its score threshold and its number of distinct paying
//! days (`*_days`): standing is earned over time, not in one burst. The
//! gateway refuses to start when a tier's threshold is cheaper than
//! `trust.min_tier_cost_days` days of that tier's free allowance, so a tier
//! always costs more than what its allowance returns over that many days.
//!
//! The score decays lazily: when an identity has been absent more than
//! [`TrustRules::decay_after_days`] days, each full period of that many days
//! takes [`TrustRules::decay_pct`] percent off (rounded down), applied when the
//! score is next read. The tier follows from the (decayed) score, the paying
//! days and the configured thresholds; a request without an identity is
//! [`Tier::Anonymous`].
//!
//! # Vouching
//! An [`Tier::Elite`] identity may vouch for another key. While the voucher is
//! elite, the vouchee's tier is lifted one step, and never to elite
//! ([`effective_tier`]); several vouches do not add up. When a vouchee fails,
//! each of its current vouchers loses [`TrustRules::vouch_penalty`] points.
//!
//! # The free tier
//! A generosity pool pays for free answers. Each tier has a daily allowance
//! (UTC days). [`decide`] turns an *estimated* cost, the identity's remaining
//! allowance and the pool's balance into [`Decision::Free`],
//! [`Decision::Partial`] or [`Decision::Gate`] before any work is done. After
//! the work, [`grant`] gives what the pool actually absorbs: never more than
//! the decision, the actual cost, the pool's balance at that moment, or what is
//! left of the identity's allowance. Paid revenue feeds the pool by
//! [`pool_credit`].

use crate::{AmountError, Msat};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// A trust tier. Ordered from least to most trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// No identity was presented.
    Anonymous,
    /// An identity with little or no history.
    New,
    /// Has paid for some answers.
    Established,
    /// A regular, reliable payer.
    Trusted,
    /// The most trusted; may vouch for others.
    Elite,
}

impl Tier {
    /// Every tier, in order.
    pub const ALL: [Tier; 5] = [
        Tier::Anonymous,
        Tier::New,
        Tier::Established,
        Tier::Trusted,
        Tier::Elite,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Anonymous => "anonymous",
            Tier::New => "new",
            Tier::Established => "established",
            Tier::Trusted => "trusted",
            Tier::Elite => "elite",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Errors in trust or free-tier configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreeTierError {
    /// Tier thresholds must rise strictly: established < trusted < elite.
    #[error(
        "tier thresholds must rise strictly (established {established} < trusted {trusted} < elite {elite})"
    )]
    Thresholds {
        /// Established threshold.
        established: u64,
        /// Trusted threshold.
        trusted: u64,
        /// Elite threshold.
        elite: u64,
    },
    /// A percentage above 100.
    #[error("{name} must be between 0 and 100, not {value}")]
    Percent {
        /// Which setting.
        name: &'static str,
        /// Its value.
        value: u32,
    },
    /// Paying days must not fall from one tier to the next.
    #[error(
        "tier paying days must not fall (established {established} <= trusted {trusted} <= elite {elite})"
    )]
    Days {
        /// Established days.
        established: u64,
        /// Trusted days.
        trusted: u64,
        /// Elite days.
        elite: u64,
    },
    /// A tier is cheaper than the allowance it returns over the configured days.
    #[error(
        "the {tier} tier costs {cost_sats} sats of payments but returns {allowance_sats} sats a day in free answers; it must cost at least {days} days of its allowance ({needed} sats): raise trust.{tier} or lower its allowance"
    )]
    TooCheap {
        /// The tier.
        tier: &'static str,
        /// What its threshold costs.
        cost_sats: u64,
        /// Its daily allowance.
        allowance_sats: u64,
        /// The configured multiple, in days.
        days: u64,
        /// The least it must cost.
        needed: u64,
    },
    /// A setting that must be positive is zero.
    #[error("{name} must be at least 1")]
    Zero {
        /// Which setting.
        name: &'static str,
    },
}

/// How scores are earned, lost and decay, and where the tiers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustRules {
    /// Score at which an identity becomes `established`.
    pub established: u64,
    /// Score at which an identity becomes `trusted`.
    pub trusted: u64,
    /// Score at which an identity becomes `elite`.
    pub elite: u64,
    /// Distinct UTC days with a payment needed for `established`.
    pub established_days: u64,
    /// Distinct UTC days with a payment needed for `trusted`.
    pub trusted_days: u64,
    /// Distinct UTC days with a payment needed for `elite`.
    pub elite_days: u64,
    /// One point per this many sats paid.
    pub sats_per_point: u64,
    /// Points lost for a failed interaction.
    pub failure_penalty: u64,
    /// Points a voucher loses when its vouchee fails.
    pub vouch_penalty: u64,
    /// Decay starts after this many days of absence; each full period of this
    /// many days decays the score once.
    pub decay_after_days: u32,
    /// Percent of the score lost per decay period.
    pub decay_pct: u32,
}

impl Default for TrustRules {
    fn default() -> Self {
        TrustRules {
            established: 2_000,
            trusted: 8_000,
            elite: 40_000,
            established_days: 2,
            trusted_days: 7,
            elite_days: 14,
            sats_per_point: 1,
            failure_penalty: 50,
            vouch_penalty: 500,
            decay_after_days: 30,
            decay_pct: 25,
        }
    }
}

impl TrustRules {
    /// Check the rules make sense.
    pub fn validate(&self) -> Result<(), FreeTierError> {
        if !(self.established < self.trusted && self.trusted < self.elite) {
            return Err(FreeTierError::Thresholds {
                established: self.established,
                trusted: self.trusted,
                elite: self.elite,
            });
        }
        if !(self.established_days <= self.trusted_days && self.trusted_days <= self.elite_days) {
            return Err(FreeTierError::Days {
                established: self.established_days,
                trusted: self.trusted_days,
                elite: self.elite_days,
            });
        }
        if self.decay_pct > 100 {
            return Err(FreeTierError::Percent {
                name: "decay_pct",
                value: self.decay_pct,
            });
        }
        if self.sats_per_point == 0 {
            return Err(FreeTierError::Zero {
                name: "sats_per_point",
            });
        }
        if self.decay_after_days == 0 {
            return Err(FreeTierError::Zero {
                name: "decay_after_days",
            });
        }
        Ok(())
    }

    /// The sats a tier's score threshold stands for (what reaching it costs).
    pub fn cost_sats(&self, tier: Tier) -> u64 {
        let points = match tier {
            Tier::Anonymous | Tier::New => 0,
            Tier::Established => self.established,
            Tier::Trusted => self.trusted,
            Tier::Elite => self.elite,
        };
        points.saturating_mul(self.sats_per_point)
    }

    /// The tier of a (decayed) score earned over `paid_days` distinct days.
    pub fn tier_of(&self, score: u64, paid_days: u64) -> Tier {
        if score >= self.elite && paid_days >= self.elite_days {
            Tier::Elite
        } else if score >= self.trusted && paid_days >= self.trusted_days {
            Tier::Trusted
        } else if score >= self.established && paid_days >= self.established_days {
            Tier::Established
        } else {
            Tier::New
        }
    }

    /// The score after lazy decay: unchanged while the identity has been
    /// absent at most `decay_after_days` days; then `decay_pct` percent off
    /// for each full period of `decay_after_days` days of absence.
    pub fn decayed(&self, score: u64, last_seen_ms: i64, now_ms: i64) -> u64 {
        let absent_days = (now_ms.saturating_sub(last_seen_ms) / DAY_MS).max(0) as u64;
        let period = u64::from(self.decay_after_days.max(1));
        if absent_days <= period || self.decay_pct == 0 {
            return score;
        }
        let periods = absent_days / period;
        let keep = u64::from(100 - self.decay_pct.min(100));
        let mut s = score;
        // Each period takes at least 1 point off a positive score when
        // decay_pct > 0 is large enough; 256 periods reduce any u64 to 0 at
        // 25 %, and bound the loop.
        for _ in 0..periods.min(256) {
            if s == 0 {
                break;
            }
            s = (u128::from(s) * u128::from(keep) / 100) as u64;
        }
        s
    }

    /// The score after an interaction (apply to the decayed score).
    pub fn after(&self, score: u64, interaction: Interaction) -> u64 {
        match interaction {
            Interaction::Paid { paid } => {
                score.saturating_add(paid.to_sats_floor() / self.sats_per_point.max(1))
            }
            Interaction::Free => score,
            Interaction::Failed => score.saturating_sub(self.failure_penalty),
        }
    }

    /// A voucher's score after its vouchee failed.
    pub fn after_vouchee_failed(&self, voucher_score: u64) -> u64 {
        voucher_score.saturating_sub(self.vouch_penalty)
    }
}

/// How an interaction ended, for the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// Served, and the identity paid `paid` (more than zero).
    Paid {
        /// What the identity paid (not what the pool absorbed).
        paid: Msat,
    },
    /// Served entirely by the pool.
    Free,
    /// A rejected or failed job.
    Failed,
}

impl Interaction {
    /// A served interaction: `Paid` when anything was paid, else `Free`.
    pub fn served(paid: Msat) -> Interaction {
        if paid == Msat::ZERO {
            Interaction::Free
        } else {
            Interaction::Paid { paid }
        }
    }

    /// Whether it counts as a success.
    pub fn is_success(self) -> bool {
        !matches!(self, Interaction::Failed)
    }
}

/// The tier an identity acts with: its own, lifted one step by a vouch from a
/// current elite, but never to elite by a vouch.
pub fn effective_tier(own: Tier, vouched_by_elite: bool) -> Tier {
    if !vouched_by_elite {
        return own;
    }
    match own {
        Tier::New => Tier::Established,
        Tier::Established => Tier::Trusted,
        other => other,
    }
}

/// Daily free allowances per tier. Anonymous requests get none (the demo
/// endpoint has its own, per-IP limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowances {
    /// For `new`.
    pub new: Msat,
    /// For `established`.
    pub established: Msat,
    /// For `trusted`.
    pub trusted: Msat,
    /// For `elite`.
    pub elite: Msat,
}

impl Default for Allowances {
    fn default() -> Self {
        Allowances {
            new: Msat::ZERO,
            established: Msat::from_msat(50_000),
            trusted: Msat::from_msat(200_000),
            elite: Msat::from_msat(1_000_000),
        }
    }
}

impl Allowances {
    /// The daily allowance of `tier`.
    pub fn of(&self, tier: Tier) -> Msat {
        match tier {
            Tier::Anonymous => Msat::ZERO,
            Tier::New => self.new,
            Tier::Established => self.established,
            Tier::Trusted => self.trusted,
            Tier::Elite => self.elite,
        }
    }
}

/// Refuse rules under which a tier is cheaper than `days` days of its daily
/// allowance: trust must cost more than the free answers it returns.
pub fn check_tier_costs(
    rules: &TrustRules,
    allowances: &Allowances,
    days: u64,
) -> Result<(), FreeTierError> {
    for tier in [Tier::Established, Tier::Trusted, Tier::Elite] {
        let allowance_sats = allowances.of(tier).to_sats_ceil();
        let needed = allowance_sats.saturating_mul(days);
        let cost_sats = rules.cost_sats(tier);
        if cost_sats < needed {
            return Err(FreeTierError::TooCheap {
                tier: tier.as_str(),
                cost_sats,
                allowance_sats,
                days,
                needed,
            });
        }
    }
    Ok(())
}

/// The UTC day of a unix-ms time (days since 1970-01-01).
pub fn day_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(DAY_MS)
}

/// What is left of `allowance` today, given what was absorbed on `absorbed_day`:
/// a new day starts again at the full allowance.
pub fn remaining_allowance(allowance: Msat, absorbed: Msat, absorbed_day: i64, today: i64) -> Msat {
    if absorbed_day == today {
        allowance.saturating_sub(absorbed)
    } else {
        allowance
    }
}

/// Why a request gets no free help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateReason {
    /// No identity was presented.
    Anonymous,
    /// The identity's tier has no free allowance.
    NoAllowance,
    /// The identity has used today's allowance.
    AllowanceSpent,
    /// The pool is empty.
    PoolEmpty,
    /// The operator turned the free tier off.
    Disabled,
}

impl GateReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            GateReason::Anonymous => "anonymous",
            GateReason::NoAllowance => "no_allowance",
            GateReason::AllowanceSpent => "allowance_spent",
            GateReason::PoolEmpty => "pool_empty",
            GateReason::Disabled => "free_tier_disabled",
        }
    }
}

/// The free-tier decision for one request, made on its estimated cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The pool pays for all of it (up to `absorb`).
    Free {
        /// The most the pool will absorb: the estimate.
        absorb: Msat,
    },
    /// The pool pays `absorb`; the payer pays the rest of the estimate.
    Partial {
        /// The most the pool will absorb.
        absorb: Msat,
        /// What the payer must cover.
        charge: Msat,
    },
    /// No free help: the request is paid as usual.
    Gate {
        /// Why.
        reason: GateReason,
    },
}

impl Decision {
    /// The wire name: `free`, `partial` or `gate`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Free { .. } => "free",
            Decision::Partial { .. } => "partial",
            Decision::Gate { .. } => "gate",
        }
    }

    /// The most the pool may absorb (zero for a gate).
    pub fn absorb(&self) -> Msat {
        match self {
            Decision::Free { absorb } | Decision::Partial { absorb, .. } => *absorb,
            Decision::Gate { .. } => Msat::ZERO,
        }
    }

    /// What the payer must cover of `estimate`.
    pub fn charge(&self, estimate: Msat) -> Msat {
        estimate.saturating_sub(self.absorb())
    }
}

/// Decide on an estimated cost, before any work: free when the pool and the
/// identity's remaining allowance both cover the estimate, partial when they
/// cover part of it, gate otherwise.
pub fn decide(tier: Tier, remaining: Msat, pool: Msat, estimate: Msat) -> Decision {
    if tier == Tier::Anonymous {
        return Decision::Gate {
            reason: GateReason::Anonymous,
        };
    }
    if pool == Msat::ZERO {
        return Decision::Gate {
            reason: GateReason::PoolEmpty,
        };
    }
    if remaining == Msat::ZERO {
        return Decision::Gate {
            reason: GateReason::AllowanceSpent,
        };
    }
    let cap = remaining.min(pool);
    if cap >= estimate {
        Decision::Free { absorb: estimate }
    } else {
        Decision::Partial {
            absorb: cap,
            charge: estimate.saturating_sub(cap),
        }
    }
}

/// Decide for a tier whose allowance may be zero: a tier with no allowance at
/// all is gated as [`GateReason::NoAllowance`] rather than "spent".
pub fn decide_for(
    tier: Tier,
    allowances: &Allowances,
    absorbed_today: Msat,
    pool: Msat,
    estimate: Msat,
) -> Decision {
    if tier != Tier::Anonymous && allowances.of(tier) == Msat::ZERO {
        return Decision::Gate {
            reason: GateReason::NoAllowance,
        };
    }
    let remaining = allowances.of(tier).saturating_sub(absorbed_today);
    decide(tier, remaining, pool, estimate)
}

/// What the pool absorbs after the work: the least of the decision's cap, the
/// actual cost, the pool's balance now, and what is left of the identity's
/// allowance now (`None`: no allowance applies, as for the demo endpoint).
pub fn grant(cap: Msat, actual: Msat, pool: Msat, allowance_left: Option<Msat>) -> Msat {
    let g = cap.min(actual).min(pool);
    match allowance_left {
        Some(left) => g.min(left),
        None => g,
    }
}

/// The share of paid revenue credited to the pool: `pct` percent of `charged`,
/// rounded down to the msat.
pub fn pool_credit(charged: Msat, pct: u32) -> Result<Msat, AmountError> {
    let v = u128::from(charged.msat()) * u128::from(pct.min(100)) / 100;
    u64::try_from(v)
        .map(Msat::from_msat)
        .map_err(|_| AmountError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(v: u64) -> Msat {
        Msat::from_msat(v)
    }

    #[test]
    fn tiers_follow_thresholds_and_paying_days() {
        let r = TrustRules::default();
        assert_eq!(r.tier_of(0, 0), Tier::New);
        assert_eq!(r.tier_of(1_999, 30), Tier::New);
        assert_eq!(r.tier_of(2_000, 2), Tier::Established);
        assert_eq!(r.tier_of(8_000, 7), Tier::Trusted);
        assert_eq!(r.tier_of(40_000, 14), Tier::Elite);
        // The score alone is not enough: standing is earned over days.
        assert_eq!(r.tier_of(1_000_000, 1), Tier::New);
        assert_eq!(r.tier_of(40_000, 13), Tier::Trusted);
        assert!(r.validate().is_ok());
        let bad = TrustRules { trusted: 10, ..r };
        assert!(bad.validate().is_err());
        let bad_days = TrustRules {
            trusted_days: 1,
            ..r
        };
        assert!(bad_days.validate().is_err());
    }

    /// Ten one-sat requests reached `established` (50 sats a day) and 200
    /// reached `elite` (1,000 sats a day and five vouches): a flat point per
    /// settled interaction made trust far cheaper than what it returned.
    #[test]
    fn trust_costs_what_was_paid_and_more_than_a_month_of_its_allowance() {
        let r = TrustRules::default();
        let mut score = 0;
        for _ in 0..200 {
            score = r.after(score, Interaction::Paid { paid: m(1_000) });
        }
        assert_eq!(score, 200, "200 one-sat answers are 200 sats of standing");
        assert_eq!(r.tier_of(score, 200), Tier::New);
        // The defaults: elite costs more than 30 days of its allowance.
        let a = Allowances::default();
        assert!(r.cost_sats(Tier::Elite) > 30 * a.elite.to_sats_floor());
        assert!(check_tier_costs(&r, &a, 30).is_ok());
        let cheap = TrustRules { elite: 20_000, ..r };
        assert!(matches!(
            check_tier_costs(&cheap, &a, 30),
            Err(FreeTierError::TooCheap { tier: "elite", .. })
        ));
    }

    #[test]
    fn paying_earns_points_free_earns_none_failing_costs() {
        let r = TrustRules::default();
        // One point per sat paid, rounded down.
        assert_eq!(r.after(0, Interaction::Paid { paid: m(1_000) }), 1);
        assert_eq!(r.after(0, Interaction::Paid { paid: m(1_999) }), 1);
        assert_eq!(r.after(0, Interaction::Paid { paid: m(250_000) }), 250);
        assert_eq!(
            r.after(u64::MAX, Interaction::Paid { paid: m(u64::MAX) }),
            u64::MAX
        );
        assert_eq!(r.after(70, Interaction::Free), 70);
        assert_eq!(r.after(70, Interaction::Failed), 20);
        assert_eq!(r.after(3, Interaction::Failed), 0);
        assert_eq!(Interaction::served(Msat::ZERO), Interaction::Free);
    }

    #[test]
    fn decay_is_lazy_and_stepwise() {
        let r = TrustRules::default();
        let day = DAY_MS;
        assert_eq!(r.decayed(100, 0, 30 * day), 100, "30 days absent: no decay");
        assert_eq!(r.decayed(100, 0, 31 * day), 75, "past 30 days: one period");
        assert_eq!(r.decayed(100, 0, 60 * day), 56, "two periods: 100→75→56");
        assert_eq!(r.decayed(100, 0, 10_000 * day), 0);
        // A clock that went backwards decays nothing.
        assert_eq!(r.decayed(100, 5 * day, 0), 100);
    }

    #[test]
    fn vouching_lifts_one_step_never_to_elite() {
        assert_eq!(effective_tier(Tier::New, true), Tier::Established);
        assert_eq!(effective_tier(Tier::Established, true), Tier::Trusted);
        assert_eq!(effective_tier(Tier::Trusted, true), Tier::Trusted);
        assert_eq!(effective_tier(Tier::Elite, true), Tier::Elite);
        assert_eq!(effective_tier(Tier::New, false), Tier::New);
        assert_eq!(effective_tier(Tier::Anonymous, true), Tier::Anonymous);
    }

    #[test]
    fn decisions() {
        let a = Allowances::default();
        let est = m(20_000);
        assert_eq!(
            decide_for(Tier::Anonymous, &a, Msat::ZERO, m(1_000_000), est),
            Decision::Gate {
                reason: GateReason::Anonymous
            }
        );
        assert_eq!(
            decide_for(Tier::New, &a, Msat::ZERO, m(1_000_000), est),
            Decision::Gate {
                reason: GateReason::NoAllowance
            }
        );
        assert_eq!(
            decide_for(Tier::Established, &a, Msat::ZERO, m(1_000_000), est),
            Decision::Free { absorb: est }
        );
        // 40 of 50 sats used: 10 sats absorbed, 10 charged.
        assert_eq!(
            decide_for(Tier::Established, &a, m(40_000), m(1_000_000), est),
            Decision::Partial {
                absorb: m(10_000),
                charge: m(10_000)
            }
        );
        assert_eq!(
            decide_for(Tier::Established, &a, m(50_000), m(1_000_000), est),
            Decision::Gate {
                reason: GateReason::AllowanceSpent
            }
        );
        assert_eq!(
            decide_for(Tier::Elite, &a, Msat::ZERO, Msat::ZERO, est),
            Decision::Gate {
                reason: GateReason::PoolEmpty
            }
        );
        // The pool bounds it too.
        assert_eq!(
            decide_for(Tier::Elite, &a, Msat::ZERO, m(5_000), est),
            Decision::Partial {
                absorb: m(5_000),
                charge: m(15_000)
            }
        );
    }

    #[test]
    fn a_new_day_restores_the_allowance() {
        let today = day_of(10 * DAY_MS + 5);
        assert_eq!(today, 10);
        assert_eq!(remaining_allowance(m(50), m(30), 10, 10), m(20));
        assert_eq!(remaining_allowance(m(50), m(30), 9, 10), m(50));
        assert_eq!(remaining_allowance(m(50), m(80), 10, 10), Msat::ZERO);
    }

    #[test]
    fn pool_credit_rounds_down() {
        assert_eq!(pool_credit(m(12_345), 10), Ok(m(1_234)));
        assert_eq!(pool_credit(m(9), 10), Ok(Msat::ZERO));
        assert_eq!(pool_credit(m(u64::MAX), 100), Ok(m(u64::MAX)));
    }

    proptest! {
        /// A decision never absorbs more than the estimate, the pool or the
        /// allowance, and absorb + charge is the estimate.
        #[test]
        fn decide_is_bounded(tier in 0usize..5, used in 0u64..2_000_000, pool in 0u64..3_000_000, est in 1u64..3_000_000) {
            let a = Allowances::default();
            let t = Tier::ALL[tier];
            let d = decide_for(t, &a, m(used), m(pool), m(est));
            let left = a.of(t).saturating_sub(m(used));
            prop_assert!(d.absorb() <= m(est));
            prop_assert!(d.absorb() <= m(pool));
            prop_assert!(d.absorb() <= left);
            prop_assert_eq!(d.absorb().checked_add(d.charge(m(est))).unwrap(), m(est));
            if let Decision::Partial { absorb, charge } = d {
                prop_assert!(absorb > Msat::ZERO && charge > Msat::ZERO);
            }
        }

        /// A grant never exceeds any of its bounds.
        #[test]
        fn grant_is_bounded(cap in 0u64..5_000_000, actual in 0u64..5_000_000, pool in 0u64..5_000_000, left in proptest::option::of(0u64..5_000_000)) {
            let g = grant(m(cap), m(actual), m(pool), left.map(m));
            prop_assert!(g <= m(cap) && g <= m(actual) && g <= m(pool));
            if let Some(l) = left { prop_assert!(g <= m(l)); }
            let expected = [cap, actual, pool, left.unwrap_or(u64::MAX)].into_iter().min().unwrap();
            prop_assert_eq!(g, m(expected));
        }

        /// Decay never raises a score and more absence never decays less.
        #[test]
        fn decay_is_monotone(score in 0u64..1_000_000, a in 0i64..2_000, b in 0i64..2_000) {
            let r = TrustRules::default();
            let (short, long) = (a.min(b), a.max(b));
            let s1 = r.decayed(score, 0, short * DAY_MS);
            let s2 = r.decayed(score, 0, long * DAY_MS);
            prop_assert!(s1 <= score);
            prop_assert!(s2 <= s1);
        }

        /// Scores never underflow, and paying never lowers a score.
        #[test]
        fn scores_stay_sane(score in 0u64..1_000, paid in 0u64..10_000_000) {
            let r = TrustRules::default();
            prop_assert!(r.after(score, Interaction::served(m(paid))) >= score);
            prop_assert!(r.after(score, Interaction::Failed) <= score);
            prop_assert!(r.after_vouchee_failed(score) <= score);
        }
    }
}
