//! Property tests of the switchboard and the decoder, on a virtual clock.
//!
//! - `random_sessions_keep_every_promise`: random operation sequences over six
//!   connection slots. Every output is checked against a [`Model`] built only
//!   from the outputs (plus the shell's own connects and disconnects):
//!   (a) a `matched` pairs two different live searchers with one fresh call id
//!   and exactly one polite side; (b) a signal is relayed only to the sender's
//!   partner, for the sender's current call; (c) a skipped pair is not matched
//!   again before the cooldown ends; (d) nothing goes to a connection after
//!   its disconnect or `Close`; (e) error codes are documented, with
//!   `retry_after_ms` on `rate_limited` only. Between steps: no two searchers
//!   who could be paired are both still waiting, a `call_ended` is followed by
//!   `searching`, `stats()` agrees with the model and `check_invariants` holds.
//!   `random_sessions_reach_calls_skips_and_relays` shows the sequences get
//!   that far.
//! - `decode_*` and `handle_text_*`: the decoder and the switchboard's answer
//!   on arbitrary text, arbitrary JSON trees and message-shaped objects.
//! - `searchers_are_paired_in_arrival_order`, `the_queue_is_first_come_first_served_across_ends`:
//!   untagged searchers are paired first come, first served.
//!
//! Failure persistence is off so that a failing run writes no
//! `proptest-regressions` file; proptest prints the minimal input instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use earshot_core::protocol::{
    self, CallId, ClientMsg, DecodeError, EndReason, IceCandidate, SdpType, SessionDescription,
    Signal, SignalPayload,
};
use earshot_core::{
    CloseReason, Config, ConnId, ConnInfo, ErrorCode, Output, ServerMsg, Switchboard,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short timers and a small burst, so interest fallbacks, cooldowns, hello
/// deadlines and rate limits all happen within one sequence.
fn session_config() -> Config {
    Config {
        interest_wait: Duration::from_secs(2),
        rematch_cooldown: Duration::from_secs(3),
        messages_per_second: 10,
        message_burst: 12,
        ..Config::default()
    }
}

const SLOTS: usize = 6;

/// Interests as clients type them: some valid (two normalise to the same
/// tag), some invalid (empty, bad characters, too long).
const TAGS: &[&str] = &[
    "chess",
    " Chess",
    "music",
    "go",
    "",
    "<b>",
    "a-very-long-interest-name-x",
];

fn hello(version: u32) -> String {
    json!({"type": "hello", "version": version}).to_string()
}

fn signal_text(call: CallId, candidate: bool) -> String {
    if candidate {
        json!({"type": "signal", "call": call, "candidate": {
            "candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}})
    } else {
        json!({"type": "signal", "call": call,
            "description": {"type": "offer", "sdp": "v=0"}})
    }
    .to_string()
}

// ---------------------------------------------------------------------------
// The model: what the outputs say about everyone.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Idle,
    Searching {
        since: Instant,
        interests: Vec<String>,
    },
    InCall {
        call: CallId,
        partner: ConnId,
    },
}

#[derive(Debug)]
struct Peer {
    greeted: bool,
    phase: Phase,
    /// A `Close` output was seen for it.
    closed: bool,
    /// The shell called `disconnect`.
    gone: bool,
    /// The latest call it was matched in, for late signals.
    last_call: Option<CallId>,
}

impl Peer {
    fn open(&self) -> bool {
        !self.closed && !self.gone
    }
}

/// What one step (one call into the board) is expected to do with signals,
/// and what it did to the connection that caused it.
#[derive(Debug, Default)]
struct Step {
    sender: Option<ConnId>,
    /// The signal the sender's frame decodes to, if any.
    signal: Option<Signal>,
    /// Where that signal may be relayed: the sender's partner in that call.
    relay_to: Option<ConnId>,
    relayed: usize,
    outputs: usize,
    to_sender: usize,
    sender_errors: Vec<ErrorCode>,
    closes: Vec<(ConnId, CloseReason)>,
}

/// How much of the protocol a sequence exercised.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    matches: u64,
    skips: u64,
    relays: u64,
    rematches_after_cooldown: u64,
    shared_interest_matches: u64,
    errors: u64,
    rate_limited: u64,
    closes: u64,
}

/// Everyone's state as told by the outputs, and the rules outputs must keep.
struct Model {
    interest_wait: Duration,
    rematch_cooldown: Duration,
    peers: HashMap<ConnId, Peer>,
    /// The first `matched` of a pair; its partner's must come next.
    half: Option<(ConnId, CallId, bool, Vec<String>)>,
    calls_seen: HashSet<CallId>,
    /// Pairs whose call ended by a skip, with when they may meet again.
    cooldowns: HashMap<(ConnId, ConnId), Instant>,
    /// Told their call ended, so `searching` must be the next thing they hear.
    requeued: HashSet<ConnId>,
    counts: Counts,
}

fn pair_key(a: ConnId, b: ConnId) -> (ConnId, ConnId) {
    (a.min(b), a.max(b))
}

impl Model {
    fn new(config: &Config) -> Model {
        Model {
            interest_wait: config.interest_wait,
            rematch_cooldown: config.rematch_cooldown,
            peers: HashMap::new(),
            half: None,
            calls_seen: HashSet::new(),
            cooldowns: HashMap::new(),
            requeued: HashSet::new(),
            counts: Counts::default(),
        }
    }

    fn connect(&mut self, id: ConnId) {
        self.peers.insert(
            id,
            Peer {
                greeted: false,
                phase: Phase::Idle,
                closed: false,
                gone: false,
                last_call: None,
            },
        );
    }

    fn phase(&self, id: ConnId) -> Option<&Phase> {
        self.peers.get(&id).map(|p| &p.phase)
    }

    /// Where a signal from `from` for `call` may go: its partner in that call.
    fn relay_target(&self, from: ConnId, call: CallId) -> Option<ConnId> {
        match self.phase(from) {
            Some(&Phase::InCall { call: c, partner }) if c == call => Some(partner),
            _ => None,
        }
    }

    fn peer(&mut self, id: ConnId) -> Result<&mut Peer, TestCaseError> {
        match self.peers.get_mut(&id) {
            Some(p) => Ok(p),
            None => Err(TestCaseError::fail(format!(
                "output for {id}, which never connected"
            ))),
        }
    }

    /// Checks one output against everything seen so far, then learns from it.
    fn observe(
        &mut self,
        now: Instant,
        out: &Output,
        step: &mut Step,
    ) -> Result<(), TestCaseError> {
        step.outputs += 1;
        if let Some((first, call, ..)) = &self.half {
            prop_assert!(
                matches!(out, Output::Send(_, ServerMsg::Matched { .. })),
                "(a) {first} was told of call {call} but its partner was not told next: {out:?}"
            );
        }
        let (to, msg) = match out {
            Output::Close(id, reason) => {
                let peer = self.peer(*id)?;
                prop_assert!(!peer.gone, "(d) Close for {id} after disconnect");
                prop_assert!(!peer.closed, "(d) a second Close for {id}");
                prop_assert!(
                    !matches!(peer.phase, Phase::InCall { .. }),
                    "{id} closed while its partner was not told the call ended"
                );
                peer.closed = true;
                peer.phase = Phase::Idle;
                step.closes.push((*id, *reason));
                self.counts.closes += 1;
                return Ok(());
            }
            Output::Send(to, msg) => (*to, msg),
        };
        {
            let peer = self.peer(to)?;
            prop_assert!(!peer.gone, "(d) {msg:?} sent to {to} after disconnect");
            prop_assert!(!peer.closed, "(d) {msg:?} sent to {to} after its Close");
        }
        if step.sender == Some(to) {
            step.to_sender += 1;
        }
        if self.requeued.remove(&to) {
            prop_assert!(
                matches!(msg, ServerMsg::Searching { .. }),
                "{to} was told its call ended, then {msg:?} instead of searching"
            );
        }
        match msg {
            ServerMsg::Welcome { .. } => {
                let peer = self.peer(to)?;
                prop_assert!(!peer.greeted, "a second welcome for {to}");
                peer.greeted = true;
            }
            ServerMsg::Searching { interests } => {
                let peer = self.peer(to)?;
                prop_assert!(peer.greeted, "{to} searching before hello");
                prop_assert!(
                    !matches!(peer.phase, Phase::InCall { .. }),
                    "{to} told it is searching while still in {:?}",
                    peer.phase
                );
                peer.phase = Phase::Searching {
                    since: now,
                    interests: interests.clone(),
                };
            }
            ServerMsg::Matched {
                call,
                polite,
                interests,
                ..
            } => self.matched(now, to, *call, *polite, interests)?,
            ServerMsg::Signal(s) => {
                prop_assert_eq!(
                    step.signal.as_ref(),
                    Some(s),
                    "(b) relayed a signal nobody sent in this step"
                );
                prop_assert_eq!(
                    step.relay_to,
                    Some(to),
                    "(b) signal for call {} relayed to {} instead of the sender's partner",
                    s.call,
                    to
                );
                step.relayed += 1;
                prop_assert_eq!(step.relayed, 1, "(b) one signal relayed twice");
                self.counts.relays += 1;
            }
            ServerMsg::CallEnded { call, reason } => {
                let Some(&Phase::InCall { call: c, partner }) = self.phase(to) else {
                    return Err(TestCaseError::fail(format!(
                        "{to} told call {call} ended, but it is {:?}",
                        self.phase(to)
                    )));
                };
                prop_assert_eq!(c, *call, "{} told the wrong call ended", to);
                prop_assert_eq!(
                    self.phase(partner),
                    Some(&Phase::InCall {
                        call: c,
                        partner: to
                    }),
                    "{}'s partner {} is not in the call",
                    to,
                    partner
                );
                for who in [to, partner] {
                    self.peer(who)?.phase = Phase::Idle;
                }
                self.requeued.insert(to);
                if *reason == EndReason::PartnerSkipped {
                    self.counts.skips += 1;
                    self.cooldowns
                        .insert(pair_key(to, partner), now + self.rematch_cooldown);
                }
            }
            ServerMsg::Idle => {
                let peer = self.peer(to)?;
                prop_assert!(
                    !matches!(peer.phase, Phase::InCall { .. }),
                    "{to} told it is idle while in {:?}",
                    peer.phase
                );
                peer.phase = Phase::Idle;
            }
            ServerMsg::Error {
                code,
                message,
                retry_after_ms,
            } => {
                prop_assert!(
                    ErrorCode::ALL.contains(code),
                    "(e) undocumented code {code:?}"
                );
                prop_assert_eq!(*message, code.message());
                prop_assert_eq!(
                    retry_after_ms.is_some(),
                    *code == ErrorCode::RateLimited,
                    "(e) retry_after_ms goes with rate_limited only: {:?}",
                    msg
                );
                if step.sender == Some(to) {
                    step.sender_errors.push(*code);
                }
                self.counts.errors += 1;
                if *code == ErrorCode::RateLimited {
                    self.counts.rate_limited += 1;
                }
            }
        }
        Ok(())
    }

    /// A `matched`: the first of a pair is kept until its partner's arrives.
    fn matched(
        &mut self,
        now: Instant,
        to: ConnId,
        call: CallId,
        polite: bool,
        shared: &[String],
    ) -> Result<(), TestCaseError> {
        let Some(Phase::Searching { interests, .. }) = self.phase(to) else {
            return Err(TestCaseError::fail(format!(
                "(a) {to} matched in call {call} while {:?}",
                self.phase(to)
            )));
        };
        prop_assert!(
            shared.iter().all(|t| interests.contains(t)),
            "{to} told it shares {shared:?} but searched with {interests:?}"
        );
        let Some((first, first_call, first_polite, first_shared)) = self.half.take() else {
            prop_assert!(
                !self.calls_seen.contains(&call),
                "(a) call id {call} used for a second pair"
            );
            self.half = Some((to, call, polite, shared.to_vec()));
            return Ok(());
        };
        prop_assert_eq!(
            first_call,
            call,
            "(a) the two halves of a pair differ in call id"
        );
        prop_assert_ne!(first, to, "(a) {} matched with itself", to);
        prop_assert_ne!(first_polite, polite, "(a) exactly one of a pair is polite");
        prop_assert_eq!(
            &first_shared[..],
            shared,
            "(a) the two differ on shared interests"
        );
        if let Some(&until) = self.cooldowns.get(&pair_key(first, to)) {
            prop_assert!(
                now >= until,
                "(c) {first} and {to} skipped each other but met again {:?} before the cooldown ended",
                until - now
            );
            self.counts.rematches_after_cooldown += 1;
        }
        self.calls_seen.insert(call);
        for (me, partner) in [(first, to), (to, first)] {
            let peer = self.peer(me)?;
            peer.phase = Phase::InCall { call, partner };
            peer.last_call = Some(call);
        }
        self.counts.matches += 1;
        if !shared.is_empty() {
            self.counts.shared_interest_matches += 1;
        }
        Ok(())
    }

    /// Whether a searcher has stopped waiting for a shared interest.
    fn is_open(&self, since: Instant, interests: &[String], now: Instant) -> bool {
        interests.is_empty() || now >= since + self.interest_wait
    }

    /// Between steps, once every due timer has run: nobody is half-matched,
    /// no two searchers who could be paired are both still waiting, and the
    /// board's counts agree with the model's.
    fn check_settled(&self, now: Instant, board: &Switchboard) -> Result<(), TestCaseError> {
        prop_assert!(
            self.half.is_none(),
            "(a) a matched was sent to one side only"
        );
        prop_assert!(
            self.requeued.is_empty(),
            "told their call ended but not put back in the queue: {:?}",
            self.requeued
        );
        let searching: Vec<(ConnId, Instant, &[String])> = self
            .peers
            .iter()
            .filter(|(_, p)| p.open())
            .filter_map(|(&id, p)| match &p.phase {
                Phase::Searching { since, interests } => Some((id, *since, &interests[..])),
                _ => None,
            })
            .collect();
        for (i, &(a, since_a, tags_a)) in searching.iter().enumerate() {
            for &(b, since_b, tags_b) in &searching[i + 1..] {
                if self
                    .cooldowns
                    .get(&pair_key(a, b))
                    .is_some_and(|&until| now < until)
                {
                    continue;
                }
                let share = tags_a.iter().any(|t| tags_b.contains(t));
                let both_open =
                    self.is_open(since_a, tags_a, now) && self.is_open(since_b, tags_b, now);
                prop_assert!(
                    !(share || both_open),
                    "{a} {tags_a:?} and {b} {tags_b:?} both still wait though they could be paired"
                );
            }
        }
        let stats = board.stats();
        let live = self.peers.values().filter(|p| !p.gone).count();
        let in_call = self
            .peers
            .values()
            .filter(|p| matches!(p.phase, Phase::InCall { .. }))
            .count();
        prop_assert_eq!(stats.connections, live, "connections");
        prop_assert_eq!(stats.waiting, searching.len(), "people waiting");
        prop_assert_eq!(stats.calls * 2, in_call, "people in calls");
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Operations and the world that runs them.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Frame {
    Hello(u32),
    Search(Vec<&'static str>),
    Skip,
    End,
    /// A signal for the slot's current (or latest) call.
    SignalCurrent {
        candidate: bool,
    },
    /// A signal for an arbitrary call id.
    SignalTo(CallId),
    Garbage(String),
    /// A valid `end` padded past `max_message_bytes`.
    Oversized,
}

#[derive(Debug, Clone)]
enum Op {
    /// A fresh connection in the slot (replacing any), silent so far.
    Connect(usize),
    /// A fresh connection in the slot that says `hello` at once.
    Join(usize),
    Disconnect(usize),
    /// The shell closes it (idle timeout).
    Close(usize),
    Text(usize, Frame),
    Binary(usize),
    Advance(Duration),
}

fn garbage() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,24}",
        r#"\{"type":"[a-z]{0,7}"(,"[a-z]{1,9}":(-?[0-9]{1,3}|"[a-z]{0,4}"|null|\[\]|\{\}))?\}"#,
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => Just(Frame::Hello(protocol::PROTOCOL_VERSION)),
        1 => Just(Frame::Hello(2)),
        8 => Just(Frame::Search(Vec::new())),
        4 => prop::collection::vec(select(TAGS), 1..=3).prop_map(Frame::Search),
        5 => Just(Frame::Skip),
        2 => Just(Frame::End),
        5 => any::<bool>().prop_map(|candidate| Frame::SignalCurrent { candidate }),
        1 => (0u64..16).prop_map(Frame::SignalTo),
        1 => garbage().prop_map(Frame::Garbage),
        1 => Just(Frame::Oversized),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        1 => slot.clone().prop_map(Op::Connect),
        6 => slot.clone().prop_map(Op::Join),
        1 => slot.clone().prop_map(Op::Disconnect),
        1 => slot.clone().prop_map(Op::Close),
        30 => (slot.clone(), frame()).prop_map(|(s, f)| Op::Text(s, f)),
        1 => slot.prop_map(Op::Binary),
        // Whole quarter seconds, so steps often land exactly on a deadline.
        2 => (0u64..=4).prop_map(|q| Op::Advance(Duration::from_millis(250 * q))),
        1 => (0u64..=40).prop_map(|q| Op::Advance(Duration::from_millis(250 * q))),
    ]
}

/// Up to about 200 operations; now and then a burst of chatter (candidates,
/// searches, ends) from one slot, to reach the rate limit.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let chatter = prop_oneof![
        Just(Frame::SignalCurrent { candidate: true }),
        Just(Frame::Search(Vec::new())),
        Just(Frame::End),
    ];
    let burst = (0..SLOTS, chatter, 2usize..=16).prop_map(|(s, f, n)| vec![Op::Text(s, f); n]);
    let step = prop_oneof![
        40 => op().prop_map(|o| vec![o]),
        1 => burst,
    ];
    prop::collection::vec(step, 1..=180).prop_map(|steps| steps.concat())
}

