//! Token buckets on a caller-supplied clock.
//!
//! A bucket earns one token every `interval` and holds at most `burst`. The
//! level is kept in nanoseconds of earned time, so the arithmetic is exact
//! and deterministic: the same sequence of `now`s always gives the same
//! answers. Nanoseconds fit in a `u64` for 584 years: every connection holds
//! two buckets, so their size is part of what an idle socket costs.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Allows `burst` events at once and one per `interval` on average.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Nanoseconds of refill time banked at `last`; a token costs `interval`.
    level: u64,
    last: Instant,
    interval: u64,
    capacity: u64,
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
        let burst = u64::from(burst.max(1));
        // Capped so that the full burst fits: a cap this high is years a
        // token, as good as "never" for a bucket that never refills.
        let interval = u64::try_from(interval.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, u64::MAX / burst);
        let capacity = interval * burst;
        TokenBucket {
            level: capacity,
            last: now,
            interval,
            capacity,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that goes backwards earns nothing rather than panicking.
        let elapsed = nanos(now.saturating_duration_since(self.last));
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
            Err(Duration::from_nanos(self.interval - self.level))
        }
    }

    /// Whether the bucket is back to its full burst: it then remembers nothing.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = nanos(now.saturating_duration_since(self.last));
        self.level.saturating_add(elapsed) >= self.capacity
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Keys a [`KeyedBuckets`] remembers at most unless told otherwise: about
/// 64 MB at most (an entry is a 16-byte key and a 40-byte bucket, in a
/// hash table at up to 7/8 load).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// One bucket per key, for limits shared by all of a client's connections.
///
/// Full buckets carry no information, so they are dropped whenever the map
/// has doubled since the last sweep: memory stays proportional to the keys
/// that were active within one refill period.
///
/// The map holds at most `max_keys` buckets. At the cap, after dropping the
/// full ones, new keys share one overflow bucket rather than evicting
/// anyone's drained bucket: a flood of fresh keys slows newcomers down, but
/// gives no drained client a fresh allowance.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    buckets: HashMap<K, TokenBucket>,
    interval: Duration,
    burst: u32,
    sweep_at: usize,
    max_keys: usize,
    /// Shared by new keys while the map is full.
    overflow: Option<TokenBucket>,
    /// When the map was last swept at the cap: at most once a second.
    swept_full: Option<Instant>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub fn new(interval: Duration, burst: u32) -> KeyedBuckets<K> {
        KeyedBuckets::with_max_keys(interval, burst, DEFAULT_MAX_KEYS)
    }

    /// Buckets for at most `max_keys` keys (at least one).
    pub fn with_max_keys(interval: Duration, burst: u32, max_keys: usize) -> KeyedBuckets<K> {
        KeyedBuckets {
            buckets: HashMap::new(),
            interval,
            burst,
            sweep_at: 1024,
            max_keys: max_keys.max(1),
            overflow: None,
            swept_full: None,
        }
    }

    pub fn take(&mut self, now: Instant, key: &K) -> Result<(), Duration> {
        if let Some(b) = self.buckets.get_mut(key) {
            return b.take(now);
        }
        let at_cap = self.buckets.len() >= self.max_keys;
        let sweep_due = !at_cap
            || self
                .swept_full
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if (self.buckets.len() >= self.sweep_at || at_cap) && sweep_due {
            self.buckets.retain(|_, b| !b.is_full(now));
            self.sweep_at = (self.buckets.len() * 2).max(1024);
            if at_cap {
                self.swept_full = Some(now);
            }
        }
        let (interval, burst) = (self.interval, self.burst);
        let fresh = || TokenBucket::every(now, interval, burst);
        if self.buckets.len() >= self.max_keys {
            return self.overflow.get_or_insert_with(fresh).take(now);
        }
        self.buckets
            .entry(key.clone())
            .or_insert_with(fresh)
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

    #[test]
    fn a_full_map_shares_one_overflow_bucket_and_keeps_drained_ones() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::with_max_keys(Duration::from_secs(60), 2, 100);
        let drained = 0u32;
        assert!(k.take(t0, &drained).is_ok());
        assert!(k.take(t0, &drained).is_ok());
        assert!(k.take(t0, &drained).is_err());
        // A flood of fresh keys: the first 99 get buckets, the rest share one.
        let mut allowed = 0;
        for key in 1..10_000u32 {
            allowed += usize::from(k.take(t0 + Duration::from_millis(key.into()), &key).is_ok());
        }
        assert_eq!(k.len(), 100);
        assert_eq!(
            allowed,
            99 + 2,
            "99 own buckets, then two from the shared one"
        );
        // The drained key was not evicted into a fresh allowance.
        assert!(k.take(t0 + Duration::from_secs(10), &drained).is_err());
        // Once buckets refill, the sweep at the cap frees room again.
        let later = t0 + Duration::from_secs(200);
        assert!(k.take(later, &20_000).is_ok());
        assert!(k.len() <= 2, "{}", k.len());
    }
}
