//! Millisatoshi amounts with checked arithmetic.

use std::fmt;

/// Errors from amount arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The result does not fit in a `u64` (or `i64` where signed).
    #[error("amount overflow")]
    Overflow,
    /// A subtraction would go below zero.
    #[error("amount underflow")]
    Underflow,
}

/// An amount of millisatoshis. Never negative; arithmetic is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Msat(u64);

impl Msat {
    /// Zero msat.
    pub const ZERO: Msat = Msat(0);

    /// An amount of `msat` millisatoshis.
    pub const fn from_msat(msat: u64) -> Self {
        Msat(msat)
    }

    /// An amount of whole sats.
    pub fn from_sats(sats: u64) -> Result<Self, AmountError> {
        sats.checked_mul(1_000)
            .map(Msat)
            .ok_or(AmountError::Overflow)
    }

    /// The amount in msat.
    pub const fn msat(self) -> u64 {
        self.0
    }

    /// Whole sats, rounding down (the rule for refunds and releases).
    pub const fn to_sats_floor(self) -> u64 {
        self.0 / 1_000
    }

    /// Whole sats, rounding up (the rule for charges).
    pub const fn to_sats_ceil(self) -> u64 {
        self.0.div_ceil(1_000)
    }

    /// The amount as a signed ledger quantity.
    pub fn to_i64(self) -> Result<i64, AmountError> {
        i64::try_from(self.0).map_err(|_| AmountError::Overflow)
    }

    /// An amount from a signed ledger quantity; negative values are an underflow.
    pub fn from_i64(v: i64) -> Result<Self, AmountError> {
        u64::try_from(v)
            .map(Msat)
            .map_err(|_| AmountError::Underflow)
    }

    /// `self + rhs`, or an overflow error.
    pub fn checked_add(self, rhs: Msat) -> Result<Msat, AmountError> {
        self.0
            .checked_add(rhs.0)
            .map(Msat)
            .ok_or(AmountError::Overflow)
    }

    /// `self - rhs`, or an underflow error.
    pub fn checked_sub(self, rhs: Msat) -> Result<Msat, AmountError> {
        self.0
            .checked_sub(rhs.0)
            .map(Msat)
            .ok_or(AmountError::Underflow)
    }

    /// `self - rhs`, floored at zero.
    pub fn saturating_sub(self, rhs: Msat) -> Msat {
        Msat(self.0.saturating_sub(rhs.0))
    }

    /// The smaller of two amounts.
    pub fn min(self, rhs: Msat) -> Msat {
        Msat(self.0.min(rhs.0))
    }

    /// The larger of two amounts.
    pub fn max(self, rhs: Msat) -> Msat {
        Msat(self.0.max(rhs.0))
    }
}

impl fmt::Display for Msat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} msat", self.0)
    }
}

/// Amounts that reach the edges (0, the i64/u64 boundary, the top of u64) as
/// well as ordinary ones, for property tests across the crate.
#[cfg(test)]
pub(crate) fn edge_msat() -> impl proptest::strategy::Strategy<Value = u64> {
    use proptest::prelude::*;
    let i64_max = i64::MAX as u64;
    prop_oneof![
        0u64..10_000,
        any::<u64>(),
        (0u64..10_000).prop_map(move |d| i64_max.saturating_sub(d)),
        (0u64..10_000).prop_map(move |d| i64_max.saturating_add(d)),
        (0u64..10_000).prop_map(|d| u64::MAX - d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arithmetic_at_the_edges_is_exact_or_refused(a in edge_msat(), b in edge_msat()) {
            let (x, y) = (Msat::from_msat(a), Msat::from_msat(b));
            match a.checked_add(b) {
                Some(s) => prop_assert_eq!(x.checked_add(y), Ok(Msat::from_msat(s))),
                None => prop_assert_eq!(x.checked_add(y), Err(AmountError::Overflow)),
            }
            match a.checked_sub(b) {
                Some(d) => prop_assert_eq!(x.checked_sub(y), Ok(Msat::from_msat(d))),
                None => prop_assert_eq!(x.checked_sub(y), Err(AmountError::Underflow)),
            }
            // The store's i64 columns: a value fits exactly or is refused, never wrapped.
            match i64::try_from(a) {
                Ok(v) => {
                    prop_assert_eq!(x.to_i64(), Ok(v));
                    prop_assert_eq!(Msat::from_i64(v), Ok(x));
                }
                Err(_) => prop_assert_eq!(x.to_i64(), Err(AmountError::Overflow)),
            }
            match a.checked_mul(1_000) {
                Some(m) => prop_assert_eq!(Msat::from_sats(a), Ok(Msat::from_msat(m))),
                None => prop_assert_eq!(Msat::from_sats(a), Err(AmountError::Overflow)),
            }
            prop_assert!(x.to_sats_floor() <= x.to_sats_ceil());
            prop_assert!(x.to_sats_ceil() - x.to_sats_floor() <= 1);
        }
    }

    #[test]
    fn sats_round_as_the_rules_say() {
        assert_eq!(Msat::from_msat(1_001).to_sats_ceil(), 2);
        assert_eq!(Msat::from_msat(1_999).to_sats_floor(), 1);
        assert_eq!(Msat::from_msat(2_000).to_sats_ceil(), 2);
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(
            Msat::from_msat(u64::MAX).checked_add(Msat::from_msat(1)),
            Err(AmountError::Overflow)
        );
        assert_eq!(
            Msat::ZERO.checked_sub(Msat::from_msat(1)),
            Err(AmountError::Underflow)
        );
        assert_eq!(Msat::from_sats(u64::MAX), Err(AmountError::Overflow));
        assert_eq!(Msat::from_i64(-1), Err(AmountError::Underflow));
        assert_eq!(
            Msat::from_msat(u64::MAX).to_i64(),
            Err(AmountError::Overflow)
        );
    }
}
