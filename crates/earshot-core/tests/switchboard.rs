//! The switchboard driven through its public API on a virtual clock.

use std::time::{Duration, Instant};

use earshot_core::protocol::{ClientMsgType, EndReason, ServerMsg};
use earshot_core::{
    CloseReason, Config, ConnId, ConnInfo, Country, ErrorCode, Output, Switchboard,
};

/// A switchboard, a virtual clock and the outputs collected so far.
struct Harness {
    board: Switchboard,
    now: Instant,
    out: Vec<Output>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Config::default())
    }

    fn with(config: Config) -> Harness {
        Harness {
            board: Switchboard::new(config),
            now: Instant::now(),
            out: Vec::new(),
        }
    }

    fn pump(&mut self) {
        while let Some(o) = self.board.poll_output() {
            self.out.push(o);
        }
        self.board.check_invariants().unwrap();
    }

    /// Connects and greets a client.
    fn client(&mut self, id: u64) -> ConnId {
        let id = ConnId(id);
        self.board.connect(self.now, id, ConnInfo::default());
        self.text(id, r#"{"type":"hello","version":1}"#);
        assert!(matches!(self.take(id)[..], [ServerMsg::Welcome { .. }]));
        id
    }

    fn text(&mut self, id: ConnId, text: &str) {
        self.board.handle_text(self.now, id, text);
        self.pump();
    }

    fn search(&mut self, id: ConnId, interests: &[&str]) {
        let json = serde_json::json!({"type": "search", "interests": interests}).to_string();
        self.text(id, &json);
    }

    /// Connects `x` and `y` and puts them in a call: (waiter, newcomer, call id).
    /// Their messages so far are consumed.
    fn pair(&mut self, x: u64, y: u64) -> (ConnId, ConnId, u64) {
        let a = self.client(x);
        let b = self.client(y);
        self.search(a, &[]);
        self.search(b, &[]);
        let (call, _, _) = self.matched(a).expect("a is matched");
        assert_eq!(self.matched(b).expect("b is matched").0, call);
        (a, b, call)
    }

    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(at) = self.board.poll_timeout() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            self.board.handle_timeout(self.now);
            self.pump();
        }
        self.now = until;
    }

    /// Takes the messages sent to `id` so far.
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

    fn closes(&mut self) -> Vec<(ConnId, CloseReason)> {
        let mut closes = Vec::new();
        self.out.retain(|o| match o {
            Output::Close(id, r) => {
                closes.push((*id, *r));
                false
            }
            _ => true,
        });
        closes
    }

    /// The call id and politeness of `id`'s latest `matched`, if any.
    fn matched(&mut self, id: ConnId) -> Option<(u64, bool, Vec<String>)> {
        self.take(id).into_iter().rev().find_map(|m| match m {
            ServerMsg::Matched {
                call,
                polite,
                interests,
                ..
            } => Some((call, polite, interests)),
            _ => None,
        })
    }

    fn error_codes(&mut self, id: ConnId) -> Vec<ErrorCode> {
        self.take(id)
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Error { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }
}

