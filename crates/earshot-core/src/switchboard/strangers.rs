//! Strangers: searching, pairing, the signals of a call, and how a call ends
//! (skip, end, leave).

use super::*;

impl Switchboard {
    pub(super) fn relay(&mut self, now: Instant, id: ConnId, phase: Phase, signal: Signal) {
        match phase {
            Phase::InCall { call, partner } if call == signal.call => {
                tracing::trace!(conn = %id, call, "relaying a signal");
                if self.is_remote(partner) {
                    self.publish(Remote::Signal {
                        to: partner,
                        from: id,
                        signal,
                    });
                } else {
                    self.send(partner, ServerMsg::Signal(signal));
                }
            }
            Phase::InCall { .. } => self.reject(now, id, ErrorCode::WrongCall, None),
            _ => self.reject(now, id, ErrorCode::NotInCall, None),
        }
    }

    /// Puts an idle connection in the queue and pairs it if someone fits.
    /// `own`: the client's own search or skip, which a shared queue charges
    /// to the client's search allowance (being put back after a call is free).
    pub(super) fn search(&mut self, now: Instant, id: ConnId, own: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(until) = self.moderation.banned_until(now, conn.info.key) {
            conn.phase = Phase::Idle;
            self.reject(now, id, ErrorCode::Banned, Some(until - now));
            self.send(id, ServerMsg::Idle);
            return;
        }
        conn.phase = Phase::Searching;
        let interests = conn.interests.clone();
        self.send(
            id,
            ServerMsg::Searching {
                interests: interests.clone(),
            },
        );
        let blocked = Blocker {
            now,
            cooldowns: &self.cooldowns,
            moderation: &self.moderation,
            conns: &self.conns,
        };
        match self.queue.join(now, id, interests, own, &blocked) {
            Joined::Paired(p) => self.start_call(now, p),
            Joined::Waiting => {}
            Joined::AskStore => self.enqueue(now, id),
        }
    }

    pub(super) fn new_call(&mut self) -> CallId {
        let n = self.next_call;
        self.next_call += 1;
        match self.queue.node() {
            Some(node) => backplane::call_id(node, n),
            None => n,
        }
    }

    pub(super) fn start_call(&mut self, now: Instant, p: Pairing) {
        let call = self.new_call();
        self.calls += 1;
        self.matches_total += 1;
        let mut country = |id: ConnId, partner: ConnId| {
            let c = self.conns.get_mut(&id).expect("paired connections exist");
            c.phase = Phase::InCall { call, partner };
            c.call_since = now;
            c.info.country
        };
        let waiting_country = country(p.waiting, p.joining);
        let joining_country = country(p.joining, p.waiting);
        for who in [p.waiting, p.joining] {
            let key = self.key(who);
            self.moderation.matched(now, key);
        }
        tracing::debug!(call, a = %p.waiting, b = %p.joining, "matched");
        self.request(Request::CallStart {
            call,
            a: p.waiting,
            b: p.joining,
        });
        // The newcomer is impolite: it makes the first offer.
        self.send(
            p.waiting,
            ServerMsg::Matched {
                call,
                polite: true,
                interests: p.shared.clone(),
                country: joining_country,
            },
        );
        self.send(
            p.joining,
            ServerMsg::Matched {
                call,
                polite: false,
                interests: p.shared,
                country: waiting_country,
            },
        );
    }

    /// Ends `id`'s call, telling the partner why and putting them back in the queue.
    pub(super) fn end_call(&mut self, now: Instant, id: ConnId, reason: EndReason) {
        let Some(Phase::InCall { call, partner }) = self.conns.get(&id).map(|c| c.phase) else {
            return;
        };
        self.request(Request::CallEnd { call });
        self.note_call_ended(now, id, partner);
        let keys = (self.key(id), self.key(partner));
        if self.is_remote(partner) {
            self.remote_call_ended(partner);
            if let Some(c) = self.conns.get_mut(&id) {
                c.phase = Phase::Idle;
            }
            tracing::debug!(call, reason = ?reason, "call with another node ended");
            if reason == EndReason::PartnerSkipped {
                let ttl = self.config.rematch_cooldown;
                self.request(Request::KeepApart {
                    a: id,
                    b: partner,
                    keys,
                    ttl,
                });
            }
            // The partner's node tells them and puts them back in the queue.
            return self.publish(Remote::Ended {
                to: partner,
                from: id,
                call,
                reason,
            });
        }
        self.calls -= 1;
        self.note_call_ended(now, partner, id);
        for who in [id, partner] {
            if let Some(c) = self.conns.get_mut(&who) {
                c.phase = Phase::Idle;
            }
        }
        tracing::debug!(call, reason = ?reason, "call ended");
        if reason == EndReason::PartnerSkipped {
            self.cooldowns
                .add(now, id, partner, self.config.rematch_cooldown);
            // Backplane mode: both wait in the shared queue again.
            let ttl = self.config.rematch_cooldown;
            self.request(Request::KeepApart {
                a: id,
                b: partner,
                keys,
                ttl,
            });
        }
        self.send(partner, ServerMsg::CallEnded { call, reason });
        self.search(now, partner, false);
    }

    /// `id`'s stranger call with `partner` is ending: a call held long
    /// enough makes `id`'s reports weigh more (see `moderation`).
    pub(super) fn note_call_ended(&mut self, now: Instant, id: ConnId, partner: ConnId) {
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let (key, length) = (c.info.key, now.saturating_duration_since(c.call_since));
        let theirs = self.key(partner);
        self.moderation.call_ended(now, key, theirs, length);
    }

    /// Takes `id` out of any call or queue, leaving it idle.
    pub(super) fn leave(&mut self, now: Instant, id: ConnId, reason: EndReason) {
        match self.conns.get(&id).map(|c| c.phase) {
            Some(Phase::InCall { .. }) => self.end_call(now, id, reason),
            Some(Phase::Searching) => {
                if self.queue.leave(id) {
                    self.request(Request::Dequeue { conn: id });
                }
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::Idle;
                }
            }
            Some(Phase::InRoom { room, peer }) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::Idle;
                }
                let store_key = self.room_key(room);
                let others = self.rooms.leave(room, peer);
                self.announce_left(room, store_key, peer, others, true);
            }
            Some(Phase::Joining) => {
                self.queue.take_joining(id);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::Idle;
                }
            }
            Some(Phase::Idle) | None => {}
        }
    }
}