/// A switchboard on a virtual clock, the shell's connection slots and the model.
struct World {
    board: Switchboard,
    max_message_bytes: usize,
    now: Instant,
    model: Model,
    /// Each slot's current or latest connection.
    slots: [Option<ConnId>; SLOTS],
    next_id: u64,
}

impl World {
    fn new(config: Config) -> World {
        World {
            model: Model::new(&config),
            max_message_bytes: config.max_message_bytes,
            board: Switchboard::new(config),
            now: Instant::now(),
            slots: [None; SLOTS],
            next_id: 1,
        }
    }

    /// Runs a sequence, checking after every step; returns what it exercised.
    fn run(ops: &[Op]) -> Result<Counts, TestCaseError> {
        let mut w = World::new(session_config());
        for op in ops {
            w.apply(op)?;
            w.model.check_settled(w.now, &w.board)?;
        }
        Ok(w.model.counts)
    }

    fn is_open(&self, id: ConnId) -> bool {
        self.model.peers.get(&id).is_some_and(Peer::open)
    }

    /// Feeds every pending output to the model and checks the invariants.
    fn drain(&mut self, step: &mut Step) -> Result<(), TestCaseError> {
        while let Some(out) = self.board.poll_output() {
            self.model.observe(self.now, &out, step)?;
        }
        if let Err(e) = self.board.check_invariants() {
            return Err(TestCaseError::fail(format!("invariant broken: {e}")));
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Connect(slot) => {
                self.connect(*slot)?;
            }
            Op::Join(slot) => {
                let id = self.connect(*slot)?;
                self.text(id, &hello(protocol::PROTOCOL_VERSION))?;
            }
            Op::Disconnect(slot) => self.disconnect(*slot)?,
            Op::Close(slot) => {
                let Some(id) = self.slots[*slot] else {
                    return Ok(());
                };
                let was_open = self.is_open(id);
                self.board.close(self.now, id, CloseReason::IdleTimeout);
                let mut step = Step::default();
                self.drain(&mut step)?;
                if was_open {
                    prop_assert_eq!(step.closes, vec![(id, CloseReason::IdleTimeout)]);
                } else {
                    prop_assert_eq!(
                        step.outputs,
                        0,
                        "closing a closed connection said something"
                    );
                }
            }
            Op::Text(slot, frame) => {
                let Some(id) = self.slots[*slot] else {
                    return Ok(());
                };
                let text = self.render(id, frame);
                self.text(id, &text)?;
            }
            Op::Binary(slot) => {
                let Some(id) = self.slots[*slot] else {
                    return Ok(());
                };
                let was_open = self.is_open(id);
                let mut step = Step {
                    sender: Some(id),
                    ..Step::default()
                };
                self.board.handle_binary(self.now, id);
                self.drain(&mut step)?;
                if was_open {
                    prop_assert_eq!(step.sender_errors, vec![ErrorCode::BadMessage]);
                } else {
                    prop_assert_eq!(step.outputs, 0, "a closed connection's frame was answered");
                }
            }
            Op::Advance(d) => self.advance(*d)?,
        }
        Ok(())
    }

