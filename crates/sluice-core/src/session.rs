//! Pre-funded session rules: deposit limits, states and when a session pauses.

use crate::{AmountError, Msat};

/// A session's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Created; the deposit invoice is not settled yet.
    AwaitingPayment,
    /// Funded and usable.
    Active,
    /// The available balance fell below the minimum; a top-up resumes it.
    Paused,
    /// Not used within its TTL.
    Expired,
    /// Closed by its owner: its balance became a refund. A payment of one of
    /// its invoices that arrives afterwards revives it (the money is the payer's).
    Closed,
}

impl SessionState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::AwaitingPayment => "awaiting_payment",
            SessionState::Active => "active",
            SessionState::Paused => "paused",
            SessionState::Expired => "expired",
            SessionState::Closed => "closed",
        }
    }

    /// Parse the wire and database name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "awaiting_payment" => SessionState::AwaitingPayment,
            "active" => SessionState::Active,
            "paused" => SessionState::Paused,
            "expired" => SessionState::Expired,
            "closed" => SessionState::Closed,
            _ => return None,
        })
    }
}

/// Errors from the session policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionPolicyError {
    /// The deposit is outside the configured range.
    #[error("amount_sats must be between {min} and {max}, got {got}")]
    DepositOutOfRange {
        /// Smallest deposit.
        min: u64,
        /// Largest deposit.
        max: u64,
        /// Requested.
        got: u64,
    },
    /// Amount arithmetic failed.
    #[error(transparent)]
    Amount(#[from] AmountError),
}

/// Configured limits for sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// Smallest deposit or top-up, in sats.
    pub min_deposit_sats: u64,
    /// Largest deposit or top-up, in sats.
    pub max_deposit_sats: u64,
    /// Below this available balance a session pauses.
    pub min_balance: Msat,
    /// Seconds of inactivity after which a session expires.
    pub ttl_secs: u64,
}

impl SessionPolicy {
    /// Check a deposit or top-up amount and convert it to msat.
    pub fn deposit(&self, amount_sats: u64) -> Result<Msat, SessionPolicyError> {
        if amount_sats < self.min_deposit_sats || amount_sats > self.max_deposit_sats {
            return Err(SessionPolicyError::DepositOutOfRange {
                min: self.min_deposit_sats,
                max: self.max_deposit_sats,
                got: amount_sats,
            });
        }
        Ok(Msat::from_sats(amount_sats)?)
    }

    /// The state a funded session is in with `available` msat (not counting holds).
    pub fn funded_state(&self, available: Msat) -> SessionState {
        if available < self.min_balance {
            SessionState::Paused
        } else {
            SessionState::Active
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: SessionPolicy = SessionPolicy {
        min_deposit_sats: 100,
        max_deposit_sats: 10_000,
        min_balance: Msat::from_msat(50_000),
        ttl_secs: 86_400,
    };

    #[test]
    fn deposits_outside_the_range_are_refused() {
        assert_eq!(P.deposit(100), Ok(Msat::from_msat(100_000)));
        assert!(matches!(
            P.deposit(99),
            Err(SessionPolicyError::DepositOutOfRange { got: 99, .. })
        ));
        assert!(matches!(
            P.deposit(10_001),
            Err(SessionPolicyError::DepositOutOfRange { .. })
        ));
    }

    #[test]
    fn low_balance_pauses() {
        assert_eq!(
            P.funded_state(Msat::from_msat(49_999)),
            SessionState::Paused
        );
        assert_eq!(
            P.funded_state(Msat::from_msat(50_000)),
            SessionState::Active
        );
    }

    #[test]
    fn state_names_round_trip() {
        for s in [
            SessionState::AwaitingPayment,
            SessionState::Active,
            SessionState::Paused,
            SessionState::Expired,
        ] {
            assert_eq!(SessionState::parse(s.as_str()), Some(s));
        }
        assert_eq!(SessionState::parse("nope"), None);
    }
}

/// The state a session is in at `now_ms`, given its stored state and expiry:
/// a funded session past its expiry is expired even before anything writes that down.
pub fn effective_state(stored: SessionState, expires_at_ms: i64, now_ms: i64) -> SessionState {
    match stored {
        SessionState::Active | SessionState::Paused if now_ms >= expires_at_ms => {
            SessionState::Expired
        }
        s => s,
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    #[test]
    fn funded_sessions_expire_lazily() {
        assert_eq!(
            effective_state(SessionState::Active, 100, 100),
            SessionState::Expired
        );
        assert_eq!(
            effective_state(SessionState::Paused, 100, 99),
            SessionState::Paused
        );
        assert_eq!(
            effective_state(SessionState::AwaitingPayment, 100, 200),
            SessionState::AwaitingPayment
        );
    }
}
