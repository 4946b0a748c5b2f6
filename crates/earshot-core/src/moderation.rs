//! Reports, strikes and bans, all keyed by [`ClientKey`] and all in memory.
//!
//! A report always protects the reporter: the pair is blocked (never
//! matched again) for as long as keys live (`key_memory`), and a report in
//! a room counts toward removing the member from that room (see `rooms`).
//! Toward a service-wide ban from strangers, a report weighs only as much
//! as the reporter has shown to be a real, separate person:
//!
//! - **Time connected.** A reporter whose connections have been open for
//!   less than `trusted_after` in all (10 minutes by default) weighs 0.
//! - **Calls held.** Then it weighs one `held_calls_for_full`-th of a full
//!   report (a third, by default) for each stranger call of at least
//!   `held_call` (30 s) it held within the strike window, with a partner
//!   other than its last four, up to a full report.
//! - **Not a serial reporter.** Beyond `full_weight_reports` reports in the
//!   window its reports weigh less, and a quarter when it reports most of
//!   the people it meets. Reporting the same person again counts once.
//! - **Distinct people.** Strikes from one network (an IPv6 /48 or IPv4
//!   /24, keyed by the shell's HMAC), from members of one room, or from
//!   reporters first seen within `arrived_together` (a minute) of each
//!   other count as one reporter, weighing as its heaviest strike
//!   ([`Strikes`] holds this rule, and [`STRIKE_LUA`] its twin for Redis).
//! - A ban takes `reporters_for_ban` such reporters (3) weighing
//!   `weight_for_ban` full reports (3) together within `strike_window`, and
//!   lasts longer each time (`ban_lengths`).
//!
//! So three fresh addresses, or any number of members of one room, can
//! never ban anyone from strangers; their reports still end the call, block
//! the pair and act inside the room.
//!
//! Memory is flat: a key's record has a fixed size (counters in time
//! buckets, [`Window`], not a timestamp per event; at most `max_strikes`
//! strikes), and the tables have caps (`max_records`, `max_blocks`). At a
//! cap, what has expired goes first, then the least recently active plain
//! records; records with strikes, past bans or an open connection go only
//! when nothing else is left, and active bans last of all, so that a flood
//! of fresh keys cannot evict a ban.
//!
//! Nothing here outlives `key_memory` without activity, and nothing is ever
//! written anywhere: keys are HMACs under a rotating secret, so a record is
//! meaningless once its secret is gone.

mod strikes;
mod window;

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use strikes::{Added, STRIKE_LUA, Strike, StrikeRule, Strikes, strike_args};
pub use window::{BUCKETS, Window};

use crate::ClientKey;

/// Weights are in thousandths of a full report.
pub const FULL: u32 = 1000;

/// Partners of held calls remembered per key, so that calls with the same
/// few partners count once.
const PARTNERS: usize = 4;

/// Tunables for moderation.
#[derive(Debug, Clone)]
pub struct ModConfig {
    /// How long strikes count towards a ban.
    pub strike_window: Duration,
    /// Distinct reporters needed for a ban (after grouping: one network,
    /// one room, or arrived together count as one).
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
    /// Connection time a reporter needs before its reports weigh anything.
    pub trusted_after: Duration,
    /// A stranger call at least this long counts as a call held.
    pub held_call: Duration,
    /// Calls held (with different partners) within the strike window for a
    /// report of full weight; fewer weigh in proportion. Zero: none needed.
    pub held_calls_for_full: u32,
    /// Reporters first seen within this of each other count as one.
    /// Zero: off.
    pub arrived_together: Duration,
    /// Most strikes kept against one key (at most 64).
    pub max_strikes: usize,
    /// Most client records kept (about 180 bytes each, and 104 more a
    /// strike; see README).
    pub max_records: usize,
    /// Most blocked pairs kept (about 55 bytes each).
    pub max_blocks: usize,
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
            trusted_after: Duration::from_secs(600),
            held_call: Duration::from_secs(30),
            held_calls_for_full: 3,
            arrived_together: Duration::from_secs(60),
            max_strikes: 8,
            max_records: 1_000_000,
            max_blocks: 1_000_000,
        }
    }
}