    fn render(&self, id: ConnId, frame: &Frame) -> String {
        match frame {
            Frame::Hello(v) => hello(*v),
            Frame::Search(tags) => json!({"type": "search", "interests": tags}).to_string(),
            Frame::Skip => r#"{"type":"skip"}"#.to_string(),
            Frame::End => r#"{"type":"end"}"#.to_string(),
            Frame::SignalCurrent { candidate } => {
                let call = match self.model.phase(id) {
                    Some(&Phase::InCall { call, .. }) => Some(call),
                    _ => self.model.peers.get(&id).and_then(|p| p.last_call),
                };
                signal_text(call.unwrap_or(1), *candidate)
            }
            Frame::SignalTo(call) => signal_text(*call, false),
            Frame::Garbage(s) => s.clone(),
            Frame::Oversized => format!(
                r#"{{"type":"end","pad":"{}"}}"#,
                "x".repeat(self.max_message_bytes)
            ),
        }
    }

    fn text(&mut self, id: ConnId, text: &str) -> Result<(), TestCaseError> {
        let was_open = self.is_open(id);
        let signal = match protocol::decode(text) {
            Ok(ClientMsg::Signal(s)) if text.len() <= self.max_message_bytes => Some(s),
            _ => None,
        };
        let relay_to = signal
            .as_ref()
            .and_then(|s| self.model.relay_target(id, s.call));
        let mut step = Step {
            sender: Some(id),
            signal,
            relay_to,
            ..Step::default()
        };
        self.board.handle_text(self.now, id, text);
        self.drain(&mut step)?;
        if !was_open {
            prop_assert_eq!(step.outputs, 0, "a closed connection's frame was answered");
            return Ok(());
        }
        prop_assert!(
            step.to_sender > 0 || step.relayed == 1,
            "a frame from {id} got no answer and was not relayed"
        );
        if relay_to.is_some() && step.sender_errors.is_empty() {
            prop_assert_eq!(
                step.relayed,
                1,
                "(b) a signal for the current call was dropped"
            );
        }
        Ok(())
    }

