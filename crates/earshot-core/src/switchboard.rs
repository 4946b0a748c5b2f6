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

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ConnId;
use crate::matchmaker::{MatchConfig, Matchmaker, Pairing};
use crate::protocol::{
    self, CallId, ClientMsg, Country, EndReason, ErrorCode, IceServer, Limits, ServerMsg, Signal,
};
use crate::ratelimit::TokenBucket;

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
    pub ice_servers: Vec<IceServer>,
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
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::IdleTimeout => 1001,
            CloseReason::HelloTimeout | CloseReason::TooManyErrors => 1008,
            CloseReason::MessageTooBig => 1009,
            CloseReason::ServerRestart => 1012,
            CloseReason::ServerFull => 1013,
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
}

/// Aggregate figures, for metrics. Nothing per user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: usize,
    pub waiting: usize,
    pub calls: usize,
    pub matches_total: u64,
    pub errors_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Searching,
    InCall { call: CallId, partner: ConnId },
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
}

/// Pairs that skipped each other, kept apart until a deadline.
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
    }
}

/// The sans-IO signalling state machine.
#[derive(Debug)]
pub struct Switchboard {
    config: Config,
    conns: HashMap<ConnId, Conn>,
    queue: Matchmaker,
    cooldowns: Cooldowns,
    /// New connections' hello deadlines, in time order.
    hello_deadlines: VecDeque<(Instant, ConnId)>,
    next_call: CallId,
    calls: usize,
    matches_total: u64,
    errors_total: u64,
    out: VecDeque<Output>,
}

impl Switchboard {
    pub fn new(config: Config) -> Switchboard {
        let queue = Matchmaker::new(MatchConfig {
            interest_wait: config.interest_wait,
            scan_limit: config.scan_limit,
        });
        Switchboard {
            config,
            conns: HashMap::new(),
            queue,
            cooldowns: Cooldowns::default(),
            hello_deadlines: VecDeque::new(),
            next_call: 1,
            calls: 0,
            matches_total: 0,
            errors_total: 0,
            out: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            waiting: self.queue.len(),
            calls: self.calls,
            matches_total: self.matches_total,
            errors_total: self.errors_total,
        }
    }

