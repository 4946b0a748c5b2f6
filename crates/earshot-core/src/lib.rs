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
//! - [`switchboard`]: the state machine for connections and calls (start here).
//! - [`protocol`]: the signalling messages and the decoder of client frames
//!   (`PROTOCOL.md` describes the wire format).
//! - [`matchmaker`]: the stranger queue with interest lanes.
//! - [`ratelimit`]: token buckets on a caller-supplied clock.
//! - [`stun`]: an RFC 5389 Binding responder, for the embedded STUN server.
//!
//! Nothing here logs an address, SDP, a candidate or chat text: the core never
//! sees an address, and the `Debug` of signalling payloads is redacted.

pub mod matchmaker;
pub mod protocol;
pub mod ratelimit;
pub mod stun;
pub mod switchboard;

pub use protocol::{ClientMsg, Country, ErrorCode, ServerMsg};
pub use switchboard::{CloseReason, Config, ConnInfo, Output, Switchboard};

/// Identifies one client connection; assigned by the shell, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}