    /// Opens a fresh connection in `slot`, disconnecting the one there.
    fn connect(&mut self, slot: usize) -> Result<ConnId, TestCaseError> {
        self.disconnect(slot)?;
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.slots[slot] = Some(id);
        self.model.connect(id);
        self.board.connect(self.now, id, ConnInfo::default());
        let mut step = Step::default();
        self.drain(&mut step)?;
        prop_assert_eq!(step.outputs, 0, "connect said something");
        Ok(id)
    }

    fn disconnect(&mut self, slot: usize) -> Result<(), TestCaseError> {
        let Some(id) = self.slots[slot] else {
            return Ok(());
        };
        let already_gone = self.model.peers[&id].gone;
        // Nothing may be sent to it from now on, not even in this step.
        self.model.peer(id)?.gone = true;
        self.board.disconnect(self.now, id);
        let mut step = Step::default();
        self.drain(&mut step)?;
        if already_gone {
            prop_assert_eq!(step.outputs, 0, "a second disconnect said something");
        }
        let peer = self.model.peer(id)?;
        prop_assert!(
            !matches!(peer.phase, Phase::InCall { .. }),
            "{id} disconnected but its partner was not told"
        );
        peer.phase = Phase::Idle;
        Ok(())
    }

    /// Moves the clock on, running `handle_timeout` at every due deadline.
    fn advance(&mut self, d: Duration) -> Result<(), TestCaseError> {
        let until = self.now + d;
        while let Some(at) = self.board.poll_timeout() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            self.board.handle_timeout(self.now);
            let mut step = Step::default();
            self.drain(&mut step)?;
            let next = self.board.poll_timeout();
            prop_assert!(
                next.is_none_or(|next| next > self.now),
                "poll_timeout still due right after handle_timeout"
            );
        }
        self.now = until;
        Ok(())
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// (a)-(e) and the invariants, over random sessions of six slots.
    #[test]
    fn random_sessions_keep_every_promise(ops in ops()) {
        World::run(&ops)?;
    }
}

