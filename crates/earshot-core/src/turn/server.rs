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

mod config;

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

    fn request(&mut self, now: Instant, now_unix: u64, client: ClientAddr, msg: &Message<'_>) {
        match msg.method {
            method::BINDING => {
                if !self.reject_unknown(client, msg, None) {
                    let mapped = unmap(client.addr);
                    self.reply(
                        client,
                        msg.method,
                        msg.transaction_id,
                        Class::Success,
                        None,
                        |e| {
                            e.xor_address(attr::XOR_MAPPED_ADDRESS, mapped);
                        },
                    );
                }
                return;
            }
            method::ALLOCATE
            | method::REFRESH
            | method::CREATE_PERMISSION
            | method::CHANNEL_BIND => {}
            _ => {
                self.error(client, msg.method, msg.transaction_id, None, 400);
                return;
            }
        }
        let Some(auth) = self.authenticate(now_unix, client, msg) else {
            return;
        };
        let key = Some(&auth.key);
        if let Some(&id) = self.by_client.get(&client)
            && self.allocations[&id].username != auth.username
        {
            self.error(client, msg.method, msg.transaction_id, key, 441);
            return;
        }
        if self.reject_unknown(client, msg, key) {
            return;
        }
        match msg.method {
            method::ALLOCATE => self.allocate(now, client, msg, &auth),
            method::REFRESH => self.refresh(now, client, msg, &auth.key),
            method::CREATE_PERMISSION => self.create_permission(now, client, msg, &auth.key),
            _ => self.channel_bind(now, client, msg, &auth.key),
        }
    }

    /// RFC 5389 §10.2.2, in its order. Answers the failures itself.
    fn authenticate<'a>(
        &mut self,
        now_unix: u64,
        client: ClientAddr,
        msg: &Message<'a>,
    ) -> Option<Auth<'a>> {
        let txid = msg.transaction_id;
        if !msg.has_integrity() {
            self.challenge(client, msg.method, txid, 401, now_unix);
            return None;
        }
        let (Ok(Some(username)), Ok(Some(_)), Ok(Some(nonce))) = (
            msg.text(attr::USERNAME),
            msg.text(attr::REALM),
            msg.text(attr::NONCE),
        ) else {
            self.error(client, msg.method, txid, None, 400);
            return None;
        };
        if !self.nonces.is_valid(nonce, now_unix) {
            self.challenge(client, msg.method, txid, 438, now_unix);
            return None;
        }
        // An expired REST username is as good as unknown.
        if auth::rest_expiry(username).is_none_or(|expiry| expiry <= now_unix) {
            tracing::debug!("turn: expired or malformed username");
            self.challenge(client, msg.method, txid, 401, now_unix);
            return None;
        }
        let password = auth::rest_password(&self.config.secret, username);
        let key = auth::long_term_key(username, &self.config.realm, &password);
        if !msg.check_integrity(&key) {
            tracing::debug!("turn: bad MESSAGE-INTEGRITY");
            self.challenge(client, msg.method, txid, 401, now_unix);
            return None;
        }
        Some(Auth { key, username })
    }

    /// Answers with 420 if the request has comprehension-required
    /// attributes we do not understand.
    fn reject_unknown(
        &mut self,
        client: ClientAddr,
        msg: &Message<'_>,
        key: Option<&[u8; 16]>,
    ) -> bool {
        let mut unknown = Vec::new();
        for kind in msg.kinds() {
            if kind < 0x8000 && !KNOWN.contains(&kind) && !unknown.contains(&kind) {
                unknown.push(kind);
            }
        }
        if unknown.is_empty() {
            return false;
        }
        unknown.truncate(MAX_UNKNOWN_LISTED);
        let list: Vec<u8> = unknown.iter().flat_map(|k| k.to_be_bytes()).collect();
        self.reply(
            client,
            msg.method,
            msg.transaction_id,
            Class::Error,
            key,
            |e| {
                e.error_code(420, reason(420))
                    .add(attr::UNKNOWN_ATTRIBUTES, &list);
            },
        );
        true
    }

    fn allocate(&mut self, now: Instant, client: ClientAddr, msg: &Message<'_>, auth: &Auth<'_>) {
        let (txid, key) = (msg.transaction_id, Some(&auth.key));
        if let Some(&id) = self.by_client.get(&client) {
            let a = &self.allocations[&id];
            if a.allocate_txid != txid {
                self.error(client, msg.method, txid, key, 437);
            } else if a.relay_port.is_some() {
                // A retransmission whose answer was lost.
                self.allocate_success(id);
            }
            // Else the relay is being bound and the answer is on its way.
            return;
        }
        let (even_port, requested) = match self.allocate_request(msg) {
            Ok(request) => request,
            Err(code) => return self.error(client, msg.method, txid, key, code),
        };
        if let Err(code) = self.quotas(client, auth.username) {
            return self.error(client, msg.method, txid, key, code);
        }
        let prefix = source_key(client.addr.ip());
        let bandwidth = || {
            (self.config.max_bps > 0).then(|| {
                // One second's worth may arrive at once.
                let rate = self.config.max_bps / 8;
                ByteBucket::new(now, rate, rate.max(MAX_PAYLOAD as u64))
            })
        };
        let (outbound, inbound) = (bandwidth(), bandwidth());
        let lifetime = self.grant(requested);
        let id = AllocationId(self.next_id);
        self.next_id += 1;
        let expires = now + lifetime;
        self.allocations.insert(
            id,
            Allocation {
                client,
                username: auth.username.to_owned(),
                key: auth.key,
                relay_port: None,
                allocate_txid: txid,
                lifetime,
                expires,
                armed: expires,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of_peer: HashMap::new(),
                indications: 0,
                outbound,
                inbound,
            },
        );
        self.timers.push(Reverse((expires, id)));
        self.by_client.insert(client, id);
        *self.per_client.entry(prefix).or_insert(0) += 1;
        *self
            .per_credential
            .entry(session(auth.username).to_owned())
            .or_insert(0) += 1;
        self.outputs.push_back(Output::BindRelay {
            allocation: id,
            even_port,
        });
    }

    /// What an Allocate asks for: an even port, and the lifetime; the error
    /// code of a request this server cannot satisfy.
    fn allocate_request(&self, msg: &Message<'_>) -> Result<(bool, Option<u32>), u16> {
        match msg.get(attr::REQUESTED_TRANSPORT) {
            Some([PROTO_UDP, _, _, _]) => {}
            Some([_, _, _, _]) => return Err(442),
            _ => return Err(400),
        }
        let family = if self.config.relay_ip.is_ipv4() {
            0x01
        } else {
            0x02
        };
        match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => {}
            Some(&[f, _, _, _]) if f == family => {}
            Some(&[0x01 | 0x02, _, _, _]) => return Err(440),
            Some(_) => return Err(400),
        }
        // EVEN-PORT's R bit asks to reserve the next port too, which needs
        // RESERVATION-TOKEN: not offered, so "cannot satisfy" (508).
        let even_port = match msg.get(attr::EVEN_PORT) {
            None => false,
            Some(&[flags, ..]) if flags & 0x80 == 0 => true,
            Some(&[_, ..]) => return Err(508),
            Some(_) => return Err(400),
        };
        let requested = msg.u32(attr::LIFETIME).map_err(|_| 400u16)?;
        Ok((even_port, requested))
    }

    /// Whether `username` from `client` may have one more allocation: its
    /// session is live, and no quota is reached (403, 486 or 508).
    fn quotas(&mut self, client: ClientAddr, username: &str) -> Result<(), u16> {
        if let Some(check) = &self.config.credential_check
            && !check(username)
        {
            tracing::debug!("turn: credential of an ended session");
            self.stats.revoked_credentials += 1;
            return Err(403);
        }
        let prefix = source_key(client.addr.ip());
        let credential_used = self.per_credential.get(session(username)).copied();
        if credential_used.unwrap_or(0) >= self.config.max_allocations_per_credential {
            tracing::debug!("turn: per-credential allocation quota reached");
            self.stats.quota_credential += 1;
            return Err(486);
        }
        if self.per_client.get(&prefix).copied().unwrap_or(0)
            >= self.config.max_allocations_per_client
        {
            tracing::debug!("turn: per-client allocation quota reached");
            self.stats.quota_client += 1;
            return Err(486);
        }
        if self.allocations.len() >= self.config.max_allocations {
            tracing::debug!("turn: allocation capacity reached");
            self.stats.quota_total += 1;
            return Err(508);
        }
        Ok(())
    }

    fn allocate_success(&mut self, id: AllocationId) {
        let a = &self.allocations[&id];
        let port = a.relay_port.expect("answered only once the relay is bound");
        let relayed = SocketAddr::new(self.config.relay_ip, port);
        let (client, txid, key, lifetime) = (a.client, a.allocate_txid, a.key, a.lifetime);
        self.reply(
            client,
            method::ALLOCATE,
            txid,
            Class::Success,
            Some(&key),
            |e| {
                e.xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
                    .u32(attr::LIFETIME, secs(lifetime))
                    .xor_address(attr::XOR_MAPPED_ADDRESS, unmap(client.addr));
            },
        );
    }

    fn refresh(&mut self, now: Instant, client: ClientAddr, msg: &Message<'_>, key: &[u8; 16]) {
        let (txid, key) = (msg.transaction_id, Some(key));
        let Some(&id) = self.by_client.get(&client) else {
            return self.error(client, msg.method, txid, key, 437);
        };
        let Ok(requested) = msg.u32(attr::LIFETIME) else {
            return self.error(client, msg.method, txid, key, 400);
        };
        let lifetime = if requested == Some(0) {
            self.delete(id);
            Duration::ZERO
        } else {
            let lifetime = self.grant(requested);
            let a = self
                .allocations
                .get_mut(&id)
                .expect("by_client names live allocations");
            a.lifetime = lifetime;
            a.expires = now + lifetime;
            // Only a shorter lifetime needs an earlier timer; a longer one
            // re-arms when the current timer fires.
            if a.expires < a.armed {
                a.armed = a.expires;
                self.timers.push(Reverse((a.expires, id)));
            }
            lifetime
        };
        self.reply(client, msg.method, txid, Class::Success, key, |e| {
            e.u32(attr::LIFETIME, secs(lifetime));
        });
    }

    fn create_permission(
        &mut self,
        now: Instant,
        client: ClientAddr,
        msg: &Message<'_>,
        key: &[u8; 16],
    ) {
        let (txid, key) = (msg.transaction_id, Some(key));
        let Some(id) = self.relaying(client) else {
            return self.error(client, msg.method, txid, key, 437);
        };
        let mut ips = Vec::new();
        for peer in msg.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let Ok(peer) = peer else {
                return self.error(client, msg.method, txid, key, 400);
            };
            if let Err(code) = self.check_peer(peer) {
                return self.error(client, msg.method, txid, key, code);
            }
            ips.push(unmap(peer).ip());
        }
        if ips.is_empty() {
            return self.error(client, msg.method, txid, key, 400);
        }
        let max = self.config.max_permissions;
        let a = self
            .allocations
            .get_mut(&id)
            .expect("relaying names live allocations");
        a.prune(now);
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, ip)| !a.permissions.contains_key(ip) && !ips[..*i].contains(ip))
            .count();
        if a.permissions.len() + new > max {
            return self.error(client, msg.method, txid, key, 508);
        }
        for ip in ips {
            a.permissions.insert(ip, now + PERMISSION_LIFETIME);
        }
        self.reply(client, msg.method, txid, Class::Success, key, |_| {});
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        client: ClientAddr,
        msg: &Message<'_>,
        key: &[u8; 16],
    ) {
        let (txid, key) = (msg.transaction_id, Some(key));
        let Some(id) = self.relaying(client) else {
            return self.error(client, msg.method, txid, key, 437);
        };
        let channel = match msg.get(attr::CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) if is_channel(u16::from_be_bytes([hi, lo])) => {
                u16::from_be_bytes([hi, lo])
            }
            _ => return self.error(client, msg.method, txid, key, 400),
        };
        let Ok(Some(peer)) = msg.xor_address(attr::XOR_PEER_ADDRESS) else {
            return self.error(client, msg.method, txid, key, 400);
        };
        if let Err(code) = self.check_peer(peer) {
            return self.error(client, msg.method, txid, key, code);
        }
        let peer = unmap(peer);
        // A channel names a port too: on our own address, only a relay's.
        let live_relay = self.by_port.contains_key(&peer.port());
        if let Verdict::Refused(_) = self.config.policy.check_addr(peer, live_relay) {
            self.stats.refused_peers += 1;
            return self.error(client, msg.method, txid, key, 403);
        }
        let (max_channels, max_permissions) =
            (self.config.max_channels, self.config.max_permissions);
        let a = self
            .allocations
            .get_mut(&id)
            .expect("relaying names live allocations");
        a.prune(now);
        // A channel is bound to one peer and a peer to one channel
        // (RFC 5766 §11.2); rebinding the same pair refreshes it.
        let taken = a.channels.get(&channel).is_some_and(|(p, _)| *p != peer)
            || a.channel_of_peer.get(&peer).is_some_and(|c| *c != channel);
        if taken {
            return self.error(client, msg.method, txid, key, 400);
        }
        if (!a.channels.contains_key(&channel) && a.channels.len() >= max_channels)
            || (!a.permissions.contains_key(&peer.ip()) && a.permissions.len() >= max_permissions)
        {
            return self.error(client, msg.method, txid, key, 508);
        }
        a.channels.insert(channel, (peer, now + CHANNEL_LIFETIME));
        a.channel_of_peer.insert(peer, channel);
        a.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        self.reply(client, msg.method, txid, Class::Success, key, |_| {});
    }

    fn send_indication(&mut self, now: Instant, client: ClientAddr, msg: &Message<'_>) {
        let (Ok(Some(peer)), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.stats.dropped += 1;
            return;
        };
        self.relay_to_peer(now, client, unmap(peer), data);
    }

    fn channel_data_from_client(&mut self, now: Instant, client: ClientAddr, bytes: &[u8]) {
        let peer = decode_channel_data(bytes).ok().and_then(|(channel, data)| {
            let id = self.by_client.get(&client)?;
            let peer = self.allocations[id].channel_peer(channel, now)?;
            Some((peer, data))
        });
        match peer {
            Some((peer, data)) => self.relay_to_peer(now, client, peer, data),
            None => self.stats.dropped += 1,
        }
    }

    /// Relays only to peers with a permission (which `check_peer` vetted),
    /// and only to ports the policy allows on them: a relay of ours is
    /// reached in memory.
    fn relay_to_peer(&mut self, now: Instant, client: ClientAddr, peer: SocketAddr, data: &[u8]) {
        let Some(allocation) = self
            .relaying(client)
            .filter(|id| self.allocations[id].permitted(peer.ip(), now))
        else {
            self.stats.dropped += 1;
            return;
        };
        let target = self.by_port.get(&peer.port()).copied();
        // `OwnRelay` only for a live relay port of ours: handed over in memory.
        let in_memory = match self.config.policy.check_addr(peer, target.is_some()) {
            Verdict::Refused(_) => {
                self.stats.refused_peers += 1;
                return;
            }
            Verdict::OwnRelay => target,
            Verdict::Allowed => None,
        };
        let a = self
            .allocations
            .get_mut(&allocation)
            .expect("relaying names live allocations");
        if a.outbound
            .as_mut()
            .is_some_and(|b| !b.take(now, data.len()))
        {
            self.stats.over_bandwidth += 1;
            return;
        }
        let own_port = a.relay_port;
        self.stats.to_peers += 1;
        match (in_memory, own_port) {
            (Some(target), Some(port)) => {
                self.stats.relay_to_relay += 1;
                let from = SocketAddr::new(self.config.relay_ip, port);
                self.handle_peer(now, target, from, data);
            }
            _ => self.outputs.push_back(Output::ToPeer {
                allocation,
                peer,
                data: data.to_vec(),
            }),
        }
    }

    /// The client's allocation, if its relay is bound.
    fn relaying(&self, client: ClientAddr) -> Option<AllocationId> {
        let id = *self.by_client.get(&client)?;
        self.allocations[&id].relay_port.map(|_| id)
    }

    /// Whether a peer may be given a permission: 443 for the other family,
    /// 403 for addresses the policy refuses.
    fn check_peer(&mut self, peer: SocketAddr) -> Result<(), u16> {
        match self.config.policy.check_ip(peer.ip()) {
            Verdict::Allowed | Verdict::OwnRelay => Ok(()),
            Verdict::Refused(Refusal::Family) => Err(443),
            Verdict::Refused(_) => {
                self.stats.refused_peers += 1;
                tracing::debug!("turn: peer refused by policy");
                Err(403)
            }
        }
    }

    /// RFC 5766 §6.2: the requested lifetime capped at the maximum, and
    /// never below the default.
    fn grant(&self, requested: Option<u32>) -> Duration {
        requested
            .map_or(self.config.default_lifetime, |s| {
                Duration::from_secs(u64::from(s))
            })
            .min(self.config.max_lifetime)
            .max(self.config.default_lifetime)
    }

    fn delete(&mut self, id: AllocationId) {
        let Some(a) = self.allocations.remove(&id) else {
            return;
        };
        self.by_client.remove(&a.client);
        if let Some(port) = a.relay_port
            && self.by_port.get(&port) == Some(&id)
        {
            self.by_port.remove(&port);
        }
        let prefix = source_key(a.client.addr.ip());
        if let Some(n) = self.per_client.get_mut(&prefix) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&prefix);
            }
        }
        let session = session(&a.username);
        if let Some(n) = self.per_credential.get_mut(session) {
            *n -= 1;
            if *n == 0 {
                self.per_credential.remove(session);
            }
        }
        if a.relay_port.is_some() {
            self.outputs
                .push_back(Output::ReleaseRelay { allocation: id });
        }
        // Deleted allocations leave their timer entries behind; rebuild
        // the heap before they can pile up (allocate-delete loops).
        if self.timers.len() > 2 * self.allocations.len() + 1024 {
            self.timers = self
                .allocations
                .iter()
                .map(|(id, a)| Reverse((a.armed, *id)))
                .collect();
        }
        tracing::debug!(
            allocations = self.allocations.len(),
            "turn: allocation deleted"
        );
    }

    /// 401 or 438 with REALM and a fresh NONCE, so the client can retry.
    fn challenge(
        &mut self,
        client: ClientAddr,
        method: u16,
        txid: [u8; 12],
        code: u16,
        now_unix: u64,
    ) {
        let nonce = self.nonces.mint(now_unix);
        let realm = self.config.realm.clone();
        self.reply(client, method, txid, Class::Error, None, |e| {
            e.error_code(code, reason(code))
                .add(attr::REALM, realm.as_bytes())
                .add(attr::NONCE, nonce.as_bytes());
        });
    }

    fn error(
        &mut self,
        client: ClientAddr,
        method: u16,
        txid: [u8; 12],
        key: Option<&[u8; 16]>,
        code: u16,
    ) {
        tracing::debug!(method, code, "turn: error response");
        self.reply(client, method, txid, Class::Error, key, |e| {
            e.error_code(code, reason(code));
        });
    }

    fn reply(
        &mut self,
        client: ClientAddr,
        method: u16,
        txid: [u8; 12],
        class: Class,
        key: Option<&[u8; 16]>,
        build: impl FnOnce(&mut Encoder),
    ) {
        let mut e = Encoder::new(method, class, txid);
        build(&mut e);
        if let Some(key) = key {
            e.integrity(key);
        }
        e.fingerprint();
        let data = e.finish();
        // A forged UDP source could aim unauthenticated answers at a victim;
        // over TCP the handshake proved the address.
        if key.is_none() && client.transport == Transport::Udp {
            let now = self
                .now
                .expect("answers follow an input, which sets the clock");
            let config = self.config.answers;
            let budget = self
                .answers
                .get_or_insert_with(|| AnswerBudget::new(now, config));
            if !budget.allow(now, client.addr.ip(), data.len()) {
                return;
            }
        }
        self.outputs.push_back(Output::ToClient { client, data });
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
