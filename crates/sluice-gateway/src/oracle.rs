//! The BTC/USD price port: a fixed price for dev and tests, or an HTTP source
//! with a cache, a timeout and a configured fallback.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use sluice_core::{BtcUsd, UsdMicros};

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource {
    /// Configured fixed price.
    Fixed,
    /// Fetched (or cached) from the HTTP source.
    Live,
    /// The source failed; the configured fallback was used.
    Fallback,
}

/// A BTC/USD price source.
#[async_trait]
pub trait PriceOracle: Send + Sync {
    /// The current price and where it came from. Never fails: a failing
    /// source answers its fallback.
    async fn btc_usd(&self) -> (BtcUsd, PriceSource);
}

/// A fixed price.
pub struct FixedOracle(pub BtcUsd);

#[async_trait]
impl PriceOracle for FixedOracle {
    async fn btc_usd(&self) -> (BtcUsd, PriceSource) {
        (self.0, PriceSource::Fixed)
    }
}

/// An HTTP JSON source with a cache.
pub struct HttpOracle {
    client: reqwest::Client,
    url: String,
    pointer: String,
    ttl: Duration,
    fallback: BtcUsd,
    cache: Mutex<Option<(Instant, BtcUsd)>>,
}

impl HttpOracle {
    /// A source at `url` whose JSON answer holds the price at `pointer`.
    pub fn new(
        url: String,
        pointer: String,
        ttl: Duration,
        timeout: Duration,
        fallback: BtcUsd,
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
            cache: Mutex::new(None),
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
        if let Ok(guard) = self.cache.lock()
            && let Some((at, p)) = *guard
            && at.elapsed() < self.ttl
        {
            return (p, PriceSource::Live);
        }
        match self.fetch().await {
            Ok(p) => {
                if let Ok(mut guard) = self.cache.lock() {
                    *guard = Some((Instant::now(), p));
                }
                (p, PriceSource::Live)
            }
            Err(e) => {
                tracing::warn!(error = %e, "BTC/USD source failed; using the fallback price");
                (self.fallback, PriceSource::Fallback)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
