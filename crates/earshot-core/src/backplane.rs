//! The switchboard's side of a shared backplane: several nodes, one store.
//!
//! In backplane mode ([`crate::Switchboard::set_node`]) the switchboard no
//! longer pairs strangers or admits room members itself. It asks the shell
//! to run [`Request`]s (queue a waiter, leave the queue, join or leave a
//! room, lock it, publish to another node, record a cooldown, a block, a
//! ban, a strike, a room removal or a call's two sides, charge a client's
//! connect allowance) and is fed back [`Event`]s: the outcome of a queue or
//! room join or a connect, messages other nodes published to this one
//! ([`Remote`]), and nodes that died. Per-client allowances (connects,
//! searches, reports, room creations) and strikes are counted by the store,
//! so a client gets the same allowance and the same strikes on every node;
//! each node still checks its own counts first.
//!
//! **The store's rules live here too.** What the store must decide
//! atomically (which waiter a joiner takes, who may enter a room, when
//! strikes make a ban, whether an allowance has a token, whether a node
//! number is free) is a Lua script the shell runs on Redis, kept beside the
//! Rust rule it mirrors, with its reply decoder; a differential test in
//! `earshot-server/tests/store_rules.rs` runs both on the same random
//! inputs, and the fake store of `tests/backplane.rs` calls the Rust rules.
//! Every script works in one slot of a Redis Cluster and takes the time as
//! an argument:
//!
//! - [`layout`]: every key, its hash tag, and the layout's version;
//!   [`slot`]: which slot a key hashes to.
//! - [`nodes`]: the node registry (`heartbeat.lua`) and a node's view of
//!   who is dead, which every script that meets other nodes' entries takes.
//! - [`admission`]: a search's admission in the client's slot (allowance,
//!   ban, whom it avoids: `admit.lua`), and keep-apart sets (`avoid.lua`).
//! - [`queue`]: the stranger queue's lanes, pairing inside one
//!   (`pair.lua`), leaving, renewing, sweeping; how lanes meet.
//! - [`room`]: room admission (`room_join.lua`) and leaving.
//! - [`allowance`]: the shared token bucket (`take.lua`);
//!   [`crate::moderation::Strikes`]: pooled strikes (`strike.lua`).
//! - [`scripts`]: each script with the Lua functions it calls;
//!   [`script`]: a script's SHA-1.
//!
//! What spans two slots is done in steps, each safe alone (the modules say
//! what a step leaves open): admission then pairing, a report's allowance
//! then its strike, a room creation's charge then the join, both sides of
//! a keep-apart, a waiter leaving one lane then joining another.
//!
//! Each node keeps its own side of every call and a copy of each room it
//! has members in (the others' peer ids, connections and client keys), kept
//! current by [`Remote`] messages; the store is the authority on who may
//! join. Messages are checked against that state when they arrive: anything
//! about a call or room a connection is no longer in is dropped, and a
//! pairing that arrives too late is undone (`Requeue`, `Ended`, a room
//! leave).
//!
//! Identifiers are unique across nodes: a [`ConnId`] carries its node in the
//! top 16 bits, a call id its node in bits 32..48 (so it stays below 2^53 and
//! survives a JavaScript number).
//!
//! Everything decoded here ([`decode_remote`], [`decode_pair_reply`]) came
//! from another process and is treated as input: bounded, typed errors, no
//! panics (property-tested in `tests/properties.rs`).

pub mod admission;
pub mod allowance;
pub mod layout;
pub mod nodes;
pub mod queue;
pub mod room;
pub mod script;
pub mod scripts;
pub mod slot;

pub use queue::{PairReply, decode_pair_reply};
pub use room::{RoomReply, decode_room_reply};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{
    CallId, ClientMsg, Country, EndReason, ErrorCode, PeerId, RoomSignal, Signal, Verifier,
};
use crate::{ClientKey, ConnId};

/// A node's number, unique among live nodes.
pub type NodeId = u16;

const NODE_SHIFT: u32 = 48;
const LOCAL_MASK: u64 = (1 << NODE_SHIFT) - 1;

/// Largest pub/sub message or store reply decoded: a signal is at most the
/// client message limit (16 KiB by default), escaped once more.
pub const MAX_REMOTE_BYTES: usize = 64 * 1024;

/// The connection id for the `local`-th connection of `node`.
pub fn conn_id(node: NodeId, local: u64) -> ConnId {
    ConnId((u64::from(node) << NODE_SHIFT) | (local & LOCAL_MASK))
}

