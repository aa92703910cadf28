//! The BTC/USD price port: a fixed price for dev and tests, or an HTTP source
//! with a cache, a timeout, a plausibility band and a configured fallback.
//!
//! A fetched quote more than `max_move_pct` away from the last good one is
//! refused (a glitched quote ten times too high would make every request
//! cost one sat); the first quote, and one after the last good price went
//! stale, is checked against a band ten times as wide (around the fallback
//! price, or the stale one), so a real move during an outage is still taken.
//! When the source fails or its quote is refused, the last good price is
//! used, however old, and [`PriceOracle::status`] says when it is older than
//! `max_age` (`/healthz` reports it); with none, the configured fallback.

use std::{sync::Mutex, time::Duration};

use async_trait::async_trait;
use sluice_core::{BtcUsd, UsdMicros};

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource {
    /// Configured fixed price.
    Fixed,
    /// Fetched (or cached) from the HTTP source within its cache time.
    Live,
    /// The last good price, reused because the source failed or its quote was refused.
    LastGood,
    /// The source never gave a good price; the configured fallback was used.
    Fallback,
}

impl PriceSource {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Fixed => "fixed",
            PriceSource::Live => "live",
            PriceSource::LastGood => "last_good",
            PriceSource::Fallback => "fallback",
        }
    }
}

/// How fresh the price is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceStatus {
    /// Where the price now in use came from.
    pub source: PriceSource,
    /// How old the last good price is (none for a fixed price or when there is none).
    pub age: Option<Duration>,
    /// Older than allowed, or never fetched.
    pub stale: bool,
}

/// A BTC/USD price source.
#[async_trait]
pub trait PriceOracle: Send + Sync {
    /// The current price and where it came from. Never fails: a failing
    /// source answers its last good price or its fallback.
    async fn btc_usd(&self) -> (BtcUsd, PriceSource);

    /// How fresh the price is, without fetching.
    fn status(&self) -> PriceStatus {
        PriceStatus {
            source: PriceSource::Fixed,
            age: None,
            stale: false,
        }
    }
}

/// A fixed price.
pub struct FixedOracle(pub BtcUsd);

#[async_trait]
impl PriceOracle for FixedOracle {
    async fn btc_usd(&self) -> (BtcUsd, PriceSource) {
        (self.0, PriceSource::Fixed)
    }
}

/// An HTTP JSON source with a cache and a plausibility band.
pub struct HttpOracle {
    client: reqwest::Client,
    url: String,
    pointer: String,
    ttl: Duration,
    fallback: BtcUsd,
    max_move_pct: u32,
    max_age: Duration,
    /// The last good price and when it was fetched.
    last_good: Mutex<Option<(sluice_env::Stopwatch, BtcUsd)>>,
}

/// Whether `quote` is within a factor of `1 + pct/100` of `reference`, up or
/// down (so 20 % allows 83,334..=120,000 around 100,000), in integers.
pub fn within_band(quote: BtcUsd, reference: BtcUsd, pct: u32) -> bool {
    let (q, r) = (u128::from(quote.micros()), u128::from(reference.micros()));
    let f = 100 + u128::from(pct);
    q * 100 <= r * f && r * 100 <= q * f
}

impl HttpOracle {
    /// A source at `url` whose JSON answer holds the price at `pointer`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: String,
        pointer: String,
        ttl: Duration,
        timeout: Duration,
        fallback: BtcUsd,
        max_move_pct: u32,
        max_age: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        HttpOracle {
            client,
            url,
            pointer,
            ttl,
            fallback,
            max_move_pct,
            max_age,
            last_good: Mutex::new(None),
        }
    }

    /// Whether a fetched quote is believable next to what is known.
    fn plausible(&self, quote: BtcUsd) -> bool {
        let last = self.last_good.lock().ok().and_then(|g| *g);
        match last {
            Some((at, p)) if at.elapsed() <= self.max_age => {
                within_band(quote, p, self.max_move_pct)
            }
            Some((_, p)) => within_band(quote, p, self.max_move_pct.saturating_mul(10)),
            None => within_band(quote, self.fallback, self.max_move_pct.saturating_mul(10)),
        }
    }

    async fn fetch(&self) -> Result<BtcUsd, String> {
        let v: serde_json::Value = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let n = v
            .pointer(&self.pointer)
            .ok_or_else(|| format!("no price at {}", self.pointer))?;
        let price = match n {
            serde_json::Value::Number(n) => usd_from_number(&n.to_string()),
            serde_json::Value::String(s) => usd_from_number(s),
            _ => None,
        }
        .ok_or_else(|| "price is not a positive number".to_owned())?;
        BtcUsd::new(price).map_err(|e| e.to_string())
    }
}

