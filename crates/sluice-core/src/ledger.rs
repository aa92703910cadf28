//! Double-entry postings: every movement of value as legs that sum to zero.
//!
//! The core builds postings; the store writes each one in the same database
//! transaction as the state change that caused it, under the posting's
//! idempotency key, so a repeated external event can never post twice.
//!
//! Accounts (their keys are stored as text):
//! - `lightning:in` — the outside world over Lightning; it goes negative by
//!   exactly what has been received.
//! - `session:<id>` — a session's available balance.
//! - `session:<id>:held` — what is held for the session's in-flight requests.
//! - `revenue` — what requests were charged.
//! - `job:<id>` — what a job's payer has paid for work, held until the job is
//!   re-priced at its actual cost.
//! - `refund:<id>` — a refund owed to a payer (only its payable whole sats
//!   stay here; the sub-sat remainder goes to the pool at the offer).
//! - `pool:generosity` — the generosity pool that pays for free answers: its
//!   seed, a share of paid revenue, refund remainders, dust and unclaimed refunds.
//! - `equity:operator` — what the operator put in (the pool's seed); it goes
//!   negative by exactly that.
//! - `lightning:out` — value paid out over Lightning; it grows by exactly what
//!   has been paid.
//! - `lightning:fees` — routing fees spent by payouts; it grows by exactly what
//!   the payouts spent on fees.
//!
//! Conservation: what was received (`-lightning:in`) plus what the operator put
//! in (`-equity:operator`) equals session balances + held + revenue + jobs +
//! owed refunds + pool + paid out (`lightning:out`) + routing fees (`lightning:fees`).

use crate::job::JobPhase;
use crate::refund::PoolReason;
use crate::{AmountError, Msat, Settlement, settle};

/// A ledger account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    /// Value received over Lightning comes from here.
    LightningIn,
    /// A session's available balance.
    Session(String),
    /// A session's held funds.
    SessionHeld(String),
    /// Charged request revenue.
    Revenue,
    /// What a job's payer has paid, held until the job is re-priced.
    Job(String),
    /// A refund owed to a payer.
    Refund(String),
    /// The generosity pool: its seed, a share of revenue, refund remainders,
    /// dust and unclaimed refunds; it pays for free answers.
    GenerosityPool,
    /// Value paid out over Lightning goes here.
    LightningOut,
    /// Routing fees spent by payouts go here.
    LightningFees,
    /// What the operator put in (the pool's seed) comes from here.
    OperatorEquity,
}

impl Account {
    /// The stored key of the account.
    pub fn key(&self) -> String {
        match self {
            Account::LightningIn => "lightning:in".to_owned(),
            Account::Session(id) => format!("session:{id}"),
            Account::SessionHeld(id) => format!("session:{id}:held"),
            Account::Revenue => "revenue".to_owned(),
            Account::Job(id) => format!("job:{id}"),
            Account::Refund(id) => format!("refund:{id}"),
            Account::GenerosityPool => "pool:generosity".to_owned(),
            Account::LightningOut => "lightning:out".to_owned(),
            Account::LightningFees => "lightning:fees".to_owned(),
            Account::OperatorEquity => "equity:operator".to_owned(),
        }
    }
}

/// What caused a posting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PostingKind {
    /// A deposit or top-up invoice settled.
    Deposit,
    /// Funds held for a request.
    Hold,
    /// A request settled: charged to revenue, the rest released.
    Settle,
    /// A request failed before output: the whole hold released.
    Release,
    /// A refund became owed to a payer.
    RefundOwed,
    /// A refund was paid out over Lightning.
    RefundPaid,
    /// (Part of) a refund went to the generosity pool.
    RefundToPool,
    /// A job's evaluation or work invoice settled.
    JobPaid,
    /// A job phase was re-priced: charged to revenue, the rest owed back.
    JobSettle,
    /// The operator seeded the generosity pool.
    PoolSeed,
    /// A share of paid revenue went to the pool.
    PoolCredit,
    /// The pool paid (part of) a request's cost: a free-tier grant.
    Grant,
}

impl PostingKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PostingKind::Deposit => "deposit",
            PostingKind::Hold => "hold",
            PostingKind::Settle => "settle",
            PostingKind::Release => "release",
            PostingKind::RefundOwed => "refund_owed",
            PostingKind::RefundPaid => "refund_paid",
            PostingKind::RefundToPool => "refund_to_pool",
            PostingKind::JobPaid => "job_paid",
            PostingKind::JobSettle => "job_settle",
            PostingKind::PoolSeed => "pool_seed",
            PostingKind::PoolCredit => "pool_credit",
            PostingKind::Grant => "grant",
        }
    }
}

