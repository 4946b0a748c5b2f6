//! Token buckets on a caller-supplied clock.
//!
//! Integer arithmetic in micro-tokens keeps the bucket exact and deterministic:
//! the same sequence of `now`s always gives the same answers.

use std::time::{Duration, Instant};

const MICRO: u64 = 1_000_000;

/// Allows `burst` events at once and `per_second` on average.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Micro-tokens available at `last`.
    level: u64,
    last: Instant,
    capacity: u64,
    /// Micro-tokens gained per second, equal to events per second.
    rate: u64,
}

impl TokenBucket {
    /// A full bucket. `per_second` of zero means the bucket never refills.
    pub fn new(now: Instant, per_second: u32, burst: u32) -> TokenBucket {
        let capacity = u64::from(burst.max(1)) * MICRO;
        TokenBucket {
            level: capacity,
            last: now,
            capacity,
            rate: u64::from(per_second),
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that goes backwards gains nothing rather than panicking.
        let elapsed = now.saturating_duration_since(self.last);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.level = self
            .level
            .saturating_add(micros.saturating_mul(self.rate))
            .min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= MICRO {
            self.level -= MICRO;
            Ok(())
        } else if self.rate == 0 {
            Err(Duration::MAX)
        } else {
            let missing = MICRO - self.level;
            Err(Duration::from_micros(missing.div_ceil(self.rate)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 10, 3);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(b.take(t0 + Duration::from_millis(99)).is_err());
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(t0, 1, 1);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0 - Duration::from_secs(5)).is_err());
        assert!(b.take(t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn zero_rate_never_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0, 0, 1);
        assert!(b.take(t0).is_ok());
        assert_eq!(b.take(t0 + Duration::from_secs(3600)), Err(Duration::MAX));
    }
}
