//! `error.re`: an error that answers a client message names that message's
//! type, so a client knows which of its requests failed (PROTOCOL.md
//! `error`).
//!
//! - `each_request_type_is_named_by_its_errors`: for every client message
//!   type, an error answering it carries that type: the errors each request
//!   can meet, and for every type a frame dropped by the message rate limit.
//! - `errors_answering_no_message_have_no_re`: frames whose type cannot be
//!   read, errors sent to someone other than the sender (`removed`, `banned`
//!   on being put back in the queue), and the backplane's later refusal of a
//!   queue join.
//! - `a_joins_refusal_from_the_backplane_answers_room_join`: in backplane
//!   mode a room join is refused by the store, later, and still answers it.
//! - `every_error_answers_the_frame_being_handled` (property): over random
//!   frames from several connections, every error to the sender names the
//!   type of the frame it answers (or nothing when that type is unreadable),
//!   and every error to anyone else names nothing.
//! - `read_type_agrees_with_decode` (property): the type read from a frame is
//!   the type of the message it decodes to, and frames it cannot read are
//!   the ones `decode` calls `bad_json` or `unknown_type`.

use std::time::{Duration, Instant};

use earshot_core::backplane::{Event, Request};
use earshot_core::moderation::ModConfig;
use earshot_core::pow::{PowConfig, PowMode};
use earshot_core::protocol::{self, ClientMsgType, DecodeError, ErrorCode, ServerMsg};
use earshot_core::switchboard::ClientLimits;
use earshot_core::{ClientKey, Config, ConnId, ConnInfo, Output, Switchboard};
use proptest::prelude::*;
use serde_json::json;

const VERIFIER: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn config() -> Config {
    Config {
        pow: PowConfig {
            mode: PowMode::Off,
            ..PowConfig::default()
        },
        // One report bans, so that bans happen in short random runs, and
        // reports are not weighed by the reporter's history.
        moderation: ModConfig {
            reporters_for_ban: 1,
            weight_for_ban: 1,
            trusted_after: Duration::ZERO,
            held_calls_for_full: 0,
            arrived_together: Duration::ZERO,
            ..ModConfig::default()
        },
        ..Config::default()
    }
}

/// A switchboard on a virtual clock, and what it sent.
struct Board {
    board: Switchboard,
    now: Instant,
    out: Vec<Output>,
}

impl Board {
    fn new(config: Config) -> Board {
        Board {
            board: Switchboard::new(config),
            now: Instant::now(),
            out: Vec::new(),
        }
    }

    /// A connection of its own client key, greeted unless `greet` is false.
    fn client(&mut self, id: u64, greet: bool) -> ConnId {
        let conn = ConnId(id);
        let info = ConnInfo {
            key: ClientKey([id as u8; 16]),
            ..ConnInfo::default()
        };
        self.board.connect(self.now, conn, info);
        if greet {
            self.text(conn, r#"{"type":"hello","version":1}"#);
            self.take(conn);
        }
        conn
    }

    fn text(&mut self, id: ConnId, text: &str) {
        self.board.handle_text(self.now, id, text);
        self.pump();
    }

    fn pump(&mut self) {
        while let Some(o) = self.board.poll_output() {
            self.out.push(o);
        }
    }

    fn take(&mut self, id: ConnId) -> Vec<ServerMsg> {
        let mut mine = Vec::new();
        self.out.retain(|o| match o {
            Output::Send(to, m) if *to == id => {
                mine.push(m.clone());
                false
            }
            _ => true,
        });
        mine
    }

    /// The (code, re) of each error sent to `id` so far.
    fn errors(&mut self, id: ConnId) -> Vec<(ErrorCode, Option<ClientMsgType>)> {
        self.take(id)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Error { code, re, .. } => Some((code, re)),
                _ => None,
            })
            .collect()
    }

    /// Sends `text` from `id` and returns the errors it got.
    fn ask(&mut self, id: ConnId, text: &str) -> Vec<(ErrorCode, Option<ClientMsgType>)> {
        self.text(id, text);
        self.errors(id)
    }
}

/// A well-formed frame of each type.
fn frame(t: ClientMsgType) -> String {
    match t {
        ClientMsgType::Hello => json!({"type": "hello", "version": 1}),
        ClientMsgType::Search => json!({"type": "search", "interests": ["chess"]}),
        ClientMsgType::Signal => {
            json!({"type": "signal", "call": 1, "candidate": {"candidate": "c"}})
        }
        ClientMsgType::RoomJoin => json!({"type": "room_join", "room": "quiet-otters"}),
        ClientMsgType::RoomLock => json!({"type": "room_lock", "verifier": VERIFIER}),
        ClientMsgType::RoomReport => json!({"type": "room_report", "peer": 2}),
        ClientMsgType::Report => json!({"type": "report", "reason": "spam"}),
        other => json!({"type": other.as_str()}),
    }
    .to_string()
}

