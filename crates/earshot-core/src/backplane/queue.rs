//! The shared stranger queue, split into lanes.
//!
//! **Lanes.** A lane is one sorted set: each waiter's entry (its
//! connection, expiry, node and token, client key, when it takes anyone,
//! country and interests) by arrival, so that one read of the oldest
//! brings all a join needs, and one script ([`PAIR_LUA`], the twin of
//! [`Lane::pair`]) pairs atomically inside it: it examines the oldest
//! waiters, drops expired ones and those of dead nodes, skips whom the
//! joiner avoids, and takes the first compatible one out of the lane, or
//! queues the joiner. A Redis Cluster spreads the lanes over its primaries.
//! On a single `redis-server` there is one lane, and pairing is exactly
//! the single shared queue it always was.
//!
//! **Meeting across lanes.** With several lanes, lane 0 is where everyone
//! meets. A node that sees few searches (under [`BUSY_JOINS`] a second)
//! sends them all to lane 0: at low load the queue is one queue, and
//! people meet at once. A busy node sends each search to its home lane
//! ([`home_lane`]: by its first interest, so people who share it start
//! together; else at random), where the crowd is; a waiter not matched
//! there within [`MEET_AFTER`] moves to lane 0 (taken out of its lane
//! first: if someone took it meanwhile, the move stops there). So two
//! compatible people searching at the same time are in lane 0 together
//! within `MEET_AFTER`, far inside the interest wait, whichever lanes they
//! started in; at high load most pairs are made in the home lanes, spread
//! over the primaries, and lane 0 sees only the leftovers. Interests keep
//! their rule: a shared interest first; anyone once the interest wait is
//! over (`open_at`), in whichever lane the waiter is by then.
//!
//! **What the script does not check.** A waiter's own ban, and whom it
//! avoids, were checked when it joined ([`super::admission`], in its
//! client's slot); the pairing script sees only the joiner's side of the
//! keep-apart list, which is enough because every keep-apart and block is
//! written to both clients. Node liveness comes from the joiner's node's
//! view ([`super::nodes::Liveness`]).
//!
//! Time is an argument (milliseconds since the epoch): `open_at`, entry
//! expiry, and arrival order all come from the nodes' clocks.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::Deserialize;

use super::nodes::Liveness;
use super::{
    BackplaneError, MAX_REMOTE_BYTES, NodeId, Partner, check_country, check_interests, unhex,
};
use crate::protocol::Country;
use crate::{ClientKey, ConnId};

/// The pairing script (see its comment for the arguments). Leaving a lane
/// is a plain `ZREM` of the entry ([`Lane::leave`]).
pub const PAIR_LUA: &str = include_str!("pair.lua");
/// Renews waiters' entries.
pub const TOUCH_LUA: &str = include_str!("queue_touch.lua");
/// Removes dead and expired waiters.
pub const SWEEP_LUA: &str = include_str!("queue_sweep.lua");

/// How long a waiter stays in its home lane before it moves to lane 0.
pub const MEET_AFTER: Duration = Duration::from_millis(300);

/// Searches a second a node must see before it spreads them over home
/// lanes; below this, they all go to lane 0.
pub const BUSY_JOINS: u32 = 200;

/// The lane a search starts in, on a node that saw `joins_per_sec`
/// searches a second lately: lane 0 when not busy, its home lane when busy.
pub fn first_lane(lanes: u16, interests: &[String], random: u64, joins_per_sec: u32) -> u16 {
    if joins_per_sec < BUSY_JOINS {
        0
    } else {
        home_lane(lanes, interests, random)
    }
}

/// Searches per second, over the last whole second and the current one.
#[derive(Debug, Clone, Default)]
pub struct JoinRate {
    /// The current second (ms / 1000), and counts in it and the one before.
    second: u64,
    now: u32,
    before: u32,
}

impl JoinRate {
    /// Counts a search at `now` (ms).
    pub fn note(&mut self, now: u64) {
        self.advance(now);
        self.now = self.now.saturating_add(1);
    }

    /// Searches a second lately: the busier of the last second and this one.
    pub fn per_sec(&mut self, now: u64) -> u32 {
        self.advance(now);
        self.before.max(self.now)
    }

    fn advance(&mut self, now: u64) {
        let second = now / 1000;
        if second != self.second {
            self.before = if second == self.second + 1 {
                self.now
            } else {
                0
            };
            self.now = 0;
            self.second = second;
        }
    }
}

