//! Refunds that cannot be lost: how much is owed, what can be paid over
//! Lightning, and the claim/payout state machine.
//!
//! A refund is what is left of a payment after the actual charge. It is exact in
//! msat, but a Lightning refund invoice is for whole sats, so the payable part is
//! rounded **down** and the sub-sat remainder goes to the generosity pool. A
//! refund too small to be worth paying (below a configured dust threshold, or
//! below one sat) goes to the pool whole.
//!
//! The state machine is pure: [`transition`] takes a [`Refund`] and a
//! [`RefundEvent`] and returns the next refund together with the
//! [`RefundEffect`]s the caller must carry out (postings to write, a payout to
//! send). The invariants it guarantees, property-tested below:
//! - at most one payout ever succeeds for a refund: a new invoice is accepted
//!   only when no payout is in flight, an in-flight payout whose outcome is
//!   unknown must be reconciled (looked up by payment hash) first, and after a
//!   payout the backend reported failed only that same invoice may be retried
//!   until it expires (a backend can be wrong about a failure: an HTLC held by
//!   someone on the route may still settle);
//! - the claimant bears the routing fee: the invoice may be for less than the
//!   payout, by at most a configured budget, and what it leaves is the most
//!   the payout may spend on fees; what the fee did not use goes to the pool;
//! - the refund is conserved: paid out + to the pool == the refund, each part
//!   exactly once;
//! - `Claimed` and `Expired` are terminal, and so is a dust refund in `None`.

use crate::{AmountError, Msat, Posting, settle};

/// A default dust threshold: a refund below 1 sat cannot be paid at all.
pub const DEFAULT_DUST_THRESHOLD: Msat = Msat::from_msat(1_000);

/// The exact refund for a payment of `paid` whose actual charge is `actual_charge`:
/// `paid - min(actual_charge, paid)`. A charge above what was paid is never
/// taken from anywhere else, so the refund is then zero.
pub fn refund_amount(paid: Msat, actual_charge: Msat) -> Msat {
    settle(paid, actual_charge).released
}

/// The whole sats of `refund` a Lightning invoice can pay, rounding down.
pub fn payable_sats(refund: Msat) -> u64 {
    refund.to_sats_floor()
}

/// How a refund is divided between a Lightning payout and the generosity pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundSplit {
    /// Whole sats the payer can claim with an invoice (0 for dust).
    pub payout_sats: u64,
    /// `payout_sats` in msat.
    pub payout: Msat,
    /// What goes to the generosity pool: the sub-sat remainder, or all of a dust refund.
    pub remainder_to_pool: Msat,
}

impl RefundSplit {
    /// Whether nothing can be claimed (everything went to the pool).
    pub fn is_dust(&self) -> bool {
        self.payout_sats == 0
    }
}

/// Split `refund` into its payable whole sats and the remainder for the pool.
///
/// A refund below `dust_threshold`, or one below a single sat, goes to the
/// pool whole. Always `payout + remainder_to_pool == refund`.
pub fn split_refund(refund: Msat, dust_threshold: Msat) -> RefundSplit {
    let payout_sats = payable_sats(refund);
    if refund < dust_threshold || payout_sats == 0 {
        return RefundSplit {
            payout_sats: 0,
            payout: Msat::ZERO,
            remainder_to_pool: refund,
        };
    }
    // payout_sats * 1000 <= refund, so this cannot overflow.
    let payout = Msat::from_msat(payout_sats * 1_000);
    RefundSplit {
        payout_sats,
        payout,
        remainder_to_pool: refund.saturating_sub(payout),
    }
}

/// The routing-fee budget a claim of `payout` may leave, `(least, most)`:
/// at least `min_fee_budget` (what the backend reserves), at most the larger
/// of that and `max_fee_budget`, and never more than the payout itself.
pub fn fee_budget_bounds(payout: Msat, min_fee_budget: Msat, max_fee_budget: Msat) -> (Msat, Msat) {
    let least = min_fee_budget.min(payout);
    (least, max_fee_budget.max(least).min(payout))
}

/// Whether a claim invoice for `invoice_amount` may claim a payout of
/// `payout`: it must leave between `min_fee_budget` (what the Lightning
/// backend reserves) and `max_fee_budget` for routing, and be for more than
/// nothing. The claimant bears the routing fee.
pub fn check_claim_amount(
    payout: Msat,
    invoice_amount: Msat,
    min_fee_budget: Msat,
    max_fee_budget: Msat,
) -> Result<(), RefundError> {
    let (least, budget) = fee_budget_bounds(payout, min_fee_budget, max_fee_budget);
    let lowest = payout.saturating_sub(budget);
    let highest = payout.saturating_sub(least);
    if invoice_amount > highest || invoice_amount < lowest || invoice_amount == Msat::ZERO {
        return Err(RefundError::WrongAmount {
            expected_sats: payout.to_sats_floor(),
            expected_msat: payout.msat(),
            budget_msat: budget.msat(),
            min_budget_msat: least.msat(),
            got_msat: invoice_amount.msat(),
        });
    }
    Ok(())
}

