//! The switchboard: every connection's state, the stranger queue and calls.
//!
//! Feed it events with the current time (`connect`, `handle_text`,
//! `handle_timeout`, `disconnect`) and drain what it wants done with
//! `poll_output`. It never blocks, never reads a clock and never sees an
//! address.
//!
//! Each connection is `Idle`, `Searching` (in the [`Matchmaker`]) or `InCall`
//! with exactly one partner, who is `InCall` with it under the same call id.
//! [`Switchboard::check_invariants`] states these rules as code; the property
//! tests call it after every step.
//!
//! In backplane mode ([`Switchboard::set_node`]) the stranger queue is shared
//! by several nodes: joining it, and reaching a partner on another node, are
//! [`Output::Backplane`] requests, and what comes back is fed to
//! [`Switchboard::handle_backplane`]. A partner may then live on another
//! node: this switchboard holds only its own side of such a call, and any
//! message about a call it no longer has is answered or dropped, never
//! trusted (see the `backplane` module).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backplane::{self, Event, Member, NodeId, Partner, Remote, Request, StrikeRule, Waiter};
use crate::matchmaker::{MatchConfig, Matchmaker, Pairing};
use crate::moderation::{ModConfig, Moderation, ReportOutcome};
use crate::pow::{Pow, PowConfig, PowMode, PowSolution};
use crate::protocol::{
    self, CallId, ClientMsg, Country, EndReason, ErrorCode, IceServer, Limits, PeerId,
    ReportReason, RoomSignal, ServerMsg, Signal, Verifier,
};
use crate::ratelimit::{KeyedBuckets, TokenBucket};
use crate::rooms::{RoomConfig, RoomId, Rooms};
use crate::{ClientKey, ConnId, names};

/// Tunables, validated by the shell before they get here.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_message_bytes: usize,
    pub max_interests: usize,
    pub max_interest_chars: usize,
    /// How long someone with interests waits for a shared one.
    pub interest_wait: Duration,
    /// How long two people who skipped each other are kept apart.
    pub rematch_cooldown: Duration,
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Errors a connection may cause within `error_window` before it is closed.
    pub error_budget: u32,
    pub error_window: Duration,
    /// How long a new connection has to send `hello`.
    pub hello_timeout: Duration,
    /// How many live waiters one queue scan examines.
    pub scan_limit: usize,
    pub rooms: RoomConfig,
    pub moderation: ModConfig,
    pub per_client: ClientLimits,
    pub pow: PowConfig,
    /// How long minted TURN credentials last (see `set_turn_credentials`).
    pub turn_credential_ttl: Duration,
    /// Whether clients start with "hide my IP" on when TURN is offered.
    pub hide_ip_default: bool,
}

/// Limits per client key, that is for all of one client's connections
/// together: a burst, then one per interval.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Connections open at once.
    pub connections: usize,
    pub connects: (u32, Duration),
    /// Joining the stranger queue: `search` and `skip`.
    pub searches: (u32, Duration),
    pub reports: (u32, Duration),
    /// Joining a room that does not exist yet.
    pub room_creations: (u32, Duration),
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connections: 20,
            connects: (30, Duration::from_secs(2)),
            searches: (30, Duration::from_secs(2)),
            reports: (10, Duration::from_secs(120)),
            room_creations: (10, Duration::from_secs(30)),
        }
    }
}

#[derive(Debug)]
struct ClientBuckets {
    connects: KeyedBuckets<ClientKey>,
    searches: KeyedBuckets<ClientKey>,
    reports: KeyedBuckets<ClientKey>,
    room_creations: KeyedBuckets<ClientKey>,
    /// Open connections per key.
    open: HashMap<ClientKey, usize>,
}

impl ClientBuckets {
    fn new(l: &ClientLimits) -> ClientBuckets {
        let b = |(burst, every): (u32, Duration)| KeyedBuckets::new(every, burst);
        ClientBuckets {
            connects: b(l.connects),
            searches: b(l.searches),
            reports: b(l.reports),
            room_creations: b(l.room_creations),
            open: HashMap::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_message_bytes: 16 * 1024,
            max_interests: 5,
            max_interest_chars: 24,
            interest_wait: Duration::from_secs(5),
            rematch_cooldown: Duration::from_secs(30),
            messages_per_second: 20,
            message_burst: 60,
            error_budget: 20,
            error_window: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            scan_limit: 64,
            rooms: RoomConfig::default(),
            moderation: ModConfig::default(),
            per_client: ClientLimits::default(),
            pow: PowConfig::default(),
            turn_credential_ttl: Duration::from_secs(6 * 3600),
            hide_ip_default: true,
        }
    }
}

impl Config {
    fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_interests: self.max_interests,
            max_interest_chars: self.max_interest_chars,
            interest_wait_ms: millis(self.interest_wait),
            rematch_cooldown_ms: millis(self.rematch_cooldown),
            messages_per_second: self.messages_per_second,
            message_burst: self.message_burst,
            max_room_size: self.rooms.max_size,
            ice_credential_ttl_ms: millis(self.turn_credential_ttl),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the shell knows about a new connection.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The client's approximate country, if the shell could tell.
    pub country: Option<Country>,
    /// Given to the client in `welcome`: the server's own STUN (and TURN)
    /// services, as this client can reach them.
    /// Shared: most connections get the same list, and an idle connection
    /// should not carry a copy of it.
    pub ice_servers: std::sync::Arc<[IceServer]>,
    /// Who this client is for abuse control: a rotating HMAC of its address,
    /// shared by all its connections. The address itself never gets here.
    pub key: ClientKey,
    /// The same under the previous secret, while it is still honoured: what
    /// was recorded under it (strikes, bans, blocks) carries over.
    pub previous_key: Option<ClientKey>,
}

/// Why the server closes a connection, with its WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// No `hello` within `hello_timeout`.
    HelloTimeout,
    /// More errors than `error_budget` within `error_window`.
    TooManyErrors,
    /// Nothing received (not even a pong) for the idle timeout.
    IdleTimeout,
    /// A frame over the hard frame limit.
    MessageTooBig,
    /// The server is shutting down; calls should carry on.
    ServerRestart,
    /// The server is at its connection limit.
    ServerFull,
    /// Too many connections from one client (network).
    TooManyConnections,
    /// The shared backplane is unreachable or lost this node's state:
    /// reconnect later (calls carry on).
    BackplaneLost,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::IdleTimeout => 1001,
            CloseReason::HelloTimeout | CloseReason::TooManyErrors => 1008,
            CloseReason::MessageTooBig => 1009,
            CloseReason::ServerRestart | CloseReason::BackplaneLost => 1012,
            CloseReason::ServerFull | CloseReason::TooManyConnections => 1013,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::HelloTimeout => "hello timeout",
            CloseReason::TooManyErrors => "too many errors",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::ServerRestart => "server restart",
            CloseReason::ServerFull => "server full",
            CloseReason::TooManyConnections => "too many connections from your network",
            CloseReason::BackplaneLost => "backplane unavailable",
        }
    }
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this message to this connection.
    Send(ConnId, ServerMsg),
    /// Close this connection. The switchboard has already forgotten its call
    /// and queue place; the shell still calls `disconnect` when it is gone.
    Close(ConnId, CloseReason),
    /// Backplane mode only: run this on the shared store or another node.
    Backplane(Request),
}

