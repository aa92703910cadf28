//! Choosing the provider that serves a request: pure, deterministic given a
//! seed, explainable.
//!
//! The gateway hands [`pick`] the request ([`Ask`]), the payer's
//! [`Constraints`] (OpenRouter-style provider preferences), a snapshot of
//! [`Candidate`]s (one per provider offering the model, read from the
//! registry) and the operator's [`Policy`]. It gets back a [`Pick`]: the
//! provider to try first, up to [`MAX_FALLBACKS`] to fail over to, and the
//! [`Terms`] that ranked each — or [`NoProvider`], which counts why each
//! candidate was left out.
//!
//! **Filters** (a candidate failing one is never chosen): it offers the
//! model; the model's context window holds the input and the most output;
//! it has a free slot (`in_flight < max_concurrency`); it is healthy (a
//! heartbeat within the registry's window) and not cooling down after
//! failures; its price is within the payer's `max_price`; `only` and
//! `ignore` allow it.
//!
//! **Score** (lower is better; every term is a ratio to the best candidate
//! on it, in millionths, so `1_000_000` is "as good as the best"):
//! - `price`: what this request would cost at the provider's price (input
//!   plus the most output), against the cheapest;
//! - `latency`: expected time to the last token (measured time to first
//!   token + the most output at measured tokens per second), against the
//!   fastest; a provider with no measurement yet is assumed as slow as
//!   [`Policy::unmeasured_ms`];
//! - `reliability`: `1 + recent_failures / 4`;
//! - `load`: `1 + in_flight / max_concurrency`.
//!
//! The total weighs them by [`Weights`] (per ten thousand); a payer's
//! `sort` replaces the weights by one term, the others breaking ties.
//! Equal totals are broken by the provider's key, so the order is total.
//!
//! **Exploration:** with probability [`Policy::explore_bps`] / 10,000 (drawn
//! from the seed), the first choice is a uniformly drawn *new* provider
//! (healthy, verified, fewer than [`Policy::new_below`] requests served)
//! instead of the best one, so a new provider gets its first paid requests
//! as soon as there is demand; the best providers stay its fallbacks. A
//! payer who names a `sort` or `only` is never explored on.
//!
//! Cost: one filtering pass over the candidates and one scoring pass over
//! those that passed, linear in the fleet (`benches/core.rs`; the figures
//! are in `docs/benchmarks.md`).

use std::cmp::Ordering;

/// The most providers a request fails over to after the first.
pub const MAX_FALLBACKS: usize = 2;

/// "As good as the best" in a score term.
pub const UNIT: u64 = 1_000_000;

/// A price in msat per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    /// Per million input tokens.
    pub input_msat_per_mtok: u64,
    /// Per million output tokens.
    pub output_msat_per_mtok: u64,
}

impl Price {
    /// What `input` and `output` tokens cost at this price, in msat × 10⁶
    /// (kept unrounded, so close prices still rank apart).
    pub fn cost_micro(&self, input: u64, output: u64) -> u128 {
        u128::from(input) * u128::from(self.input_msat_per_mtok)
            + u128::from(output) * u128::from(self.output_msat_per_mtok)
    }

    /// Whether both rates are within `limit`'s.
    pub fn within(&self, limit: &Price) -> bool {
        self.input_msat_per_mtok <= limit.input_msat_per_mtok
            && self.output_msat_per_mtok <= limit.output_msat_per_mtok
    }
}

/// One provider offering the model asked for, as the registry sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The provider's key (x-only, 32 bytes): its identity everywhere.
    pub provider: [u8; 32],
    /// The model it offers (the registry's number for the name).
    pub model: u32,
    /// Its context window, in tokens (0: unknown, assumed large enough).
    pub context_window: u64,
    /// Requests it takes at once.
    pub max_concurrency: u32,
    /// Requests it has now (the gateway's count, not the node's claim).
    pub in_flight: u32,
    /// Its price.
    pub price: Price,
    /// A heartbeat within the registry's window.
    pub healthy: bool,
    /// It passed the gateway's checks (a probe or a valid receipt).
    pub verified: bool,
    /// Requests it has served for this gateway.
    pub served: u64,
    /// Moving average of its time to first token, in ms (0: not measured).
    pub ttft_ms: u64,
    /// Moving average of its output rate, in milli-tokens per second (0: not measured).
    pub tokens_per_sec_milli: u64,
    /// Failures among its recent requests (decayed by the registry).
    pub recent_failures: u32,
    /// Unix ms until which it is not routed to after repeated failures.
    pub cooldown_until_ms: i64,
}