/// The node a connection lives on.
pub fn node_of(id: ConnId) -> NodeId {
    // The shift leaves exactly 16 bits.
    (id.0 >> NODE_SHIFT) as NodeId
}

/// The `counter`-th call id made by `node`.
pub fn call_id(node: NodeId, counter: u64) -> CallId {
    (u64::from(node) << 32) | (counter & 0xffff_ffff)
}

/// Someone joining the shared stranger queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiter {
    pub conn: ConnId,
    pub key: ClientKey,
    /// Normalised interest tags.
    pub interests: Vec<String>,
    /// Willing to talk to anyone now (no tags, or the interest wait is over).
    pub open: bool,
    /// How long a tagged waiter holds out for a shared interest.
    pub interest_wait: Duration,
    pub country: Option<Country>,
    /// The client's search allowance (a burst, then one per interval),
    /// charged in the store for a search or skip the client made, so that
    /// all its connections on all nodes share it; `None` for a join again.
    pub limit: Option<(u32, Duration)>,
}

/// What the switchboard asks of the backplane (`Output::Backplane`).
///
/// Exhaustive on purpose: only this workspace matches it, and a new request
/// must fail to compile where it is not yet carried out.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Pair `Waiter` with a compatible waiter atomically, or queue it.
    /// Answered with [`Event::Paired`], [`Event::Queued`], [`Event::Banned`]
    /// or [`Event::Limited`].
    /// Joining again (when the interest wait ends) keeps the queue position.
    Enqueue(Waiter),
    /// Take `conn` out of the queue, if it is still there.
    Dequeue { conn: ConnId },
    /// A connection of `key` opened: charge the client's connect allowance
    /// (a burst, then one per interval), shared by all nodes. Answered with
    /// [`Event::TooManyConnects`] if it is spent.
    Connect {
        conn: ConnId,
        key: ClientKey,
        allowance: (u32, Duration),
    },
    /// Deliver `msg` to the node of its `to` connection.
    Publish(Remote),
    /// Do not pair these two connections for a while (a skip, a report);
    /// `keys` are their clients' (the store keeps the pair with each).
    KeepApart {
        a: ConnId,
        b: ConnId,
        keys: (ClientKey, ClientKey),
        ttl: Duration,
    },
    /// Do not pair these two clients for a while (a report).
    Block {
        a: ClientKey,
        b: ClientKey,
        ttl: Duration,
    },
    /// The client may not join the queue on any node for `ttl`.
    Ban { key: ClientKey, ttl: Duration },
    /// `reporter` reported `key`: a strike of `weight` (thousandths of a
    /// full report, as the reporter's node judged it), pooled across nodes
    /// by the rule of [`crate::moderation::Strikes`]: within `rule.window`,
    /// strikes from `rule.reporters` distinct reporters (one network, one
    /// room or reporters who arrived together counting as one) weighing
    /// `rule.weight` in all ban `key` on every node (the `n`-th ban lasts
    /// `rule.ban_lengths[n]`, the last repeating). A reporter's repeated
    /// strike counts once.
    Strike {
        key: ClientKey,
        reporter: ClientKey,
        weight: u32,
        /// The reporter's network key, now and under the previous secret.
        network: ClientKey,
        previous_network: Option<ClientKey>,
        /// The [`room_tag`] of the room the report was made in.
        room: Option<u64>,
        /// How long ago the reporter's node first saw the reporter.
        age: Duration,
        rule: StrikeRule,
    },
    /// `call` began between `a` and `b` (recorded by the node that made
    /// it, so an operator or another node can see a call's parties).
    CallStart { call: CallId, a: ConnId, b: ConnId },
    /// `call` is over (either side may say so, more than once).
    CallEnd { call: CallId },
    /// Join the room with this [`room_key`], checking its size, lock and
    /// removals. Answered with [`Event::RoomJoined`] or [`Event::RoomRefused`].
    RoomJoin {
        conn: ConnId,
        room: String,
        key: ClientKey,
        verifier: Option<Verifier>,
        max_size: usize,
        /// Passphrase attempts on one room: a burst, then one per interval.
        attempts: (u32, Duration),
        /// The client's room creations, shared by all its connections on
        /// all nodes; charged when the join creates the room.
        creations: (u32, Duration),
    },
    /// `peer` left the room.
    RoomLeave { room: String, peer: PeerId },
    /// Lock the room with this verifier, or unlock it.
    RoomLock {
        room: String,
        verifier: Option<Verifier>,
    },
    /// The members removed this client: it may not come back.
    RoomRemove { room: String, key: ClientKey },
}