/// Aggregate figures, for metrics. Nothing per user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub waiting: usize,
    pub calls: usize,
    pub matches_total: u64,
    pub errors_total: u64,
    /// Errors sent, by code, in the order of `ErrorCode::ALL`.
    pub errors_by_code: [u64; ErrorCode::ALL.len()],
    pub rooms: usize,
    pub reports_total: u64,
    pub bans_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Searching,
    InCall { call: CallId, partner: ConnId },
    InRoom { room: RoomId, peer: PeerId },
}

#[derive(Debug)]
struct Conn {
    info: ConnInfo,
    greeted: bool,
    /// A `Close` was emitted: further input is ignored.
    closed: bool,
    phase: Phase,
    interests: Vec<String>,
    rate: TokenBucket,
    errors: TokenBucket,
    /// Until when `hello` may come: later after a proof-of-work challenge.
    hello_by: Instant,
    /// Connections this one reported: never matched with it again, even
    /// when both share a client key (one household behind one address).
    reported: Vec<ConnId>,
    /// Backplane mode: the next queue join charges the client's shared
    /// search allowance (it is the client's own search or skip).
    charge_search: bool,
}

/// Pairs that skipped each other, kept apart until a deadline.
///
/// A pair is forgotten once its deadline has passed, by the timer
/// ([`Cooldowns::poll_timeout`]), not only when a later skip happens to come
/// by: otherwise an idle server would keep the pairs of connections long
/// gone (see `earshot-bench soak`).
#[derive(Debug, Default)]
struct Cooldowns {
    until: HashMap<(ConnId, ConnId), Instant>,
    /// Deadlines in insertion order; the cooldown is constant, so also in time order.
    order: VecDeque<(Instant, (ConnId, ConnId))>,
}

impl Cooldowns {
    fn key(a: ConnId, b: ConnId) -> (ConnId, ConnId) {
        (a.min(b), a.max(b))
    }

    fn add(&mut self, now: Instant, a: ConnId, b: ConnId, d: Duration) {
        self.expire(now);
        let until = now + d;
        self.until.insert(Self::key(a, b), until);
        self.order.push_back((until, Self::key(a, b)));
    }

    fn blocked_until(&self, now: Instant, a: ConnId, b: ConnId) -> Option<Instant> {
        self.until
            .get(&Self::key(a, b))
            .copied()
            .filter(|&until| until > now)
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(until, key)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.until.get(&key) == Some(&until) {
                self.until.remove(&key);
            }
        }
        if self.order.is_empty() && self.order.capacity() > 0 {
            // All forgotten: give back what a burst of skips made the tables
            // grow to.
            *self = Cooldowns::default();
        }
    }

    /// When to forget the oldest pair: a little after its deadline, so that
    /// one wake-up forgets every pair due within [`COOLDOWN_SWEEP_SLACK`].
    fn poll_timeout(&self) -> Option<Instant> {
        let &(until, _) = self.order.front()?;
        Some(until + COOLDOWN_SWEEP_SLACK)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

/// How late an ended cooldown may be forgotten (see [`Cooldowns`]).
const COOLDOWN_SWEEP_SLACK: Duration = Duration::from_secs(1);

/// Where random numbers come from: the shell's CSPRNG, or a fixed sequence in tests.
pub struct Entropy(Box<dyn FnMut() -> u64 + Send>);

impl Entropy {
    pub fn new(source: impl FnMut() -> u64 + Send + 'static) -> Entropy {
        Entropy(Box::new(source))
    }

    /// Keyed SipHash over a counter, keyed from the OS's randomness by std:
    /// unpredictable without the key, for when the shell gives no source.
    pub fn from_std() -> Entropy {
        use std::hash::{BuildHasher, Hasher};
        let state = std::collections::hash_map::RandomState::new();
        let mut counter = 0u64;
        Entropy::new(move || {
            counter += 1;
            let mut h = state.build_hasher();
            h.write_u64(counter);
            h.finish()
        })
    }

    fn next(&mut self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entropy")
    }
}

/// See [`Switchboard::set_turn_credentials`].
struct Minter(Box<dyn FnMut() -> (String, String) + Send>);

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minter")
    }
}

/// The sans-IO signalling state machine.
#[derive(Debug)]
pub struct Switchboard {
    config: Config,
    /// Boxed: the table keeps spare buckets, and an idle connection should
    /// not pay for a spare `Conn` or two (see BENCHMARKS.md).
    conns: HashMap<ConnId, Box<Conn>>,
    queue: Matchmaker,
    cooldowns: Cooldowns,
    rooms: Rooms,
    moderation: Moderation,
    clients: ClientBuckets,
    pow: Pow,
    /// When a client key last got a connection closed for abuse.
    abuse: HashMap<ClientKey, Instant>,
    /// Mints (username, credential) for `turn:` servers; reads the wall clock.
    turn_credentials: Option<Minter>,
    entropy: Entropy,
    /// New connections' hello deadlines, in time order.
    hello_deadlines: BinaryHeap<Reverse<(Instant, ConnId)>>,
    next_call: CallId,
    /// Calls with both sides here.
    calls: usize,
    /// Backplane mode: this node, whose number is in every id it makes.
    node: Option<NodeId>,
    /// Backplane mode: calls with the partner on another node.
    remote_calls: usize,
    /// Backplane mode: the client keys of partners on other nodes.
    remote_keys: HashMap<ConnId, ClientKey>,
    /// Backplane mode: who waits in the shared queue, and from when they
    /// will talk to anyone.
    shared_waiting: HashMap<ConnId, Instant>,
    /// Backplane mode: interest waits ending, in time order.
    fallbacks: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Backplane mode: room joins the store is still checking, with the
    /// normalised room name.
    joining: HashMap<ConnId, String>,
    matches_total: u64,
    errors_total: u64,
    errors_by_code: [u64; ErrorCode::ALL.len()],
    out: VecDeque<Output>,
}

impl Switchboard {
    pub fn new(config: Config) -> Switchboard {
        Switchboard::with_entropy(config, Entropy::from_std())
    }

