//! Property tests of backplane mode: two switchboards (nodes 1 and 2) share
//! a fake store that decides with the store's own rules, the Rust twins of
//! the Redis scripts (`earshot_core::backplane::{admission, queue}`, the
//! allowances, `moderation::Strikes`): one queue lane, clients' bans,
//! allowances and avoid sets, pooled strikes. Requests run in order per
//! node and pub/sub is delivered in order per node, while the schedule
//! interleaves clients, request processing and deliveries at random.
//!
//! - `two_nodes_keep_their_promises`: after every step both boards'
//!   invariants hold and nobody waits in the shared queue twice; once
//!   everything pending is delivered, every call is known to both sides
//!   with the same id and recorded in the store with its two sides (and
//!   no call that is over is), nobody is in a call with a kept-apart
//!   partner, and every publish went to another node. A dead node ends
//!   every call with it.
//! - `strikes_from_both_nodes_add_up_to_a_ban`: reports made on two nodes
//!   are pooled in the store and ban the reported client;
//!   `fresh_reporters_on_both_nodes_ban_nobody`: the store takes the
//!   weight each reporter's node judged; and
//!   `reporters_of_one_network_on_both_nodes_count_once`: it groups
//!   reporters by network, with the core's strike rule.
//! - `a_clients_connects_on_both_nodes_share_one_allowance`,
//!   `a_clients_searches_on_both_nodes_share_one_allowance` and
//!   `a_reporters_strikes_on_both_nodes_share_one_allowance`: the store
//!   charges one client's connects, searches and reports on any node to
//!   one allowance each.
//! - `remote_messages_round_trip`, `room_messages_round_trip`,
//!   `backplane_decoders_never_panic` and
//!   `backplane_decoders_refuse_mangled_replies`: what nodes publish decodes
//!   to itself; the Redis scripts' replies and anything else (arbitrary
//!   text, mangled JSON) decode or are a typed error, never a panic.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use earshot_core::backplane::admission::{
    Admission, Client, MAX_AVOIDED, avoid_client, avoid_conn, decode_admission,
};
use earshot_core::backplane::allowance::{self, Bucket};
use earshot_core::backplane::nodes::{self, Liveness};
use earshot_core::backplane::queue::{Joiner, Lane};
use earshot_core::backplane::{
    self, Event, NodeId, PairReply, Remote, Request, decode_pair_reply, decode_remote,
};
use earshot_core::moderation::{Added, ModConfig, Strike, Strikes};
use earshot_core::pow::{PowConfig, PowMode};
use earshot_core::protocol::{EndReason, ErrorCode, ServerMsg};
use earshot_core::{ClientKey, Config, ConnId, ConnInfo, Country, Output, Switchboard};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::json;

const NODES: [NodeId; 2] = [1, 2];
const PER_NODE: u64 = 3;

fn config() -> Config {
    Config {
        interest_wait: Duration::from_secs(2),
        rematch_cooldown: Duration::from_secs(3),
        pow: PowConfig {
            mode: PowMode::Off,
            ..PowConfig::default()
        },
        ..Config::default()
    }
}