/// The generated sessions do reach calls, skips, relays and cooldowns: run a
/// fixed-seed sample of them and count.
#[test]
fn random_sessions_reach_calls_skips_and_relays() {
    let mut runner = TestRunner::deterministic();
    let strategy = ops();
    let cases: u64 = 256;
    let mut total = Counts::default();
    let mut with = Counts::default();
    for _ in 0..cases {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let c = World::run(&ops).unwrap_or_else(|e| panic!("{e}\n{ops:?}"));
        for (sum, seen, n) in [
            (&mut total.matches, &mut with.matches, c.matches),
            (&mut total.skips, &mut with.skips, c.skips),
            (&mut total.relays, &mut with.relays, c.relays),
            (
                &mut total.rematches_after_cooldown,
                &mut with.rematches_after_cooldown,
                c.rematches_after_cooldown,
            ),
            (
                &mut total.shared_interest_matches,
                &mut with.shared_interest_matches,
                c.shared_interest_matches,
            ),
            (&mut total.errors, &mut with.errors, c.errors),
            (
                &mut total.rate_limited,
                &mut with.rate_limited,
                c.rate_limited,
            ),
            (&mut total.closes, &mut with.closes, c.closes),
        ] {
            *sum += n;
            *seen += u64::from(n > 0);
        }
    }
    println!("sequences (of {cases}) that saw each: {with:?}\ntotals: {total:?}");
    let percent = |n: u64| n * 100 / cases;
    assert!(percent(with.matches) >= 65, "{with:?}");
    assert!(percent(with.skips) >= 35, "{with:?}");
    assert!(percent(with.relays) >= 35, "{with:?}");
    assert!(percent(with.rate_limited) >= 10, "{with:?}");
    assert!(with.rematches_after_cooldown >= 8, "{with:?}");
    assert!(with.shared_interest_matches >= 10, "{with:?}");
    assert!(percent(with.closes) >= 20, "{with:?}");
}

// ---------------------------------------------------------------------------
// Decoder robustness.
// ---------------------------------------------------------------------------

const KNOWN_TYPES: &[&str] = &["hello", "search", "signal", "skip", "end"];

const KEYS: &[&str] = &[
    "type",
    "version",
    "interests",
    "call",
    "description",
    "candidate",
    "sdp",
    "sdpMid",
    "sdpMLineIndex",
    "usernameFragment",
    "junk",
    "",
];

const WORDS: &[&str] = &[
    "hello", "search", "signal", "skip", "end", "offer", "answer", "pranswer", "rollback",
    "welcome", "matched", "Skip", "hello ", "", "v=0", "chess", "<b>",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0u64..4).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        select(WORDS).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// Arbitrary JSON trees, with keys and strings that mean something here.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(select(KEYS).prop_map(String::from), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn description_value() -> impl Strategy<Value = Value> {
    (
        select(&["offer", "answer", "pranswer", "rollback", "bogus"][..]),
        prop::option::of(prop_oneof![Just(json!("v=0")), json_leaf()]),
    )
        .prop_map(|(kind, sdp)| {
            let mut d = json!({ "type": kind });
            if let Some(sdp) = sdp {
                d["sdp"] = sdp;
            }
            d
        })
}