/// Record `next` as paid by the payment of `payment_hash` (proved by
/// `preimage`, at routing fee `fee`), and the posting that books it.
fn claimed(next: &mut Refund, payment_hash: String, preimage: String, fee: Msat) -> RefundEffect {
    next.state = RefundState::Claimed;
    next.payment_hash = Some(payment_hash);
    next.lookup_required = false;
    next.failed_hash = None;
    next.preimage = Some(preimage);
    next.fee = fee;
    RefundEffect::Paid {
        amount: next.payout,
        sent: next.claimed,
        fee,
    }
}

/// Where a refund is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundState {
    /// Nothing is claimable: not offered yet, nothing owed, or a dust refund
    /// that went to the pool whole.
    None,
    /// Offered; the payer may claim it with an invoice until it expires.
    Pending,
    /// A payout to a claimed invoice is in flight (or its outcome is unknown).
    Paying,
    /// Paid out. Terminal.
    Claimed,
    /// Not claimed in time; the payable part went to the pool. Terminal.
    Expired,
}

impl RefundState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::None => "none",
            RefundState::Pending => "pending",
            RefundState::Paying => "paying",
            RefundState::Claimed => "claimed",
            RefundState::Expired => "expired",
        }
    }

    /// Parse the wire and database name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => RefundState::None,
            "pending" => RefundState::Pending,
            "paying" => RefundState::Paying,
            "claimed" => RefundState::Claimed,
            "expired" => RefundState::Expired,
            _ => return None,
        })
    }

    /// Whether no event can change this state.
    pub fn is_terminal(self) -> bool {
        matches!(self, RefundState::Claimed | RefundState::Expired)
    }
}

/// Why value went to the generosity pool; each reason has its own
/// idempotency key, so each can be posted at most once per refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolReason {
    /// The sub-sat remainder of a payable refund, at the offer.
    Remainder,
    /// A refund below the dust threshold, whole, at the offer.
    Dust,
    /// The payable part of a refund nobody claimed in time.
    Expired,
}

impl PoolReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolReason::Remainder => "remainder",
            PoolReason::Dust => "dust",
            PoolReason::Expired => "expired",
        }
    }
}

/// A refund as stored: its state and the facts the transitions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// The state.
    pub state: RefundState,
    /// The exact refund in msat (zero until offered).
    pub amount: Msat,
    /// The part payable over Lightning, in whole sats (zero for dust).
    pub payout: Msat,
    /// When the offer lapses (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// The payment hash of the invoice being paid (`Paying`) or paid (`Claimed`).
    pub payment_hash: Option<String>,
    /// The in-flight payout's outcome is unknown: it must be looked up by
    /// payment hash (and resolved with a success or failure) before anything else.
    pub lookup_required: bool,
    /// Proof of payment, once `Claimed`.
    pub preimage: Option<String>,
    /// The amount of the invoice being paid (`Paying`) or paid (`Claimed`):
    /// at most `payout`; the difference is the routing-fee budget.
    pub claimed: Msat,
    /// The routing fee the payout spent, once `Claimed`.
    pub fee: Msat,
    /// The invoice whose payout the backend last reported failed: until
    /// `invoice_expires_at_ms`, only it may be claimed again.
    pub failed_hash: Option<String>,
    /// When the invoice being (or last) paid expires (ms since the Unix epoch).
    pub invoice_expires_at_ms: i64,
}

impl Default for Refund {
    fn default() -> Self {
        Refund::new()
    }
}

impl Refund {
    /// A refund that has not been offered.
    pub const fn new() -> Refund {
        Refund {
            state: RefundState::None,
            amount: Msat::ZERO,
            payout: Msat::ZERO,
            expires_at_ms: 0,
            payment_hash: None,
            lookup_required: false,
            preimage: None,
            claimed: Msat::ZERO,
            fee: Msat::ZERO,
            failed_hash: None,
            invoice_expires_at_ms: 0,
        }
    }

    /// The whole sats a claim invoice must be for.
    pub fn payout_sats(&self) -> u64 {
        self.payout.to_sats_floor()
    }

    /// Whether no event can change this refund any more: `Claimed`, `Expired`,
    /// or a dust refund that went to the pool.
    pub fn is_final(&self) -> bool {
        self.state.is_terminal() || (self.state == RefundState::None && self.amount > Msat::ZERO)
    }
}