/// The lane a search starts in: with one lane, lane 0; otherwise one of
/// lanes 1.. by the first interest (the same on every node), or `random`.
pub fn home_lane(lanes: u16, interests: &[String], random: u64) -> u16 {
    if lanes <= 1 {
        return 0;
    }
    let pick = match interests.first() {
        // FNV-1a: stable across processes and versions.
        Some(tag) => tag.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }),
        None => random,
    };
    1 + (pick % u64::from(lanes - 1)) as u16
}

/// Someone joining a lane, as the pairing script takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joiner {
    pub conn: ConnId,
    pub node: NodeId,
    pub token: String,
    pub key: ClientKey,
    /// When it takes anyone (ms): now, or when its interest wait ends.
    pub open_at: u64,
    pub country: Option<Country>,
    /// Normalised interests (letters, digits, spaces, `-`).
    pub tags: Vec<String>,
    /// When its entry expires unless renewed (ms).
    pub expiry: u64,
    /// When it first searched (ms): its place in the queue.
    pub arrival: u64,
    /// The entry it may wait under in this lane already (a join again:
    /// it keeps that one's place).
    pub again: Option<String>,
}

impl Joiner {
    /// Its entry in the lane.
    pub fn entry(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            self.conn.0,
            self.expiry,
            self.node,
            self.token,
            super::hex(&self.key),
            self.open_at,
            self.country.as_ref().map_or("", |c| c.as_str()),
            self.tags.join(",")
        )
    }

    /// The pairing script's ARGV.
    pub fn args(&self, now: u64, limit: usize, avoid: &str, live: &Liveness) -> Vec<String> {
        vec![
            self.entry(),
            self.tags.join(","),
            self.open_at.to_string(),
            now.to_string(),
            limit.to_string(),
            self.arrival.to_string(),
            self.again.clone().unwrap_or_default(),
            avoid.to_owned(),
            live.dead_arg(),
            live.born().to_string(),
        ]
    }
}

/// `entry` with a new expiry: what renewing it writes.
pub fn renewed(entry: &str, expiry: u64) -> Option<String> {
    let (conn, rest) = entry.split_once('|')?;
    let (_, rest) = rest.split_once('|')?;
    Some(format!("{conn}|{expiry}|{rest}"))
}

/// One lane, as the store holds it: the rule the scripts mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lane {
    /// (arrival, entry): the sorted set (ties by entry as text, as Redis).
    order: BTreeSet<(u64, String)>,
    /// entry -> arrival.
    scores: HashMap<String, u64>,
}

/// A waiter's entry, parsed.
struct Entry<'a> {
    conn: &'a str,
    expiry: u64,
    node: NodeId,
    token: &'a str,
    key: &'a str,
    open_at: u64,
    country: &'a str,
    tags: &'a str,
}

fn parse(e: &str) -> Option<Entry<'_>> {
    fn digits(s: Option<&str>) -> Option<&str> {
        s.filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
    }
    fn hex(s: Option<&str>) -> Option<&str> {
        s.filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
    }
    let num = |s: Option<&str>| digits(s).and_then(|s| s.parse::<u64>().ok());
    let mut p = e.splitn(8, '|');
    let conn = digits(p.next())?;
    let expiry = num(p.next())?;
    let node = num(p.next())?;
    let token = hex(p.next())?;
    let key = hex(p.next())?;
    let open_at = num(p.next())?;
    let country = p
        .next()
        .filter(|s| s.bytes().all(|b| b.is_ascii_alphabetic()))?;
    let tags = p.next()?;
    Some(Entry {
        conn,
        expiry,
        node: NodeId::try_from(node).ok()?,
        token,
        key,
        open_at,
        country,
        tags,
    })
}

impl Lane {
    /// Waiters in the lane.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The waiting connections, oldest first.
    pub fn waiting(&self) -> Vec<ConnId> {
        self.order
            .iter()
            .filter_map(|(_, e)| parse(e)?.conn.parse().ok().map(ConnId))
            .collect()
    }

    fn remove(&mut self, e: &str) -> bool {
        match self.scores.remove(e) {
            Some(score) => {
                self.order.remove(&(score, e.to_owned()));
                true
            }
            None => false,
        }
    }

