//! sluice's money core: amounts, prices, estimates, holds and settlement.
//!
//! Everything here is pure: no async, no I/O, no clocks, no randomness. Every
//! function either returns a value or a typed error. The store and the gateway
//! call these functions and persist or transmit what they return; they never
//! redo the arithmetic themselves.
//!
//! Rounding rules (written down once, here):
//! - A **charge** is computed exactly as a rational number of millisatoshis and
//!   rounded **up** to the next whole msat; a paid request is never charged less
//!   than [`MIN_CHARGE`] (1 sat).
//! - A **refund** or release is what is left of a hold after the charge, so it is
//!   exact in msat; when it must be paid over Lightning in whole sats it is
//!   rounded **down** ([`Msat::to_sats_floor`]).
//! - A **deposit invoice** is for whole sats.

pub mod amount;
pub mod estimate;
pub mod free;
pub mod job;
pub mod ledger;
pub mod price;
pub mod quantile;
pub mod refund;
pub mod scheduler;
pub mod session;
pub mod settle;

pub use amount::{AmountError, Msat};
pub use estimate::{Estimate, EstimateError, OutputBudget, covered_output, output_budget, reserve};
pub use free::{
    Allowances, DAY_MS, Decision, FreeTierError, GateReason, Interaction, Tier, TrustRules,
    check_tier_costs, day_of, decide, decide_for, effective_tier, grant, pool_credit,
    remaining_allowance,
};
pub use job::{
    DEFAULT_MAX_REQUEST_CHARS, JobError, JobEvent, JobPhase, JobState, RestartAction, on_restart,
    validate_request,
};
pub use ledger::{Account, Leg, Posting, PostingKind};
pub use price::{
    BtcUsd, Itemized, MAX_RECORDED_CHARGE, ModelRates, PriceError, TokenUsage, UsdMicros,
    charge_for, charge_for_settlement, itemize,
};
pub use quantile::{
    Calibration, EstimatorConfig, EstimatorState, OutputEstimator, Percentile, Prior,
    QuantileError, Quote, QuoteRequest, RequestClass, confidence, quote,
};
pub use refund::{
    DEFAULT_DUST_THRESHOLD, PoolReason, Refund, RefundEffect, RefundError, RefundEvent,
    RefundSplit, RefundState, RefundStep, check_claim_amount, fee_budget_bounds, payable_sats,
    refund_amount, split_refund,
};
pub use session::{SessionPolicy, SessionPolicyError, SessionState, effective_state};
pub use settle::{Settlement, settle};

/// The smallest charge for a paid request: 1 sat.
pub const MIN_CHARGE: Msat = Msat::from_msat(1_000);
