//! The free tier: an identity's standing, the decision on an estimated cost,
//! `GET /v1/pool` and the demo endpoint.
//!
//! The rules are `sluice_core::free`'s; the store records grants (see
//! `sluice_store::GrantAsk`). The order, for every kind of request:
//! 1. price the request and decide on the **estimate** (free, partial, gate),
//!    before any work or invoice;
//! 2. do the work (a partial decision holds or invoices only the payer's part);
//! 3. record the grant **after** the work, capped at the actual cost, the
//!    pool's balance and the identity's allowance left, in the same
//!    transaction as the request's settlement.
//!
//! Decisions count what this process has already promised to requests in
//! flight ([`InFlight`]). When the pool has still run dry between decision
//! and grant (another process, or a job, spent it), the pool absorbs
//! what it has; a payer is charged the rest up to what it held or paid, and
//! what is left is the operator's loss (never the payer's, never the pool's).

use std::net::SocketAddr;

use axum::{
    Json,
    extract::{ConnectInfo, State},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_core::{
    Decision, Msat, Tier, TokenUsage, charge_for_settlement, day_of, decide_for, effective_tier,
    remaining_allowance,
};
use sluice_store::{GrantAsk, GrantKind, IdentityRow};

pub use sluice_service::free::{FreeTier, InFlight, Reservation};

use crate::{
    error::ApiError, extract::ApiQuery, identity::Identity, request::ChatBody, state::AppState,
    upstream::ChatCall,
};

/// An identity's standing now.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The stored row (created if it was new).
    pub row: IdentityRow,
    /// The score after lazy decay.
    pub score: u64,
    /// The tier its own score gives.
    pub own_tier: Tier,
    /// The tier it acts with (a vouch from a current elite lifts it).
    pub tier: Tier,
    /// Current elite identities vouching for it.
    pub vouchers: Vec<String>,
    /// Its daily allowance.
    pub allowance: Msat,
    /// What is left of it today.
    pub left_today: Msat,
}

/// Look up (and mark seen) an identity's standing.
pub async fn standing(state: &AppState, pubkey: &str, now: i64) -> Result<Standing, ApiError> {
    let rules = state.free.accounting.trust;
    let row = state.store.touch_identity(pubkey, &rules, now).await?;
    let score = rules.decayed(row.score, row.last_seen_ms, now);
    let own_tier = rules.tier_of(score, row.paid_days);
    let vouchers: Vec<String> = state
        .store
        .vouchers_of(pubkey)
        .await?
        .into_iter()
        .filter(|v| {
            rules.tier_of(rules.decayed(v.score, v.last_seen_ms, now), v.paid_days) == Tier::Elite
        })
        .map(|v| v.pubkey)
        .collect();
    let tier = effective_tier(own_tier, !vouchers.is_empty());
    let allowance = state.free.allowances.of(tier);
    let left_today =
        remaining_allowance(allowance, row.absorbed_today, row.absorbed_day, day_of(now));
    Ok(Standing {
        row,
        score,
        own_tier,
        tier,
        vouchers,
        allowance,
        left_today,
    })
}

/// A free-tier decision and what recording it will need.
#[derive(Debug, Clone)]
pub struct FreeDecision {
    /// The decision.
    pub decision: Decision,
    /// The tier it was made for.
    pub tier: Tier,
    /// What to record after the work (absent for a gate).
    pub ask: Option<GrantAsk>,
    /// This process's promise of the pool's sats, held until the grant is
    /// recorded (chat requests keep it with their meter).
    pub reservation: Option<std::sync::Arc<Reservation>>,
}

impl FreeDecision {
    /// No identity, or the free tier is off.
    pub fn anonymous() -> FreeDecision {
        FreeDecision {
            decision: Decision::Gate {
                reason: sluice_core::GateReason::Anonymous,
            },
            tier: Tier::Anonymous,
            ask: None,
            reservation: None,
        }
    }

    /// The decision as JSON, for responses and estimates.
    pub fn json(&self, estimate: Msat) -> Value {
        let mut v = json!({
            "decision": self.decision.as_str(),
            "tier": self.tier.as_str(),
            "estimate_msat": estimate.msat(),
            "absorb_msat": self.decision.absorb().msat(),
            "charge_msat": self.decision.charge(estimate).msat(),
        });
        if let Decision::Gate { reason } = self.decision {
            v["reason"] = Value::String(reason.as_str().to_owned());
        }
        v
    }
}

/// Decide on `estimate` for `identity` (no identity: gate).
pub async fn decide(
    state: &AppState,
    identity: Option<&Identity>,
    estimate: Msat,
    model: &str,
    kind: GrantKind,
) -> Result<FreeDecision, ApiError> {
    let Some(id) = identity else {
        return Ok(FreeDecision::anonymous());
    };
    decide_for_pubkey(state, &id.pubkey, estimate, model, kind).await
}

