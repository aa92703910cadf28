//! Estimation and reservation: how much to hold before a request runs.
//!
//! The hold covers the counted input tokens plus the most output the request
//! may produce. The gateway passes that maximum to the upstream as
//! `max_tokens`, so the actual cost can only exceed the hold when an upstream
//! ignores it — and then the excess is the operator's loss, never the payer's.

use crate::{BtcUsd, ModelRates, Msat, PriceError, TokenUsage, charge_for};

/// Errors from estimation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EstimateError {
    /// The request asks for more output tokens than the model allows.
    #[error("max_tokens {requested} exceeds this model's limit of {limit}")]
    OutputLimitExceeded {
        /// What the request asked for.
        requested: u64,
        /// The model's limit.
        limit: u64,
    },
    /// The request asks for zero output tokens.
    #[error("max_tokens must be at least 1")]
    ZeroOutput,
    /// The prompt is longer than the model's context.
    #[error("the prompt has {input} tokens; this model's context holds {context} in all")]
    ContextExceeded {
        /// Counted input tokens.
        input: u64,
        /// The model's context length.
        context: u64,
    },
    /// Pricing failed.
    #[error(transparent)]
    Price(#[from] PriceError),
}

/// A model's output-token policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputBudget {
    /// Used when the request gives no `max_tokens`/`max_completion_tokens`.
    pub default_max_output: u64,
    /// The most a request may ask for.
    pub max_output: u64,
    /// Input plus output may not exceed this (0 = unchecked).
    pub context_length: u64,
}

/// The output tokens to reserve for, from the request's own limit or the default.
pub fn output_budget(
    requested: Option<u64>,
    budget: OutputBudget,
    input_tokens: u64,
) -> Result<u64, EstimateError> {
    let out = match requested {
        Some(0) => return Err(EstimateError::ZeroOutput),
        Some(r) if r > budget.max_output => {
            return Err(EstimateError::OutputLimitExceeded {
                requested: r,
                limit: budget.max_output,
            });
        }
        Some(r) => r,
        None => budget.default_max_output.min(budget.max_output),
    };
    if budget.context_length > 0 {
        if input_tokens >= budget.context_length {
            return Err(EstimateError::ContextExceeded {
                input: input_tokens,
                context: budget.context_length,
            });
        }
        // Without an explicit limit, shrink the default to what the context leaves.
        if requested.is_none() {
            return Ok(out.min(budget.context_length - input_tokens));
        }
        if input_tokens + out > budget.context_length {
            return Err(EstimateError::ContextExceeded {
                input: input_tokens,
                context: budget.context_length,
            });
        }
    }
    Ok(out)
}

/// An estimate with its price locked: what is held before the request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Counted input tokens.
    pub input_tokens: u64,
    /// The most output tokens the request may produce (sent upstream as `max_tokens`).
    pub max_output_tokens: u64,
    /// The BTC price locked for this request; settlement uses it too.
    pub btc: BtcUsd,
    /// The amount to hold: the charge for input plus the maximum output.
    pub hold: Msat,
}

/// Reserve for a request: estimated input plus maximum output at the locked price.
pub fn reserve(
    rates: &ModelRates,
    btc: BtcUsd,
    input_tokens: u64,
    max_output_tokens: u64,
) -> Result<Estimate, EstimateError> {
    let hold = charge_for(
        rates,
        TokenUsage {
            input: input_tokens,
            output: max_output_tokens,
        },
        btc,
    )?;
    Ok(Estimate {
        input_tokens,
        max_output_tokens,
        btc,
        hold,
    })
}