/// One leg: a signed amount on one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// The account.
    pub account: Account,
    /// Signed msat; credits are positive.
    pub amount_msat: i64,
}

/// A balanced set of legs with its cause and idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// What caused it.
    pub kind: PostingKind,
    /// Unique per external event or state change (`deposit:<payment_hash>`, `hold:<request id>`...).
    pub idempotency_key: String,
    /// The legs; they sum to zero and no amount is zero.
    pub legs: Vec<Leg>,
}

impl Posting {
    fn new(kind: PostingKind, key: String, legs: Vec<(Account, i64)>) -> Posting {
        let legs = legs
            .into_iter()
            .filter(|(_, a)| *a != 0)
            .map(|(account, amount_msat)| Leg {
                account,
                amount_msat,
            })
            .collect();
        Posting {
            kind,
            idempotency_key: key,
            legs,
        }
    }

    /// A settled deposit invoice credits the session.
    pub fn deposit(
        session: &str,
        payment_hash: &str,
        amount: Msat,
    ) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        Ok(Posting::new(
            PostingKind::Deposit,
            format!("deposit:{payment_hash}"),
            vec![
                (Account::LightningIn, -a),
                (Account::Session(session.to_owned()), a),
            ],
        ))
    }

    /// A hold moves funds from available to held.
    pub fn hold(session: &str, request: &str, amount: Msat) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        Ok(Posting::new(
            PostingKind::Hold,
            format!("hold:{request}"),
            vec![
                (Account::Session(session.to_owned()), -a),
                (Account::SessionHeld(session.to_owned()), a),
            ],
        ))
    }

    /// A settlement charges revenue and releases the rest of the hold.
    pub fn settle(
        session: &str,
        request: &str,
        hold: Msat,
        s: Settlement,
    ) -> Result<Posting, AmountError> {
        debug_assert_eq!(s.charged.checked_add(s.released), Ok(hold));
        Ok(Posting::new(
            PostingKind::Settle,
            format!("settle:{request}"),
            vec![
                (Account::SessionHeld(session.to_owned()), -hold.to_i64()?),
                (Account::Revenue, s.charged.to_i64()?),
                (Account::Session(session.to_owned()), s.released.to_i64()?),
            ],
        ))
    }

    /// A release returns the whole hold.
    pub fn release(session: &str, request: &str, hold: Msat) -> Result<Posting, AmountError> {
        let a = hold.to_i64()?;
        Ok(Posting::new(
            PostingKind::Release,
            format!("settle:{request}"),
            vec![
                (Account::SessionHeld(session.to_owned()), -a),
                (Account::Session(session.to_owned()), a),
            ],
        ))
    }

    /// A refund becomes owed: `amount` moves from `from` (a session's balance,
    /// its held funds, or a job account) to `refund:<refund>`.
    /// Key `refund-owed:<refund>`.
    pub fn refund_owed(from: Account, refund: &str, amount: Msat) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        Ok(Posting::new(
            PostingKind::RefundOwed,
            format!("refund-owed:{refund}"),
            vec![(from, -a), (Account::Refund(refund.to_owned()), a)],
        ))
    }

    /// A refund of `amount` was paid over Lightning: the invoice received
    /// `sent` (at most `amount`; the claimant left the rest as a routing-fee
    /// budget) and routing cost `fee`. What the fee did not use of the budget
    /// goes to the generosity pool; a fee above the budget (a backend that
    /// cannot cap fees) is the operator's, taken from revenue. Key
    /// `refund-paid:<refund>`: one refund can be recorded as paid only once,
    /// whatever invoice paid it.
    pub fn refund_paid(
        refund: &str,
        amount: Msat,
        sent: Msat,
        fee: Msat,
    ) -> Result<Posting, AmountError> {
        let budget = amount.checked_sub(sent)?;
        let unused = budget.saturating_sub(fee);
        let over = fee.saturating_sub(budget);
        Ok(Posting::new(
            PostingKind::RefundPaid,
            format!("refund-paid:{refund}"),
            vec![
                (Account::Refund(refund.to_owned()), -amount.to_i64()?),
                (Account::LightningOut, sent.to_i64()?),
                (Account::LightningFees, fee.to_i64()?),
                (Account::GenerosityPool, unused.to_i64()?),
                (Account::Revenue, -over.to_i64()?),
            ],
        ))
    }

    /// (Part of) a refund goes to the generosity pool. Key `refund-pool:<refund>`
    /// for what is pooled at the offer (the sub-sat remainder or a whole dust
    /// refund; never both) and `refund-expired:<refund>` for an unclaimed payout.
    pub fn refund_to_pool(
        refund: &str,
        amount: Msat,
        reason: PoolReason,
    ) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        let key = match reason {
            PoolReason::Remainder | PoolReason::Dust => format!("refund-pool:{refund}"),
            PoolReason::Expired => format!("refund-expired:{refund}"),
        };
        Ok(Posting::new(
            PostingKind::RefundToPool,
            key,
            vec![
                (Account::Refund(refund.to_owned()), -a),
                (Account::GenerosityPool, a),
            ],
        ))
    }

    /// A job's evaluation or work invoice settled: the value is held on the job.
    /// Key `job-paid:<payment_hash>`, like a deposit.
    pub fn job_paid(job: &str, payment_hash: &str, amount: Msat) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        Ok(Posting::new(
            PostingKind::JobPaid,
            format!("job-paid:{payment_hash}"),
            vec![
                (Account::LightningIn, -a),
                (Account::Job(job.to_owned()), a),
            ],
        ))
    }

    /// A job phase is re-priced: of `paid`, `min(actual_charge, paid)` goes to
    /// revenue and the rest is owed back on `refund:<refund>` (a failed phase
    /// passes `actual_charge = 0`: everything is owed back). Key
    /// `job-settle:<job>:<phase>`, so each phase settles once.
    pub fn job_settle(
        job: &str,
        phase: JobPhase,
        refund: &str,
        paid: Msat,
        actual_charge: Msat,
    ) -> Result<Posting, AmountError> {
        let s = settle(paid, actual_charge);
        Ok(Posting::new(
            PostingKind::JobSettle,
            format!("job-settle:{job}:{}", phase.as_str()),
            vec![
                (Account::Job(job.to_owned()), -paid.to_i64()?),
                (Account::Revenue, s.charged.to_i64()?),
                (Account::Refund(refund.to_owned()), s.released.to_i64()?),
            ],
        ))
    }

    /// The operator seeds the pool. Key `pool-seed`: the pool is seeded once,
    /// on the first start, however many gateways start.
    pub fn pool_seed(amount: Msat) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        Ok(Posting::new(
            PostingKind::PoolSeed,
            "pool-seed".to_owned(),
            vec![(Account::OperatorEquity, -a), (Account::GenerosityPool, a)],
        ))
    }

    /// A share of a request's or job's paid revenue goes to the pool. Key
    /// `pool-credit:<source>`.
    pub fn pool_credit(source: &str, amount: Msat) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        Ok(Posting::new(
            PostingKind::PoolCredit,
            format!("pool-credit:{source}"),
            vec![(Account::Revenue, -a), (Account::GenerosityPool, a)],
        ))
    }

    /// The pool pays `amount` of a request's cost: the operator earns it from
    /// the pool instead of the payer. Key `grant:<request>`: one grant per
    /// request, job or demo answer.
    pub fn grant(request: &str, amount: Msat) -> Result<Posting, AmountError> {
        let a = amount.to_i64()?;
        Ok(Posting::new(
            PostingKind::Grant,
            format!("grant:{request}"),
            vec![(Account::GenerosityPool, -a), (Account::Revenue, a)],
        ))
    }

    /// Whether the legs sum to zero (they always do when built here).
    pub fn is_balanced(&self) -> bool {
        self.legs
            .iter()
            .map(|l| l.amount_msat as i128)
            .sum::<i128>()
            == 0
    }
}

