//! The TURN state machine: allocations, permissions, channels, and the
//! routing of every client message and peer datagram.
//!
//! Invariants:
//! - At most one allocation per client 5-tuple (transport and address; the
//!   server side is the shell's single listen address), at most
//!   `max_allocations` in all, `max_allocations_per_client` per client (an
//!   IPv4 address or an IPv6 /64) and `max_allocations_per_credential` per
//!   username, whatever addresses it comes from.
//! - Relayed traffic flows only between an allocation's client and peers
//!   whose IP holds an unexpired permission, in both directions, and every
//!   peer passed the [`PeerPolicy`] (see `policy`): never a private,
//!   loopback, link-local or otherwise special address, nor one of the
//!   server's own services. Traffic between two of our own relays is handed
//!   over in memory and never touches a socket.
//! - Each allocation relays at most `max_bps` each way.
//! - Answers to unauthenticated UDP requests draw on the source's
//!   [`AnswerBudget`]: the server never amplifies a forged flood.
//! - Every allocation is deleted by `handle_timeout` once its lifetime runs
//!   out; its relay socket is released with it.
//! - Never panics on client or peer input (property-tested below). Every
//!   answer is a well-formed STUN message with FINGERPRINT, carrying the
//!   request's transaction id, and MESSAGE-INTEGRITY once authenticated.
//! - Never logs an address, a username or a key: only kinds and counts, and
//!   the `Debug` of everything here that holds an address is redacted.
//!
//! Here: the types, the state and the entry points (`handle_client`,
//! `handle_peer`, `handle_timeout`). `requests.rs` routes and answers a
//! client's requests, `allocations.rs` creates, refreshes and deletes
//! allocations, `relay.rs` keeps permissions and channels and relays data;
//! `config.rs` holds the settings and counters.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{self, Nonces};
use super::codec::{MAX_PAYLOAD, decode_channel_data, encode_channel_data, is_channel};
use super::policy::{Refusal, Verdict};
use crate::Pii;
use crate::bytebudget::{AnswerBudget, ByteBucket, source_key};
use crate::stun::codec::{Class, Encoder, Message, attr, method};

/// How long a permission lasts (RFC 5766 §8: fixed at 300 s).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 5766 §11: fixed at 600 s).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// REQUESTED-TRANSPORT's protocol number for UDP.
const PROTO_UDP: u8 = 17;
/// At most this many types are listed in a 420's UNKNOWN-ATTRIBUTES.
const MAX_UNKNOWN_LISTED: usize = 16;
/// Comprehension-required attributes this server understands in requests;
/// any other below 0x8000 earns a 420 (DONT-FRAGMENT and RESERVATION-TOKEN
/// among them: those features are not offered).
const KNOWN: [u16; 11] = [
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::REQUESTED_TRANSPORT,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::XOR_PEER_ADDRESS,
    attr::CHANNEL_NUMBER,
    attr::DATA,
];

/// The transport between a client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP: framed as TCP, but a 5-tuple of its own (another
    /// server port), so one client address may hold both at once.
    Tls,
}

/// A client's side of its 5-tuple. Over TCP the address names the
/// connection; the shell keeps the map from one to the other.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl fmt::Debug for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientAddr({:?}, {:?})", self.transport, Pii(self.addr))
    }
}

/// Names an allocation (and its relay socket); never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

/// The shell could not bind a relay socket (no free port in its range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no relay port available")]
pub struct RelayUnavailable;

/// What the shell must do next.
pub enum Output {
    /// Send `data` to a client: one UDP datagram, or one frame on its TCP
    /// connection (already padded as TCP requires).
    ToClient { client: ClientAddr, data: Vec<u8> },
    /// Send `data` as one datagram from the allocation's relay socket.
    ToPeer {
        allocation: AllocationId,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// Bind a UDP relay socket for a new allocation (on an even port if
    /// `even_port`, RFC 5766 §14.6), then call [`TurnServer::relay_bound`]
    /// with its port or the failure.
    BindRelay {
        allocation: AllocationId,
        even_port: bool,
    },
    /// The allocation is gone: close its relay socket.
    ReleaseRelay { allocation: AllocationId },
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::ToClient { client, data } => f
                .debug_struct("ToClient")
                .field("client", client)
                .field("len", &data.len())
                .finish(),
            Output::ToPeer {
                allocation,
                peer,
                data,
            } => f
                .debug_struct("ToPeer")
                .field("allocation", allocation)
                .field("peer", &Pii(peer))
                .field("len", &data.len())
                .finish(),
            Output::BindRelay {
                allocation,
                even_port,
            } => f
                .debug_struct("BindRelay")
                .field("allocation", allocation)
                .field("even_port", even_port)
                .finish(),
            Output::ReleaseRelay { allocation } => f
                .debug_struct("ReleaseRelay")
                .field("allocation", allocation)
                .finish(),
        }
    }
}