    /// A switchboard drawing room-name randomness from `entropy`.
    pub fn with_entropy(config: Config, mut entropy: Entropy) -> Switchboard {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&entropy.next().to_le_bytes());
        }
        // The epoch of proof-of-work expiry times: any instant works, as
        // long as it is before every `now` this switchboard will see.
        let pow = Pow::new(Instant::now(), key);
        let rooms = Rooms::new(config.rooms.clone());
        let moderation = Moderation::new(config.moderation.clone());
        let clients = ClientBuckets::new(&config.per_client);
        let queue = Matchmaker::new(MatchConfig {
            interest_wait: config.interest_wait,
            scan_limit: config.scan_limit,
        });
        Switchboard {
            config,
            conns: HashMap::new(),
            queue,
            cooldowns: Cooldowns::default(),
            rooms,
            moderation,
            clients,
            pow,
            abuse: HashMap::new(),
            turn_credentials: None,
            entropy,
            hello_deadlines: BinaryHeap::new(),
            next_call: 1,
            calls: 0,
            node: None,
            remote_calls: 0,
            remote_keys: HashMap::new(),
            shared_waiting: HashMap::new(),
            fallbacks: BinaryHeap::new(),
            joining: HashMap::new(),
            matches_total: 0,
            errors_total: 0,
            errors_by_code: [0; ErrorCode::ALL.len()],
            out: VecDeque::new(),
        }
    }

    /// Gives `turn:` entries of each client's ice servers fresh credentials
    /// from `mint` whenever they are sent (in `welcome` and on `refresh_ice`).
    pub fn set_turn_credentials(
        &mut self,
        mint: impl FnMut() -> (String, String) + Send + 'static,
    ) {
        self.turn_credentials = Some(Minter(Box::new(mint)));
    }

    /// `id`'s ice servers, TURN ones with fresh credentials.
    fn ice_servers(&mut self, id: ConnId) -> Vec<IceServer> {
        let mut servers = self
            .conns
            .get(&id)
            .map(|c| c.info.ice_servers.to_vec())
            .unwrap_or_default();
        for s in &mut servers {
            let turn = s
                .urls
                .iter()
                .any(|u| u.starts_with("turn:") || u.starts_with("turns:"));
            if turn
                && s.credential.is_none()
                && let Some(Minter(mint)) = self.turn_credentials.as_mut()
            {
                let (username, credential) = mint();
                s.username = Some(username);
                s.credential = Some(credential);
            }
        }
        servers
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            waiting: self.queue.len() + self.shared_waiting.len(),
            calls: self.calls + self.remote_calls,
            matches_total: self.matches_total,
            errors_total: self.errors_total,
            errors_by_code: self.errors_by_code,
            rooms: self.rooms.len(),
            reports_total: self.moderation.reports_total,
            bans_total: self.moderation.bans_total,
        }
    }

    /// A connection opened. `id` must be new.
    pub fn connect(&mut self, now: Instant, id: ConnId, info: ConnInfo) {
        let key = info.key;
        if let Some(previous) = info.previous_key {
            self.moderation.carry_over(previous, key);
        }
        let open = self.clients.open.entry(key).or_default();
        *open += 1;
        let too_many = *open > self.config.per_client.connections
            || self.clients.connects.take(now, &key).is_err();
        let conn = Conn {
            info,
            greeted: false,
            closed: false,
            phase: Phase::Idle,
            interests: Vec::new(),
            rate: TokenBucket::new(
                now,
                self.config.messages_per_second,
                self.config.message_burst,
            ),
            errors: TokenBucket::new(
                now,
                budget_rate(self.config.error_budget, self.config.error_window),
                self.config.error_budget,
            ),
            hello_by: now + self.config.hello_timeout,
            reported: Vec::new(),
            charge_search: false,
        };
        if self.conns.insert(id, Box::new(conn)).is_some() {
            tracing::warn!(conn = %id, "connection id reused; replacing its state");
        }
        self.hello_deadlines
            .push(Reverse((now + self.config.hello_timeout, id)));
        if too_many {
            self.close(now, id, CloseReason::TooManyConnections);
        } else {
            let allowance = self.config.per_client.connects;
            self.request(Request::Connect {
                conn: id,
                key,
                allowance,
            });
        }
    }

    /// A connection is gone. Its partner, if any, is told and re-queued.
    pub fn disconnect(&mut self, now: Instant, id: ConnId) {
        if self.conns.contains_key(&id) {
            self.leave(now, id, EndReason::PartnerLeft);
            if let Some(c) = self.conns.remove(&id) {
                let key = c.info.key;
                if let Some(open) = self.clients.open.get_mut(&key) {
                    *open -= 1;
                    if *open == 0 {
                        self.clients.open.remove(&key);
                    }
                }
            }
        }
    }

    /// A text frame arrived: checks size and rate, decodes, then handles it.
    pub fn handle_text(&mut self, now: Instant, id: ConnId, text: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.closed {
            return;
        }
        if text.len() > self.config.max_message_bytes {
            return self.reject(now, id, ErrorCode::TooLarge, None);
        }
        if let Err(wait) = conn.rate.take(now) {
            return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
        }
        match protocol::decode(text) {
            Ok(msg) => self.handle(now, id, msg),
            Err(e) => self.reject(now, id, e.into(), None),
        }
    }

    /// A binary frame arrived: the protocol has none.
    pub fn handle_binary(&mut self, now: Instant, id: ConnId) {
        if self.conns.get(&id).is_some_and(|c| !c.closed) {
            self.reject(now, id, ErrorCode::BadMessage, None);
        }
    }

    /// Handles a decoded message (no size or rate check: see `handle_text`).
    pub fn handle(&mut self, now: Instant, id: ConnId, msg: ClientMsg) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.closed {
            return;
        }
        let phase = conn.phase;
        match msg {
            ClientMsg::Hello { version, pow } if !conn.greeted => self.hello(now, id, version, pow),
            _ if !conn.greeted => self.reject(now, id, ErrorCode::HelloRequired, None),
            ClientMsg::Hello { .. } => self.reject(now, id, ErrorCode::AlreadyHello, None),
            ClientMsg::Search { interests } => match phase {
                Phase::Searching => self.reject(now, id, ErrorCode::AlreadySearching, None),
                Phase::InCall { .. } => self.reject(now, id, ErrorCode::AlreadyInCall, None),
                Phase::InRoom { .. } => self.reject(now, id, ErrorCode::AlreadyInRoom, None),
                Phase::Idle if self.joining.contains_key(&id) => {
                    self.reject(now, id, ErrorCode::AlreadyInRoom, None)
                }
                Phase::Idle => match protocol::normalize_interests(
                    &interests,
                    self.config.max_interests,
                    self.config.max_interest_chars,
                ) {
                    Ok(tags) => {
                        conn.interests = tags;
                        let key = conn.info.key;
                        if let Err(wait) = self.clients.searches.take(now, &key) {
                            return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
                        }
                        conn.charge_search = self.node.is_some();
                        self.search(now, id);
                    }
                    Err(code) => self.reject(now, id, code, None),
                },
            },
            ClientMsg::Signal(signal) => self.relay(now, id, phase, signal),
            ClientMsg::Skip => match phase {
                Phase::InCall { .. } => {
                    let key = conn.info.key;
                    if let Err(wait) = self.clients.searches.take(now, &key) {
                        return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
                    }
                    self.end_call(now, id, EndReason::PartnerSkipped);
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.charge_search = self.node.is_some();
                    }
                    self.search(now, id);
                }
                Phase::Idle | Phase::Searching | Phase::InRoom { .. } => {
                    self.reject(now, id, ErrorCode::NotInCall, None)
                }
            },
            ClientMsg::End => {
                self.leave(now, id, EndReason::PartnerEnded);
                self.send(id, ServerMsg::Idle);
            }
            ClientMsg::RoomSuggest => {
                let name = names::suggest(self.entropy.next());
                self.send(id, ServerMsg::RoomSuggestion { name });
            }
            ClientMsg::RoomJoin { room, verifier } => {
                self.join_room(now, id, phase, &room, verifier.as_ref())
            }
            ClientMsg::RoomSignal(signal) => self.relay_in_room(now, id, phase, signal),
            ClientMsg::RoomLock { verifier } => self.lock_room(now, id, phase, Some(verifier)),
            ClientMsg::RoomUnlock => self.lock_room(now, id, phase, None),
            ClientMsg::Report { reason } => self.report(now, id, phase, reason),
            ClientMsg::RefreshIce => {
                let ice_servers = self.ice_servers(id);
                self.send(id, ServerMsg::IceServers { ice_servers });
            }
            ClientMsg::RoomReport { peer, reason } => {
                self.report_in_room(now, id, phase, peer, reason)
            }
        }
    }

    fn hello(&mut self, now: Instant, id: ConnId, version: u32, pow: Option<PowSolution>) {
        if version != protocol::PROTOCOL_VERSION {
            return self.reject(now, id, ErrorCode::UnsupportedVersion, None);
        }
        if let Some(maxnumber) = self.pow_needed(now, id) {
            match pow {
                Some(solution) if self.pow.verify(now, &solution) => {}
                given => {
                    if given.is_some() {
                        self.reject(now, id, ErrorCode::PowInvalid, None);
                    }
                    let random = [self.entropy.next(), self.entropy.next()];
                    let c = self
                        .pow
                        .issue(now, self.config.pow.expiry, maxnumber, random);
                    // Solving takes a while on a slow phone: wait for hello
                    // as long as the challenge lives.
                    let by = now + self.config.pow.expiry;
                    if let Some(conn) = self.conns.get_mut(&id)
                        && conn.hello_by < by
                    {
                        conn.hello_by = by;
                        self.hello_deadlines.push(Reverse((by, id)));
                    }
                    return self.send(
                        id,
                        ServerMsg::Challenge {
                            algorithm: "SHA-256",
                            salt: c.salt,
                            challenge: c.challenge,
                            maxnumber: c.maxnumber,
                            signature: c.signature,
                        },
                    );
                }
            }
        }
        let ice_servers = self.ice_servers(id);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.greeted = true;
        let offers_turn = ice_servers.iter().any(|s| s.credential.is_some());
        let mut limits = self.config.limits();
        if !offers_turn {
            limits.ice_credential_ttl_ms = 0;
        }
        let welcome = ServerMsg::Welcome {
            version: protocol::PROTOCOL_VERSION,
            ice_servers,
            limits,
            country: conn.info.country,
            hide_ip_default: offers_turn && self.config.hide_ip_default,
        };
        self.send(id, welcome);
    }

    /// Whether `id` must prove work before `welcome`, and how much: when the
    /// server is loaded, or its client has many connections or recent abuse.
    fn pow_needed(&self, now: Instant, id: ConnId) -> Option<u64> {
        let c = &self.config.pow;
        match c.mode {
            PowMode::Off => None,
            PowMode::Always => Some(c.base_maxnumber),
            PowMode::Auto => {
                let key = self.key(id);
                let load = self.conns.len() / c.load_threshold.max(1);
                let crowded =
                    self.clients.open.get(&key).copied().unwrap_or(0) > c.client_threshold;
                let abusive = self
                    .abuse
                    .get(&key)
                    .is_some_and(|&t| now.saturating_duration_since(t) < Duration::from_secs(600));
                if load == 0 && !crowded && !abusive {
                    return None;
                }
                let mut m = c.base_maxnumber.saturating_mul(load.max(1) as u64);
                if crowded || abusive {
                    m = m.saturating_mul(4);
                }
                Some(m.min(c.max_maxnumber))
            }
        }
    }

    fn key(&self, id: ConnId) -> ClientKey {
        self.conns
            .get(&id)
            .map(|c| c.info.key)
            .or_else(|| self.remote_keys.get(&id).copied())
            .unwrap_or_default()
    }

    /// Counts a report against the reporter's limit and records a strike.
    /// Returns the wait if the reporter is over its limit.
    fn strike(
        &mut self,
        now: Instant,
        reporter: ConnId,
        reported: ConnId,
        reason: Option<ReportReason>,
    ) -> Result<(), Duration> {
        let (mine, theirs) = (self.key(reporter), self.key(reported));
        if let Err(wait) = self.clients.reports.take(now, &mine) {
            // Over the limit the report does not count, but it still protects.
            self.moderation.block(now, mine, theirs);
            self.share_block(reporter, reported, mine, theirs);
            return Err(wait);
        }
        let reason = reason.map_or("none", ReportReason::as_str);
        if self.node.is_some() {
            // The store counts strikes from every node and bans.
            if let Some(weight) = self.moderation.weigh(now, mine, theirs) {
                tracing::debug!(reason, weight, "report recorded");
                let m = &self.config.moderation;
                let rule = StrikeRule {
                    window: m.strike_window,
                    reporters: m.reporters_for_ban,
                    weight: m.weight_for_ban.saturating_mul(crate::moderation::FULL),
                    ban_lengths: m.ban_lengths.clone(),
                    reports: self.config.per_client.reports,
                };
                self.request(Request::Strike {
                    key: theirs,
                    reporter: mine,
                    weight,
                    rule,
                });
            }
            self.share_block(reporter, reported, mine, theirs);
            return Ok(());
        }
        match self.moderation.report(now, mine, theirs) {
            ReportOutcome::Banned { until } => {
                tracing::info!(reason, "a report completed a ban");
                let ttl = until.saturating_duration_since(now);
                self.request(Request::Ban { key: theirs, ttl });
            }
            outcome => tracing::debug!(reason, ?outcome, "report recorded"),
        }
        self.share_block(reporter, reported, mine, theirs);
        Ok(())
    }

    /// Report in a stranger call: the call ends at once for both; the pair
    /// is never matched again; the reported client collects a strike.
    fn report(&mut self, now: Instant, id: ConnId, phase: Phase, reason: Option<ReportReason>) {
        let Phase::InCall { partner, .. } = phase else {
            return self.reject(now, id, ErrorCode::NotInCall, None);
        };
        let limited = self.strike(now, id, partner, reason).err();
        if let Some(c) = self.conns.get_mut(&id) {
            c.reported.push(partner);
        }
        // The reported side hears an ordinary end, not who pressed what.
        self.end_call(now, id, EndReason::PartnerEnded);
        self.send(id, ServerMsg::Idle);
        if let Some(wait) = limited {
            self.reject(now, id, ErrorCode::RateLimited, Some(wait));
        }
    }

    /// Report in a room: a strike, and removal once enough members agree.
    /// The reporter's own client drops its connection to that peer.
    fn report_in_room(
        &mut self,
        now: Instant,
        id: ConnId,
        phase: Phase,
        target: PeerId,
        reason: Option<ReportReason>,
    ) {
        let Phase::InRoom { room, peer } = phase else {
            return self.reject(now, id, ErrorCode::NotInRoom, None);
        };
        let Some(target_conn) = self.rooms.member(room, target).filter(|_| target != peer) else {
            return self.reject(now, id, ErrorCode::UnknownPeer, None);
        };
        if let Err(wait) = self.strike(now, id, target_conn, reason) {
            return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
        }
        // Backplane mode: only members on this node can be removed here
        // (the strike above counts everywhere).
        if self.rooms.report(room, peer, target) && !self.is_remote(target_conn) {
            tracing::debug!("a room removed a member");
            let key = self.key(target_conn);
            if let Some(c) = self.conns.get_mut(&target_conn) {
                c.phase = Phase::Idle;
            }
            let store_key = self.room_key(room);
            if self.node.is_some() {
                self.request(Request::RoomRemove {
                    room: store_key.clone(),
                    key,
                });
            }
            let others = self.rooms.remove(room, target, key);
            self.announce_left(room, store_key, target, others, true);
            self.reject(now, target_conn, ErrorCode::Removed, None);
            self.send(target_conn, ServerMsg::Idle);
        }
    }

    fn join_room(
        &mut self,
        now: Instant,
        id: ConnId,
        phase: Phase,
        room: &str,
        verifier: Option<&Verifier>,
    ) {
        let busy = match phase {
            Phase::Idle if self.joining.contains_key(&id) => Some(ErrorCode::AlreadyInRoom),
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
        if self.node.is_some() {
            if verifier.is_some()
                && let Err(wait) = self.rooms.attempt(now, key)
            {
                return self.reject(now, id, ErrorCode::RateLimited, Some(wait));
            }
            self.request(Request::RoomJoin {
                conn: id,
                room: backplane::room_key(&name),
                key,
                verifier: verifier.cloned(),
                max_size: self.rooms.max_size(),
                attempts: self.config.rooms.room_attempts,
                creations: self.config.per_client.room_creations,
            });
            self.joining.insert(id, name);
            return;
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

    fn relay_in_room(&mut self, now: Instant, id: ConnId, phase: Phase, mut signal: RoomSignal) {
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

    fn lock_room(&mut self, now: Instant, id: ConnId, phase: Phase, verifier: Option<Verifier>) {
        let Phase::InRoom { room, .. } = phase else {
            return self.reject(now, id, ErrorCode::NotInRoom, None);
        };
        let locked = verifier.is_some();
        tracing::debug!(conn = %id, locked, "room lock changed");
        if self.node.is_some() {
            let key = self.room_key(room);
            self.request(Request::RoomLock {
                room: key,
                verifier: verifier.clone(),
            });
        }
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

    /// Runs what is due: hello deadlines, interest fallbacks, re-match retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.hello_deadlines.peek() {
            if at > now {
                break;
            }
            self.hello_deadlines.pop();
            let due = |c: &Conn| !c.greeted && !c.closed && c.hello_by <= now;
            if self.conns.get(&id).is_some_and(|c| due(c)) {
                self.close(now, id, CloseReason::HelloTimeout);
            }
        }
        self.cooldowns.expire(now);
        let mut pairs = Vec::new();
        let blocked = Blocker {
            now,
            cooldowns: &self.cooldowns,
            moderation: &self.moderation,
            conns: &self.conns,
        };
        self.queue.handle_timeout(now, &blocked, &mut pairs);
        for p in pairs {
            self.start_call(now, p);
        }
        while let Some(&Reverse((at, id))) = self.fallbacks.peek() {
            if at > now {
                break;
            }
            self.fallbacks.pop();
            if self.shared_waiting.get(&id) == Some(&at) {
                self.enqueue(now, id);
            }
        }
    }

    /// When `handle_timeout` should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hello = self.hello_deadlines.peek().map(|&Reverse((at, _))| at);
        let fallback = self.fallbacks.peek().map(|&Reverse((at, _))| at);
        let cooldown = self.cooldowns.poll_timeout();
        [hello, self.queue.poll_timeout(), fallback, cooldown]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Closes a connection on the shell's behalf (idle timeout, slow reader,
    /// shutdown), so its partner is told at once.
    pub fn close(&mut self, now: Instant, id: ConnId, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.closed {
            return;
        }
        conn.closed = true;
        let key = conn.info.key;
        tracing::debug!(conn = %id, reason = reason.reason(), "closing connection");
        if matches!(
            reason,
            CloseReason::TooManyErrors | CloseReason::TooManyConnections
        ) {
            if self.abuse.len() >= 4096 {
                self.abuse
                    .retain(|_, t| now.saturating_duration_since(*t) < Duration::from_secs(600));
            }
            self.abuse.insert(key, now);
        }
        self.leave(now, id, EndReason::PartnerLeft);
        self.out.push_back(Output::Close(id, reason));
    }

    fn send(&mut self, id: ConnId, msg: ServerMsg) {
        // Nothing follows a Close (an error can close the connection midway
        // through answering).
        if self.conns.get(&id).is_some_and(|c| !c.closed) {
            self.out.push_back(Output::Send(id, msg));
        }
    }

    fn reject(&mut self, now: Instant, id: ConnId, code: ErrorCode, retry: Option<Duration>) {
        self.errors_total += 1;
        if let Some(i) = ErrorCode::ALL.iter().position(|&c| c == code) {
            self.errors_by_code[i] += 1;
        }
        tracing::debug!(conn = %id, code = code.as_str(), "rejected a message");
        self.send(
            id,
            ServerMsg::Error {
                code,
                message: code.message(),
                retry_after_ms: retry.map(|d| millis(d).max(1)),
            },
        );
        let over_budget = self
            .conns
            .get_mut(&id)
            .is_some_and(|c| c.errors.take(now).is_err());
        if over_budget {
            self.close(now, id, CloseReason::TooManyErrors);
        }
    }

    fn relay(&mut self, now: Instant, id: ConnId, phase: Phase, signal: Signal) {
        match phase {
            Phase::InCall { call, partner } if call == signal.call => {
                tracing::trace!(conn = %id, call, "relaying a signal");
                if self.is_remote(partner) {
                    self.publish(Remote::Signal {
                        to: partner,
                        from: id,
                        signal,
                    });
                } else {
                    self.send(partner, ServerMsg::Signal(signal));
                }
            }
            Phase::InCall { .. } => self.reject(now, id, ErrorCode::WrongCall, None),
            _ => self.reject(now, id, ErrorCode::NotInCall, None),
        }
    }

    /// Puts an idle connection in the queue and pairs it if someone fits.
    fn search(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(until) = self.moderation.banned_until(now, conn.info.key) {
            conn.phase = Phase::Idle;
            self.reject(now, id, ErrorCode::Banned, Some(until - now));
            self.send(id, ServerMsg::Idle);
            return;
        }
        conn.phase = Phase::Searching;
        let interests = conn.interests.clone();
        self.send(
            id,
            ServerMsg::Searching {
                interests: interests.clone(),
            },
        );
        if self.node.is_some() {
            let open_at = if interests.is_empty() {
                now
            } else {
                now + self.config.interest_wait
            };
            self.shared_waiting.insert(id, open_at);
            if open_at > now {
                self.fallbacks.push(Reverse((open_at, id)));
            }
            return self.enqueue(now, id);
        }
        let blocked = Blocker {
            now,
            cooldowns: &self.cooldowns,
            moderation: &self.moderation,
            conns: &self.conns,
        };
        let pairing = self.queue.join(now, id, interests, &blocked);
        if let Some(p) = pairing {
            self.start_call(now, p);
        }
    }

    fn new_call(&mut self) -> CallId {
        let n = self.next_call;
        self.next_call += 1;
        match self.node {
            Some(node) => backplane::call_id(node, n),
            None => n,
        }
    }

    fn start_call(&mut self, now: Instant, p: Pairing) {
        let call = self.new_call();
        self.calls += 1;
        self.matches_total += 1;
        let mut country = |id: ConnId, partner: ConnId| {
            let c = self.conns.get_mut(&id).expect("paired connections exist");
            c.phase = Phase::InCall { call, partner };
            c.info.country
        };
        let waiting_country = country(p.waiting, p.joining);
        let joining_country = country(p.joining, p.waiting);
        for who in [p.waiting, p.joining] {
            let key = self.key(who);
            self.moderation.matched(now, key);
        }
        tracing::debug!(call, a = %p.waiting, b = %p.joining, "matched");
        self.request(Request::CallStart {
            call,
            a: p.waiting,
            b: p.joining,
        });
        // The newcomer is impolite: it makes the first offer.
        self.send(
            p.waiting,
            ServerMsg::Matched {
                call,
                polite: true,
                interests: p.shared.clone(),
                country: joining_country,
            },
        );
        self.send(
            p.joining,
            ServerMsg::Matched {
                call,
                polite: false,
                interests: p.shared,
                country: waiting_country,
            },
        );
    }

    /// Ends `id`'s call, telling the partner why and putting them back in the queue.
    fn end_call(&mut self, now: Instant, id: ConnId, reason: EndReason) {
        let Some(Phase::InCall { call, partner }) = self.conns.get(&id).map(|c| c.phase) else {
            return;
        };
        self.request(Request::CallEnd { call });
        if self.is_remote(partner) {
            self.remote_calls -= 1;
            self.remote_keys.remove(&partner);
            if let Some(c) = self.conns.get_mut(&id) {
                c.phase = Phase::Idle;
            }
            tracing::debug!(call, reason = ?reason, "call with another node ended");
            if reason == EndReason::PartnerSkipped {
                let ttl = self.config.rematch_cooldown;
                self.request(Request::KeepApart {
                    a: id,
                    b: partner,
                    ttl,
                });
            }
            // The partner's node tells them and puts them back in the queue.
            return self.publish(Remote::Ended {
                to: partner,
                from: id,
                call,
                reason,
            });
        }
        self.calls -= 1;
        for who in [id, partner] {
            if let Some(c) = self.conns.get_mut(&who) {
                c.phase = Phase::Idle;
            }
        }
        tracing::debug!(call, reason = ?reason, "call ended");
        if reason == EndReason::PartnerSkipped {
            self.cooldowns
                .add(now, id, partner, self.config.rematch_cooldown);
        }
        self.send(partner, ServerMsg::CallEnded { call, reason });
        self.search(now, partner);
    }

    /// Takes `id` out of any call or queue, leaving it idle.
    fn leave(&mut self, now: Instant, id: ConnId, reason: EndReason) {
        match self.conns.get(&id).map(|c| c.phase) {
            Some(Phase::InCall { .. }) => self.end_call(now, id, reason),
            Some(Phase::Searching) => {
                self.queue.leave(id);
                if self.shared_waiting.remove(&id).is_some() {
                    self.request(Request::Dequeue { conn: id });
                }
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::Idle;
                }
            }
            Some(Phase::InRoom { room, peer }) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::Idle;
                }
                let store_key = self.room_key(room);
                let others = self.rooms.leave(room, peer);
                self.announce_left(room, store_key, peer, others, true);
            }
            Some(Phase::Idle) | None => {
                self.joining.remove(&id);
            }
        }
    }

    /// Switches backplane mode on (`Some(node)`) or off. Only while no
    /// connection is open: connection ids must carry the node number.
    pub fn set_node(&mut self, node: Option<NodeId>) {
        debug_assert!(self.conns.is_empty(), "set_node with connections open");
        self.node = node;
    }

    pub fn node(&self) -> Option<NodeId> {
        self.node
    }

    /// `id`'s call and partner, if it is in a call.
    pub fn call_of(&self, id: ConnId) -> Option<(CallId, ConnId)> {
        match self.conns.get(&id)?.phase {
            Phase::InCall { call, partner } => Some((call, partner)),
            _ => None,
        }
    }

    /// Backplane mode: the store's names of the rooms this node has members
    /// in (the shell keeps them alive).
    pub fn shared_rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self
            .rooms
            .all_members()
            .map(|(r, _, _)| self.room_key(r))
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        rooms
    }

    /// Every open connection.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Backplane mode: the calls this node has a side in (the shell keeps
    /// their records alive).
    pub fn shared_calls(&self) -> Vec<CallId> {
        let mut calls: Vec<CallId> = self
            .conns
            .values()
            .filter_map(|c| match c.phase {
                Phase::InCall { call, .. } => Some(call),
                _ => None,
            })
            .collect();
        calls.sort_unstable();
        calls.dedup();
        calls
    }

    /// Backplane mode: who waits in the shared queue (the shell keeps their
    /// entries alive).
    pub fn shared_waiters(&self) -> Vec<ConnId> {
        self.shared_waiting.keys().copied().collect()
    }

    /// The nodes this one's calls reach: the shell watches their heartbeats
    /// and reports a dead one as [`Event::NodeDown`].
    pub fn remote_nodes(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self
            .remote_keys
            .keys()
            .map(|&id| backplane::node_of(id))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    fn is_remote(&self, id: ConnId) -> bool {
        self.node.is_some_and(|n| backplane::node_of(id) != n)
    }

    fn request(&mut self, r: Request) {
        if self.node.is_some() {
            self.out.push_back(Output::Backplane(r));
        }
    }

    fn publish(&mut self, msg: Remote) {
        self.request(Request::Publish(msg));
    }

    /// A report in backplane mode: the pair is kept apart on every node.
    fn share_block(&mut self, a: ConnId, b: ConnId, ka: ClientKey, kb: ClientKey) {
        let ttl = self.config.moderation.key_memory;
        self.request(Request::KeepApart { a, b, ttl });
        self.request(Request::Block { a: ka, b: kb, ttl });
    }

    /// Asks the shared queue to pair `id` or keep it waiting.
    fn enqueue(&mut self, now: Instant, id: ConnId) {
        let (Some(c), Some(&open_at)) = (self.conns.get_mut(&id), self.shared_waiting.get(&id))
        else {
            return;
        };
        // Charged once, for the search or skip the client made.
        let limit = std::mem::take(&mut c.charge_search).then_some(self.config.per_client.searches);
        let waiter = Waiter {
            conn: id,
            key: c.info.key,
            interests: c.interests.clone(),
            open: open_at <= now,
            interest_wait: self.config.interest_wait,
            country: c.info.country,
            limit,
        };
        self.request(Request::Enqueue(waiter));
    }

    /// Gives back a waiter the shared queue handed over for a pairing that
    /// fell through.
    fn requeue(&mut self, now: Instant, id: ConnId) {
        if self.is_remote(id) {
            self.publish(Remote::Requeue { to: id });
        } else if self.shared_waiting.contains_key(&id) {
            self.enqueue(now, id);
        }
    }

    /// An answer from the backplane, or a message from another node.
    pub fn handle_backplane(&mut self, now: Instant, event: Event) {
        if self.node.is_none() {
            return;
        }
        match event {
            Event::Paired { conn, partner } => self.paired(now, conn, partner),
            Event::Queued { .. } => {}
            Event::Banned { conn, ttl } => self.search_refused(now, conn, ErrorCode::Banned, ttl),
            Event::Limited { conn, retry } => {
                self.search_refused(now, conn, ErrorCode::RateLimited, retry)
            }
            Event::TooManyConnects { conn } => {
                self.close(now, conn, CloseReason::TooManyConnections)
            }
            Event::Failed { conn } => self.close(now, conn, CloseReason::BackplaneLost),
            Event::RoomJoined {
                conn,
                room,
                peer,
                others,
                locked,
            } => self.room_joined(now, conn, room, peer, others, locked),
            Event::RoomRefused { conn, code, retry } => {
                if self.joining.remove(&conn).is_some() {
                    self.reject(now, conn, code, retry);
                }
            }
            Event::Remote(msg) => self.remote(now, msg),
            Event::NodeDown(node) => {
                let gone: Vec<(ConnId, ConnId, CallId)> = self
                    .conns
                    .iter()
                    .filter_map(|(&id, c)| match c.phase {
                        Phase::InCall { call, partner }
                            if self.is_remote(partner) && backplane::node_of(partner) == node =>
                        {
                            Some((id, partner, call))
                        }
                        _ => None,
                    })
                    .collect();
                if !gone.is_empty() {
                    tracing::info!(node, calls = gone.len(), "a node is gone; ending its calls");
                }
                for (to, from, call) in gone {
                    self.remote_ended(now, to, from, call, EndReason::PartnerLeft);
                }
                let members: Vec<(RoomId, PeerId)> = self
                    .rooms
                    .all_members()
                    .filter(|&(_, _, c)| self.is_remote(c) && backplane::node_of(c) == node)
                    .map(|(r, p, _)| (r, p))
                    .collect();
                for (room, peer) in members {
                    let store_key = self.room_key(room);
                    if let Some(conn) = self.rooms.member(room, peer) {
                        self.remote_keys.remove(&conn);
                    }
                    let others = self.rooms.leave(room, peer);
                    // The store is told once, by whoever sees it first.
                    self.request(Request::RoomLeave {
                        room: store_key.clone(),
                        peer,
                    });
                    self.announce_left(room, store_key, peer, others, false);
                }
            }
        }
    }

    /// The store refused `conn`'s queue join (a ban, the shared search
    /// allowance): it is idle again, if it was still searching.
    fn search_refused(&mut self, now: Instant, conn: ConnId, code: ErrorCode, retry: Duration) {
        if self.shared_waiting.remove(&conn).is_some() {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.phase = Phase::Idle;
            }
            self.reject(now, conn, code, Some(retry));
            self.send(conn, ServerMsg::Idle);
        }
    }

    fn paired(&mut self, now: Instant, conn: ConnId, partner: Partner) {
        if !self.shared_waiting.contains_key(&conn) {
            // Left the queue while the join ran: the waiter goes back.
            return self.requeue(now, partner.conn);
        }
        if !self.is_remote(partner.conn) {
            if partner.conn != conn && self.shared_waiting.contains_key(&partner.conn) {
                self.shared_waiting.remove(&conn);
                self.shared_waiting.remove(&partner.conn);
                let pairing = Pairing {
                    waiting: partner.conn,
                    joining: conn,
                    shared: partner.shared,
                };
                return self.start_call(now, pairing);
            }
            // The waiter left meanwhile: try again.
            return self.enqueue(now, conn);
        }
        self.shared_waiting.remove(&conn);
        let call = self.new_call();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.phase = Phase::InCall {
            call,
            partner: partner.conn,
        };
        let (key, country) = (c.info.key, c.info.country);
        self.remote_calls += 1;
        self.remote_keys.insert(partner.conn, partner.key);
        self.moderation.matched(now, key);
        tracing::debug!(call, "matched across nodes");
        // Recorded before the waiter's node hears of the call, so any end
        // of it comes after.
        self.request(Request::CallStart {
            call,
            a: partner.conn,
            b: conn,
        });
        self.send(
            conn,
            ServerMsg::Matched {
                call,
                polite: false,
                interests: partner.shared.clone(),
                country: partner.country,
            },
        );
        self.publish(Remote::Matched {
            to: partner.conn,
            from: conn,
            call,
            key,
            shared: partner.shared,
            country,
        });
    }

    fn remote(&mut self, now: Instant, msg: Remote) {
        let to = msg.to();
        if self.is_remote(to) {
            return;
        }
        let phase = self.conns.get(&to).map(|c| c.phase);
        match msg {
            Remote::Matched {
                from,
                call,
                key,
                shared,
                country,
                ..
            } => {
                let waiting = self.shared_waiting.contains_key(&to);
                if !waiting || !self.is_remote(from) {
                    // Gone or busy since: the joiner's call ends at once.
                    return self.publish(Remote::Ended {
                        to: from,
                        from: to,
                        call,
                        reason: EndReason::PartnerLeft,
                    });
                }
                self.shared_waiting.remove(&to);
                // A late fallback join may have queued it again.
                self.request(Request::Dequeue { conn: to });
                let Some(c) = self.conns.get_mut(&to) else {
                    return;
                };
                c.phase = Phase::InCall {
                    call,
                    partner: from,
                };
                let own = c.info.key;
                self.remote_calls += 1;
                self.remote_keys.insert(from, key);
                self.moderation.matched(now, own);
                tracing::debug!(call, "matched across nodes");
                self.send(
                    to,
                    ServerMsg::Matched {
                        call,
                        polite: true,
                        interests: shared,
                        country,
                    },
                );
            }
            Remote::Signal { from, signal, .. } => {
                if phase
                    == Some(Phase::InCall {
                        call: signal.call,
                        partner: from,
                    })
                {
                    tracing::trace!(conn = %to, "relaying a signal from another node");
                    self.send(to, ServerMsg::Signal(signal));
                }
            }
            Remote::Ended {
                from, call, reason, ..
            } => self.remote_ended(now, to, from, call, reason),
            Remote::Requeue { .. } => {
                if phase == Some(Phase::Searching) {
                    self.enqueue(now, to);
                }
            }
            Remote::PeerJoined { room, member, .. } => {
                if let Some((r, _)) = self.remote_room(to, &room)
                    && self.is_remote(member.conn)
                {
                    // Each member here gets its own copy; the room's copy
                    // gains the newcomer once.
                    let name = self.rooms.name(r).map(str::to_owned).unwrap_or_default();
                    let locked = self.rooms.is_locked(r);
                    self.rooms
                        .mirror(now, &name, &[(member.peer, member.conn)], locked);
                    self.remote_keys.insert(member.conn, member.key);
                    self.send(to, ServerMsg::PeerJoined { peer: member.peer });
                }
            }
            Remote::PeerLeft { room, peer, .. } => {
                if let Some((r, _)) = self.remote_room(to, &room) {
                    if let Some(conn) = self.rooms.member(r, peer)
                        && self.is_remote(conn)
                    {
                        self.remote_keys.remove(&conn);
                        self.rooms.leave(r, peer);
                    }
                    self.send(to, ServerMsg::PeerLeft { peer });
                }
            }
            Remote::RoomSignal {
                room,
                from,
                mut signal,
                ..
            } => {
                if let Some((r, me)) = self.remote_room(to, &room)
                    && signal.to == Some(me)
                    && self
                        .rooms
                        .member(r, from)
                        .is_some_and(|c| self.is_remote(c))
                {
                    signal.to = None;
                    signal.from = Some(from);
                    self.send(to, ServerMsg::RoomSignal(signal));
                }
            }
            Remote::RoomLock { room, locked, .. } => {
                if let Some((r, _)) = self.remote_room(to, &room) {
                    let name = self.rooms.name(r).map(str::to_owned).unwrap_or_default();
                    self.rooms.mirror(now, &name, &[], locked);
                    self.send(to, ServerMsg::RoomLockState { locked });
                }
            }
        }
    }

    /// `from`, on another node, left the call with `to`.
    fn remote_ended(
        &mut self,
        now: Instant,
        to: ConnId,
        from: ConnId,
        call: CallId,
        reason: EndReason,
    ) {
        let Some(c) = self.conns.get_mut(&to) else {
            return;
        };
        if c.phase
            != (Phase::InCall {
                call,
                partner: from,
            })
        {
            return;
        }
        c.phase = Phase::Idle;
        self.remote_calls -= 1;
        self.remote_keys.remove(&from);
        self.request(Request::CallEnd { call });
        tracing::debug!(call, reason = ?reason, "call with another node ended");
        self.send(to, ServerMsg::CallEnded { call, reason });
        self.search(now, to);
    }

    /// The store's name for a room (backplane mode; empty otherwise).
    fn room_key(&self, room: RoomId) -> String {
        match (self.node, self.rooms.name(room)) {
            (Some(_), Some(name)) => backplane::room_key(name),
            _ => String::new(),
        }
    }

    /// `peer` is out of the room: tells `others` (here, or through their
    /// node) and, if `store` (the member was this node's), the store. A
    /// node's copy of a room goes once none of its members are left.
    fn announce_left(
        &mut self,
        room: RoomId,
        store_key: String,
        peer: PeerId,
        others: Vec<(PeerId, ConnId)>,
        store: bool,
    ) {
        if self.node.is_some() && store {
            self.request(Request::RoomLeave {
                room: store_key.clone(),
                peer,
            });
        }
        let mut local = false;
        for (_, other) in others {
            if self.is_remote(other) {
                if store {
                    self.publish(Remote::PeerLeft {
                        to: other,
                        room: store_key.clone(),
                        peer,
                    });
                }
            } else {
                local = true;
                self.send(other, ServerMsg::PeerLeft { peer });
            }
        }
        if self.node.is_some() && !local {
            for (_, _, conn) in self
                .rooms
                .all_members()
                .filter(|m| m.0 == room)
                .collect::<Vec<_>>()
            {
                self.remote_keys.remove(&conn);
            }
            self.rooms.forget(room);
        }
    }

    fn room_joined(
        &mut self,
        now: Instant,
        conn: ConnId,
        store_key: String,
        peer: PeerId,
        others: Vec<Member>,
        locked: bool,
    ) {
        let Some(name) = self.joining.remove(&conn) else {
            // Gone or ended while the store let it in: take it out again.
            return self.request(Request::RoomLeave {
                room: store_key,
                peer,
            });
        };
        let key = self.key(conn);
        let mut members: Vec<(PeerId, ConnId)> = others.iter().map(|m| (m.peer, m.conn)).collect();
        members.push((peer, conn));
        let room = self.rooms.mirror(now, &name, &members, locked);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::InRoom { room, peer };
        }
        tracing::debug!(conn = %conn, peer, "joined a shared room");
        let me = Member { peer, conn, key };
        for m in &others {
            if self.is_remote(m.conn) {
                self.remote_keys.insert(m.conn, m.key);
                self.publish(Remote::PeerJoined {
                    to: m.conn,
                    room: store_key.clone(),
                    member: me.clone(),
                });
            } else {
                self.send(m.conn, ServerMsg::PeerJoined { peer });
            }
        }
        self.send(
            conn,
            ServerMsg::RoomJoined {
                room: name,
                peer,
                peers: others.iter().map(|m| m.peer).collect(),
                locked,
                max_size: self.rooms.max_size(),
            },
        );
    }

    /// A room message from another node for `to`, if `to` is still in that room.
    fn remote_room(&mut self, to: ConnId, store_key: &str) -> Option<(RoomId, PeerId)> {
        match self.conns.get(&to)?.phase {
            Phase::InRoom { room, peer } if self.room_key(room) == store_key => Some((room, peer)),
            _ => None,
        }
    }

    /// Checks the switchboard's invariants; `Err` describes the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut in_call = 0;
        let mut remote = 0;
        let mut in_room = Vec::new();
        for (&id, c) in &self.conns {
            match c.phase {
                Phase::InRoom { room, peer } => {
                    if c.closed {
                        return Err(format!("{id} is closed but in a room"));
                    }
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is in a room and queued"));
                    }
                    in_room.push((id, room, peer));
                }
                Phase::Idle => {
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is idle but queued"));
                    }
                }
                Phase::Searching => {
                    if !self.queue.is_waiting(id) && !self.shared_waiting.contains_key(&id) {
                        return Err(format!("{id} is searching but not queued"));
                    }
                    if c.closed {
                        return Err(format!("{id} is closed but searching"));
                    }
                }
                Phase::InCall { call, partner } => {
                    in_call += 1;
                    if partner == id {
                        return Err(format!("{id} is in a call with itself"));
                    }
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is in a call and queued"));
                    }
                    if c.closed {
                        return Err(format!("{id} is closed but in a call"));
                    }
                    if self.is_remote(partner) {
                        remote += 1;
                        in_call -= 1;
                        continue;
                    }
                    let back = self.conns.get(&partner).map(|p| p.phase);
                    if back != Some(Phase::InCall { call, partner: id }) {
                        return Err(format!(
                            "{id}'s partner {partner} is not in call {call} with it"
                        ));
                    }
                }
            }
        }
        for id in self.queue.waiting() {
            if !self.conns.contains_key(&id) {
                return Err(format!("{id} is queued but gone"));
            }
        }
        for &id in self.shared_waiting.keys() {
            if self.conns.get(&id).map(|c| c.phase) != Some(Phase::Searching) {
                return Err(format!(
                    "{id} waits in the shared queue but is not searching"
                ));
            }
        }
        if remote != self.remote_calls {
            return Err(format!(
                "{remote} people in calls with other nodes but {} such calls",
                self.remote_calls
            ));
        }
        if in_call != 2 * self.calls {
            return Err(format!(
                "{in_call} people in calls but {} calls",
                self.calls
            ));
        }
        // In backplane mode a room also lists members on other nodes.
        if self.node.is_none() {
            self.rooms.check(&in_room)?;
        }
        Ok(())
    }
}

