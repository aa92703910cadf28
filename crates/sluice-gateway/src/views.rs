//! What the service returns, as the wire types of `sluice_proto::api` and
//! `sluice_proto::openai`: every body more than one endpoint shows or that
//! takes more than a struct literal, so handlers stay "extract, call, map".

use sluice_core::{Msat, RefundState, UsdMicros};
use sluice_proto::{
    api::{self, DEV_INVOICE_WARNING},
    openai,
};
use sluice_service::{ModelEntry, Sluice, refunds::fee_budget};
use sluice_store::{JobInvoice, JobRow, RefundRow};

use crate::error::ApiError;

fn warning(sluice: &Sluice) -> Option<String> {
    (!sluice.lightning.is_real_money()).then(|| DEV_INVOICE_WARNING.to_owned())
}

/// An invoice of the gateway's Lightning backend.
pub fn invoice(sluice: &Sluice, inv: &sluice_lightning::Invoice) -> api::Invoice {
    api::Invoice {
        bolt11: inv.bolt11.clone(),
        payment_hash: inv.payment_hash.to_hex(),
        amount_sats: inv.amount.to_sats_floor(),
        expires_at: inv.expires_at,
        warning: warning(sluice),
    }
}

/// A job's invoice, as stored.
pub fn job_invoice(sluice: &Sluice, i: &JobInvoice) -> api::Invoice {
    api::Invoice {
        bolt11: i.bolt11.clone(),
        payment_hash: i.payment_hash.clone(),
        amount_sats: i.amount.to_sats_floor(),
        expires_at: u64::try_from(i.expires_at_ms / 1000).unwrap_or(0),
        warning: warning(sluice),
    }
}

/// A refund, and (for a job's) how to claim it at `claim_path`.
pub fn refund(sluice: &Sluice, r: &RefundRow, claim_path: Option<&str>) -> api::RefundView {
    let (least, most) = fee_budget(sluice, r.refund.payout);
    let claimed = r.refund.state == RefundState::Claimed;
    api::RefundView {
        refund_id: r.id.clone(),
        state: r.refund.state.as_str().to_owned(),
        amount_msat: r.refund.amount.msat(),
        payout_sats: r.refund.payout_sats(),
        expires_at: r.refund.expires_at_ms / 1000,
        payment_hash: r.refund.payment_hash.clone(),
        fee_budget_min_msat: least.msat(),
        fee_budget_max_msat: most.msat(),
        paid_msat: claimed.then(|| r.refund.claimed.msat()),
        fee_msat: claimed.then(|| r.refund.fee.msat()),
        claim: claim_path.map(|p| hint(p, r, least, most)),
    }
}

/// How to claim refund `r` at `path`, with the invoice amount it needs.
pub fn claim_hint(sluice: &Sluice, path: &str, r: &RefundRow) -> String {
    let (least, most) = fee_budget(sluice, r.refund.payout);
    hint(path, r, least, most)
}

/// [`claim_hint`] with the fee budget already worked out.
fn hint(path: &str, r: &RefundRow, least: Msat, most: Msat) -> String {
    format!(
        "POST {path} {{\"invoice\": \"<bolt11 for {} sats less a routing-fee budget of {} to {} msat>\"}}",
        r.refund.payout_sats(),
        least.msat(),
        most.msat()
    )
}

