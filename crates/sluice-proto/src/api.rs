//! sluice's own API on the wire: the request and response bodies of every
//! endpoint that is not OpenAI's ([`crate::openai`]). The gateway builds
//! these and nothing else; the OpenAPI document (`GET /openapi.json`) is
//! generated from them.
//!
//! Amounts are integers: `_msat` fields in millisatoshis, `_sats` fields in
//! whole sats (rounded down unless a field says otherwise). Times are Unix
//! seconds. A field documented as "present only when …" is left out
//! otherwise; every other optional field is present and `null`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The error body of every non-2xx answer (OpenAI's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, in OpenAI's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// For a person: what happened and what to do.
    pub message: String,
    /// OpenAI's error class (`invalid_request_error`, `insufficient_quota`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// sluice's machine-readable reason (`payment_required`, `session_expired`, …).
    pub code: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(
        kind: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.into(),
                code: code.into(),
            },
        }
    }
}

/// A Lightning invoice to pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    /// The BOLT11 payment request.
    pub bolt11: String,
    /// Its payment hash (64 hex characters).
    pub payment_hash: String,
    /// What it asks for, in sats.
    pub amount_sats: u64,
    /// When it stops being payable.
    pub expires_at: u64,
    /// Present only when the gateway runs on the dev wallet: the invoice is not real money.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The warning on every invoice of the dev wallet.
pub const DEV_INVOICE_WARNING: &str =
    "dev wallet invoice: NOT real money. Pay it with POST /v1/dev/pay or `sluice wallet pay`.";

/// Body of `POST /v1/sessions` and `POST /v1/sessions/{id}/topup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountBody {
    /// Sats to deposit.
    pub amount_sats: u64,
}

/// `201` to `POST /v1/sessions`: the session, its credential and its deposit invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionCreated {
    /// The session's id.
    pub session_id: String,
    /// The bearer credential: `Authorization: Bearer <macaroon>`.
    pub macaroon: String,
    /// Always `awaiting_payment`.
    pub state: String,
    /// When the credential stops being accepted.
    pub credential_expires_at: u64,
    /// The deposit invoice.
    pub invoice: Invoice,
    /// Present only when the request carried an identity: the key the session is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
}

/// `200` to `GET /v1/sessions/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// The session's id.
    pub session_id: String,
    /// `awaiting_payment`, `active`, `expired` or `closed`.
    pub state: String,
    /// What is left to spend, holds excluded.
    pub balance_msat: u64,
    /// What in-flight requests hold.
    pub held_msat: u64,
    /// Everything deposited.
    pub deposited_msat: u64,
    /// Everything charged.
    pub spent_msat: u64,
    /// The balance below which a request is refused.
    pub minimum_balance_msat: u64,
    /// When the session expires (its remainder becomes a refund).
    pub expires_at: i64,
    /// The session's refunds.
    pub refunds: Vec<RefundView>,
    /// Whether the gateway's Lightning backend moves real money.
    pub real_money: bool,
}

/// `201` to `POST /v1/sessions/{id}/topup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TopUp {
    /// The session's id.
    pub session_id: String,
    /// The top-up invoice.
    pub invoice: Invoice,
}

/// A refund: what a payer is owed back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RefundView {
    /// The refund's id.
    pub refund_id: String,
    /// `claimable`, `paying`, `claimed` or `expired`.
    pub state: String,
    /// What is owed.
    pub amount_msat: u64,
    /// What a claim invoice asks for, in whole sats (before the routing-fee budget).
    pub payout_sats: u64,
    /// When the refund stops being claimable.
    pub expires_at: i64,
    /// The payout's payment hash, once one was tried.
    pub payment_hash: Option<String>,
    /// The least routing-fee budget a claim invoice must leave.
    pub fee_budget_min_msat: u64,
    /// The most routing-fee budget the gateway spends.
    pub fee_budget_max_msat: u64,
    /// What was paid, once claimed.
    pub paid_msat: Option<u64>,
    /// The routing fee, once claimed.
    pub fee_msat: Option<u64>,
    /// Present only on a job's refund: how to claim it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

