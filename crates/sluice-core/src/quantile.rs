//! Output-token estimates that are honest about their uncertainty.
//!
//! # The estimator
//!
//! [`OutputEstimator`] learns the distribution of output tokens of completed
//! requests for one (model, [`RequestClass`]) and answers any percentile from
//! 1 to 99. It is a fixed-bucket, log-scale histogram with exponential decay,
//! kept entirely in integers so it is deterministic and can be persisted
//! exactly:
//!
//! - **Buckets.** Token counts 1..=15 each have their own bucket; above that,
//!   every power of two is split into 8 equal sub-buckets (bucket `[L, U)` has
//!   `U - L = 2^(e-3)` where `2^e <= L`), up to [`MAX_TRACKED_TOKENS`]. That is
//!   [`NUM_BUCKETS`] buckets, each at most 12.5% wide relative to its lower
//!   bound. Larger observations are clamped into the last bucket and an
//!   observation of 0 tokens counts as 1, so an estimate is never 0.
//! - **Weights.** One observation adds [`ONE`] (2^20) to its bucket. Before it
//!   is added, every bucket (and the separate observed-weight counter) loses
//!   `ceil(w / window)`: an exponentially weighted histogram with a mean sample
//!   age of about `window` observations (half-life ≈ 0.69 × `window`). Rounding
//!   the decrement up makes stale weights reach exactly zero instead of lingering.
//! - **Prior.** A new estimator starts from the configured defaults
//!   ([`Prior`]): `prior_weight` observations' worth of mass laid out so that
//!   its P50 and P90 are the configured values, 50% spread over the buckets up
//!   to P50, 40% between P50 and P90, 10% above P90. Real observations then
//!   crowd it out at the decay rate.
//! - **Query.** Percentile `p` walks the cumulative weights to the first bucket
//!   where `cumulative × 100 ≥ total × p` and interpolates inside it as if its
//!   integer token counts were equally likely: `L + ceil(n × f) - 1`, with
//!   `n = U - L` and `f` the needed fraction of the bucket's weight (exact
//!   rational arithmetic, rounded up, so `actual ≤ estimate` ties count as hits).
//!
//! # Error bounds
//!
//! The answer always lies in the bucket holding the true `p`-quantile of the
//! decayed, weighted sample, so its relative error is at most one bucket width:
//! 0 for counts up to 16 and at most 12.5% above (interpolation usually does much
//! better). Fixed-point rounding of the decay changes a bucket by at most one
//! unit in 2^20 of an observation per step. Statistically, the sample has an
//! effective size of about `2 × window`, so with the default window of 256 a P90
//! estimate covers 90% of the next requests to within about a point once the
//! prior has decayed — the `calibration` integration test measures this,
//! including after a shift of the workload.
//!
//! # Persistence
//!
//! [`OutputEstimator::to_state`] gives an [`EstimatorState`] of plain integers
//! (every value fits in an `i64`), [`EstimatorState::encode`] a compact text
//! form (`q1;window;count;observed;idx=weight,...`, only non-zero buckets).
//! Both directions are validated and round-trip exactly.
//!
//! # Quotes
//!
//! [`quote`] turns an estimate into prices with [`charge_for`], so P50/P90 costs
//! and the up-front charge follow the crate's rounding rules.

use std::fmt;

use crate::{
    BtcUsd, EstimateError, ModelRates, Msat, OutputBudget, TokenUsage, charge_for, output_budget,
};

/// Errors from building or restoring an estimator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantileError {
    /// A percentile outside 1..=99.
    #[error("percentile {0} is outside 1..=99")]
    InvalidPercentile(u8),
    /// The decay window is outside 1..=[`MAX_WINDOW`].
    #[error("decay window {0} is outside 1..=1000000")]
    InvalidWindow(u32),
    /// The prior weight is outside 1..=[`MAX_PRIOR_WEIGHT`].
    #[error("prior weight {0} is outside 1..=1000000")]
    InvalidPriorWeight(u32),
    /// The prior's P50 is zero or above its P90.
    #[error("prior P50 {p50} must be at least 1 and at most P90 {p90}")]
    InvalidPrior {
        /// The configured P50.
        p50: u64,
        /// The configured P90.
        p90: u64,
    },
    /// A persisted state of a version this code does not read.
    #[error("unsupported estimator state version {0}")]
    UnsupportedVersion(u32),
    /// A persisted state with the wrong number of buckets.
    #[error("estimator state has {found} buckets, expected {expected}")]
    WrongBucketCount {
        /// [`NUM_BUCKETS`].
        expected: usize,
        /// What the state holds.
        found: usize,
    },
    /// A persisted weight above [`MAX_WEIGHT`].
    #[error("estimator state weight {0} exceeds 2^50")]
    WeightTooLarge(u64),
    /// A persisted observation count above `i64::MAX`.
    #[error("estimator state count {0} exceeds i64::MAX")]
    CountTooLarge(u64),
    /// A persisted state whose buckets are all empty.
    #[error("estimator state has no weight")]
    Empty,
    /// The text encoding could not be parsed.
    #[error("malformed estimator state: {0}")]
    Malformed(String),
}