/// `GET /v1/jobs/{id}`: a job as far as it got.
pub async fn job(sluice: &Sluice, job: &JobRow) -> Result<api::JobView, ApiError> {
    use sluice_core::JobState as S;
    let refund = match &job.refund_id {
        Some(rid) => sluice
            .store
            .refund(rid)
            .await?
            .map(|r| refund(sluice, &r, Some(&format!("/v1/jobs/{}/refund", job.id)))),
        None => None,
    };
    Ok(api::JobView {
        job_id: job.id.clone(),
        state: job.state.as_str().to_owned(),
        eval_model: job.eval_model.clone(),
        work_model: job.work_model.clone(),
        created_at: job.created_at_ms / 1000,
        updated_at: job.updated_at_ms / 1000,
        eval_invoice: (job.state == S::AwaitingEvalPayment)
            .then(|| job_invoice(sluice, &job.eval_invoice)),
        work_invoice: job
            .work_invoice
            .as_ref()
            .filter(|_| job.state == S::AwaitingWorkPayment)
            .map(|w| job_invoice(sluice, w)),
        reason: job.reason.clone(),
        result: job.result.clone(),
        pubkey: job.pubkey.clone(),
        free: job.free_tier.as_ref().map(|f| api::JobFree {
            free_tier: f.clone(),
            absorb_cap_msat: job.absorb_cap.map(Msat::msat),
            absorbed_msat: job.absorbed.map(Msat::msat),
        }),
        cost: api::JobCost {
            eval_fee_msat: job.eval_invoice.amount.msat(),
            work_paid_msat: job.work_invoice.as_ref().map(|w| w.amount.msat()),
            work_charged_msat: job.work_charged.map(Msat::msat),
            estimated_input_tokens: job.est_input_tokens,
            estimated_output_tokens: job.est_output_tokens,
            input_tokens: job.input_tokens,
            output_tokens: job.output_tokens,
            btc_usd: job
                .work_btc_usd_micros
                .map(|m| UsdMicros(m).to_decimal_string()),
        },
        refund,
    })
}

/// Every component of a model's price at `btc`, as `/v1/models` lists it: the
/// token rates (margin included), the per-request share of the
/// infrastructure (margin included), the margin itself and the minimum charge.
pub fn price_card(m: &ModelEntry, btc: sluice_core::BtcUsd) -> Result<api::PriceCard, ApiError> {
    let (i, o) = m
        .rates
        .per_mtok_msat(btc)
        .map_err(|e| ApiError::internal(&e))?;
    let fixed = sluice_core::itemize(&m.rates, sluice_core::TokenUsage::default(), btc)
        .map_err(|e| ApiError::internal(&e))?;
    let per_request = fixed.total.saturating_sub(fixed.minimum);
    Ok(api::PriceCard {
        input_msat_per_mtok: i.msat(),
        output_msat_per_mtok: o.msat(),
        input_sats_per_mtok: i.to_sats_ceil(),
        output_sats_per_mtok: o.to_sats_ceil(),
        per_request_msat: per_request.msat(),
        margin_pct: UsdMicros(u64::from(m.rates.margin_bps) * 10_000).to_decimal_string(),
        minimum_charge_msat: sluice_core::MIN_CHARGE.msat(),
        note: "token rates and the per-request share include the margin; a request costs input + output + per request, rounded up to the msat, at least the minimum".into(),
    })
}

