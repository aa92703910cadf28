//! Per-client limits: a fixed-window counter per IP (IPv6 per /64), and who
//! a request's client is.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::Duration,
};

use axum::extract::ConnectInfo;
use sluice_env::Stopwatch;

/// Allows `limit` requests per IP per window.
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<Option<IpAddr>, (Stopwatch, u32)>>,
}

impl RateLimiter {
    /// `limit` requests per `window` per IP (0 = unlimited).
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Count one request from `ip` (IPv6 counted per /64); the seconds to
    /// wait if over the limit.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let ip = ip.map(client_key);
        let Ok(mut seen) = self.seen.lock() else {
            return Ok(());
        };
        if seen.len() > 100_000 {
            seen.retain(|_, (start, _)| !start.is_older_than(self.window));
        }
        let e = seen.entry(ip).or_insert((Stopwatch::start(), 0));
        if e.0.is_older_than(self.window) {
            *e = (Stopwatch::start(), 0);
        }
        if e.1 >= self.limit {
            return Err(self.window.saturating_sub(e.0.elapsed()).as_secs().max(1));
        }
        e.1 += 1;
        Ok(())
    }
}

/// Whom a limit counts an address as: an IPv4 address itself (also when
/// mapped into IPv6), an IPv6 address by its /64 — the prefix one subscriber
/// gets, within which addresses are free to rotate.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client IP of a request, when the server recorded it.
pub fn client_ip<B>(req: &axum::http::Request<B>) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        let a = Some(IpAddr::from([127, 0, 0, 1]));
        let b = Some(IpAddr::from([127, 0, 0, 2]));
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_err());
        assert!(l.check(b).is_ok());
    }

    /// The demo limit was per full IPv6 address: rotating addresses within
    /// one /64 (every subscriber has billions) bypassed it.
    #[test]
    fn ipv6_addresses_are_limited_per_64() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1234:5678:9abc".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.check(Some(a)).is_ok());
        assert!(l.check(Some(b)).is_ok());
        assert!(l.check(Some(a)).is_err(), "same /64");
        assert!(l.check(Some(other)).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