/// The weight of one observation (fixed point, 2^20).
pub const ONE: u64 = 1 << 20;
/// Observations above this many tokens are counted as this many.
pub const MAX_TRACKED_TOKENS: u64 = (1 << 22) - 1;
/// The number of histogram buckets.
pub const NUM_BUCKETS: usize = 159;
/// The largest decay window, in observations.
pub const MAX_WINDOW: u32 = 1_000_000;
/// The largest prior weight, in observations.
pub const MAX_PRIOR_WEIGHT: u32 = 1_000_000;
/// The largest weight a persisted bucket may hold. Live weights stay below
/// `ONE × (MAX_WINDOW + MAX_PRIOR_WEIGHT)` ≈ 2^41; decay keeps any weight at or
/// below this bound there, so a valid state stays valid after observing.
pub const MAX_WEIGHT: u64 = 1 << 50;
/// The largest observation count kept (it saturates here so it fits an `i64`).
pub const MAX_COUNT: u64 = i64::MAX as u64;
/// The version written by [`OutputEstimator::to_state`].
pub const STATE_VERSION: u32 = 1;

/// Sub-buckets per power of two, as a shift (8 = 2^3).
const SUB_BITS: u32 = 3;
/// Token counts below this have exact buckets.
const EXACT_BELOW: u64 = 1 << (SUB_BITS + 1);

/// A percentile from 1 to 99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percentile(u8);

impl Percentile {
    /// The median.
    pub const P50: Percentile = Percentile(50);
    /// The 90th percentile, the default charged percentile.
    pub const P90: Percentile = Percentile(90);

    /// A percentile; 0 and 100 or more are refused (they have no finite estimate).
    pub fn new(p: u8) -> Result<Self, QuantileError> {
        if (1..=99).contains(&p) {
            Ok(Percentile(p))
        } else {
            Err(QuantileError::InvalidPercentile(p))
        }
    }

    /// The percentile as a number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl Default for Percentile {
    fn default() -> Self {
        Percentile::P90
    }
}

/// The raw (1-based) bucket of a token count in 1..=[`MAX_TRACKED_TOKENS`].
fn raw_index(v: u64) -> usize {
    if v < EXACT_BELOW {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let m = (v >> (e - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (EXACT_BELOW + u64::from(e - SUB_BITS - 1) * (1 << SUB_BITS) + m) as usize
}

/// The smallest token count in raw bucket `r`.
fn raw_lower(r: usize) -> u64 {
    let r = r as u64;
    if r < EXACT_BELOW {
        return r;
    }
    let k = r - EXACT_BELOW;
    let e = k / (1 << SUB_BITS) + u64::from(SUB_BITS) + 1;
    let m = k % (1 << SUB_BITS);
    ((1 << SUB_BITS) + m) << (e - u64::from(SUB_BITS))
}

/// The bucket of a token count (0 counts as 1, huge counts as the maximum).
fn bucket_of(tokens: u64) -> usize {
    raw_index(tokens.clamp(1, MAX_TRACKED_TOKENS)) - 1
}

/// The token counts `[lower, upper)` of bucket `i`.
fn bucket_bounds(i: usize) -> (u64, u64) {
    (raw_lower(i + 1), raw_lower(i + 2))
}

/// Decay and clamp settings of an estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EstimatorConfig {
    /// Mean age, in observations, of the samples the estimate rests on; smaller
    /// adapts faster to a shifted workload, larger is steadier.
    pub window: u32,
    /// How many observations the prior is worth.
    pub prior_weight: u32,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        EstimatorConfig {
            window: 256,
            prior_weight: 16,
        }
    }
}

/// The configured starting point of an estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prior {
    /// Initial median output tokens (at least 1).
    pub p50: u64,
    /// Initial 90th-percentile output tokens (at least `p50`).
    pub p90: u64,
}

impl Prior {
    /// The prior for a model with `default_max_output` tokens: P90 at the
    /// default limit (so a fresh model charges what it would hold) and P50 at
    /// half of it.
    pub fn from_default_max_output(default_max_output: u64) -> Prior {
        let p90 = default_max_output.clamp(1, MAX_TRACKED_TOKENS);
        Prior {
            p50: (p90 / 2).max(1),
            p90,
        }
    }
}

/// Spread `mass` evenly over buckets `range`, the remainder to the last one.
fn spread(weights: &mut [u64], range: std::ops::RangeInclusive<usize>, mass: u64) {
    let (first, last) = (*range.start(), *range.end());
    let n = (last - first + 1) as u64;
    for w in &mut weights[first..=last] {
        *w += mass / n;
    }
    weights[last] += mass % n;
}

/// A streaming, decaying estimate of output tokens (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputEstimator {
    window: u32,
    count: u64,
    observed_weight: u64,
    weights: Vec<u64>,
}

impl OutputEstimator {
    /// An estimator that starts from `prior`, worth `config.prior_weight`
    /// observations, decaying over `config.window` observations.
    pub fn new(prior: Prior, config: EstimatorConfig) -> Result<Self, QuantileError> {
        if config.window == 0 || config.window > MAX_WINDOW {
            return Err(QuantileError::InvalidWindow(config.window));
        }
        if config.prior_weight == 0 || config.prior_weight > MAX_PRIOR_WEIGHT {
            return Err(QuantileError::InvalidPriorWeight(config.prior_weight));
        }
        if prior.p50 == 0 || prior.p50 > prior.p90 {
            return Err(QuantileError::InvalidPrior {
                p50: prior.p50,
                p90: prior.p90,
            });
        }
        let mass = ONE * u64::from(config.prior_weight);
        let (b50, b90) = (bucket_of(prior.p50), bucket_of(prior.p90));
        // Spread the tails at least an octave so the prior has a realistic shape.
        let span = (b90 - b50).max(1 << SUB_BITS);
        let mut weights = vec![0; NUM_BUCKETS];
        // Cumulative targets rounded up, so the prior's own P50 and P90 land in
        // the configured buckets despite integer division.
        let (c50, c90) = (mass.div_ceil(2), (mass * 9).div_ceil(10));
        spread(&mut weights, b50.saturating_sub(span)..=b50, c50);
        let mid = c90 - c50;
        if b90 > b50 {
            spread(&mut weights, b50 + 1..=b90, mid);
        } else {
            weights[b50] += mid;
        }
        let top = mass - c90;
        if b90 + 1 < NUM_BUCKETS {
            spread(
                &mut weights,
                b90 + 1..=(b90 + span).min(NUM_BUCKETS - 1),
                top,
            );
        } else {
            weights[b90] += top;
        }
        Ok(OutputEstimator {
            window: config.window,
            count: 0,
            observed_weight: 0,
            weights,
        })
    }

