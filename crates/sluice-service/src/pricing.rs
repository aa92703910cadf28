//! Pricing a chat request before it runs, shared by chat completions (which
//! hold the maximum), jobs and estimates (which report P50/P90 too).

use sluice_core::{
    BtcUsd, Estimate, EstimateError, Percentile, Quote, QuoteRequest, RequestClass, output_budget,
    quote, reserve,
};

use crate::{ModelEntry, ServiceError, Sluice, request::ChatBody, tokens};

/// A request priced at the current BTC price.
pub struct Priced<'a> {
    /// The model.
    pub model: &'a ModelEntry,
    /// Counted input tokens: what is charged when the upstream reports none.
    pub input: u64,
    /// Input tokens held for: `input` plus the digit allowance when the
    /// upstream's tokenizer is not known.
    pub input_held: u64,
    /// The most output tokens the request may produce.
    pub max_out: u64,
    /// The BTC price, locked for the request.
    pub btc: BtcUsd,
    /// What is held: input plus the maximum output.
    pub hold: Estimate,
    /// The request's class for learned estimates.
    pub class: RequestClass,
    /// P50/P90 quote from the learned estimator (absent if it could not be built).
    pub quote: Option<Quote>,
}

pub fn estimate_error(e: EstimateError) -> ServiceError {
    match e {
        EstimateError::Price(p) => ServiceError::internal(&p),
        EstimateError::ContextExceeded { .. } => {
            ServiceError::bad_request("context_length_exceeded", e.to_string())
        }
        other => ServiceError::bad_request("invalid_max_tokens", other.to_string()),
    }
}

/// Find the model and price `req`.
pub async fn price<'a>(state: &'a Sluice, req: &ChatBody) -> Result<Priced<'a>, ServiceError> {
    let model: &ModelEntry = state.models.get(&req.model).ok_or_else(|| {
        ServiceError::not_found(
            "model_not_found",
            format!(
                "model {:?} is not offered here; GET /v1/models lists the models for sale",
                req.model
            ),
        )
    })?;
    // Message text by the model's own count when it has one; everything else
    // the upstream may tokenize (tools, schemas, names, tool calls) as the
    // JSON it is sent as. The context-window check below uses the same count.
    let own = model.upstream.count_prompt(&req.messages);
    let input = own
        .unwrap_or_else(|| tokens::count_messages(model.tokenizer, &req.messages))
        .saturating_add(tokens::count_text(model.tokenizer, &req.extra_text));
    // Holds and the context check assume the most tokens an unknown upstream
    // tokenizer may make of digits (see `tokens::digit_allowance`).
    let digits = if own.is_some() {
        0
    } else {
        req.messages
            .iter()
            .map(|(_, text)| tokens::digit_allowance(text))
            .sum::<u64>()
    };
    let input_held = input
        .saturating_add(digits)
        .saturating_add(tokens::digit_allowance(&req.extra_text));
    let max_out =
        output_budget(req.max_tokens, model.budget, input_held).map_err(estimate_error)?;
    let (btc, _) = state.oracle.btc_usd().await;
    let hold = reserve(&model.rates, btc, input_held, max_out).map_err(estimate_error)?;
    let class = RequestClass::of(input);
    let quote = match state
        .estimates
        .get(
            &state.store,
            &model.name,
            class,
            model.budget.default_max_output,
        )
        .await
    {
        Some(e) => Some(
            quote(
                &QuoteRequest {
                    rates: &model.rates,
                    btc,
                    input_tokens: input_held,
                    max_tokens: req.max_tokens,
                    budget: model.budget,
                    charged_percentile: Percentile::default(),
                },
                &e,
            )
            .map_err(estimate_error)?,
        ),
        None => None,
    };
    Ok(Priced {
        model,
        input,
        input_held,
        max_out,
        btc,
        hold,
        class,
        quote,
    })
}

impl Priced<'_> {
    /// The most output tokens `amount` pays for (at most the request's own
    /// limit): what the upstream is told when less than the maximum is held
    /// or paid, so it can never produce more than was paid for.
    pub fn covered_output(&self, amount: sluice_core::Msat) -> Result<u64, ServiceError> {
        sluice_core::covered_output(
            &self.model.rates,
            self.btc,
            self.input_held,
            amount,
            self.max_out,
        )
        .map_err(|e| ServiceError::internal(&e))
    }
}

/// A charge itemized for a receipt or a quote.
pub fn itemized(i: &sluice_core::Itemized) -> sluice_proto::api::Itemized {
    sluice_proto::api::Itemized {
        input_msat: i.input.msat(),
        output_msat: i.output.msat(),
        per_request_msat: i.per_request.msat(),
        margin_msat: i.margin.msat(),
        rounding_msat: i.rounding.msat(),
        minimum_msat: i.minimum.msat(),
        total_msat: i.total.msat(),
    }
}
