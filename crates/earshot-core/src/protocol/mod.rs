//! The signalling protocol's messages, as `PROTOCOL.md` describes them, and
//! the decoder of client frames. [`ServerMsg`] is one shape for both ends:
//! the server encodes it, clients (`earshot-peer`) decode it (see
//! `server_decode`).
//!
//! Decoding is strict about what it relays: a `signal` is parsed into typed
//! fields and re-encoded, so nothing but a session description or an ICE
//! candidate ever passes from one client to another. `Debug` of anything that
//! carries SDP or a candidate prints its length only, so a stray `?msg` in a
//! log line cannot leak it.
//!
//! - `client.rs`: what clients send ([`ClientMsg`]).
//! - `signal.rs`: the signals relayed between parties.
//! - `server.rs`: what the server sends ([`ServerMsg`]); `server_decode.rs`
//!   decodes it for clients.
//! - `errors.rs`: [`ErrorCode`] and [`DecodeError`].
//! - `decode.rs`: [`decode`], the strict decoder of client frames.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

mod client;
mod decode;
mod errors;
mod server;
mod server_decode;
mod signal;
#[cfg(test)]
mod tests;

pub use client::*;
pub use decode::*;
pub use errors::*;
pub use server::*;
pub use signal::*;

/// The protocol version this server speaks (`hello.version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Identifies one call (one matched pair) for the lifetime of the process.
pub type CallId = u64;

/// Identifies a member within one room.
pub type PeerId = u32;

/// Longest `auth` value relayed with a room signal (base64url of an HMAC).
pub const MAX_AUTH_LEN: usize = 128;
