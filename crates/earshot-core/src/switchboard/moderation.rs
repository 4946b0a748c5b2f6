//! Reports and strikes, in calls and in rooms, and the abuse record that
//! makes `hello` ask for proof of work. The rules themselves live in
//! [`crate::moderation`]; this is where the switchboard applies them.

use super::*;

impl Switchboard {
    /// Whether `id` is a live connection whose client is not banned: the
    /// embedded TURN server gives new allocations only to those.
    pub fn may_relay(&self, now: Instant, id: ConnId) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| self.moderation.banned_until(now, c.info.key).is_none())
    }

    pub(super) fn key(&self, id: ConnId) -> ClientKey {
        self.conns
            .get(&id)
            .map(|c| c.info.key)
            .or_else(|| self.queue.remote_key(id))
            .unwrap_or_default()
    }

    /// Counts a report against the reporter's limit and records a strike
    /// (`room`: the room it was made in). Returns the wait if the reporter
    /// is over its limit.
    pub(super) fn strike(
        &mut self,
        now: Instant,
        reporter: ConnId,
        reported: ConnId,
        reason: Option<ReportReason>,
        room: Option<RoomId>,
    ) -> Result<(), Duration> {
        let (mine, theirs) = (self.key(reporter), self.key(reported));
        if let Err(wait) = self.clients.reports.take(now, &mine) {
            // Over the limit the report does not count, but it still protects.
            self.moderation.block(now, mine, theirs);
            self.share_block(reporter, reported, mine, theirs);
            return Err(wait);
        }
        let (network, previous_network) = self.conns.get(&reporter).map_or((mine, None), |c| {
            (c.info.network.unwrap_or(mine), c.info.previous_network)
        });
        let who = Reporter {
            key: mine,
            network,
            previous_network,
            room: room
                .and_then(|r| self.rooms.name(r))
                .map(backplane::room_tag),
        };
        let reason = reason.map_or("none", ReportReason::as_str);
        if self.queue.is_shared() {
            // The store counts strikes from every node and bans.
            if let Some(w) = self.moderation.weigh(now, &who, theirs) {
                tracing::debug!(reason, weight = w.weight, "report recorded");
                let rule = self.moderation.strike_rule(self.config.per_client.reports);
                self.request(Request::Strike {
                    key: theirs,
                    reporter: mine,
                    weight: w.weight,
                    network,
                    previous_network,
                    room: who.room,
                    age: now.saturating_duration_since(w.arrived),
                    rule,
                });
            }
            self.share_block(reporter, reported, mine, theirs);
            return Ok(());
        }
        match self.moderation.report(now, &who, theirs) {
            ReportOutcome::Banned { until } => {
                tracing::info!(reason, "a report completed a ban");
                let ttl = until.saturating_duration_since(now);
                self.request(Request::Ban { key: theirs, ttl });
            }
            outcome => tracing::debug!(reason, ?outcome, "report recorded"),
        }
        self.share_block(reporter, reported, mine, theirs);
        Ok(())
    }

    /// Report in a stranger call: the call ends at once for both; the pair
    /// is never matched again; the reported client collects a strike.
    pub(super) fn report(
        &mut self,
        now: Instant,
        id: ConnId,
        phase: Phase,
        reason: Option<ReportReason>,
    ) {
        let Phase::InCall { partner, .. } = phase else {
            return self.reject(now, id, ErrorCode::NotInCall, None);
        };
        let limited = self.strike(now, id, partner, reason, None).err();
        if let Some(c) = self.conns.get_mut(&id) {
            c.reported.push(partner);
        }
        // The reported side hears an ordinary end, not who pressed what.
        self.end_call(now, id, EndReason::PartnerEnded);
        self.send(id, ServerMsg::Idle);
        if let Some(wait) = limited {
            self.reject(now, id, ErrorCode::RateLimited, Some(wait));
        }
    }

    /// Report in a room: a strike, and removal once enough members agree.
    /// The reporter's own client drops its connection to that peer.
    pub(super) fn report_in_room(
        &mut self,
        now: Instant,
        id: ConnId,
        phase: Phase,
        target: PeerId,
        reason: Option<ReportReason>,
    ) {
        let Phase::InRoom { room, peer } = phase else {
            return self.reject(now, id, ErrorCode::NotInRoom, None);
        };
        let Some(target_conn) = self.rooms.member(room, target).filter(|_| target != peer) else {
            return self.reject(now, id, ErrorCode::UnknownPeer, None);
        };
        if let Err(wait) = self.strike(now, id, target_conn, reason, Some(room)) {
            return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
        }
        // Backplane mode: only members on this node can be removed here
        // (the strike above counts everywhere).
        if self.rooms.report(room, peer, target) && !self.is_remote(target_conn) {
            tracing::debug!("a room removed a member");
            let key = self.key(target_conn);
            if let Some(c) = self.conns.get_mut(&target_conn) {
                c.phase = Phase::Idle;
            }
            let store_key = self.room_key(room);
            self.request(Request::RoomRemove {
                room: store_key.clone(),
                key,
            });
            let others = self.rooms.remove(room, target, key);
            self.announce_left(room, store_key, target, others, true);
            self.reject(now, target_conn, ErrorCode::Removed, None);
            self.send(target_conn, ServerMsg::Idle);
        }
    }

    /// Remembers that `key` misbehaved (it then proves more work), for ten
    /// minutes, in a table of at most `allowance_keys` keys: past it the
    /// oldest go (this only eases proof of work; bans live elsewhere).
    pub(super) fn note_abuse(&mut self, now: Instant, key: ClientKey) {
        const MEMORY: Duration = Duration::from_secs(600);
        let max = self.config.allowance_keys.max(1);
        if self.abuse.len() >= 4096 && !self.abuse.contains_key(&key) {
            self.abuse
                .retain(|_, t| now.saturating_duration_since(*t) < MEMORY);
        }
        if self.abuse.len() >= max && !self.abuse.contains_key(&key) {
            let batch = (max / 32).max(1);
            let mut order: Vec<(Instant, ClientKey)> =
                self.abuse.iter().map(|(&k, &t)| (t, k)).collect();
            if order.len() > batch {
                order.select_nth_unstable_by_key(batch - 1, |&(t, _)| t);
                order.truncate(batch);
            }
            for (_, k) in order {
                self.abuse.remove(&k);
            }
        }
        self.abuse.insert(key, now);
    }

    /// A report in backplane mode: the pair is kept apart on every node.
    pub(super) fn share_block(&mut self, a: ConnId, b: ConnId, ka: ClientKey, kb: ClientKey) {
        let ttl = self.config.moderation.key_memory;
        self.request(Request::KeepApart {
            a,
            b,
            keys: (ka, kb),
            ttl,
        });
        self.request(Request::Block { a: ka, b: kb, ttl });
    }
}
