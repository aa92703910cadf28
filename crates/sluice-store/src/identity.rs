//! Types of the identity, trust and free-tier part of the [`crate::Store`].
//!
//! Locking (the same order in every transaction, so two never wait on each
//! other in a cycle): the request or job row first, then the session row,
//! then the `pool` row, then `identities` rows (the request's identity before
//! its vouchers), then spend caps. On
//! PostgreSQL rows are locked with `UPDATE … RETURNING` (a row lock held to the
//! end of the transaction); SQLite's write transactions hold the database's
//! single write lock from their first statement.

use sluice_core::{Msat, Tier, TrustRules};

/// Settings every money-moving call that touches the free tier needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    /// Percent of each payer's charge credited to the generosity pool
    /// (`sluice_core::pool_credit`).
    pub pool_credit_pct: u32,
    /// How identities' scores change.
    pub trust: TrustRules,
}

impl Default for Accounting {
    fn default() -> Self {
        Accounting {
            pool_credit_pct: 10,
            trust: TrustRules::default(),
        }
    }
}

/// What a grant pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// A chat completion (session, L402 or identity only).
    Chat,
    /// The work of a two-phase job.
    Job,
    /// The unpaid demo endpoint.
    Demo,
}

impl GrantKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Chat => "chat",
            GrantKind::Job => "job",
            GrantKind::Demo => "demo",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<GrantKind> {
        Some(match s {
            "chat" => GrantKind::Chat,
            "job" => GrantKind::Job,
            "demo" => GrantKind::Demo,
            _ => return None,
        })
    }
}

/// A free-tier grant decided before the work, to be recorded after it.
///
/// Recording it is one transaction: lock the pool, absorb
/// `sluice_core::grant(cap, actual, pool balance, allowance left today)`, add
/// that to the identity's absorption today (a new UTC day starts from zero),
/// and write the audit row and the `grant:<id>` posting with the amount
/// actually absorbed. When that amount is zero nothing is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantAsk {
    /// What it pays for.
    pub kind: GrantKind,
    /// The identity whose daily allowance it uses; `None` for the demo endpoint.
    pub pubkey: Option<String>,
    /// The identity's tier when the decision was made (for the audit row).
    pub tier: Tier,
    /// The model that answered.
    pub model: String,
    /// The most the pool may absorb: the decision's `absorb`, on the estimate.
    pub cap: Msat,
    /// The identity's daily allowance; `None` when no allowance applies (demo).
    pub allowance: Option<Msat>,
}

/// A stored grant: the audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// The request, job or demo answer it paid for (unique).
    pub id: String,
    /// What it paid for.
    pub kind: GrantKind,
    /// The identity, if any.
    pub pubkey: Option<String>,
    /// Tier at decision time.
    pub tier: Tier,
    /// The model.
    pub model: String,
    /// What was asked of the pool: `min(cap, actual cost)`.
    pub requested: Msat,
    /// What the pool actually absorbed (more than zero).
    pub absorbed: Msat,
    /// UTC day of the grant (`sluice_core::day_of`).
    pub day: i64,
    /// Recorded, unix ms.
    pub created_at_ms: i64,
}

/// A stored identity. `score` is as stored; read it through
/// `TrustRules::decayed(score, last_seen_ms, now)` for lazy decay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRow {
    /// Lowercase hex x-only public key.
    pub pubkey: String,
    /// Stored score (decay not applied).
    pub score: u64,
    /// Served interactions.
    pub successes: u64,
    /// Failed interactions (rejected and failed jobs).
    pub failures: u64,
    /// What this identity has paid in all.
    pub paid: Msat,
    /// What the pool has absorbed for it in all.
    pub absorbed: Msat,
    /// What the pool absorbed for it on `absorbed_day`.
    pub absorbed_today: Msat,
    /// The UTC day `absorbed_today` counts.
    pub absorbed_day: i64,
    /// First seen, unix ms.
    pub first_seen_ms: i64,
    /// Last seen, unix ms.
    pub last_seen_ms: i64,
    /// Distinct UTC days on which it paid for something.
    pub paid_days: u64,
    /// The last UTC day it paid for something.
    pub last_paid_day: Option<i64>,
}

/// What consuming a login challenge found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeUse {
    /// Issued, unexpired, and now used up.
    Consumed,
    /// Issued but expired (and now removed).
    Expired,
    /// Never issued, or used before: a replay.
    Unknown,
}

/// A vouch to store (the signed event was checked by the caller, and the
/// voucher's tier too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVouch {
    /// Who vouches.
    pub voucher: String,
    /// For whom.
    pub vouchee: String,
    /// The signed event's id.
    pub event_id: String,
    /// Now, unix ms.
    pub now_ms: i64,
}

/// What adding a vouch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VouchOutcome {
    /// Stored.
    Added,
    /// This voucher already vouches for this key: nothing changed.
    AlreadyVouched,
    /// The voucher already has `max` vouches: nothing changed.
    TooMany {
        /// The limit.
        max: u32,
    },
}

/// The pool's state for `GET /v1/pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Balance now.
    pub balance: Msat,
    /// What the operator seeded it with.
    pub seeded: Msat,
    /// Grants recorded on the asked day.
    pub grants_today: u64,
    /// What they absorbed.
    pub absorbed_today: Msat,
    /// Credited from paid revenue, in all.
    pub credited: Msat,
    /// Absorbed by grants, in all.
    pub absorbed: Msat,
}
