//! The strike rule: when reports against one client add up to a ban.
//!
//! This is the one copy of the rule in Rust; [`STRIKE_LUA`] is its twin
//! for a shared Redis store (the server's backplane), run in the reported
//! client's slot, and the two must agree (a differential test in
//! `earshot-server/tests/store_rules.rs` feeds both the same strikes).
//!
//! - A reporter's strike counts once within the window (by client key).
//! - A strike of weight 0 (a reporter who has shown nothing yet, see
//!   [`super::Moderation::weigh`]) is not kept: it can never help a ban.
//! - At most `max_strikes` are kept: when full, the lightest (then the
//!   oldest) makes way for a heavier one, so a flood of light reports
//!   cannot push out the heavy ones.
//! - Strikes are grouped into reporters: two strikes are one reporter when
//!   they come from one network (the /48 or /24 key, under this secret or
//!   the previous one), from one room, or from reporters first seen within
//!   `together` of each other; grouping is transitive. A reporter weighs
//!   as much as its heaviest strike.
//! - A ban needs `reporters` such reporters weighing `weight` together.

use std::time::{Duration, Instant};

use crate::ClientKey;

/// The strike script for Redis, the twin of [`Strikes::add`]; see the
/// comment at its top for its arguments ([`strike_args`] makes them).
pub const STRIKE_LUA: &str = include_str!("strike.lua");

/// The strike script's ARGV: a strike by `reporter` (see
/// [`crate::backplane::Request::Strike`]) at `now` (ms since the epoch).
#[allow(clippy::too_many_arguments)]
pub fn strike_args(
    reporter: &ClientKey,
    weight: u32,
    network: &ClientKey,
    previous_network: Option<&ClientKey>,
    age: Duration,
    room: Option<u64>,
    rule: &StrikeRule,
    now: u64,
) -> Vec<String> {
    use crate::backplane::hex;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let lengths: Vec<String> = rule
        .ban_lengths
        .iter()
        .map(|&d| ms(d).max(1).to_string())
        .collect();
    vec![
        hex(reporter),
        weight.to_string(),
        ms(rule.window).max(1).to_string(),
        rule.reporters.to_string(),
        rule.weight.to_string(),
        lengths.join(","),
        hex(network),
        previous_network.map_or("-".to_owned(), hex),
        ms(age).to_string(),
        room.map_or("-".to_owned(), |r| format!("{r:016x}")),
        ms(rule.together).to_string(),
        rule.max_strikes.to_string(),
        now.to_string(),
    ]
}

/// When pooled strikes ban a client.
#[derive(Debug, Clone, PartialEq)]
pub struct StrikeRule {
    pub window: Duration,
    /// Distinct reporters (after grouping) needed for a ban.
    pub reporters: usize,
    /// Total weight needed, in thousandths.
    pub weight: u32,
    pub ban_lengths: Vec<Duration>,
    /// The reporter's report allowance (a burst, then one per interval),
    /// shared by all its connections on all nodes: over it, the strike does
    /// not count. Charged by the store only.
    pub reports: (u32, Duration),
    /// Reporters first seen within this of each other are one (zero: off).
    pub together: Duration,
    /// Most strikes kept per reported client.
    pub max_strikes: usize,
}

/// One reporter's strike against a client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Strike {
    /// When it was made.
    pub at: Instant,
    pub reporter: ClientKey,
    /// The reporter's network key (its /48 or /24).
    pub network: ClientKey,
    /// The same under the previous secret, while it is honoured.
    pub previous_network: Option<ClientKey>,
    /// When the reporter's node first saw the reporter.
    pub arrived: Instant,
    /// The room the report was made in; `None` for a stranger call.
    pub room: Option<u64>,
    /// Thousandths of a full report.
    pub weight: u32,
}

/// What one strike did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// This reporter already has a strike in the window.
    Repeated,
    /// Weight 0, or no heavier than every kept strike when the book is full.
    NotKept,
    /// Kept; no ban yet.
    Kept,
    /// Completed a ban: the strikes are cleared.
    Ban,
}

/// The strikes against one client within the window, bounded.
#[derive(Debug, Clone, Default)]
pub struct Strikes(Vec<Strike>);

impl Strikes {
    /// Records `s` (made at `s.at`) under `rule`.
    pub fn add(&mut self, s: Strike, rule: &StrikeRule) -> Added {
        self.expire(s.at, rule.window);
        if self.0.iter().any(|k| k.reporter == s.reporter) {
            return Added::Repeated;
        }
        if s.weight == 0 || rule.max_strikes == 0 {
            return Added::NotKept;
        }
        if self.0.len() >= rule.max_strikes {
            let lightest = self
                .0
                .iter()
                .enumerate()
                .min_by_key(|(_, k)| (k.weight, k.at, k.reporter.0))
                .map(|(i, k)| (i, k.weight));
            match lightest {
                Some((i, w)) if s.weight > w => {
                    self.0.remove(i);
                }
                _ => return Added::NotKept,
            }
        }
        self.0.push(s);
        let (reporters, weight) = tally(&self.0, rule.together);
        if reporters >= rule.reporters && weight >= rule.weight {
            self.0.clear();
            self.0.shrink_to_fit();
            return Added::Ban;
        }
        Added::Kept
    }