fn signal(call: u64) -> String {
    format!(r#"{{"type":"signal","call":{call},"description":{{"type":"offer","sdp":"v=0"}}}}"#)
}

#[test]
fn two_strangers_are_matched_with_opposite_roles() {
    let mut h = Harness::new();
    let a = h.client(1);
    let b = h.client(2);
    h.search(a, &[]);
    assert!(matches!(h.take(a)[..], [ServerMsg::Searching { .. }]));
    h.search(b, &[]);
    let (call_b, polite_b, _) = h.matched(b).unwrap();
    let (call_a, polite_a, _) = h.matched(a).unwrap();
    assert_eq!(call_a, call_b);
    assert!(polite_a, "the one who waited is polite");
    assert!(!polite_b, "the newcomer makes the offer");
    assert_eq!(h.board.stats().calls, 1);
}

#[test]
fn signals_go_to_the_partner_only_and_only_for_the_current_call() {
    let mut h = Harness::new();
    let (a, b, call) = h.pair(1, 2);
    let c = h.client(3);
    h.text(a, &signal(call));
    assert!(matches!(&h.take(b)[..], [ServerMsg::Signal(s)] if s.call == call));
    assert!(h.take(c).is_empty());
    assert!(h.take(a).is_empty());

    h.text(a, &signal(call + 1));
    assert_eq!(h.error_codes(a), [ErrorCode::WrongCall]);
    assert!(h.take(b).is_empty());

    h.text(c, &signal(call));
    assert_eq!(h.error_codes(c), [ErrorCode::NotInCall]);
    assert!(h.take(a).is_empty() && h.take(b).is_empty());
}

#[test]
fn queue_is_first_come_first_served() {
    let mut h = Harness::new();
    let ids: Vec<ConnId> = (1..=5).map(|i| h.client(i)).collect();
    for &id in &ids {
        h.search(id, &[]);
    }
    // 1 waits, 2 takes 1; 3 waits, 4 takes 3; 5 waits.
    let calls: Vec<_> = ids.iter().map(|&id| h.matched(id).map(|m| m.0)).collect();
    assert_eq!(calls[0], calls[1]);
    assert_eq!(calls[2], calls[3]);
    assert_ne!(calls[0], calls[2]);
    assert_eq!(calls[4], None);
    assert_eq!(h.board.stats().waiting, 1);
}

#[test]
fn skip_requeues_both_and_keeps_them_apart_for_the_cooldown() {
    let mut h = Harness::new();
    let (a, b, call) = h.pair(1, 2);

    h.text(a, r#"{"type":"skip"}"#);
    let to_b = h.take(b);
    assert!(matches!(
        &to_b[..],
        [ServerMsg::CallEnded { call: c, reason: EndReason::PartnerSkipped }, ServerMsg::Searching { .. }]
            if *c == call
    ));
    assert!(matches!(&h.take(a)[..], [ServerMsg::Searching { .. }]));
    assert_eq!(h.board.stats().waiting, 2, "both searching, not re-matched");

    // A third person gets the one who was skipped (re-queued first).
    let c = h.client(3);
    h.search(c, &[]);
    assert!(h.matched(b).is_some());
    assert!(h.matched(c).is_some());
    assert!(h.matched(a).is_none());
    h.text(c, r#"{"type":"end"}"#);
    // b is back in the queue, next to a, but they skipped each other.
    assert!(h.matched(a).is_none());
    assert!(h.matched(b).is_none());

    // Once the cooldown is over, they may meet again without anyone joining.
    h.advance(Duration::from_secs(29));
    assert!(h.matched(a).is_none());
    h.advance(Duration::from_secs(2));
    assert!(h.matched(a).is_some());
    assert!(h.matched(b).is_some());
}

#[test]
fn end_makes_the_ender_idle_and_requeues_the_partner() {
    let mut h = Harness::new();
    let (a, b, call) = h.pair(1, 2);
    h.text(b, r#"{"type":"end"}"#);
    assert_eq!(h.take(b), [ServerMsg::Idle]);
    assert!(matches!(
        &h.take(a)[..],
        [ServerMsg::CallEnded { call: c, reason: EndReason::PartnerEnded }, ServerMsg::Searching { .. }]
            if *c == call
    ));
    // End when idle is harmless and answered.
    h.text(b, r#"{"type":"end"}"#);
    assert_eq!(h.take(b), [ServerMsg::Idle]);
    // End while searching leaves the queue.
    h.text(a, r#"{"type":"end"}"#);
    assert_eq!(h.board.stats().waiting, 0);
}

#[test]
fn a_vanished_partner_ends_the_call() {
    let mut h = Harness::new();
    let (a, b, _) = h.pair(1, 2);
    h.board.disconnect(h.now, b);
    h.pump();
    assert!(matches!(
        &h.take(a)[..],
        [
            ServerMsg::CallEnded {
                reason: EndReason::PartnerLeft,
                ..
            },
            ServerMsg::Searching { .. }
        ]
    ));
    assert_eq!(h.board.stats().connections, 1);
    assert!(
        h.take(b).is_empty(),
        "nothing is sent to a closed connection"
    );
}

#[test]
fn shared_interests_come_first_then_anyone_after_the_wait() {
    let mut h = Harness::new();
    let a = h.client(1);
    let b = h.client(2);
    let c = h.client(3);
    h.search(a, &["Chess", "music"]);
    h.search(b, &[]);
    assert!(
        h.matched(b).is_none(),
        "a waits for a shared interest first"
    );
    h.search(c, &["hiking", "chess"]);
    let (_, _, shared) = h.matched(c).unwrap();
    assert_eq!(shared, ["chess"]);
    assert!(h.matched(a).is_some());

    // d has interests nobody shares: after 5 s it takes the untagged b.
    let d = h.client(4);
    h.search(d, &["knitting"]);
    h.advance(Duration::from_millis(4900));
    assert!(h.matched(d).is_none());
    h.advance(Duration::from_millis(200));
    let (_, _, shared) = h.matched(d).unwrap();
    assert!(shared.is_empty());
    assert!(h.matched(b).is_some());
}

#[test]
fn countries_are_told_to_the_partner_only() {
    let mut h = Harness::new();
    let a = ConnId(1);
    h.board.connect(
        h.now,
        a,
        ConnInfo {
            country: Country::new("DE"),
            ..ConnInfo::default()
        },
    );
    h.text(a, r#"{"type":"hello","version":1}"#);
    assert!(
        matches!(&h.take(a)[..], [ServerMsg::Welcome { country: Some(c), .. }] if c.as_str() == "DE")
    );
    let b = h.client(2);
    h.search(a, &[]);
    h.search(b, &[]);
    let to_b = h.take(b);
    assert!(
        to_b.iter().any(
            |m| matches!(m, ServerMsg::Matched { country: Some(c), .. } if c.as_str() == "DE")
        )
    );
    let to_a = h.take(a);
    assert!(
        to_a.iter()
            .any(|m| matches!(m, ServerMsg::Matched { country: None, .. }))
    );
}

#[test]
fn bad_messages_get_typed_errors_and_the_connection_stays_usable() {
    let mut h = Harness::new();
    let a = ConnId(1);
    h.board.connect(h.now, a, ConnInfo::default());
    h.text(a, r#"{"type":"search"}"#);
    assert_eq!(h.error_codes(a), [ErrorCode::HelloRequired]);
    h.text(a, r#"{"type":"hello","version":2}"#);
    assert_eq!(h.error_codes(a), [ErrorCode::UnsupportedVersion]);
    h.text(a, r#"{"type":"hello","version":1}"#);
    assert!(matches!(h.take(a)[..], [ServerMsg::Welcome { .. }]));
    let cases: &[(&str, ErrorCode)] = &[
        ("{", ErrorCode::BadJson),
        (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
        (r#"{"type":"signal"}"#, ErrorCode::BadMessage),
        (r#"{"type":"hello","version":1}"#, ErrorCode::AlreadyHello),
        (r#"{"type":"skip"}"#, ErrorCode::NotInCall),
        (
            r#"{"type":"search","interests":["<script>"]}"#,
            ErrorCode::BadInterests,
        ),
    ];
    for (text, code) in cases {
        h.text(a, text);
        assert_eq!(h.error_codes(a), [*code], "{text}");
    }
    h.text(a, &"x".repeat(16 * 1024 + 1));
    assert_eq!(h.error_codes(a), [ErrorCode::TooLarge]);
    h.board.handle_binary(h.now, a);
    h.pump();
    assert_eq!(h.error_codes(a), [ErrorCode::BadMessage]);
    h.search(a, &[]);
    assert!(matches!(h.take(a)[..], [ServerMsg::Searching { .. }]));
    h.search(a, &[]);
    assert_eq!(h.error_codes(a), [ErrorCode::AlreadySearching]);
    assert!(h.closes().is_empty());
}

#[test]
fn persistent_errors_close_the_connection() {
    let mut h = Harness::new();
    let (a, b, _) = h.pair(1, 2);
    for _ in 0..20 {
        h.text(a, "nonsense");
    }
    assert!(h.closes().is_empty(), "twenty errors are within budget");
    h.text(a, "nonsense");
    assert_eq!(h.closes(), [(a, CloseReason::TooManyErrors)]);
    assert!(
        h.take(b).iter().any(|m| matches!(
            m,
            ServerMsg::CallEnded {
                reason: EndReason::PartnerLeft,
                ..
            }
        )),
        "the partner learns at once"
    );
    // Input after the close is ignored.
    h.take(a);
    h.text(a, r#"{"type":"end"}"#);
    assert!(h.take(a).is_empty());
}

#[test]
fn message_rate_is_limited_with_a_retry_hint() {
    let mut h = Harness::new();
    let a = h.client(1);
    // The hello used one token of the burst of 60.
    for _ in 0..59 {
        h.text(a, r#"{"type":"end"}"#);
    }
    assert_eq!(h.take(a).len(), 59);
    h.text(a, r#"{"type":"end"}"#);
    match &h.take(a)[..] {
        [
            ServerMsg::Error {
                code: ErrorCode::RateLimited,
                re: Some(ClientMsgType::End),
                retry_after_ms: Some(ms),
                ..
            },
        ] => assert_eq!(*ms, 50),
        other => panic!("{other:?}"),
    }
    h.advance(Duration::from_millis(50));
    h.text(a, r#"{"type":"end"}"#);
    assert_eq!(h.take(a), [ServerMsg::Idle]);
}

#[test]
fn silent_connections_are_closed_after_the_hello_timeout() {
    let mut h = Harness::new();
    let quiet = ConnId(1);
    h.board.connect(h.now, quiet, ConnInfo::default());
    let talker = h.client(2);
    h.advance(Duration::from_secs(11));
    assert_eq!(h.closes(), [(quiet, CloseReason::HelloTimeout)]);
    h.board.disconnect(h.now, quiet);
    h.pump();
    h.search(talker, &[]);
    assert!(matches!(h.take(talker)[..], [ServerMsg::Searching { .. }]));
}

#[test]
fn regression_late_signal_from_a_previous_call_is_not_relayed() {
    // b is skipped and instantly matched with c; b's candidate for the old
    // call must not reach c.
    let mut h = Harness::new();
    let a = h.client(1);
    let b = h.client(2);
    let c = h.client(3);
    h.search(a, &[]);
    h.search(b, &[]);
    let (old_call, _, _) = h.matched(b).unwrap();
    h.search(c, &[]);
    h.text(a, r#"{"type":"skip"}"#);
    assert!(h.matched(c).is_some());
    h.take(b);
    h.text(b, &signal(old_call));
    assert_eq!(h.error_codes(b), [ErrorCode::WrongCall]);
    assert!(h.take(c).is_empty());
}

mod rooms {
    use earshot_core::ClientKey;
    use earshot_core::protocol::{ServerMsg, Verifier};

    use super::*;

    const V1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
    const V2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI";

    fn join(h: &mut Harness, id: ConnId, room: &str, verifier: Option<&str>) {
        let mut msg = serde_json::json!({"type": "room_join", "room": room});
        if let Some(v) = verifier {
            msg["verifier"] = v.into();
        }
        h.text(id, &msg.to_string());
    }

    /// The `peer` id `id` got in its `room_joined`, with the peers listed.
    fn joined(h: &mut Harness, id: ConnId) -> (u32, Vec<u32>, bool) {
        h.take(id)
            .into_iter()
            .find_map(|m| match m {
                ServerMsg::RoomJoined {
                    peer,
                    peers,
                    locked,
                    ..
                } => Some((peer, peers, locked)),
                _ => None,
            })
            .expect("room_joined")
    }

    #[test]
    fn members_learn_of_each_other_and_signals_stay_in_the_room() {
        let mut h = Harness::new();
        let [a, b, c, x] = [1, 2, 3, 4].map(|i| h.client(i));
        join(&mut h, a, "quiet-otters", None);
        let (pa, peers, locked) = joined(&mut h, a);
        assert!(peers.is_empty() && !locked);
        join(&mut h, b, "Quiet-Otters ", None);
        let (pb, peers, _) = joined(&mut h, b);
        assert_eq!(peers, [pa]);
        assert_eq!(h.take(a), [ServerMsg::PeerJoined { peer: pb }]);
        join(&mut h, c, "quiet-otters", None);
        let (pc, peers, _) = joined(&mut h, c);
        assert_eq!(peers, [pa, pb]);
        join(&mut h, x, "other-room", None);
        let (px, _, _) = joined(&mut h, x);
        h.take(a);
        h.take(b);

        let to_peer = |to: u32| {
            format!(
                r#"{{"type":"signal","to":{to},"candidate":{{"candidate":"c"}},"auth":"QUJD"}}"#
            )
        };
        h.text(c, &to_peer(pa));
        match &h.take(a)[..] {
            [ServerMsg::RoomSignal(s)] => {
                assert_eq!(
                    (s.from, s.to, s.auth.as_deref()),
                    (Some(pc), None, Some("QUJD"))
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(h.take(b).is_empty() && h.take(x).is_empty());
        // Peer ids are per room: x's id in its own room reaches nobody here.
        if px != pa && px != pb {
            h.text(c, &to_peer(px));
            assert_eq!(h.error_codes(c), [ErrorCode::UnknownPeer]);
        }
        h.text(c, &to_peer(pc));
        assert_eq!(h.error_codes(c), [ErrorCode::UnknownPeer], "not to oneself");
        h.text(c, &to_peer(99));
        assert_eq!(h.error_codes(c), [ErrorCode::UnknownPeer]);
        assert!(h.take(x).is_empty());

        // Leaving tells the others; a stranger-call signal is refused in a room.
        h.text(b, r#"{"type":"end"}"#);
        assert_eq!(h.take(b), [ServerMsg::Idle]);
        assert_eq!(h.take(a), [ServerMsg::PeerLeft { peer: pb }]);
        assert_eq!(h.take(c), [ServerMsg::PeerLeft { peer: pb }]);
        h.text(a, &signal(1));
        assert_eq!(h.error_codes(a), [ErrorCode::NotInCall]);
        h.board.disconnect(h.now, c);
        h.pump();
        assert_eq!(h.take(a), [ServerMsg::PeerLeft { peer: pc }]);
    }

    #[test]
    fn a_full_room_refuses_and_a_busy_client_cannot_join() {
        let mut h = Harness::with(Config {
            rooms: earshot_core::rooms::RoomConfig {
                max_size: 2,
                ..Default::default()
            },
            ..Config::default()
        });
        let [a, b, c] = [1, 2, 3].map(|i| h.client(i));
        join(&mut h, a, "tiny", None);
        join(&mut h, b, "tiny", None);
        join(&mut h, c, "tiny", None);
        assert_eq!(h.error_codes(c), [ErrorCode::RoomFull]);
        join(&mut h, a, "another", None);
        assert_eq!(h.error_codes(a), [ErrorCode::AlreadyInRoom]);
        h.search(a, &[]);
        assert_eq!(h.error_codes(a), [ErrorCode::AlreadyInRoom]);
        h.search(c, &[]);
        join(&mut h, c, "another", None);
        assert_eq!(h.error_codes(c), [ErrorCode::AlreadySearching]);
        for bad in ["x", "-x-", "a b c", "ünï"] {
            h.text(c, r#"{"type":"end"}"#);
            join(&mut h, c, bad, None);
            assert_eq!(h.error_codes(c), [ErrorCode::BadRoomName], "{bad}");
        }
        assert_eq!(
            h.board.stats().rooms,
            1,
            "refused joins leave no room behind"
        );
    }

    #[test]
    fn locks_need_the_verifier_are_rate_limited_and_forgotten_when_empty() {
        let mut h = Harness::new();
        let [a, b] = [1, 2].map(|i| h.client(i));
        join(&mut h, a, "secret-den", None);
        joined(&mut h, a);
        h.text(a, &format!(r#"{{"type":"room_lock","verifier":"{V1}"}}"#));
        assert_eq!(h.take(a), [ServerMsg::RoomLockState { locked: true }]);

        join(&mut h, b, "secret-den", None);
        assert_eq!(h.error_codes(b), [ErrorCode::PassphraseRequired]);
        join(&mut h, b, "secret-den", Some(V2));
        assert_eq!(h.error_codes(b), [ErrorCode::WrongPassphrase]);
        join(&mut h, b, "secret-den", Some(V1));
        let (_, _, locked) = joined(&mut h, b);
        assert!(locked);

        h.text(b, r#"{"type":"room_unlock"}"#);
        assert_eq!(
            h.take(a).last(),
            Some(&ServerMsg::RoomLockState { locked: false })
        );
        assert_eq!(h.take(b), [ServerMsg::RoomLockState { locked: false }]);
        h.text(b, &format!(r#"{{"type":"room_lock","verifier":"{V2}"}}"#));
        h.text(a, r#"{"type":"end"}"#);
        h.text(b, r#"{"type":"end"}"#);
        assert_eq!(h.board.stats().rooms, 0);
        // Everyone left: the room and its lock are gone.
        join(&mut h, a, "secret-den", None);
        assert!(!joined(&mut h, a).2);

        h.text(b, &format!(r#"{{"type":"room_lock","verifier":"{V1}"}}"#));
        assert_eq!(h.error_codes(b), [ErrorCode::NotInRoom]);
        assert!(Verifier::parse(V1).is_some());
    }

    #[test]
    fn passphrase_guessing_is_limited_per_client_across_connections() {
        let mut h = Harness::new();
        let owner = h.client(1);
        join(&mut h, owner, "vault", None);
        h.text(
            owner,
            &format!(r#"{{"type":"room_lock","verifier":"{V1}"}}"#),
        );
        // One guesser behind three connections: the limit follows its key.
        let key = ClientKey([7; 16]);
        let mut guesses = Vec::new();
        for i in 0..3 {
            let id = ConnId(10 + i);
            h.board.connect(
                h.now,
                id,
                ConnInfo {
                    key,
                    ..ConnInfo::default()
                },
            );
            h.text(id, r#"{"type":"hello","version":1}"#);
            h.take(id);
            for _ in 0..3 {
                join(&mut h, id, "vault", Some(V2));
                guesses.extend(h.take(id).into_iter().filter_map(|m| match m {
                    ServerMsg::Error {
                        code,
                        retry_after_ms,
                        ..
                    } => Some((code, retry_after_ms)),
                    _ => None,
                }));
            }
        }
        let wrong = guesses
            .iter()
            .filter(|(c, _)| *c == ErrorCode::WrongPassphrase)
            .count();
        assert_eq!(
            wrong, 5,
            "the burst of 5 attempts, then rate limited: {guesses:?}"
        );
        assert!(
            guesses[5..]
                .iter()
                .all(|&(c, r)| c == ErrorCode::RateLimited && r == Some(12_000))
        );
        // Another client is not affected by that one's guessing.
        let honest = h.client(50);
        join(&mut h, honest, "vault", Some(V1));
        joined(&mut h, honest);
    }

    #[test]
    fn suggestions_are_valid_four_word_names() {
        let mut h = Harness::new();
        let a = h.client(1);
        h.text(a, r#"{"type":"room_suggest"}"#);
        match &h.take(a)[..] {
            [ServerMsg::RoomSuggestion { name }] => {
                assert_eq!(earshot_core::names::normalize(name).as_ref(), Ok(name));
                assert_eq!(name.split('-').count(), 4);
            }
            other => panic!("{other:?}"),
        }
    }
}

mod safety {
    use earshot_core::ClientKey;
    use earshot_core::protocol::ServerMsg;

    use super::*;

    /// A greeted client with its own key (its own network).
    fn client_with_key(h: &mut Harness, id: u64, key: u8) -> ConnId {
        let id = ConnId(id);
        h.board.connect(
            h.now,
            id,
            ConnInfo {
                key: ClientKey([key; 16]),
                ..ConnInfo::default()
            },
        );
        h.text(id, r#"{"type":"hello","version":1}"#);
        h.take(id);
        id
    }

    #[test]
    fn report_ends_the_call_and_the_pair_never_meets_again() {
        let mut h = Harness::new();
        let a = client_with_key(&mut h, 1, 1);
        let b = client_with_key(&mut h, 2, 2);
        h.search(a, &[]);
        h.search(b, &[]);
        let (call, _, _) = h.matched(a).unwrap();
        h.take(b);
        h.text(a, r#"{"type":"report","reason":"harassment"}"#);
        assert_eq!(h.take(a), [ServerMsg::Idle]);
        assert!(matches!(
            &h.take(b)[..],
            [ServerMsg::CallEnded { call: c, reason: EndReason::PartnerEnded }, ServerMsg::Searching { .. }]
                if *c == call
        ));
        assert_eq!(h.board.stats().reports_total, 1);
        // Long after any skip cooldown, a still never meets b.
        h.advance(Duration::from_secs(600));
        h.search(a, &[]);
        h.advance(Duration::from_secs(3700));
        assert!(h.matched(a).is_none());
        // Someone else still meets b.
        let c = client_with_key(&mut h, 3, 3);
        h.search(c, &[]);
        assert!(h.matched(c).is_some());
    }

    #[test]
    fn regression_a_report_keeps_apart_two_people_behind_one_address() {
        // Both share the default client key, as one household would.
        let mut h = Harness::new();
        let (a, b, _) = h.pair(1, 2);
        h.text(a, r#"{"type":"report"}"#);
        assert_eq!(h.take(a), [ServerMsg::Idle]);
        h.search(a, &[]);
        h.advance(Duration::from_secs(7200));
        assert!(h.matched(a).is_none() && h.matched(b).is_none());
        let c = h.client(3);
        h.search(c, &[]);
        assert!(h.matched(c).is_some());
    }

    #[test]
    fn a_challenged_client_has_until_the_challenge_expires_to_say_hello() {
        let mut h = Harness::with(Config {
            pow: earshot_core::pow::PowConfig {
                mode: earshot_core::pow::PowMode::Always,
                ..Default::default()
            },
            ..Config::default()
        });
        let a = ConnId(1);
        h.board.connect(h.now, a, ConnInfo::default());
        h.text(a, r#"{"type":"hello","version":1}"#);
        assert!(matches!(h.take(a)[..], [ServerMsg::Challenge { .. }]));
        h.advance(Duration::from_secs(60));
        let closes = h.closes();
        assert!(
            closes.is_empty(),
            "still solving after the plain hello timeout: {closes:?}"
        );
        h.advance(Duration::from_secs(61));
        assert_eq!(h.closes(), [(a, CloseReason::HelloTimeout)]);
    }

    /// A greeted client with its own key, on the network `network`.
    fn client_on(h: &mut Harness, id: u64, key: u8, network: u8) -> ConnId {
        let id = ConnId(id);
        h.board.connect(
            h.now,
            id,
            ConnInfo {
                key: ClientKey([key; 16]),
                network: Some(ClientKey([network; 16])),
                ..ConnInfo::default()
            },
        );
        h.text(id, r#"{"type":"hello","version":1}"#);
        h.take(id);
        id
    }

    /// `id` holds three stranger calls of 31 s, each with a new partner
    /// (ids and keys from `partners` on), then goes idle: with ten minutes
    /// connected after that, its reports weigh fully.
    fn hold_calls(h: &mut Harness, id: ConnId, partners: u8) {
        for p in partners..partners + 3 {
            let partner = client_with_key(h, 1000 + u64::from(p), p);
            h.search(id, &[]);
            h.search(partner, &[]);
            assert!(h.matched(partner).is_some(), "a call to hold");
            h.advance(Duration::from_secs(31));
            h.text(partner, r#"{"type":"end"}"#);
            h.board.disconnect(h.now, partner);
            h.pump();
            h.text(id, r#"{"type":"end"}"#);
            h.take(id);
        }
    }

    /// Connects reporters (key `first + i`, network `networks[i]`), each
    /// arriving two minutes after the last and holding three calls, then
    /// lets ten minutes pass.
    fn established(h: &mut Harness, first: u8, networks: &[u8]) -> Vec<ConnId> {
        let mut ids = Vec::new();
        for (i, &net) in networks.iter().enumerate() {
            let key = first + i as u8;
            let id = client_on(h, u64::from(key), key, net);
            hold_calls(h, id, 150 + 3 * i as u8);
            h.advance(Duration::from_secs(120));
            ids.push(id);
        }
        h.advance(Duration::from_secs(600));
        ids
    }

    /// `reporter` meets `bad` in a stranger call and reports it.
    fn meet_and_report(h: &mut Harness, reporter: ConnId, bad: ConnId) {
        h.search(bad, &[]);
        h.search(reporter, &[]);
        assert!(h.matched(reporter).is_some(), "the reporter meets bad");
        h.text(reporter, r#"{"type":"report"}"#);
        h.take(reporter);
        h.text(bad, r#"{"type":"end"}"#);
        h.take(bad);
    }

    /// Whether `id`'s search is refused as banned (leaving it idle).
    fn refused_as_banned(h: &mut Harness, id: ConnId) -> Option<u64> {
        h.search(id, &[]);
        let heard = h.take(id);
        let banned = match &heard[..] {
            [
                ServerMsg::Error {
                    code: ErrorCode::Banned,
                    re: Some(ClientMsgType::Search),
                    retry_after_ms: Some(ms),
                    ..
                },
                ServerMsg::Idle,
            ] => Some(*ms),
            [ServerMsg::Searching { .. }, ..] => None,
            other => panic!("{other:?}"),
        };
        if banned.is_none() {
            h.text(id, r#"{"type":"end"}"#);
            h.take(id);
        }
        banned
    }

    #[test]
    fn established_reporters_from_distinct_networks_ban_with_the_time_left() {
        let mut h = Harness::new();
        let reporters = established(&mut h, 1, &[1, 2, 3]);
        let bad = client_with_key(&mut h, 100, 100);
        for &r in &reporters {
            assert_eq!(refused_as_banned(&mut h, bad), None);
            meet_and_report(&mut h, r, bad);
        }
        assert_eq!(refused_as_banned(&mut h, bad), Some(3_600_000));
        assert_eq!(h.board.stats().bans_total, 1);
        h.advance(Duration::from_secs(3601));
        assert_eq!(refused_as_banned(&mut h, bad), None);
    }

    #[test]
    fn fresh_reporters_never_ban() {
        let mut h = Harness::new();
        let bad = client_with_key(&mut h, 100, 100);
        for key in 1..=5u8 {
            let r = client_with_key(&mut h, u64::from(key), key);
            h.advance(Duration::from_secs(300));
            meet_and_report(&mut h, r, bad);
        }
        assert_eq!(refused_as_banned(&mut h, bad), None);
        assert_eq!(h.board.stats().bans_total, 0);
        assert_eq!(h.board.stats().reports_total, 5);
    }

    /// Many IPv6 /64s of one /48 (one network key) are one reporter, however
    /// established each of them is.
    #[test]
    fn established_reporters_of_one_slash_48_do_not_ban() {
        let mut h = Harness::new();
        let reporters = established(&mut h, 1, &[48, 48, 48, 48]);
        let bad = client_with_key(&mut h, 100, 100);
        for &r in &reporters {
            meet_and_report(&mut h, r, bad);
        }
        assert_eq!(refused_as_banned(&mut h, bad), None);
    }

    /// The attack of issue 13: three fresh addresses join a room with their
    /// victim (and two bystanders, so that all three reports count before a
    /// majority removes it) and report it. It is removed from the room (the
    /// room's own rule), but not banned from strangers, and neither is
    /// anyone else on its address.
    #[test]
    fn regression_three_fresh_room_members_cannot_ban_their_victim() {
        let mut h = Harness::new();
        let victim = client_with_key(&mut h, 100, 100);
        h.text(victim, r#"{"type":"room_join","room":"trap-room"}"#);
        h.take(victim);
        let attackers: Vec<ConnId> = (1..=3)
            .map(|k| client_with_key(&mut h, k, k as u8))
            .collect();
        for k in [1, 2, 3, 4, 5] {
            let a = ConnId(k);
            if k > 3 {
                client_with_key(&mut h, k, k as u8);
            }
            h.text(a, r#"{"type":"room_join","room":"trap-room"}"#);
            h.take(a);
        }
        for &a in &attackers {
            h.text(a, r#"{"type":"room_report","peer":1,"reason":"spam"}"#);
            assert!(h.error_codes(a).is_empty(), "each report counts");
        }
        assert_eq!(h.board.stats().reports_total, 3);
        let heard = h.take(victim);
        assert!(
            heard.iter().any(|m| matches!(
                m,
                ServerMsg::Error {
                    code: ErrorCode::Removed,
                    ..
                }
            )),
            "removed from the room: {heard:?}"
        );
        assert!(heard.contains(&ServerMsg::Idle));
        assert_eq!(refused_as_banned(&mut h, victim), None);
        // Another connection on the victim's address searches and is matched.
        let housemate = client_with_key(&mut h, 101, 100);
        h.search(housemate, &[]);
        let stranger = client_with_key(&mut h, 200, 200);
        h.search(stranger, &[]);
        assert!(h.matched(housemate).is_some());
        assert_eq!(h.board.stats().bans_total, 0);
    }

    /// Members of one room count as one reporter toward a ban, however
    /// established: five of them, three of whom report (a majority of the
    /// others), remove their victim from the room but cannot ban it.
    #[test]
    fn established_members_of_one_room_do_not_ban() {
        let mut h = Harness::new();
        let members = established(&mut h, 1, &[1, 2, 3, 4, 5]);
        let victim = client_with_key(&mut h, 100, 100);
        h.text(victim, r#"{"type":"room_join","room":"book-club"}"#);
        for &m in &members {
            h.text(m, r#"{"type":"room_join","room":"book-club"}"#);
        }
        for &m in &members[..3] {
            h.text(m, r#"{"type":"room_report","peer":1}"#);
        }
        assert!(h.error_codes(victim).contains(&ErrorCode::Removed));
        assert_eq!(h.board.stats().reports_total, 3);
        assert_eq!(refused_as_banned(&mut h, victim), None);
    }

    #[test]
    fn a_room_majority_removes_someone_for_good() {
        let mut h = Harness::new();
        let ids: Vec<ConnId> = (1..=4)
            .map(|i| client_with_key(&mut h, i, i as u8))
            .collect();
        for &id in &ids {
            h.text(id, r#"{"type":"room_join","room":"book-club"}"#);
        }
        let target_peer = 4; // the last to join
        for &id in &ids {
            h.take(id);
        }
        h.text(
            ids[0],
            &format!(r#"{{"type":"room_report","peer":{target_peer},"reason":"spam"}}"#),
        );
        assert!(h.take(ids[3]).is_empty(), "one of three is not a majority");
        // The same reporter again counts once.
        h.text(
            ids[0],
            &format!(r#"{{"type":"room_report","peer":{target_peer}}}"#),
        );
        assert!(h.take(ids[3]).is_empty());
        h.text(
            ids[1],
            &format!(r#"{{"type":"room_report","peer":{target_peer}}}"#),
        );
        assert_eq!(h.error_codes(ids[3]), [ErrorCode::Removed]);
        for &id in &ids[..3] {
            assert_eq!(h.take(id), [ServerMsg::PeerLeft { peer: target_peer }]);
        }
        h.text(ids[3], r#"{"type":"room_join","room":"book-club"}"#);
        assert_eq!(h.error_codes(ids[3]), [ErrorCode::Removed]);
        h.text(ids[0], r#"{"type":"room_report","peer":1}"#);
        assert_eq!(
            h.error_codes(ids[0]),
            [ErrorCode::UnknownPeer],
            "not oneself"
        );
    }

    #[test]
    fn one_network_may_hold_only_so_many_connections() {
        let mut h = Harness::new();
        for i in 0..20 {
            client_with_key(&mut h, i, 7);
        }
        assert!(h.closes().is_empty());
        h.board.connect(
            h.now,
            ConnId(99),
            ConnInfo {
                key: ClientKey([7; 16]),
                ..ConnInfo::default()
            },
        );
        h.pump();
        assert_eq!(h.closes(), [(ConnId(99), CloseReason::TooManyConnections)]);
        h.board.disconnect(h.now, ConnId(99));
        h.board.disconnect(h.now, ConnId(0));
        h.pump();
        client_with_key(&mut h, 100, 7);
        assert!(h.closes().is_empty(), "a slot freed up");
        client_with_key(&mut h, 200, 8);
        assert!(h.closes().is_empty(), "other networks are not affected");
    }

    #[test]
    fn searching_and_skipping_are_limited_per_client() {
        let mut h = Harness::new();
        let a = client_with_key(&mut h, 1, 1);
        let mut limited = None;
        for _ in 0..40 {
            h.search(a, &[]);
            let msgs = h.take(a);
            if let Some(ServerMsg::Error {
                code: ErrorCode::RateLimited,
                re: Some(ClientMsgType::Search),
                retry_after_ms,
                ..
            }) = msgs.first()
            {
                limited = *retry_after_ms;
                break;
            }
            h.text(a, r#"{"type":"end"}"#);
            h.take(a);
            // Stay under the message rate; only the search limit should bite.
            h.advance(Duration::from_millis(100));
        }
        assert!(
            limited.is_some_and(|ms| ms > 0 && ms <= 2000),
            "{limited:?}"
        );
    }
}