/// Something that happens to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundEvent {
    /// Offer `amount` (the exact refund) to the payer until `expires_at_ms`.
    Offer {
        /// The exact refund, from [`refund_amount`].
        amount: Msat,
        /// Below this the refund goes to the pool whole.
        dust_threshold: Msat,
        /// When the offer lapses.
        expires_at_ms: i64,
    },
    /// The payer claims the refund with a Lightning invoice.
    Claim {
        /// The invoice's amount: the payout, or less by at most `max_fee_budget`
        /// (what it leaves is the routing-fee budget, borne by the claimant).
        invoice_amount: Msat,
        /// The invoice's payment hash.
        invoice_hash: String,
        /// When the invoice expires.
        invoice_expires_at_ms: i64,
        /// The most of the payout the claimant may leave for routing fees.
        max_fee_budget: Msat,
        /// The least it must leave: what a backend that cannot cap fees may
        /// spend (LNbits' reserve); zero for backends that honour the limit.
        min_fee_budget: Msat,
        /// The time of the claim.
        now_ms: i64,
    },
    /// The payout to the claimed invoice succeeded. Also accepted for the
    /// invoice last reported failed (the backend was wrong; a later look-up
    /// found it paid).
    PayoutSucceeded {
        /// The payment hash that was paid (must be the claimed invoice's).
        payment_hash: String,
        /// The preimage returned by the payment, kept as proof.
        preimage: String,
        /// The routing fee the payment spent.
        fee: Msat,
    },
    /// The backend reports the payout failed: nothing was paid as far as it
    /// knows, so the refund can be claimed again — with the same invoice until
    /// it expires, then with a new one (after the caller has looked the old
    /// payment up once more).
    PayoutFailed {
        /// The payment hash that failed (must be the claimed invoice's).
        payment_hash: String,
    },
    /// The backend refused the payout before sending anything (a malformed or
    /// expired invoice, not enough balance): claimable again at once, with any
    /// invoice.
    PayoutRefused {
        /// The payment hash refused (must be the claimed invoice's).
        payment_hash: String,
    },
    /// The payout's outcome is unknown (a timeout, a lost connection, a crash):
    /// it may still succeed, so it must be looked up before anything else.
    PayoutUnknown {
        /// The payment hash in doubt (must be the claimed invoice's).
        payment_hash: String,
    },
    /// The offer's time is up.
    Expire {
        /// The time now.
        now_ms: i64,
    },
}

impl RefundEvent {
    /// The event's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            RefundEvent::Offer { .. } => "offer",
            RefundEvent::Claim { .. } => "claim",
            RefundEvent::PayoutSucceeded { .. } => "payout_succeeded",
            RefundEvent::PayoutFailed { .. } => "payout_failed",
            RefundEvent::PayoutRefused { .. } => "payout_refused",
            RefundEvent::PayoutUnknown { .. } => "payout_unknown",
            RefundEvent::Expire { .. } => "expire",
        }
    }
}

/// What the caller must do after a transition, in the same transaction as
/// storing the new state (the payout is sent after that commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundEffect {
    /// Post [`Posting::refund_to_pool`].
    ToPool {
        /// How much.
        amount: Msat,
        /// Why (selects the idempotency key).
        reason: PoolReason,
    },
    /// Send the payout: pay the invoice with this hash for `amount`,
    /// spending at most `max_fee` on routing.
    Pay {
        /// The invoice's payment hash.
        payment_hash: String,
        /// The invoice's amount.
        amount: Msat,
        /// The claimant's routing-fee budget.
        max_fee: Msat,
    },
    /// Post [`Posting::refund_paid`].
    Paid {
        /// What the refund owed (its payout), all of which leaves it now.
        amount: Msat,
        /// What the invoice received.
        sent: Msat,
        /// The routing fee spent.
        fee: Msat,
    },
}

/// The result of a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundStep {
    /// The refund after the event.
    pub refund: Refund,
    /// What the caller must carry out.
    pub effects: Vec<RefundEffect>,
}

impl RefundStep {
    /// The ledger postings for this step's effects, for the refund `refund_id`.
    pub fn postings(&self, refund_id: &str) -> Result<Vec<Posting>, AmountError> {
        let mut out = Vec::new();
        for e in &self.effects {
            match e {
                RefundEffect::ToPool { amount, reason } => {
                    out.push(Posting::refund_to_pool(refund_id, *amount, *reason)?);
                }
                RefundEffect::Paid { amount, sent, fee } => {
                    out.push(Posting::refund_paid(refund_id, *amount, *sent, *fee)?);
                }
                RefundEffect::Pay { .. } => {}
            }
        }
        Ok(out)
    }
}