/// `200` to `POST /v1/sessions/{id}/close`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionClosed {
    /// The session's id.
    pub session_id: String,
    /// Always `closed`.
    pub state: String,
    /// The remainder, owed back (none when nothing was left).
    pub refund: Option<RefundView>,
    /// How to claim the refund.
    pub claim: Option<String>,
}

/// Body of a refund claim on a session or a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// A BOLT11 invoice for the payout less a routing-fee budget.
    pub invoice: String,
    /// Which refund (default: the one claimable).
    #[serde(default)]
    pub refund_id: Option<String>,
}

/// Body of `POST /v1/l402/refund`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct L402RefundBody {
    /// A BOLT11 invoice for the payout less a routing-fee budget.
    pub invoice: String,
    /// Which refund (default: the one claimable).
    #[serde(default)]
    pub refund_id: Option<String>,
    /// Refused alone: every holder of the token has it.
    #[serde(default)]
    pub preimage: Option<String>,
}

/// `200` to a refund claim: paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimPaid {
    /// Always `claimed`.
    pub state: String,
    /// The payout's payment hash.
    pub payment_hash: String,
    /// The payout's preimage: proof of payment.
    pub preimage: String,
    /// What was paid.
    pub amount_msat: u64,
    /// What was paid, in sats.
    pub amount_sats: u64,
    /// The routing fee, out of the budget.
    pub fee_msat: u64,
}

/// `202` to a refund claim: the payout's outcome is not known yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClaimPaying {
    /// Always `paying`.
    pub state: String,
    /// The payout's payment hash.
    pub payment_hash: String,
    /// What is going on.
    pub message: String,
}

/// `409` to a refund claim: already claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AlreadyClaimed {
    /// `refund_already_claimed`.
    pub error: ErrorDetail,
    /// The payout's payment hash.
    pub payment_hash: String,
}

/// `402` to a paid request without enough credit: pay, then retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentRequired {
    /// `payment_required`.
    pub error: ErrorDetail,
    /// The L402 offer.
    pub l402: L402Offer,
}

/// What to pay for an L402 token (also in `WWW-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct L402Offer {
    /// Present only for a new token: its macaroon (a top-up keeps the one the caller has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaroon: Option<String>,
    /// The invoice to pay.
    pub invoice: Invoice,
    /// Present only for a new token: when it stops being accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<u64>,
}

/// Body of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// What to do.
    #[serde(default)]
    pub request: Option<String>,
}

/// `201` to `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCreated {
    /// The job's id (a capability: whoever has it can see and refund the job).
    pub job_id: String,
    /// Always `awaiting_eval_payment`.
    pub state: String,
    /// The evaluation fee's invoice.
    pub eval_invoice: Invoice,
    /// Present only when the request carried an identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
    /// Present only when the request carried an identity: its trust tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_tier: Option<String>,
}

/// `200` to `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// Where the job is.
    pub state: String,
    /// The model that evaluates.
    pub eval_model: String,
    /// The model that works.
    pub work_model: String,
    /// When it was created.
    pub created_at: i64,
    /// When it last changed.
    pub updated_at: i64,
    /// Present only while the evaluation fee is awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_invoice: Option<Invoice>,
    /// Present only while the work's payment is awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_invoice: Option<Invoice>,
    /// Present only when the job was refused or failed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Present only when the work is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Present only when the job is bound to an identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
    /// Present only when the free tier pays for the work.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub free: Option<JobFree>,
    /// What the job cost.
    pub cost: JobCost,
    /// Present only when the job left a refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<RefundView>,
}

/// How the free tier pays for a job's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobFree {
    /// The free-tier decision (`absorb`, `partial`).
    pub free_tier: String,
    /// The most the pool absorbs.
    pub absorb_cap_msat: Option<u64>,
    /// What the pool absorbed.
    pub absorbed_msat: Option<u64>,
}