/// What moderation keeps per key: a fixed size, whatever the key does.
#[derive(Debug, Clone)]
struct Record {
    /// Seconds since the epoch ([`Moderation::secs`]) it was first seen.
    first_seen: u32,
    last_active: u32,
    /// Since when one of its connections has been open, if one is.
    online_since: Option<u32>,
    /// Seconds connected before `online_since`.
    connected: u32,
    /// Reports it made, matches it had and calls it held, in the window.
    reports_made: Window,
    matches: Window,
    held: Window,
    /// Fingerprints of the partners of its last held calls.
    partners: [u32; PARTNERS],
    bans: u32,
    banned_until: Option<Instant>,
    /// Strikes against it, at most `max_strikes`.
    strikes: Strikes,
}

impl Record {
    fn new(now: u32) -> Record {
        Record {
            first_seen: now,
            last_active: now,
            online_since: None,
            connected: 0,
            reports_made: Window::default(),
            matches: Window::default(),
            held: Window::default(),
            partners: [0; PARTNERS],
            bans: 0,
            banned_until: None,
            strikes: Strikes::default(),
        }
    }

    fn connected(&self, now: u32) -> u32 {
        let current = self.online_since.map_or(0, |s| now.saturating_sub(s));
        self.connected.saturating_add(current)
    }

    /// Eviction order: lower goes first.
    fn keep_rank(&self, now: Instant) -> u8 {
        if self.banned_until.is_some_and(|u| u > now) {
            2
        } else if !self.strikes.is_empty() || self.bans > 0 || self.online_since.is_some() {
            1
        } else {
            0
        }
    }
}

/// Who made a report, as far as weighing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reporter {
    pub key: ClientKey,
    /// The reporter's network key (/48 or /24); its client key if unknown.
    pub network: ClientKey,
    pub previous_network: Option<ClientKey>,
    /// A stable tag of the room the report was made in, if it was.
    pub room: Option<u64>,
}