/// What a request must stay in order with: requests that share a key run
/// in the order the switchboard made them; the others may run at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderKey {
    Conn(ConnId),
    Client(ClientKey),
    Room(String),
    Call(CallId),
}

impl Request {
    /// The connections, clients, room or call this request is about. One
    /// connection's queue joins and leaves, a room's joins, leaves, locks
    /// and messages, and a call's start, messages and end keep their order;
    /// a signal waits only for what concerns its own two connections.
    pub fn order_keys(&self) -> Vec<OrderKey> {
        use OrderKey::{Call, Client, Conn, Room};
        match self {
            Request::Enqueue(w) => vec![Conn(w.conn), Client(w.key)],
            Request::Dequeue { conn } | Request::Connect { conn, .. } => vec![Conn(*conn)],
            Request::Publish(msg) => msg.order_keys(),
            Request::KeepApart { a, b, .. } => vec![Conn(*a), Conn(*b)],
            Request::Block { a, b, .. } => vec![Client(*a), Client(*b)],
            Request::Ban { key, .. } => vec![Client(*key)],
            Request::Strike { key, reporter, .. } => vec![Client(*key), Client(*reporter)],
            Request::CallStart { call, a, b } => vec![Call(*call), Conn(*a), Conn(*b)],
            Request::CallEnd { call } => vec![Call(*call)],
            Request::RoomJoin { conn, room, .. } => vec![Room(room.clone()), Conn(*conn)],
            Request::RoomLeave { room, .. }
            | Request::RoomLock { room, .. }
            | Request::RoomRemove { room, .. } => vec![Room(room.clone())],
        }
    }
}

/// What the backplane tells the switchboard
/// (`Switchboard::handle_backplane`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `conn`'s queue join found `partner`, who was waiting and has been
    /// taken out of the queue.
    Paired { conn: ConnId, partner: Partner },
    /// `conn` waits in the shared queue.
    Queued { conn: ConnId },
    /// `conn`'s client is banned for `ttl`.
    Banned { conn: ConnId, ttl: Duration },
    /// `conn`'s client is over its search allowance: retry after `retry`.
    Limited { conn: ConnId, retry: Duration },
    /// `conn`'s client opened connections faster than its shared allowance.
    TooManyConnects { conn: ConnId },
    /// The backplane could not run `conn`'s queue join.
    Failed { conn: ConnId },
    /// `conn` joined the room as `peer`; `others` were there already.
    RoomJoined {
        conn: ConnId,
        room: String,
        peer: PeerId,
        others: Vec<Member>,
        locked: bool,
    },
    /// The store refused `conn`'s room join (`retry` with `rate_limited`).
    RoomRefused {
        conn: ConnId,
        code: ErrorCode,
        retry: Option<Duration>,
    },
    /// Another node published this to one of ours.
    Remote(Remote),
    /// This node's heartbeat is gone: everything remote it knew is void.
    NodeDown(NodeId),
}

pub use crate::moderation::StrikeRule;

/// The waiter a queue join was paired with, as the store recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Partner {
    pub conn: ConnId,
    pub key: ClientKey,
    /// The interests both share, in the joiner's order.
    pub shared: Vec<String>,
    pub country: Option<Country>,
}

/// A room member as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub peer: PeerId,
    pub conn: ConnId,
    pub key: ClientKey,
}

/// A message from one node to a connection on another.
#[derive(Debug, Clone, PartialEq)]
pub enum Remote {
    /// `from` (joining on its node) was paired with `to` (waiting) in `call`.
    Matched {
        to: ConnId,
        from: ConnId,
        call: CallId,
        key: ClientKey,
        shared: Vec<String>,
        country: Option<Country>,
    },
    /// A signal from `from` for its partner `to`.
    Signal {
        to: ConnId,
        from: ConnId,
        signal: Signal,
    },
    /// `from` left the call with `to`.
    Ended {
        to: ConnId,
        from: ConnId,
        call: CallId,
        reason: EndReason,
    },
    /// `to` was taken from the queue for a pairing that fell through: it
    /// should join again if it is still searching.
    Requeue { to: ConnId },
    /// `member` joined `to`'s room.
    PeerJoined {
        to: ConnId,
        room: String,
        member: Member,
    },
    /// `peer` left `to`'s room.
    PeerLeft {
        to: ConnId,
        room: String,
        peer: PeerId,
    },
    /// A room signal from `from` for `to` (`signal.to` is `to`'s peer id).
    RoomSignal {
        to: ConnId,
        room: String,
        from: PeerId,
        signal: RoomSignal,
    },
    /// `to`'s room was locked or unlocked.
    RoomLock {
        to: ConnId,
        room: String,
        locked: bool,
    },
}