    /// Learn from a completed request that produced `output_tokens`.
    pub fn observe(&mut self, output_tokens: u64) {
        self.decay();
        let b = &mut self.weights[bucket_of(output_tokens)];
        *b = (*b + ONE).min(MAX_WEIGHT);
    }

    /// Learn from a request whose answer was cut by its output limit after
    /// `at_least` tokens: its natural length is at least that, not that (a
    /// censored observation). The observation's weight is spread over the
    /// buckets from `at_least` up, in proportion to their weights (the
    /// redistribute-to-the-right rule of the Kaplan–Meier estimator): a limit
    /// below the typical length leaves the shape as it was, one above it pushes
    /// the estimate up. So a flood of requests capped at one token cannot drag
    /// the estimate down.
    pub fn observe_at_least(&mut self, at_least: u64) {
        self.decay();
        let b = bucket_of(at_least);
        let tail: u128 = self.weights[b..].iter().map(|&w| u128::from(w)).sum();
        let mut given = 0u64;
        for w in &mut self.weights[b..] {
            // share <= ONE, since w <= tail; an empty tail gives nothing here.
            let Some(share) = (u128::from(ONE) * u128::from(*w)).checked_div(tail) else {
                break;
            };
            let share = share as u64;
            *w = (*w + share).min(MAX_WEIGHT);
            given += share;
        }
        let rest = &mut self.weights[b];
        *rest = (*rest + (ONE - given.min(ONE))).min(MAX_WEIGHT);
    }

    /// Age every weight by one observation and count the one being added.
    fn decay(&mut self) {
        let window = u64::from(self.window);
        for w in &mut self.weights {
            *w -= w.div_ceil(window);
        }
        self.observed_weight -= self.observed_weight.div_ceil(window);
        self.observed_weight = (self.observed_weight + ONE).min(MAX_WEIGHT);
        self.count = (self.count + 1).min(MAX_COUNT);
    }

    /// The estimated `p`-th percentile of output tokens: at least 1, at most
    /// [`MAX_TRACKED_TOKENS`], and non-decreasing in `p`.
    pub fn quantile(&self, p: Percentile) -> u64 {
        let total: u128 = self.weights.iter().map(|&w| u128::from(w)).sum();
        let target = total * u128::from(p.0);
        let mut before: u128 = 0;
        for (i, &w) in self.weights.iter().enumerate() {
            let after = before + u128::from(w);
            if w > 0 && after * 100 >= target {
                let (lower, upper) = bucket_bounds(i);
                let n = u128::from(upper - lower);
                // The needed fraction of this bucket, exactly: (target - before*100) / (w*100) > 0.
                let num = target - before * 100;
                let den = u128::from(w) * 100;
                let offset = (n * num).div_ceil(den);
                // offset is in 1..=n, so the sum fits in u64 and stays in the bucket.
                return (lower + offset as u64 - 1).clamp(1, MAX_TRACKED_TOKENS);
            }
            before = after;
        }
        // Unreachable for a valid estimator (total > 0); the largest value is the
        // safe answer for a price.
        MAX_TRACKED_TOKENS
    }

    /// The estimated median.
    pub fn p50(&self) -> u64 {
        self.quantile(Percentile::P50)
    }

    /// The estimated 90th percentile.
    pub fn p90(&self) -> u64 {
        self.quantile(Percentile::P90)
    }

    /// Observations seen since the estimator was created.
    pub fn observations(&self) -> u64 {
        self.count
    }

    /// The decayed number of real observations the estimate rests on (the
    /// prior excluded), rounded down.
    pub fn effective_observations(&self) -> u64 {
        self.observed_weight / ONE
    }

    /// The decay window.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// How far to trust the estimate, 0–100; see [`confidence`].
    pub fn confidence(&self) -> u8 {
        confidence(self)
    }

    /// The whole state as plain integers, for persistence.
    pub fn to_state(&self) -> EstimatorState {
        EstimatorState {
            version: STATE_VERSION,
            window: self.window,
            count: self.count,
            observed_weight: self.observed_weight,
            weights: self.weights.clone(),
        }
    }

    /// Restore an estimator from a persisted state, refusing invalid ones.
    pub fn from_state(state: EstimatorState) -> Result<Self, QuantileError> {
        state.validate()?;
        Ok(OutputEstimator {
            window: state.window,
            count: state.count,
            observed_weight: state.observed_weight,
            weights: state.weights,
        })
    }
}

/// A persisted [`OutputEstimator`]: plain integers, each fitting in an `i64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EstimatorState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The decay window, 1..=[`MAX_WINDOW`].
    pub window: u32,
    /// Observations seen, at most [`MAX_COUNT`].
    pub count: u64,
    /// Decayed weight of real observations, in units of [`ONE`].
    pub observed_weight: u64,
    /// [`NUM_BUCKETS`] bucket weights, each at most [`MAX_WEIGHT`], not all zero.
    pub weights: Vec<u64>,
}