    /// Forgets strikes older than the window.
    pub fn expire(&mut self, now: Instant, window: Duration) {
        self.0
            .retain(|k| now.saturating_duration_since(k.at) < window);
        if self.0.is_empty() {
            self.0.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `reporter` has a strike here (within the window, once
    /// expired ones are gone).
    pub fn has(&self, reporter: ClientKey) -> bool {
        self.0.iter().any(|k| k.reporter == reporter)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes in a previous key's strikes (before the secret rotated).
    pub fn merge(&mut self, other: Strikes, max: usize) {
        for s in other.0 {
            if !self.0.iter().any(|k| k.reporter == s.reporter) {
                self.0.push(s);
            }
        }
        self.0.sort_by_key(|k| std::cmp::Reverse((k.weight, k.at)));
        self.0.truncate(max);
    }

    /// Reporters after grouping, and their weight together.
    pub fn tally(&self, together: Duration) -> (usize, u32) {
        tally(&self.0, together)
    }
}

/// Whether two strikes come from one reporter as far as a ban goes.
fn same_reporter(a: &Strike, b: &Strike, together: Duration) -> bool {
    a.network == b.network
        || a.previous_network == Some(b.network)
        || b.previous_network == Some(a.network)
        || (a.room.is_some() && a.room == b.room)
        || (!together.is_zero() && abs_diff(a.arrived, b.arrived) < together)
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    a.saturating_duration_since(b)
        .max(b.saturating_duration_since(a))
}

/// Groups strikes into reporters (transitively): how many, and the sum of
/// each one's heaviest strike.
fn tally(strikes: &[Strike], together: Duration) -> (usize, u32) {
    let n = strikes.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &[usize], mut i: usize) -> usize {
        while parent[i] != i {
            i = parent[i];
        }
        i
    }
    for i in 0..n {
        for j in i + 1..n {
            if same_reporter(&strikes[i], &strikes[j], together) {
                let (a, b) = (find(&parent, i), find(&parent, j));
                if a != b {
                    parent[b] = a;
                }
            }
        }
    }
    let mut best = vec![None::<u32>; n];
    for (i, s) in strikes.iter().enumerate() {
        let root = find(&parent, i);
        best[root] = Some(best[root].unwrap_or(0).max(s.weight));
    }
    let reporters = best.iter().flatten().count();
    let weight = best
        .iter()
        .flatten()
        .fold(0u32, |t, &w| t.saturating_add(w));
    (reporters, weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> StrikeRule {
        StrikeRule {
            window: Duration::from_secs(24 * 3600),
            reporters: 3,
            weight: 3000,
            ban_lengths: vec![Duration::from_secs(3600)],
            reports: (10, Duration::from_secs(120)),
            together: Duration::from_secs(60),
            max_strikes: 4,
        }
    }

    fn strike(t0: Instant, n: u8, weight: u32) -> Strike {
        Strike {
            at: t0,
            reporter: ClientKey([n; 16]),
            network: ClientKey([n; 16]),
            previous_network: None,
            arrived: t0 - Duration::from_secs(3600) + Duration::from_secs(120 * u64::from(n)),
            room: None,
            weight,
        }
    }

    #[test]
    fn three_reporters_of_full_weight_ban() {
        let t0 = Instant::now() + Duration::from_secs(7200);
        let mut s = Strikes::default();
        assert_eq!(s.add(strike(t0, 1, 1000), &rule()), Added::Kept);
        assert_eq!(s.add(strike(t0, 1, 1000), &rule()), Added::Repeated);
        assert_eq!(s.add(strike(t0, 2, 1000), &rule()), Added::Kept);
        assert_eq!(s.add(strike(t0, 3, 1000), &rule()), Added::Ban);
        assert!(s.is_empty());
    }

    #[test]
    fn one_network_one_room_or_one_arrival_is_one_reporter() {
        let t0 = Instant::now() + Duration::from_secs(7200);
        let mut s = Strikes::default();
        let mut a = strike(t0, 1, 1000);
        let mut b = strike(t0, 2, 1000);
        let mut c = strike(t0, 3, 1000);
        b.network = a.network;
        s.add(a, &rule());
        s.add(b, &rule());
        assert_eq!(s.tally(rule().together), (1, 1000), "one network");
        let mut s = Strikes::default();
        (a.room, b.room, c.room) = (Some(7), Some(7), Some(7));
        b.network = ClientKey([2; 16]);
        s.add(a, &rule());
        s.add(b, &rule());
        assert_eq!(s.add(c, &rule()), Added::Kept, "one room");
        assert_eq!(s.tally(rule().together), (1, 1000));
        let mut s = Strikes::default();
        (a.room, b.room, c.room) = (None, None, None);
        b.arrived = a.arrived + Duration::from_secs(59);
        c.arrived = b.arrived + Duration::from_secs(59);
        s.add(a, &rule());
        s.add(b, &rule());
        assert_eq!(
            s.add(c, &rule()),
            Added::Kept,
            "arrived together, in a chain"
        );
        assert_eq!(s.tally(rule().together), (1, 1000));
    }

    #[test]
    fn weightless_strikes_are_not_kept_and_light_ones_make_way() {
        let t0 = Instant::now() + Duration::from_secs(7200);
        let mut s = Strikes::default();
        assert_eq!(s.add(strike(t0, 1, 0), &rule()), Added::NotKept);
        for n in 2..6 {
            assert_eq!(s.add(strike(t0, n, 100), &rule()), Added::Kept);
        }
        assert_eq!(s.add(strike(t0, 6, 100), &rule()), Added::NotKept, "full");
        assert_eq!(s.len(), 4);
        s.add(strike(t0, 7, 1000), &rule());
        s.add(strike(t0, 8, 1000), &rule());
        assert_eq!(s.add(strike(t0, 9, 1000), &rule()), Added::Ban);
    }
}