/// What a job cost, as far as it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCost {
    /// The evaluation fee.
    pub eval_fee_msat: u64,
    /// What the work invoice asked.
    pub work_paid_msat: Option<u64>,
    /// What the work was charged (the rest is refunded).
    pub work_charged_msat: Option<u64>,
    /// The evaluation's estimate of the input.
    pub estimated_input_tokens: Option<u64>,
    /// The evaluation's estimate of the output.
    pub estimated_output_tokens: Option<u64>,
    /// The work's input.
    pub input_tokens: Option<u64>,
    /// The work's output.
    pub output_tokens: Option<u64>,
    /// The BTC/USD price the work was priced at (a decimal string).
    pub btc_usd: Option<String>,
}

/// `?wait=N` on `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Long-poll up to this many seconds (at most 60) for the state to change.
    #[serde(default)]
    pub wait: Option<u64>,
}

/// A model's price, every component of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PriceCard {
    /// Input rate, margin included.
    pub input_msat_per_mtok: u64,
    /// Output rate, margin included.
    pub output_msat_per_mtok: u64,
    /// Input rate in sats, rounded up.
    pub input_sats_per_mtok: u64,
    /// Output rate in sats, rounded up.
    pub output_sats_per_mtok: u64,
    /// The per-request share of the infrastructure, margin included.
    pub per_request_msat: u64,
    /// The margin, in percent (a decimal string).
    pub margin_pct: String,
    /// The least a request costs.
    pub minimum_charge_msat: u64,
    /// How the components add up.
    pub note: String,
}

/// A charge, itemized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Itemized {
    /// The input tokens' share.
    pub input_msat: u64,
    /// The output tokens' share.
    pub output_msat: u64,
    /// The per-request share.
    pub per_request_msat: u64,
    /// The margin, inside the shares above.
    pub margin_msat: u64,
    /// Rounding up to the msat.
    pub rounding_msat: u64,
    /// What the minimum charge added.
    pub minimum_msat: u64,
    /// The charge.
    pub total_msat: u64,
}

/// A free-tier decision on an estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FreeTierDecision {
    /// `absorb`, `partial` or `gate`.
    pub decision: String,
    /// The identity's trust tier.
    pub tier: String,
    /// The estimate decided on.
    pub estimate_msat: u64,
    /// What the pool would absorb.
    pub absorb_msat: u64,
    /// What the payer would be charged.
    pub charge_msat: u64,
    /// Present only when gated: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `p50`/`p90`/`max` of a quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Spread {
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The most.
    pub max: u64,
}

/// `200` to `POST /v1/estimate`: what a chat request would cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    /// The free-tier decision, for a request with an identity.
    pub free_tier: Option<FreeTierDecision>,
    /// The model's price card.
    pub pricing: PriceCard,
    /// The charge at the largest answer the hold covers.
    pub itemized_max: Itemized,
    /// The model.
    pub model: String,
    /// The request's class (by input size), for the estimator.
    pub request_class: String,
    /// The input, counted.
    pub input_tokens: u64,
    /// The input the hold covers (counted with a margin).
    pub input_tokens_held: u64,
    /// The output expected.
    pub output_tokens: Spread,
    /// The cost expected.
    pub cost_msat: Spread,
    /// What paying would hold.
    pub hold_msat: u64,
    /// The BTC/USD price used (a decimal string).
    pub btc_usd: String,
    /// How many answers the output estimate rests on (0: none, the maximum is assumed).
    pub confidence: u64,
}