/// The request to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The model asked for.
    pub model: u32,
    /// Input tokens, counted.
    pub input_tokens: u64,
    /// The most output it may produce.
    pub max_output: u64,
    /// A streamed answer (time to first token weighs more).
    pub stream: bool,
    /// Now, Unix ms (for cooldowns).
    pub now_ms: i64,
}

/// What a payer's `provider.sort` asks to rank by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// The cheapest.
    Price,
    /// The soonest to answer.
    Latency,
    /// The fastest output.
    Throughput,
}

/// A payer's provider preferences (`provider: {sort, max_price, only, ignore, allow_fallbacks}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraints {
    /// Rank by one term only.
    pub sort: Option<Sort>,
    /// The most the payer pays a provider per million tokens.
    pub max_price: Option<Price>,
    /// Only these providers (empty: any).
    pub only: Vec<[u8; 32]>,
    /// Never these providers.
    pub ignore: Vec<[u8; 32]>,
    /// Fail over to another provider when the first fails before answering.
    pub allow_fallbacks: bool,
}

impl Default for Constraints {
    fn default() -> Self {
        Constraints {
            sort: None,
            max_price: None,
            only: Vec::new(),
            ignore: Vec::new(),
            allow_fallbacks: true,
        }
    }
}

/// How much each term weighs, per ten thousand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    /// The price term.
    pub price: u64,
    /// The latency term.
    pub latency: u64,
    /// The reliability term.
    pub reliability: u64,
    /// The load term.
    pub load: u64,
}

/// The operator's routing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The terms' weights.
    pub weights: Weights,
    /// Share of requests explored on a new provider, per ten thousand.
    pub explore_bps: u64,
    /// A provider with fewer requests served than this is new.
    pub new_below: u64,
    /// The time to last token assumed for a provider not measured yet, ms.
    pub unmeasured_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            weights: Weights {
                price: 5_000,
                latency: 3_000,
                reliability: 1_500,
                load: 500,
            },
            explore_bps: 500,
            new_below: 20,
            unmeasured_ms: 10_000,
        }
    }
}

/// Why a candidate was left out, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Filtered {
    /// Offers another model.
    pub model: u32,
    /// Its context window is too small for the input and the most output.
    pub context: u32,
    /// No free slot.
    pub capacity: u32,
    /// No recent heartbeat, or cooling down after failures.
    pub unhealthy: u32,
    /// Above the payer's `max_price`.
    pub price: u32,
    /// Left out by the payer's `only` or `ignore`.
    pub excluded: u32,
}

/// No candidate passed the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "no provider can take this request: {} offer another model, {} have too small a context window, {} are at capacity, {} are unhealthy or cooling down, {} are above max_price, {} are excluded by only/ignore",
    .0.model, .0.context, .0.capacity, .0.unhealthy, .0.price, .0.excluded
)]
pub struct NoProvider(pub Filtered);

/// The terms a candidate was ranked by (each in millionths of the best; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Cost ratio to the cheapest.
    pub price: u64,
    /// Expected-time ratio to the fastest.
    pub latency: u64,
    /// `1 + recent_failures / 4`.
    pub reliability: u64,
    /// `1 + in_flight / max_concurrency`.
    pub load: u64,
    /// The weighted total that ranked it (lower is better).
    pub total: u64,
}

/// One ranked choice: an index into the candidates and its terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Index into the candidates given to [`pick`].
    pub index: usize,
    /// What ranked it.
    pub terms: Terms,
}

/// The providers to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// The first to try.
    pub first: Choice,
    /// Whether `first` was drawn for exploration rather than ranked best.
    pub explored: bool,
    /// The ones to fail over to, best first (none when the payer said no fallbacks).
    pub fallbacks: Vec<Choice>,
    /// How many candidates passed the filters.
    pub eligible: u32,
}

