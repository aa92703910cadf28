//! Cost-based prices: USD token rates, infrastructure amortisation and margin,
//! converted to msat at a BTC/USD price.
//!
//! All USD amounts are integers of micro-dollars. The whole charge is computed
//! as one exact fraction and rounded once (up), so no intermediate rounding can
//! drift a balance.

use crate::{MIN_CHARGE, Msat};

/// Errors from pricing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// A USD amount could not be parsed as a decimal with at most 6 places.
    #[error(
        "invalid USD amount {0:?}: expected a non-negative decimal with at most 6 decimal places"
    )]
    InvalidUsd(String),
    /// The BTC price is zero.
    #[error("the BTC/USD price must be positive")]
    ZeroBtcPrice,
    /// Expected monthly requests is zero while an infrastructure cost is set.
    #[error("expected monthly requests must be positive when an infrastructure cost is set")]
    ZeroExpectedRequests,
    /// The computed charge does not fit in 64 bits.
    #[error("price overflow")]
    Overflow,
}

/// A USD amount in integer micro-dollars (1 USD = 1,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UsdMicros(pub u64);

impl UsdMicros {
    /// Whole dollars.
    pub fn from_dollars(d: u64) -> Option<Self> {
        d.checked_mul(1_000_000).map(UsdMicros)
    }

    /// Parse a decimal such as `"3"`, `"3.0"` or `"0.000125"` exactly.
    pub fn parse(s: &str) -> Result<Self, PriceError> {
        let bad = || PriceError::InvalidUsd(s.to_owned());
        let t = s.trim();
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if frac.len() > 6
            || !int.chars().all(|c| c.is_ascii_digit())
            || !frac.chars().all(|c| c.is_ascii_digit())
        {
            return Err(bad());
        }
        let int: u64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut frac_micros: u64 = 0;
        for (i, c) in frac.chars().enumerate() {
            let digit = u64::from(c.to_digit(10).ok_or_else(bad)?);
            frac_micros += digit * 10u64.pow(5 - i as u32);
        }
        int.checked_mul(1_000_000)
            .and_then(|v| v.checked_add(frac_micros))
            .map(UsdMicros)
            .ok_or_else(bad)
    }

    /// Format as a decimal string without trailing zeros (`"3"`, `"0.25"`).
    pub fn to_decimal_string(self) -> String {
        let int = self.0 / 1_000_000;
        let frac = self.0 % 1_000_000;
        if frac == 0 {
            return int.to_string();
        }
        let f = format!("{frac:06}");
        format!("{int}.{}", f.trim_end_matches('0'))
    }
}

/// The BTC price in micro-dollars per bitcoin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BtcUsd(UsdMicros);

impl BtcUsd {
    /// A BTC price; zero is refused.
    pub fn new(price: UsdMicros) -> Result<Self, PriceError> {
        if price.0 == 0 {
            Err(PriceError::ZeroBtcPrice)
        } else {
            Ok(BtcUsd(price))
        }
    }

    /// The price in micro-dollars per BTC.
    pub fn micros(self) -> u64 {
        self.0.0
    }
}

/// A model's cost-based rate card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelRates {
    /// Upstream cost of input tokens, micro-USD per million tokens.
    pub input_per_mtok: UsdMicros,
    /// Upstream cost of output tokens, micro-USD per million tokens.
    pub output_per_mtok: UsdMicros,
    /// Monthly infrastructure cost amortised over requests.
    pub infra_monthly: UsdMicros,
    /// The divisor for the infrastructure cost.
    pub expected_monthly_requests: u64,
    /// Operator margin on top of cost, in basis points (2500 = 25%).
    pub margin_bps: u32,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
}

/// 1 BTC = 10^11 msat.
const MSAT_PER_BTC: u128 = 100_000_000_000;