    /// Pairs `j` or queues it: the rule of `pair.lua`, with the same reply.
    pub fn pair(
        &mut self,
        j: &Joiner,
        now: u64,
        limit: usize,
        avoid: &str,
        live: &Liveness,
    ) -> String {
        let me = j.conn.0.to_string();
        let mut score = j.arrival;
        if let Some(old) = &j.again
            && let Some(&s) = self.scores.get(old)
        {
            score = s;
            self.remove(old);
        }
        let avoid: BTreeSet<&str> = avoid.split(',').filter(|s| !s.is_empty()).collect();
        let open = j.open_at <= now;
        let candidates: Vec<(u64, String)> = self.order.iter().take(limit).cloned().collect();
        for (_, c) in candidates {
            let (keep, matched) = match parse(&c) {
                None => (false, None),
                Some(e) if e.expiry <= now || live.is_dead(e.node, e.token) => (false, None),
                Some(e) => {
                    let avoided = avoid.contains(format!("c{}", e.conn).as_str())
                        || avoid.contains(format!("k{}", e.key).as_str());
                    if e.conn == me || avoided {
                        (true, None)
                    } else {
                        let theirs: BTreeSet<&str> =
                            e.tags.split(',').filter(|s| !s.is_empty()).collect();
                        let shared: Vec<&str> = if e.tags.is_empty() {
                            Vec::new()
                        } else {
                            j.tags
                                .iter()
                                .map(String::as_str)
                                .filter(|t| theirs.contains(t))
                                .collect()
                        };
                        let they_open = e.tags.is_empty() || e.open_at <= now;
                        if !shared.is_empty() || ((j.tags.is_empty() || open) && they_open) {
                            let country = if e.country.is_empty() {
                                "null".to_owned()
                            } else {
                                format!("\"{}\"", e.country)
                            };
                            let list = if shared.is_empty() {
                                "[]".to_owned()
                            } else {
                                format!("[\"{}\"]", shared.join("\",\""))
                            };
                            let reply = format!(
                                "{{\"r\":\"matched\",\"conn\":\"{}\",\"key\":\"{}\",\"shared\":{list},\"country\":{country}}}",
                                e.conn, e.key
                            );
                            (false, Some(reply))
                        } else {
                            (true, None)
                        }
                    }
                }
            };
            if !keep {
                self.remove(&c);
            }
            if let Some(reply) = matched {
                return reply;
            }
        }
        let entry = j.entry();
        self.order.insert((score, entry.clone()));
        self.scores.insert(entry, score);
        r#"{"r":"queued"}"#.to_owned()
    }

    /// Takes out the waiter with this entry: whether it was there (a
    /// plain `ZREM`).
    pub fn leave(&mut self, entry: &str) -> bool {
        self.remove(entry)
    }

    /// Renews entries (`(old, new)`) that are still here, each keeping its
    /// place: how many (`queue_touch.lua`).
    pub fn touch(&mut self, pairs: &[(String, String)]) -> usize {
        let mut n = 0;
        for (old, new) in pairs {
            if let Some(&score) = self.scores.get(old) {
                self.remove(old);
                self.order.insert((score, new.clone()));
                self.scores.insert(new.clone(), score);
                n += 1;
            }
        }
        n
    }

    /// Removes dead and expired waiters among the oldest `limit`: how many
    /// (`queue_sweep.lua`).
    pub fn sweep(&mut self, now: u64, limit: usize, live: &Liveness) -> usize {
        let oldest: Vec<(u64, String)> = self.order.iter().take(limit).cloned().collect();
        let mut removed = 0;
        for (_, e) in oldest {
            let gone = parse(&e).is_none_or(|p| p.expiry <= now || live.is_dead(p.node, p.token));
            if gone {
                self.remove(&e);
                removed += 1;
            }
        }
        removed
    }

    /// Every entry with its arrival, oldest first (to compare with a real
    /// store).
    pub fn dump(&self) -> Vec<(String, u64)> {
        self.order.iter().map(|(s, e)| (e.clone(), *s)).collect()
    }
}

/// What the pairing script answered.
#[derive(Debug, Clone, PartialEq)]
pub enum PairReply {
    Queued,
    Banned { ttl: Duration },
    Limited { retry: Duration },
    Matched(Partner),
}

#[derive(Deserialize)]
#[serde(tag = "r", rename_all = "snake_case", deny_unknown_fields)]
enum PairWire {
    Queued,
    Banned {
        ms: u64,
    },
    Limited {
        ms: u64,
    },
    Matched {
        conn: String,
        key: String,
        shared: Vec<String>,
        #[serde(default)]
        country: Option<String>,
    },
}

