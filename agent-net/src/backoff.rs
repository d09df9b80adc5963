//! Exponential back-off with full jitter: each delay is uniform in
//! `[0, min(cap, base · 2^attempt)]`, so many agents recovering from the same
//! outage do not retry in lock-step. A server's `Retry-After` is honoured as
//! a lower bound.

use std::time::Duration;

/// A small, seeded-per-process random source for spreading delays
/// (xorshift64*; not for anything secret).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        Self(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `base` spread uniformly by ± `fraction` of itself, at least 1 ms
    /// (the realtime reconnect rule, PROTOCOL.md §8.8).
    pub fn spread(&mut self, base: Duration, fraction: f64) -> Duration {
        let f = fraction.clamp(0.0, 1.0);
        let factor = 1.0 + f * (2.0 * self.unit() - 1.0);
        base.mul_f64(factor).max(Duration::from_millis(1))
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

/// Delays for consecutive failures of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: Jitter,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
            rng: Jitter::new(),
        }
    }

    /// The delay before the next attempt, at least `retry_after` when given.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(self.rng.unit());
        jittered.max(retry_after.unwrap_or(Duration::ZERO))
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Call after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
        let mut all = Vec::new();
        for attempt in 0..50u32 {
            let d = b.next_delay(None);
            let ceiling = Duration::from_secs(1u64 << attempt.min(20)).min(Duration::from_secs(15));
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            all.push(d);
        }
        // Full jitter: not all the same, and late delays reach into the cap range.
        assert!(all.windows(2).any(|w| w[0] != w[1]));
        assert!(all[10..].iter().any(|d| *d > Duration::from_secs(7)));
        b.reset();
        assert!(b.next_delay(None) <= Duration::from_secs(1));
    }

    #[test]
    fn spread_stays_within_the_fraction() {
        let mut j = Jitter::new();
        let base = Duration::from_secs(10);
        let all: Vec<Duration> = (0..1000).map(|_| j.spread(base, 0.2)).collect();
        assert!(
            all.iter()
                .all(|d| *d >= Duration::from_secs(8) && *d <= Duration::from_secs(12))
        );
        assert!(
            all.iter().any(|d| *d < Duration::from_secs(9))
                && all.iter().any(|d| *d > Duration::from_secs(11))
        );
        assert_eq!(j.spread(Duration::ZERO, 0.5), Duration::from_millis(1));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        assert!(b.next_delay(Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