/// Who may not be paired: people who just skipped each other (until the
/// cooldown ends) and clients one of whom reported the other.
struct Blocker<'a> {
    now: Instant,
    cooldowns: &'a Cooldowns,
    moderation: &'a Moderation,
    conns: &'a HashMap<ConnId, Box<Conn>>,
}

impl crate::matchmaker::Blocked for Blocker<'_> {
    fn blocked_until(&self, a: ConnId, b: ConnId) -> Option<Instant> {
        if let Some(until) = self.cooldowns.blocked_until(self.now, a, b) {
            return Some(until);
        }
        let (ca, cb) = (self.conns.get(&a)?, self.conns.get(&b)?);
        // A client banned while one of its connections was already waiting.
        let banned = [ca.info.key, cb.info.key]
            .into_iter()
            .filter_map(|k| self.moderation.banned_until(self.now, k))
            .max();
        if banned.is_some() {
            return banned;
        }
        let reported = ca.reported.contains(&b)
            || cb.reported.contains(&a)
            || self.moderation.blocked(ca.info.key, cb.info.key);
        // A report blocks for as long as keys live; look again in an hour.
        reported.then(|| self.now + Duration::from_secs(3600))
    }
}

/// Refill rate giving `budget` errors per `window`, at least one per window.
fn budget_rate(budget: u32, window: Duration) -> u32 {
    let secs = window.as_secs().max(1);
    u32::try_from(u64::from(budget).div_ceil(secs)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found with `earshot-bench soak`): the cooldown of a skip
    /// outlived both connections on an idle server, until another skip
    /// happened to come by.
    #[test]
    fn cooldowns_of_gone_connections_are_forgotten_on_an_idle_server() {
        let config = Config::default();
        let cooldown = config.rematch_cooldown;
        let mut board = Switchboard::new(config);
        let t0 = Instant::now();
        let (a, b) = (ConnId(1), ConnId(2));
        for id in [a, b] {
            board.connect(t0, id, ConnInfo::default());
            board.handle_text(t0, id, r#"{"type":"hello","version":1}"#);
            board.handle_text(t0, id, r#"{"type":"search"}"#);
        }
        assert_eq!(board.stats().calls, 1);
        board.handle_text(t0, a, r#"{"type":"skip"}"#);
        assert_eq!(board.cooldowns.len(), 1);
        board.disconnect(t0, a);
        board.disconnect(t0, b);
        // The shell's timer: run whatever the switchboard asks for.
        while let Some(at) = board.poll_timeout() {
            assert!(at <= t0 + cooldown + COOLDOWN_SWEEP_SLACK, "{at:?}");
            board.handle_timeout(at);
        }
        assert_eq!(board.cooldowns.len(), 0);
        assert_eq!(
            board.cooldowns.order.capacity(),
            0,
            "the tables are given back"
        );
        assert_eq!(board.stats().connections, 0);
    }
}