impl EstimatorState {
    /// Check every invariant [`OutputEstimator`] relies on.
    pub fn validate(&self) -> Result<(), QuantileError> {
        if self.version != STATE_VERSION {
            return Err(QuantileError::UnsupportedVersion(self.version));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(QuantileError::InvalidWindow(self.window));
        }
        if self.count > MAX_COUNT {
            return Err(QuantileError::CountTooLarge(self.count));
        }
        if self.weights.len() != NUM_BUCKETS {
            return Err(QuantileError::WrongBucketCount {
                expected: NUM_BUCKETS,
                found: self.weights.len(),
            });
        }
        if let Some(&w) = self
            .weights
            .iter()
            .chain(std::iter::once(&self.observed_weight))
            .find(|&&w| w > MAX_WEIGHT)
        {
            return Err(QuantileError::WeightTooLarge(w));
        }
        if self.weights.iter().all(|&w| w == 0) {
            return Err(QuantileError::Empty);
        }
        Ok(())
    }

    /// The compact text form: `q1;<window>;<count>;<observed>;<idx>=<w>,...`
    /// listing only non-zero buckets in increasing order.
    pub fn encode(&self) -> String {
        let buckets: Vec<String> = self
            .weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0)
            .map(|(i, w)| format!("{i}={w}"))
            .collect();
        format!(
            "q{};{};{};{};{}",
            self.version,
            self.window,
            self.count,
            self.observed_weight,
            buckets.join(",")
        )
    }

    /// Parse and validate the text form. Only the canonical form written by
    /// [`EstimatorState::encode`] is accepted, so decoding and re-encoding
    /// gives back the same string.
    pub fn decode(s: &str) -> Result<Self, QuantileError> {
        let bad = |why: &str| QuantileError::Malformed(why.to_owned());
        let parts: Vec<&str> = s.split(';').collect();
        let [version, window, count, observed, buckets] = parts[..] else {
            return Err(bad("expected 5 fields separated by ';'"));
        };
        let version = version
            .strip_prefix('q')
            .ok_or_else(|| bad("missing 'q' version prefix"))?;
        let version: u32 = canonical(version, "version")?;
        if version != STATE_VERSION {
            return Err(QuantileError::UnsupportedVersion(version));
        }
        let mut weights = vec![0u64; NUM_BUCKETS];
        let mut next = 0usize;
        if !buckets.is_empty() {
            for item in buckets.split(',') {
                let (i, w) = item
                    .split_once('=')
                    .ok_or_else(|| bad("bucket without '='"))?;
                let i: usize = canonical(i, "bucket index")?;
                let w: u64 = canonical(w, "bucket weight")?;
                if i < next || i >= NUM_BUCKETS {
                    return Err(bad("bucket indices must increase and be in range"));
                }
                if w == 0 {
                    return Err(bad("zero buckets are omitted"));
                }
                weights[i] = w;
                next = i + 1;
            }
        }
        let state = EstimatorState {
            version,
            window: canonical(window, "window")?,
            count: canonical(count, "count")?,
            observed_weight: canonical(observed, "observed weight")?,
            weights,
        };
        state.validate()?;
        Ok(state)
    }
}

/// Parse a decimal integer written exactly as Rust prints it (no sign, no
/// leading zeros), so the text form has one spelling per state.
fn canonical<T: std::str::FromStr + ToString>(s: &str, what: &str) -> Result<T, QuantileError> {
    match s.parse::<T>() {
        Ok(v) if v.to_string() == s => Ok(v),
        _ => Err(QuantileError::Malformed(format!("bad {what} {s:?}"))),
    }
}

/// Observations at which the count factor of [`confidence`] reaches one half.
const CONFIDENCE_HALF_AT: u64 = 20;

/// How far to trust an estimate, 0–100.
///
/// `confidence = n / (n + 20) × 3·P50 / (2·P50 + P90) × 100`, rounded down,
/// where `n` is [`OutputEstimator::effective_observations`] (the prior counts
/// for nothing). The first factor is 0 with no observations, ½ at 20 and
/// approaches 1 as observations accumulate (0.93 at the default window of
/// 256). The second is 1 when P90 = P50 and falls as the spread widens: 0.75
/// at P90 = 2·P50, 0.6 at 3·P50, 0.25 at 10·P50.
pub fn confidence(estimator: &OutputEstimator) -> u8 {
    let n = u128::from(estimator.effective_observations());
    let p50 = u128::from(estimator.p50());
    let p90 = u128::from(estimator.p90()).max(p50);
    let num = n * 3 * p50 * 100;
    let den = (n + u128::from(CONFIDENCE_HALF_AT)) * (2 * p50 + p90);
    // num/den <= 100 because n < n + 20 and 3·p50 <= 2·p50 + p90.
    u8::try_from(num / den).unwrap_or(100).min(100)
}

/// Input-token size classes; output lengths are learned per (model, class)
/// because long prompts (documents, code) and short chat turns tend to produce
/// differently sized answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestClass {
    /// Fewer than 512 input tokens.
    Short,
    /// 512 to 4095 input tokens.
    Medium,
    /// 4096 input tokens or more.
    Long,
}

impl RequestClass {
    /// Every class, in order.
    pub const ALL: [RequestClass; 3] = [
        RequestClass::Short,
        RequestClass::Medium,
        RequestClass::Long,
    ];

