//! Settlement: charge the actual cost at the locked price, never more than the hold.

use crate::Msat;

/// How a hold is split when a request finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// Moved from the hold to revenue.
    pub charged: Msat,
    /// Returned from the hold to the payer's balance.
    pub released: Msat,
    /// Cost above the hold that the payer is not charged (the operator's loss).
    pub uncharged: Msat,
}

/// Split `hold` for a request whose actual cost is `actual`.
///
/// `charged + released == hold` always; `charged <= hold` always.
pub fn settle(hold: Msat, actual: Msat) -> Settlement {
    let charged = actual.min(hold);
    Settlement {
        charged,
        released: hold.saturating_sub(charged),
        uncharged: actual.saturating_sub(hold),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn overrun_is_not_charged() {
        let s = settle(Msat::from_msat(5_000), Msat::from_msat(7_000));
        assert_eq!(
            s,
            Settlement {
                charged: Msat::from_msat(5_000),
                released: Msat::ZERO,
                uncharged: Msat::from_msat(2_000)
            }
        );
    }

    proptest! {
        #[test]
        fn settlement_never_exceeds_the_hold(hold in crate::amount::edge_msat(), actual in crate::amount::edge_msat()) {
            let s = settle(Msat::from_msat(hold), Msat::from_msat(actual));
            prop_assert!(s.charged.msat() <= hold);
            prop_assert_eq!(s.charged.msat() + s.released.msat(), hold);
            prop_assert_eq!(u128::from(s.charged.msat()) + u128::from(s.uncharged.msat()), u128::from(actual.max(s.charged.msat())));
        }
    }
}
