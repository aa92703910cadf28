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

#[cfg(test)]
mod tests {
    use super::*;

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