    /// A connection opened. `id` must be new.
    pub fn connect(&mut self, now: Instant, id: ConnId, info: ConnInfo) {
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
        };
        if self.conns.insert(id, conn).is_some() {
            tracing::warn!(conn = %id, "connection id reused; replacing its state");
        }
        self.hello_deadlines
            .push_back((now + self.config.hello_timeout, id));
    }

    /// A connection is gone. Its partner, if any, is told and re-queued.
    pub fn disconnect(&mut self, now: Instant, id: ConnId) {
        if self.conns.contains_key(&id) {
            self.leave(now, id, EndReason::PartnerLeft);
            self.conns.remove(&id);
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
            ClientMsg::Hello { version } if !conn.greeted => {
                if version != protocol::PROTOCOL_VERSION {
                    return self.reject(now, id, ErrorCode::UnsupportedVersion, None);
                }
                conn.greeted = true;
                let welcome = ServerMsg::Welcome {
                    version: protocol::PROTOCOL_VERSION,
                    ice_servers: conn.info.ice_servers.clone(),
                    limits: self.config.limits(),
                    country: conn.info.country,
                };
                self.send(id, welcome);
            }
            _ if !conn.greeted => self.reject(now, id, ErrorCode::HelloRequired, None),
            ClientMsg::Hello { .. } => self.reject(now, id, ErrorCode::AlreadyHello, None),
            ClientMsg::Search { interests } => match phase {
                Phase::Searching => self.reject(now, id, ErrorCode::AlreadySearching, None),
                Phase::InCall { .. } => self.reject(now, id, ErrorCode::AlreadyInCall, None),
                Phase::Idle => match protocol::normalize_interests(
                    &interests,
                    self.config.max_interests,
                    self.config.max_interest_chars,
                ) {
                    Ok(tags) => {
                        conn.interests = tags;
                        self.search(now, id);
                    }
                    Err(code) => self.reject(now, id, code, None),
                },
            },
            ClientMsg::Signal(signal) => self.relay(now, id, phase, signal),
            ClientMsg::Skip => match phase {
                Phase::InCall { .. } => {
                    self.end_call(now, id, EndReason::PartnerSkipped);
                    self.search(now, id);
                }
                _ => self.reject(now, id, ErrorCode::NotInCall, None),
            },
            ClientMsg::End => {
                self.leave(now, id, EndReason::PartnerEnded);
                self.send(id, ServerMsg::Idle);
            }
        }
    }

    /// Runs what is due: hello deadlines, interest fallbacks, re-match retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.hello_deadlines.front() {
            if at > now {
                break;
            }
            self.hello_deadlines.pop_front();
            if self.conns.get(&id).is_some_and(|c| !c.greeted && !c.closed) {
                self.close(now, id, CloseReason::HelloTimeout);
            }
        }
        self.cooldowns.expire(now);
        let mut pairs = Vec::new();
        let cooldowns = &self.cooldowns;
        self.queue
            .handle_timeout(now, &|a, b| cooldowns.blocked_until(now, a, b), &mut pairs);
        for p in pairs {
            self.start_call(p);
        }
    }

    /// When `handle_timeout` should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hello = self.hello_deadlines.front().map(|&(at, _)| at);
        match (hello, self.queue.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        tracing::debug!(conn = %id, reason = reason.reason(), "closing connection");
        self.leave(now, id, EndReason::PartnerLeft);
        self.out.push_back(Output::Close(id, reason));
    }

    fn send(&mut self, id: ConnId, msg: ServerMsg) {
        self.out.push_back(Output::Send(id, msg));
    }

    fn reject(&mut self, now: Instant, id: ConnId, code: ErrorCode, retry: Option<Duration>) {
        self.errors_total += 1;
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
                self.send(partner, ServerMsg::Signal(signal));
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
        conn.phase = Phase::Searching;
        let interests = conn.interests.clone();
        self.send(
            id,
            ServerMsg::Searching {
                interests: interests.clone(),
            },
        );
        let cooldowns = &self.cooldowns;
        let pairing = self.queue.join(now, id, interests, &|a, b| {
            cooldowns.blocked_until(now, a, b)
        });
        if let Some(p) = pairing {
            self.start_call(p);
        }
    }

    fn start_call(&mut self, p: Pairing) {
        let call = self.next_call;
        self.next_call += 1;
        self.calls += 1;
        self.matches_total += 1;
        let mut country = |id: ConnId, partner: ConnId| {
            let c = self.conns.get_mut(&id).expect("paired connections exist");
            c.phase = Phase::InCall { call, partner };
            c.info.country
        };
        let waiting_country = country(p.waiting, p.joining);
        let joining_country = country(p.joining, p.waiting);
        tracing::debug!(call, a = %p.waiting, b = %p.joining, "matched");
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
                if let Some(c) = self.conns.get_mut(&id) {
                    c.phase = Phase::Idle;
                }
            }
            _ => {}
        }
    }

    /// Checks the switchboard's invariants; `Err` describes the first broken one.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut in_call = 0;
        for (&id, c) in &self.conns {
            match c.phase {
                Phase::Idle => {
                    if self.queue.is_waiting(id) {
                        return Err(format!("{id} is idle but queued"));
                    }
                }
                Phase::Searching => {
                    if !self.queue.is_waiting(id) {
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
        if in_call != 2 * self.calls {
            return Err(format!(
                "{in_call} people in calls but {} calls",
                self.calls
            ));
        }
        Ok(())
    }
}

/// Refill rate giving `budget` errors per `window`, at least one per window.
fn budget_rate(budget: u32, window: Duration) -> u32 {
    let secs = window.as_secs().max(1);
    u32::try_from(u64::from(budget).div_ceil(secs)).unwrap_or(u32::MAX)
}
