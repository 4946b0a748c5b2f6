//! The stranger queue: who waits, and who is paired with whom.
//!
//! Fairness is first come, first served within each *lane*: one lane per
//! interest tag, and one `open` lane of people willing to talk to anyone
//! (everyone without tags, and people with tags once their interest wait is
//! over). A join scans at most `scan_limit` live entries of each lane it
//! looks at, so it costs O(1) for an untagged user and O(tags) with tags,
//! whatever the queue length.
//!
//! Lanes delete lazily: an entry is live while the waiter's current `seq`
//! matches it; dead entries are popped when met at the front and the lane is
//! compacted when dead ones outnumber live ones, so removal is O(1)
//! amortised.
//!
//! Invariants: nobody waits twice; nobody is paired with themselves; a pair
//! for which `blocked` answers `Some` is never made.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ConnId;

/// Asked before pairing two people: `Some(until)` forbids the pair until then.
pub trait Blocked {
    fn blocked_until(&self, a: ConnId, b: ConnId) -> Option<Instant>;
}

impl<F: Fn(ConnId, ConnId) -> Option<Instant>> Blocked for F {
    fn blocked_until(&self, a: ConnId, b: ConnId) -> Option<Instant> {
        self(a, b)
    }
}

/// Two people to put in a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pairing {
    /// The one who was already waiting.
    pub waiting: ConnId,
    /// The one whose join (or timer) made the pair.
    pub joining: ConnId,
    /// The interests they share, in `joining`'s order.
    pub shared: Vec<String>,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    tags: Vec<String>,
    /// In the open lane: will talk to anyone.
    open: bool,
}

#[derive(Debug, Default)]
struct Lane {
    entries: VecDeque<(u64, ConnId)>,
    live: usize,
}

impl Lane {
    fn push(&mut self, seq: u64, id: ConnId) {
        self.entries.push_back((seq, id));
        self.live += 1;
    }

    fn compact_if_sparse(&mut self, waiting: &HashMap<ConnId, Waiter>) {
        if self.entries.len() > 2 * self.live + 32 {
            self.entries.retain(|&(seq, id)| is_live(waiting, seq, id));
        }
    }
}

fn is_live(waiting: &HashMap<ConnId, Waiter>, seq: u64, id: ConnId) -> bool {
    waiting.get(&id).is_some_and(|w| w.seq == seq)
}

/// What a lane scan found.
#[derive(Default)]
struct Scan {
    /// The oldest compatible waiter: (seq, id).
    best: Option<(u64, ConnId)>,
    /// The earliest time a blocked candidate becomes allowed.
    retry_at: Option<Instant>,
}

impl Scan {
    fn lane(
        &mut self,
        lane: &mut Lane,
        waiting: &HashMap<ConnId, Waiter>,
        me: ConnId,
        scan_limit: usize,
        blocked: &impl Blocked,
    ) {
        while let Some(&(seq, id)) = lane.entries.front() {
            if is_live(waiting, seq, id) {
                break;
            }
            lane.entries.pop_front();
        }
        let mut examined = 0;
        for &(seq, id) in &lane.entries {
            if examined >= scan_limit {
                break;
            }
            if id == me || !is_live(waiting, seq, id) {
                continue;
            }
            examined += 1;
            if let Some(until) = blocked.blocked_until(me, id) {
                self.retry_at = Some(self.retry_at.map_or(until, |r| r.min(until)));
                continue;
            }
            if self.best.is_none_or(|(best_seq, _)| seq < best_seq) {
                self.best = Some((seq, id));
            }
            // Lanes are in arrival order: the first compatible one is the oldest here.
            break;
        }
    }
}

/// Tunables of the queue.
#[derive(Debug, Clone)]
pub struct MatchConfig {
    /// How long someone with interests waits for a shared one before taking anyone.
    pub interest_wait: Duration,
    /// How many live waiters one lane scan looks at before giving up.
    pub scan_limit: usize,
}

impl Default for MatchConfig {
    fn default() -> Self {
        MatchConfig {
            interest_wait: Duration::from_secs(5),
            scan_limit: 64,
        }
    }
}

/// The queue of people looking for a stranger.
#[derive(Debug)]
pub struct Matchmaker {
    config: MatchConfig,
    next_seq: u64,
    waiting: HashMap<ConnId, Waiter>,
    open: Lane,
    tags: HashMap<String, Lane>,
    /// When tagged waiters open up to anyone. Deadlines are in join order.
    fallbacks: VecDeque<(Instant, u64, ConnId)>,
    /// When a waiter who was blocked from someone should look again.
    retries: BinaryHeap<Reverse<(Instant, u64, ConnId)>>,
}

impl Matchmaker {
    pub fn new(config: MatchConfig) -> Matchmaker {
        Matchmaker {
            config,
            next_seq: 0,
            waiting: HashMap::new(),
            open: Lane::default(),
            tags: HashMap::new(),
            fallbacks: VecDeque::new(),
            retries: BinaryHeap::new(),
        }
    }