/// The `sluice` receipt in every chat answer (the final chunk of a stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Receipt {
    /// The request's id.
    pub request_id: String,
    /// The input the hold was priced for.
    pub input_tokens_estimated: u64,
    /// What was held.
    pub hold_msat: u64,
    /// What was charged.
    pub cost_msat: u64,
    /// What was released back.
    pub released_msat: u64,
    /// The BTC/USD price used (a decimal string).
    pub btc_usd: String,
    /// The input metered.
    pub input_tokens: u64,
    /// The output metered.
    pub output_tokens: u64,
    /// The output limit sent upstream.
    pub output_limit: u64,
    /// Whether the gateway's Lightning backend moves real money.
    pub real_money: bool,
    /// The charge, itemized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Itemized>,
    /// Present only for a session or L402 payer: the balance after the charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_msat: Option<u64>,
    /// Present only when the free tier paid: the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_tier: Option<String>,
    /// Present only when the free tier paid: what the pool absorbed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absorbed_msat: Option<u64>,
    /// Present only when the free tier paid: the identity's tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// `200` to `GET /v1/pool`: the generosity pool that pays the free tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    /// What the pool holds.
    pub balance_msat: u64,
    /// What the pool holds, in sats.
    pub balance_sats: u64,
    /// What the operator seeded.
    pub seeded_msat: u64,
    /// What paid requests credited.
    pub credited_msat: u64,
    /// What the free tier absorbed, ever.
    pub absorbed_msat: u64,
    /// Today's grants.
    pub today: PoolToday,
    /// What this process has promised to requests in flight.
    pub promised_in_flight_msat: u64,
    /// Whether the free tier is on.
    pub free_tier_enabled: bool,
    /// The share of each paid request credited to the pool, in percent.
    pub pool_credit_pct: u64,
    /// The daily allowance per tier, in sats.
    pub daily_allowance_sats: TierAllowances,
    /// The trust score each tier needs.
    pub tier_thresholds: TierCounts,
    /// The paid days each tier needs.
    pub tier_paid_days: TierCounts,
    /// Trust points per sat paid.
    pub sats_per_point: u64,
    /// Whether the gateway's Lightning backend moves real money.
    pub real_money: bool,
}

/// Today's free-tier grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolToday {
    /// How many.
    pub grants: u64,
    /// What they absorbed.
    pub absorbed_msat: u64,
}

/// A daily allowance per tier, in sats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TierAllowances {
    /// Always 0: the free tier needs an identity.
    pub anonymous: u64,
    /// A new identity.
    pub new: u64,
    /// An established one.
    pub established: u64,
    /// A trusted one.
    pub trusted: u64,
    /// An elite one.
    pub elite: u64,
}

/// A number per tier above `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TierCounts {
    /// Established.
    pub established: u64,
    /// Trusted.
    pub trusted: u64,
    /// Elite.
    pub elite: u64,
}

/// `?request=` on `GET /v1/demo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DemoQuery {
    /// The question.
    #[serde(default)]
    pub request: Option<String>,
}

/// `200` to `GET /v1/demo`: a free answer from the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DemoAnswer {
    /// The request's id.
    pub id: String,
    /// The model that answered.
    pub model: String,
    /// The answer.
    pub answer: String,
    /// Always `demo`.
    pub free_tier: String,
    /// What the answer cost.
    pub cost_msat: u64,
    /// What the pool absorbed (all of it).
    pub absorbed_msat: u64,
    /// The tokens metered.
    pub usage: DemoUsage,
    /// Whether the gateway's Lightning backend moves real money.
    pub real_money: bool,
}

/// The tokens a demo answer metered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DemoUsage {
    /// Input.
    pub prompt_tokens: u64,
    /// Output.
    pub completion_tokens: u64,
}

/// `200`/`503` to `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, `degraded` (a stale price) or `unavailable`.
    pub status: String,
    /// The database.
    pub database: HealthDatabase,
    /// The Lightning backend.
    pub lightning: HealthLightning,
    /// The BTC/USD price.
    pub price: HealthPrice,
    /// Whether the gateway's Lightning backend moves real money.
    pub real_money: bool,
}

/// The database's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthDatabase {
    /// `sqlite` or `postgres`.
    pub dialect: String,
    /// Whether it accepts writes.
    pub ok: bool,
    /// Present only when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The Lightning backend's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthLightning {
    /// The backend's kind.
    pub backend: String,
    /// Whether it answers.
    pub ok: bool,
    /// Present only when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The price's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthPrice {
    /// Where the price came from.
    pub source: String,
    /// How old it is.
    pub age_secs: Option<u64>,
    /// Whether it is older than allowed.
    pub stale: bool,
}

/// `201` to `POST /v1/identity/challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginChallenge {
    /// The challenge to sign.
    pub nonce: String,
    /// When it stops being accepted.
    pub expires_at: u64,
    /// The event kind to sign.
    pub kind: u64,
    /// How to sign it.
    pub sign: String,
}

