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
    /// Counted input tokens.
    pub input: u64,
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
    let input = model
        .upstream
        .count_prompt(&req.messages)
        .unwrap_or_else(|| tokens::count_messages(model.tokenizer, &req.messages));
    let max_out = output_budget(req.max_tokens, model.budget, input).map_err(estimate_error)?;
    let (btc, _) = state.oracle.btc_usd().await;
    let hold = reserve(&model.rates, btc, input, max_out).map_err(estimate_error)?;
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
                    input_tokens: input,
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
        max_out,
        btc,
        hold,
        class,
        quote,
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
    Ok(Json(json!({
        "free_tier": free_tier,
        "model": p.model.name,
        "request_class": p.class.as_str(),
        "input_tokens": p.input,
        "output_tokens": {"p50": p50, "p90": p90, "max": p.max_out},
        "cost_msat": {"p50": c50, "p90": c90, "max": p.hold.hold.msat()},
        "hold_msat": p.hold.hold.msat(),
        "btc_usd": UsdMicros(p.btc.micros()).to_decimal_string(),
        "confidence": confidence,
    })))
}
