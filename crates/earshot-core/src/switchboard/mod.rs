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
//! by several nodes (the one choice, made in `queue.rs`'s `Queue`): joining it, and reaching a partner on another node, are
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
//! - `config.rs`: tunables and per-client allowances.
//! - `cooldowns.rs`: who may not be paired (skips, bans, reports).
//! - `hello.rs`: the greeting and proof of work.
//! - `strangers.rs`: searching, pairing, call signals, skip, end, leave.
//! - `rooms.rs`: joining rooms, room signals, locks.
//! - `moderation.rs`: reports and strikes (the rules are in
//!   [`crate::moderation`]), and the abuse record behind proof of work.
//! - `queue.rs`: the stranger queue, here or in the shared store: the one
//!   place that knows whether this is one node or several.
//! - `remote.rs`: backplane mode: requests to the shared store, its answers,
//!   and calls and rooms that span nodes.
//! - `invariants.rs`: [`Switchboard::check_invariants`].

mod config;
mod cooldowns;
mod hello;
mod invariants;
mod moderation;
mod queue;
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
use config::{ClientBuckets, millis};
pub use config::{ClientLimits, Config};
use cooldowns::{Blocker, Cooldowns};
use queue::{Joined, Queue};

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
    /// When its current (or last) stranger call began.
    call_since: Instant,
}

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
    /// The stranger queue, here or shared: the one place that says whether
    /// this switchboard is a node of several.
    queue: Queue,
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
        let queue = Queue::new(None, &config);
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

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            waiting: self.queue.len(),
            calls: self.calls + self.queue.remote_calls(),
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
                        self.search(now, id, true);
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
                    self.search(now, id, true);
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
        let blocked = Blocker {
            now,
            cooldowns: &self.cooldowns,
            moderation: &self.moderation,
            conns: &self.conns,
        };
        let (pairs, due) = self.queue.handle_timeout(now, &blocked);
        for p in pairs {
            self.start_call(now, p);
        }
        for id in due {
            self.enqueue(now, id);
        }
    }

    /// When `handle_timeout` should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hello = self.hello_deadlines.peek().map(|&Reverse((at, _))| at);
        let cooldown = self.cooldowns.poll_timeout();
        [hello, self.queue.poll_timeout(), cooldown]
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

/// Refill rate giving `budget` errors per `window`, at least one per window.
fn budget_rate(budget: u32, window: Duration) -> u32 {
    let secs = window.as_secs().max(1);
    u32::try_from(u64::from(budget).div_ceil(secs)).unwrap_or(u32::MAX)
}