/// The most output tokens, at most `at_most`, whose charge, with
/// `input_tokens` of input at `btc`, `amount` pays for (0 when it does not
/// even pay for the input and the minimum charge). The gateway tells the
/// upstream this limit whenever a request prepays less than its maximum (an
/// L402 P90 prepayment, a job's work invoice, a free-tier grant), so the
/// upstream is never allowed to produce more than was paid for. When
/// `amount` covers `at_most` (a session's hold of the maximum), that is one
/// evaluation.
pub fn covered_output(
    rates: &ModelRates,
    btc: BtcUsd,
    input_tokens: u64,
    amount: Msat,
    at_most: u64,
) -> Result<u64, PriceError> {
    let fits = |output| match charge_for(
        rates,
        TokenUsage {
            input: input_tokens,
            output,
        },
        btc,
    ) {
        Ok(c) => Ok(c <= amount),
        Err(PriceError::Overflow) => Ok(false),
        Err(e) => Err(e),
    };
    let no_output = charge_for(
        rates,
        TokenUsage {
            input: input_tokens,
            output: 0,
        },
        btc,
    )?;
    if no_output > amount {
        return Ok(0);
    }
    if fits(at_most)? {
        return Ok(at_most);
    }
    // The charge is non-decreasing in output tokens: `lo` fits, `hi` does not.
    let (mut lo, mut hi) = (0u64, at_most);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UsdMicros;
    use proptest::prelude::*;

    fn rates(input: u64, output: u64, infra: u64, margin_bps: u32) -> ModelRates {
        ModelRates {
            input_per_mtok: UsdMicros(input),
            output_per_mtok: UsdMicros(output),
            infra_monthly: UsdMicros(infra),
            expected_monthly_requests: 1_000,
            margin_bps,
        }
    }

    #[test]
    fn covered_output_is_what_a_prepayment_pays_for() {
        // 100 msat per input token, 200 per output token at BTC 100k USD.
        let r = rates(100_000_000, 200_000_000, 0, 0);
        let btc = BtcUsd::new(UsdMicros(100_000_000_000)).unwrap();
        assert_eq!(
            covered_output(&r, btc, 10, Msat::from_msat(1_000 + 200 * 42), u64::MAX),
            Ok(42)
        );
        assert_eq!(
            covered_output(
                &r,
                btc,
                10,
                Msat::from_msat(1_000 + 200 * 42 + 199),
                u64::MAX
            ),
            Ok(42)
        );
        // Not even the input: nothing.
        assert_eq!(
            covered_output(&r, btc, 100, Msat::from_msat(9_999), u64::MAX),
            Ok(0)
        );
        // Free output tokens: as many as there are.
        let free_out = rates(100_000_000, 0, 0, 0);
        assert!(
            covered_output(&free_out, btc, 1, Msat::from_msat(1_000), u64::MAX).unwrap() > 1 << 62
        );
        // Never more than asked for, whether the amount covers it or not.
        let paid_42 = Msat::from_msat(1_000 + 200 * 42);
        assert_eq!(covered_output(&r, btc, 10, paid_42, 40), Ok(40));
        assert_eq!(covered_output(&r, btc, 10, paid_42, 42), Ok(42));
        assert_eq!(covered_output(&r, btc, 10, paid_42, 43), Ok(42));
    }

    proptest! {
        #[test]
        fn covered_output_pays_for_itself_and_not_one_more(
            input in 0u64..1_000_000,
            amount in 0u64..u64::MAX / 4,
            in_rate in 0u64..100_000_000,
            out_rate in 1u64..100_000_000,
            infra in 0u64..1_000_000_000,
            margin in 0u32..10_000,
            btc in 1u64..u64::MAX / 1_000_000,
            cap in 0u64..1_000_000,
        ) {
            let r = rates(in_rate, out_rate, infra, margin);
            let btc = BtcUsd::new(UsdMicros(btc)).unwrap();
            let amount = Msat::from_msat(amount);
            if let Ok(n) = covered_output(&r, btc, input, amount, u64::MAX) {
                prop_assert_eq!(covered_output(&r, btc, input, amount, cap), Ok(n.min(cap)));
                let at = |o| charge_for(&r, TokenUsage { input, output: o }, btc);
                if n > 0 || at(0).is_ok_and(|c| c <= amount) {
                    prop_assert!(at(n).unwrap() <= amount);
                }
                if let Ok(next) = at(n.saturating_add(1)) {
                    prop_assert!(next > amount || n == u64::MAX);
                }
            }
        }
    }

    const B: OutputBudget = OutputBudget {
        default_max_output: 512,
        max_output: 4096,
        context_length: 8192,
    };

    #[test]
    fn budget_uses_the_request_limit_or_the_default() {
        assert_eq!(output_budget(Some(100), B, 10), Ok(100));
        assert_eq!(output_budget(None, B, 10), Ok(512));
        assert_eq!(output_budget(None, B, 8000), Ok(192));
        assert_eq!(
            output_budget(Some(0), B, 10),
            Err(EstimateError::ZeroOutput)
        );
        assert_eq!(
            output_budget(Some(5000), B, 10),
            Err(EstimateError::OutputLimitExceeded {
                requested: 5000,
                limit: 4096
            })
        );
        assert_eq!(
            output_budget(Some(300), B, 8000),
            Err(EstimateError::ContextExceeded {
                input: 8000,
                context: 8192
            })
        );
        assert_eq!(
            output_budget(None, B, 8192),
            Err(EstimateError::ContextExceeded {
                input: 8192,
                context: 8192
            })
        );
        let unchecked = OutputBudget {
            context_length: 0,
            ..B
        };
        assert_eq!(output_budget(Some(4096), unchecked, 1_000_000), Ok(4096));
    }
}