/// Which filter `c` fails for `ask` and `constraints`, if any.
fn refusal(c: &Candidate, ask: &Ask, k: &Constraints) -> Option<fn(&mut Filtered) -> &mut u32> {
    if c.model != ask.model {
        return Some(|f| &mut f.model);
    }
    if c.context_window != 0 && ask.input_tokens.saturating_add(ask.max_output) > c.context_window {
        return Some(|f| &mut f.context);
    }
    if c.in_flight >= c.max_concurrency {
        return Some(|f| &mut f.capacity);
    }
    if !c.healthy || c.cooldown_until_ms > ask.now_ms {
        return Some(|f| &mut f.unhealthy);
    }
    if k.max_price.is_some_and(|m| !c.price.within(&m)) {
        return Some(|f| &mut f.price);
    }
    if (!k.only.is_empty() && !k.only.contains(&c.provider)) || k.ignore.contains(&c.provider) {
        return Some(|f| &mut f.excluded);
    }
    None
}

/// Expected time to the last token, ms (a stream counts its first token twice:
/// that is what its reader waits on).
fn expected_ms(c: &Candidate, ask: &Ask, p: &Policy) -> u64 {
    if c.ttft_ms == 0 && c.tokens_per_sec_milli == 0 {
        return p.unmeasured_ms.max(1);
    }
    let generate = ask
        .max_output
        .saturating_mul(1_000_000)
        .checked_div(c.tokens_per_sec_milli)
        .unwrap_or(p.unmeasured_ms);
    let first = if ask.stream {
        c.ttft_ms.saturating_mul(2)
    } else {
        c.ttft_ms
    };
    first.saturating_add(generate).max(1)
}

/// `value / best` in millionths (`best` > 0).
fn ratio(value: u128, best: u128) -> u64 {
    let r = value.saturating_mul(u128::from(UNIT)) / best.max(1);
    u64::try_from(r).unwrap_or(u64::MAX)
}

/// The bests the ratios are taken against.
struct Bests {
    cost: u128,
    ms: u64,
    throughput: u64,
}

/// What `c` would cost for `ask` (never 0, so every ratio is defined).
fn cost(c: &Candidate, ask: &Ask) -> u128 {
    c.price.cost_micro(ask.input_tokens, ask.max_output).max(1)
}

/// `c`'s terms, given its [`cost`] and [`expected_ms`] for the request.
fn terms(c: &Candidate, cost: u128, ms: u64, k: &Constraints, p: &Policy, b: &Bests) -> Terms {
    let price = ratio(cost, b.cost);
    let latency = ratio(u128::from(ms), u128::from(b.ms));
    let reliability = UNIT + u64::from(c.recent_failures) * (UNIT / 4);
    let load = UNIT + u64::from(c.in_flight) * UNIT / u64::from(c.max_concurrency.max(1));
    let w = p.weights;
    let weighted = |x: u64, weight: u64| u128::from(x) * u128::from(weight);
    let blend = (weighted(price, w.price)
        + weighted(latency, w.latency)
        + weighted(reliability, w.reliability)
        + weighted(load, w.load))
        / 10_000;
    let total = match k.sort {
        // One term decides; the weighted rest (scaled far below it) breaks ties.
        Some(sort) => {
            let main = match sort {
                Sort::Price => price,
                Sort::Latency => latency,
                // Throughput: the best rate over this one's (unmeasured: the worst).
                Sort::Throughput => match c.tokens_per_sec_milli {
                    0 => u64::MAX / 4,
                    t => ratio(u128::from(b.throughput), u128::from(t)),
                },
            };
            u64::try_from(u128::from(main).saturating_mul(1_000) + blend / 1_000)
                .unwrap_or(u64::MAX)
        }
        None => u64::try_from(blend).unwrap_or(u64::MAX),
    };
    Terms {
        price,
        latency,
        reliability,
        load,
        total,
    }
}

/// splitmix64: a small, good, seedable mixer (determinism, not secrecy).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Order two ranked candidates: lower total first, then the smaller key.
fn better(a: (u64, &[u8; 32]), b: (u64, &[u8; 32])) -> Ordering {
    a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1))
}

