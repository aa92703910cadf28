//! The demo: an answer without payment from the cheapest model, paid by the
//! generosity pool (the caller's rate is limited by whoever serves it).

use serde_json::json;
use sluice_core::{Msat, Tier, TokenUsage};
use sluice_store::{GrantAsk, GrantKind};

use crate::{ServiceError, Sluice, chat::upstream_error, request::ChatBody};

/// A demo answer and what it cost the pool.
#[derive(Debug, Clone)]
pub struct DemoAnswer {
    /// The grant's id.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The answer.
    pub answer: String,
    /// What it cost.
    pub cost: Msat,
    /// What the pool paid of it (the rest is the operator's).
    pub absorbed: Msat,
    /// Its tokens.
    pub usage: TokenUsage,
}

impl Sluice {
    /// Answer `text` (checked with [`crate::jobs::check_request`] first) from
    /// the cheapest model by output price, if the pool can pay its estimate.
    pub async fn demo(&self, text: &str) -> Result<DemoAnswer, ServiceError> {
        let model = self
            .models
            .values()
            .min_by_key(|m| (m.rates.output_per_mtok, m.rates.input_per_mtok))
            .ok_or_else(|| ServiceError::unavailable("no_models", "no models are configured"))?;
        let body = ChatBody::parse(json!({
            "model": model.name,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": self.demo.max_tokens.min(model.budget.max_output),
        }))?;
        let priced = crate::pricing::price(self, &body).await?;
        let estimate = priced.hold.hold;
        let pool = self.store.pool_balance().await?;
        if pool < estimate {
            return Err(ServiceError::unavailable(
                "pool_empty",
                "the generosity pool that pays for demo answers is empty right now; pay for an answer with POST /v1/sessions",
            ));
        }
        let completion = model
            .upstream
            .complete(self.call(
                body.upstream_body(&model.upstream_model, model.limit_field, priced.max_out),
                body.messages.clone(),
                priced.max_out,
            ))
            .await
            .map_err(|e| upstream_error(&e))?;
        let metering = crate::metering::Metering::of(model);
        let usage = metering.usage_of(&completion, priced.input);
        let cost = metering.cost_of(usage, priced.btc);
        let id = self.new_id("demo");
        let ask = GrantAsk {
            kind: GrantKind::Demo,
            pubkey: None,
            tier: Tier::Anonymous,
            model: model.name.clone(),
            cap: estimate,
            allowance: None,
        };
        let absorbed = self
            .store
            .record_grant(&id, &ask, cost, &self.free.accounting, self.now_ms())
            .await?;
        tracing::info!(demo_id = %id, cost_msat = cost.msat(), absorbed_msat = absorbed.msat(), "demo answered");
        Ok(DemoAnswer {
            id,
            model: model.name.clone(),
            answer: completion.text,
            cost,
            absorbed,
            usage,
        })
    }
}
