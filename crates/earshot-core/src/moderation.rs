//! Reports, strikes and bans, all keyed by [`ClientKey`] and all in memory.
//!
//! - A report blocks the pair for as long as keys live (`key_memory`): the
//!   reporter is never matched with that person again.
//! - The reported key collects a strike weighted by how trustworthy the
//!   reporter looks: a reporter's first few reports in a window count fully,
//!   later ones less, and someone who reports most of the people they meet
//!   counts for little. Reporting the same person again counts once.
//! - Enough weight from enough distinct reporters within `strike_window`
//!   bans the key from matching, for an escalating time.
//!
//! Nothing here outlives `key_memory` without activity, and nothing is ever
//! written anywhere: keys are HMACs under a rotating secret, so a record is
//! meaningless once its secret is gone.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ClientKey;

/// Weights are in thousandths of a full report.
pub const FULL: u32 = 1000;

/// Tunables for moderation.
#[derive(Debug, Clone)]
pub struct ModConfig {
    /// How long strikes count towards a ban.
    pub strike_window: Duration,
    /// Distinct reporters needed for a ban.
    pub reporters_for_ban: usize,
    /// Total weight needed for a ban, in full reports.
    pub weight_for_ban: u32,
    /// Ban lengths, the first, second, ... time; the last repeats.
    pub ban_lengths: Vec<Duration>,
    /// Reports a reporter makes per window that count fully.
    pub full_weight_reports: u32,
    /// How long records and pair blocks are kept without activity: two
    /// rotations of the key secret, after which keys no longer match anyway.
    pub key_memory: Duration,
}