/// Choose the provider for `ask` among `candidates` (see the module docs).
pub fn pick(
    ask: &Ask,
    constraints: &Constraints,
    candidates: &[Candidate],
    policy: &Policy,
    seed: u64,
) -> Result<Pick, NoProvider> {
    // Pass 1: filter once, remembering each eligible candidate's cost and
    // expected time, and find the bests the ratios are taken against.
    let mut filtered = Filtered::default();
    let mut ok: Vec<(usize, u128, u64)> = Vec::with_capacity(candidates.len());
    let mut bests = Bests {
        cost: u128::MAX,
        ms: u64::MAX,
        throughput: 0,
    };
    let mut new_ones = 0u32;
    for (index, c) in candidates.iter().enumerate() {
        if let Some(count) = refusal(c, ask, constraints) {
            *count(&mut filtered) += 1;
            continue;
        }
        let (cost, ms) = (cost(c, ask), expected_ms(c, ask, policy));
        ok.push((index, cost, ms));
        bests.cost = bests.cost.min(cost);
        bests.ms = bests.ms.min(ms);
        bests.throughput = bests.throughput.max(c.tokens_per_sec_milli);
        if is_new(c, policy) {
            new_ones += 1;
        }
    }
    if ok.is_empty() {
        return Err(NoProvider(filtered));
    }
    // Exploration: drawn from the seed, only for a payer with no preference.
    let r = mix(seed);
    let explore = new_ones > 0
        && constraints.sort.is_none()
        && constraints.only.is_empty()
        && r % 10_000 < policy.explore_bps;
    let explore_nth = if explore {
        Some(mix(r) % u64::from(new_ones))
    } else {
        None
    };
    // Pass 2: score, keep the best MAX_FALLBACKS + 1, and the explored one.
    let keep = if constraints.allow_fallbacks {
        MAX_FALLBACKS + 1
    } else {
        1
    };
    let mut top: Vec<Choice> = Vec::with_capacity(keep + 1);
    let mut explored: Option<Choice> = None;
    let mut nth_new = 0u64;
    for &(index, cost, ms) in &ok {
        let c = &candidates[index];
        let t = terms(c, cost, ms, constraints, policy, &bests);
        let choice = Choice { index, terms: t };
        if is_new(c, policy) {
            if explore_nth == Some(nth_new) {
                explored = Some(choice);
            }
            nth_new += 1;
        }
        let at = top
            .iter()
            .position(|o| {
                better(
                    (t.total, &c.provider),
                    (o.terms.total, &candidates[o.index].provider),
                ) == Ordering::Less
            })
            .unwrap_or(top.len());
        if at < keep {
            top.insert(at, choice);
            top.truncate(keep);
        }
    }
    let (first, fallbacks, was_explored) = match explored {
        Some(e) => {
            let rest: Vec<Choice> = top
                .into_iter()
                .filter(|o| o.index != e.index)
                .take(if constraints.allow_fallbacks {
                    MAX_FALLBACKS
                } else {
                    0
                })
                .collect();
            (e, rest, true)
        }
        None => {
            let mut it = top.into_iter();
            // `ok` is not empty, so the ranking holds at least one.
            let Some(first) = it.next() else {
                return Err(NoProvider(filtered));
            };
            (first, it.collect(), false)
        }
    };
    Ok(Pick {
        first,
        explored: was_explored,
        fallbacks,
        eligible: u32::try_from(ok.len()).unwrap_or(u32::MAX),
    })
}

/// Whether `c` is a new provider exploration may choose.
fn is_new(c: &Candidate, p: &Policy) -> bool {
    c.verified && c.served < p.new_below
}

/// How long a provider is kept out after `consecutive` failures in a row:
/// none for the first two, then `base_ms` doubling per further failure, at
/// most `max_ms`.
pub fn cooldown_ms(consecutive: u32, base_ms: u64, max_ms: u64) -> u64 {
    if consecutive < 3 {
        return 0;
    }
    let doublings = (consecutive - 3).min(32);
    base_ms.saturating_mul(1u64 << doublings).min(max_ms)
}

