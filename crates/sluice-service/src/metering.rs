//! Metering, written once: what an answer used and what that costs. Chat
//! (complete and streamed), job work and the demo all meter with [`Metering`].
//!
//! The upstream's own usage report is taken when it has one (its counts are
//! capped where they are read: [`crate::upstream::reported_tokens`]);
//! otherwise the input is what the gateway counted before the call and the
//! output is everything generated, counted by the model's own tokenizer when
//! it has one, else by the configured one. The cost is the core's
//! `charge_for_settlement` at the price locked for the request.

use std::sync::Arc;

use sluice_core::{BtcUsd, ModelRates, Msat, TokenUsage, charge_for_settlement};

use crate::{
    ModelEntry,
    config::TokenizerKind,
    tokens,
    upstream::{Completion, Upstream},
};

/// How one model's answers are metered.
#[derive(Clone)]
pub struct Metering {
    /// Its rate card.
    pub rates: ModelRates,
    /// The tokenizer counted with when the upstream cannot count.
    pub tokenizer: TokenizerKind,
    /// Where it is answered (which may count exactly).
    pub upstream: Arc<dyn Upstream>,
}

impl Metering {
    /// `model`'s metering.
    pub fn of(model: &ModelEntry) -> Metering {
        Metering {
            rates: model.rates,
            tokenizer: model.tokenizer,
            upstream: model.upstream.clone(),
        }
    }

    /// Output tokens of `text`.
    pub fn count_output(&self, text: &str) -> u64 {
        tokens::count_output(&*self.upstream, self.tokenizer, text)
    }

    /// What a complete answer used: its report, else `input` counted before
    /// the call and everything it generated.
    pub fn usage_of(&self, completion: &Completion, input: u64) -> TokenUsage {
        completion.usage.unwrap_or_else(|| TokenUsage {
            input,
            output: self.count_output(&completion.generated),
        })
    }

    /// What `usage` costs at `btc`.
    pub fn cost_of(&self, usage: TokenUsage, btc: BtcUsd) -> Msat {
        charge_for_settlement(&self.rates, usage, btc)
    }
}
