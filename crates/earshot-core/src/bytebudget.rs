//! Byte budgets: how much a relay may carry, and how much the STUN and TURN
//! servers may say to an address that has not proven it is who it claims.
//!
//! A UDP source address can be forged, so an answer to an unauthenticated
//! request (a Binding, a 401 challenge, an error) may land on someone who
//! never asked: reflection. [`AnswerBudget`] gives each source (an IPv4
//! address or an IPv6 /64) a small bucket of answer bytes, so that under a
//! flood from one source the bytes sent back stay well below the bytes
//! received, while every other source is still answered.
//!
//! Invariants:
//! - Memory is bounded: at most `max_sources` buckets. Full buckets hold
//!   nothing worth keeping and are swept; when the table is still full,
//!   newcomers share one overflow bucket. Nothing an attacker does evicts a
//!   drained bucket, so forging many sources never refills a victim's.
//! - Deterministic on the caller's clock; no address is ever formatted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const NANOS: u128 = 1_000_000_000;

/// A token bucket of bytes: `rate` bytes a second, at most `burst` banked.
#[derive(Debug, Clone)]
pub struct ByteBucket {
    /// Bytes banked, in byte-nanoseconds (bytes times 10⁹), at `last`.
    level: u128,
    last: Instant,
    rate: u128,
    capacity: u128,
}

impl ByteBucket {
    /// A full bucket.
    pub fn new(now: Instant, rate: u64, burst: u64) -> ByteBucket {
        let capacity = u128::from(burst) * NANOS;
        ByteBucket {
            level: capacity,
            last: now,
            rate: u128::from(rate),
            capacity,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock going backwards earns nothing.
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Spends `bytes` if the bucket holds them.
    pub fn take(&mut self, now: Instant, bytes: usize) -> bool {
        self.refill(now);
        let cost = (bytes as u128) * NANOS;
        if self.level >= cost {
            self.level -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again, and so remembers nothing.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.level.saturating_add(elapsed.saturating_mul(self.rate)) >= self.capacity
    }
}

/// Settings of an [`AnswerBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerBudgetConfig {
    /// Answer bytes one source may draw at once. A browser opening a room's
    /// worth of peer connections asks a few dozen times within a second.
    pub burst: u64,
    /// Answer bytes a second one source earns.
    pub rate: u64,
    /// Sources remembered at once (about 100 bytes each).
    pub max_sources: usize,
    /// The overflow bucket newcomers share when the table is full.
    pub overflow_burst: u64,
    pub overflow_rate: u64,
}

impl Default for AnswerBudgetConfig {
    fn default() -> Self {
        AnswerBudgetConfig {
            burst: 8 * 1024,
            rate: 1024,
            max_sources: 65_536,
            overflow_burst: 64 * 1024,
            overflow_rate: 64 * 1024,
        }
    }
}

/// Per-source budgets for answers to unauthenticated requests.
#[derive(Debug)]
pub struct AnswerBudget {
    config: AnswerBudgetConfig,
    sources: HashMap<u128, ByteBucket>,
    overflow: ByteBucket,
    /// No sweep before this: a table full of live buckets is not swept
    /// again on every newcomer.
    next_sweep: Instant,
    /// Answers not sent for want of budget.
    pub limited: u64,
}

impl AnswerBudget {
    pub fn new(now: Instant, config: AnswerBudgetConfig) -> AnswerBudget {
        AnswerBudget {
            overflow: ByteBucket::new(now, config.overflow_rate, config.overflow_burst),
            config,
            sources: HashMap::new(),
            next_sweep: now,
            limited: 0,
        }
    }

    /// Whether an answer of `bytes` may go to `source`; spends it if so.
    pub fn allow(&mut self, now: Instant, source: IpAddr, bytes: usize) -> bool {
        let key = source_key(source);
        let allowed = match self.sources.get_mut(&key) {
            Some(bucket) => bucket.take(now, bytes),
            None => {
                if self.sources.len() >= self.config.max_sources && now >= self.next_sweep {
                    self.sources.retain(|_, b| !b.is_full(now));
                    self.next_sweep = now + Duration::from_secs(1);
                }
                if self.sources.len() < self.config.max_sources {
                    let c = &self.config;
                    self.sources
                        .entry(key)
                        .or_insert_with(|| ByteBucket::new(now, c.rate, c.burst))
                        .take(now, bytes)
                } else {
                    self.overflow.take(now, bytes)
                }
            }
        };
        if !allowed {
            self.limited += 1;
        }
        allowed
    }

    /// Sources remembered now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// An IPv4 address, or an IPv6 /64, as one number (IPv4 as mapped IPv6).
pub fn source_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6) & !u128::from(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_flood_from_one_source_gets_less_back_than_it_sends() {
        let t0 = Instant::now();
        let mut b = AnswerBudget::new(t0, AnswerBudgetConfig::default());
        let (mut received, mut sent) = (0usize, 0usize);
        // Two seconds of 20-byte requests at 10,000 a second, each drawing
        // a 104-byte answer.
        for i in 0..20_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            received += 20;
            if b.allow(now, ip("203.0.113.7"), 104) {
                sent += 104;
            }
        }
        assert!(sent <= received / 10, "sent {sent} for {received}");
        // Someone else is still answered, and so is a neighbour in another
        // /64, but not the flooder's own /64.
        assert!(b.allow(t0, ip("198.51.100.1"), 104));
        let mut v6 = AnswerBudget::new(t0, AnswerBudgetConfig::default());
        while v6.allow(t0, ip("2001:db8:1:2::1"), 104) {}
        assert!(!v6.allow(t0, ip("2001:db8:1:2::ffff"), 104));
        assert!(v6.allow(t0, ip("2001:db8:1:3::1"), 104));
    }

    #[test]
    fn budgets_refill_and_forget_idle_sources() {
        let t0 = Instant::now();
        let config = AnswerBudgetConfig {
            burst: 200,
            rate: 100,
            max_sources: 4,
            overflow_burst: 100,
            overflow_rate: 0,
        };
        let mut b = AnswerBudget::new(t0, config);
        assert!(b.allow(t0, ip("192.0.2.1"), 200));
        assert!(!b.allow(t0, ip("192.0.2.1"), 1));
        assert!(b.allow(t0 + Duration::from_secs(1), ip("192.0.2.1"), 100));
        for n in 2..5 {
            assert!(b.allow(t0, ip(&format!("192.0.2.{n}")), 10));
        }
        // Full: newcomers share the overflow bucket, and a drained source
        // is not evicted to make room.
        assert!(b.allow(t0, ip("192.0.2.9"), 100));
        assert!(!b.allow(t0, ip("192.0.2.10"), 1));
        assert!(!b.allow(t0 + Duration::from_secs(1), ip("192.0.2.1"), 101));
        // Once the others are full again they are swept.
        let later = t0 + Duration::from_secs(10);
        assert!(b.allow(later, ip("192.0.2.10"), 100));
        assert!(b.sources() <= 4);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut bucket = ByteBucket::new(t0, 10, 10);
        assert!(bucket.take(t0, 10));
        assert!(!bucket.take(t0 - Duration::from_secs(2), 1));
        assert!(bucket.take(t0 + Duration::from_secs(1), 10));
    }
}