    /// The class of a request with `input_tokens` counted prompt tokens.
    pub fn of(input_tokens: u64) -> RequestClass {
        match input_tokens {
            0..512 => RequestClass::Short,
            512..4096 => RequestClass::Medium,
            _ => RequestClass::Long,
        }
    }

    /// A stable name for storage keys and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestClass::Short => "short",
            RequestClass::Medium => "medium",
            RequestClass::Long => "long",
        }
    }

    /// The class named by [`RequestClass::as_str`].
    pub fn parse(s: &str) -> Option<RequestClass> {
        RequestClass::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for RequestClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`quote`] needs besides the estimator.
#[derive(Debug, Clone, Copy)]
pub struct QuoteRequest<'a> {
    /// The model's rate card.
    pub rates: &'a ModelRates,
    /// The BTC price to lock.
    pub btc: BtcUsd,
    /// Counted input tokens.
    pub input_tokens: u64,
    /// The request's own `max_tokens`, if any.
    pub max_tokens: Option<u64>,
    /// The model's output policy.
    pub budget: OutputBudget,
    /// The percentile charged up front (90 by default).
    pub charged_percentile: Percentile,
}

/// A priced estimate, as `POST /v1/estimate` reports it and as a request is
/// charged up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    /// Counted input tokens.
    pub input_tokens: u64,
    /// The most output the request may produce (sent upstream as `max_tokens`).
    pub max_output_tokens: u64,
    /// Estimated median output tokens, at most `max_output_tokens`.
    pub output_p50: u64,
    /// Estimated 90th-percentile output tokens, at most `max_output_tokens`.
    pub output_p90: u64,
    /// The cost of `input_tokens` and `output_p50`.
    pub cost_p50: Msat,
    /// The cost of `input_tokens` and `output_p90`.
    pub cost_p90: Msat,
    /// The percentile charged up front.
    pub charged_percentile: Percentile,
    /// The charged percentile's estimate, at most `max_output_tokens`.
    pub charged_output_tokens: u64,
    /// The up-front charge: the cost of `input_tokens` and `charged_output_tokens`.
    pub charged: Msat,
    /// The BTC price used.
    pub btc: BtcUsd,
    /// How far to trust the estimate, 0–100 ([`confidence`]).
    pub confidence: u8,
}

/// Price a request from the learned output distribution of its (model, class).
///
/// Every estimate is capped at the request's output limit (its `max_tokens`,
/// or the model's default shrunk to the context), because the upstream is told
/// not to produce more; the limit itself is checked with [`output_budget`] so
/// an over-long `max_tokens` or prompt is the same typed error as for a hold.
/// All costs come from [`charge_for`] (rounded up, at least 1 sat).
pub fn quote(req: &QuoteRequest<'_>, estimator: &OutputEstimator) -> Result<Quote, EstimateError> {
    let limit = output_budget(req.max_tokens, req.budget, req.input_tokens)?;
    let cost = |output: u64| {
        charge_for(
            req.rates,
            TokenUsage {
                input: req.input_tokens,
                output,
            },
            req.btc,
        )
    };
    let output_p50 = estimator.p50().min(limit);
    let output_p90 = estimator.p90().min(limit);
    let charged_output_tokens = estimator.quantile(req.charged_percentile).min(limit);
    Ok(Quote {
        input_tokens: req.input_tokens,
        max_output_tokens: limit,
        output_p50,
        output_p90,
        cost_p50: cost(output_p50)?,
        cost_p90: cost(output_p90)?,
        charged_percentile: req.charged_percentile,
        charged_output_tokens,
        charged: cost(charged_output_tokens)?,
        btc: req.btc,
        confidence: confidence(estimator),
    })
}

/// Measured calibration: how often the actual cost stayed within the estimate.
/// The gateway exports [`Calibration::share_bps`] as a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Calibration {
    hits: u64,
    total: u64,
}

impl Calibration {
    /// No requests yet.
    pub const fn new() -> Self {
        Calibration { hits: 0, total: 0 }
    }

    /// Record a finished request: a hit when `actual <= estimate`.
    pub fn record(&mut self, actual: Msat, estimate: Msat) {
        self.record_hit(actual <= estimate);
    }

    /// Record a finished request whose outcome is already known.
    pub fn record_hit(&mut self, hit: bool) {
        self.total = self.total.saturating_add(1);
        if hit {
            self.hits = self.hits.saturating_add(1);
        }
    }

    /// Add another accumulator's counts.
    pub fn merge(&mut self, other: Calibration) {
        self.hits = self.hits.saturating_add(other.hits);
        self.total = self.total.saturating_add(other.total);
    }