/// Body of `POST /v1/identity/verify` and `/v1/identity/vouch`: a signed
/// Nostr event (NIP-01), bare or as `{"event": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedEvent {
    /// The event.
    pub event: crate::nostr::Event,
}

/// `200` to `POST /v1/identity/verify`: an identity token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Login {
    /// Send it as `X-Nostr-Token`.
    pub token: String,
    /// The identity's key (hex).
    pub pubkey: String,
    /// The identity's key (bech32).
    pub npub: Option<String>,
    /// When the token expires.
    pub expires_at: u64,
    /// The identity's trust tier.
    pub tier: String,
    /// How to use the token.
    #[serde(rename = "use")]
    pub how: String,
}

/// `200` to `GET /v1/identity/me`: the identity's standing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Me {
    /// The identity's key (hex).
    pub pubkey: String,
    /// The identity's key (bech32).
    pub npub: Option<String>,
    /// Its tier, vouches included.
    pub tier: String,
    /// Its tier on its own record.
    pub own_tier: String,
    /// Its trust points.
    pub trust_score: u64,
    /// Days on which it paid.
    pub paid_days: u64,
    /// Elite identities vouching for it.
    pub vouched_by: Vec<String>,
    /// Identities it vouches for.
    pub vouches_for: Vec<String>,
    /// Its requests.
    pub interactions: Interactions,
    /// What it paid, in sats.
    pub sats_paid: u64,
    /// What it paid.
    pub paid_msat: u64,
    /// What the pool absorbed for it.
    pub absorbed_msat: u64,
    /// Its free allowance.
    pub free_allowance: FreeAllowance,
    /// When it was first seen.
    pub first_seen: i64,
    /// When it was last seen.
    pub last_seen: i64,
}

/// An identity's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Interactions {
    /// All.
    pub total: u64,
    /// Answered.
    pub successful: u64,
    /// Failed.
    pub failed: u64,
}

/// An identity's free allowance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FreeAllowance {
    /// Per day, in sats.
    pub daily_sats: u64,
    /// Left today.
    pub left_today_msat: u64,
    /// Left today, in sats.
    pub left_today_sats: u64,
}

/// `201` to `POST /v1/identity/vouch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Vouched {
    /// Who vouches.
    pub voucher: String,
    /// For whom.
    pub vouchee: String,
    /// The vouchee's tier now.
    pub vouchee_tier: String,
    /// What a vouch does.
    pub rules: String,
}

/// Body of `POST /v1/dev/pay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// The gateway's dev invoice to pay.
    pub bolt11: String,
}

/// `200` to `POST /v1/dev/pay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DevPaid {
    /// The invoice's payment hash.
    pub payment_hash: String,
    /// Its preimage.
    pub preimage: String,
    /// Always false.
    pub real_money: bool,
    /// Not real money.
    pub warning: String,
}

/// Body of `POST /v1/dev/invoice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevInvoiceBody {
    /// What it asks for.
    pub amount_sats: u64,
    /// Its description.
    #[serde(default)]
    pub memo: Option<String>,
    /// Seconds it stays payable (default: `lightning.invoice_expiry_secs`).
    #[serde(default)]
    pub expiry_secs: Option<u64>,
}

/// `201` to `POST /v1/dev/invoice`: an invoice of the customer's dev wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DevInvoice {
    /// The BOLT11 payment request.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: String,
    /// What it asks for.
    pub amount_sats: u64,
    /// When it stops being payable.
    pub expires_at: u64,
    /// Always false.
    pub real_money: bool,
    /// Not real money.
    pub warning: String,
}

/// `200` to `GET /v1/dev/invoices/{hash}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DevInvoiceStatus {
    /// The invoice's payment hash.
    pub payment_hash: String,
    /// `pending`, `paid` or `expired`.
    pub state: String,
    /// Always false.
    pub real_money: bool,
}

/// The warning on every dev-wallet answer.
pub const DEV_WALLET_WARNING: &str = "dev wallet: NOT real money";