impl Default for ModConfig {
    fn default() -> Self {
        ModConfig {
            strike_window: Duration::from_secs(24 * 3600),
            reporters_for_ban: 3,
            weight_for_ban: 3,
            ban_lengths: vec![Duration::from_secs(3600), Duration::from_secs(24 * 3600)],
            full_weight_reports: 3,
            key_memory: Duration::from_secs(48 * 3600),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    /// (when, reporter, weight): at most one per reporter.
    strikes: Vec<(Instant, ClientKey, u32)>,
    /// When this key reported someone, within the strike window.
    reports_made: VecDeque<Instant>,
    /// When this key was matched with someone, within the strike window.
    matches: VecDeque<Instant>,
    bans: u32,
    banned_until: Option<Instant>,
    last_active: Option<Instant>,
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The reporter had already reported this key: nothing new counted.
    Repeated,
    /// A strike was recorded with this weight (thousandths).
    Strike { weight: u32 },
    /// The strike made the key banned until then.
    Banned { until: Instant },
}

#[derive(Debug)]
pub struct Moderation {
    config: ModConfig,
    records: HashMap<ClientKey, Record>,
    /// (reporter, reported) → last time it was confirmed.
    blocks: HashMap<(ClientKey, ClientKey), Instant>,
    sweep_at: usize,
    pub reports_total: u64,
    pub bans_total: u64,
}

impl Moderation {
    pub fn new(config: ModConfig) -> Moderation {
        Moderation {
            config,
            records: HashMap::new(),
            blocks: HashMap::new(),
            sweep_at: 1024,
            reports_total: 0,
            bans_total: 0,
        }
    }

    fn record(&mut self, now: Instant, key: ClientKey) -> &mut Record {
        if self.records.len() + self.blocks.len() >= self.sweep_at {
            self.sweep(now);
        }
        let r = self.records.entry(key).or_default();
        r.last_active = Some(now);
        r
    }

    /// Forgets what has not been touched for `key_memory`.
    fn sweep(&mut self, now: Instant) {
        let memory = self.config.key_memory;
        let fresh = |t: Instant| now.saturating_duration_since(t) < memory;
        self.records.retain(|_, r| {
            r.last_active.is_some_and(fresh) || r.banned_until.is_some_and(|u| u > now)
        });
        self.blocks.retain(|_, &mut t| fresh(t));
        self.sweep_at = ((self.records.len() + self.blocks.len()) * 2).max(1024);
    }

    /// Whether `a` and `b` must not be matched: either reported the other.
    pub fn blocked(&self, a: ClientKey, b: ClientKey) -> bool {
        a != b && (self.blocks.contains_key(&(a, b)) || self.blocks.contains_key(&(b, a)))
    }

    /// Until when `key` is banned from matching, if it is.
    pub fn banned_until(&self, now: Instant, key: ClientKey) -> Option<Instant> {
        self.records
            .get(&key)
            .and_then(|r| r.banned_until)
            .filter(|&u| u > now)
    }

    /// Notes that `key` was matched with someone: reports are weighed
    /// against how many people a reporter meets.
    pub fn matched(&mut self, now: Instant, key: ClientKey) {
        let window = self.config.strike_window;
        let r = self.record(now, key);
        r.matches.push_back(now);
        prune(&mut r.matches, now, window);
    }

    /// Moves what was recorded under a client's previous key (before the
    /// secret rotated) to its current key, so bans survive the rotation.
    pub fn carry_over(&mut self, previous: ClientKey, current: ClientKey) {
        if previous == current {
            return;
        }
        if let Some(old) = self.records.remove(&previous) {
            let r = self.records.entry(current).or_default();
            r.strikes.extend(old.strikes);
            r.reports_made.extend(old.reports_made);
            r.matches.extend(old.matches);
            r.bans = r.bans.max(old.bans);
            r.banned_until = r.banned_until.max(old.banned_until);
            r.last_active = r.last_active.max(old.last_active);
        }
        let moved: Vec<_> = self
            .blocks
            .iter()
            .filter(|((a, b), _)| *a == previous || *b == previous)
            .map(|(&k, &t)| (k, t))
            .collect();
        for ((a, b), t) in moved {
            self.blocks.remove(&(a, b));
            let swap = |k: ClientKey| if k == previous { current } else { k };
            self.blocks.insert((swap(a), swap(b)), t);
        }
    }

    /// Keeps the pair apart without counting a strike (a report over the
    /// reporter's limit).
    pub fn block(&mut self, now: Instant, reporter: ClientKey, reported: ClientKey) {
        if reporter != reported {
            self.blocks.insert((reporter, reported), now);
        }
    }

    /// Records a report and blocks the pair, without striking: the weight
    /// the strike carries (thousandths), or `None` for a repeated report.
    /// With a shared backplane the strike itself is counted by the store.
    pub fn weigh(&mut self, now: Instant, reporter: ClientKey, reported: ClientKey) -> Option<u32> {
        self.reports_total += 1;
        if reporter == reported {
            // One address behind both (a shared network): nothing to weigh.
            return None;
        }
        if self.blocks.insert((reporter, reported), now).is_some() {
            return None;
        }
        let config = &self.config;
        let (window, full_weight_reports) = (config.strike_window, config.full_weight_reports);
        let r = self.record(now, reporter);
        r.reports_made.push_back(now);
        prune(&mut r.reports_made, now, window);
        prune(&mut r.matches, now, window);
        let made = r.reports_made.len() as u32;
        let met = r.matches.len() as u32;
        let mut w = if made <= full_weight_reports {
            FULL
        } else {
            FULL * full_weight_reports / made
        };
        // Reporting most of the people one meets is not a signal about them.
        if met >= 5 && made * 2 > met {
            w /= 4;
        }
        Some(w)
    }

    /// `reporter` reports `reported`.
    pub fn report(
        &mut self,
        now: Instant,
        reporter: ClientKey,
        reported: ClientKey,
    ) -> ReportOutcome {
        let Some(weight) = self.weigh(now, reporter, reported) else {
            return ReportOutcome::Repeated;
        };
        let config = self.config.clone();
        let window = config.strike_window;
        let target = self.record(now, reported);
        target
            .strikes
            .retain(|&(t, _, _)| now.saturating_duration_since(t) < window);
        target.strikes.push((now, reporter, weight));
        let total: u32 = target.strikes.iter().map(|&(_, _, w)| w).sum();
        if target.strikes.len() >= config.reporters_for_ban && total >= config.weight_for_ban * FULL
        {
            let lengths = &config.ban_lengths;
            let length = lengths
                .get(target.bans as usize)
                .or(lengths.last())
                .copied()
                .unwrap_or(Duration::from_secs(3600));
            let until = now + length;
            target.bans += 1;
            target.banned_until = Some(until);
            target.strikes.clear();
            self.bans_total += 1;
            return ReportOutcome::Banned { until };
        }
        ReportOutcome::Strike { weight }
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ClientKey {
        ClientKey([n; 16])
    }

    #[test]
    fn three_distinct_reporters_ban_with_escalation() {
        let t0 = Instant::now();
        let mut m = Moderation::new(ModConfig::default());
        let bad = key(9);
        assert_eq!(
            m.report(t0, key(1), bad),
            ReportOutcome::Strike { weight: 1000 }
        );
        assert_eq!(
            m.report(t0, key(1), bad),
            ReportOutcome::Repeated,
            "counts once"
        );
        assert_eq!(
            m.report(t0, key(2), bad),
            ReportOutcome::Strike { weight: 1000 }
        );
        assert!(m.banned_until(t0, bad).is_none());
        let first = t0 + Duration::from_secs(3600);
        assert_eq!(
            m.report(t0, key(3), bad),
            ReportOutcome::Banned { until: first }
        );
        assert_eq!(m.banned_until(t0, bad), Some(first));
        assert!(m.banned_until(first, bad).is_none(), "the ban ends");
        assert!(m.blocked(key(1), bad) && m.blocked(bad, key(2)));
        assert!(!m.blocked(key(1), key(2)));

        // A second ban lasts a day.
        let later = first + Duration::from_secs(60);
        for r in 4..7 {
            m.report(later, key(r), bad);
        }
        assert_eq!(
            m.banned_until(later, bad),
            Some(later + Duration::from_secs(24 * 3600))
        );
        assert_eq!(m.bans_total, 2);
    }

    #[test]
    fn serial_reporters_lose_weight() {
        let t0 = Instant::now();
        let mut m = Moderation::new(ModConfig::default());
        let troll = key(1);
        for _ in 0..10 {
            m.matched(t0, troll);
        }
        let weights: Vec<u32> = (10..20)
            .map(|victim| match m.report(t0, troll, key(victim)) {
                ReportOutcome::Strike { weight } => weight,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(weights[..3], [1000, 1000, 1000]);
        // 4th: 3/4 of a report; from the 6th on, more than half the people
        // met are reported, so weight is quartered as well.
        assert_eq!(weights[3], 750);
        assert_eq!(weights[5], 500 / 4);
        assert!(weights.windows(2).all(|w| w[1] <= w[0]));
        // The troll's report plus one honest one are not enough for a ban.
        let target = key(10);
        m.report(t0, key(50), target);
        assert!(m.banned_until(t0, target).is_none());
    }

    #[test]
    fn strikes_expire_after_the_window() {
        let t0 = Instant::now();
        let mut m = Moderation::new(ModConfig::default());
        let bad = key(9);
        m.report(t0, key(1), bad);
        m.report(t0, key(2), bad);
        let next_day = t0 + Duration::from_secs(24 * 3600 + 1);
        assert!(matches!(
            m.report(next_day, key(3), bad),
            ReportOutcome::Strike { .. }
        ));
        assert!(m.banned_until(next_day, bad).is_none());
    }

    #[test]
    fn bans_and_blocks_survive_a_key_rotation() {
        let t0 = Instant::now();
        let mut m = Moderation::new(ModConfig::default());
        let (old, new) = (key(9), key(19));
        for r in 1..4 {
            m.report(t0, key(r), old);
        }
        m.carry_over(old, new);
        assert!(m.banned_until(t0, new).is_some());
        assert!(m.blocked(key(1), new));
        assert!(!m.blocked(key(1), old));
    }

    #[test]
    fn records_are_forgotten_after_key_memory() {
        let t0 = Instant::now();
        let mut m = Moderation::new(ModConfig::default());
        for n in 0..2000u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&n.to_le_bytes());
            m.matched(t0, ClientKey(k));
        }
        let later = t0 + Duration::from_secs(49 * 3600);
        for n in 0..1100u32 {
            let mut k = [1u8; 16];
            k[..4].copy_from_slice(&n.to_le_bytes());
            m.matched(later, ClientKey(k));
        }
        assert!(m.records.len() <= 1100, "{}", m.records.len());
    }

    #[test]
    fn reporting_yourself_does_nothing() {
        let t0 = Instant::now();
        let mut m = Moderation::new(ModConfig::default());
        assert_eq!(m.report(t0, key(1), key(1)), ReportOutcome::Repeated);
        assert!(!m.blocked(key(1), key(1)));
    }
}
