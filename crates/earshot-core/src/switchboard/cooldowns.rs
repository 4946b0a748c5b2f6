//! Who may not be paired: pairs that skipped each other (until their
//! cooldown ends), banned clients, and clients one of whom reported the
//! other. The local queue asks a [`Blocker`] before every pairing.

use super::*;

/// Pairs that skipped each other, kept apart until a deadline.
///
/// A pair is forgotten once its deadline has passed, by the timer
/// ([`Cooldowns::poll_timeout`]), not only when a later skip happens to come
/// by: otherwise an idle server would keep the pairs of connections long
/// gone (see `earshot-bench soak`).
#[derive(Debug, Default)]
pub(super) struct Cooldowns {
    pub(super) until: HashMap<(ConnId, ConnId), Instant>,
    /// Deadlines in insertion order; the cooldown is constant, so also in time order.
    pub(super) order: VecDeque<(Instant, (ConnId, ConnId))>,
}

impl Cooldowns {
    fn key(a: ConnId, b: ConnId) -> (ConnId, ConnId) {
        (a.min(b), a.max(b))
    }

    pub(super) fn add(&mut self, now: Instant, a: ConnId, b: ConnId, d: Duration) {
        self.expire(now);
        let until = now + d;
        self.until.insert(Self::key(a, b), until);
        self.order.push_back((until, Self::key(a, b)));
    }

    pub(super) fn blocked_until(&self, now: Instant, a: ConnId, b: ConnId) -> Option<Instant> {
        self.until
            .get(&Self::key(a, b))
            .copied()
            .filter(|&until| until > now)
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(until, key)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
            }
        }
        if self.order.is_empty() && self.order.capacity() > 0 {
            // All forgotten: give back what a burst of skips made the tables
            // grow to.
            *self = Cooldowns::default();
        }
    }

    /// When to forget the oldest pair: a little after its deadline, so that
    /// one wake-up forgets every pair due within [`COOLDOWN_SWEEP_SLACK`].
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let &(until, _) = self.order.front()?;
        Some(until + COOLDOWN_SWEEP_SLACK)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.until.len()
    }
}

/// How late an ended cooldown may be forgotten (see [`Cooldowns`]).
pub(super) const COOLDOWN_SWEEP_SLACK: Duration = Duration::from_secs(1);

/// Who may not be paired: people who just skipped each other (until the
/// cooldown ends) and clients one of whom reported the other.
pub(super) struct Blocker<'a> {
    pub(super) now: Instant,
    pub(super) cooldowns: &'a Cooldowns,
    pub(super) moderation: &'a Moderation,
    pub(super) conns: &'a HashMap<ConnId, Box<Conn>>,
}

impl crate::matchmaker::Blocked for Blocker<'_> {
    fn blocked_until(&self, a: ConnId, b: ConnId) -> Option<Instant> {
        if let Some(until) = self.cooldowns.blocked_until(self.now, a, b) {
            return Some(until);
        }
        let (ca, cb) = (self.conns.get(&a)?, self.conns.get(&b)?);
        // A client banned while one of its connections was already waiting.
        let banned = [ca.info.key, cb.info.key]
            .into_iter()
            .filter_map(|k| self.moderation.banned_until(self.now, k))
            .max();
        if banned.is_some() {
            return banned;
        }
        let reported = ca.reported.contains(&b)
            || cb.reported.contains(&a)
            || self.moderation.blocked(ca.info.key, cb.info.key);
        // A report blocks for as long as keys live; look again in an hour.
        reported.then(|| self.now + Duration::from_secs(3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found with `earshot-bench soak`): the cooldown of a skip
    /// outlived both connections on an idle server, until another skip
    /// happened to come by.
    #[test]
    fn cooldowns_of_gone_connections_are_forgotten_on_an_idle_server() {
        let config = Config::default();
        let cooldown = config.rematch_cooldown;
        let mut board = Switchboard::new(config);
        let t0 = Instant::now();
        let (a, b) = (ConnId(1), ConnId(2));
        for id in [a, b] {
            board.connect(t0, id, ConnInfo::default());
            board.handle_text(t0, id, r#"{"type":"hello","version":1}"#);
            board.handle_text(t0, id, r#"{"type":"search"}"#);
        }
        assert_eq!(board.stats().calls, 1);
        board.handle_text(t0, a, r#"{"type":"skip"}"#);
        assert_eq!(board.cooldowns.len(), 1);
        board.disconnect(t0, a);
        board.disconnect(t0, b);
        // The shell's timer: run whatever the switchboard asks for.
        while let Some(at) = board.poll_timeout() {
            assert!(at <= t0 + cooldown + COOLDOWN_SWEEP_SLACK, "{at:?}");
            board.handle_timeout(at);
        }
        assert_eq!(board.cooldowns.len(), 0);
        assert_eq!(
            board.cooldowns.order.capacity(),
            0,
            "the tables are given back"
        );
        assert_eq!(board.stats().connections, 0);
    }
}