#[cfg(test)]
mod tests {
    //! A reference model of the whole money flow, property-tested: value is
    //! conserved, settlement never exceeds a hold, no balance goes negative.
    use super::*;
    use crate::settle;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Book {
        balances: BTreeMap<Account, i64>,
        holds: BTreeMap<String, (String, Msat)>,
        deposited: i64,
        keys: std::collections::HashSet<String>,
        next: u32,
    }

    impl Book {
        fn post(&mut self, p: Posting) -> bool {
            assert!(p.is_balanced());
            if !self.keys.insert(p.idempotency_key.clone()) {
                return false; // a repeat is a no-op
            }
            for l in p.legs {
                *self.balances.entry(l.account).or_default() += l.amount_msat;
            }
            true
        }
        fn bal(&self, a: &Account) -> i64 {
            self.balances.get(a).copied().unwrap_or(0)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Deposit { session: u8, invoice: u8, sats: u32 },
        Hold { session: u8, msat: u32 },
        Settle { which: u8, actual: u32 },
        Release { which: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 0u8..6, 1u32..5_000).prop_map(|(session, invoice, sats)| Op::Deposit {
                session,
                invoice,
                sats
            }),
            (0u8..3, 1u32..3_000_000).prop_map(|(session, msat)| Op::Hold { session, msat }),
            (any::<u8>(), 0u32..4_000_000).prop_map(|(which, actual)| Op::Settle { which, actual }),
            any::<u8>().prop_map(|which| Op::Release { which }),
        ]
    }