    /// How many people are waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn is_waiting(&self, id: ConnId) -> bool {
        self.waiting.contains_key(&id)
    }

    /// Everyone waiting, in no particular order.
    pub fn waiting(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.waiting.keys().copied()
    }

    /// Pairs `id` with the best waiting partner, or puts it in the queue.
    ///
    /// `tags` must be normalised (see `protocol::normalize_interests`).
    /// Joining while already waiting restarts the wait.
    pub fn join(
        &mut self,
        now: Instant,
        id: ConnId,
        tags: Vec<String>,
        blocked: &impl Blocked,
    ) -> Option<Pairing> {
        self.leave(id);
        let open = tags.is_empty();
        let scan = self.scan(id, &tags, open, blocked);
        if let Some((_, partner)) = scan.best {
            return Some(self.pair(partner, id, &tags));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        for tag in &tags {
            self.tags.entry(tag.clone()).or_default().push(seq, id);
        }
        if open {
            self.open.push(seq, id);
        } else {
            self.fallbacks
                .push_back((now + self.config.interest_wait, seq, id));
        }
        if let Some(at) = scan.retry_at {
            self.retries.push(Reverse((at, seq, id)));
        }
        self.waiting.insert(id, Waiter { seq, tags, open });
        None
    }

    /// Takes `id` out of the queue. Returns whether it was waiting.
    /// Drops entries of people no longer waiting and gives back the spare
    /// room a crowd left in the tables (see `Switchboard::compact`).
    pub fn compact(&mut self) {
        let waiting = &self.waiting;
        self.open
            .entries
            .retain(|&(seq, id)| is_live(waiting, seq, id));
        self.open.entries.shrink_to_fit();
        for lane in self.tags.values_mut() {
            lane.entries.retain(|&(seq, id)| is_live(waiting, seq, id));
            lane.entries.shrink_to_fit();
        }
        self.fallbacks
            .retain(|&(_, seq, id)| is_live(waiting, seq, id));
        self.fallbacks.shrink_to_fit();
        self.retries
            .retain(|Reverse((_, seq, id))| is_live(waiting, *seq, *id));
        self.retries.shrink_to_fit();
        self.waiting.shrink_to_fit();
        self.tags.shrink_to_fit();
    }

    pub fn leave(&mut self, id: ConnId) -> bool {
        self.take(id).is_some()
    }

    /// The next time `handle_timeout` has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let fallback = self.fallbacks.front().map(|&(at, _, _)| at);
        let retry = self.retries.peek().map(|Reverse((at, _, _))| *at);
        match (fallback, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Opens waiters whose interest wait is over and retries blocked ones,
    /// appending the pairs this makes to `out`.
    pub fn handle_timeout(&mut self, now: Instant, blocked: &impl Blocked, out: &mut Vec<Pairing>) {
        while let Some(&(at, seq, id)) = self.fallbacks.front() {
            if at > now {
                break;
            }
            self.fallbacks.pop_front();
            let Some(w) = self.waiting.get_mut(&id) else {
                continue;
            };
            if w.seq != seq || w.open {
                continue;
            }
            w.open = true;
            self.open.push(seq, id);
            self.rescan(id, blocked, out);
        }
        while let Some(&Reverse((at, seq, id))) = self.retries.peek() {
            if at > now {
                break;
            }
            self.retries.pop();
            if is_live(&self.waiting, seq, id) {
                self.rescan(id, blocked, out);
            }
        }
    }

    /// Looks again for a partner for someone already waiting.
    fn rescan(&mut self, id: ConnId, blocked: &impl Blocked, out: &mut Vec<Pairing>) {
        let (tags, open, seq) = match self.waiting.get(&id) {
            Some(w) => (w.tags.clone(), w.open, w.seq),
            None => return,
        };
        let scan = self.scan(id, &tags, open, blocked);
        if let Some((_, partner)) = scan.best {
            self.take(id);
            out.push(self.pair(partner, id, &tags));
        } else if let Some(at) = scan.retry_at {
            self.retries.push(Reverse((at, seq, id)));
        }
    }

    fn scan(&mut self, me: ConnId, tags: &[String], open: bool, blocked: &impl Blocked) -> Scan {
        let mut scan = Scan::default();
        for tag in tags {
            if let Some(lane) = self.tags.get_mut(tag) {
                scan.lane(lane, &self.waiting, me, self.config.scan_limit, blocked);
            }
        }
        // People sharing an interest come first; the open lane only if none does.
        if open && scan.best.is_none() {
            scan.lane(
                &mut self.open,
                &self.waiting,
                me,
                self.config.scan_limit,
                blocked,
            );
        }
        scan
    }

    /// Makes the pair, taking `waiting` out of the queue.
    fn pair(&mut self, waiting: ConnId, joining: ConnId, joining_tags: &[String]) -> Pairing {
        let theirs = self.take(waiting).map(|w| w.tags).unwrap_or_default();
        let shared = joining_tags
            .iter()
            .filter(|t| theirs.contains(t))
            .cloned()
            .collect();
        Pairing {
            waiting,
            joining,
            shared,
        }
    }

    fn take(&mut self, id: ConnId) -> Option<Waiter> {
        let w = self.waiting.remove(&id)?;
        for tag in &w.tags {
            if let Some(lane) = self.tags.get_mut(tag) {
                lane.live -= 1;
                if lane.live == 0 {
                    self.tags.remove(tag);
                } else {
                    lane.compact_if_sparse(&self.waiting);
                }
            }
        }
        if w.open {
            self.open.live -= 1;
            self.open.compact_if_sparse(&self.waiting);
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn never(_: ConnId, _: ConnId) -> Option<Instant> {
        None
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_join_examines_at_most_the_scan_limit() {
        let now = Instant::now();
        let mut m = Matchmaker::new(MatchConfig {
            scan_limit: 8,
            ..MatchConfig::default()
        });
        let newcomer = ConnId(0);
        let until = now + Duration::from_secs(30);
        let asked = Cell::new(0);
        // Everyone waiting is blocked with the newcomer (and only with it).
        let blocked = |a: ConnId, b: ConnId| {
            asked.set(asked.get() + 1);
            (a == newcomer || b == newcomer).then_some(until)
        };
        for i in 1..=1000 {
            // Waiters are also blocked from each other by construction here:
            // join them with a filter that refuses every pair.
            assert!(
                m.join(now, ConnId(i), vec![], &|_, _| Some(until))
                    .is_none()
            );
        }
        asked.set(0);
        assert!(m.join(now, newcomer, vec![], &blocked).is_none());
        assert_eq!(asked.get(), 8);
        assert_eq!(m.poll_timeout(), Some(until), "a retry when the block ends");
    }

    #[test]
    fn leaving_in_any_order_keeps_lanes_compact() {
        let now = Instant::now();
        let mut m = Matchmaker::new(MatchConfig::default());
        let refuse = |_: ConnId, _: ConnId| Some(now + Duration::from_secs(1));
        for round in 0..50u64 {
            for i in 0..100 {
                let id = ConnId(round * 1000 + i);
                assert!(m.join(now, id, tags(&["a", "b"]), &refuse).is_none());
            }
            for i in (0..100).rev() {
                assert!(m.leave(ConnId(round * 1000 + i)));
            }
        }
        assert!(m.is_empty());
        assert!(m.tags.is_empty(), "empty tag lanes are dropped");
        assert!(m.open.entries.len() <= 32);
        m.compact();
        assert_eq!(m.open.entries.capacity(), 0, "compact gives the rest back");
        assert_eq!(m.fallbacks.capacity(), 0);
        assert_eq!(m.retries.capacity(), 0);
        assert_eq!(m.waiting.capacity(), 0);
    }

    #[test]
    fn compact_keeps_whoever_still_waits() {
        let now = Instant::now();
        let mut m = Matchmaker::new(MatchConfig::default());
        for i in 0..100 {
            assert!(m.join(now, ConnId(i), tags(&["a"]), &never).is_some() == (i % 2 == 1));
        }
        assert!(m.join(now, ConnId(1000), Vec::new(), &never).is_none());
        m.compact();
        assert_eq!(m.len(), 1);
        assert_eq!(
            m.fallbacks.len(),
            0,
            "paired waiters' interest waits are gone"
        );
        let p = m.join(now, ConnId(1001), Vec::new(), &never).unwrap();
        assert_eq!(p.waiting, ConnId(1000));
    }

    #[test]
    fn the_oldest_sharer_wins_across_tags() {
        let now = Instant::now();
        let mut m = Matchmaker::new(MatchConfig::default());
        assert!(m.join(now, ConnId(1), tags(&["b"]), &never).is_none());
        assert!(m.join(now, ConnId(2), tags(&["a"]), &never).is_none());
        let p = m.join(now, ConnId(3), tags(&["a", "b"]), &never).unwrap();
        assert_eq!(p.waiting, ConnId(1));
        assert_eq!(p.shared, ["b"]);
        assert!(m.is_waiting(ConnId(2)));
        assert!(!m.is_waiting(ConnId(1)));
    }

    #[test]
    fn nobody_is_paired_with_themselves() {
        let now = Instant::now();
        let mut m = Matchmaker::new(MatchConfig::default());
        assert!(m.join(now, ConnId(1), vec![], &never).is_none());
        assert!(m.join(now, ConnId(1), vec![], &never).is_none());
        assert_eq!(m.len(), 1);
    }
}