fn candidate_value() -> impl Strategy<Value = Value> {
    let field = || prop::option::of(prop_oneof![Just(json!("0")), Just(json!(0)), json_leaf()]);
    (field(), field(), field(), field()).prop_map(|(c, mid, index, ufrag)| {
        let mut m = Map::new();
        for (k, v) in [
            ("candidate", c),
            ("sdpMid", mid),
            ("sdpMLineIndex", index),
            ("usernameFragment", ufrag),
        ] {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        Value::Object(m)
    })
}

/// An object shaped like a client message: a real or junk `type`, and fields
/// that are plausible, wrong or junk.
fn message_value() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        8 => select(KNOWN_TYPES).prop_map(Value::from),
        2 => select(WORDS).prop_map(Value::from),
        1 => json_value(),
    ];
    let field = prop_oneof![
        3 => json_value(),
        2 => (0u64..4).prop_map(Value::from),
        2 => prop::collection::vec(select(TAGS).prop_map(Value::from), 0..7).prop_map(Value::Array),
        2 => description_value(),
        2 => candidate_value(),
    ];
    let fields = prop::collection::btree_map(select(KEYS).prop_map(String::from), field, 0..5);
    (kind, fields).prop_map(|(kind, fields)| {
        let mut m: Map<String, Value> = fields.into_iter().collect();
        m.insert("type".into(), kind);
        Value::Object(m)
    })
}

fn junk_fields() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("x[a-z]{0,3}", json_leaf(), 0..3)
        .prop_map(|m| m.into_iter().collect())
}

fn sdp_type() -> impl Strategy<Value = SdpType> {
    select(
        &[
            SdpType::Offer,
            SdpType::Answer,
            SdpType::Pranswer,
            SdpType::Rollback,
        ][..],
    )
}

fn signal_payload() -> impl Strategy<Value = SignalPayload> {
    prop_oneof![
        (sdp_type(), any::<String>())
            .prop_map(|(kind, sdp)| SignalPayload::Description(SessionDescription { kind, sdp })),
        (
            any::<String>(),
            any::<Option<String>>(),
            any::<Option<u16>>(),
            any::<Option<String>>()
        )
            .prop_map(
                |(candidate, sdp_mid, sdp_m_line_index, username_fragment)| {
                    SignalPayload::Candidate(IceCandidate {
                        candidate,
                        sdp_mid,
                        sdp_m_line_index,
                        username_fragment,
                    })
                }
            ),
    ]
}

/// A well-formed client message as JSON (with unknown extra fields), and
/// what it must decode to.
fn valid_message() -> impl Strategy<Value = (Value, ClientMsg)> {
    let msg = prop_oneof![
        any::<u32>().prop_map(|version| ClientMsg::Hello { version }),
        prop::collection::vec(any::<String>(), 0..7)
            .prop_map(|interests| ClientMsg::Search { interests }),
        (any::<u64>(), signal_payload())
            .prop_map(|(call, payload)| ClientMsg::Signal(Signal { call, payload })),
        Just(ClientMsg::Skip),
        Just(ClientMsg::End),
    ];
    (msg, junk_fields()).prop_map(|(msg, mut m)| {
        let fields = match &msg {
            ClientMsg::Hello { version } => json!({"type": "hello", "version": version}),
            ClientMsg::Search { interests } if interests.is_empty() => json!({"type": "search"}),
            ClientMsg::Search { interests } => json!({"type": "search", "interests": interests}),
            ClientMsg::Signal(s) => serde_json::to_value(ServerMsg::Signal(s.clone())).unwrap(),
            ClientMsg::Skip => json!({"type": "skip"}),
            ClientMsg::End => json!({"type": "end"}),
        };
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        m.extend(fields);
        (Value::Object(m), msg)
    })
}

/// Frames of every kind: random text, JSON trees, message-shaped objects and
/// valid messages.
fn any_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => garbage(),
        1 => json_value().prop_map(|v| v.to_string()),
        3 => message_value().prop_map(|v| v.to_string()),
        1 => valid_message().prop_map(|(v, _)| v.to_string()),
    ]
}

/// What the protocol promises about `decode(text)` whatever the frame: the
/// error class matches the frame's shape, and a decoded message says what
/// the frame says.
fn check_decode(text: &str) -> Result<Result<ClientMsg, DecodeError>, TestCaseError> {
    let decoded = protocol::decode(text);
    if decoded == Err(DecodeError::BadJson) {
        return Ok(decoded);
    }
    let value: Option<Value> = serde_json::from_str(text).ok();
    let kind = value
        .as_ref()
        .and_then(Value::as_object)
        .and_then(|m| m.get("type"))
        .and_then(Value::as_str);
    let Some(kind) = kind else {
        return Err(TestCaseError::fail(format!(
            "not a JSON object with a string type, yet decoded as {decoded:?} (not bad_json)"
        )));
    };
    let v = value.as_ref().unwrap();
    match &decoded {
        Err(DecodeError::UnknownType) => {
            prop_assert!(!KNOWN_TYPES.contains(&kind), "{kind:?} said to be unknown")
        }
        Err(_) => prop_assert!(
            ["hello", "search", "signal"].contains(&kind),
            "bad_message for type {kind:?}"
        ),
        Ok(ClientMsg::Hello { version }) => {
            prop_assert_eq!(kind, "hello");
            prop_assert_eq!(v["version"].as_u64(), Some(u64::from(*version)));
        }
        Ok(ClientMsg::Search { interests }) => {
            prop_assert_eq!(kind, "search");
            match v.get("interests") {
                None => prop_assert!(interests.is_empty()),
                Some(i) => prop_assert_eq!(i, &json!(interests)),
            }
        }
        Ok(ClientMsg::Signal(s)) => {
            prop_assert_eq!(kind, "signal");
            prop_assert_eq!(v["call"].as_u64(), Some(s.call));
            let given = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
            prop_assert!(
                given("description") != given("candidate"),
                "a signal needs exactly one of description and candidate"
            );
        }
        Ok(ClientMsg::Skip) => prop_assert_eq!(kind, "skip"),
        Ok(ClientMsg::End) => prop_assert_eq!(kind, "end"),
    }
    Ok(decoded)
}