/// How the store names a room: a hash of its name, so the name itself is
/// never stored.
pub fn room_key(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"earshot room\0")
        .chain_update(name.as_bytes())
        .finalize();
    crate::hex::encode(&digest)
}

/// A room's tag for grouping reports made in it (see `moderation`): the
/// first 64 bits of its [`room_key`], the same on every node.
pub fn room_tag(name: &str) -> u64 {
    let key = room_key(name);
    u64::from_str_radix(&key[..16], 16).expect("room keys are hex")
}

/// A verifier as the store keeps it: 64 hex digits.
pub fn verifier_hex(v: &Verifier) -> String {
    crate::hex::encode(&v.0)
}

impl Remote {
    /// The connection this is for.
    pub fn to(&self) -> ConnId {
        match self {
            Remote::Matched { to, .. }
            | Remote::Signal { to, .. }
            | Remote::Ended { to, .. }
            | Remote::Requeue { to }
            | Remote::PeerJoined { to, .. }
            | Remote::PeerLeft { to, .. }
            | Remote::RoomSignal { to, .. }
            | Remote::RoomLock { to, .. } => *to,
        }
    }

    /// What this message must stay in order with (see
    /// [`Request::order_keys`]).
    pub fn order_keys(&self) -> Vec<OrderKey> {
        use OrderKey::{Conn, Room};
        match self {
            Remote::Matched { to, from, .. }
            | Remote::Signal { to, from, .. }
            | Remote::Ended { to, from, .. } => vec![Conn(*to), Conn(*from)],
            Remote::Requeue { to } => vec![Conn(*to)],
            Remote::PeerJoined { to, room, .. }
            | Remote::PeerLeft { to, room, .. }
            | Remote::RoomSignal { to, room, .. }
            | Remote::RoomLock { to, room, .. } => vec![Room(room.clone()), Conn(*to)],
        }
    }

    /// The JSON published on the target node's channel.
    pub fn encode(&self) -> String {
        let wire = match self {
            Remote::Matched {
                to,
                from,
                call,
                key,
                shared,
                country,
            } => Wire::Matched {
                to: to.0,
                from: from.0,
                call: *call,
                key: hex(key),
                shared: shared.clone(),
                country: country.map(|c| c.as_str().to_owned()),
            },
            Remote::Signal { to, from, signal } => Wire::Signal {
                to: to.0,
                from: from.0,
                signal: crate::ServerMsg::Signal(signal.clone()).to_json(),
            },
            Remote::Ended {
                to,
                from,
                call,
                reason,
            } => Wire::Ended {
                to: to.0,
                from: from.0,
                call: *call,
                reason: *reason,
            },
            Remote::Requeue { to } => Wire::Requeue { to: to.0 },
            Remote::PeerJoined { to, room, member } => Wire::PeerJoined {
                to: to.0,
                room: room.clone(),
                peer: member.peer,
                conn: member.conn.0,
                key: hex(&member.key),
            },
            Remote::PeerLeft { to, room, peer } => Wire::PeerLeft {
                to: to.0,
                room: room.clone(),
                peer: *peer,
            },
            Remote::RoomSignal {
                to,
                room,
                from,
                signal,
            } => Wire::RoomSignal {
                to: to.0,
                room: room.clone(),
                from: *from,
                signal: crate::ServerMsg::RoomSignal(RoomSignal {
                    from: None,
                    ..signal.clone()
                })
                .to_json(),
            },
            Remote::RoomLock { to, room, locked } => Wire::RoomLock {
                to: to.0,
                room: room.clone(),
                locked: *locked,
            },
        };
        serde_json::to_string(&wire).expect("backplane messages always serialize")
    }
}

/// Why a backplane message or reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackplaneError {
    /// Longer than [`MAX_REMOTE_BYTES`].
    #[error("backplane message too large")]
    TooLarge,
    /// Not the JSON shape expected.
    #[error("malformed backplane message")]
    Malformed,
    /// A field out of range: a client key, a country, a signal, interests.
    #[error("invalid field in a backplane message")]
    Invalid,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