/// Why a refund event was refused. The refund is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    /// No refund is owed (nothing was offered, or the offer was zero).
    #[error("no refund is owed")]
    NothingToClaim,
    /// The refund was below the dust threshold and went to the generosity pool.
    #[error("the refund of {amount} was too small to pay and went to the generosity pool")]
    Dust {
        /// The refund.
        amount: Msat,
    },
    /// The refund was offered already.
    #[error("the refund was already offered")]
    AlreadyOffered,
    /// The claim invoice is not for the payable amount (less at most the fee budget).
    #[error(
        "the refund invoice must be for exactly {expected_sats} sats ({expected_msat} msat) less a routing-fee budget (which you bear) of {min_budget_msat} to {budget_msat} msat; got {got_msat} msat"
    )]
    WrongAmount {
        /// The payable amount in whole sats.
        expected_sats: u64,
        /// The payable amount in msat.
        expected_msat: u64,
        /// The most the invoice may leave for routing fees.
        budget_msat: u64,
        /// The least it must leave (what the backend may spend whatever its limit).
        min_budget_msat: u64,
        /// The invoice's amount in msat.
        got_msat: u64,
    },
    /// A payout to another invoice was reported failed, and that invoice has
    /// not expired: only it may be retried until then.
    #[error(
        "the payout to invoice {payment_hash} was reported failed; retry with that same invoice, or claim with a new one after it expires (at {until_ms} ms)"
    )]
    RetrySameInvoice {
        /// The invoice to retry.
        payment_hash: String,
        /// When a new invoice will be accepted.
        until_ms: i64,
    },
    /// The offer lapsed; apply [`RefundEvent::Expire`] to move it to the pool.
    #[error("the refund offer expired")]
    Expired {
        /// When it lapsed.
        expires_at_ms: i64,
    },
    /// Expiry was requested before the offer lapsed.
    #[error("the refund offer has not expired yet")]
    NotExpired {
        /// When it lapses.
        expires_at_ms: i64,
    },
    /// The refund was claimed already, by the invoice with this payment hash.
    #[error("the refund was already claimed by invoice {payment_hash}")]
    AlreadyClaimed {
        /// The first claim's payment hash.
        payment_hash: String,
    },
    /// A payout is in flight; it must finish (or be reconciled) first.
    #[error("a payout to invoice {payment_hash} is in flight")]
    PayoutInFlight {
        /// The in-flight payment hash.
        payment_hash: String,
    },
    /// A payout outcome arrived but no payout is in flight.
    #[error("no payout is in flight")]
    NoPayoutInFlight,
    /// A payout outcome is for a different invoice than the one being paid.
    #[error("the payout outcome is for invoice {got}, but invoice {expected} is being paid")]
    HashMismatch {
        /// The hash being paid.
        expected: String,
        /// The outcome's hash.
        got: String,
    },
    /// Amount arithmetic failed.
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// Apply `event` to `refund`: the next refund and its effects, or why not.
///
/// An error never changes anything, so a caller may retry freely.
pub fn transition(refund: &Refund, event: RefundEvent) -> Result<RefundStep, RefundError> {
    use RefundState as S;
    let mut next = refund.clone();
    let mut effects = Vec::new();
    match (refund.state, event) {
        // Terminal and dust refunds refuse everything, each with the reason a
        // payer would want to see.
        (S::Claimed, _) => {
            return Err(RefundError::AlreadyClaimed {
                payment_hash: refund.payment_hash.clone().unwrap_or_default(),
            });
        }
        (S::Expired, _) => {
            return Err(RefundError::Expired {
                expires_at_ms: refund.expires_at_ms,
            });
        }
        (S::None, _) if refund.amount > Msat::ZERO => {
            return Err(RefundError::Dust {
                amount: refund.amount,
            });
        }

        (
            S::None,
            RefundEvent::Offer {
                amount,
                dust_threshold,
                expires_at_ms,
            },
        ) => {
            let split = split_refund(amount, dust_threshold);
            next.amount = amount;
            next.expires_at_ms = expires_at_ms;
            if split.is_dust() {
                // Stays `None` (nothing claimable); the non-zero amount marks it final.
                if amount > Msat::ZERO {
                    effects.push(RefundEffect::ToPool {
                        amount,
                        reason: PoolReason::Dust,
                    });
                }
            } else {
                next.state = S::Pending;
                next.payout = split.payout;
                if split.remainder_to_pool > Msat::ZERO {
                    effects.push(RefundEffect::ToPool {
                        amount: split.remainder_to_pool,
                        reason: PoolReason::Remainder,
                    });
                }
            }
        }
        (S::None, _) => return Err(RefundError::NothingToClaim),

        (S::Pending | S::Paying, RefundEvent::Offer { .. }) => {
            return Err(RefundError::AlreadyOffered);
        }

        (
            S::Pending,
            RefundEvent::Claim {
                invoice_amount,
                invoice_hash,
                invoice_expires_at_ms,
                max_fee_budget,
                min_fee_budget,
                now_ms,
            },
        ) => {
            if let Some(failed) = &refund.failed_hash
                && *failed != invoice_hash
                && now_ms < refund.invoice_expires_at_ms
            {
                return Err(RefundError::RetrySameInvoice {
                    payment_hash: failed.clone(),
                    until_ms: refund.invoice_expires_at_ms,
                });
            }
            if now_ms >= refund.expires_at_ms {
                return Err(RefundError::Expired {
                    expires_at_ms: refund.expires_at_ms,
                });
            }
            check_claim_amount(
                refund.payout,
                invoice_amount,
                min_fee_budget,
                max_fee_budget,
            )?;
            next.state = S::Paying;
            // A new invoice after the failed one expired (and its payment was
            // looked up once more by the caller): the failure binds no more.
            if next.failed_hash.as_deref() != Some(invoice_hash.as_str()) {
                next.failed_hash = None;
            }
            next.payment_hash = Some(invoice_hash.clone());
            next.lookup_required = false;
            next.claimed = invoice_amount;
            next.invoice_expires_at_ms = invoice_expires_at_ms;
            effects.push(RefundEffect::Pay {
                payment_hash: invoice_hash,
                amount: invoice_amount,
                max_fee: refund.payout.saturating_sub(invoice_amount),
            });
        }
        (S::Paying, RefundEvent::Claim { .. }) => {
            return Err(RefundError::AlreadyClaimed {
                payment_hash: refund.payment_hash.clone().unwrap_or_default(),
            });
        }

        (S::Pending, RefundEvent::Expire { now_ms }) => {
            if now_ms < refund.expires_at_ms {
                return Err(RefundError::NotExpired {
                    expires_at_ms: refund.expires_at_ms,
                });
            }
            // A payout reported failed may still settle while its invoice lives.
            if let Some(failed) = &refund.failed_hash
                && now_ms < refund.invoice_expires_at_ms
            {
                return Err(RefundError::RetrySameInvoice {
                    payment_hash: failed.clone(),
                    until_ms: refund.invoice_expires_at_ms,
                });
            }
            next.state = S::Expired;
            effects.push(RefundEffect::ToPool {
                amount: refund.payout,
                reason: PoolReason::Expired,
            });
        }
        // Money may be on its way to the payer: it cannot also go to the pool.
        (S::Paying, RefundEvent::Expire { .. }) => {
            return Err(RefundError::PayoutInFlight {
                payment_hash: refund.payment_hash.clone().unwrap_or_default(),
            });
        }

        // The backend said a payout failed, and a later look-up found it paid.
        (
            S::Pending,
            RefundEvent::PayoutSucceeded {
                payment_hash,
                preimage,
                fee,
            },
        ) if refund.failed_hash.as_deref() == Some(payment_hash.as_str()) => {
            effects.push(claimed(&mut next, payment_hash, preimage, fee));
        }
        (
            S::Pending,
            RefundEvent::PayoutSucceeded { .. }
            | RefundEvent::PayoutFailed { .. }
            | RefundEvent::PayoutRefused { .. }
            | RefundEvent::PayoutUnknown { .. },
        ) => return Err(RefundError::NoPayoutInFlight),

        (
            S::Paying,
            RefundEvent::PayoutSucceeded {
                payment_hash,
                preimage,
                fee,
            },
        ) => {
            check_hash(refund, &payment_hash)?;
            effects.push(claimed(&mut next, payment_hash, preimage, fee));
        }
        (S::Paying, RefundEvent::PayoutFailed { payment_hash }) => {
            check_hash(refund, &payment_hash)?;
            // Nothing paid as far as the backend knows: claimable again, with
            // this invoice until it expires. Expiry of the offer is checked at
            // the next claim, so a payer whose payout failed late is not worse
            // off than one who never claimed.
            next.state = S::Pending;
            next.payment_hash = None;
            next.lookup_required = false;
            next.failed_hash = Some(payment_hash);
        }
        (S::Paying, RefundEvent::PayoutRefused { payment_hash }) => {
            check_hash(refund, &payment_hash)?;
            // Nothing was sent, so nothing can still arrive: any invoice will do.
            next.state = S::Pending;
            next.payment_hash = None;
            next.lookup_required = false;
        }
        (S::Paying, RefundEvent::PayoutUnknown { payment_hash }) => {
            check_hash(refund, &payment_hash)?;
            next.lookup_required = true;
        }
    }
    Ok(RefundStep {
        refund: next,
        effects,
    })
}