    proptest! {
        /// At the i64 boundary of the stored legs, a posting balances exactly or
        /// is refused as an overflow: a leg never wraps.
        #[test]
        fn postings_at_the_i64_boundary_balance_or_are_refused(
            hold in crate::amount::edge_msat(),
            actual in crate::amount::edge_msat(),
            fee in crate::amount::edge_msat(),
        ) {
            let hold_m = Msat::from_msat(hold);
            let st = settle(hold_m, Msat::from_msat(actual));
            for p in [
                Posting::deposit("s", "h", hold_m),
                Posting::hold("s", "r", hold_m),
                Posting::settle("s", "r", hold_m, st),
                Posting::release("s", "r", hold_m),
                Posting::refund_paid("x", hold_m, Msat::from_msat(actual.min(hold)), Msat::from_msat(fee)),
            ] {
                match p {
                    Ok(p) => {
                        prop_assert!(p.is_balanced(), "{:?}", p);
                        prop_assert!(hold <= i64::MAX as u64);
                    }
                    Err(e) => prop_assert_eq!(e, AmountError::Overflow),
                }
            }
        }

        #[test]
        fn value_is_conserved_and_nothing_goes_negative(ops in proptest::collection::vec(op(), 1..200)) {
            let mut b = Book::default();
            for op in ops {
                match op {
                    Op::Deposit { session, invoice, sats } => {
                        let amount = Msat::from_sats(sats as u64).unwrap();
                        // The invoice hash identifies the event: repeats credit nothing.
                        let p = Posting::deposit(&format!("s{session}"), &format!("h{session}-{invoice}"), amount).unwrap();
                        if b.post(p) { b.deposited += amount.to_i64().unwrap(); }
                    }
                    Op::Hold { session, msat } => {
                        let s = format!("s{session}");
                        let amount = Msat::from_msat(msat as u64);
                        // The rule the store enforces atomically: hold only what is available.
                        if b.bal(&Account::Session(s.clone())) >= amount.to_i64().unwrap() {
                            b.next += 1;
                            let r = format!("r{}", b.next);
                            prop_assert!(b.post(Posting::hold(&s, &r, amount).unwrap()));
                            b.holds.insert(r, (s, amount));
                        }
                    }
                    Op::Settle { which, actual } => {
                        if let Some(r) = b.holds.keys().nth(which as usize % b.holds.len().max(1)).cloned() {
                            let (s, hold) = b.holds.remove(&r).unwrap();
                            let st = settle(hold, Msat::from_msat(actual as u64));
                            prop_assert!(st.charged <= hold);
                            prop_assert!(b.post(Posting::settle(&s, &r, hold, st).unwrap()));
                            // Settling twice is refused by the key, in either form.
                            prop_assert!(!b.post(Posting::release(&s, &r, hold).unwrap()));
                        }
                    }
                    Op::Release { which } => {
                        if let Some(r) = b.holds.keys().nth(which as usize % b.holds.len().max(1)).cloned() {
                            let (s, hold) = b.holds.remove(&r).unwrap();
                            prop_assert!(b.post(Posting::release(&s, &r, hold).unwrap()));
                        }
                    }
                }
                for (a, v) in &b.balances {
                    if *a != Account::LightningIn { prop_assert!(*v >= 0, "{:?} went negative: {}", a, v); }
                }
                let total: i64 = b.balances.values().sum();
                prop_assert_eq!(total, 0);
                let kept: i64 = b.balances.iter().filter(|(a, _)| **a != Account::LightningIn).map(|(_, v)| *v).sum();
                prop_assert_eq!(kept, b.deposited); // deposits = balances + held + revenue
                prop_assert_eq!(-b.bal(&Account::LightningIn), b.deposited);
            }
        }
    }