impl ModelRates {
    /// The exact cost of `usage` in msat at `btc`, as a fraction `(num, den)`.
    fn cost_fraction(&self, usage: TokenUsage, btc: BtcUsd) -> Result<(u128, u128), PriceError> {
        let of = |o: Option<u128>| o.ok_or(PriceError::Overflow);
        // Token cost in pico-dollars: tokens * micro-USD per Mtok.
        let tokens_pico = of((usage.input as u128)
            .checked_mul(self.input_per_mtok.0 as u128)
            .and_then(|a| {
                (usage.output as u128)
                    .checked_mul(self.output_per_mtok.0 as u128)
                    .and_then(|b| a.checked_add(b))
            }))?;
        // Infrastructure per request, kept exact over a common denominator.
        let (usd_pico_num, usd_den) = if self.infra_monthly.0 == 0 {
            (tokens_pico, 1u128)
        } else {
            if self.expected_monthly_requests == 0 {
                return Err(PriceError::ZeroExpectedRequests);
            }
            let req = self.expected_monthly_requests as u128;
            let infra_pico = of((self.infra_monthly.0 as u128).checked_mul(1_000_000))?;
            (
                of(tokens_pico
                    .checked_mul(req)
                    .and_then(|v| v.checked_add(infra_pico)))?,
                req,
            )
        };
        // msat = pico-USD * 1e-12 * (1e11 msat/BTC) / (btc micro-USD * 1e-6) * (1 + margin)
        //      = pico * 1e11 * (10000 + bps) / (btc_micros * 1e6 * 10000 * den)
        let num = of(usd_pico_num
            .checked_mul(MSAT_PER_BTC)
            .and_then(|v| v.checked_mul(10_000 + self.margin_bps as u128)))?;
        let den = of((btc.micros() as u128)
            .checked_mul(1_000_000)
            .and_then(|v| v.checked_mul(10_000))
            .and_then(|v| v.checked_mul(usd_den)))?;
        Ok((num, den))
    }

    /// The display price of one million tokens (input, output) in msat, without
    /// infrastructure amortisation and without the 1-sat minimum, rounded up.
    pub fn per_mtok_msat(&self, btc: BtcUsd) -> Result<(Msat, Msat), PriceError> {
        let rates_only = ModelRates {
            infra_monthly: UsdMicros(0),
            ..*self
        };
        let one = |usage| -> Result<Msat, PriceError> {
            let (n, d) = rates_only.cost_fraction(usage, btc)?;
            u64::try_from(n.div_ceil(d))
                .map(Msat::from_msat)
                .map_err(|_| PriceError::Overflow)
        };
        Ok((
            one(TokenUsage {
                input: 1_000_000,
                output: 0,
            })?,
            one(TokenUsage {
                input: 0,
                output: 1_000_000,
            })?,
        ))
    }
}

/// A charge taken apart, so a payer sees what they pay for: the input and
/// output tokens at the upstream's rates, the request's share of the monthly
/// infrastructure, the operator's margin on all three, the rounding up to the
/// msat and what the 1-sat minimum adds. The parts add up to [`charge_for`]
/// exactly: each is its exact value rounded down, and `rounding` is the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Itemized {
    /// Input tokens at the input rate.
    pub input: Msat,
    /// Output tokens at the output rate.
    pub output: Msat,
    /// The request's share of the infrastructure cost.
    pub per_request: Msat,
    /// The margin on the three above.
    pub margin: Msat,
    /// Rounding the exact total up to the msat (under 4 msat).
    pub rounding: Msat,
    /// What the 1-sat minimum charge adds (usually 0).
    pub minimum: Msat,
    /// The charge: the sum of the parts.
    pub total: Msat,
}

