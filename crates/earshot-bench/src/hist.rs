//! A latency histogram that worker processes fill and the bench merges:
//! microseconds, exact below 64 µs, then 64 buckets per power of two (at
//! most 1.6 % error), so p99 is read off without keeping every sample.
//! Workers send it as one line of `index:count` pairs.

use anyhow::Context;

/// Sub-buckets per power of two, as bits.
const SUB: u32 = 6;
const ROW: usize = 1 << SUB;
/// Enough rows for anything below 2^40 µs (12 days).
const BUCKETS: usize = ROW * (40 - SUB as usize + 2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn index(micros: u64) -> usize {
    if micros < ROW as u64 {
        return micros as usize;
    }
    let e = 63 - micros.leading_zeros();
    let mantissa = (micros >> (e - SUB)) as usize; // in ROW..2*ROW
    ((e - SUB + 1) as usize * ROW + mantissa - ROW).min(BUCKETS - 1)
}

/// The smallest value of bucket `i`, and the bucket's width.
fn bounds(i: usize) -> (u64, u64) {
    if i < ROW {
        return (i as u64, 1);
    }
    let (row, mantissa) = (i / ROW, (i % ROW + ROW) as u64);
    (mantissa << (row - 1), 1 << (row - 1))
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.total += 1;
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The value at quantile `q` (0 to 1) in µs, the middle of its bucket;
    /// `None` when empty. The rank is `ceil(q * n)`, as for sorted samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bounds(i);
                return Some(low as f64 + (width as f64 - 1.0) / 2.0);
            }
        }
        unreachable!("the counts add up to the total")
    }

    /// `index:count,...` for the non-empty buckets (`-` when none).
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("{i}:{c}"))
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(",")
        }
    }

    pub fn decode(text: &str) -> anyhow::Result<Histogram> {
        let mut h = Histogram::default();
        if text == "-" {
            return Ok(h);
        }
        for part in text.split(',') {
            let (i, c) = part.split_once(':').context("expected index:count")?;
            let (i, c): (usize, u64) = (i.parse()?, c.parse()?);
            anyhow::ensure!(i < BUCKETS, "bucket {i} out of range");
            h.counts[i] += c;
            h.total += c;
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_hold_their_values() {
        for v in (0..5000).chain([65_535, 1 << 20, 123_456_789]) {
            let (low, width) = bounds(index(v));
            assert!(low <= v && v < low + width, "{v} in [{low}, +{width})");
            assert!(width == 1 || width * 64 <= low, "error over 1/64 at {v}");
        }
        for i in 1..BUCKETS - 1 {
            let (low, width) = bounds(i);
            assert_eq!(bounds(i + 1).0, low + width, "gap after bucket {i}");
        }
    }

    #[test]
    fn quantiles_match_sorted_samples() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(50.0));
        assert_eq!(h.quantile(0.99), Some(99.0));
        assert_eq!(h.quantile(0.0), Some(1.0));
        let mut slow = Histogram::default();
        slow.record(10_000);
        h.merge(&slow);
        assert_eq!(h.len(), 101);
        let top = h.quantile(1.0).unwrap();
        assert!((9_900.0..=10_100.0).contains(&top), "{top}");
    }

    #[test]
    fn encoding_round_trips() {
        let mut h = Histogram::default();
        assert_eq!(Histogram::decode(&h.encode()).unwrap(), h);
        for v in [3, 3, 70, 5000, 1 << 30] {
            h.record(v);
        }
        assert_eq!(Histogram::decode(&h.encode()).unwrap(), h);
        assert!(Histogram::decode("99999:1").is_err());
        assert!(Histogram::decode("x").is_err());
    }
}
