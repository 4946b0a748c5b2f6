//! Rooms by link: who is in which room, its size limit and its lock.
//!
//! A room exists while it has members and is forgotten, lock included, when
//! the last one leaves. Names are kept only as map keys, never logged. A lock
//! is a passphrase *verifier* (the passphrase never reaches the server),
//! compared in constant time; attempts are limited per client key and per
//! room, so a locked room cannot be brute-forced online.
//!
//! Invariants: every room has at least one member; peer ids are unique within
//! a room; a connection is a member of at most one room.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::{ErrorCode, PeerId, Verifier};
use crate::ratelimit::{KeyedBuckets, TokenBucket};
use crate::{ClientKey, ConnId};

/// Identifies a room for as long as it exists; names stay out of connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(u64);

/// Tunables for rooms.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    pub max_size: usize,
    /// Passphrase attempts one client may make: a burst, then one per interval.
    pub client_attempts: (u32, Duration),
    /// Passphrase attempts on one room, from everyone together.
    pub room_attempts: (u32, Duration),
    /// Reports from more than `num/den` of the other members remove someone.
    pub report_majority: (u32, u32),
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            max_size: 6,
            client_attempts: (5, Duration::from_secs(12)),
            room_attempts: (20, Duration::from_secs(3)),
            report_majority: (1, 2),
        }
    }
}

#[derive(Debug)]
struct Room {
    name: String,
    /// In joining order.
    members: Vec<(PeerId, ConnId)>,
    next_peer: PeerId,
    verifier: Option<Verifier>,
    attempts: TokenBucket,
    /// Reported peer → the peers who reported them.
    reports: HashMap<PeerId, Vec<PeerId>>,
    /// Clients the members removed: they cannot come back while the room lives.
    removed: Vec<ClientKey>,
}

/// A successful join.
#[derive(Debug)]
pub struct Joined {
    pub room: RoomId,
    pub name: String,
    pub peer: PeerId,
    /// Everyone who was already there.
    pub others: Vec<(PeerId, ConnId)>,
    pub locked: bool,
}

#[derive(Debug)]
pub struct Rooms {
    config: RoomConfig,
    by_name: HashMap<String, RoomId>,
    rooms: HashMap<RoomId, Room>,
    next_id: u64,
    client_attempts: KeyedBuckets<ClientKey>,
}

impl Rooms {
    pub fn new(config: RoomConfig) -> Rooms {
        Rooms::with_max_keys(config, crate::ratelimit::DEFAULT_MAX_KEYS)
    }

