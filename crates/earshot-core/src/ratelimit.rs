//! Token buckets on a caller-supplied clock.
//!
//! A bucket earns one token every `interval` and holds at most `burst`. The
//! level is kept in nanoseconds of earned time, so the arithmetic is exact
//! and deterministic: the same sequence of `now`s always gives the same
//! answers.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Allows `burst` events at once and one per `interval` on average.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Nanoseconds of refill time banked at `last`; a token costs `interval`.
    level: u128,
    last: Instant,
    interval: u128,
    capacity: u128,
}

impl TokenBucket {
    /// A full bucket allowing `per_second` events a second, `burst` at once.
    /// `per_second` of zero means the bucket never refills.
    pub fn new(now: Instant, per_second: u32, burst: u32) -> TokenBucket {
        let interval = match per_second {
            0 => Duration::MAX,
            n => Duration::from_secs(1) / n,
        };
        TokenBucket::every(now, interval, burst)
    }

    /// A full bucket earning one token per `interval`, holding `burst`.
    pub fn every(now: Instant, interval: Duration, burst: u32) -> TokenBucket {
        let interval = interval.as_nanos().max(1);
        let capacity = interval * u128::from(burst.max(1));
        TokenBucket {
            level: capacity,
            last: now,
            interval,
            capacity,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that goes backwards earns nothing rather than panicking.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.level = self.level.saturating_add(elapsed).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= self.interval {
            self.level -= self.interval;
            Ok(())
        } else {
            let missing = self.interval - self.level;
            Err(u64::try_from(missing).map_or(Duration::MAX, Duration::from_nanos))
        }
    }

    /// Whether the bucket is back to its full burst: it then remembers nothing.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.level.saturating_add(elapsed) >= self.capacity
    }
}

/// One bucket per key, for limits shared by all of a client's connections.
///
/// Full buckets carry no information, so they are dropped whenever the map
/// has doubled since the last sweep: memory stays proportional to the keys
/// that were active within one refill period.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    buckets: HashMap<K, TokenBucket>,
    interval: Duration,
    burst: u32,
    sweep_at: usize,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub fn new(interval: Duration, burst: u32) -> KeyedBuckets<K> {
        KeyedBuckets {
            buckets: HashMap::new(),
            interval,
            burst,
            sweep_at: 1024,
        }
    }

    pub fn take(&mut self, now: Instant, key: &K) -> Result<(), Duration> {
        if self.buckets.len() >= self.sweep_at {
            self.buckets.retain(|_, b| !b.is_full(now));
            self.sweep_at = (self.buckets.len() * 2).max(1024);
        }
        let (interval, burst) = (self.interval, self.burst);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::every(now, interval, burst))
            .take(now)
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
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
    fn slow_buckets_earn_one_token_per_interval() {
        let t0 = Instant::now();
        let mut b = TokenBucket::every(t0, Duration::from_secs(12), 2);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        assert_eq!(b.take(t0), Err(Duration::from_secs(12)));
        assert_eq!(
            b.take(t0 + Duration::from_secs(5)),
            Err(Duration::from_secs(7))
        );
        assert!(b.take(t0 + Duration::from_secs(12)).is_ok());
        assert!(!b.is_full(t0 + Duration::from_secs(12)));
        assert!(b.is_full(t0 + Duration::from_secs(36)));
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
        assert!(b.take(t0 + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn keyed_buckets_are_independent_and_forget_idle_keys() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(Duration::from_secs(1), 1);
        assert!(k.take(t0, &1).is_ok());
        assert!(k.take(t0, &1).is_err());
        assert!(k.take(t0, &2).is_ok());
        for key in 3..2000 {
            let _ = k.take(t0, &key);
        }
        // After a refill period every bucket is full; the next sweep drops them.
        let later = t0 + Duration::from_secs(2);
        assert!(k.take(later, &1).is_ok());
        for key in 5000..5100 {
            let _ = k.take(later, &key);
        }
        assert!(k.len() < 1100, "{} keys kept", k.len());
    }
}