fn check_hash(refund: &Refund, got: &str) -> Result<(), RefundError> {
    match refund.payment_hash.as_deref() {
        Some(expected) if expected == got => Ok(()),
        expected => Err(RefundError::HashMismatch {
            expected: expected.unwrap_or_default().to_owned(),
            got: got.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DUST: Msat = Msat::from_msat(5_000);

    fn offered(amount: u64) -> Refund {
        transition(
            &Refund::new(),
            RefundEvent::Offer {
                amount: Msat::from_msat(amount),
                dust_threshold: DUST,
                expires_at_ms: 1_000,
            },
        )
        .unwrap()
        .refund
    }

    /// The fee budget a claimant may leave in these tests.
    const BUDGET: Msat = Msat::from_msat(500);

    fn claim(r: &Refund, msat: u64, hash: &str, now_ms: i64) -> Result<RefundStep, RefundError> {
        transition(
            r,
            RefundEvent::Claim {
                invoice_amount: Msat::from_msat(msat),
                invoice_hash: hash.to_owned(),
                invoice_expires_at_ms: 500,
                max_fee_budget: BUDGET,
                min_fee_budget: Msat::ZERO,
                now_ms,
            },
        )
    }

    fn succeeded(hash: &str, fee: u64) -> RefundEvent {
        RefundEvent::PayoutSucceeded {
            payment_hash: hash.into(),
            preimage: "pre".into(),
            fee: Msat::from_msat(fee),
        }
    }

    #[test]
    fn refund_is_paid_minus_the_capped_charge() {
        let m = Msat::from_msat;
        assert_eq!(refund_amount(m(10_000), m(3_500)), m(6_500));
        assert_eq!(refund_amount(m(10_000), m(12_000)), Msat::ZERO);
        assert_eq!(refund_amount(m(10_000), Msat::ZERO), m(10_000));
    }

    #[test]
    fn payout_rounds_down_and_the_remainder_goes_to_the_pool() {
        assert_eq!(payable_sats(Msat::from_msat(6_999)), 6);
        assert_eq!(
            split_refund(Msat::from_msat(6_999), DUST),
            RefundSplit {
                payout_sats: 6,
                payout: Msat::from_msat(6_000),
                remainder_to_pool: Msat::from_msat(999),
            }
        );
        // Below the threshold, or below one sat, everything goes to the pool.
        let s = split_refund(Msat::from_msat(4_999), DUST);
        assert!(s.is_dust());
        assert_eq!(s.remainder_to_pool, Msat::from_msat(4_999));
        assert!(split_refund(Msat::from_msat(999), Msat::ZERO).is_dust());
    }

    #[test]
    fn state_names_round_trip() {
        for s in [
            RefundState::None,
            RefundState::Pending,
            RefundState::Paying,
            RefundState::Claimed,
            RefundState::Expired,
        ] {
            assert_eq!(RefundState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RefundState::parse("paid"), None);
    }

    #[test]
    fn an_offer_pools_the_remainder_and_a_dust_offer_pools_everything() {
        let step = transition(
            &Refund::new(),
            RefundEvent::Offer {
                amount: Msat::from_msat(7_250),
                dust_threshold: DUST,
                expires_at_ms: 1_000,
            },
        )
        .unwrap();
        assert_eq!(step.refund.state, RefundState::Pending);
        assert_eq!(step.refund.payout_sats(), 7);
        assert_eq!(
            step.effects,
            vec![RefundEffect::ToPool {
                amount: Msat::from_msat(250),
                reason: PoolReason::Remainder
            }]
        );

        let dust = transition(
            &Refund::new(),
            RefundEvent::Offer {
                amount: Msat::from_msat(4_000),
                dust_threshold: DUST,
                expires_at_ms: 1_000,
            },
        )
        .unwrap();
        assert_eq!(dust.refund.state, RefundState::None);
        assert!(dust.refund.is_final());
        assert_eq!(
            dust.effects,
            vec![RefundEffect::ToPool {
                amount: Msat::from_msat(4_000),
                reason: PoolReason::Dust
            }]
        );
        assert_eq!(
            claim(&dust.refund, 4_000, "h", 0),
            Err(RefundError::Dust {
                amount: Msat::from_msat(4_000)
            })
        );
    }

    #[test]
    fn a_claim_is_for_the_payout_less_at_most_the_fee_budget() {
        let r = offered(7_250);
        let err = claim(&r, 7_250, "h1", 10).unwrap_err();
        assert_eq!(
            err,
            RefundError::WrongAmount {
                expected_sats: 7,
                expected_msat: 7_000,
                budget_msat: 500,
                min_budget_msat: 0,
                got_msat: 7_250
            }
        );
        assert!(err.to_string().contains("exactly 7 sats"));
        assert!(matches!(
            claim(&r, 6_499, "h1", 10),
            Err(RefundError::WrongAmount { .. })
        ));
        let step = claim(&r, 7_000, "h1", 10).unwrap();
        assert_eq!(step.refund.state, RefundState::Paying);
        assert_eq!(
            step.effects,
            vec![RefundEffect::Pay {
                payment_hash: "h1".into(),
                amount: Msat::from_msat(7_000),
                max_fee: Msat::ZERO,
            }]
        );
        // Leaving 500 msat: that is the most the payout may spend on fees.
        let step = claim(&r, 6_500, "h1", 10).unwrap();
        assert_eq!(
            step.effects,
            vec![RefundEffect::Pay {
                payment_hash: "h1".into(),
                amount: Msat::from_msat(6_500),
                max_fee: Msat::from_msat(500),
            }]
        );
        let paid = transition(&step.refund, succeeded("h1", 120)).unwrap();
        assert_eq!(
            paid.effects,
            vec![RefundEffect::Paid {
                amount: Msat::from_msat(7_000),
                sent: Msat::from_msat(6_500),
                fee: Msat::from_msat(120),
            }]
        );
        let p = paid.postings("r").unwrap();
        assert!(p[0].is_balanced());
    }

    /// A backend reported a payout failed although an HTLC was still held: a
    /// new invoice accepted at once could be paid too.
    #[test]
    fn after_a_reported_failure_only_the_same_invoice_is_retried_until_it_expires() {
        let paying = claim(&offered(7_000), 7_000, "h1", 10).unwrap().refund;
        let failed = transition(
            &paying,
            RefundEvent::PayoutFailed {
                payment_hash: "h1".into(),
            },
        )
        .unwrap()
        .refund;
        assert_eq!(failed.state, RefundState::Pending);
        assert_eq!(
            claim(&failed, 7_000, "h2", 20),
            Err(RefundError::RetrySameInvoice {
                payment_hash: "h1".into(),
                until_ms: 500
            })
        );
        assert!(matches!(
            transition(&failed, RefundEvent::Expire { now_ms: 499 }),
            Err(RefundError::NotExpired { .. })
        ));
        // The same invoice may be retried at once.
        assert!(claim(&failed, 7_000, "h1", 20).is_ok());
        // A look-up finds the "failed" payout paid after all: claimed, once.
        let late = transition(&failed, succeeded("h1", 0)).unwrap();
        assert_eq!(late.refund.state, RefundState::Claimed);
        assert!(claim(&late.refund, 7_000, "h2", 600).is_err());
        // Past the failed invoice's expiry, a new invoice is accepted, and the
        // old failure binds no more (were the new one refused, any may follow).
        let second = claim(&failed, 7_000, "h2", 500).unwrap().refund;
        assert_eq!(second.failed_hash, None);
        let refused = transition(
            &second,
            RefundEvent::PayoutRefused {
                payment_hash: "h2".into(),
            },
        )
        .unwrap()
        .refund;
        assert!(claim(&refused, 7_000, "h3", 501).is_ok());
        // A refusal before anything was sent binds nothing.
        let refused = transition(
            &paying,
            RefundEvent::PayoutRefused {
                payment_hash: "h1".into(),
            },
        )
        .unwrap()
        .refund;
        assert!(claim(&refused, 7_000, "h2", 20).is_ok());
    }

    #[test]
    fn a_second_claim_is_told_the_first_invoice() {
        let paying = claim(&offered(7_000), 7_000, "first", 10).unwrap().refund;
        assert_eq!(
            claim(&paying, 7_000, "second", 11),
            Err(RefundError::AlreadyClaimed {
                payment_hash: "first".into()
            })
        );
        let claimed = transition(&paying, succeeded("first", 0)).unwrap();
        assert_eq!(
            claimed.effects,
            vec![RefundEffect::Paid {
                amount: Msat::from_msat(7_000),
                sent: Msat::from_msat(7_000),
                fee: Msat::ZERO,
            }]
        );
        assert_eq!(
            claim(&claimed.refund, 7_000, "third", 12),
            Err(RefundError::AlreadyClaimed {
                payment_hash: "first".into()
            })
        );
    }

    #[test]
    fn a_late_claim_is_refused_and_expiry_pools_the_payout() {
        let r = offered(7_000);
        assert_eq!(
            claim(&r, 7_000, "h", 1_000),
            Err(RefundError::Expired {
                expires_at_ms: 1_000
            })
        );
        assert_eq!(
            transition(&r, RefundEvent::Expire { now_ms: 999 }),
            Err(RefundError::NotExpired {
                expires_at_ms: 1_000
            })
        );
        let step = transition(&r, RefundEvent::Expire { now_ms: 1_000 }).unwrap();
        assert_eq!(step.refund.state, RefundState::Expired);
        assert_eq!(
            step.effects,
            vec![RefundEffect::ToPool {
                amount: Msat::from_msat(7_000),
                reason: PoolReason::Expired
            }]
        );
    }

    #[test]
    fn an_unknown_outcome_blocks_everything_until_reconciled() {
        let paying = claim(&offered(7_000), 7_000, "h1", 10).unwrap().refund;
        let unknown = transition(
            &paying,
            RefundEvent::PayoutUnknown {
                payment_hash: "h1".into(),
            },
        )
        .unwrap()
        .refund;
        assert!(unknown.lookup_required);
        assert_eq!(unknown.state, RefundState::Paying);
        // Neither a new invoice nor expiry may proceed while money may be in flight.
        assert!(matches!(
            claim(&unknown, 7_000, "h2", 20),
            Err(RefundError::AlreadyClaimed { .. })
        ));
        assert!(matches!(
            transition(&unknown, RefundEvent::Expire { now_ms: 5_000 }),
            Err(RefundError::PayoutInFlight { .. })
        ));
        // An outcome for another invoice is refused.
        assert!(matches!(
            transition(
                &unknown,
                RefundEvent::PayoutFailed {
                    payment_hash: "h2".into()
                }
            ),
            Err(RefundError::HashMismatch { .. })
        ));
        // The lookup says it failed: claimable again, with a new invoice once
        // the failed one has expired.
        let again = transition(
            &unknown,
            RefundEvent::PayoutFailed {
                payment_hash: "h1".into(),
            },
        )
        .unwrap()
        .refund;
        assert_eq!(again.state, RefundState::Pending);
        assert!(!again.lookup_required);
        assert!(claim(&again, 7_000, "h2", 30).is_err());
        assert!(claim(&again, 7_000, "h2", 500).is_ok());
    }

    #[test]
    fn postings_follow_the_effects() {
        let step = transition(
            &Refund::new(),
            RefundEvent::Offer {
                amount: Msat::from_msat(7_250),
                dust_threshold: DUST,
                expires_at_ms: 1_000,
            },
        )
        .unwrap();
        let p = step.postings("r1").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].idempotency_key, "refund-pool:r1");
        assert!(p[0].is_balanced());
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Offer { msat: u64, dust: u64 },
        Claim { delta: i16, hash: u8, now: i64 },
        Succeeded { hash: u8, fee: u64 },
        Failed { hash: u8 },
        Refused { hash: u8 },
        Unknown { hash: u8 },
        Expire { now: i64 },
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u64..50_000, 0u64..10_000).prop_map(|(msat, dust)| Ev::Offer { msat, dust }),
            (-600i16..2, 0u8..4, 0i64..2_000).prop_map(|(delta, hash, now)| Ev::Claim {
                delta,
                hash,
                now
            }),
            (0u8..4, 0u64..1_000).prop_map(|(hash, fee)| Ev::Succeeded { hash, fee }),
            (0u8..4).prop_map(|hash| Ev::Failed { hash }),
            (0u8..4).prop_map(|hash| Ev::Refused { hash }),
            (0u8..4).prop_map(|hash| Ev::Unknown { hash }),
            (0i64..2_000).prop_map(|now| Ev::Expire { now }),
        ]
    }

    proptest! {
        #[test]
        fn at_most_one_payout_and_the_refund_is_conserved(evs in proptest::collection::vec(ev(), 1..60)) {
            let mut r = Refund::new();
            let mut offered_amount: Option<Msat> = None;
            let (mut paid, mut pooled) = (0u64, 0u64);
            let mut payouts_succeeded = 0;
            let mut pool_reasons = Vec::new();
            let mut in_flight: Option<String> = None;
            let mut last_now = 0i64;
            for e in evs {
                if let Ev::Claim { now, .. } = e { last_now = now; }
                let event = match e {
                    Ev::Offer { msat, dust } => RefundEvent::Offer {
                        amount: Msat::from_msat(msat),
                        dust_threshold: Msat::from_msat(dust),
                        expires_at_ms: 1_000,
                    },
                    Ev::Claim { delta, hash, now } => RefundEvent::Claim {
                        invoice_amount: Msat::from_msat(r.payout.msat().saturating_add_signed(i64::from(delta))),
                        invoice_hash: format!("h{hash}"),
                        invoice_expires_at_ms: now + 300,
                        max_fee_budget: BUDGET,
                        min_fee_budget: Msat::ZERO,
                        now_ms: now,
                    },
                    Ev::Succeeded { hash, fee } => RefundEvent::PayoutSucceeded { payment_hash: format!("h{hash}"), preimage: "p".into(), fee: Msat::from_msat(fee) },
                    Ev::Failed { hash } => RefundEvent::PayoutFailed { payment_hash: format!("h{hash}") },
                    Ev::Refused { hash } => RefundEvent::PayoutRefused { payment_hash: format!("h{hash}") },
                    Ev::Unknown { hash } => RefundEvent::PayoutUnknown { payment_hash: format!("h{hash}") },
                    Ev::Expire { now } => RefundEvent::Expire { now_ms: now },
                };
                let was_final = r.is_final();
                let is_offer = matches!(event, RefundEvent::Offer { .. });
                // An error changes nothing: `r` is kept as it was.
                if let Ok(step) = transition(&r, event) {
                    prop_assert!(!was_final, "a final refund changed: {:?} -> {:?}", r, step.refund);
                    if is_offer { offered_amount = Some(step.refund.amount); }
                    for eff in &step.effects {
                        match eff {
                            RefundEffect::ToPool { amount, reason } => {
                                pooled += amount.msat();
                                prop_assert!(!pool_reasons.contains(reason), "pooled twice for {:?}", reason);
                                pool_reasons.push(*reason);
                            }
                            RefundEffect::Paid { amount, sent, .. } => {
                                paid += amount.msat();
                                payouts_succeeded += 1;
                                prop_assert!(*sent <= *amount);
                                // Only an invoice that was claimed (in flight, or the
                                // last one reported failed) can be the one that was paid.
                                prop_assert!(
                                    step.refund.payment_hash.as_ref() == in_flight.as_ref()
                                        || step.refund.payment_hash == r.failed_hash
                                );
                            }
                            RefundEffect::Pay { payment_hash, amount, max_fee } => {
                                prop_assert!(in_flight.is_none(), "a second payout started while one was in flight");
                                // The claimant's invoice and fee budget never exceed the payout.
                                prop_assert_eq!(amount.checked_add(*max_fee).ok(), Some(r.payout));
                                prop_assert!(*max_fee <= BUDGET);
                                // A different invoice only once the failed one expired.
                                if let Some(f) = &r.failed_hash && f != payment_hash {
                                    prop_assert!(last_now >= r.invoice_expires_at_ms);
                                }
                                in_flight = Some(payment_hash.clone());
                            }
                        }
                    }
                    if step.refund.state != RefundState::Paying { in_flight = None; }
                    prop_assert!(payouts_succeeded <= 1);
                    r = step.refund;
                }
                // Never more leaves the refund than was owed, and once final all of it has left.
                let owed = offered_amount.map_or(0, Msat::msat);
                prop_assert!(paid + pooled <= owed);
                if r.is_final() { prop_assert_eq!(paid + pooled, owed); }
                if r.state == RefundState::Claimed { prop_assert_eq!(paid, r.payout.msat()); }
                if matches!(r.state, RefundState::Pending | RefundState::Paying) {
                    prop_assert_eq!(owed - pooled, r.payout.msat()); // what is left is exactly the claimable part
                }
            }
        }
    }
}
