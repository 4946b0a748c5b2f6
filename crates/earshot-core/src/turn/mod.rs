//! An embedded TURN server (RFC 5766 / RFC 8656, UDP relays only), sans-IO.
//!
//! TURN lets a browser behind a symmetric NAT, or one that hides its address
//! ("Hide my IP"), reach its partner through a relay address on the server.
//! Media stays end-to-end encrypted (DTLS-SRTP); the relay only sees
//! ciphertext and the two addresses.
//!
//! [`TurnServer`] decides everything: authentication (long-term credentials
//! in the TURN REST scheme, see [`auth`]), allocations and their lifetimes,
//! permissions, channels, and what happens to every datagram. The shell
//! (`earshot-server`'s `turn` module) owns the sockets and the clock:
//!
//! ```text
//! turn.handle_client(now, unix, client, bytes)  // a datagram or TCP frame from a client
//! turn.handle_peer(now, allocation, peer, bytes) // a datagram on a relay socket
//! turn.relay_bound(allocation, Ok(port))        // answer to TurnOutput::BindRelay
//! turn.client_closed(client)                    // a TCP connection ended
//! turn.handle_timeout(now)                      // when poll_timeout() said so
//! while let Some(out) = turn.poll_output() { ... }  // ToClient, ToPeer, BindRelay, ReleaseRelay
//! ```
//!
//! Relay ports come from the shell: an allocation that passes every check
//! yields [`TurnOutput::BindRelay`]; the shell binds a UDP socket in its
//! port range and reports the port (or failure) with
//! [`TurnServer::relay_bound`], and only then is the client answered.
//! [`TurnOutput::ReleaseRelay`] closes it.
//!
//! Modules: [`codec`] (ChannelData and TCP framing; the STUN messages
//! themselves are [`crate::stun::codec`]'s, shared with the STUN server and
//! test clients), [`auth`] (REST credentials, keys, nonces), [`policy`]
//! (which peers a relay may reach), `server` (the state machine, its quotas
//! and budgets).

pub mod auth;
pub mod codec;
pub mod policy;
mod server;

pub use auth::{long_term_key, rest_credentials, rest_password};
pub use policy::{Cidr, PeerPolicy};
// `server` names these without the prefix; out here they carry it, so that
// each is one name across the workspace (the switchboard has a `Config`,
// an `Output` and `Stats`, the server's listener a `ClientAddr`).
pub use server::{
    AllocationId, ClientAddr as TurnClient, Config as TurnConfig, CredentialCheck,
    Output as TurnOutput, RelayUnavailable, Stats as TurnStats, Transport, TurnServer,
};