/// Says whether a REST username still names a live signalling session
/// (not ended, not banned): only those get new allocations.
pub type CredentialCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

mod allocations;
mod config;
mod relay;
mod requests;

pub use config::{Config, Stats};

struct Allocation {
    client: ClientAddr,
    /// Later requests must use the same username (441 otherwise).
    username: String,
    key: [u8; 16],
    /// `None` while the shell binds the relay socket.
    relay_port: Option<u16>,
    allocate_txid: [u8; 12],
    /// Granted lifetime, as last told to the client.
    lifetime: Duration,
    expires: Instant,
    /// When this allocation's entry in the timer heap fires: `expires`,
    /// or earlier if the lifetime grew since (it is then re-armed).
    armed: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    channel_of_peer: HashMap<SocketAddr, u16>,
    /// Transaction ids of Data indications: unique per allocation, and
    /// telling the client nothing it does not know.
    indications: u64,
    /// Bandwidth caps, client to peers and peers to client.
    outbound: Option<ByteBucket>,
    inbound: Option<ByteBucket>,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|&t| t > now)
    }

    fn channel_peer(&self, channel: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .get(&channel)
            .filter(|(_, t)| *t > now)
            .map(|(peer, _)| *peer)
    }

    fn prune(&mut self, now: Instant) {
        self.permissions.retain(|_, t| *t > now);
        let channel_of_peer = &mut self.channel_of_peer;
        self.channels.retain(|_, (peer, t)| {
            let live = *t > now;
            if !live {
                channel_of_peer.remove(peer);
            }
            live
        });
    }
}

/// The result of authenticating a request.
struct Auth<'a> {
    key: [u8; 16],
    username: &'a str,
}