/// [`charge_for`], itemized (see [`Itemized`]).
pub fn itemize(rates: &ModelRates, usage: TokenUsage, btc: BtcUsd) -> Result<Itemized, PriceError> {
    let floor = |r: &ModelRates, u: TokenUsage| -> Result<u64, PriceError> {
        let (n, d) = r.cost_fraction(u, btc)?;
        u64::try_from(n / d).map_err(|_| PriceError::Overflow)
    };
    let no_margin = ModelRates {
        margin_bps: 0,
        ..*rates
    };
    let tokens_only = ModelRates {
        infra_monthly: UsdMicros(0),
        ..no_margin
    };
    let infra_only = ModelRates {
        input_per_mtok: UsdMicros(0),
        output_per_mtok: UsdMicros(0),
        ..no_margin
    };
    let none = TokenUsage::default();
    let input = floor(&tokens_only, TokenUsage { output: 0, ..usage })?;
    let output = floor(&tokens_only, TokenUsage { input: 0, ..usage })?;
    let per_request = floor(&infra_only, none)?;
    // The margin is what the whole costs with it over what it costs without.
    let (with_n, with_d) = rates.cost_fraction(usage, btc)?;
    let without = floor(&no_margin, usage)?;
    let margin = u64::try_from(with_n / with_d)
        .map_err(|_| PriceError::Overflow)?
        .saturating_sub(without);
    let exact_up = u64::try_from(with_n.div_ceil(with_d)).map_err(|_| PriceError::Overflow)?;
    let parts = input
        .checked_add(output)
        .and_then(|v| v.checked_add(per_request))
        .and_then(|v| v.checked_add(margin))
        .ok_or(PriceError::Overflow)?;
    let total = charge_for(rates, usage, btc)?;
    let minimum = total.msat().saturating_sub(exact_up);
    Ok(Itemized {
        input: Msat::from_msat(input),
        output: Msat::from_msat(output),
        per_request: Msat::from_msat(per_request),
        margin: Msat::from_msat(margin),
        rounding: Msat::from_msat(exact_up.saturating_sub(parts)),
        minimum: Msat::from_msat(minimum),
        total,
    })
}

/// What a paid request with `usage` costs at `rates` and `btc`: rounded up to
/// the msat and never below [`MIN_CHARGE`].
pub fn charge_for(rates: &ModelRates, usage: TokenUsage, btc: BtcUsd) -> Result<Msat, PriceError> {
    let (num, den) = rates.cost_fraction(usage, btc)?;
    let msat = u64::try_from(num.div_ceil(den)).map_err(|_| PriceError::Overflow)?;
    Ok(Msat::from_msat(msat).max(MIN_CHARGE))
}

/// The largest charge settlement records: the most the ledger stores.
pub const MAX_RECORDED_CHARGE: Msat = Msat::from_msat(i64::MAX as u64);