/// Parse a JSON number's text into micro-dollars, truncating past 6 decimals.
pub fn usd_from_number(s: &str) -> Option<UsdMicros> {
    let s = s.trim();
    if s.contains(['e', 'E']) {
        let f: f64 = s.parse().ok()?;
        return usd_from_f64(f);
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac: String = frac.chars().take(6).collect();
    if frac.is_empty() {
        UsdMicros::parse(int).ok()
    } else {
        UsdMicros::parse(&format!("{int}.{frac}")).ok()
    }
}

/// Convert a configured float (a config value, not a balance) to micro-dollars,
/// rounding to the nearest micro-dollar. Negative and non-finite values are refused.
pub fn usd_from_f64(f: f64) -> Option<UsdMicros> {
    if !f.is_finite() || f < 0.0 {
        return None;
    }
    UsdMicros::parse(&format!("{f:.6}")).ok()
}

#[async_trait]
impl PriceOracle for HttpOracle {
    async fn btc_usd(&self) -> (BtcUsd, PriceSource) {
        let last = self.last_good.lock().ok().and_then(|g| *g);
        if let Some((at, p)) = last
            && at.elapsed() < self.ttl
        {
            return (p, PriceSource::Live);
        }
        match self.fetch().await {
            Ok(p) if self.plausible(p) => {
                if let Ok(mut guard) = self.last_good.lock() {
                    *guard = Some((sluice_env::Stopwatch::start(), p));
                }
                return (p, PriceSource::Live);
            }
            Ok(p) => {
                tracing::warn!(
                    quote_usd = %UsdMicros(p.micros()).to_decimal_string(),
                    max_move_pct = self.max_move_pct,
                    "refused an implausible BTC/USD quote; keeping the last good price"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "BTC/USD source failed; keeping the last good price")
            }
        }
        match last {
            Some((_, p)) => (p, PriceSource::LastGood),
            None => (self.fallback, PriceSource::Fallback),
        }
    }

    fn status(&self) -> PriceStatus {
        let last = self.last_good.lock().ok().and_then(|g| *g);
        match last {
            Some((at, _)) => PriceStatus {
                source: if at.elapsed() < self.ttl {
                    PriceSource::Live
                } else {
                    PriceSource::LastGood
                },
                age: Some(at.elapsed()),
                stale: at.elapsed() > self.max_age,
            },
            None => PriceStatus {
                source: PriceSource::Fallback,
                age: None,
                stale: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btc(d: u64) -> BtcUsd {
        BtcUsd::new(UsdMicros::from_dollars(d).unwrap()).unwrap()
    }

    #[test]
    fn the_band_is_symmetric_in_percent_of_the_reference() {
        assert!(within_band(btc(120_000), btc(100_000), 20));
        assert!(within_band(btc(83_334), btc(100_000), 20));
        assert!(!within_band(btc(83_333), btc(100_000), 20));
        assert!(!within_band(btc(120_001), btc(100_000), 20));
        assert!(!within_band(btc(1_000_000), btc(100_000), 20));
        assert!(!within_band(btc(1), btc(100_000), 200));
        assert!(within_band(btc(34_000), btc(100_000), 200));
    }

    #[test]
    fn numbers_convert_exactly() {
        assert_eq!(usd_from_number("97123.45"), Some(UsdMicros(97_123_450_000)));
        assert_eq!(usd_from_number("1.1234567"), Some(UsdMicros(1_123_456)));
        assert_eq!(usd_from_number("1e5"), Some(UsdMicros(100_000_000_000)));
        assert_eq!(usd_from_number("-3"), None);
        assert_eq!(usd_from_f64(3.0), Some(UsdMicros(3_000_000)));
        assert_eq!(usd_from_f64(0.15), Some(UsdMicros(150_000)));
        assert_eq!(usd_from_f64(f64::NAN), None);
    }
}
