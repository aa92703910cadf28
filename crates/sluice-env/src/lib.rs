//! What sluice reads from its environment, behind ports.
//!
//! This crate is the one home of the wall clock (`SystemTime::now`), the
//! monotonic clock (`Instant::now`) and randomness (`rand`): the workspace's
//! `clippy.toml` bans them everywhere else. Everything that decides by time
//! or names a new thing takes a [`Clock`] or an [`Ids`], so tests and the
//! simulator run it on a [`ManualClock`] and [`SeededIds`].
//!
//! - [`Clock::now_ms`] is the wall clock, in unix milliseconds: what every
//!   stored time, expiry and deadline is measured in.
//! - [`TimerClock`] is the wall clock moved by tokio's timer, for running
//!   on virtual time with `tokio::time::pause()`: books and timeouts agree.
//! - [`Stopwatch`] measures elapsed real time (latency, tokens/s, cache ages,
//!   rate-limit windows); it is not virtual, so nothing the books depend on
//!   is decided by it.
//! - [`Ids`] names things (sessions, requests, jobs, ledger transactions).
//! - [`secret`] makes secrets (keys, preimages, macaroon nonces): always from
//!   the operating system's generator, never from a seed, in tests too.

use std::{
    fmt,
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rand::{RngCore, SeedableRng, rngs::OsRng, rngs::StdRng};

/// The wall clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Unix milliseconds now. A clock before 1970 reads as 0.
    fn now_ms(&self) -> i64;

    /// Unix seconds now (NIP-98 and Nostr events count in seconds).
    fn now_secs(&self) -> u64 {
        u64::try_from(self.now_ms() / 1000).unwrap_or(0)
    }
}

/// The host's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

/// Unix milliseconds by the host's clock.
#[allow(clippy::disallowed_methods, reason = "the one home of the wall clock")]
fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A clock that moves only when told: tests and the simulator.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn at(now_ms: i64) -> Self {
        ManualClock {
            now_ms: AtomicI64::new(now_ms),
        }
    }

    /// A clock reading the host's time now, from then on moved by hand
    /// (so times it writes look real to a wallet or a signer).
    pub fn starting_now() -> Self {
        Self::at(system_now_ms())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        // `fetch_update` cannot fail with a closure that always returns `Some`.
        let _ = self
            .now_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// Sets the clock to `now_ms` (backwards too: a host's clock can jump).
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// The wall clock driven by tokio's timer: it starts at the host's time and
/// moves as tokio's clock moves. Under `tokio::time::pause()` (the
/// simulator, a test with `start_paused`), the books' time and every
/// timeout, retry and poll interval move together on one virtual clock,
/// as fast as the work allows.
#[derive(Debug)]
pub struct TimerClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl TimerClock {
    /// A clock reading the host's time now, moving with tokio's clock.
    pub fn starting_now() -> Self {
        Self::at(system_now_ms())
    }

    /// A clock reading `now_ms` now, moving with tokio's clock.
    pub fn at(now_ms: i64) -> Self {
        TimerClock {
            start_ms: now_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TimerClock {
    fn now_ms(&self) -> i64 {
        let since = tokio::time::Instant::now().duration_since(self.start);
        self.start_ms
            .saturating_add(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Measures how long something took, by the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    /// Starts measuring now.
    #[allow(
        clippy::disallowed_methods,
        reason = "the one home of the monotonic clock"
    )]
    pub fn start() -> Self {
        Stopwatch(Instant::now())
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }

    /// Whether `ttl` has passed since the start.
    pub fn is_older_than(&self, ttl: Duration) -> bool {
        self.elapsed() >= ttl
    }
}

/// Names new things.
pub trait Ids: Send + Sync + fmt::Debug {
    /// Fills `buf` with fresh bytes.
    fn fill(&self, buf: &mut [u8]);

    /// A fresh id: `prefix_` and 24 hex digits (96 bits).
    fn new_id(&self, prefix: &str) -> String {
        let mut b = [0u8; 12];
        self.fill(&mut b);
        format!("{prefix}_{}", hex(&b))
    }

    /// Whether these ids can be foreseen (a seed): job and L402 token ids are
    /// capabilities, so a gateway that takes real money refuses such ids.
    fn is_predictable(&self) -> bool {
        false
    }

    /// 32 fresh hex digits (128 bits), without a prefix.
    fn new_hex(&self) -> String {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        hex(&b)
    }
}

/// Ids from the operating system's generator: unpredictable (session and
/// job ids are capabilities).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsIds;

impl Ids for OsIds {
    fn fill(&self, buf: &mut [u8]) {
        OsRng.fill_bytes(buf);
    }
}

/// Ids from a seed: the same seed gives the same ids (the simulator, tests
/// that compare runs). Predictable, so never for a gateway that takes money.
pub struct SeededIds(Mutex<StdRng>);

impl SeededIds {
    /// Ids from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededIds(Mutex::new(StdRng::seed_from_u64(seed)))
    }
}

impl fmt::Debug for SeededIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeededIds")
    }
}

impl Ids for SeededIds {
    fn is_predictable(&self) -> bool {
        true
    }

    fn fill(&self, buf: &mut [u8]) {
        // A panic while holding the lock leaves the generator usable.
        let mut rng = self.0.lock().unwrap_or_else(|p| p.into_inner());
        rng.fill_bytes(buf);
    }
}

/// `N` secret bytes from the operating system's generator.
pub fn secret<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// A seed nobody chose (sampling temperature > 0 without a seed).
pub fn fresh_seed() -> u64 {
    OsRng.next_u64()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_timer_clock_moves_with_tokios_virtual_time() {
        let c = TimerClock::at(5_000);
        assert_eq!(c.now_ms(), 5_000);
        // An hour of paused time passes at once, for the timer and the books alike.
        let real = Stopwatch::start();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now_ms(), 5_000 + 3_600_000);
        assert!(real.elapsed() < Duration::from_secs(5));
        let _ =
            tokio::time::timeout(Duration::from_millis(250), std::future::pending::<()>()).await;
        assert_eq!(c.now_ms(), 5_000 + 3_600_250);
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now_ms(), 2_500);
        assert_eq!(c.now_secs(), 2);
        c.set(10);
        assert_eq!(c.now_ms(), 10, "a clock can be set back");
        c.advance(Duration::MAX);
        assert_eq!(c.now_ms(), i64::MAX, "advancing saturates");
    }

    #[test]
    fn the_system_clock_reads_the_present() {
        // 2024-01-01 in unix ms: any real clock reads later.
        assert!(SystemClock.now_ms() > 1_704_067_200_000);
    }

    #[test]
    fn seeded_ids_repeat_and_os_ids_do_not() {
        let (a, b) = (SeededIds::new(7), SeededIds::new(7));
        let first = a.new_id("sess");
        assert_eq!(first, b.new_id("sess"));
        assert!(first.starts_with("sess_") && first.len() == 5 + 24);
        assert_ne!(
            a.new_id("sess"),
            first,
            "a generator does not repeat itself"
        );
        assert_ne!(OsIds.new_hex(), OsIds.new_hex());
        assert!(a.is_predictable() && !OsIds.is_predictable());
        assert_ne!(secret::<32>(), secret::<32>());
    }
}