/// [`charge_for`] for settling a hold. A cost too large to represent (an
/// upstream reporting absurd usage) is [`MAX_RECORDED_CHARGE`]: settlement
/// then charges the whole hold and records the rest as the operator's loss,
/// instead of failing and leaving the hold open with nothing charged.
pub fn charge_for_settlement(rates: &ModelRates, usage: TokenUsage, btc: BtcUsd) -> Msat {
    charge_for(rates, usage, btc).map_or(MAX_RECORDED_CHARGE, |m| m.min(MAX_RECORDED_CHARGE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `completion_tokens: 2^64 - 1` failed settlement with "price overflow":
    /// the hold stayed open to its deadline and then nothing was charged.
    #[test]
    fn absurd_usage_settles_at_the_most_the_ledger_records() {
        let rates = ModelRates {
            input_per_mtok: UsdMicros::parse("2").unwrap(),
            output_per_mtok: UsdMicros::parse("10").unwrap(),
            infra_monthly: UsdMicros(0),
            expected_monthly_requests: 1,
            margin_bps: 0,
        };
        let btc = BtcUsd::new(UsdMicros::from_dollars(100_000).unwrap()).unwrap();
        for output in [u64::MAX, 1 << 63, 1 << 62] {
            let usage = TokenUsage { input: 1, output };
            assert_eq!(
                charge_for_settlement(&rates, usage, btc),
                MAX_RECORDED_CHARGE
            );
        }
        let small = TokenUsage {
            input: 10,
            output: 10,
        };
        assert_eq!(
            charge_for_settlement(&rates, small, btc),
            charge_for(&rates, small, btc).unwrap()
        );
    }

    /// A 13 + 11-token answer cost 3,450 msat while `/v1/models` showed only
    /// the token rates: 3,300 of it was the per-request share, shown nowhere.
    #[test]
    fn an_itemized_charge_shows_the_per_request_share() {
        let rates = ModelRates {
            input_per_mtok: UsdMicros::parse("2").unwrap(),
            output_per_mtok: UsdMicros::parse("10").unwrap(),
            infra_monthly: UsdMicros::parse("30").unwrap(),
            expected_monthly_requests: 10_000,
            margin_bps: 1_000,
        };
        let usage = TokenUsage {
            input: 13,
            output: 11,
        };
        let i = itemize(&rates, usage, btc(100_000)).unwrap();
        assert_eq!(i.total, charge_for(&rates, usage, btc(100_000)).unwrap());
        assert_eq!(i.per_request, Msat::from_msat(3_000));
        assert_eq!(i.input, Msat::from_msat(26));
        assert_eq!(i.output, Msat::from_msat(110));
        assert_eq!(i.margin.msat(), 313);
        assert_eq!(
            i.input.msat()
                + i.output.msat()
                + i.per_request.msat()
                + i.margin.msat()
                + i.rounding.msat()
                + i.minimum.msat(),
            i.total.msat()
        );
    }

    fn btc(d: u64) -> BtcUsd {
        BtcUsd::new(UsdMicros::from_dollars(d).unwrap()).unwrap()
    }

    #[test]
    fn parses_decimal_usd_exactly() {
        assert_eq!(UsdMicros::parse("3").unwrap(), UsdMicros(3_000_000));
        assert_eq!(UsdMicros::parse("3.0").unwrap(), UsdMicros(3_000_000));
        assert_eq!(UsdMicros::parse("0.000125").unwrap(), UsdMicros(125));
        assert_eq!(UsdMicros::parse(".5").unwrap(), UsdMicros(500_000));
        assert!(UsdMicros::parse("0.0000001").is_err());
        assert!(UsdMicros::parse("-1").is_err());
        assert!(UsdMicros::parse("").is_err());
        assert!(UsdMicros::parse("1e3").is_err());
        assert_eq!(UsdMicros(3_250_000).to_decimal_string(), "3.25");
    }

    #[test]
    fn seed_example_prices_as_expected() {
        // 3 USD/Mtok in, 15 USD/Mtok out, no infra, no margin, BTC at 100k USD:
        // 1000 in + 1000 out = 0.018 USD = 18 sats.
        let rates = ModelRates {
            input_per_mtok: UsdMicros::parse("3").unwrap(),
            output_per_mtok: UsdMicros::parse("15").unwrap(),
            ..Default::default()
        };
        let c = charge_for(
            &rates,
            TokenUsage {
                input: 1000,
                output: 1000,
            },
            btc(100_000),
        )
        .unwrap();
        assert_eq!(c, Msat::from_msat(18_000));
        let (i, o) = rates.per_mtok_msat(btc(100_000)).unwrap();
        assert_eq!(i, Msat::from_msat(3_000_000));
        assert_eq!(o, Msat::from_msat(15_000_000));
    }

    #[test]
    fn infra_and_margin_are_included_and_rounded_once() {
        // 100 USD / 1000 requests = 0.1 USD infra; +25% margin; BTC 100k.
        let rates = ModelRates {
            input_per_mtok: UsdMicros::parse("3").unwrap(),
            output_per_mtok: UsdMicros::parse("15").unwrap(),
            infra_monthly: UsdMicros::parse("100").unwrap(),
            expected_monthly_requests: 1000,
            margin_bps: 2500,
        };
        // (0.018 + 0.1) * 1.25 = 0.1475 USD = 147,500 msat at 100k.
        let c = charge_for(
            &rates,
            TokenUsage {
                input: 1000,
                output: 1000,
            },
            btc(100_000),
        )
        .unwrap();
        assert_eq!(c, Msat::from_msat(147_500));
        // Thirds do not divide evenly: rounded up to the next msat.
        let rates = ModelRates {
            expected_monthly_requests: 3,
            infra_monthly: UsdMicros(1),
            ..Default::default()
        };
        // 1/3 micro-USD = 1/3 * 1e-6 USD at 1 USD/BTC = 1/3 * 1e-6 * 1e11 msat = 33,333.33 -> 33,334
        let c = charge_for(&rates, TokenUsage::default(), btc(1)).unwrap();
        assert_eq!(c, Msat::from_msat(33_334));
    }

    #[test]
    fn a_paid_request_costs_at_least_one_sat() {
        let rates = ModelRates {
            input_per_mtok: UsdMicros(1),
            ..Default::default()
        };
        assert_eq!(
            charge_for(
                &rates,
                TokenUsage {
                    input: 1,
                    output: 0
                },
                btc(100_000)
            )
            .unwrap(),
            MIN_CHARGE
        );
        assert_eq!(
            charge_for(&ModelRates::default(), TokenUsage::default(), btc(1)).unwrap(),
            MIN_CHARGE
        );
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        assert_eq!(BtcUsd::new(UsdMicros(0)), Err(PriceError::ZeroBtcPrice));
        let rates = ModelRates {
            infra_monthly: UsdMicros(1),
            expected_monthly_requests: 0,
            ..Default::default()
        };
        assert_eq!(
            charge_for(&rates, TokenUsage::default(), btc(1)),
            Err(PriceError::ZeroExpectedRequests)
        );
        let rates = ModelRates {
            input_per_mtok: UsdMicros(u64::MAX),
            ..Default::default()
        };
        assert_eq!(
            charge_for(
                &rates,
                TokenUsage {
                    input: u64::MAX,
                    output: 0
                },
                btc(1)
            ),
            Err(PriceError::Overflow)
        );
    }

    proptest! {
        #[test]
        fn itemized_parts_add_up_to_the_charge(
            input in 0u64..10_000_000,
            output in 0u64..10_000_000,
            in_rate in 0u64..1_000_000_000,
            out_rate in 0u64..1_000_000_000,
            infra in 0u64..10_000_000_000,
            reqs in 1u64..10_000_000,
            margin in 0u32..50_000,
            price in 1u64..1_000_000_000_000,
        ) {
            let rates = ModelRates {
                input_per_mtok: UsdMicros(in_rate),
                output_per_mtok: UsdMicros(out_rate),
                infra_monthly: UsdMicros(infra),
                expected_monthly_requests: reqs,
                margin_bps: margin,
            };
            let usage = TokenUsage { input, output };
            let b = BtcUsd::new(UsdMicros(price)).unwrap();
            if let (Ok(i), Ok(c)) = (itemize(&rates, usage, b), charge_for(&rates, usage, b)) {
                prop_assert_eq!(i.total, c);
                let sum = i.input.msat() + i.output.msat() + i.per_request.msat() + i.margin.msat() + i.rounding.msat() + i.minimum.msat();
                prop_assert_eq!(sum, c.msat());
                prop_assert!(i.rounding.msat() < 5);
            }
        }

        #[test]
        fn charge_is_monotonic_in_tokens(
            rin in 0u64..100_000_000, rout in 0u64..100_000_000,
            i in 0u64..1_000_000, o in 0u64..1_000_000, extra in 0u64..10_000,
            price in 1_000u64..1_000_000,
        ) {
            let rates = ModelRates { input_per_mtok: UsdMicros(rin), output_per_mtok: UsdMicros(rout), ..Default::default() };
            let b = btc(price);
            let a = charge_for(&rates, TokenUsage { input: i, output: o }, b).unwrap();
            let more = charge_for(&rates, TokenUsage { input: i, output: o + extra }, b).unwrap();
            prop_assert!(more >= a);
            prop_assert!(a >= MIN_CHARGE);
        }

        #[test]
        fn decimal_round_trip(v in 0u64..10_000_000_000_000) {
            prop_assert_eq!(UsdMicros::parse(&UsdMicros(v).to_decimal_string()).unwrap(), UsdMicros(v));
        }
    }
}