/// Where the connection sending a frame stands.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    /// Connected, no hello yet.
    Ungreeted,
    /// Greeted and idle, alone on the board.
    Idle,
    /// Greeted and in call 1 with `PARTNER`, both untagged.
    InCall,
}

const SENDER: ConnId = ConnId(1);
const PARTNER: ConnId = ConnId(2);

fn board_in(scenario: Scenario) -> Switchboard {
    let now = Instant::now();
    let mut board = Switchboard::new(Config::default());
    board.connect(now, SENDER, ConnInfo::default());
    if !matches!(scenario, Scenario::Ungreeted) {
        board.handle_text(now, SENDER, &hello(1));
    }
    if matches!(scenario, Scenario::InCall) {
        board.connect(now, PARTNER, ConnInfo::default());
        board.handle_text(now, PARTNER, &hello(1));
        board.handle_text(now, SENDER, r#"{"type":"search"}"#);
        board.handle_text(now, PARTNER, r#"{"type":"search"}"#);
    }
    let mut last_call = None;
    while let Some(out) = board.poll_output() {
        if let Output::Send(_, ServerMsg::Matched { call, .. }) = out {
            last_call = Some(call);
        }
    }
    if matches!(scenario, Scenario::InCall) {
        assert_eq!(last_call, Some(1), "the setup made call 1");
    }
    board
}

fn send(to: ConnId, msg: ServerMsg) -> Output {
    Output::Send(to, msg)
}

fn error(code: ErrorCode) -> Output {
    send(SENDER, ServerMsg::error(code))
}

/// Exactly what the switchboard must answer to `decoded` in `scenario`.
/// `None` stands for a `welcome`, checked by shape.
fn expected_outputs(
    scenario: Scenario,
    decoded: Result<ClientMsg, DecodeError>,
) -> Option<Vec<Output>> {
    let config = Config::default();
    let msg = match decoded {
        Err(e) => return Some(vec![error(e.into())]),
        Ok(msg) => msg,
    };
    let searching = |interests| send(PARTNER, ServerMsg::Searching { interests });
    Some(match (scenario, msg) {
        (Scenario::Ungreeted, ClientMsg::Hello { version: 1 }) => return None,
        (Scenario::Ungreeted, ClientMsg::Hello { .. }) => {
            vec![error(ErrorCode::UnsupportedVersion)]
        }
        (Scenario::Ungreeted, _) => vec![error(ErrorCode::HelloRequired)],
        (_, ClientMsg::Hello { .. }) => vec![error(ErrorCode::AlreadyHello)],
        (Scenario::Idle, ClientMsg::Search { interests }) => {
            match protocol::normalize_interests(
                &interests,
                config.max_interests,
                config.max_interest_chars,
            ) {
                Ok(interests) => vec![send(SENDER, ServerMsg::Searching { interests })],
                Err(code) => vec![error(code)],
            }
        }
        (Scenario::Idle, ClientMsg::Signal(_) | ClientMsg::Skip) => {
            vec![error(ErrorCode::NotInCall)]
        }
        (Scenario::Idle, ClientMsg::End) => vec![send(SENDER, ServerMsg::Idle)],
        (_, ClientMsg::Search { .. }) => vec![error(ErrorCode::AlreadyInCall)],
        (_, ClientMsg::Signal(s)) if s.call == 1 => vec![send(PARTNER, ServerMsg::Signal(s))],
        (_, ClientMsg::Signal(_)) => vec![error(ErrorCode::WrongCall)],
        (_, ClientMsg::Skip) => vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerSkipped,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Searching { interests: vec![] }),
        ],
        (_, ClientMsg::End) => vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerEnded,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Idle),
        ],
    })
}