    /// Requests within their estimate.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Requests recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The share of hits in basis points (9000 = 90%), rounded down; `None`
    /// before any request.
    pub fn share_bps(&self) -> Option<u32> {
        if self.total == 0 {
            return None;
        }
        let bps = u128::from(self.hits) * 10_000 / u128::from(self.total);
        u32::try_from(bps).ok()
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.share_bps() {
            Some(bps) => write!(
                f,
                "{}.{:02}% of {} requests",
                bps / 100,
                bps % 100,
                self.total
            ),
            None => write!(f, "no requests"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::UsdMicros;
    use proptest::prelude::*;

    fn fresh() -> OutputEstimator {
        OutputEstimator::new(
            Prior::from_default_max_output(1024),
            EstimatorConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        assert_eq!(bucket_bounds(0), (1, 2));
        assert_eq!(bucket_bounds(NUM_BUCKETS - 1).1, MAX_TRACKED_TOKENS + 1);
        for i in 0..NUM_BUCKETS - 1 {
            let (lo, hi) = bucket_bounds(i);
            assert_eq!(hi, bucket_bounds(i + 1).0);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            // At most 12.5% wide relative to the lower bound.
            assert!((hi - lo) * 8 <= lo.max(8), "bucket {i} [{lo},{hi})");
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), NUM_BUCKETS - 1);
    }

    #[test]
    fn a_fresh_estimator_answers_the_configured_defaults() {
        let e = fresh();
        // Within one bucket (12.5%) above the configured values.
        let (p50, p90) = (e.p50(), e.p90());
        assert!((512..=576).contains(&p50), "p50 {p50}");
        assert!((1024..=1152).contains(&p90), "p90 {p90}");
        assert_eq!(e.confidence(), 0);
        let tiny =
            OutputEstimator::new(Prior { p50: 1, p90: 1 }, EstimatorConfig::default()).unwrap();
        assert_eq!((tiny.p50(), tiny.p90()), (1, 1));
    }

    #[test]
    fn small_counts_are_exact() {
        let mut e = OutputEstimator::new(
            Prior { p50: 5, p90: 9 },
            EstimatorConfig {
                window: 1_000,
                prior_weight: 1,
            },
        )
        .unwrap();
        for _ in 0..200 {
            for v in [2, 2, 2, 2, 7, 7, 7, 7, 13, 13] {
                e.observe(v);
            }
        }
        assert_eq!(e.quantile(Percentile::new(10).unwrap()), 2);
        assert_eq!(e.p50(), 7);
        assert_eq!(e.p90(), 13);
    }

    #[test]
    fn learns_and_then_follows_a_shift() {
        let mut e = fresh();
        for i in 0..2_000u64 {
            e.observe(100 + i % 100); // uniform 100..=199
        }
        let p90 = e.p90();
        assert!((185..=195).contains(&p90), "p90 {p90}");
        let p50 = e.p50();
        assert!((143..=156).contains(&p50), "p50 {p50}");
        assert!(e.confidence() > 60, "confidence {}", e.confidence());
        for i in 0..2_000u64 {
            e.observe(1_000 + 10 * (i % 100)); // 1000..=1990
        }
        let p90 = e.p90();
        assert!((1_800..=2_000).contains(&p90), "p90 after shift {p90}");
    }

    #[test]
    fn confidence_falls_with_spread_and_rises_with_observations() {
        let mut narrow = fresh();
        let mut wide = fresh();
        let mut few = fresh();
        for i in 0..1_000u64 {
            narrow.observe(500 + i % 10);
            wide.observe([50, 500, 5_000][(i % 3) as usize]);
        }
        for _ in 0..5 {
            few.observe(500);
        }
        assert!(narrow.confidence() > 85, "{}", narrow.confidence());
        assert!(wide.confidence() < 40, "{}", wide.confidence());
        assert!(few.confidence() < 25, "{}", few.confidence());
        assert!(narrow.confidence() > few.confidence());
    }

    #[test]
    fn invalid_configuration_is_refused() {
        let p = Prior { p50: 10, p90: 20 };
        let c = EstimatorConfig::default();
        assert_eq!(
            OutputEstimator::new(p, EstimatorConfig { window: 0, ..c }),
            Err(QuantileError::InvalidWindow(0))
        );
        assert_eq!(
            OutputEstimator::new(
                p,
                EstimatorConfig {
                    prior_weight: 0,
                    ..c
                }
            ),
            Err(QuantileError::InvalidPriorWeight(0))
        );
        assert_eq!(
            OutputEstimator::new(Prior { p50: 30, p90: 20 }, c),
            Err(QuantileError::InvalidPrior { p50: 30, p90: 20 })
        );
        assert_eq!(
            OutputEstimator::new(Prior { p50: 0, p90: 20 }, c),
            Err(QuantileError::InvalidPrior { p50: 0, p90: 20 })
        );
        assert_eq!(Percentile::new(0), Err(QuantileError::InvalidPercentile(0)));
        assert_eq!(
            Percentile::new(100),
            Err(QuantileError::InvalidPercentile(100))
        );
    }

    #[test]
    fn invalid_states_are_refused() {
        let good = fresh().to_state();
        let with = |f: &dyn Fn(&mut EstimatorState)| {
            let mut s = good.clone();
            f(&mut s);
            OutputEstimator::from_state(s)
        };
        assert_eq!(
            with(&|s| s.version = 2),
            Err(QuantileError::UnsupportedVersion(2))
        );
        assert_eq!(
            with(&|s| s.window = 0),
            Err(QuantileError::InvalidWindow(0))
        );
        assert_eq!(
            with(&|s| {
                s.weights.pop();
            }),
            Err(QuantileError::WrongBucketCount {
                expected: NUM_BUCKETS,
                found: NUM_BUCKETS - 1
            })
        );
        assert_eq!(
            with(&|s| s.weights[3] = MAX_WEIGHT + 1),
            Err(QuantileError::WeightTooLarge(MAX_WEIGHT + 1))
        );
        assert_eq!(
            with(&|s| s.observed_weight = u64::MAX),
            Err(QuantileError::WeightTooLarge(u64::MAX))
        );
        assert_eq!(
            with(&|s| s.count = MAX_COUNT + 1),
            Err(QuantileError::CountTooLarge(MAX_COUNT + 1))
        );
        assert_eq!(
            with(&|s| s.weights.iter_mut().for_each(|w| *w = 0)),
            Err(QuantileError::Empty)
        );
        let text = good.encode();
        assert_eq!(EstimatorState::decode(&text).unwrap(), good);
        for bad in [
            "",
            "q1",
            "q1;256;0;0;",
            "x1;256;0;0;3=5",
            "q1;256;0;0;3=5;",
            "q1;+256;0;0;3=5",
            "q1;0256;0;0;3=5",
            "q1;256;0;0;3=0",
            "q1;256;0;0;4=5,3=5",
            "q1;256;0;0;3=5,3=5",
            "q1;256;0;0;159=5",
            "q1;256;0;0;3",
            "q1;256;-1;0;3=5",
        ] {
            assert!(
                matches!(
                    EstimatorState::decode(bad),
                    Err(QuantileError::Malformed(_) | QuantileError::Empty)
                ),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(
            EstimatorState::decode("q2;256;0;0;3=5"),
            Err(QuantileError::UnsupportedVersion(2))
        );
        assert_eq!(
            EstimatorState::decode("q1;0;0;0;3=5"),
            Err(QuantileError::InvalidWindow(0))
        );
    }

    fn rates() -> ModelRates {
        ModelRates {
            input_per_mtok: UsdMicros::parse("3").unwrap(),
            output_per_mtok: UsdMicros::parse("15").unwrap(),
            ..Default::default()
        }
    }

    fn btc() -> BtcUsd {
        BtcUsd::new(UsdMicros::from_dollars(100_000).unwrap()).unwrap()
    }

    const BUDGET: OutputBudget = OutputBudget {
        default_max_output: 1024,
        max_output: 4096,
        context_length: 8192,
    };

    #[test]
    fn quote_charges_p90_unless_max_tokens_is_lower() {
        let mut e = fresh();
        for i in 0..1_000u64 {
            e.observe(100 + i % 100);
        }
        let rates = rates();
        let req = QuoteRequest {
            rates: &rates,
            btc: btc(),
            input_tokens: 1000,
            max_tokens: None,
            budget: BUDGET,
            charged_percentile: Percentile::P90,
        };
        let q = quote(&req, &e).unwrap();
        assert_eq!(q.output_p90, e.p90());
        assert_eq!(q.charged_output_tokens, q.output_p90);
        assert_eq!(q.max_output_tokens, 1024);
        let cost = |out| {
            charge_for(
                &rates,
                TokenUsage {
                    input: 1000,
                    output: out,
                },
                btc(),
            )
            .unwrap()
        };
        assert_eq!(q.cost_p50, cost(q.output_p50));
        assert_eq!(q.cost_p90, cost(q.output_p90));
        assert_eq!(q.charged, q.cost_p90);
        assert!(q.cost_p50 < q.cost_p90);
        // 1000 in at 3 USD/Mtok = 3 sats; each output token 15 msat at 100k.
        assert_eq!(q.cost_p90.msat(), 3_000 + 15 * q.output_p90);
        // A lower max_tokens bounds every estimate and the charge.
        let capped = quote(
            &QuoteRequest {
                max_tokens: Some(120),
                ..req
            },
            &e,
        )
        .unwrap();
        assert_eq!(capped.charged_output_tokens, 120);
        assert_eq!(capped.output_p90, 120);
        assert_eq!(capped.charged, cost(120));
        // Charging the median instead is configurable.
        let median = quote(
            &QuoteRequest {
                charged_percentile: Percentile::P50,
                ..req
            },
            &e,
        )
        .unwrap();
        assert_eq!(median.charged, q.cost_p50);
        // A fresh model is capped at its default limit.
        let fresh_q = quote(&req, &fresh()).unwrap();
        assert_eq!(fresh_q.charged_output_tokens, 1024);
        assert_eq!(fresh_q.confidence, 0);
    }

    #[test]
    fn quote_refuses_what_a_hold_refuses() {
        let rates = rates();
        let req = QuoteRequest {
            rates: &rates,
            btc: btc(),
            input_tokens: 10,
            max_tokens: Some(5_000),
            budget: BUDGET,
            charged_percentile: Percentile::P90,
        };
        assert_eq!(
            quote(&req, &fresh()),
            Err(EstimateError::OutputLimitExceeded {
                requested: 5_000,
                limit: 4096
            })
        );
        assert_eq!(
            quote(
                &QuoteRequest {
                    input_tokens: 9_000,
                    max_tokens: None,
                    ..req
                },
                &fresh()
            ),
            Err(EstimateError::ContextExceeded {
                input: 9_000,
                context: 8192
            })
        );
    }

    #[test]
    fn request_classes_follow_input_size() {
        assert_eq!(RequestClass::of(0), RequestClass::Short);
        assert_eq!(RequestClass::of(511), RequestClass::Short);
        assert_eq!(RequestClass::of(512), RequestClass::Medium);
        assert_eq!(RequestClass::of(4095), RequestClass::Medium);
        assert_eq!(RequestClass::of(4096), RequestClass::Long);
        for c in RequestClass::ALL {
            assert_eq!(RequestClass::parse(c.as_str()), Some(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(RequestClass::parse("huge"), None);
    }

    #[test]
    fn calibration_reports_basis_points() {
        let mut c = Calibration::new();
        assert_eq!(c.share_bps(), None);
        assert_eq!(c.to_string(), "no requests");
        for i in 0..1000u64 {
            c.record(Msat::from_msat(i), Msat::from_msat(904));
        }
        assert_eq!((c.hits(), c.total()), (905, 1000));
        assert_eq!(c.share_bps(), Some(9050));
        assert_eq!(c.to_string(), "90.50% of 1000 requests");
        let mut d = Calibration::new();
        d.record_hit(false);
        d.merge(c);
        assert_eq!((d.hits(), d.total()), (905, 1001));
    }

    /// About 300 one-token requests (`max_tokens = 1`) drove a class's P90
    /// to one token: each was learned as a one-token answer.
    #[test]
    fn answers_cut_by_a_tiny_limit_do_not_drag_the_estimate_down() {
        let mut e = OutputEstimator::new(
            Prior::from_default_max_output(512),
            EstimatorConfig::default(),
        )
        .unwrap();
        for i in 0..600u64 {
            e.observe(150 + i % 100);
        }
        let (p50, p90) = (e.p50(), e.p90());
        assert!(p90 >= 220, "{p90}");
        for _ in 0..300 {
            e.observe_at_least(1);
        }
        assert!(e.p90() >= p90 * 7 / 8, "P90 {p90} fell to {}", e.p90());
        assert!(e.p50() >= p50 * 7 / 8, "P50 {p50} fell to {}", e.p50());
        // The same requests learned as lengths would have done it.
        let mut poisoned = e.clone();
        for _ in 0..300 {
            poisoned.observe(1);
        }
        assert!(poisoned.p50() < 50, "{}", poisoned.p50());
        // A limit above the typical length pushes the estimate up.
        for _ in 0..300 {
            e.observe_at_least(1_000);
        }
        assert!(e.p50() >= 960, "{}", e.p50()); // the bucket holding 1,000
    }

    fn observation() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            0u64..100,
            0u64..100_000,
            any::<u64>(),
        ]
    }

    proptest! {
        #[test]
        fn any_observations_give_sane_ordered_estimates(
            obs in proptest::collection::vec(observation(), 0..300),
            window in 1u32..2_000,
            prior_weight in 1u32..100,
            p50 in 1u64..10_000,
            extra in 0u64..10_000,
        ) {
            let mut e = OutputEstimator::new(
                Prior { p50, p90: p50 + extra },
                EstimatorConfig { window, prior_weight },
            ).unwrap();
            for o in obs {
                e.observe(o);
                let mut last = 0;
                for p in [1u8, 10, 50, 90, 99] {
                    let q = e.quantile(Percentile::new(p).unwrap());
                    prop_assert!((1..=MAX_TRACKED_TOKENS).contains(&q));
                    prop_assert!(q >= last);
                    last = q;
                }
                prop_assert!(e.p50() <= e.p90());
                prop_assert!(e.confidence() <= 100);
            }
        }

        #[test]
        fn a_censored_observation_never_pulls_an_estimate_below_its_bound(
            obs in proptest::collection::vec(observation(), 0..300),
            cut in observation(),
            window in 1u32..2_000,
        ) {
            let mut e = OutputEstimator::new(
                Prior::from_default_max_output(512),
                EstimatorConfig { window, prior_weight: 16 },
            ).unwrap();
            for o in obs {
                e.observe(o);
            }
            let before: Vec<u64> = [10u8, 50, 90].iter().map(|&p| e.quantile(Percentile::new(p).unwrap())).collect();
            e.observe_at_least(cut);
            prop_assert!(e.to_state().validate().is_ok());
            for (i, &p) in [10u8, 50, 90].iter().enumerate() {
                let after = e.quantile(Percentile::new(p).unwrap());
                let floor = before[i].min(cut.clamp(1, MAX_TRACKED_TOKENS));
                // Within one bucket (12.5%) of rounding in the decay.
                prop_assert!(after + after / 7 + 1 >= floor, "P{} {} -> {} (cut at {})", p, before[i], after, cut);
            }
        }

        #[test]
        fn state_round_trips_exactly(
            obs in proptest::collection::vec(observation(), 0..200),
            window in 1u32..MAX_WINDOW,
            more in proptest::collection::vec(observation(), 0..20),
        ) {
            let mut e = OutputEstimator::new(
                Prior::from_default_max_output(2048),
                EstimatorConfig { window, prior_weight: 8 },
            ).unwrap();
            for o in obs {
                e.observe(o);
            }
            let state = e.to_state();
            let text = state.encode();
            let decoded = EstimatorState::decode(&text).unwrap();
            prop_assert_eq!(&decoded, &state);
            prop_assert_eq!(decoded.encode(), text);
            let mut back = OutputEstimator::from_state(decoded).unwrap();
            prop_assert_eq!(&back, &e);
            // A restored estimator carries on exactly as the original would.
            for o in more {
                e.observe(o);
                back.observe(o);
            }
            prop_assert_eq!(back, e);
        }

        #[test]
        fn valid_states_stay_valid_after_observing(
            weights in proptest::collection::vec(0u64..=MAX_WEIGHT, NUM_BUCKETS),
            observed in 0u64..=MAX_WEIGHT,
            window in 1u32..=MAX_WINDOW,
            obs in proptest::collection::vec(observation(), 1..20),
        ) {
            let mut weights = weights;
            weights[0] = weights[0].max(1);
            let state = EstimatorState { version: STATE_VERSION, window, count: MAX_COUNT, observed_weight: observed, weights };
            let mut e = OutputEstimator::from_state(state).unwrap();
            for o in obs {
                e.observe(o);
                prop_assert!(e.to_state().validate().is_ok());
                prop_assert!(e.p50() <= e.p90());
            }
        }

        #[test]
        fn garbage_text_is_refused_not_panicked_on(s in ".{0,80}") {
            if let Ok(state) = EstimatorState::decode(&s) {
                prop_assert_eq!(state.encode(), s);
            }
        }
    }
}