    /// Jobs and refunds on top of sessions: every event goes through the pure
    /// job and refund rules, and the postings they call for keep the books whole.
    #[derive(Debug, Clone)]
    enum Flow {
        Deposit {
            session: u8,
            sats: u32,
        },
        JobPaid {
            job: u8,
            phase: bool,
            sats: u32,
        },
        JobSettle {
            job: u8,
            phase: bool,
            actual: u32,
        },
        SessionRefund {
            session: u8,
            msat: u32,
        },
        Claim {
            which: u8,
            off_by: i16,
            hash: u8,
            now: i64,
        },
        Outcome {
            which: u8,
            hash: u8,
            kind: u8,
        },
        Expire {
            which: u8,
            now: i64,
        },
    }

    fn flow() -> impl Strategy<Value = Flow> {
        let phase = any::<bool>();
        prop_oneof![
            (0u8..3, 1u32..5_000).prop_map(|(session, sats)| Flow::Deposit { session, sats }),
            (0u8..4, phase, 1u32..5_000).prop_map(|(job, phase, sats)| Flow::JobPaid {
                job,
                phase,
                sats
            }),
            (0u8..4, phase, 0u32..6_000_000).prop_map(|(job, phase, actual)| Flow::JobSettle {
                job,
                phase,
                actual
            }),
            (0u8..3, 1u32..3_000_000)
                .prop_map(|(session, msat)| Flow::SessionRefund { session, msat }),
            (any::<u8>(), -1200i16..2, 0u8..3, 0i64..2_000).prop_map(
                |(which, off_by, hash, now)| {
                    Flow::Claim {
                        which,
                        off_by,
                        hash,
                        now,
                    }
                }
            ),
            (any::<u8>(), 0u8..3, 0u8..3).prop_map(|(which, hash, kind)| Flow::Outcome {
                which,
                hash,
                kind
            }),
            (any::<u8>(), 0i64..2_000).prop_map(|(which, now)| Flow::Expire { which, now }),
        ]
    }

    fn offer(
        b: &mut Book,
        refunds: &mut BTreeMap<String, crate::Refund>,
        id: String,
        amount: Msat,
    ) {
        let step = crate::refund::transition(
            &crate::Refund::new(),
            crate::RefundEvent::Offer {
                amount,
                dust_threshold: Msat::from_msat(3_000),
                expires_at_ms: 1_000,
            },
        )
        .unwrap();
        for p in step.postings(&id).unwrap() {
            assert!(b.post(p));
        }
        refunds.insert(id, step.refund);
    }