/// `GET /v1/models`: every model with its price at `btc`.
pub fn models(
    sluice: &Sluice,
    btc: sluice_core::BtcUsd,
    source: &str,
) -> Result<openai::ModelList, ApiError> {
    let data = sluice
        .models
        .values()
        .map(|m| {
            Ok(openai::Model {
                id: m.name.clone(),
                object: "model".into(),
                created: 0,
                owned_by: "sluice".into(),
                pricing: price_card(m, btc)?,
                max_output_tokens: m.budget.max_output,
                default_max_tokens: m.budget.default_max_output,
                context_length: m.budget.context_length,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(openai::ModelList {
        object: "list".into(),
        data,
        btc_usd: UsdMicros(btc.micros()).to_decimal_string(),
        btc_usd_source: source.to_owned(),
    })
}

/// `POST /v1/estimate`: a quote.
pub fn estimate(q: &sluice_service::quote::Quoted<'_>) -> Result<api::Estimate, ApiError> {
    let p = &q.priced;
    let hold = p.hold.hold.msat();
    let (p50, p90, c50, c90, confidence) = match &p.quote {
        Some(q) => (
            q.output_p50,
            q.output_p90,
            q.cost_p50.msat(),
            q.cost_p90.msat(),
            q.confidence,
        ),
        None => (p.max_out, p.max_out, hold, hold, 0),
    };
    Ok(api::Estimate {
        free_tier: q.free.as_ref().map(|f| f.view(p.hold.hold)),
        pricing: price_card(p.model, p.btc)?,
        itemized_max: sluice_service::pricing::itemized(&q.at_max),
        model: p.model.name.clone(),
        request_class: p.class.as_str().to_owned(),
        input_tokens: p.input,
        input_tokens_held: p.input_held,
        output_tokens: api::Spread {
            p50,
            p90,
            max: p.max_out,
        },
        cost_msat: api::Spread {
            p50: c50,
            p90: c90,
            max: hold,
        },
        hold_msat: hold,
        btc_usd: UsdMicros(p.btc.micros()).to_decimal_string(),
        confidence: u64::from(confidence),
    })
}

/// `GET /v1/pool`.
pub fn pool(sluice: &Sluice, p: &sluice_store::PoolStatus) -> api::Pool {
    let a = sluice.free.allowances;
    let r = sluice.free.accounting.trust;
    api::Pool {
        balance_msat: p.balance.msat(),
        balance_sats: p.balance.to_sats_floor(),
        seeded_msat: p.seeded.msat(),
        credited_msat: p.credited.msat(),
        absorbed_msat: p.absorbed.msat(),
        today: api::PoolToday {
            grants: p.grants_today,
            absorbed_msat: p.absorbed_today.msat(),
        },
        promised_in_flight_msat: sluice.free_inflight.pending().msat(),
        free_tier_enabled: sluice.free.enabled,
        pool_credit_pct: u64::from(sluice.free.accounting.pool_credit_pct),
        daily_allowance_sats: api::TierAllowances {
            anonymous: 0,
            new: a.new.to_sats_floor(),
            established: a.established.to_sats_floor(),
            trusted: a.trusted.to_sats_floor(),
            elite: a.elite.to_sats_floor(),
        },
        tier_thresholds: api::TierCounts {
            established: r.established,
            trusted: r.trusted,
            elite: r.elite,
        },
        tier_paid_days: api::TierCounts {
            established: r.established_days,
            trusted: r.trusted_days,
            elite: r.elite_days,
        },
        sats_per_point: r.sats_per_point,
        real_money: sluice.lightning.is_real_money(),
    }
}

/// `GET /v1/identity/me`.
pub fn me(pubkey: &str, s: &sluice_service::free::Standing, vouchees: Vec<String>) -> api::Me {
    api::Me {
        pubkey: pubkey.to_owned(),
        npub: sluice_proto::nostr::npub(pubkey).ok(),
        tier: s.tier.as_str().to_owned(),
        own_tier: s.own_tier.as_str().to_owned(),
        trust_score: s.score,
        paid_days: s.row.paid_days,
        vouched_by: s.vouchers.clone(),
        vouches_for: vouchees,
        interactions: api::Interactions {
            total: s.row.successes + s.row.failures,
            successful: s.row.successes,
            failed: s.row.failures,
        },
        sats_paid: s.row.paid.to_sats_floor(),
        paid_msat: s.row.paid.msat(),
        absorbed_msat: s.row.absorbed.msat(),
        free_allowance: api::FreeAllowance {
            daily_sats: s.allowance.to_sats_floor(),
            left_today_msat: s.left_today.msat(),
            left_today_sats: s.left_today.to_sats_floor(),
        },
        first_seen: s.row.first_seen_ms / 1000,
        last_seen: s.row.last_seen_ms / 1000,
    }
}

/// A 402's body: the invoice, and for a new token its macaroon.
pub fn payment_required(
    sluice: &Sluice,
    c: &sluice_service::l402::Challenge,
    why: &str,
) -> api::PaymentRequired {
    let (macaroon, valid_until) = c.macaroon.clone().unzip();
    let then = match &macaroon {
        Some(_) => "pay the invoice, then retry with Authorization: L402 <macaroon>:<preimage>",
        None => {
            "pay the invoice to top the token up, then retry with the credential you have (a restricted credential gets no new macaroon)"
        }
    };
    api::PaymentRequired {
        error: api::ErrorDetail {
            message: format!("{why}: {then}"),
            kind: "insufficient_quota".into(),
            code: "payment_required".into(),
        },
        l402: api::L402Offer {
            macaroon,
            invoice: invoice(sluice, &c.invoice),
            valid_until,
        },
    }
}