/// Decide on `estimate` for a known pubkey (jobs decide for the key bound at creation).
pub async fn decide_for_pubkey(
    state: &AppState,
    pubkey: &str,
    estimate: Msat,
    model: &str,
    kind: GrantKind,
) -> Result<FreeDecision, ApiError> {
    let now = state.now_ms();
    let s = standing(state, pubkey, now).await?;
    if !state.free.enabled {
        return Ok(FreeDecision {
            decision: Decision::Gate {
                reason: sluice_core::GateReason::Disabled,
            },
            tier: s.tier,
            ask: None,
            reservation: None,
        });
    }
    let pool = state.store.pool_balance().await?;
    let absorbed_today = s.allowance.saturating_sub(s.left_today);
    // Decide against what is not already promised to this process's requests
    // in flight, and promise this one's share until its grant is recorded.
    let (decision, reservation) = state
        .free_inflight
        .decide(pubkey, |pending_pool, pending_id| {
            decide_for(
                s.tier,
                &state.free.allowances,
                absorbed_today
                    .checked_add(pending_id)
                    .unwrap_or(s.allowance),
                pool.saturating_sub(pending_pool),
                estimate,
            )
        });
    let ask = (decision.absorb() > Msat::ZERO).then(|| GrantAsk {
        kind,
        pubkey: Some(pubkey.to_owned()),
        tier: s.tier,
        model: model.to_owned(),
        cap: decision.absorb(),
        allowance: Some(s.allowance),
    });
    Ok(FreeDecision {
        decision,
        tier: s.tier,
        ask,
        reservation,
    })
}

/// `GET /v1/pool`: the generosity pool.
pub async fn pool(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let p = state.store.pool_status(day_of(state.now_ms())).await?;
    let a = state.free.allowances;
    let r = state.free.accounting.trust;
    Ok(Json(json!({
        "balance_msat": p.balance.msat(),
        "balance_sats": p.balance.to_sats_floor(),
        "seeded_msat": p.seeded.msat(),
        "credited_msat": p.credited.msat(),
        "absorbed_msat": p.absorbed.msat(),
        "today": {
            "grants": p.grants_today,
            "absorbed_msat": p.absorbed_today.msat(),
        },
        "promised_in_flight_msat": state.free_inflight.pending().msat(),
        "free_tier_enabled": state.free.enabled,
        "pool_credit_pct": state.free.accounting.pool_credit_pct,
        "daily_allowance_sats": {
            "anonymous": 0,
            "new": a.new.to_sats_floor(),
            "established": a.established.to_sats_floor(),
            "trusted": a.trusted.to_sats_floor(),
            "elite": a.elite.to_sats_floor(),
        },
        "tier_thresholds": {
            "established": r.established,
            "trusted": r.trusted,
            "elite": r.elite,
        },
        "tier_paid_days": {
            "established": r.established_days,
            "trusted": r.trusted_days,
            "elite": r.elite_days,
        },
        "sats_per_point": r.sats_per_point,
        "real_money": state.lightning.is_real_money(),
    })))
}

/// `?request=...`
#[derive(Debug, Deserialize)]
pub struct DemoQuery {
    /// The question.
    pub request: Option<String>,
}

/// `GET /v1/demo?request=...`: an answer without payment from the cheapest
/// model, limited per client IP, paid from the pool.
pub async fn demo(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiQuery(q): ApiQuery<DemoQuery>,
) -> Result<Response, ApiError> {
    crate::jobs::check_request(
        &state,
        q.request.as_deref(),
        "; ask with GET /v1/demo?request=<your question>",
    )?;
    let text = q.request.unwrap_or_default();
    if let Err(wait) = state.demo_limiter.check(Some(addr.ip())) {
        return Ok(crate::ratelimit::too_many(
            wait,
            format!(
                "the demo answers {} requests per hour per client; retry in {wait} s, or pay for answers (POST /v1/sessions)",
                state.demo.per_hour
            ),
        ));
    }
    // The cheapest model by output price.
    let model = state
        .models
        .values()
        .min_by_key(|m| (m.rates.output_per_mtok, m.rates.input_per_mtok))
        .ok_or_else(|| ApiError::unavailable("no_models", "no models are configured"))?;
    let body = ChatBody::parse(json!({
        "model": model.name,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": state.demo.max_tokens.min(model.budget.max_output),
    }))?;
    let priced = crate::pricing::price(&state, &body).await?;
    let estimate = priced.hold.hold;
    let pool = state.store.pool_balance().await?;
    if pool < estimate {
        return Err(ApiError::unavailable(
            "pool_empty",
            "the generosity pool that pays for demo answers is empty right now; pay for an answer with POST /v1/sessions",
        ));
    }
    let completion = model
        .upstream
        .complete(ChatCall {
            body: body.upstream_body(&model.upstream_model, model.limit_field, priced.max_out),
            messages: body.messages.clone(),
            max_tokens: priced.max_out,
        })
        .await
        .map_err(|e| crate::chat::upstream_error(&e))?;
    let usage = completion.usage.unwrap_or_else(|| TokenUsage {
        input: priced.input,
        output: crate::tokens::count_output(
            &*model.upstream,
            model.tokenizer,
            &completion.generated,
        ),
    });
    let actual = charge_for_settlement(&model.rates, usage, priced.btc);
    let id = state.new_id("demo");
    let ask = GrantAsk {
        kind: GrantKind::Demo,
        pubkey: None,
        tier: Tier::Anonymous,
        model: model.name.clone(),
        cap: estimate,
        allowance: None,
    };
    let absorbed = state
        .store
        .record_grant(&id, &ask, actual, &state.free.accounting, state.now_ms())
        .await?;
    tracing::info!(demo_id = %id, cost_msat = actual.msat(), absorbed_msat = absorbed.msat(), "demo answered");
    Ok(Json(json!({
        "id": id,
        "model": model.name,
        "answer": completion.text,
        "free_tier": "demo",
        "cost_msat": actual.msat(),
        "absorbed_msat": absorbed.msat(),
        "usage": {"prompt_tokens": usage.input, "completion_tokens": usage.output},
        "real_money": state.lightning.is_real_money(),
    }))
    .into_response())
}