/// A report's weight, as the reporter's node judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weighed {
    /// Thousandths of a full report.
    pub weight: u32,
    /// When this node first saw the reporter.
    pub arrived: Instant,
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
    /// The instant record times count from, in seconds (the first `now`).
    epoch: Option<Instant>,
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
            epoch: None,
            records: HashMap::new(),
            blocks: HashMap::new(),
            sweep_at: 1024,
            reports_total: 0,
            bans_total: 0,
        }
    }

    pub fn config(&self) -> &ModConfig {
        &self.config
    }

    /// `now` in whole seconds since the epoch.
    fn secs(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX)
    }

    fn instant(&self, secs: u32) -> Option<Instant> {
        self.epoch.map(|e| e + Duration::from_secs(secs.into()))
    }

    /// The window slice `now` falls in.
    fn slice(&mut self, now: Instant) -> u32 {
        let width = (self.config.strike_window.as_secs() / BUCKETS as u64).max(1);
        let width = u32::try_from(width).unwrap_or(u32::MAX);
        self.secs(now) / width
    }

    fn record(&mut self, now: Instant, key: ClientKey) -> &mut Record {
        if !self.records.contains_key(&key) {
            self.make_room(now);
        }
        let s = self.secs(now);
        let r = self.records.entry(key).or_insert_with(|| Record::new(s));
        r.last_active = s;
        r
    }

    /// Before a new record: forgets what has expired now and then, and at
    /// the cap evicts a batch, plain records first (see the module doc).
    fn make_room(&mut self, now: Instant) {
        if self.records.len() + self.blocks.len() >= self.sweep_at {
            self.sweep(now);
        }
        let max = self.config.max_records.max(1);
        if self.records.len() < max {
            return;
        }
        let batch = (max / 32).max(1);
        let mut order: Vec<(u8, u32, ClientKey)> = self
            .records
            .iter()
            .map(|(&k, r)| (r.keep_rank(now), r.last_active, k))
            .collect();
        if order.len() > batch {
            order.select_nth_unstable_by_key(batch - 1, |&(rank, active, _)| (rank, active));
            order.truncate(batch);
        }
        for (_, _, k) in order {
            self.records.remove(&k);
        }
    }

    /// Forgets what has not been touched for `key_memory`.
    fn sweep(&mut self, now: Instant) {
        let memory = self.config.key_memory;
        let fresh = |t: Instant| now.saturating_duration_since(t) < memory;
        let now_s = self.secs(now);
        let memory_s = u32::try_from(memory.as_secs()).unwrap_or(u32::MAX);
        self.records.retain(|_, r| {
            now_s.saturating_sub(r.last_active) < memory_s
                || r.online_since.is_some()
                || r.banned_until.is_some_and(|u| u > now)
        });
        self.blocks.retain(|_, &mut t| fresh(t));
        self.sweep_at = ((self.records.len() + self.blocks.len()) * 2).max(1024);
    }

    /// Blocks a pair; whether it was blocked already. At the cap, the
    /// oldest blocks make way.
    fn insert_block(&mut self, now: Instant, pair: (ClientKey, ClientKey)) -> bool {
        if let Some(t) = self.blocks.get_mut(&pair) {
            *t = now;
            return true;
        }
        let max = self.config.max_blocks.max(1);
        if self.blocks.len() >= max {
            let memory = self.config.key_memory;
            self.blocks
                .retain(|_, &mut t| now.saturating_duration_since(t) < memory);
        }
        if self.blocks.len() >= max {
            let batch = (max / 32).max(1);
            let mut order: Vec<(Instant, (ClientKey, ClientKey))> =
                self.blocks.iter().map(|(&k, &t)| (t, k)).collect();
            if order.len() > batch {
                order.select_nth_unstable_by_key(batch - 1, |&(t, _)| t);
                order.truncate(batch);
            }
            for (_, k) in order {
                self.blocks.remove(&k);
            }
        }
        self.blocks.insert(pair, now);
        false
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

    /// `key` opened its first connection (it had none open).
    pub fn online(&mut self, now: Instant, key: ClientKey) {
        let s = self.secs(now);
        let r = self.record(now, key);
        r.online_since.get_or_insert(s);
    }

    /// `key` closed its last connection.
    pub fn offline(&mut self, now: Instant, key: ClientKey) {
        let s = self.secs(now);
        if let Some(r) = self.records.get_mut(&key) {
            r.connected = r.connected(s);
            r.online_since = None;
            r.last_active = s;
        }
    }

    /// Notes that `key` was matched with someone: reports are weighed
    /// against how many people a reporter meets.
    pub fn matched(&mut self, now: Instant, key: ClientKey) {
        let slice = self.slice(now);
        self.record(now, key).matches.add(slice);
    }

    /// A stranger call of `key` with `partner` that lasted `length` ended:
    /// one held long enough, with a partner other than its last few, makes
    /// its reports weigh more.
    pub fn call_ended(
        &mut self,
        now: Instant,
        key: ClientKey,
        partner: ClientKey,
        length: Duration,
    ) {
        if length < self.config.held_call || key == partner {
            return;
        }
        let slice = self.slice(now);
        let r = self.record(now, key);
        let p = partner.0;
        // Never 0, the empty slot.
        let fingerprint = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) | 1;
        if r.partners.contains(&fingerprint) {
            return;
        }
        r.partners.rotate_right(1);
        r.partners[0] = fingerprint;
        r.held.add(slice);
    }

    /// Moves what was recorded under a client's previous key (before the
    /// secret rotated) to its current key, so bans survive the rotation.
    pub fn carry_over(&mut self, previous: ClientKey, current: ClientKey) {
        if previous == current {
            return;
        }
        if let Some(old) = self.records.remove(&previous) {
            let max_strikes = self.config.max_strikes;
            let r = self
                .records
                .entry(current)
                .or_insert_with(|| Record::new(old.first_seen));
            r.first_seen = r.first_seen.min(old.first_seen);
            r.connected = r.connected.saturating_add(old.connected);
            r.online_since = match (r.online_since, old.online_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            r.reports_made.merge(old.reports_made);
            r.matches.merge(old.matches);
            r.held.merge(old.held);
            r.strikes.merge(old.strikes, max_strikes);
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
            self.insert_block(now, (reporter, reported));
        }
    }

    /// How much `key`'s reports weigh for what it has shown so far
    /// (thousandths): nothing before `trusted_after` of connection time,
    /// then in proportion to the calls it held.
    pub fn trust(&mut self, now: Instant, key: ClientKey) -> u32 {
        let (s, slice) = (self.secs(now), self.slice(now));
        let trusted_after = u32::try_from(self.config.trusted_after.as_secs()).unwrap_or(u32::MAX);
        let full = self.config.held_calls_for_full;
        let Some(r) = self.records.get_mut(&key) else {
            return if trusted_after == 0 && full == 0 {
                FULL
            } else {
                0
            };
        };
        if r.connected(s) < trusted_after {
            return 0;
        }
        if full == 0 {
            return FULL;
        }
        FULL * r.held.total(slice).min(full) / full
    }

    /// Records a report and blocks the pair, without striking: the weight
    /// the strike carries and when the reporter arrived, or `None` for a
    /// repeated report. With a shared backplane the strike itself is
    /// counted by the store.
    pub fn weigh(
        &mut self,
        now: Instant,
        reporter: &Reporter,
        reported: ClientKey,
    ) -> Option<Weighed> {
        self.reports_total += 1;
        if reporter.key == reported {
            // One address behind both (a shared network): nothing to weigh.
            return None;
        }
        if self.insert_block(now, (reporter.key, reported)) {
            return None;
        }
        let slice = self.slice(now);
        let full_weight_reports = self.config.full_weight_reports;
        let r = self.record(now, reporter.key);
        r.reports_made.add(slice);
        let made = r.reports_made.total(slice);
        let met = r.matches.total(slice);
        let first_seen = r.first_seen;
        let mut w = self.trust(now, reporter.key);
        if made > full_weight_reports {
            w = w * full_weight_reports / made;
        }
        // Reporting most of the people one meets is not a signal about them.
        if met >= 5 && made * 2 > met {
            w /= 4;
        }
        Some(Weighed {
            weight: w,
            arrived: self.instant(first_seen).unwrap_or(now),
        })
    }

    /// The rule a shared store applies to strikes (see [`Strikes`]);
    /// `reports` is the reporter's report allowance, charged there.
    pub fn strike_rule(&self, reports: (u32, Duration)) -> StrikeRule {
        let c = &self.config;
        StrikeRule {
            window: c.strike_window,
            reporters: c.reporters_for_ban,
            weight: c.weight_for_ban.saturating_mul(FULL),
            ban_lengths: c.ban_lengths.clone(),
            reports,
            together: c.arrived_together,
            max_strikes: c.max_strikes.min(64),
        }
    }

    /// `reporter` reports `reported`.
    pub fn report(
        &mut self,
        now: Instant,
        reporter: &Reporter,
        reported: ClientKey,
    ) -> ReportOutcome {
        let Some(w) = self.weigh(now, reporter, reported) else {
            return ReportOutcome::Repeated;
        };
        let rule = self.strike_rule((0, Duration::ZERO));
        let strike = Strike {
            at: now,
            reporter: reporter.key,
            network: reporter.network,
            previous_network: reporter.previous_network,
            arrived: w.arrived,
            room: reporter.room,
            weight: w.weight,
        };
        let target = self.record(now, reported);
        match target.strikes.add(strike, &rule) {
            Added::Repeated => ReportOutcome::Repeated,
            Added::NotKept | Added::Kept => ReportOutcome::Strike { weight: w.weight },
            Added::Ban => {
                let lengths = &rule.ban_lengths;
                let length = lengths
                    .get(target.bans as usize)
                    .or(lengths.last())
                    .copied()
                    .unwrap_or(Duration::from_secs(3600));
                let until = now + length;
                target.bans = target.bans.saturating_add(1);
                target.banned_until = Some(until);
                self.bans_total += 1;
                ReportOutcome::Banned { until }
            }
        }
    }

    /// How many client records are kept.
    pub fn records(&self) -> usize {
        self.records.len()
    }

    /// How many blocked pairs are kept.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// What `key`'s record holds, by size: (window buckets of its three
    /// counters together, strikes). For tests of flat memory.
    pub fn record_size(&self, key: ClientKey) -> Option<(usize, usize)> {
        self.records.get(&key).map(|r| {
            let buckets = r.reports_made.len() + r.matches.len() + r.held.len();
            (buckets, r.strikes.len())
        })
    }
}

#[cfg(test)]
mod tests;