#[test]
fn each_request_type_is_named_by_its_errors() {
    use ClientMsgType as T;
    use ErrorCode as E;
    let mut b = Board::new(config());
    let a = b.client(1, true);

    // hello: a second one, and a version not spoken here.
    assert_eq!(
        b.ask(a, &frame(T::Hello)),
        [(E::AlreadyHello, Some(T::Hello))]
    );
    let fresh = b.client(2, false);
    let v2 = r#"{"type":"hello","version":2}"#;
    assert_eq!(b.ask(fresh, v2), [(E::UnsupportedVersion, Some(T::Hello))]);
    // Anything before hello answers that message.
    let early = b.client(3, false);
    assert_eq!(
        b.ask(early, &frame(T::RoomJoin)),
        [(E::HelloRequired, Some(T::RoomJoin))]
    );

    // Idle: what needs a call or a room.
    for (t, code) in [
        (T::Signal, E::NotInCall),
        (T::Skip, E::NotInCall),
        (T::Report, E::NotInCall),
        (T::RoomLock, E::NotInRoom),
        (T::RoomUnlock, E::NotInRoom),
        (T::RoomReport, E::NotInRoom),
    ] {
        assert_eq!(b.ask(a, &frame(t)), [(code, Some(t))], "{t:?}");
    }
    let room_signal = r#"{"type":"signal","to":2,"candidate":{"candidate":"c"}}"#;
    assert_eq!(b.ask(a, room_signal), [(E::NotInRoom, Some(T::Signal))]);
    let bad_interests = r#"{"type":"search","interests":["<>"]}"#;
    assert_eq!(
        b.ask(a, bad_interests),
        [(E::BadInterests, Some(T::Search))]
    );
    let bad_name = r#"{"type":"room_join","room":"x"}"#;
    assert_eq!(b.ask(a, bad_name), [(E::BadRoomName, Some(T::RoomJoin))]);
    // A known type with bad fields: its type is still read.
    let no_room = r#"{"type":"room_join"}"#;
    assert_eq!(b.ask(a, no_room), [(E::BadMessage, Some(T::RoomJoin))]);

    // Searching: a second search.
    assert!(b.ask(a, &frame(T::Search)).is_empty());
    assert_eq!(
        b.ask(a, &frame(T::Search)),
        [(E::AlreadySearching, Some(T::Search))]
    );
    assert!(b.ask(a, &frame(T::End)).is_empty());

    // A locked room: joining without the passphrase, then with a wrong one.
    let c = b.client(4, true);
    assert!(b.ask(c, &frame(T::RoomJoin)).is_empty());
    assert!(b.ask(c, &frame(T::RoomLock)).is_empty());
    assert_eq!(
        b.ask(a, &frame(T::RoomJoin)),
        [(E::PassphraseRequired, Some(T::RoomJoin))]
    );
    let wrong = json!({"type": "room_join", "room": "quiet-otters", "verifier": "B".repeat(43)});
    assert_eq!(
        b.ask(a, &wrong.to_string()),
        [(E::WrongPassphrase, Some(T::RoomJoin))]
    );
    // In the room: a search, a second join, a signal to nobody.
    assert_eq!(
        b.ask(c, &frame(T::Search)),
        [(E::AlreadyInRoom, Some(T::Search))]
    );
    assert_eq!(
        b.ask(c, &frame(T::RoomJoin)),
        [(E::AlreadyInRoom, Some(T::RoomJoin))]
    );
    let to_nobody = r#"{"type":"signal","to":9,"candidate":{"candidate":"c"}}"#;
    assert_eq!(b.ask(c, to_nobody), [(E::UnknownPeer, Some(T::Signal))]);

    // Every type, dropped unread by the message rate limit: still named.
    let d = b.client(5, true);
    let burst = Config::default().message_burst;
    for _ in 1..burst {
        b.text(d, &frame(T::RoomSuggest));
    }
    b.take(d);
    for t in ClientMsgType::ALL {
        assert_eq!(b.ask(d, &frame(t)), [(E::RateLimited, Some(t))], "{t:?}");
    }
}

