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
//!
//! Where each decision is made, one `impl Switchboard` block a file:
//!
//! - `mod.rs` (here): state, connect and disconnect, the dispatch of client
//!   messages, timers, and send, reject and close.
//! - `hello.rs`: the greeting and proof of work.
//! - `strangers.rs`: searching, pairing, call signals, skip, end, leave.
//! - `rooms.rs`: joining rooms, room signals, locks.
//! - `moderation.rs`: reports and strikes (the rules are in
//!   [`crate::moderation`]), and the abuse record behind proof of work.
//! - `remote.rs`: backplane mode: requests to the shared store, its answers,
//!   and calls and rooms that span nodes.
//! - `invariants.rs`: [`Switchboard::check_invariants`].

mod hello;
mod invariants;
mod moderation;
mod remote;
mod rooms;
mod strangers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backplane::{self, Event, Member, NodeId, Partner, Remote, Request, Waiter};
use crate::matchmaker::{MatchConfig, Matchmaker, Pairing};
use crate::moderation::{ModConfig, Moderation, ReportOutcome, Reporter};
use crate::pow::{Pow, PowConfig, PowMode, PowSolution};
use crate::protocol::{
    self, CallId, ClientMsg, ClientMsgType, Country, EndReason, ErrorCode, IceServer, Limits,
    PeerId, ReportReason, RoomSignal, ServerMsg, Signal, Verifier,
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
    /// Most client keys each per-client allowance table remembers (about
    /// 100 bytes each); past it, new keys share one allowance. The same cap
    /// holds for the keys remembered for recent abuse.
    pub allowance_keys: usize,
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
    fn new(l: &ClientLimits, max_keys: usize) -> ClientBuckets {
        let b =
            |(burst, every): (u32, Duration)| KeyedBuckets::with_max_keys(every, burst, max_keys);
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
            allowance_keys: crate::ratelimit::DEFAULT_MAX_KEYS,
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
    /// The client's network for abuse control: a rotating HMAC of its
    /// address's /48 (IPv6) or /24 (IPv4). Reports from one network count
    /// as one reporter toward a ban. `None`: the client key stands for it.
    pub network: Option<ClientKey>,
    /// The network's key under the previous secret.
    pub previous_network: Option<ClientKey>,
}

/// Why the server closes a connection, with its WebSocket close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Backplane mode: a room join the shared store is still checking (the
    /// room's name waits in `joining`).
    Joining,
    Searching,
    InCall {
        call: CallId,
        partner: ConnId,
    },
    InRoom {
        room: RoomId,
        peer: PeerId,
    },
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
    /// When its current (or last) stranger call began.
    call_since: Instant,
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

    /// Forgets the pairs `keep` rejects a side of, and gives back spare room.
    fn retain(&mut self, keep: impl Fn(ConnId) -> bool) {
        self.until.retain(|&(a, b), _| keep(a) && keep(b));
        let until = &self.until;
        self.order.retain(|(t, key)| until.get(key) == Some(t));
        if self.order.is_empty() {
            *self = Cooldowns::default();
        } else {
            self.until.shrink_to_fit();
            self.order.shrink_to_fit();
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
struct Minter(Box<dyn FnMut(ConnId) -> (String, String) + Send>);

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
    /// Backplane mode: the normalised room names of connections in
    /// `Phase::Joining`.
    joining: HashMap<ConnId, String>,
    /// The connection whose message is being handled, and its type: an
    /// error `reject` sends that connection meanwhile answers it (`re`).
    answering: Option<(ConnId, ClientMsgType)>,
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
        let rooms = Rooms::with_max_keys(config.rooms.clone(), config.allowance_keys);
        let moderation = Moderation::new(config.moderation.clone());
        let clients = ClientBuckets::new(&config.per_client, config.allowance_keys);
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
            answering: None,
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
        mint: impl FnMut(ConnId) -> (String, String) + Send + 'static,
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
                let (username, credential) = mint(id);
                s.username = Some(username);
                s.credential = Some(credential);
            }
        }
        servers
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// For a quiet moment after a crowd has left (the server calls it right
    /// before asking malloc to trim): forgets the skip cooldowns of pairs
    /// with a side gone, as ids are never reused, and shrinks the tables that
    /// kept the capacity of the crowd's peak, so that their pages can go
    /// back to the system. Changes nothing anyone can observe.
    pub fn compact(&mut self) {
        let (conns, remote) = (&self.conns, &self.remote_keys);
        self.cooldowns
            .retain(|id| conns.contains_key(&id) || remote.contains_key(&id));
        self.hello_deadlines
            .retain(|Reverse((_, id))| conns.contains_key(id));
        self.hello_deadlines.shrink_to_fit();
        self.conns.shrink_to_fit();
        self.clients.open.shrink_to_fit();
        self.abuse.shrink_to_fit();
        self.remote_keys.shrink_to_fit();
        self.shared_waiting.shrink_to_fit();
        self.fallbacks.shrink_to_fit();
        self.joining.shrink_to_fit();
        self.out.shrink_to_fit();
        self.queue.compact();
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
        if *open == 1 {
            self.moderation.online(now, key);
        }
        let open = *open;
        let too_many = open > self.config.per_client.connections
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
            call_since: now,
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
                        self.moderation.offline(now, key);
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
            // Dropped unread; its type still tells the client which one.
            let re = protocol::read_type(text).ok();
            return self.reject_about(now, id, re, ErrorCode::RateLimited, Some(wait));
        }
        match protocol::decode(text) {
            Ok(msg) => self.handle(now, id, msg),
            Err(e) => {
                let re = protocol::read_type(text).ok();
                self.reject_about(now, id, re, e.into(), None)
            }
        }
    }

    /// A binary frame arrived: the protocol has none.
    pub fn handle_binary(&mut self, now: Instant, id: ConnId) {
        if self.conns.get(&id).is_some_and(|c| !c.closed) {
            self.reject(now, id, ErrorCode::BadMessage, None);
        }
    }

    /// Handles a decoded message (no size or rate check: see `handle_text`).
    fn handle(&mut self, now: Instant, id: ConnId, msg: ClientMsg) {
        let outer = self.answering.replace((id, msg.msg_type()));
        self.dispatch(now, id, msg);
        self.answering = outer;
    }

    fn dispatch(&mut self, now: Instant, id: ConnId, msg: ClientMsg) {
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
                Phase::Joining => self.reject(now, id, ErrorCode::AlreadyInRoom, None),
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
                Phase::Idle | Phase::Joining | Phase::Searching | Phase::InRoom { .. } => {
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
            self.note_abuse(now, key);
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

    /// Sends `id` an `error`; while `id`'s own message is being handled,
    /// the error names it as the message it answers.
    fn reject(&mut self, now: Instant, id: ConnId, code: ErrorCode, retry: Option<Duration>) {
        let re = self
            .answering
            .and_then(|(conn, kind)| (conn == id).then_some(kind));
        self.reject_about(now, id, re, code, retry);
    }

    fn reject_about(
        &mut self,
        now: Instant,
        id: ConnId,
        re: Option<ClientMsgType>,
        code: ErrorCode,
        retry: Option<Duration>,
    ) {
        self.errors_total += 1;
        if let Some(i) = ErrorCode::ALL.iter().position(|&c| c == code) {
            self.errors_by_code[i] += 1;
        }
        tracing::debug!(conn = %id, code = code.as_str(), "rejected a message");
        self.send(
            id,
            ServerMsg::Error {
                code,
                re,
                message: code.message().into(),
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

    /// `compact` (before a trim) forgets cooldowns with a side gone at once,
    /// keeps those of pairs still here, and leaves empty tables unallocated.
    #[test]
    fn compact_forgets_cooldowns_of_gone_connections_and_gives_back_tables() {
        let mut board = Switchboard::new(Config::default());
        let t0 = Instant::now();
        let ids: Vec<ConnId> = (1..=4).map(ConnId).collect();
        for &id in &ids {
            board.connect(t0, id, ConnInfo::default());
            board.handle_text(t0, id, r#"{"type":"hello","version":1}"#);
            board.handle_text(t0, id, r#"{"type":"search"}"#);
        }
        assert_eq!(board.stats().calls, 2);
        board.handle_text(t0, ids[0], r#"{"type":"skip"}"#);
        board.handle_text(t0, ids[2], r#"{"type":"skip"}"#);
        assert_eq!(board.cooldowns.len(), 2);
        board.disconnect(t0, ids[0]);
        board.compact();
        assert_eq!(board.cooldowns.len(), 1, "the pair still here stays apart");
        for &id in &ids[1..] {
            board.disconnect(t0, id);
        }
        board.compact();
        assert_eq!(board.cooldowns.len(), 0);
        assert_eq!(board.cooldowns.order.capacity(), 0);
        assert_eq!(board.conns.capacity(), 0);
        assert_eq!(board.stats().waiting, 0);
    }
}
