//! `earshot-peer`: a headless WebRTC client that speaks Earshot's protocol
//! exactly as the browser client does, for end-to-end tests, bots and load.
//!
//! It joins the stranger queue or a room (locked rooms included), negotiates
//! with the server-assigned roles, sends a tone or a WAV file as Opus, and
//! measures what it receives; chat goes over the `chat` data channel.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use earshot_peer::{PeerEvent, Peer, PeerConfig, audio::Source};
//! let mut peer = Peer::connect("http://127.0.0.1:8080/", PeerConfig {
//!     source: Source::Tone(440.0), ..PeerConfig::default() }).await?;
//! peer.search(&["music"])?;
//! while let Some(event) = peer.next_event().await {
//!     if let PeerEvent::ChatOpen { .. } = event { peer.send_chat("hi").await?; }
//! }
//! # Ok(()) }
//! ```
//!
//! Module map:
//!
//! - [`peer`]: the [`Peer`] handle, and (in `peer/driver.rs`) the task that
//!   drives the signalling WebSocket, the UDP socket and the connections
//!   (start here).
//! - `conn`: one WebRTC connection on str0m (sans-IO): negotiation, audio,
//!   the data channel, per-connection stats.
//! - [`wire`]: signalling messages out (frames in are the core's
//!   `ServerMsg`, decoded by `ServerMsg::from_json`), data-channel
//!   messages both ways, proof of work.
//! - [`roomcrypto`]: the locked-room passphrase maths (verifier, auth).
//! - [`safetywords`]: the safety words and their commit-then-reveal
//!   exchange over the data channel.
//! - [`audio`]: tone and WAV sources, Opus, level and frequency measurement,
//!   WAV reading and writing.
//!
//! ICE is host candidates only, from the one UDP socket the peer binds
//! (`PeerConfig::bind`); no STUN or TURN is used, so "hide my IP" relaying is
//! not supported. Nothing here logs an address, SDP, candidate, passphrase or
//! chat text.

#![forbid(unsafe_code)]

pub mod audio;
mod conn;
pub mod peer;
pub mod roomcrypto;
pub mod safetywords;
pub mod wire;

pub use conn::ConnStats;
pub use peer::{Peer, PeerConfig, PeerError, PeerEvent, PeerStats};
pub use wire::Target;
