//! Backplane mode: the requests this node makes of the shared store, what
//! comes back from it and from other nodes, and this node's side of calls and
//! rooms that span nodes (see the crate's `backplane` module).

use super::*;

impl Switchboard {
    /// Switches backplane mode on (`Some(node)`) or off. Only while no
    /// connection is open: connection ids must carry the node number.
    pub fn set_node(&mut self, node: Option<NodeId>) {
        debug_assert!(self.conns.is_empty(), "set_node with connections open");
        self.queue = Queue::new(node, &self.config);
    }

    pub fn node(&self) -> Option<NodeId> {
        self.queue.node()
    }

    /// `id`'s call and partner, if it is in a call.
    pub fn call_of(&self, id: ConnId) -> Option<(CallId, ConnId)> {
        match self.conns.get(&id)?.phase {
            Phase::InCall { call, partner } => Some((call, partner)),
            _ => None,
        }
    }

    /// Backplane mode: the store's names of the rooms this node has members
    /// in (the shell keeps them alive).
    pub fn shared_rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self
            .rooms
            .all_members()
            .map(|(r, _, _)| self.room_key(r))
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        rooms
    }

    /// Every open connection.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Backplane mode: the calls this node has a side in (the shell keeps
    /// their records alive).
    pub fn shared_calls(&self) -> Vec<CallId> {
        let mut calls: Vec<CallId> = self
            .conns
            .values()
            .filter_map(|c| match c.phase {
                Phase::InCall { call, .. } => Some(call),
                _ => None,
            })
            .collect();
        calls.sort_unstable();
        calls.dedup();
        calls
    }

    /// Backplane mode: who waits in the shared queue (the shell keeps their
    /// entries alive).
    pub fn shared_waiters(&self) -> Vec<ConnId> {
        self.queue
            .shared()
            .map(|s| s.waiting.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The nodes this one's calls reach: the shell watches their heartbeats
    /// and reports a dead one as [`Event::NodeDown`].
    pub fn remote_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .queue
            .shared()
            .into_iter()
            .flat_map(|s| s.remote_keys.keys())
            .map(|&id| backplane::node_of(id))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    pub(super) fn is_remote(&self, id: ConnId) -> bool {
        self.queue.is_remote(id)
    }

    /// Asks the shared store; with the queue here there is none to ask.
    pub(super) fn request(&mut self, r: Request) {
        if self.queue.is_shared() {
            self.out.push_back(Output::Backplane(r));
        }
    }

    pub(super) fn publish(&mut self, msg: Remote) {
        self.request(Request::Publish(msg));
    }

    /// Asks the shared queue to pair `id` or keep it waiting.
    pub(super) fn enqueue(&mut self, now: Instant, id: ConnId) {
        let Some(shared) = self.queue.shared_mut() else {
            return;
        };
        let (Some(c), Some(wait)) = (self.conns.get(&id), shared.waiting.get_mut(&id)) else {
            return;
        };
        // Charged once, for the search or skip the client made.
        let limit = std::mem::take(&mut wait.charge).then_some(self.config.per_client.searches);
        let waiter = Waiter {
            conn: id,
            key: c.info.key,
            interests: c.interests.clone(),
            open: wait.open_at <= now,
            interest_wait: self.config.interest_wait,
            country: c.info.country,
            limit,
        };
        self.request(Request::Enqueue(waiter));
    }

    /// Gives back a waiter the shared queue handed over for a pairing that
    /// fell through.
    pub(super) fn requeue(&mut self, now: Instant, id: ConnId) {
        if self.is_remote(id) {
            self.publish(Remote::Requeue { to: id });
        } else if self.queue.is_waiting(id) {
            self.enqueue(now, id);
        }
    }

    /// An answer from the backplane, or a message from another node.
    pub fn handle_backplane(&mut self, now: Instant, event: Event) {
        if !self.queue.is_shared() {
            return;
        }
        match event {
            Event::Paired { conn, partner } => self.paired(now, conn, partner),
            Event::Queued { .. } => {}
            Event::Banned { conn, ttl } => self.search_refused(now, conn, ErrorCode::Banned, ttl),
            Event::Limited { conn, retry } => {
                self.search_refused(now, conn, ErrorCode::RateLimited, retry)
            }
            Event::TooManyConnects { conn } => {
                self.close(now, conn, CloseReason::TooManyConnections)
            }
            Event::Failed { conn } => self.close(now, conn, CloseReason::BackplaneLost),
            Event::RoomJoined {
                conn,
                room,
                peer,
                others,
                locked,
            } => self.room_joined(now, conn, room, peer, others, locked),
            Event::RoomRefused { conn, code, retry } => {
                if self.queue.take_joining(conn).is_some() {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.phase = Phase::Idle;
                    }
                    // The store's answer to the `room_join` it was checking.
                    let re = Some(ClientMsgType::RoomJoin);
                    self.reject_about(now, conn, re, code, retry);
                }
            }
            Event::Remote(msg) => self.remote(now, msg),
            Event::NodeDown(node) => {
                let gone: Vec<(ConnId, ConnId, CallId)> = self
                    .conns
                    .iter()
                    .filter_map(|(&id, c)| match c.phase {
                        Phase::InCall { call, partner }
                            if self.is_remote(partner) && backplane::node_of(partner) == node =>
                        {
                            Some((id, partner, call))
                        }
                        _ => None,
                    })
                    .collect();
                if !gone.is_empty() {
                    tracing::info!(node, calls = gone.len(), "a node is gone; ending its calls");
                }
                for (to, from, call) in gone {
                    self.remote_ended(now, to, from, call, EndReason::PartnerLeft);
                }
                let members: Vec<(RoomId, PeerId)> = self
                    .rooms
                    .all_members()
                    .filter(|&(_, _, c)| self.is_remote(c) && backplane::node_of(c) == node)
                    .map(|(r, p, _)| (r, p))
                    .collect();
                for (room, peer) in members {
                    let store_key = self.room_key(room);
                    if let Some(conn) = self.rooms.member(room, peer) {
                        self.queue.forget_remote(conn);
                    }
                    let others = self.rooms.leave(room, peer);
                    // The store is told once, by whoever sees it first.
                    self.request(Request::RoomLeave {
                        room: store_key.clone(),
                        peer,
                    });
                    self.announce_left(room, store_key, peer, others, false);
                }
            }
        }
    }

    /// The store refused `conn`'s queue join (a ban, the shared search
    /// allowance): it is idle again, if it was still searching.
    pub(super) fn search_refused(
        &mut self,
        now: Instant,
        conn: ConnId,
        code: ErrorCode,
        retry: Duration,
    ) {
        if self.queue.leave(conn) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.phase = Phase::Idle;
            }
            self.reject(now, conn, code, Some(retry));
            self.send(conn, ServerMsg::Idle);
        }
    }

    pub(super) fn paired(&mut self, now: Instant, conn: ConnId, partner: Partner) {
        if !self.queue.is_waiting(conn) {
            // Left the queue while the join ran: the waiter goes back.
            return self.requeue(now, partner.conn);
        }
        if !self.is_remote(partner.conn) {
            if partner.conn != conn && self.queue.is_waiting(partner.conn) {
                self.queue.leave(conn);
                self.queue.leave(partner.conn);
                let pairing = Pairing {
                    waiting: partner.conn,
                    joining: conn,
                    shared: partner.shared,
                };
                return self.start_call(now, pairing);
            }
            // The waiter left meanwhile: try again.
            return self.enqueue(now, conn);
        }
        self.queue.leave(conn);
        let call = self.new_call();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.phase = Phase::InCall {
            call,
            partner: partner.conn,
        };
        c.call_since = now;
        let (key, country) = (c.info.key, c.info.country);
        self.remote_call_began(partner.conn, partner.key);
        self.moderation.matched(now, key);
        tracing::debug!(call, "matched across nodes");
        // Recorded before the waiter's node hears of the call, so any end
        // of it comes after.
        self.request(Request::CallStart {
            call,
            a: partner.conn,
            b: conn,
        });
        self.send(
            conn,
            ServerMsg::Matched {
                call,
                polite: false,
                interests: partner.shared.clone(),
                country: partner.country,
            },
        );
        self.publish(Remote::Matched {
            to: partner.conn,
            from: conn,
            call,
            key,
            shared: partner.shared,
            country,
        });
    }

    pub(super) fn remote(&mut self, now: Instant, msg: Remote) {
        let to = msg.to();
        if self.is_remote(to) {
            return;
        }
        let phase = self.conns.get(&to).map(|c| c.phase);
        match msg {
            Remote::Matched {
                from,
                call,
                key,
                shared,
                country,
                ..
            } => self.remote_matched(now, to, from, call, key, shared, country),
            Remote::Signal { from, signal, .. } => {
                if phase
                    == Some(Phase::InCall {
                        call: signal.call,
                        partner: from,
                    })
                {
                    tracing::trace!(conn = %to, "relaying a signal from another node");
                    self.send(to, ServerMsg::Signal(signal));
                }
            }
            Remote::Ended {
                from, call, reason, ..
            } => self.remote_ended(now, to, from, call, reason),
            Remote::Requeue { .. } => {
                if phase == Some(Phase::Searching) {
                    self.enqueue(now, to);
                }
            }
            Remote::PeerJoined { .. }
            | Remote::PeerLeft { .. }
            | Remote::RoomSignal { .. }
            | Remote::RoomLock { .. } => self.remote_room_event(now, to, msg),
        }
    }

    /// A joiner on another node paired with `to`, waiting here.
    #[allow(clippy::too_many_arguments)]
    fn remote_matched(
        &mut self,
        now: Instant,
        to: ConnId,
        from: ConnId,
        call: CallId,
        key: ClientKey,
        shared: Vec<String>,
        country: Option<Country>,
    ) {
        let waiting = self.queue.is_waiting(to);
        if !waiting || !self.is_remote(from) {
            // Gone or busy since: the joiner's call ends at once.
            return self.publish(Remote::Ended {
                to: from,
                from: to,
                call,
                reason: EndReason::PartnerLeft,
            });
        }
        self.queue.leave(to);
        // A late fallback join may have queued it again.
        self.request(Request::Dequeue { conn: to });
        let Some(c) = self.conns.get_mut(&to) else {
            return;
        };
        c.phase = Phase::InCall {
            call,
            partner: from,
        };
        c.call_since = now;
        let own = c.info.key;
        self.remote_call_began(from, key);
        self.moderation.matched(now, own);
        tracing::debug!(call, "matched across nodes");
        self.send(
            to,
            ServerMsg::Matched {
                call,
                polite: true,
                interests: shared,
                country,
            },
        );
    }

    /// What another node tells a member here of a room that spans nodes.
    fn remote_room_event(&mut self, now: Instant, to: ConnId, msg: Remote) {
        match msg {
            Remote::PeerJoined { room, member, .. } => {
                if let Some((r, _)) = self.remote_room(to, &room)
                    && self.is_remote(member.conn)
                {
                    // Each member here gets its own copy; the room's copy
                    // gains the newcomer once.
                    let name = self.rooms.name(r).map(str::to_owned).unwrap_or_default();
                    let locked = self.rooms.is_locked(r);
                    self.rooms
                        .mirror(now, &name, &[(member.peer, member.conn)], locked);
                    self.queue.note_remote(member.conn, member.key);
                    self.send(to, ServerMsg::PeerJoined { peer: member.peer });
                }
            }
            Remote::PeerLeft { room, peer, .. } => {
                if let Some((r, _)) = self.remote_room(to, &room) {
                    if let Some(conn) = self.rooms.member(r, peer)
                        && self.is_remote(conn)
                    {
                        self.queue.forget_remote(conn);
                        self.rooms.leave(r, peer);
                    }
                    self.send(to, ServerMsg::PeerLeft { peer });
                }
            }
            Remote::RoomSignal {
                room,
                from,
                mut signal,
                ..
            } => {
                if let Some((r, me)) = self.remote_room(to, &room)
                    && signal.to == Some(me)
                    && self
                        .rooms
                        .member(r, from)
                        .is_some_and(|c| self.is_remote(c))
                {
                    signal.to = None;
                    signal.from = Some(from);
                    self.send(to, ServerMsg::RoomSignal(signal));
                }
            }
            Remote::RoomLock { room, locked, .. } => {
                if let Some((r, _)) = self.remote_room(to, &room) {
                    let name = self.rooms.name(r).map(str::to_owned).unwrap_or_default();
                    self.rooms.mirror(now, &name, &[], locked);
                    self.send(to, ServerMsg::RoomLockState { locked });
                }
            }
            _ => {}
        }
    }

    /// `from`, on another node, left the call with `to`.
    pub(super) fn remote_ended(
        &mut self,
        now: Instant,
        to: ConnId,
        from: ConnId,
        call: CallId,
        reason: EndReason,
    ) {
        let Some(c) = self.conns.get_mut(&to) else {
            return;
        };
        if c.phase
            != (Phase::InCall {
                call,
                partner: from,
            })
        {
            return;
        }
        self.note_call_ended(now, to, from);
        if let Some(c) = self.conns.get_mut(&to) {
            c.phase = Phase::Idle;
        }
        self.remote_call_ended(from);
        self.request(Request::CallEnd { call });
        tracing::debug!(call, reason = ?reason, "call with another node ended");
        self.send(to, ServerMsg::CallEnded { call, reason });
        self.search(now, to, false);
    }

    /// A call began with `partner`, of `key`, on another node.
    fn remote_call_began(&mut self, partner: ConnId, key: ClientKey) {
        if let Some(s) = self.queue.shared_mut() {
            s.remote_calls += 1;
            s.remote_keys.insert(partner, key);
        }
    }

    /// The call with `partner`, on another node, is over.
    pub(super) fn remote_call_ended(&mut self, partner: ConnId) {
        if let Some(s) = self.queue.shared_mut() {
            s.remote_calls -= 1;
            s.remote_keys.remove(&partner);
        }
    }

    /// The store's name for a room (backplane mode; empty otherwise).
    pub(super) fn room_key(&self, room: RoomId) -> String {
        match (self.queue.node(), self.rooms.name(room)) {
            (Some(_), Some(name)) => backplane::room_key(name),
            _ => String::new(),
        }
    }

    /// `peer` is out of the room: tells `others` (here, or through their
    /// node) and, if `store` (the member was this node's), the store. A
    /// node's copy of a room goes once none of its members are left.
    pub(super) fn announce_left(
        &mut self,
        room: RoomId,
        store_key: String,
        peer: PeerId,
        others: Vec<(PeerId, ConnId)>,
        store: bool,
    ) {
        if store {
            self.request(Request::RoomLeave {
                room: store_key.clone(),
                peer,
            });
        }
        let mut local = false;
        for (_, other) in others {
            if self.is_remote(other) {
                if store {
                    self.publish(Remote::PeerLeft {
                        to: other,
                        room: store_key.clone(),
                        peer,
                    });
                }
            } else {
                local = true;
                self.send(other, ServerMsg::PeerLeft { peer });
            }
        }
        // (With the queue here, `Rooms::leave` has already dropped a room
        // with no members left.)
        if !local {
            for (_, _, conn) in self
                .rooms
                .all_members()
                .filter(|m| m.0 == room)
                .collect::<Vec<_>>()
            {
                self.queue.forget_remote(conn);
            }
            self.rooms.forget(room);
        }
    }

    /// Asks the store to let `id` into the room `name`: its size, lock and
    /// removals are shared by every node. A passphrase guess first draws on
    /// this node's own allowance for the client.
    pub(super) fn join_shared_room(
        &mut self,
        now: Instant,
        id: ConnId,
        key: ClientKey,
        name: String,
        verifier: Option<&Verifier>,
    ) {
        if verifier.is_some()
            && let Err(wait) = self.rooms.attempt(now, key)
        {
            return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
        }
        self.request(Request::RoomJoin {
            conn: id,
            room: backplane::room_key(&name),
            key,
            verifier: verifier.cloned(),
            max_size: self.rooms.max_size(),
            attempts: self.config.rooms.room_attempts,
            creations: self.config.per_client.room_creations,
        });
        self.queue.start_joining(id, name);
        if let Some(c) = self.conns.get_mut(&id) {
            c.phase = Phase::Joining;
        }
    }

    /// The store let `conn` into a room.
    pub(super) fn room_joined(
        &mut self,
        now: Instant,
        conn: ConnId,
        store_key: String,
        peer: PeerId,
        others: Vec<Member>,
        locked: bool,
    ) {
        let Some(name) = self.queue.take_joining(conn) else {
            // Gone or ended while the store let it in: take it out again.
            return self.request(Request::RoomLeave {
                room: store_key,
                peer,
            });
        };
        let key = self.key(conn);
        let mut members: Vec<(PeerId, ConnId)> = others.iter().map(|m| (m.peer, m.conn)).collect();
        members.push((peer, conn));
        let room = self.rooms.mirror(now, &name, &members, locked);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::InRoom { room, peer };
        }
        tracing::debug!(conn = %conn, peer, "joined a shared room");
        let me = Member { peer, conn, key };
        for m in &others {
            if self.is_remote(m.conn) {
                self.queue.note_remote(m.conn, m.key);
                self.publish(Remote::PeerJoined {
                    to: m.conn,
                    room: store_key.clone(),
                    member: me.clone(),
                });
            } else {
                self.send(m.conn, ServerMsg::PeerJoined { peer });
            }
        }
        self.send(
            conn,
            ServerMsg::RoomJoined {
                room: name,
                peer,
                peers: others.iter().map(|m| m.peer).collect(),
                locked,
                max_size: self.rooms.max_size(),
            },
        );
    }

    /// A room message from another node for `to`, if `to` is still in that room.
    pub(super) fn remote_room(&mut self, to: ConnId, store_key: &str) -> Option<(RoomId, PeerId)> {
        match self.conns.get(&to)?.phase {
            Phase::InRoom { room, peer } if self.room_key(room) == store_key => Some((room, peer)),
            _ => None,
        }
    }
}