enum Wire {
    Matched {
        to: u64,
        from: u64,
        call: CallId,
        key: String,
        shared: Vec<String>,
        country: Option<String>,
    },
    Signal {
        to: u64,
        from: u64,
        signal: String,
    },
    Ended {
        to: u64,
        from: u64,
        call: CallId,
        reason: EndReason,
    },
    Requeue {
        to: u64,
    },
    PeerJoined {
        to: u64,
        room: String,
        peer: PeerId,
        conn: u64,
        key: String,
    },
    PeerLeft {
        to: u64,
        room: String,
        peer: PeerId,
    },
    RoomSignal {
        to: u64,
        room: String,
        from: PeerId,
        signal: String,
    },
    RoomLock {
        to: u64,
        room: String,
        locked: bool,
    },
}

/// Decodes a message another node published.
pub fn decode_remote(text: &str) -> Result<Remote, BackplaneError> {
    if text.len() > MAX_REMOTE_BYTES {
        return Err(BackplaneError::TooLarge);
    }
    let wire: Wire = serde_json::from_str(text).map_err(|_| BackplaneError::Malformed)?;
    Ok(match wire {
        Wire::Matched {
            to,
            from,
            call,
            key,
            shared,
            country,
        } => Remote::Matched {
            to: ConnId(to),
            from: ConnId(from),
            call,
            key: unhex(&key)?,
            shared: check_interests(shared)?,
            country: check_country(country)?,
        },
        Wire::Signal { to, from, signal } => match crate::protocol::decode(&signal) {
            Ok(ClientMsg::Signal(signal)) => Remote::Signal {
                to: ConnId(to),
                from: ConnId(from),
                signal,
            },
            _ => return Err(BackplaneError::Invalid),
        },
        Wire::Ended {
            to,
            from,
            call,
            reason,
        } => Remote::Ended {
            to: ConnId(to),
            from: ConnId(from),
            call,
            reason,
        },
        Wire::Requeue { to } => Remote::Requeue { to: ConnId(to) },
        Wire::PeerJoined {
            to,
            room,
            peer,
            conn,
            key,
        } => Remote::PeerJoined {
            to: ConnId(to),
            room: check_room(room)?,
            member: Member {
                peer,
                conn: ConnId(conn),
                key: unhex(&key)?,
            },
        },
        Wire::PeerLeft { to, room, peer } => Remote::PeerLeft {
            to: ConnId(to),
            room: check_room(room)?,
            peer,
        },
        Wire::RoomSignal {
            to,
            room,
            from,
            signal,
        } => match crate::protocol::decode(&signal) {
            Ok(ClientMsg::RoomSignal(signal)) if signal.to.is_some() => Remote::RoomSignal {
                to: ConnId(to),
                room: check_room(room)?,
                from,
                signal,
            },
            _ => return Err(BackplaneError::Invalid),
        },
        Wire::RoomLock { to, room, locked } => Remote::RoomLock {
            to: ConnId(to),
            room: check_room(room)?,
            locked,
        },
    })
}

fn check_room(room: String) -> Result<String, BackplaneError> {
    let ok = room.len() == 64 && room.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(room).ok_or(BackplaneError::Invalid)
}

/// A client key as 32 lower-case hex digits, as the store keys it.
pub fn hex(key: &ClientKey) -> String {
    crate::hex::encode(&key.0)
}

pub(crate) fn unhex(text: &str) -> Result<ClientKey, BackplaneError> {
    crate::hex::decode(text)
        .map(ClientKey)
        .ok_or(BackplaneError::Invalid)
}

pub(crate) fn check_country(c: Option<String>) -> Result<Option<Country>, BackplaneError> {
    c.map(|c| Country::new(&c).ok_or(BackplaneError::Invalid))
        .transpose()
}

/// Shared interests were normalised by a node; still, bound what is trusted.
pub(crate) fn check_interests(tags: Vec<String>) -> Result<Vec<String>, BackplaneError> {
    if tags.len() > 32 || tags.iter().any(|t| t.is_empty() || t.len() > 128) {
        return Err(BackplaneError::Invalid);
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_node() {
        let id = conn_id(0xbeef, 42);
        assert_eq!(node_of(id), 0xbeef);
        assert_eq!(id.0 & LOCAL_MASK, 42);
        assert!(call_id(u16::MAX, u64::MAX) < 1 << 53);
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let key = ClientKey([0xa5; 16]);
        assert_eq!(unhex(&hex(&key)), Ok(key));
        assert_eq!(unhex("zz"), Err(BackplaneError::Invalid));
    }
}
