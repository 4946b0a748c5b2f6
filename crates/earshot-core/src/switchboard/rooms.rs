//! Rooms by link: joining (with the passphrase verifier of a locked room),
//! the signals between members, and locking.

use super::*;

impl Switchboard {
    pub(super) fn join_room(
        &mut self,
        now: Instant,
        id: ConnId,
        phase: Phase,
        room: &str,
        verifier: Option<&Verifier>,
    ) {
        let busy = match phase {
            Phase::Joining => Some(ErrorCode::AlreadyInRoom),
            Phase::Idle => None,
            Phase::Searching => Some(ErrorCode::AlreadySearching),
            Phase::InCall { .. } => Some(ErrorCode::AlreadyInCall),
            Phase::InRoom { .. } => Some(ErrorCode::AlreadyInRoom),
        };
        if let Some(code) = busy {
            return self.reject(now, id, code, None);
        }
        let name = match names::normalize(room) {
            Ok(name) => name,
            Err(code) => return self.reject(now, id, code, None),
        };
        let key = self.key(id);
        if !self.rooms.exists(&name)
            && let Err(wait) = self.clients.room_creations.take(now, &key)
        {
            return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
        }
        if self.queue.is_shared() {
            return self.join_shared_room(now, id, key, name, verifier);
        }
        match self.rooms.join(now, &name, id, key, verifier) {
            Ok(joined) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::InRoom {
                        room: joined.room,
                        peer: joined.peer,
                    };
                }
                tracing::debug!(conn = %id, peer = joined.peer, "joined a room");
                for &(_, other) in &joined.others {
                    self.send(other, ServerMsg::PeerJoined { peer: joined.peer });
                }
                self.send(
                    id,
                    ServerMsg::RoomJoined {
                        room: joined.name,
                        peer: joined.peer,
                        peers: joined.others.iter().map(|&(p, _)| p).collect(),
                        locked: joined.locked,
                        max_size: self.rooms.max_size(),
                    },
                );
            }
            Err((code, retry)) => {
                self.rooms.forget_if_empty(&name);
                self.reject(now, id, code, retry);
            }
        }
    }

    pub(super) fn relay_in_room(
        &mut self,
        now: Instant,
        id: ConnId,
        phase: Phase,
        mut signal: RoomSignal,
    ) {
        let Phase::InRoom { room, peer } = phase else {
            return self.reject(now, id, ErrorCode::NotInRoom, None);
        };
        let target = signal
            .to
            .filter(|&to| to != peer)
            .and_then(|to| self.rooms.member(room, to));
        let Some(target) = target else {
            return self.reject(now, id, ErrorCode::UnknownPeer, None);
        };
        tracing::trace!(conn = %id, "relaying a room signal");
        if self.is_remote(target) {
            let room = self.room_key(room);
            return self.publish(Remote::RoomSignal {
                to: target,
                room,
                from: peer,
                signal,
            });
        }
        signal.to = None;
        signal.from = Some(peer);
        self.send(target, ServerMsg::RoomSignal(signal));
    }

    pub(super) fn lock_room(
        &mut self,
        now: Instant,
        id: ConnId,
        phase: Phase,
        verifier: Option<Verifier>,
    ) {
        let Phase::InRoom { room, .. } = phase else {
            return self.reject(now, id, ErrorCode::NotInRoom, None);
        };
        let locked = verifier.is_some();
        tracing::debug!(conn = %id, locked, "room lock changed");
        self.request(Request::RoomLock {
            room: self.room_key(room),
            verifier: verifier.clone(),
        });
        for member in self.rooms.set_lock(room, verifier) {
            if self.is_remote(member) {
                let key = self.room_key(room);
                self.publish(Remote::RoomLock {
                    to: member,
                    room: key,
                    locked,
                });
            } else {
                self.send(member, ServerMsg::RoomLockState { locked });
            }
        }
    }
}
