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

use crate::{AmountError, Msat, Settlement};

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
}

impl Account {
    /// The stored key of the account.
    pub fn key(&self) -> String {
        match self {
            Account::LightningIn => "lightning:in".to_owned(),
            Account::Session(id) => format!("session:{id}"),
            Account::SessionHeld(id) => format!("session:{id}:held"),
            Account::Revenue => "revenue".to_owned(),
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
}

impl PostingKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PostingKind::Deposit => "deposit",
            PostingKind::Hold => "hold",
            PostingKind::Settle => "settle",
            PostingKind::Release => "release",
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
}