/// An exponential moving average in integers: `prev` moved `weight_bps`
/// per ten thousand toward `sample` (the first sample is taken as is).
pub fn ema(prev: u64, sample: u64, weight_bps: u64) -> u64 {
    if prev == 0 {
        return sample;
    }
    let w = u128::from(weight_bps.min(10_000));
    let v = (u128::from(prev) * (10_000 - w) + u128::from(sample) * w) / 10_000;
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(n: u8) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[0] = n;
        k
    }

    fn cand(n: u8, input: u64, output: u64) -> Candidate {
        Candidate {
            provider: key(n),
            model: 1,
            context_window: 8_192,
            max_concurrency: 4,
            in_flight: 0,
            price: Price {
                input_msat_per_mtok: input,
                output_msat_per_mtok: output,
            },
            healthy: true,
            verified: true,
            served: 1_000,
            ttft_ms: 200,
            tokens_per_sec_milli: 50_000,
            recent_failures: 0,
            cooldown_until_ms: 0,
        }
    }

    fn ask() -> Ask {
        Ask {
            model: 1,
            input_tokens: 100,
            max_output: 200,
            stream: false,
            now_ms: 1_000,
        }
    }

    fn no_explore() -> Policy {
        Policy {
            explore_bps: 0,
            ..Policy::default()
        }
    }

    #[test]
    fn the_cheaper_of_two_equal_providers_is_first_and_the_other_its_fallback() {
        let cs = [cand(1, 2_000, 4_000), cand(2, 1_000, 2_000)];
        let p = pick(&ask(), &Constraints::default(), &cs, &no_explore(), 7).unwrap();
        assert_eq!(p.first.index, 1);
        assert_eq!(p.first.terms.price, UNIT);
        assert_eq!(p.first.terms.total, UNIT);
        assert_eq!(p.fallbacks.iter().map(|c| c.index).collect::<Vec<_>>(), [0]);
        assert_eq!(p.fallbacks[0].terms.price, 2 * UNIT);
        assert!(!p.explored);
    }

    #[test]
    fn a_much_faster_provider_beats_a_slightly_cheaper_one() {
        let mut slow = cand(1, 1_000, 1_000);
        slow.tokens_per_sec_milli = 5_000;
        let fast = cand(2, 1_100, 1_100);
        let p = pick(
            &ask(),
            &Constraints::default(),
            &[slow.clone(), fast.clone()],
            &no_explore(),
            0,
        )
        .unwrap();
        assert_eq!(p.first.index, 1);
        // …unless the payer sorts by price.
        let k = Constraints {
            sort: Some(Sort::Price),
            ..Constraints::default()
        };
        assert_eq!(
            pick(&ask(), &k, &[slow, fast], &no_explore(), 0)
                .unwrap()
                .first
                .index,
            0
        );
    }

    #[test]
    fn every_filter_is_counted_when_nobody_is_left() {
        let mut other_model = cand(1, 1, 1);
        other_model.model = 2;
        let mut small = cand(2, 1, 1);
        small.context_window = 100;
        let mut full = cand(3, 1, 1);
        full.in_flight = 4;
        let mut silent = cand(4, 1, 1);
        silent.healthy = false;
        let mut cooling = cand(5, 1, 1);
        cooling.cooldown_until_ms = 2_000;
        let dear = cand(6, 10_000, 10_000);
        let ignored = cand(7, 1, 1);
        let k = Constraints {
            max_price: Some(Price {
                input_msat_per_mtok: 5_000,
                output_msat_per_mtok: 5_000,
            }),
            ignore: vec![key(7)],
            ..Constraints::default()
        };
        let cs = [other_model, small, full, silent, cooling, dear, ignored];
        let e = pick(&ask(), &k, &cs, &no_explore(), 0).unwrap_err();
        assert_eq!(
            e.0,
            Filtered {
                model: 1,
                context: 1,
                capacity: 1,
                unhealthy: 2,
                price: 1,
                excluded: 1
            }
        );
        assert!(
            e.to_string().contains("2 are unhealthy or cooling down"),
            "{e}"
        );
        assert!(
            pick(&ask(), &k, &[], &no_explore(), 0).is_err(),
            "an empty snapshot"
        );
    }

    #[test]
    fn a_new_provider_gets_its_share_of_traffic_through_exploration() {
        let mut new = cand(9, 3_000, 3_000);
        new.served = 0;
        new.ttft_ms = 0;
        new.tokens_per_sec_milli = 0;
        let cs = [cand(1, 1_000, 1_000), cand(2, 1_100, 1_100), new];
        let policy = Policy {
            explore_bps: 1_000,
            ..Policy::default()
        };
        let explored = (0..10_000u64)
            .filter(|s| {
                let p = pick(&ask(), &Constraints::default(), &cs, &policy, *s).unwrap();
                if p.explored {
                    assert_eq!(p.first.index, 2);
                    assert_eq!(
                        p.fallbacks.iter().map(|c| c.index).collect::<Vec<_>>(),
                        [0, 1]
                    );
                }
                p.explored
            })
            .count();
        assert!(
            (900..1_100).contains(&explored),
            "{explored} of 10,000 explored"
        );
        // Without exploration the newcomer, dearer and unmeasured, would never be first.
        assert!((0..1_000u64).all(|s| {
            pick(&ask(), &Constraints::default(), &cs, &no_explore(), s)
                .unwrap()
                .first
                .index
                != 2
        }));
        // A payer who sorts or pins is not explored on.
        let pinned = Constraints {
            only: vec![key(1), key(9)],
            ..Constraints::default()
        };
        assert!((0..1_000u64).all(|s| !pick(&ask(), &pinned, &cs, &policy, s).unwrap().explored));
    }

    #[test]
    fn no_fallbacks_when_the_payer_says_so() {
        let cs = [cand(1, 1, 1), cand(2, 2, 2), cand(3, 3, 3), cand(4, 4, 4)];
        let k = Constraints {
            allow_fallbacks: false,
            ..Constraints::default()
        };
        let p = pick(&ask(), &k, &cs, &no_explore(), 0).unwrap();
        assert!(p.fallbacks.is_empty());
        let p = pick(&ask(), &Constraints::default(), &cs, &no_explore(), 0).unwrap();
        assert_eq!(p.fallbacks.len(), MAX_FALLBACKS);
        assert_eq!(p.eligible, 4);
    }

    #[test]
    fn cooldown_backs_off_and_is_capped() {
        assert_eq!(cooldown_ms(2, 1_000, 60_000), 0);
        assert_eq!(cooldown_ms(3, 1_000, 60_000), 1_000);
        assert_eq!(cooldown_ms(5, 1_000, 60_000), 4_000);
        assert_eq!(cooldown_ms(40, 1_000, 60_000), 60_000);
        assert_eq!(cooldown_ms(u32::MAX, u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn ema_moves_toward_the_sample() {
        assert_eq!(ema(0, 500, 2_000), 500);
        assert_eq!(ema(1_000, 0, 2_000), 800);
        assert_eq!(ema(1_000, 2_000, 10_000), 2_000);
        assert_eq!(ema(u64::MAX, u64::MAX, 5_000), u64::MAX);
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            (0u8..40, 1u32..3, prop_oneof![Just(0u64), 100u64..20_000]),
            (1u32..5, 0u32..6, 0u64..5_000, 0u64..5_000),
            (
                any::<bool>(),
                any::<bool>(),
                0u64..50,
                0u64..2_000,
                0u64..100_000,
            ),
            (0u32..10, prop_oneof![Just(0i64), 0i64..3_000]),
        )
            .prop_map(
                |(
                    (n, model, ctx),
                    (maxc, inf, pi, po),
                    (h, v, served, ttft, tps),
                    (fail, cool),
                )| {
                    Candidate {
                        provider: key(n),
                        model,
                        context_window: ctx,
                        max_concurrency: maxc,
                        in_flight: inf,
                        price: Price {
                            input_msat_per_mtok: pi,
                            output_msat_per_mtok: po,
                        },
                        healthy: h,
                        verified: v,
                        served,
                        ttft_ms: ttft,
                        tokens_per_sec_milli: tps,
                        recent_failures: fail,
                        cooldown_until_ms: cool,
                    }
                },
            )
    }

    fn arb_constraints() -> impl Strategy<Value = Constraints> {
        (
            prop_oneof![
                Just(None),
                Just(Some(Sort::Price)),
                Just(Some(Sort::Latency)),
                Just(Some(Sort::Throughput))
            ],
            prop_oneof![
                Just(None),
                (0u64..5_000, 0u64..5_000).prop_map(|(i, o)| Some(Price {
                    input_msat_per_mtok: i,
                    output_msat_per_mtok: o
                }))
            ],
            proptest::collection::vec(0u8..40, 0..4),
            proptest::collection::vec(0u8..40, 0..4),
            any::<bool>(),
        )
            .prop_map(
                |(sort, max_price, only, ignore, allow_fallbacks)| Constraints {
                    sort,
                    max_price,
                    only: only.into_iter().map(key).collect(),
                    ignore: ignore.into_iter().map(key).collect(),
                    allow_fallbacks,
                },
            )
    }

    proptest! {
        #[test]
        fn a_pick_obeys_every_filter_is_deterministic_and_ranks_like_a_sort(
            cs in proptest::collection::vec(arb_candidate(), 0..30),
            k in arb_constraints(),
            input in 0u64..4_000,
            output in 1u64..4_000,
            stream in any::<bool>(),
            explore_bps in prop_oneof![Just(0u64), 0u64..10_000],
            seed in any::<u64>(),
        ) {
            let a = Ask { model: 1, input_tokens: input, max_output: output, stream, now_ms: 1_500 };
            let policy = Policy { explore_bps, ..Policy::default() };
            let got = pick(&a, &k, &cs, &policy, seed);
            prop_assert_eq!(&got, &pick(&a, &k, &cs, &policy, seed), "deterministic");
            let ok: Vec<usize> = (0..cs.len()).filter(|i| refusal(&cs[*i], &a, &k).is_none()).collect();
            match got {
                Err(NoProvider(f)) => {
                    prop_assert!(ok.is_empty());
                    let counted = f.model + f.context + f.capacity + f.unhealthy + f.price + f.excluded;
                    prop_assert_eq!(counted as usize, cs.len());
                }
                Ok(p) => {
                    prop_assert_eq!(p.eligible as usize, ok.len());
                    let chosen: Vec<usize> = std::iter::once(p.first.index).chain(p.fallbacks.iter().map(|c| c.index)).collect();
                    for i in &chosen {
                        prop_assert!(ok.contains(i), "only eligible candidates are chosen");
                    }
                    let mut seen = chosen.clone();
                    seen.sort_unstable();
                    seen.dedup();
                    prop_assert_eq!(seen.len(), chosen.len(), "no candidate twice");
                    let most = if k.allow_fallbacks { MAX_FALLBACKS } else { 0 };
                    prop_assert!(p.fallbacks.len() <= most, "at most the fallbacks allowed");
                    // Ranked like a full sort of the eligible by (total, key).
                    let mut ranked: Vec<(u64, [u8; 32], usize)> = Vec::new();
                    let bests_pick = pick(&a, &k, &cs, &Policy { explore_bps: 0, ..policy }, seed).unwrap();
                    for c in std::iter::once(&bests_pick.first).chain(&bests_pick.fallbacks) {
                        ranked.push((c.terms.total, cs[c.index].provider, c.index));
                    }
                    let mut sorted = ranked.clone();
                    sorted.sort();
                    prop_assert_eq!(&ranked, &sorted, "fallbacks best first");
                    if let Some(best) = ranked.first() {
                        for i in &ok {
                            let t = terms(&cs[*i], cost(&cs[*i], &a), expected_ms(&cs[*i], &a, &policy), &k, &policy, &Bests {
                                cost: ok.iter().map(|j| cs[*j].price.cost_micro(input, output).max(1)).min().unwrap_or(1),
                                ms: ok.iter().map(|j| expected_ms(&cs[*j], &a, &policy)).min().unwrap_or(1),
                                throughput: ok.iter().map(|j| cs[*j].tokens_per_sec_milli).max().unwrap_or(0),
                            });
                            prop_assert!((best.0, best.1) <= (t.total, cs[*i].provider), "nobody ranks above the first");
                        }
                    }
                    if p.explored {
                        prop_assert!(is_new(&cs[p.first.index], &policy));
                        prop_assert!(k.sort.is_none() && k.only.is_empty());
                    } else {
                        prop_assert_eq!(p.first, bests_pick.first);
                    }
                    if explore_bps == 0 {
                        prop_assert!(!p.explored);
                    }
                }
            }
        }
    }
}
