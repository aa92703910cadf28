//! Pricing a chat request before it runs, shared by `/v1/chat/completions`
//! (which holds the maximum) and `/v1/estimate` (which reports P50/P90 too).

use axum::{
    Json,
    extract::{State, rejection::JsonRejection},
};
use serde_json::{Value, json};
use sluice_core::{
    BtcUsd, Estimate, EstimateError, Percentile, Quote, QuoteRequest, RequestClass, UsdMicros,
    output_budget, quote, reserve,
};

use crate::{
    error::ApiError,
    request::ChatBody,
    state::{AppState, ModelEntry},
    tokens,
};

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

pub(crate) fn estimate_error(e: EstimateError) -> ApiError {
    match e {
        EstimateError::Price(p) => ApiError::internal(&p),
        EstimateError::ContextExceeded { .. } => {
            ApiError::bad_request("context_length_exceeded", e.to_string())
        }
        other => ApiError::bad_request("invalid_max_tokens", other.to_string()),
    }
}

/// Find the model and price `req`.
pub async fn price<'a>(state: &'a AppState, req: &ChatBody) -> Result<Priced<'a>, ApiError> {
    let model: &ModelEntry = state.models.get(&req.model).ok_or_else(|| {
        ApiError::not_found(
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
    pub fn covered_output(&self, amount: sluice_core::Msat) -> Result<u64, ApiError> {
        sluice_core::covered_output(
            &self.model.rates,
            self.btc,
            self.input_held,
            amount,
            self.max_out,
        )
        .map_err(|e| ApiError::internal(&e))
    }
}

/// Every component of a model's price at `btc`, as `/v1/models` lists it: the
/// token rates (margin included), the per-request share of the
/// infrastructure (margin included), the margin itself and the minimum charge.
pub fn price_card(m: &ModelEntry, btc: BtcUsd) -> Result<Value, ApiError> {
    let (i, o) = m
        .rates
        .per_mtok_msat(btc)
        .map_err(|e| ApiError::internal(&e))?;
    let fixed = sluice_core::itemize(&m.rates, sluice_core::TokenUsage::default(), btc)
        .map_err(|e| ApiError::internal(&e))?;
    let per_request = fixed.total.saturating_sub(fixed.minimum);
    Ok(json!({
        "input_msat_per_mtok": i.msat(),
        "output_msat_per_mtok": o.msat(),
        "input_sats_per_mtok": i.to_sats_ceil(),
        "output_sats_per_mtok": o.to_sats_ceil(),
        "per_request_msat": per_request.msat(),
        "margin_pct": UsdMicros(u64::from(m.rates.margin_bps) * 10_000).to_decimal_string(),
        "minimum_charge_msat": sluice_core::MIN_CHARGE.msat(),
        "note": "token rates and the per-request share include the margin; a request costs input + output + per request, rounded up to the msat, at least the minimum",
    }))
}

/// A charge itemized for a receipt or a quote.
pub fn itemized_json(i: &sluice_core::Itemized) -> Value {
    json!({
        "input_msat": i.input.msat(),
        "output_msat": i.output.msat(),
        "per_request_msat": i.per_request.msat(),
        "margin_msat": i.margin.msat(),
        "rounding_msat": i.rounding.msat(),
        "minimum_msat": i.minimum.msat(),
        "total_msat": i.total.msat(),
    })
}

/// `POST /v1/estimate`: what a chat request would cost, without paying.
pub async fn estimate(
    State(state): State<AppState>,
    identity: Option<axum::Extension<crate::identity::Identity>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(v) = body?;
    let req = ChatBody::parse(v)?;
    let p = price(&state, &req).await?;
    let (p50, p90, c50, c90, confidence) = match &p.quote {
        Some(q) => (
            q.output_p50,
            q.output_p90,
            q.cost_p50.msat(),
            q.cost_p90.msat(),
            q.confidence,
        ),
        None => (
            p.max_out,
            p.max_out,
            p.hold.hold.msat(),
            p.hold.hold.msat(),
            0,
        ),
    };
    let free_tier = match identity {
        Some(axum::Extension(id)) => {
            let f = crate::free::decide(
                &state,
                Some(&id),
                p.hold.hold,
                &p.model.name,
                sluice_store::GrantKind::Chat,
            )
            .await?;
            f.json(p.hold.hold)
        }
        None => Value::Null,
    };
    let at_max = sluice_core::itemize(
        &p.model.rates,
        sluice_core::TokenUsage {
            input: p.input_held,
            output: p.max_out,
        },
        p.btc,
    )
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({
        "free_tier": free_tier,
        "pricing": price_card(p.model, p.btc)?,
        "itemized_max": itemized_json(&at_max),
        "model": p.model.name,
        "request_class": p.class.as_str(),
        "input_tokens": p.input,
        "input_tokens_held": p.input_held,
        "output_tokens": {"p50": p50, "p90": p90, "max": p.max_out},
        "cost_msat": {"p50": c50, "p90": c90, "max": p.hold.hold.msat()},
        "hold_msat": p.hold.hold.msat(),
        "btc_usd": UsdMicros(p.btc.micros()).to_decimal_string(),
        "confidence": confidence,
    })))
}