/// The sans-IO TURN server. See the module documentation of `turn`.
pub struct TurnServer {
    config: Config,
    nonces: Nonces,
    allocations: HashMap<AllocationId, Allocation>,
    by_client: HashMap<ClientAddr, AllocationId>,
    /// Allocations by bound relay port, for relay-to-relay traffic.
    by_port: HashMap<u16, AllocationId>,
    per_client: HashMap<u128, usize>,
    /// Allocations by REST tag (see `max_allocations_per_credential`).
    per_credential: HashMap<String, usize>,
    /// Made at the first unauthenticated answer (it needs a clock).
    answers: Option<AnswerBudget>,
    /// The `now` of the input being handled.
    now: Option<Instant>,
    /// (when, allocation) entries; stale ones are skipped when they pop.
    timers: BinaryHeap<Reverse<(Instant, AllocationId)>>,
    next_id: u64,
    outputs: VecDeque<Output>,
    stats: Stats,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("allocations", &self.allocations.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    pub fn new(config: Config) -> TurnServer {
        TurnServer {
            nonces: Nonces::new(config.nonce_key, config.nonce_ttl),
            config,
            allocations: HashMap::new(),
            by_client: HashMap::new(),
            by_port: HashMap::new(),
            per_client: HashMap::new(),
            per_credential: HashMap::new(),
            answers: None,
            now: None,
            timers: BinaryHeap::new(),
            next_id: 0,
            outputs: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            allocations: self.allocations.len(),
            rate_limited_answers: self.answers.as_ref().map_or(0, |a| a.limited),
            ..self.stats
        }
    }

    /// The next output for the shell to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When `handle_timeout` should next be called (possibly early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Deletes the allocations whose lifetime has run out.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(a) = self.allocations.get_mut(&id) else {
                continue;
            };
            if a.armed != at {
                continue;
            }
            if a.expires <= now {
                tracing::debug!("turn: allocation expired");
                self.delete(id);
            } else {
                a.armed = a.expires;
                self.timers.push(Reverse((a.expires, id)));
            }
        }
    }

    /// A UDP datagram, or one frame of a TCP stream, from a client.
    pub fn handle_client(&mut self, now: Instant, now_unix: u64, from: ClientAddr, bytes: &[u8]) {
        self.now = Some(now);
        if bytes.first().is_some_and(|b| b >> 6 == 0b01) {
            self.channel_data_from_client(now, from, bytes);
            return;
        }
        let msg = match Message::decode(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                self.stats.dropped += 1;
                tracing::trace!(error = %e, "turn: undecodable client input dropped");
                return;
            }
        };
        match msg.class {
            Class::Request => self.request(now, now_unix, from, &msg),
            Class::Indication if msg.method == method::SEND => {
                self.send_indication(now, from, &msg)
            }
            // Responses are not for a server; other indications (a Binding
            // keepalive) need nothing.
            _ => {}
        }
    }

    /// A datagram that arrived on an allocation's relay socket.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        from: SocketAddr,
        data: &[u8],
    ) {
        let from = unmap(from);
        let Some(a) = self.allocations.get_mut(&allocation) else {
            self.stats.dropped += 1;
            return;
        };
        if !a.permitted(from.ip(), now) || data.len() > MAX_PAYLOAD {
            self.stats.dropped += 1;
            return;
        }
        if a.inbound.as_mut().is_some_and(|b| !b.take(now, data.len())) {
            self.stats.over_bandwidth += 1;
            return;
        }
        let channel = a
            .channel_of_peer
            .get(&from)
            .copied()
            .filter(|&c| a.channel_peer(c, now) == Some(from));
        let out = match channel {
            Some(channel) => {
                encode_channel_data(channel, data, a.client.transport != Transport::Udp)
            }
            None => {
                a.indications += 1;
                let mut txid = [0; 12];
                txid[4..].copy_from_slice(&a.indications.to_be_bytes());
                let mut e = Encoder::new(method::DATA, Class::Indication, txid);
                e.xor_address(attr::XOR_PEER_ADDRESS, from)
                    .add(attr::DATA, data);
                e.finish()
            }
        };
        let client = a.client;
        self.stats.to_clients += 1;
        self.outputs
            .push_back(Output::ToClient { client, data: out });
    }

    /// The shell's answer to [`Output::BindRelay`].
    pub fn relay_bound(&mut self, allocation: AllocationId, port: Result<u16, RelayUnavailable>) {
        let Some(a) = self.allocations.get_mut(&allocation) else {
            // Deleted while binding (its client went away).
            if port.is_ok() {
                self.outputs.push_back(Output::ReleaseRelay { allocation });
            }
            return;
        };
        match port {
            Ok(port) => {
                a.relay_port = Some(port);
                self.by_port.insert(port, allocation);
                tracing::debug!(
                    allocations = self.allocations.len(),
                    "turn: allocation created"
                );
                self.allocate_success(allocation);
            }
            Err(RelayUnavailable) => {
                let (client, txid, key) = (a.client, a.allocate_txid, a.key);
                tracing::debug!("turn: no relay port");
                self.delete(allocation);
                self.error(client, method::ALLOCATE, txid, Some(&key), 508);
            }
        }
    }

    /// Whether `client` holds an allocation (a TCP connection without one
    /// is closed early by the shell).
    pub fn has_allocation(&self, client: ClientAddr) -> bool {
        self.by_client.contains_key(&client)
    }

    /// A client's TCP connection ended: its allocation goes with it
    /// (RFC 5766 §2.1).
    pub fn client_closed(&mut self, client: ClientAddr) {
        if let Some(&id) = self.by_client.get(&client) {
            self.delete(id);
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

/// What a REST username's quota is counted by: its tag.
fn session(username: &str) -> &str {
    username.split_once(':').map_or(username, |(_, tag)| tag)
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`; permissions
/// and quotas are about the IPv4 address.
fn unmap(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests;