/// The shared store: its state, changed only by the store's rules.
#[derive(Default)]
struct Store {
    /// The stranger queue (one lane, as on a single Redis), and the entry
    /// each waiter is queued under (as its node keeps it).
    lane: Lane,
    entries: HashMap<ConnId, String>,
    /// Each client's ban, search allowance and avoid set.
    clients: HashMap<ClientKey, Client>,
    /// Pooled strikes per reported client, under the core's strike rule
    /// (the strike script's twin).
    strikes: HashMap<ClientKey, Strikes>,
    /// Recorded calls and their two sides.
    calls: HashMap<u64, (ConnId, ConnId)>,
    /// Each client's other allowances, by kind ("report", "connect").
    allowances: HashMap<(&'static str, ClientKey), Bucket>,
    /// Every node is alive here.
    live: Liveness,
}

fn ordered<T: Ord>(a: T, b: T) -> (T, T) {
    if a < b { (a, b) } else { (b, a) }
}

/// The store's clock: milliseconds since the epoch, as nodes pass it.
fn ms(t0: Instant, now: Instant) -> u64 {
    1_700_000_000_000 + now.saturating_duration_since(t0).as_millis() as u64
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl Store {
    /// Takes one from `key`'s allowance of this kind (a burst, then one per
    /// interval), or says how long until there is one.
    fn take(
        &mut self,
        now: u64,
        kind: &'static str,
        key: ClientKey,
        (burst, every): (u32, Duration),
    ) -> Result<(), Duration> {
        let bucket = self.allowances.get(&(kind, key)).copied();
        match allowance::take(bucket, burst, millis(every), now) {
            Ok((b, _)) => {
                self.allowances.insert((kind, key), b);
                Ok(())
            }
            Err(wait) => Err(Duration::from_millis(wait)),
        }
    }

    fn banned(&self, key: ClientKey, now: u64) -> bool {
        self.clients
            .get(&key)
            .and_then(|c| c.ban)
            .is_some_and(|until| until > now)
    }

    /// A queue join, as the server runs it: admission in the client's
    /// slot, then the pairing rule in the lane.
    fn enqueue(&mut self, now: u64, w: backplane::Waiter) -> Event {
        let client = self.clients.entry(w.key).or_default();
        let limit = w.limit.map(|(burst, every)| (burst, millis(every)));
        let avoid = match decode_admission(&client.admit(now, limit)) {
            Ok(Admission::Ok { avoid }) => avoid,
            Ok(Admission::Banned { ttl }) => return Event::Banned { conn: w.conn, ttl },
            Ok(Admission::Limited { retry }) => {
                return Event::Limited {
                    conn: w.conn,
                    retry,
                };
            }
            Err(e) => panic!("the admission rule's reply decodes: {e}"),
        };
        let joiner = Joiner {
            conn: w.conn,
            node: backplane::node_of(w.conn),
            token: nodes::new_token(1_600_000_000_000, u64::from(backplane::node_of(w.conn))),
            key: w.key,
            open_at: if w.open {
                now
            } else {
                now + millis(w.interest_wait)
            },
            country: w.country,
            tags: w.interests,
            expiry: now + 120_000,
            arrival: now,
            again: self.entries.get(&w.conn).cloned(),
        };
        let reply = self.lane.pair(&joiner, now, 64, &avoid, &self.live);
        match decode_pair_reply(&reply) {
            Ok(PairReply::Queued) => {
                self.entries.insert(w.conn, joiner.entry());
                Event::Queued { conn: w.conn }
            }
            Ok(PairReply::Matched(partner)) => {
                self.entries.remove(&w.conn);
                self.entries.remove(&partner.conn);
                Event::Paired {
                    conn: w.conn,
                    partner,
                }
            }
            other => panic!("the pairing rule answered {other:?}"),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Search(usize, bool),
    Skip(usize),
    End(usize),
    Signal(usize),
    Report(usize),
    Disconnect(usize),
    /// Run one pending request of node 0 or 1.
    Run(usize),
    /// Deliver one published message to node 0 or 1.
    Deliver(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..(2 * PER_NODE as usize);
    prop_oneof![
        2 => slot.clone().prop_map(Op::Connect),
        3 => (slot.clone(), any::<bool>()).prop_map(|(s, t)| Op::Search(s, t)),
        1 => slot.clone().prop_map(Op::Skip),
        1 => slot.clone().prop_map(Op::End),
        2 => slot.clone().prop_map(Op::Signal),
        1 => slot.clone().prop_map(Op::Report),
        1 => slot.prop_map(Op::Disconnect),
        5 => (0..2usize).prop_map(Op::Run),
        5 => (0..2usize).prop_map(Op::Deliver),
        1 => (1..3000u64).prop_map(Op::Wait),
    ]
}

struct Cluster {
    /// When the run began, and now.
    t0: Instant,
    now: Instant,
    boards: Vec<Switchboard>,
    store: Store,
    /// Requests waiting to run, per node, in order.
    requests: Vec<VecDeque<Request>>,
    /// Published messages waiting for delivery, per node, in order.
    inbox: Vec<VecDeque<Remote>>,
    live: HashSet<ConnId>,
    /// The last call each connection was told of.
    calls: HashMap<ConnId, u64>,
    /// Every error each connection was sent.
    errors: HashMap<ConnId, Vec<ErrorCode>>,
    /// Connections the boards closed.
    closed: HashSet<ConnId>,
}

fn id(slot: usize) -> ConnId {
    let node = NODES[slot / PER_NODE as usize];
    backplane::conn_id(node, slot as u64 % PER_NODE + 1)
}

fn index(node: NodeId) -> usize {
    NODES.iter().position(|&n| n == node).expect("a known node")
}

impl Cluster {
    fn new() -> Cluster {
        Cluster::with(config())
    }

    fn with(config: Config) -> Cluster {
        let boards = NODES
            .iter()
            .map(|&n| {
                let mut b = Switchboard::new(config.clone());
                b.set_node(Some(n));
                b
            })
            .collect();
        Cluster {
            t0: Instant::now(),
            now: Instant::now(),
            boards,
            store: Store::default(),
            requests: vec![VecDeque::new(), VecDeque::new()],
            inbox: vec![VecDeque::new(), VecDeque::new()],
            live: HashSet::new(),
            calls: HashMap::new(),
            errors: HashMap::new(),
            closed: HashSet::new(),
        }
    }

    /// Connects `slot` as the client with `key` (the same client on
    /// another node, say).
    fn connect_as(&mut self, slot: usize, key: ClientKey) {
        let info = ConnInfo {
            key,
            ..ConnInfo::default()
        };
        self.connect_info(slot, info);
    }

    fn connect_info(&mut self, slot: usize, info: ConnInfo) {
        let conn = id(slot);
        self.live.insert(conn);
        let now = self.now;
        self.board(conn).connect(now, conn, info);
        self.text(slot, json!({"type": "hello", "version": 1}));
        self.collect().unwrap();
    }

    fn board(&mut self, conn: ConnId) -> &mut Switchboard {
        &mut self.boards[index(backplane::node_of(conn))]
    }

    fn text(&mut self, slot: usize, v: serde_json::Value) {
        let (now, conn) = (self.now, id(slot));
        if self.live.contains(&conn) {
            self.board(conn).handle_text(now, conn, &v.to_string());
        }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let now = self.now;
        match op {
            Op::Connect(s) => {
                let conn = id(s);
                if self.live.insert(conn) {
                    let info = ConnInfo {
                        key: ClientKey([s as u8 + 1; 16]),
                        ..ConnInfo::default()
                    };
                    self.board(conn).connect(now, conn, info);
                    self.text(s, json!({"type": "hello", "version": 1}));
                }
            }
            Op::Search(s, tagged) => {
                let interests: Vec<&str> = if tagged { vec!["chess"] } else { vec![] };
                self.text(s, json!({"type": "search", "interests": interests}));
            }
            Op::Skip(s) => self.text(s, json!({"type": "skip"})),
            Op::End(s) => self.text(s, json!({"type": "end"})),
            Op::Report(s) => self.text(s, json!({"type": "report"})),
            Op::Signal(s) => {
                let call = self.calls.get(&id(s)).copied().unwrap_or(0);
                self.text(
                    s,
                    json!({"type": "signal", "call": call,
                        "description": {"type": "offer", "sdp": "v=0"}}),
                );
            }
            Op::Disconnect(s) => {
                let conn = id(s);
                if self.live.remove(&conn) {
                    self.board(conn).disconnect(now, conn);
                }
            }
            Op::Run(n) => {
                if let Some(r) = self.requests[n].pop_front() {
                    self.run(n, r);
                }
            }
            Op::Deliver(n) => {
                if let Some(m) = self.inbox[n].pop_front() {
                    self.boards[n].handle_backplane(now, Event::Remote(m));
                }
            }
            Op::Wait(ms) => {
                self.now += Duration::from_millis(ms);
                let now = self.now;
                for b in &mut self.boards {
                    b.handle_timeout(now);
                }
            }
        }
        self.collect()
    }

    fn run(&mut self, n: usize, r: Request) {
        let now = ms(self.t0, self.now);
        match r {
            Request::Enqueue(w) => {
                let e = self.store.enqueue(now, w);
                let at = self.now;
                self.boards[n].handle_backplane(at, e);
            }
            Request::Dequeue { conn } => {
                if let Some(entry) = self.store.entries.remove(&conn) {
                    self.store.lane.leave(&entry);
                }
            }
            Request::Publish(m) => {
                let to = index(backplane::node_of(m.to()));
                self.inbox[to].push_back(m);
            }
            Request::KeepApart {
                a,
                b,
                keys: (ka, kb),
                ttl,
            } => {
                let until = now + millis(ttl);
                let store = &mut self.store.clients;
                store
                    .entry(ka)
                    .or_default()
                    .avoid(now, &avoid_conn(b), until, MAX_AVOIDED);
                store
                    .entry(kb)
                    .or_default()
                    .avoid(now, &avoid_conn(a), until, MAX_AVOIDED);
            }
            Request::Block { a, b, ttl } => {
                let until = now + millis(ttl);
                let store = &mut self.store.clients;
                store
                    .entry(a)
                    .or_default()
                    .avoid(now, &avoid_client(&b), until, MAX_AVOIDED);
                store
                    .entry(b)
                    .or_default()
                    .avoid(now, &avoid_client(&a), until, MAX_AVOIDED);
            }
            Request::Ban { key, ttl } => {
                self.store.clients.entry(key).or_default().ban = Some(now + millis(ttl));
            }
            Request::Connect {
                conn,
                key,
                allowance,
            } if self.store.take(now, "connect", key, allowance).is_err() => {
                let at = self.now;
                self.boards[n].handle_backplane(at, Event::TooManyConnects { conn });
            }
            Request::CallStart { call, a, b } => {
                self.store.calls.insert(call, ordered(a, b));
            }
            Request::CallEnd { call } => {
                self.store.calls.remove(&call);
            }
            Request::Strike {
                key,
                reporter,
                weight,
                network,
                previous_network,
                room,
                age,
                rule,
            } => {
                // As the server does: the reporter's allowance in its own
                // slot, then the rule itself (the one Rust copy of it).
                if self
                    .store
                    .take(now, "report", reporter, rule.reports)
                    .is_err()
                {
                    return;
                }
                let at = self.now;
                let strike = Strike {
                    at,
                    reporter,
                    network,
                    previous_network,
                    arrived: at.checked_sub(age).unwrap_or(at),
                    room,
                    weight,
                };
                let strikes = self.store.strikes.entry(key).or_default();
                if strikes.add(strike, &rule) == Added::Ban {
                    let length = rule.ban_lengths.first().copied().unwrap_or_default();
                    self.store.clients.entry(key).or_default().ban = Some(now + millis(length));
                }
            }
            // A connect within its allowance needs no answer; the model here
            // has no rooms (their store rules: earshot-server's store_rules).
            Request::Connect { .. }
            | Request::RoomJoin { .. }
            | Request::RoomLeave { .. }
            | Request::RoomLock { .. }
            | Request::RoomRemove { .. } => {}
        }
    }

    fn collect(&mut self) -> Result<(), TestCaseError> {
        for (n, &node) in NODES.iter().enumerate() {
            while let Some(out) = self.boards[n].poll_output() {
                match out {
                    Output::Send(to, msg) => {
                        prop_assert_eq!(
                            backplane::node_of(to),
                            NODES[n],
                            "sent to another node's conn"
                        );
                        match msg {
                            ServerMsg::Matched { call, .. } => {
                                prop_assert!(call < 1 << 53);
                                self.calls.insert(to, call);
                            }
                            ServerMsg::Error { code, .. } => {
                                self.errors.entry(to).or_default().push(code);
                            }
                            _ => {}
                        }
                    }
                    Output::Close(conn, _) => {
                        self.closed.insert(conn);
                    }
                    Output::Backplane(r) => {
                        if let Request::Publish(m) = &r {
                            prop_assert_ne!(
                                backplane::node_of(m.to()),
                                NODES[n],
                                "published to itself"
                            );
                            let back = decode_remote(&m.encode());
                            prop_assert_eq!(back.as_ref(), Ok(m), "publish round trip");
                        }
                        self.requests[n].push_back(r);
                    }
                }
            }
            if let Err(e) = self.boards[n].check_invariants() {
                return Err(TestCaseError::fail(format!("node {node}: {e}")));
            }
        }
        let mut seen = HashSet::new();
        for c in self.store.lane.waiting() {
            prop_assert!(seen.insert(c), "{c} waits twice");
        }
        Ok(())
    }

    /// Runs and delivers everything pending (bounded: each step can cause
    /// only a few more).
    fn settle(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..10_000 {
            let busy = (0..2).find(|&n| !self.requests[n].is_empty() || !self.inbox[n].is_empty());
            let Some(n) = busy else { return Ok(()) };
            let op = if self.requests[n].is_empty() {
                Op::Deliver(n)
            } else {
                Op::Run(n)
            };
            self.apply(op)?;
        }
        Err(TestCaseError::fail("the backplane never settled"))
    }

    /// Both sides of every call agree on it, and the store records exactly
    /// the calls going on, with their sides.
    fn check_calls(&self) -> Result<(), TestCaseError> {
        let mut going = HashMap::new();
        for &conn in &self.live {
            let board = &self.boards[index(backplane::node_of(conn))];
            if let Some((call, partner)) = board.call_of(conn) {
                going.insert(call, ordered(conn, partner));
                let theirs = &self.boards[index(backplane::node_of(partner))];
                prop_assert_eq!(
                    theirs.call_of(partner),
                    Some((call, conn)),
                    "{}'s partner {} does not know of call {}",
                    conn,
                    partner,
                    call
                );
            }
        }
        prop_assert_eq!(&going, &self.store.calls, "the store's calls");
        Ok(())
    }
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn two_nodes_keep_their_promises(ops in prop::collection::vec(op(), 1..120)) {
        let mut c = Cluster::new();
        for op in ops {
            c.apply(op)?;
        }
        c.settle()?;
        c.check_calls()?;
        // Node 2 dies: node 1 ends every call with it and queues its users again.
        let now = c.now;
        c.boards[0].handle_backplane(now, Event::NodeDown(2));
        c.collect()?;
        for &conn in &c.live {
            if backplane::node_of(conn) == 1
                && let Some((_, partner)) = c.boards[0].call_of(conn)
            {
                prop_assert_eq!(backplane::node_of(partner), 1, "a call with a dead node survived");
            }
        }
        prop_assert!(c.boards[0].remote_nodes().is_empty());
    }

    #[test]
    fn remote_messages_round_trip(
        to in any::<u64>(),
        from in any::<u64>(),
        call in 0..(1u64 << 53),
        key in any::<[u8; 16]>(),
        shared in prop::collection::vec("[a-z]{1,12}", 0..5),
        kind in 0..4u8,
    ) {
        let (to, from) = (ConnId(to), ConnId(from));
        let msg = match kind {
            0 => Remote::Matched { to, from, call, key: ClientKey(key), shared, country: Country::new("fr") },
            1 => Remote::Ended { to, from, call, reason: EndReason::PartnerSkipped },
            2 => Remote::Requeue { to },
            _ => {
                let text = json!({"type": "signal", "call": call,
                    "candidate": {"candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host"}});
                let Ok(earshot_core::ClientMsg::Signal(signal)) = earshot_core::protocol::decode(&text.to_string()) else {
                    return Err(TestCaseError::fail("a valid signal"));
                };
                Remote::Signal { to, from, signal }
            }
        };
        prop_assert_eq!(decode_remote(&msg.encode()), Ok(msg));
    }

    #[test]
    fn backplane_decoders_never_panic(text in ".{0,200}") {
        let _ = decode_remote(&text);
        let _ = decode_pair_reply(&text);
        let _ = decode_room_reply(&text);
        let _ = decode_admission(&text);
        let _ = nodes::decode_beat(&text);
    }

    #[test]
    fn backplane_decoders_refuse_mangled_replies(
        parts in prop::collection::vec(prop::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"t\"", "\"r\"", "\"matched\"", "\"signal\"",
            "\"ended\"", "\"queued\"", "\"banned\"", "\"limited\"", "\"ms\"", "\"conn\"", "\"key\"",
            "\"to\"", "\"from\"", "\"call\"", "\"shared\"", "\"country\"", "\"reason\"",
            "\"partner_left\"", "\"requeue\"", "1", "-1", "18446744073709551616", "null",
            "\"00112233445566778899aabbccddeeff\"", "\"zz\"", "\"DE\"", "\"x\"", "1e400",
            "\"joined\"", "\"refused\"", "\"peer\"", "\"others\"", "\"locked\"", "true",
            "\"room_full\"", "\"rate_limited\"", "\"code\"", "\"room\"", "\"peer_joined\"",
            "\"room_signal\"", "\"room_lock\"", "\"12\"", "\"ok\"", "\"avoid\"",
            "\"c12,k00112233445566778899aabbccddeeff\"", "\"empty\"", "\"create\"",
        ]), 0..40),
    ) {
        let text: String = parts.concat();
        if let Ok(PairReply::Matched(p)) = decode_pair_reply(&text) {
            prop_assert!(p.shared.len() <= 32);
        }
        let _ = decode_remote(&text);
        if let Ok(Admission::Ok { avoid }) = decode_admission(&text) {
            prop_assert!(avoid.len() <= text.len());
        }
        if let Ok(RoomReply::Joined { others, .. }) = decode_room_reply(&text) {
            prop_assert!(others.len() <= 64);
            prop_assert!(others.windows(2).all(|w| w[0].peer <= w[1].peer));
        }
    }

    #[test]
    fn room_messages_round_trip(
        to in any::<u64>(),
        conn in any::<u64>(),
        peer in 1..1_000_000u32,
        from in 1..1_000_000u32,
        key in any::<[u8; 16]>(),
        locked in any::<bool>(),
        name in "[a-z]{1,20}",
        kind in 0..4u8,
    ) {
        let (to, room) = (ConnId(to), backplane::room_key(&name));
        let msg = match kind {
            0 => Remote::PeerJoined {
                to,
                room,
                member: backplane::Member { peer, conn: ConnId(conn), key: ClientKey(key) },
            },
            1 => Remote::PeerLeft { to, room, peer },
            2 => Remote::RoomLock { to, room, locked },
            _ => {
                let text = json!({"type": "signal", "to": peer, "auth": "abc_-9",
                    "description": {"type": "offer", "sdp": "v=0"}});
                let Ok(earshot_core::ClientMsg::RoomSignal(signal)) =
                    earshot_core::protocol::decode(&text.to_string())
                else {
                    return Err(TestCaseError::fail("a valid room signal"));
                };
                Remote::RoomSignal { to, room, from, signal }
            }
        };
        prop_assert_eq!(decode_remote(&msg.encode()), Ok(msg));
    }
}

use earshot_core::backplane::{RoomReply, decode_room_reply};

#[test]
fn a_signal_from_a_stranger_is_dropped() {
    let mut c = Cluster::new();
    c.apply(Op::Connect(0)).unwrap();
    let now = c.now;
    let text = json!({"type": "signal", "call": 1, "description": {"type": "offer", "sdp": "v=0"}});
    let Ok(earshot_core::ClientMsg::Signal(signal)) =
        earshot_core::protocol::decode(&text.to_string())
    else {
        panic!("a valid signal");
    };
    let stranger = backplane::conn_id(2, 9);
    c.boards[0].handle_backplane(
        now,
        Event::Remote(Remote::Signal {
            to: id(0),
            from: stranger,
            signal,
        }),
    );
    while let Some(out) = c.boards[0].poll_output() {
        assert!(
            !matches!(out, Output::Send(_, ServerMsg::Signal(_))),
            "{out:?}"
        );
    }
}

/// The random sessions do reach calls across nodes (and skips and reports
/// of them), or the property above would prove little.
#[test]
fn two_node_sessions_reach_cross_node_calls() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut across, mut ended) = (0, 0);
    for _ in 0..200 {
        let ops = prop::collection::vec(op(), 1..120)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut c = Cluster::new();
        let mut had_call = false;
        for op in ops {
            c.apply(op).unwrap();
            had_call |= !c.boards[0].remote_nodes().is_empty();
        }
        c.settle().unwrap();
        across += usize::from(had_call);
        ended += usize::from(had_call && c.boards[0].remote_nodes().is_empty());
    }
    assert!(
        across > 20,
        "only {across} of 200 sessions had a cross-node call"
    );
    assert!(ended > 5, "only {ended} of 200 sessions ended one");
}

/// Every report counts fully, whoever makes it (the reporter's history is
/// weighed in `moderation`'s own tests): what is left to test here is how
/// the store pools what the nodes judged.
fn unweighed() -> Config {
    Config {
        moderation: ModConfig {
            trusted_after: Duration::ZERO,
            held_calls_for_full: 0,
            arrived_together: Duration::ZERO,
            ..ModConfig::default()
        },
        ..config()
    }
}

/// The target (slot 0, on node 1) waits; each reporter meets it and
/// reports it. Whether it ends up banned.
fn report_target(c: &mut Cluster, reporters: &[usize]) -> bool {
    let target = 0;
    if !c.live.contains(&id(target)) {
        c.apply(Op::Connect(target)).unwrap();
    }
    c.apply(Op::Search(target, false)).unwrap();
    c.settle().unwrap();
    for &reporter in reporters {
        assert!(!c.store.banned(ClientKey([1; 16]), ms(c.t0, c.now)));
        c.apply(Op::Search(reporter, false)).unwrap();
        c.settle().unwrap();
        assert_eq!(
            c.boards[index(backplane::node_of(id(reporter)))]
                .call_of(id(reporter))
                .map(|(_, p)| p),
            Some(id(target)),
            "reporter {reporter} met the target"
        );
        c.apply(Op::Report(reporter)).unwrap();
        c.settle().unwrap();
    }
    c.store.banned(ClientKey([1; 16]), ms(c.t0, c.now))
}

/// Reports made on both nodes add up: three reporters, one on the target's
/// node and two on the other, ban the target everywhere.
#[test]
fn strikes_from_both_nodes_add_up_to_a_ban() {
    let mut c = Cluster::with(unweighed());
    for s in [1, 3, 4] {
        c.apply(Op::Connect(s)).unwrap();
    }
    assert!(report_target(&mut c, &[1, 3, 4]));
    // The target, queued again after the last report, is refused.
    assert!(
        c.errors
            .get(&id(0))
            .is_some_and(|e| e.contains(&ErrorCode::Banned)),
        "{:?}",
        c.errors.get(&id(0))
    );
}

/// The store takes the weight the reporter's node judged: three fresh
/// reporters weigh nothing, on any node.
#[test]
fn fresh_reporters_on_both_nodes_ban_nobody() {
    let mut c = Cluster::new();
    for s in [1, 3, 4] {
        c.apply(Op::Connect(s)).unwrap();
    }
    assert!(!report_target(&mut c, &[1, 3, 4]));
    assert!(c.store.strikes.values().all(Strikes::is_empty));
    assert!(
        !c.errors
            .get(&id(0))
            .is_some_and(|e| e.contains(&ErrorCode::Banned))
    );
}

/// The store groups reporters by their network key: three clients of one
/// network, on two nodes, are one reporter.
#[test]
fn reporters_of_one_network_on_both_nodes_count_once() {
    let mut c = Cluster::with(unweighed());
    for s in [1, 3, 4] {
        let info = ConnInfo {
            key: ClientKey([s as u8 + 1; 16]),
            network: Some(ClientKey([0x48; 16])),
            ..ConnInfo::default()
        };
        c.connect_info(s, info);
    }
    assert!(!report_target(&mut c, &[1, 3, 4]));
    let strikes = &c.store.strikes[&ClientKey([1; 16])];
    assert_eq!(strikes.len(), 3);
    assert_eq!(strikes.tally(Duration::ZERO), (1, 1000));
}

/// One client's connects on both nodes draw on one allowance: with room
/// for two, the third connection (the second on its node) is closed.
#[test]
fn a_clients_connects_on_both_nodes_share_one_allowance() {
    let mut config = config();
    config.per_client.connects = (2, Duration::from_secs(60));
    let mut c = Cluster::with(config);
    let key = ClientKey([1; 16]);
    for s in [0, 3, 1] {
        c.connect_as(s, key);
        c.settle().unwrap();
    }
    assert!(!c.closed.contains(&id(0)) && !c.closed.contains(&id(3)));
    assert!(c.closed.contains(&id(1)), "the third connect is refused");
}

/// One client's reports on both nodes draw on one allowance: with room for
/// two, the third strike (made on the node that counted only one) does not
/// count.
#[test]
fn a_reporters_strikes_on_both_nodes_share_one_allowance() {
    let mut config = unweighed();
    config.per_client.reports = (2, Duration::from_secs(600));
    let mut c = Cluster::with(config);
    // Slots 0 (node 1) and 3 (node 2) are one reporter.
    c.apply(Op::Connect(0)).unwrap();
    c.connect_as(3, ClientKey([1; 16]));
    for (reporter, target) in [(0, 1), (3, 4), (0, 2)] {
        c.apply(Op::Connect(target)).unwrap();
        c.apply(Op::Search(target, false)).unwrap();
        c.settle().unwrap();
        c.apply(Op::Search(reporter, false)).unwrap();
        c.settle().unwrap();
        c.apply(Op::Report(reporter)).unwrap();
        c.apply(Op::Disconnect(target)).unwrap();
        c.settle().unwrap();
    }
    let struck = |s: u8| {
        c.store
            .strikes
            .get(&ClientKey([s + 1; 16]))
            .is_some_and(|v| !v.is_empty())
    };
    assert!(struck(1) && struck(4), "the first two count");
    assert!(!struck(2), "the third is over the shared allowance");
    assert!(
        c.errors
            .values()
            .flatten()
            .all(|&e| e != ErrorCode::RateLimited),
        "no node alone saw too many reports"
    );
}

/// One client's searches on both nodes draw on one allowance: with room for
/// three, the fourth is refused wherever it is made.
#[test]
fn a_clients_searches_on_both_nodes_share_one_allowance() {
    let mut config = config();
    config.per_client.searches = (3, Duration::from_secs(60));
    let mut c = Cluster::with(config);
    // Slots 0 (node 1) and 3 (node 2) are one client: the same key.
    c.apply(Op::Connect(0)).unwrap();
    c.connect_as(3, ClientKey([1; 16]));
    for (n, s) in [0, 3, 0, 3].into_iter().enumerate() {
        c.apply(Op::Search(s, true)).unwrap();
        c.settle().unwrap();
        let limited = c
            .errors
            .get(&id(s))
            .is_some_and(|e| e.contains(&ErrorCode::RateLimited));
        assert_eq!(limited, n == 3, "search {n}");
        c.apply(Op::End(s)).unwrap();
        c.settle().unwrap();
    }
}