/// Feeds one frame to a fresh board in each scenario and compares the answer.
fn check_switchboard_answers(text: &str) -> Result<(), TestCaseError> {
    let decoded = protocol::decode(text);
    for scenario in [Scenario::Ungreeted, Scenario::Idle, Scenario::InCall] {
        let mut board = board_in(scenario);
        board.handle_text(Instant::now(), SENDER, text);
        let outs: Vec<Output> = std::iter::from_fn(|| board.poll_output()).collect();
        match expected_outputs(scenario, decoded.clone()) {
            None => prop_assert!(
                matches!(&outs[..], [Output::Send(SENDER, ServerMsg::Welcome { .. })]),
                "{scenario:?}: hello answered with {outs:?}"
            ),
            Some(expected) => prop_assert_eq!(
                &outs,
                &expected,
                "{:?}: frame decoded as {:?}",
                scenario,
                decoded
            ),
        }
        if let Err(e) = board.check_invariants() {
            return Err(TestCaseError::fail(format!("{scenario:?}: {e}")));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn decode_classifies_arbitrary_text_by_its_shape(text in garbage()) {
        let _ = check_decode(&text)?;
    }

    #[test]
    fn decode_classifies_arbitrary_json_by_its_shape(v in json_value()) {
        let _ = check_decode(&v.to_string())?;
    }

    #[test]
    fn decode_classifies_message_shaped_json_by_its_shape(v in message_value()) {
        let _ = check_decode(&v.to_string())?;
    }

    #[test]
    fn decode_accepts_every_well_formed_message((v, msg) in valid_message()) {
        prop_assert_eq!(check_decode(&v.to_string())?, Ok(msg));
    }

    #[test]
    fn handle_text_answers_every_frame_as_the_protocol_says(text in any_frame()) {
        check_switchboard_answers(&text)?;
    }
}

// ---------------------------------------------------------------------------
// First come, first served.
// ---------------------------------------------------------------------------

/// Greets `n` clients (ids 1..=n) on a default board.
fn greeted_board(n: u64, now: Instant) -> Switchboard {
    let mut board = Switchboard::new(Config::default());
    for i in 1..=n {
        board.connect(now, ConnId(i), ConnInfo::default());
        board.handle_text(now, ConnId(i), &hello(1));
    }
    while board.poll_output().is_some() {}
    board
}

/// The pairs made, as (polite, impolite) = (the one who waited, the newcomer).
fn drain_pairs(board: &mut Switchboard) -> Vec<(ConnId, ConnId)> {
    let mut pairs = Vec::new();
    let mut half: Option<(ConnId, CallId, bool)> = None;
    while let Some(out) = board.poll_output() {
        if let Output::Send(to, ServerMsg::Matched { call, polite, .. }) = out {
            match half.take() {
                None => half = Some((to, call, polite)),
                Some((first, c, first_polite)) => {
                    assert_eq!(c, call);
                    assert_ne!(first_polite, polite);
                    pairs.push(if first_polite {
                        (first, to)
                    } else {
                        (to, first)
                    });
                }
            }
        }
    }
    assert!(half.is_none());
    pairs
}

#[derive(Debug, Clone)]
enum QueueOp {
    /// Search without interests, if idle.
    Search(u64),
    End(u64),
    Advance(Duration),
}

/// The reference queue: one FIFO of waiting clients, and who is with whom.
#[derive(Default)]
struct Fifo {
    waiting: VecDeque<u64>,
    partner: HashMap<u64, u64>,
}

impl Fifo {
    fn idle(&self, i: u64) -> bool {
        !self.waiting.contains(&i) && !self.partner.contains_key(&i)
    }

    /// `i` searches: paired with the oldest waiting client, or waits.
    fn search(&mut self, i: u64, pairs: &mut Vec<(ConnId, ConnId)>) {
        match self.waiting.pop_front() {
            Some(w) => {
                self.partner.insert(w, i);
                self.partner.insert(i, w);
                pairs.push((ConnId(w), ConnId(i)));
            }
            None => self.waiting.push_back(i),
        }
    }

    /// `i` ends: leaves the queue, or its partner searches again.
    fn end(&mut self, i: u64, pairs: &mut Vec<(ConnId, ConnId)>) {
        self.waiting.retain(|&w| w != i);
        if let Some(p) = self.partner.remove(&i) {
            self.partner.remove(&p);
            self.search(p, pairs);
        }
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// N untagged clients searching in turn are paired (1st, 2nd), (3rd, 4th), ...
    /// with the one who waited polite.
    #[test]
    fn searchers_are_paired_in_arrival_order(
        order in (2u64..=30).prop_flat_map(|n| Just((1..=n).collect::<Vec<u64>>()).prop_shuffle()),
        gaps in prop::collection::vec(0u64..3000, 30),
    ) {
        let mut now = Instant::now();
        let mut board = greeted_board(order.len() as u64, now);
        let mut pairs = Vec::new();
        for (&i, &gap) in order.iter().zip(&gaps) {
            now += Duration::from_millis(gap);
            board.handle_timeout(now);
            board.handle_text(now, ConnId(i), r#"{"type":"search"}"#);
            pairs.extend(drain_pairs(&mut board));
        }
        let expected: Vec<(ConnId, ConnId)> = order
            .chunks_exact(2)
            .map(|p| (ConnId(p[0]), ConnId(p[1])))
            .collect();
        prop_assert_eq!(pairs, expected);
        prop_assert_eq!(board.stats().waiting, order.len() % 2);
    }

    /// With searches and ends in any order, every pair is the oldest waiting
    /// client and the newcomer, as in a plain FIFO.
    #[test]
    fn the_queue_is_first_come_first_served_across_ends(
        ops in prop::collection::vec(
            prop_oneof![
                3 => (1u64..=8).prop_map(QueueOp::Search),
                2 => (1u64..=8).prop_map(QueueOp::End),
                1 => (0u64..3000).prop_map(|ms| QueueOp::Advance(Duration::from_millis(ms))),
            ],
            1..100,
        )
    ) {
        let mut now = Instant::now();
        let mut board = greeted_board(8, now);
        let mut fifo = Fifo::default();
        for op in &ops {
            let mut expected = Vec::new();
            match *op {
                QueueOp::Search(i) if fifo.idle(i) => {
                    board.handle_text(now, ConnId(i), r#"{"type":"search"}"#);
                    fifo.search(i, &mut expected);
                }
                QueueOp::Search(_) => {}
                QueueOp::End(i) => {
                    board.handle_text(now, ConnId(i), r#"{"type":"end"}"#);
                    fifo.end(i, &mut expected);
                }
                QueueOp::Advance(d) => {
                    now += d;
                    board.handle_timeout(now);
                }
            }
            prop_assert_eq!(drain_pairs(&mut board), expected, "after {:?}", op);
            prop_assert_eq!(board.stats().waiting, fifo.waiting.len());
        }
    }
}
