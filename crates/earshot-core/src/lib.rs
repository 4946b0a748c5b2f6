//! The sans-IO heart of Earshot.
//!
//! Everything Earshot decides is decided here: who is waiting, who is matched
//! with whom, what a client's message means, which limits apply. There are no
//! sockets, no tasks and no clock: the caller passes the current time into
//! every call and moves bytes in and out, in the shape of `quinn-proto` and
//! `str0m`:
//!
//! ```text
//! board.connect(now, id, info)          // a WebSocket opened
//! board.handle_text(now, id, frame)     // a text frame arrived
//! board.handle_timeout(now)             // when poll_timeout() said so
//! board.disconnect(now, id)             // the socket closed
//! while let Some(out) = board.poll_output() { ... }   // Send or Close
//! ```
//!
//! Module map:
//!
//! - [`switchboard`]: the state machine for connections and calls (start
//!   here), one file a concern: strangers, rooms, moderation, hello; its
//!   `queue.rs` makes the one choice between a single node and several
//!   (`remote.rs`: what spans nodes).
//! - [`protocol`]: the signalling messages (client, server, signals,
//!   errors) and the decoder of client frames (`PROTOCOL.md` describes the
//!   wire format).
//! - [`matchmaker`]: the stranger queue with interest lanes.
//! - [`backplane`]: requests and events when several nodes share a store.
//! - [`bytebudget`]: byte buckets; per-source budgets that keep STUN and TURN
//!   answers from amplifying a forged flood.
//! - [`rooms`]: rooms by link: members, size, passphrase locks.
//! - [`moderation`]: reports, strikes, bans, keyed by client key.
//! - [`hex`]: lower-case hex, the one encoding of bytes as text.
//! - [`names`]: room-name rules and memorable random suggestions.
//! - [`pii`]: [`Pii`], the wrapper whose formatting is always `<redacted>`.
//! - [`pow`]: proof-of-work challenges for `hello` under load or abuse.
//! - [`ratelimit`]: token buckets on a caller-supplied clock.
//! - [`stun`]: STUN messages and attributes ([`stun::codec`], shared with
//!   TURN) and an RFC 5389 Binding responder, for the embedded STUN server.
//! - [`turn`]: the embedded TURN server (requests, allocations and relaying
//!   each in a file under `turn/server/`, REST credentials, the peer
//!   policy) and its ChannelData framing.
//!
//! Nothing here logs an address, SDP, a candidate or chat text. The
//! switchboard never sees an address (clients are opaque `ClientKey`s, HMACs
//! made by the shell); the STUN and TURN modules must see addresses to answer,
//! and keep them out of logs and `Debug`; signalling payloads' `Debug` is
//! redacted.

#![forbid(unsafe_code)]

pub mod backplane;
pub mod bytebudget;
pub mod hex;
pub mod matchmaker;
pub mod moderation;
pub mod names;
pub mod pii;
pub mod pow;
pub mod protocol;
pub mod ratelimit;
pub mod rooms;
pub mod stun;
pub mod switchboard;
pub mod turn;

pub use pii::Pii;
pub use protocol::{ClientMsg, Country, ErrorCode, ServerMsg};
pub use switchboard::{CloseReason, Config, ConnInfo, Entropy, Output, Switchboard};

/// Who a client is for abuse control: the shell's rotating HMAC of its
/// address (IPv4, or the IPv6 /64). Shared by all of that client's
/// connections; meaningless once the HMAC secret has rotated away.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ClientKey(pub [u8; 16]);

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientKey({:?})", Pii(self.0))
    }
}

/// Identifies one client connection; assigned by the shell, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}