    proptest! {
        #[test]
        fn value_is_conserved_with_jobs_and_refunds(flows in proptest::collection::vec(flow(), 1..200)) {
            use crate::{JobPhase, RefundEvent, RefundState};
            let mut b = Book::default();
            let mut refunds: BTreeMap<String, crate::Refund> = BTreeMap::new();
            let mut job_paid: BTreeMap<(u8, bool), Msat> = BTreeMap::new();
            let mut paid_out = 0i64;
            let mut fees = 0i64;
            for f in flows {
                match f {
                    Flow::Deposit { session, sats } => {
                        let amount = Msat::from_sats(sats as u64).unwrap();
                        b.next += 1;
                        let p = Posting::deposit(&format!("s{session}"), &format!("d{}", b.next), amount).unwrap();
                        prop_assert!(b.post(p));
                        b.deposited += amount.to_i64().unwrap();
                    }
                    Flow::JobPaid { job, phase, sats } => {
                        let amount = Msat::from_sats(sats as u64).unwrap();
                        // One invoice per job phase: a repeated settlement event credits nothing.
                        let p = Posting::job_paid(&format!("j{job}"), &format!("j{job}-{phase}"), amount).unwrap();
                        if b.post(p) {
                            b.deposited += amount.to_i64().unwrap();
                            job_paid.insert((job, phase), amount);
                        }
                    }
                    Flow::JobSettle { job, phase, actual } => {
                        if let Some(&paid) = job_paid.get(&(job, phase)) {
                            let ph = if phase { JobPhase::Work } else { JobPhase::Eval };
                            let refund_id = format!("j{job}-{}", ph.as_str());
                            let actual = Msat::from_msat(actual as u64);
                            let p = Posting::job_settle(&format!("j{job}"), ph, &refund_id, paid, actual).unwrap();
                            if b.post(p) {
                                offer(&mut b, &mut refunds, refund_id, crate::refund_amount(paid, actual));
                            }
                        }
                    }
                    Flow::SessionRefund { session, msat } => {
                        let s = Account::Session(format!("s{session}"));
                        let amount = Msat::from_msat(msat as u64);
                        if b.bal(&s) >= amount.to_i64().unwrap() {
                            b.next += 1;
                            let id = format!("close{}", b.next);
                            prop_assert!(b.post(Posting::refund_owed(s, &id, amount).unwrap()));
                            offer(&mut b, &mut refunds, id, amount);
                        }
                    }
                    Flow::Claim { .. } | Flow::Outcome { .. } | Flow::Expire { .. } => {
                        let which = match f { Flow::Claim { which, .. } | Flow::Outcome { which, .. } | Flow::Expire { which, .. } => which, _ => 0 };
                        let Some(id) = refunds.keys().nth(which as usize % refunds.len().max(1)).cloned() else { continue };
                        let r = refunds[&id].clone();
                        let event = match f {
                            Flow::Claim { off_by, hash, now, .. } => RefundEvent::Claim {
                                invoice_amount: Msat::from_msat(r.payout.msat().saturating_add_signed(i64::from(off_by))),
                                invoice_hash: format!("{id}-i{hash}"),
                                invoice_expires_at_ms: now + 100,
                                max_fee_budget: Msat::from_msat(1_000),
                                min_fee_budget: Msat::ZERO,
                                now_ms: now,
                            },
                            // The fee spends half of the claimant's budget (the rest goes to the pool).
                            Flow::Outcome { hash, kind: 0, .. } => RefundEvent::PayoutSucceeded {
                                payment_hash: format!("{id}-i{hash}"),
                                preimage: "p".into(),
                                fee: Msat::from_msat(r.payout.saturating_sub(r.claimed).msat() / 2),
                            },
                            Flow::Outcome { hash, kind: 1, .. } => RefundEvent::PayoutFailed { payment_hash: format!("{id}-i{hash}") },
                            Flow::Outcome { hash, .. } => RefundEvent::PayoutUnknown { payment_hash: format!("{id}-i{hash}") },
                            Flow::Expire { now, .. } => RefundEvent::Expire { now_ms: now },
                            _ => continue,
                        };
                        if let Ok(step) = crate::refund::transition(&r, event) {
                            for p in step.postings(&id).unwrap() {
                                if p.kind == PostingKind::RefundPaid {
                                    paid_out += p.legs.iter().find(|l| l.account == Account::LightningOut).unwrap().amount_msat;
                                    fees += p.legs.iter().find(|l| l.account == Account::LightningFees).map_or(0, |l| l.amount_msat);
                                }
                                prop_assert!(b.post(p), "a refund posting repeated an idempotency key");
                            }
                            refunds.insert(id, step.refund);
                        }
                    }
                }
                for (a, v) in &b.balances {
                    if *a != Account::LightningIn { prop_assert!(*v >= 0, "{:?} went negative: {}", a, v); }
                }
                prop_assert_eq!(b.balances.values().sum::<i64>(), 0);
                // received = balances + held + revenue + jobs + owed refunds + pool + paid out
                prop_assert_eq!(-b.bal(&Account::LightningIn), b.deposited);
                prop_assert_eq!(b.bal(&Account::LightningOut), paid_out);
                prop_assert_eq!(b.bal(&Account::LightningFees), fees);
                let kept: i64 = b.balances.iter().filter(|(a, _)| **a != Account::LightningIn).map(|(_, v)| *v).sum();
                prop_assert_eq!(kept, b.deposited);
                // A refund account holds exactly what can still be claimed.
                for (id, r) in &refunds {
                    let owed = b.bal(&Account::Refund(id.clone()));
                    match r.state {
                        RefundState::Pending | RefundState::Paying => prop_assert_eq!(owed, r.payout.to_i64().unwrap()),
                        _ => prop_assert_eq!(owed, 0),
                    }
                }
            }
        }
    }
}