#[test]
fn errors_answering_no_message_have_no_re() {
    use ClientMsgType as T;
    use ErrorCode as E;
    let mut b = Board::new(config());
    let a = b.client(1, true);
    assert_eq!(b.ask(a, "not json"), [(E::BadJson, None)]);
    assert_eq!(b.ask(a, r#"{"type":"nope"}"#), [(E::UnknownType, None)]);
    let huge = json!({"type": "search", "pad": "x".repeat(20_000)}).to_string();
    assert_eq!(b.ask(a, &huge), [(E::TooLarge, None)]);
    b.board.handle_binary(b.now, a);
    b.pump();
    assert_eq!(b.errors(a), [(E::BadMessage, None)]);

    // `removed` goes to the member reported out, not to the reporter.
    let x = b.client(2, true);
    let y = b.client(3, true);
    b.ask(x, &frame(T::RoomJoin));
    b.text(y, &frame(T::RoomJoin));
    let peer = b.take(y).iter().find_map(|m| match m {
        ServerMsg::RoomJoined { peer, .. } => Some(*peer),
        _ => None,
    });
    b.take(x);
    let report = json!({"type": "room_report", "peer": peer}).to_string();
    assert!(b.ask(x, &report).is_empty());
    assert_eq!(b.errors(y), [(E::Removed, None)]);

    // A client banned by its partner's report goes back to the queue and is
    // told `banned` there: that answers nothing of its own. Its own next
    // search is answered `banned`, naming it.
    let (p, q) = (b.client(4, true), b.client(5, true));
    b.ask(p, &frame(T::Search));
    b.ask(q, &frame(T::Search));
    b.take(q);
    assert!(b.ask(p, &frame(T::Report)).is_empty()); // one report bans (see config)
    assert_eq!(b.errors(q), [(E::Banned, None)]);
    assert_eq!(b.ask(q, &frame(T::Search)), [(E::Banned, Some(T::Search))]);
}

#[test]
fn a_report_over_the_limit_is_answered_idle_then_rate_limited() {
    let mut b = Board::new(Config {
        per_client: ClientLimits {
            reports: (1, Duration::from_secs(3600)),
            ..Default::default()
        },
        ..config()
    });
    let a = b.client(1, true);
    for partner in [2, 3] {
        let p = b.client(partner, true);
        b.ask(a, &frame(ClientMsgType::Search));
        b.ask(p, &frame(ClientMsgType::Search));
        b.take(a);
        b.text(a, &frame(ClientMsgType::Report));
        let got = b.take(a);
        assert_eq!(got[0], ServerMsg::Idle);
        if partner == 3 {
            assert!(
                matches!(
                    got[1..],
                    [ServerMsg::Error {
                        code: ErrorCode::RateLimited,
                        re: Some(ClientMsgType::Report),
                        ..
                    }]
                ),
                "{got:?}"
            );
        }
    }
}

#[test]
fn a_joins_refusal_from_the_backplane_answers_room_join() {
    let mut b = Board::new(config());
    b.board.set_node(Some(1));
    let a = b.client(earshot_core::backplane::conn_id(1, 1).0, true);
    b.text(a, &frame(ClientMsgType::RoomJoin));
    assert!(
        b.out.iter().any(|o| matches!(
            o,
            Output::Backplane(Request::RoomJoin { conn, .. }) if *conn == a
        )),
        "no room join asked of the store: {:?}",
        b.out
    );
    b.out.clear();
    let event = Event::RoomRefused {
        conn: a,
        code: ErrorCode::RoomFull,
        retry: None,
    };
    b.board.handle_backplane(b.now, event);
    b.pump();
    assert_eq!(
        b.errors(a),
        [(ErrorCode::RoomFull, Some(ClientMsgType::RoomJoin))]
    );
}

#[test]
fn re_is_on_the_wire_as_the_messages_type() {
    for t in ClientMsgType::ALL {
        let msg = ServerMsg::Error {
            code: ErrorCode::RateLimited,
            re: Some(t),
            message: ErrorCode::RateLimited.message().into(),
            retry_after_ms: Some(5),
        };
        let v: serde_json::Value = serde_json::from_str(&msg.to_json()).unwrap();
        assert_eq!(v["re"], t.as_str());
        assert_eq!(ClientMsgType::from_name(t.as_str()), Some(t));
        assert_eq!(protocol::read_type(&frame(t)), Ok(t));
        assert_eq!(protocol::decode(&frame(t)).map(|m| m.msg_type()), Ok(t));
    }
    let plain = ServerMsg::error(ErrorCode::BadJson).to_json();
    assert!(!plain.contains("\"re\""), "{plain}");
}

// ------------------------------------------------------------- properties

#[derive(Debug, Clone)]
enum Op {
    Text(usize, String),
    Binary(usize),
    Wait(u64),
}

const CONNS: usize = 4;

fn any_frame() -> impl Strategy<Value = String> {
    let peer = 1u32..4;
    let call = 1u64..4;
    prop_oneof![
        Just(frame(ClientMsgType::Hello)),
        Just(r#"{"type":"hello","version":7}"#.to_string()),
        Just(r#"{"type":"search"}"#.to_string()),
        Just(frame(ClientMsgType::Search)),
        Just(r#"{"type":"search","interests":["<>"]}"#.to_string()),
        call.prop_map(|c| {
            json!({"type": "signal", "call": c, "candidate": {"candidate": "c"}}).to_string()
        }),
        peer.clone().prop_map(|p| {
            json!({"type": "signal", "to": p, "candidate": {"candidate": "c"}}).to_string()
        }),
        Just(frame(ClientMsgType::Skip)),
        Just(frame(ClientMsgType::End)),
        Just(frame(ClientMsgType::Report)),
        Just(frame(ClientMsgType::RoomSuggest)),
        prop::sample::select(vec!["quiet-otters", "loud-owls", "x", "-no-"])
            .prop_map(|r| json!({"type": "room_join", "room": r}).to_string()),
        Just(
            json!({"type": "room_join", "room": "quiet-otters", "verifier": VERIFIER}).to_string()
        ),
        Just(frame(ClientMsgType::RoomLock)),
        Just(frame(ClientMsgType::RoomUnlock)),
        peer.prop_map(|p| json!({"type": "room_report", "peer": p}).to_string()),
        Just(frame(ClientMsgType::RefreshIce)),
        Just(r#"{"type":"room_lock","verifier":"short"}"#.to_string()),
        Just(r#"{"type":"sk\u0069p"}"#.to_string()),
        Just(r#"{"type":"nope"}"#.to_string()),
        Just("[1,2]".to_string()),
        Just("{".to_string()),
        Just(json!({"type": "end", "pad": "x".repeat(17_000)}).to_string()),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (0..CONNS, any_frame()).prop_map(|(c, f)| Op::Text(c, f)),
        1 => (0..CONNS).prop_map(Op::Binary),
        1 => (1u64..3000).prop_map(Op::Wait),
    ];
    prop::collection::vec(op, 1..80)
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut b = Board::new(Config {
        message_burst: 8,
        messages_per_second: 4,
        error_budget: 1000,
        ..config()
    });
    let conns: Vec<ConnId> = (0..CONNS as u64).map(|i| b.client(i + 1, false)).collect();
    for op in ops {
        let (sender, want) = match op {
            Op::Text(i, text) => {
                b.board.handle_text(b.now, conns[*i], text);
                let readable = text.len() <= b.board.config().max_message_bytes;
                (
                    conns[*i],
                    protocol::read_type(text).ok().filter(|_| readable),
                )
            }
            Op::Binary(i) => {
                b.board.handle_binary(b.now, conns[*i]);
                (conns[*i], None)
            }
            Op::Wait(ms) => {
                b.now += Duration::from_millis(*ms);
                b.board.handle_timeout(b.now);
                (ConnId(0), None)
            }
        };
        while let Some(out) = b.board.poll_output() {
            let Output::Send(to, ServerMsg::Error { code, re, .. }) = &out else {
                continue;
            };
            if *to == sender {
                prop_assert_eq!(*re, want, "{:?} to the sender of {:?}", code, op);
            } else {
                prop_assert_eq!(*re, None, "{:?} to {} while {:?}", code, to, op);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_error_answers_the_frame_being_handled(ops in ops()) {
        run(&ops)?;
    }

    #[test]
    fn read_type_agrees_with_decode(text in prop_oneof![
        any_frame(),
        "\\PC{0,40}",
        ("[a-z_]{1,12}", "\\PC{0,20}").prop_map(|(t, rest)| format!(r#"{{"type":"{t}",{rest}"#)),
    ]) {
        match (protocol::decode(&text), protocol::read_type(&text)) {
            (Ok(msg), read) => prop_assert_eq!(read, Ok(msg.msg_type())),
            (Err(DecodeError::BadMessage), read) => prop_assert!(read.is_ok()),
            (Err(e), read) => prop_assert_eq!(read, Err(e)),
        }
    }
}