/// Decodes the pairing script's JSON reply.
pub fn decode_pair_reply(text: &str) -> Result<PairReply, BackplaneError> {
    if text.len() > MAX_REMOTE_BYTES {
        return Err(BackplaneError::TooLarge);
    }
    let wire: PairWire = serde_json::from_str(text).map_err(|_| BackplaneError::Malformed)?;
    Ok(match wire {
        PairWire::Queued => PairReply::Queued,
        PairWire::Banned { ms } => PairReply::Banned {
            ttl: Duration::from_millis(ms.max(1)),
        },
        PairWire::Limited { ms } => PairReply::Limited {
            retry: Duration::from_millis(ms.max(1)),
        },
        PairWire::Matched {
            conn,
            key,
            shared,
            country,
        } => PairReply::Matched(Partner {
            conn: ConnId(conn.parse().map_err(|_| BackplaneError::Invalid)?),
            key: unhex(&key)?,
            shared: check_interests(shared)?,
            country: check_country(country)?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joiner(conn: u64, tags: &[&str], now: u64) -> Joiner {
        Joiner {
            conn: ConnId(conn),
            node: 1,
            token: super::super::nodes::new_token(now, conn),
            key: ClientKey([conn as u8; 16]),
            open_at: if tags.is_empty() { now } else { now + 5000 },
            country: Country::new("de"),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            expiry: now + 120_000,
            arrival: now,
            again: None,
        }
    }

    fn matched(reply: &str) -> Option<u64> {
        match decode_pair_reply(reply) {
            Ok(PairReply::Matched(p)) => Some(p.conn.0),
            _ => None,
        }
    }

    #[test]
    fn the_oldest_compatible_waiter_is_taken() {
        let live = Liveness::default();
        let mut lane = Lane::default();
        let now = 1_000_000;
        assert_eq!(
            lane.pair(&joiner(1, &["chess"], now), now, 64, "", &live),
            r#"{"r":"queued"}"#
        );
        assert_eq!(
            lane.pair(&joiner(2, &[], now + 1), now + 1, 64, "", &live),
            r#"{"r":"queued"}"#
        );
        // A chess player meets the first; an untagged one, the second.
        assert_eq!(
            matched(&lane.pair(
                &joiner(3, &["go", "chess"], now + 2),
                now + 2,
                64,
                "",
                &live
            )),
            Some(1)
        );
        assert_eq!(
            matched(&lane.pair(&joiner(4, &[], now + 3), now + 3, 64, "", &live)),
            Some(2)
        );
        assert!(lane.is_empty());
    }

    #[test]
    fn avoided_dead_and_expired_waiters_are_not_met() {
        let now = 2_000_000;
        let mut lane = Lane::default();
        let live = Liveness::default();
        lane.pair(&joiner(1, &[], now), now, 64, "", &live);
        let avoid = format!("c1,k{}", super::super::hex(&ClientKey([9; 16])));
        assert_eq!(
            lane.pair(&joiner(2, &[], now), now, 64, &avoid, &live),
            r#"{"r":"queued"}"#
        );
        // Both expire.
        assert_eq!(lane.sweep(now + 120_000, 64, &live), 2);
        assert!(lane.is_empty());
    }

    #[test]
    fn a_quiet_node_sends_everyone_to_lane_0() {
        let mut rate = JoinRate::default();
        for i in 0..BUSY_JOINS {
            rate.note(5_000 + u64::from(i));
        }
        assert_eq!(rate.per_sec(5_999), BUSY_JOINS);
        assert_eq!(rate.per_sec(6_500), BUSY_JOINS, "the last second counts");
        assert_eq!(rate.per_sec(8_000), 0);
        assert_eq!(first_lane(16, &[], 7, 0), 0);
        assert_ne!(first_lane(16, &[], 7, BUSY_JOINS), 0);
    }

    #[test]
    fn home_lanes_follow_the_first_interest() {
        let chess = vec!["chess".to_owned(), "go".to_owned()];
        assert_eq!(home_lane(1, &chess, 5), 0);
        let a = home_lane(16, &chess, 1);
        assert_eq!(a, home_lane(16, &chess[..1], 999));
        assert!((1..16).contains(&a));
        assert!((1..16).contains(&home_lane(16, &[], 12345)));
    }
}