    /// Rooms whose per-client passphrase allowances remember at most
    /// `max_keys` clients (see [`KeyedBuckets`]).
    pub fn with_max_keys(config: RoomConfig, max_keys: usize) -> Rooms {
        let (burst, interval) = config.client_attempts;
        Rooms {
            client_attempts: KeyedBuckets::with_max_keys(interval, burst, max_keys),
            config,
            by_name: HashMap::new(),
            rooms: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn max_size(&self) -> usize {
        self.config.max_size
    }

    /// How many rooms exist.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// The room called `name`, created empty if there is none.
    fn open(&mut self, now: Instant, name: &str) -> RoomId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = RoomId(self.next_id);
        self.next_id += 1;
        let (burst, interval) = self.config.room_attempts;
        self.rooms.insert(
            id,
            Room {
                name: name.to_string(),
                members: Vec::new(),
                next_peer: 1,
                verifier: None,
                attempts: TokenBucket::every(now, interval, burst),
                reports: HashMap::new(),
                removed: Vec::new(),
            },
        );
        self.by_name.insert(name.to_string(), id);
        id
    }

    /// Adds `conn` to the room called `name` (already normalised), creating it.
    ///
    /// Errors: `RoomFull`, `PassphraseRequired`, `RateLimited` (with the
    /// wait), `WrongPassphrase`.
    pub fn join(
        &mut self,
        now: Instant,
        name: &str,
        conn: ConnId,
        key: ClientKey,
        verifier: Option<&Verifier>,
    ) -> Result<Joined, (ErrorCode, Option<Duration>)> {
        let id = self.open(now, name);
        let room = self.rooms.get_mut(&id).expect("by_name points at rooms");
        if room.removed.contains(&key) {
            return Err((ErrorCode::Removed, None));
        }
        if room.members.len() >= self.config.max_size {
            return Err((ErrorCode::RoomFull, None));
        }
        if let Some(lock) = &room.verifier {
            let Some(given) = verifier else {
                return Err((ErrorCode::PassphraseRequired, None));
            };
            self.client_attempts
                .take(now, &key)
                .map_err(|wait| (ErrorCode::RateLimited, Some(wait)))?;
            room.attempts
                .take(now)
                .map_err(|wait| (ErrorCode::RateLimited, Some(wait)))?;
            if !lock.ct_eq(given) {
                return Err((ErrorCode::WrongPassphrase, None));
            }
        }
        let peer = room.next_peer;
        room.next_peer += 1;
        let others = room.members.clone();
        room.members.push((peer, conn));
        Ok(Joined {
            room: id,
            name: room.name.clone(),
            peer,
            others,
            locked: room.verifier.is_some(),
        })
    }

    /// A room may have been created empty by a refused first join: forget it.
    pub fn forget_if_empty(&mut self, name: &str) {
        if let Some(&id) = self.by_name.get(name)
            && self.rooms.get(&id).is_some_and(|r| r.members.is_empty())
        {
            self.rooms.remove(&id);
            self.by_name.remove(name);
        }
    }

    /// Whether a room of this name exists (joining it creates nothing).
    pub fn exists(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// `reporter` reports `target` in `room`. True when enough of the other
    /// members have: the caller then removes `target` with `remove`.
    pub fn report(&mut self, room: RoomId, reporter: PeerId, target: PeerId) -> bool {
        let Some(r) = self.rooms.get_mut(&room) else {
            return false;
        };
        let by = r.reports.entry(target).or_default();
        if !by.contains(&reporter) {
            by.push(reporter);
        }
        let present = by
            .iter()
            .filter(|p| r.members.iter().any(|(m, _)| m == *p))
            .count() as u64;
        let others = r.members.len().saturating_sub(1) as u64;
        let (num, den) = self.config.report_majority;
        present * u64::from(den) > others * u64::from(num)
    }

    /// Takes `peer` out of `room` for good: its client key may not rejoin.
    pub fn remove(&mut self, room: RoomId, peer: PeerId, key: ClientKey) -> Vec<(PeerId, ConnId)> {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.removed.push(key);
        }
        self.leave(room, peer)
    }

    /// Removes `peer` from `room`; returns who is left.
    pub fn leave(&mut self, room: RoomId, peer: PeerId) -> Vec<(PeerId, ConnId)> {
        let Some(r) = self.rooms.get_mut(&room) else {
            return Vec::new();
        };
        r.members.retain(|&(p, _)| p != peer);
        r.reports.remove(&peer);
        if r.members.is_empty() {
            let r = self.rooms.remove(&room).expect("just looked up");
            self.by_name.remove(&r.name);
            return Vec::new();
        }
        r.members.clone()
    }

    /// Sets or clears the lock; returns the members to tell.
    pub fn set_lock(&mut self, room: RoomId, verifier: Option<Verifier>) -> Vec<ConnId> {
        match self.rooms.get_mut(&room) {
            Some(r) => {
                r.verifier = verifier;
                r.members.iter().map(|&(_, c)| c).collect()
            }
            None => Vec::new(),
        }
    }

    /// Backplane mode: this node's copy of a room held in the shared store.
    /// Adds the members it lacks (peer ids as the store gave them) and sets
    /// whether it is locked; the lock itself is checked by the store.
    pub fn mirror(
        &mut self,
        now: Instant,
        name: &str,
        members: &[(PeerId, ConnId)],
        locked: bool,
    ) -> RoomId {
        let id = self.open(now, name);
        let room = self.rooms.get_mut(&id).expect("by_name points at rooms");
        for &(peer, conn) in members {
            if !room.members.iter().any(|&(p, _)| p == peer) {
                room.members.push((peer, conn));
            }
        }
        room.members.sort_unstable_by_key(|&(p, _)| p);
        room.verifier = locked.then(|| room.verifier.clone().unwrap_or(Verifier([0; 32])));
        id
    }

    /// Backplane mode: forgets this node's copy of a room (no member here any more).
    pub fn forget(&mut self, room: RoomId) {
        if let Some(r) = self.rooms.remove(&room) {
            self.by_name.remove(&r.name);
        }
    }

    pub fn is_locked(&self, room: RoomId) -> bool {
        self.rooms.get(&room).is_some_and(|r| r.verifier.is_some())
    }

    /// The room's name, for as long as it exists.
    pub fn name(&self, room: RoomId) -> Option<&str> {
        self.rooms.get(&room).map(|r| r.name.as_str())
    }

    /// Everyone in `room`, in peer order.
    pub fn members(&self, room: RoomId) -> Vec<(PeerId, ConnId)> {
        self.rooms
            .get(&room)
            .map(|r| r.members.clone())
            .unwrap_or_default()
    }

    /// Every room and member, for backplane bookkeeping.
    pub fn all_members(&self) -> impl Iterator<Item = (RoomId, PeerId, ConnId)> + '_ {
        self.rooms
            .iter()
            .flat_map(|(&id, r)| r.members.iter().map(move |&(p, c)| (id, p, c)))
    }

    /// Takes one passphrase attempt from `key`'s allowance (backplane mode,
    /// where the store checks the lock).
    pub fn attempt(&mut self, now: Instant, key: ClientKey) -> Result<(), Duration> {
        self.client_attempts.take(now, &key)
    }

    /// The connection of `peer` in `room`.
    pub fn member(&self, room: RoomId, peer: PeerId) -> Option<ConnId> {
        self.rooms
            .get(&room)?
            .members
            .iter()
            .find(|&&(p, _)| p == peer)
            .map(|&(_, c)| c)
    }

    /// Checks this module's invariants against who the switchboard thinks is where.
    pub fn check(&self, in_room: &[(ConnId, RoomId, PeerId)]) -> Result<(), String> {
        let mut seen = 0;
        for (id, r) in &self.rooms {
            if r.members.is_empty() {
                return Err(format!("{id:?} is empty but kept"));
            }
            if self.by_name.get(&r.name) != Some(id) {
                return Err(format!("{id:?} is not indexed by its name"));
            }
            let mut peers: Vec<PeerId> = r.members.iter().map(|&(p, _)| p).collect();
            peers.sort_unstable();
            peers.dedup();
            if peers.len() != r.members.len() {
                return Err(format!("{id:?} has a peer id twice"));
            }
            if r.members.len() > self.config.max_size {
                return Err(format!("{id:?} is over its size"));
            }
            seen += r.members.len();
        }
        if self.by_name.len() != self.rooms.len() {
            return Err("room names and rooms disagree".into());
        }
        for &(conn, room, peer) in in_room {
            if self.member(room, peer) != Some(conn) {
                return Err(format!("{conn} thinks it is {peer} in {room:?}"));
            }
        }
        if seen != in_room.len() {
            return Err(format!(
                "{seen} room members but {} connections in rooms",
                in_room.len()
            ));
        }
        Ok(())
    }
}
