//! Reports, bans, removals, per-client limits and proof of work, scene by
//! scene, each with its own model.

#[allow(unused_imports)]
use super::*;

/// What one call into the board did: each connection's messages, in order,
/// and the closes.
#[derive(Debug, Default)]
pub(crate) struct Heard {
    pub(crate) to: HashMap<ConnId, Vec<ServerMsg>>,
    pub(crate) closes: Vec<(ConnId, CloseReason)>,
}

impl Heard {
    pub(crate) fn of(&self, id: ConnId) -> &[ServerMsg] {
        self.to.get(&id).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn count(&self) -> usize {
        self.to.values().map(Vec::len).sum::<usize>() + self.closes.len()
    }
}

/// A board on a virtual clock for scenes. After every call it checks that
/// nothing was sent to a connection after its `Close` and that the board's
/// invariants hold; then, as the real shell does, it disconnects whatever
/// the board closed (which must be silent).
pub(crate) struct Scene {
    pub(crate) board: Switchboard,
    pub(crate) now: Instant,
    pub(crate) next_id: u64,
    /// Connections the shell has not disconnected, with their client keys.
    pub(crate) live: HashMap<ConnId, ClientKey>,
}

impl Scene {
    pub(crate) fn new(config: Config, seed: u64) -> Scene {
        let board = Switchboard::with_entropy(config, Entropy::new(splitmix(seed)));
        Scene {
            board,
            now: Instant::now(),
            next_id: 1,
            live: HashMap::new(),
        }
    }

    pub(crate) fn collect(&mut self) -> Result<Heard, TestCaseError> {
        let mut heard = Heard::default();
        while let Some(out) = self.board.poll_output() {
            match out {
                Output::Send(to, msg) => {
                    prop_assert!(
                        self.live.contains_key(&to),
                        "(d) {msg:?} sent to {to}, which is gone"
                    );
                    prop_assert!(
                        !heard.closes.iter().any(|&(c, _)| c == to),
                        "(d) {msg:?} sent to {to} after its Close: {heard:?}"
                    );
                    heard.to.entry(to).or_default().push(forget_re(msg));
                }
                Output::Backplane(r) => {
                    return Err(TestCaseError::fail(format!(
                        "a single node asked for a backplane: {r:?}"
                    )));
                }
                Output::Close(id, reason) => {
                    prop_assert!(
                        !heard.closes.iter().any(|&(c, _)| c == id),
                        "(d) {id} closed twice"
                    );
                    heard.closes.push((id, reason));
                }
            }
        }
        if let Err(e) = self.board.check_invariants() {
            return Err(TestCaseError::fail(format!("invariant broken: {e}")));
        }
        for &(id, _) in &heard.closes {
            self.live.remove(&id);
            self.board.disconnect(self.now, id);
            let after = self.board.poll_output();
            prop_assert!(after.is_none(), "disconnecting closed {id} said {after:?}");
        }
        Ok(heard)
    }

    /// A new connection of `key` (naming its `previous` key), silent so far.
    pub(crate) fn open(
        &mut self,
        key: ClientKey,
        previous: Option<ClientKey>,
    ) -> Result<(ConnId, Heard), TestCaseError> {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.live.insert(id, key);
        let info = ConnInfo {
            key,
            previous_key: previous,
            ..ConnInfo::default()
        };
        self.board.connect(self.now, id, info);
        Ok((id, self.collect()?))
    }

    /// A new connection of `key` that says hello and is welcomed.
    pub(crate) fn greeted(&mut self, key: ClientKey) -> Result<ConnId, TestCaseError> {
        let (id, heard) = self.open(key, None)?;
        prop_assert_eq!(heard.count(), 0, "connect said something: {:?}", heard);
        let heard = self.text(id, &hello(1))?;
        prop_assert!(
            matches!(heard.of(id), [ServerMsg::Welcome { .. }]) && heard.count() == 1,
            "hello answered with {heard:?}"
        );
        Ok(id)
    }

    pub(crate) fn text(&mut self, id: ConnId, text: &str) -> Result<Heard, TestCaseError> {
        self.board.handle_text(self.now, id, text);
        self.collect()
    }

    pub(crate) fn close_conn(&mut self, id: ConnId) -> Result<Heard, TestCaseError> {
        self.live.remove(&id);
        self.board.disconnect(self.now, id);
        self.collect()
    }

    /// Moves the clock on, running every due timeout.
    pub(crate) fn advance(&mut self, d: Duration) -> Result<Heard, TestCaseError> {
        let until = self.now + d;
        let mut heard = Heard::default();
        while let Some(at) = self.board.poll_timeout() {
            if at > until {
                break;
            }
            self.now = self.now.max(at);
            self.board.handle_timeout(self.now);
            let next = self.board.poll_timeout();
            prop_assert!(
                next.is_none_or(|next| next > self.now),
                "poll_timeout still due right after handle_timeout"
            );
            let h = self.collect()?;
            for (id, msgs) in h.to {
                heard.to.entry(id).or_default().extend(msgs);
            }
            heard.closes.extend(h.closes);
        }
        self.now = until;
        Ok(heard)
    }
}

pub(crate) fn key(n: u8) -> ClientKey {
    ClientKey([0x40 + n; 16])
}

pub(crate) const SEARCH: &str = r#"{"type":"search"}"#;
pub(crate) const END: &str = r#"{"type":"end"}"#;
pub(crate) const REPORT: &str = r#"{"type":"report"}"#;

pub(crate) fn room_report_text(peer: PeerId) -> String {
    json!({"type": "room_report", "peer": peer}).to_string()
}

pub(crate) fn join_text(room: &str) -> String {
    json!({"type": "room_join", "room": room}).to_string()
}

/// A config for scenes: no message rate limit or error budget to speak of,
/// generous per-client limits, proof of work off, two reporters for a ban.
pub(crate) fn scene_config() -> Config {
    Config {
        messages_per_second: 1000,
        message_burst: 1000,
        error_budget: 1000,
        moderation: ModConfig {
            strike_window: Duration::from_secs(30),
            reporters_for_ban: 2,
            weight_for_ban: 0,
            ban_lengths: vec![Duration::from_secs(60)],
            ..unweighed()
        },
        per_client: ClientLimits {
            connections: 100,
            connects: (1000, Duration::from_millis(1)),
            searches: (1000, Duration::from_millis(1)),
            reports: (1000, Duration::from_millis(1)),
            room_creations: (1000, Duration::from_millis(1)),
        },
        pow: PowConfig {
            mode: PowMode::Off,
            ..PowConfig::default()
        },
        ..Config::default()
    }
}

/// `a` and `b`, both idle, search and are matched with each other.
pub(crate) fn meet(s: &mut Scene, a: ConnId, b: ConnId) -> Result<CallId, TestCaseError> {
    let heard = s.text(a, SEARCH)?;
    prop_assert!(
        matches!(heard.of(a), [ServerMsg::Searching { .. }]),
        "{heard:?}"
    );
    let heard = s.text(b, SEARCH)?;
    let call = match heard.of(b) {
        [ServerMsg::Searching { .. }, ServerMsg::Matched { call, .. }] => *call,
        other => return Err(TestCaseError::fail(format!("{b} not matched: {other:?}"))),
    };
    prop_assert!(
        matches!(heard.of(a), [ServerMsg::Matched { call: c, .. }] if *c == call),
        "{a} not matched with {b}: {heard:?}"
    );
    Ok(call)
}

/// (b) Found by `random_sessions_reach_calls_skips_and_relays` (fixed in
/// 207153d): a client banned while one of its connections waited in the
/// queue was matched from there. PROTOCOL.md: reports "ban it from matching".
#[test]
pub(crate) fn a_banned_client_already_waiting_is_not_matched() {
    let run = || -> Result<(), TestCaseError> {
        let mut s = Scene::new(scene_config(), 1);
        let [a0, a1] = [s.greeted(key(0))?, s.greeted(key(0))?];
        let [b, c, d] = [s.greeted(key(1))?, s.greeted(key(2))?, s.greeted(key(3))?];
        meet(&mut s, a0, b)?;
        s.text(b, REPORT)?; // a0 is back in the queue
        let heard = s.text(c, SEARCH)?;
        prop_assert!(
            matches!(heard.of(c), [_, ServerMsg::Matched { .. }]),
            "c not matched with a0: {heard:?}"
        );
        s.text(a1, SEARCH)?; // a1 waits
        let heard = s.text(c, REPORT)?; // the second reporter: A is banned
        prop_assert!(
            matches!(
                heard.of(a0),
                [
                    ServerMsg::CallEnded { .. },
                    ServerMsg::Error {
                        code: ErrorCode::Banned,
                        ..
                    },
                    ServerMsg::Idle
                ]
            ),
            "{heard:?}"
        );
        let heard = s.text(d, SEARCH)?;
        prop_assert!(
            !heard
                .to
                .values()
                .flatten()
                .any(|m| matches!(m, ServerMsg::Matched { .. })),
            "(b) banned client A's waiting connection {a1} was matched with {d}: {heard:?}"
        );
        Ok(())
    };
    run().unwrap();
}

/// (d) `banned`, `removed` and `pow_invalid` count against the error
/// budget; when one of them uses it up, the connection is closed, and
/// nothing may follow (no `idle`, no new `challenge`). Each of the three
/// used to send one more message after the `Close` (fixed in 207153d).
#[test]
pub(crate) fn nothing_follows_a_close_for_too_many_errors() {
    let tight = || Config {
        error_budget: 2,
        ..scene_config()
    };
    // A banned client's search.
    let banned_search = || -> Result<(), TestCaseError> {
        let mut s = Scene::new(tight(), 2);
        let [a, b, c] = [s.greeted(key(0))?, s.greeted(key(1))?, s.greeted(key(2))?];
        meet(&mut s, a, b)?;
        s.text(b, REPORT)?;
        s.text(a, END)?;
        meet(&mut s, a, c)?;
        s.text(c, REPORT)?; // banned: a hears banned, idle (one error)
        s.text(a, "junk")?; // a second error: the budget is used up
        s.text(a, SEARCH)?; // banned again: over the budget
        Ok(())
    };
    // A removal.
    let removal = || -> Result<(), TestCaseError> {
        let mut s = Scene::new(tight(), 3);
        let [t, r] = [s.greeted(key(0))?, s.greeted(key(1))?];
        s.text(t, &join_text("some-room"))?;
        s.text(r, &join_text("some-room"))?;
        s.text(t, "junk")?;
        s.text(t, "junk")?;
        s.text(r, &room_report_text(1))?;
        Ok(())
    };
    // A wrong proof of work.
    let pow_invalid = || -> Result<(), TestCaseError> {
        let mut s = Scene::new(
            Config {
                pow: PowConfig {
                    mode: PowMode::Always,
                    base_maxnumber: 50,
                    ..PowConfig::default()
                },
                ..tight()
            },
            4,
        );
        let (a, _) = s.open(key(0), None)?;
        s.text(a, "junk")?;
        s.text(a, "junk")?;
        let forged = PowSolution {
            salt: "0123456789abcdef?expires=99999999".into(),
            number: 7,
            challenge: "ab".repeat(32),
            signature: "cd".repeat(32),
        };
        s.text(
            a,
            &json!({"type": "hello", "version": 1, "pow": pow_json(&forged)}).to_string(),
        )?;
        Ok(())
    };
    let mut failures = Vec::new();
    for (name, f) in [
        (
            "banned search",
            &banned_search as &dyn Fn() -> Result<(), TestCaseError>,
        ),
        ("removal", &removal),
        ("pow_invalid", &pow_invalid),
    ] {
        if let Err(e) = f() {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Counts of what the scene properties exercised, for the coverage test.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SceneCounts {
    /// (b) Stranger and room reports of the target that counted.
    pub(crate) target_reports: u64,
    /// Reports by a reporter who had reported the target before: once.
    pub(crate) target_repeats: u64,
    /// Searches refused as banned during the first, second, third+ ban.
    pub(crate) banned_first: u64,
    pub(crate) banned_second: u64,
    pub(crate) banned_third: u64,
    /// A reporter and the target both searching but kept apart.
    pub(crate) kept_apart: u64,
    /// The target searching again after a ban ended.
    pub(crate) after_ban: u64,
    /// Reports that ended the call and banned the partner at once.
    pub(crate) banned_on_requeue: u64,
    /// Bans or blocks carried over to a new key.
    pub(crate) carried_over: u64,
    /// (c) Removals, room reports short of one, refused rejoins (also of the
    /// removed client's other connection), removals only after a member left.
    pub(crate) removals: u64,
    pub(crate) room_reports: u64,
    pub(crate) removed_rejoins: u64,
    pub(crate) removed_other_conn: u64,
    /// (d) Closed at connect for the connection cap or the connect limit;
    /// `rate_limited` on search, skip, report, room creation.
    pub(crate) cap_closes: u64,
    pub(crate) connect_closes: u64,
    pub(crate) searches_limited: u64,
    pub(crate) skips_limited: u64,
    pub(crate) reports_limited: u64,
    pub(crate) creations_limited: u64,
    /// ... while another client did the same thing unhindered.
    pub(crate) other_key_fine: u64,
    /// (e) Challenges; welcomes for a solution; rejected reused, forged,
    /// expired solutions; with `Auto`: challenges only for a crowded client,
    /// only for recent abuse, only for load, and plain welcomes. Hello
    /// timeouts, and welcomes after `hello_timeout` thanks to a challenge.
    pub(crate) hello_timeouts: u64,
    pub(crate) late_welcomes: u64,
    pub(crate) challenges: u64,
    pub(crate) solved: u64,
    pub(crate) reused: u64,
    pub(crate) forged: u64,
    pub(crate) expired: u64,
    pub(crate) auto_crowded: u64,
    pub(crate) auto_abuse: u64,
    pub(crate) auto_load: u64,
    pub(crate) auto_plain: u64,
}

impl SceneCounts {
    pub(crate) fn add(&mut self, o: &SceneCounts) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            target_reports,
            target_repeats,
            banned_first,
            banned_second,
            banned_third,
            kept_apart,
            after_ban,
            banned_on_requeue,
            carried_over,
            removals,
            room_reports,
            removed_rejoins,
            removed_other_conn,
            cap_closes,
            connect_closes,
            searches_limited,
            skips_limited,
            reports_limited,
            creations_limited,
            other_key_fine,
            hello_timeouts,
            late_welcomes,
            challenges,
            solved,
            reused,
            forged,
            expired,
            auto_crowded,
            auto_abuse,
            auto_load,
            auto_plain
        );
    }
}

// --- (b) bans -------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) enum BanOp {
    /// Reporter `r` reports the target: in a stranger call if the two can
    /// still meet, or else (or with `room`) in a room of their own, `times`
    /// times.
    Report {
        reporter: usize,
        room: bool,
        times: usize,
    },
    /// The target searches, then ends.
    Search,
    /// The target's client comes back under a new key naming the old one.
    Rotate,
    Advance(Duration),
}

pub(crate) const REPORTERS: usize = 8;

pub(crate) fn ban_config() -> Config {
    let base = scene_config();
    Config {
        moderation: ModConfig {
            strike_window: Duration::from_secs(10),
            reporters_for_ban: 2,
            weight_for_ban: 0,
            ban_lengths: vec![
                Duration::from_secs(2),
                Duration::from_secs(5),
                Duration::from_secs(9),
            ],
            ..unweighed()
        },
        // Two members: a room report never removes anyone here.
        rooms: RoomConfig {
            report_majority: (1, 1),
            ..RoomConfig::default()
        },
        ..base
    }
}

pub(crate) fn ban_ops() -> impl Strategy<Value = Vec<BanOp>> {
    let op = prop_oneof![
        8 => (0..REPORTERS, prop::bool::weighted(0.3), 1usize..=2)
            .prop_map(|(reporter, room, times)| BanOp::Report { reporter, room, times }),
        3 => Just(BanOp::Search),
        1 => Just(BanOp::Rotate),
        4 => (0u64..=12).prop_map(|q| BanOp::Advance(Duration::from_millis(500 * q))),
    ];
    prop::collection::vec(op, 1..=40)
}

/// (a), (b): the target is reported by reporters one after another; the
/// model (`ModModel`) says when it is banned and for how long. Checks that
/// a report ends the call for both at once (reporter `idle`; target
/// `call_ended` `partner_ended`, then `searching` or `banned` + `idle`), that
/// a reporter and the target never meet again (also after the target's key
/// rotates), that a search while banned is refused with exactly the time
/// left, and that the target can search again once the ban is over.
pub(crate) fn run_bans(ops: &[BanOp]) -> Result<SceneCounts, TestCaseError> {
    let config = ban_config();
    let mut model = ModModel::new(&config.moderation);
    let mut s = Scene::new(config, 11);
    let mut c = SceneCounts::default();
    let mut target_key = key(100);
    let mut target = s.greeted(target_key)?;
    let mut reporters = Vec::new();
    for i in 0..REPORTERS as u8 {
        reporters.push((key(i), s.greeted(key(i))?));
    }
    let mut rotations = 0u8;
    let mut rooms = 0;
    let mut ever_banned = false;
    let banned_msgs = |retry| vec![error_msg(ErrorCode::Banned, Some(retry)), ServerMsg::Idle];
    for op in ops {
        let now = s.now;
        match *op {
            BanOp::Report {
                reporter,
                room,
                times,
            } => {
                let (rk, r) = reporters[reporter];
                let meet_first = !room && model.ban_retry(now, target_key).is_none();
                let mut in_call = None;
                if meet_first {
                    let heard = s.text(target, SEARCH)?;
                    prop_assert!(
                        matches!(heard.of(target), [ServerMsg::Searching { .. }]),
                        "the target may search: {heard:?}"
                    );
                    let heard = s.text(r, SEARCH)?;
                    if model.blocked(rk, target_key) {
                        // (a) Never matched again.
                        prop_assert_eq!(heard.count(), 1, "(a) a reporter met the target again");
                        prop_assert!(
                            matches!(heard.of(r), [ServerMsg::Searching { .. }]),
                            "{heard:?}"
                        );
                        c.kept_apart += 1;
                        s.text(r, END)?;
                        s.text(target, END)?;
                    } else {
                        let call = match heard.of(r) {
                            [ServerMsg::Searching { .. }, ServerMsg::Matched { call, .. }] => *call,
                            other => {
                                return Err(TestCaseError::fail(format!(
                                    "reporter not matched with the target: {other:?}"
                                )));
                            }
                        };
                        in_call = Some(call);
                    }
                }
                if let Some(call) = in_call {
                    let heard = s.text(r, REPORT)?;
                    let (counted, ban) = model.report(now, rk, target_key, None);
                    prop_assert!(counted, "a first report by a new reporter");
                    c.target_reports += 1;
                    prop_assert_eq!(heard.of(r), &[ServerMsg::Idle][..], "(a) the reporter");
                    let mut want = vec![ServerMsg::CallEnded {
                        call,
                        reason: EndReason::PartnerEnded,
                    }];
                    match ban {
                        Some(until) => {
                            want.extend(banned_msgs(retry_ms(until - now)));
                            c.banned_on_requeue += 1;
                            ever_banned = true;
                        }
                        None => want.push(ServerMsg::Searching { interests: vec![] }),
                    }
                    prop_assert_eq!(heard.of(target), &want[..], "(a), (b) the reported partner");
                    prop_assert_eq!(heard.count(), 1 + want.len());
                    if ban.is_none() {
                        s.text(target, END)?;
                    }
                } else if room || !meet_first || model.blocked(rk, target_key) {
                    // In a room of their own: the target first, then the reporter.
                    rooms += 1;
                    let name = format!("ban-room-{rooms}");
                    let heard = s.text(target, &join_text(&name))?;
                    prop_assert!(
                        matches!(heard.of(target), [ServerMsg::RoomJoined { peer: 1, .. }]),
                        "a banned client may still use rooms: {heard:?}"
                    );
                    s.text(r, &join_text(&name))?;
                    for _ in 0..times {
                        let heard = s.text(r, &room_report_text(1))?;
                        let (counted, ban) = model.report(s.now, rk, target_key, Some(&name));
                        prop_assert_eq!(heard.count(), 0, "a room report is not answered");
                        if counted {
                            c.target_reports += 1;
                        } else {
                            c.target_repeats += 1;
                        }
                        ever_banned |= ban.is_some();
                    }
                    s.text(r, END)?;
                    s.text(target, END)?;
                }
            }
            BanOp::Search => {
                let heard = s.text(target, SEARCH)?;
                match model.bans.get(&target_key).copied() {
                    Some((n, until)) if until > now => {
                        prop_assert_eq!(
                            heard.of(target),
                            &banned_msgs(retry_ms(until - now))[..],
                            "(b) a banned search is not refused with the time left"
                        );
                        match n {
                            1 => c.banned_first += 1,
                            2 => c.banned_second += 1,
                            _ => c.banned_third += 1,
                        }
                    }
                    _ => {
                        prop_assert!(
                            matches!(heard.of(target), [ServerMsg::Searching { .. }]),
                            "(b) the target may search: {heard:?}"
                        );
                        c.after_ban += u64::from(ever_banned);
                        s.text(target, END)?;
                    }
                }
            }
            BanOp::Rotate => {
                s.close_conn(target)?;
                rotations += 1;
                let new_key = key(100 + rotations);
                let (id, heard) = s.open(new_key, Some(target_key))?;
                prop_assert_eq!(heard.count(), 0);
                s.text(id, &hello(1))?;
                c.carried_over += u64::from(
                    model.banned_until(now, target_key).is_some()
                        || model.blocks.iter().any(|&(_, b)| b == target_key),
                );
                model.carry_over(target_key, new_key);
                target_key = new_key;
                target = id;
            }
            BanOp::Advance(d) => {
                let heard = s.advance(d)?;
                prop_assert_eq!(heard.count(), 0, "time alone said something");
            }
        }
        let stats = s.board.stats();
        prop_assert_eq!(stats.bans_total, model.bans_total, "bans");
        prop_assert_eq!(stats.reports_total, model.reports_total, "reports");
        prop_assert_eq!(stats.waiting, 0);
    }
    Ok(c)
}

// --- (c) removal from rooms ------------------------------------------------

pub(crate) const ROOM_SLOTS: usize = 7;
/// Slots 5 and 6 are one client.
pub(crate) const ROOM_SLOT_KEY: [u8; ROOM_SLOTS] = [0, 1, 2, 3, 4, 5, 5];
pub(crate) const THE_ROOM: &str = "the-room";

#[derive(Debug, Clone)]
pub(crate) enum RoomOp {
    Join(usize),
    Leave(usize),
    /// `by` reports the peer id of slot `of` (whatever it is now).
    Report {
        by: usize,
        of: usize,
    },
    /// The slot's connection goes away; a fresh one of the same client says hello.
    Reconnect(usize),
}

pub(crate) fn room_ops() -> impl Strategy<Value = (u32, u32, Vec<RoomOp>)> {
    let slot = || 0..ROOM_SLOTS;
    let op = prop_oneof![
        4 => slot().prop_map(RoomOp::Join),
        1 => slot().prop_map(RoomOp::Leave),
        5 => (slot(), slot()).prop_map(|(by, of)| RoomOp::Report { by, of }),
        1 => slot().prop_map(RoomOp::Reconnect),
    ];
    (
        select(&[(1u32, 2u32), (2, 3), (1, 3), (3, 4), (1, 1)][..]),
        prop::collection::vec(op, 1..=50),
    )
        .prop_map(|((num, den), ops)| (num, den, ops))
}

/// The room as its members were told: in joining order.
#[derive(Debug, Default)]
pub(crate) struct RoomModel {
    pub(crate) members: Vec<(PeerId, usize)>,
    pub(crate) next_peer: PeerId,
    pub(crate) reports: HashMap<PeerId, Vec<PeerId>>,
    pub(crate) removed: HashSet<u8>,
    pub(crate) removed_slots: HashSet<usize>,
    /// Peer ids that left.
    pub(crate) departed: Vec<PeerId>,
}

/// (c) One room, seven slots (two of them one client), reports from anyone
/// of anyone: the target is removed exactly when more than `num/den` of
/// the other current members have reported it (counted when a report
/// arrives); it gets `removed` then `idle`, everyone else `peer_left`; its
/// client (either connection) is refused with `removed` while the room
/// lives, and may join again once the room was forgotten. A report that
/// removes nobody is not answered.
pub(crate) fn run_rooms(num: u32, den: u32, ops: &[RoomOp]) -> Result<SceneCounts, TestCaseError> {
    let max_size = 6;
    let config = Config {
        rooms: RoomConfig {
            max_size,
            report_majority: (num, den),
            ..RoomConfig::default()
        },
        ..scene_config()
    };
    let mut s = Scene::new(config, 13);
    let mut c = SceneCounts::default();
    let mut conns = Vec::new();
    for k in ROOM_SLOT_KEY {
        conns.push(s.greeted(key(k))?);
    }
    let mut room: Option<RoomModel> = None;
    let peer_of = |room: &Option<RoomModel>, slot: usize| {
        room.as_ref()
            .and_then(|r| r.members.iter().find(|m| m.1 == slot).map(|m| m.0))
    };
    for op in ops {
        match *op {
            RoomOp::Join(slot) => {
                let id = conns[slot];
                let heard = s.text(id, &join_text(THE_ROOM))?;
                if peer_of(&room, slot).is_some() {
                    prop_assert_eq!(
                        heard.of(id),
                        &[ServerMsg::error(ErrorCode::AlreadyInRoom)][..]
                    );
                    continue;
                }
                let r = room.get_or_insert_with(|| RoomModel {
                    next_peer: 1,
                    ..RoomModel::default()
                });
                if r.removed.contains(&ROOM_SLOT_KEY[slot]) {
                    prop_assert_eq!(
                        heard.of(id),
                        &[ServerMsg::error(ErrorCode::Removed)][..],
                        "(c) a removed client came back"
                    );
                    prop_assert_eq!(heard.count(), 1);
                    c.removed_rejoins += 1;
                    c.removed_other_conn += u64::from(!r.removed_slots.contains(&slot));
                    continue;
                }
                if r.members.len() >= max_size {
                    prop_assert_eq!(heard.of(id), &[ServerMsg::error(ErrorCode::RoomFull)][..]);
                    continue;
                }
                let peer = r.next_peer;
                r.next_peer += 1;
                prop_assert_eq!(
                    heard.of(id),
                    &[ServerMsg::RoomJoined {
                        room: THE_ROOM.into(),
                        peer,
                        peers: r.members.iter().map(|m| m.0).collect(),
                        locked: false,
                        max_size,
                    }][..]
                );
                for &(_, other) in &r.members {
                    prop_assert_eq!(
                        heard.of(conns[other]),
                        &[ServerMsg::PeerJoined { peer }][..]
                    );
                }
                prop_assert_eq!(heard.count(), r.members.len() + 1);
                r.members.push((peer, slot));
            }
            RoomOp::Leave(slot) | RoomOp::Reconnect(slot) => {
                let id = conns[slot];
                let heard = if matches!(op, RoomOp::Leave(_)) {
                    let heard = s.text(id, END)?;
                    prop_assert_eq!(heard.of(id), &[ServerMsg::Idle][..]);
                    heard
                } else {
                    s.close_conn(id)?
                };
                if let Some(peer) = peer_of(&room, slot) {
                    let r = room.as_mut().expect("a member's room");
                    r.members.retain(|m| m.1 != slot);
                    r.departed.push(peer);
                    for &(_, other) in &r.members {
                        prop_assert_eq!(
                            heard.of(conns[other]),
                            &[ServerMsg::PeerLeft { peer }][..]
                        );
                    }
                    if r.members.is_empty() {
                        // Forgotten, with its list of removed clients.
                        room = None;
                    }
                }
                if let RoomOp::Reconnect(slot) = *op {
                    conns[slot] = s.greeted(key(ROOM_SLOT_KEY[slot]))?;
                }
            }
            RoomOp::Report { by, of } => {
                let id = conns[by];
                let own = peer_of(&room, by);
                // Whatever `of` is now: a member's id, a departed one, or 99.
                let target = peer_of(&room, of)
                    .or_else(|| room.as_ref().and_then(|r| r.departed.last().copied()))
                    .unwrap_or(99);
                let heard = s.text(id, &room_report_text(target))?;
                let Some(own) = own else {
                    prop_assert_eq!(heard.of(id), &[ServerMsg::error(ErrorCode::NotInRoom)][..]);
                    continue;
                };
                let r = room.as_mut().expect("the reporter's room");
                let target_slot = r.members.iter().find(|m| m.0 == target).map(|m| m.1);
                let Some(target_slot) = target_slot.filter(|_| target != own) else {
                    prop_assert_eq!(
                        heard.of(id),
                        &[ServerMsg::error(ErrorCode::UnknownPeer)][..]
                    );
                    continue;
                };
                let by_list = r.reports.entry(target).or_default();
                if !by_list.contains(&own) {
                    by_list.push(own);
                }
                let present = by_list
                    .iter()
                    .filter(|p| r.members.iter().any(|m| m.0 == **p))
                    .count() as u64;
                let others = r.members.len() as u64 - 1;
                if present * u64::from(den) <= others * u64::from(num) {
                    prop_assert_eq!(heard.count(), 0, "(c) removal too early: {:?}", heard);
                    c.room_reports += 1;
                    continue;
                }
                let tid = conns[target_slot];
                prop_assert_eq!(
                    heard.of(tid),
                    &[error_msg(ErrorCode::Removed, None), ServerMsg::Idle][..],
                    "(c) the removed member ({}/{} of {} reported it, majority {}/{})",
                    present,
                    others,
                    others + 1,
                    num,
                    den
                );
                r.members.retain(|m| m.1 != target_slot);
                r.departed.push(target);
                r.reports.remove(&target);
                for &(_, other) in &r.members {
                    prop_assert_eq!(
                        heard.of(conns[other]),
                        &[ServerMsg::PeerLeft { peer: target }][..]
                    );
                }
                prop_assert_eq!(heard.count(), r.members.len() + 2);
                r.removed.insert(ROOM_SLOT_KEY[target_slot]);
                r.removed_slots.insert(target_slot);
                c.removals += 1;
            }
        }
        prop_assert_eq!(s.board.stats().rooms, usize::from(room.is_some()));
    }
    Ok(c)
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn bans_follow_distinct_reporters_and_escalate(ops in ban_ops()) {
        run_bans(&ops)?;
    }

    #[test]
    fn room_reports_remove_exactly_on_a_majority((num, den, ops) in room_ops()) {
        run_rooms(num, den, &ops)?;
    }
}

/// `n` values of `strategy` from a fixed seed.
pub(crate) fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// The scene properties reach what they are about: run a fixed-seed sample
/// of each and count.
#[test]
pub(crate) fn scene_properties_reach_bans_removals_limits_and_pow() {
    let mut total = SceneCounts::default();
    for ops in sample(ban_ops(), 256) {
        total.add(&run_bans(&ops).unwrap_or_else(|e| panic!("{e}\n{ops:?}")));
    }
    for (num, den, ops) in sample(room_ops(), 256) {
        total.add(&run_rooms(num, den, &ops).unwrap_or_else(|e| panic!("{e}\n{ops:?}")));
    }
    for ops in sample(limit_ops(), 256) {
        total.add(&run_limits(&ops).unwrap_or_else(|e| panic!("{e}\n{ops:?}")));
    }
    for (always, ops) in sample(pow_ops(), 256) {
        total.add(&run_pow(always, &ops).unwrap_or_else(|e| panic!("{e}\n{ops:?}")));
    }
    println!("{total:#?}");
    let t = &total;
    let at_least = [
        ("target_reports", t.target_reports, 500),
        ("target_repeats", t.target_repeats, 500),
        ("banned_first", t.banned_first, 50),
        ("banned_second", t.banned_second, 50),
        ("banned_third", t.banned_third, 50),
        ("kept_apart", t.kept_apart, 100),
        ("after_ban", t.after_ban, 100),
        ("banned_on_requeue", t.banned_on_requeue, 100),
        ("carried_over", t.carried_over, 100),
        ("removals", t.removals, 25),
        ("room_reports", t.room_reports, 150),
        ("removed_rejoins", t.removed_rejoins, 20),
        ("removed_other_conn", t.removed_other_conn, 3),
        ("cap_closes", t.cap_closes, 40),
        ("connect_closes", t.connect_closes, 100),
        ("searches_limited", t.searches_limited, 40),
        ("skips_limited", t.skips_limited, 15),
        ("reports_limited", t.reports_limited, 3),
        ("creations_limited", t.creations_limited, 15),
        ("other_key_fine", t.other_key_fine, 40),
        ("hello_timeouts", t.hello_timeouts, 50),
        ("late_welcomes", t.late_welcomes, 10),
        ("challenges", t.challenges, 300),
        ("solved", t.solved, 100),
        ("reused", t.reused, 50),
        ("forged", t.forged, 100),
        ("expired", t.expired, 20),
        ("auto_crowded", t.auto_crowded, 20),
        ("auto_abuse", t.auto_abuse, 30),
        ("auto_load", t.auto_load, 20),
        ("auto_plain", t.auto_plain, 60),
    ];
    for (name, n, min) in at_least {
        assert!(n >= min, "{name}: {n} < {min}");
    }
}

// --- (d) per-client limits ---------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) enum LimitOp {
    /// A new connection of client `n`, which says hello if it stays open.
    Connect(u8),
    /// The shell drops one of the open connections (by index, modulo).
    Drop(usize),
    Search(usize),
    Skip(usize),
    End(usize),
    Report(usize),
    /// Join a room that does not exist yet.
    CreateRoom(usize),
    Advance(Duration),
}

pub(crate) const LIMIT_CLIENTS: u8 = 3;

pub(crate) fn limit_config() -> Config {
    let base = scene_config();
    Config {
        per_client: ClientLimits {
            connections: 3,
            connects: (2, Duration::from_millis(1500)),
            searches: (2, Duration::from_millis(500)),
            reports: (1, Duration::from_secs(3)),
            room_creations: (2, Duration::from_secs(2)),
        },
        // Blocks, but never a ban.
        moderation: ModConfig {
            reporters_for_ban: 100,
            ..base.moderation.clone()
        },
        ..base
    }
}

pub(crate) fn limit_ops() -> impl Strategy<Value = Vec<LimitOp>> {
    let conn = || 0usize..8;
    let op = prop_oneof![
        4 => (0..LIMIT_CLIENTS).prop_map(LimitOp::Connect),
        1 => conn().prop_map(LimitOp::Drop),
        6 => conn().prop_map(LimitOp::Search),
        3 => conn().prop_map(LimitOp::Skip),
        3 => conn().prop_map(LimitOp::End),
        2 => conn().prop_map(LimitOp::Report),
        3 => conn().prop_map(LimitOp::CreateRoom),
        3 => (0u64..=8).prop_map(|q| LimitOp::Advance(Duration::from_millis(125 * q))),
    ];
    prop::collection::vec(op, 1..=80)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LPhase {
    Idle,
    Searching,
    InCall(CallId),
    InRoom,
}

/// (d) Three clients, each with up to a few connections, under small
/// per-client limits: a connection over the client's cap of open
/// connections, or over its connect limit, is closed right at connect with
/// `TooManyConnections` and nothing else; `search` and `skip` (together),
/// `report` and creating rooms over the client's limits are answered
/// `rate_limited` with exactly the wait, across its connections, and with
/// no other effect (a limited skip leaves the call as it is; a limited
/// report still ends it, and `rate_limited` follows the `idle`). Each
/// client's limits are its own: every prediction is per client.
pub(crate) fn run_limits(ops: &[LimitOp]) -> Result<SceneCounts, TestCaseError> {
    let config = limit_config();
    let limits = config.per_client.clone();
    let mut s = Scene::new(config, 17);
    let mut c = SceneCounts::default();
    // Open connections: id, client, phase as told.
    let mut conns: Vec<(ConnId, u8, LPhase)> = Vec::new();
    let mut allowances: HashMap<(u8, u8), Allowance> = HashMap::new();
    // The latest refusal: (what, client, when), for `other_key_fine`.
    let mut last_limited: Option<(u8, u8, Instant)> = None;
    let mut rooms = 0;
    const CONNECTS: u8 = 0;
    const SEARCHES: u8 = 1;
    const REPORTS: u8 = 2;
    const CREATIONS: u8 = 3;
    let limited = |wait: Duration| vec![error_msg(ErrorCode::RateLimited, Some(retry_ms(wait)))];
    for op in ops {
        let now = s.now;
        let pick = |i: usize, conns: &[(ConnId, u8, LPhase)]| {
            (!conns.is_empty()).then(|| conns[i % conns.len()])
        };
        let mut take = |client: u8, what: u8| {
            let limit = match what {
                CONNECTS => limits.connects,
                SEARCHES => limits.searches,
                REPORTS => limits.reports,
                _ => limits.room_creations,
            };
            let result = allowance(&mut allowances, (client, what), limit).take(now);
            if result.is_err() {
                last_limited = Some((what, client, now));
            } else if last_limited.is_some_and(|(w, cl, at)| w == what && cl != client && at == now)
            {
                c.other_key_fine += 1;
            }
            result
        };
        let heard = match *op {
            LimitOp::Connect(client) => {
                let open = conns.iter().filter(|x| x.1 == client).count();
                let over_cap = open + 1 > limits.connections;
                let refused = over_cap || take(client, CONNECTS).is_err();
                let (id, heard) = s.open(key(client), None)?;
                if refused {
                    prop_assert_eq!(
                        &heard.closes,
                        &vec![(id, CloseReason::TooManyConnections)],
                        "(d) not closed at connect"
                    );
                    prop_assert_eq!(heard.count(), 1);
                    if over_cap {
                        c.cap_closes += 1;
                    } else {
                        c.connect_closes += 1;
                    }
                    continue;
                }
                prop_assert_eq!(
                    heard.count(),
                    0,
                    "(d) connect within the limits said something"
                );
                let heard = s.text(id, &hello(1))?;
                prop_assert!(
                    matches!(heard.of(id), [ServerMsg::Welcome { .. }]),
                    "{heard:?}"
                );
                conns.push((id, client, LPhase::Idle));
                continue;
            }
            LimitOp::Drop(i) => {
                let Some((id, ..)) = pick(i, &conns) else {
                    continue;
                };
                conns.retain(|x| x.0 != id);
                s.close_conn(id)?
            }
            LimitOp::Search(i) => {
                let Some((id, client, phase)) = pick(i, &conns) else {
                    continue;
                };
                let heard = s.text(id, SEARCH)?;
                let busy = match phase {
                    LPhase::Idle => None,
                    LPhase::Searching => Some(ErrorCode::AlreadySearching),
                    LPhase::InCall(_) => Some(ErrorCode::AlreadyInCall),
                    LPhase::InRoom => Some(ErrorCode::AlreadyInRoom),
                };
                if let Some(code) = busy {
                    prop_assert_eq!(heard.of(id), &[ServerMsg::error(code)][..]);
                    continue;
                }
                if let Err(wait) = take(client, SEARCHES) {
                    prop_assert_eq!(
                        heard.of(id),
                        &limited(wait)[..],
                        "(d) search over the limit"
                    );
                    prop_assert_eq!(heard.count(), 1);
                    c.searches_limited += 1;
                    continue;
                }
                prop_assert!(
                    matches!(heard.of(id).first(), Some(ServerMsg::Searching { .. })),
                    "(d) a search within the limit: {heard:?}"
                );
                heard
            }
            LimitOp::Skip(i) | LimitOp::Report(i) => {
                let Some((id, client, phase)) = pick(i, &conns) else {
                    continue;
                };
                let skip = matches!(op, LimitOp::Skip(_));
                let heard = s.text(id, if skip { r#"{"type":"skip"}"# } else { REPORT })?;
                let LPhase::InCall(call) = phase else {
                    prop_assert_eq!(heard.of(id), &[ServerMsg::error(ErrorCode::NotInCall)][..]);
                    continue;
                };
                let partner = conns
                    .iter()
                    .find(|x| x.0 != id && x.2 == LPhase::InCall(call))
                    .expect("a partner")
                    .0;
                let wait = take(client, if skip { SEARCHES } else { REPORTS }).err();
                if skip {
                    if let Some(wait) = wait {
                        prop_assert_eq!(
                            heard.of(id),
                            &limited(wait)[..],
                            "(d) skip over the limit"
                        );
                        prop_assert_eq!(heard.count(), 1, "(d) a limited skip did something");
                        c.skips_limited += 1;
                        continue;
                    }
                    prop_assert!(
                        matches!(heard.of(id).first(), Some(ServerMsg::Searching { .. })),
                        "(d) a skip within the limit: {heard:?}"
                    );
                } else {
                    let mut want = vec![ServerMsg::Idle];
                    if let Some(wait) = wait {
                        want.extend(limited(wait));
                        c.reports_limited += 1;
                    }
                    prop_assert_eq!(heard.of(id), &want[..], "(d) report");
                }
                let reason = if skip {
                    EndReason::PartnerSkipped
                } else {
                    EndReason::PartnerEnded
                };
                prop_assert_eq!(
                    heard.of(partner).first(),
                    Some(&ServerMsg::CallEnded { call, reason })
                );
                heard
            }
            LimitOp::CreateRoom(i) => {
                let Some((id, client, phase)) = pick(i, &conns) else {
                    continue;
                };
                rooms += 1;
                let name = format!("limit-room-{rooms}");
                let heard = s.text(id, &join_text(&name))?;
                let busy = match phase {
                    LPhase::Idle => None,
                    LPhase::Searching => Some(ErrorCode::AlreadySearching),
                    LPhase::InCall(_) => Some(ErrorCode::AlreadyInCall),
                    LPhase::InRoom => Some(ErrorCode::AlreadyInRoom),
                };
                if let Some(code) = busy {
                    prop_assert_eq!(heard.of(id), &[ServerMsg::error(code)][..]);
                    continue;
                }
                if let Err(wait) = take(client, CREATIONS) {
                    prop_assert_eq!(heard.of(id), &limited(wait)[..], "(d) room creation");
                    c.creations_limited += 1;
                    continue;
                }
                prop_assert!(
                    matches!(heard.of(id), [ServerMsg::RoomJoined { .. }]),
                    "(d) a room creation within the limit: {heard:?}"
                );
                heard
            }
            LimitOp::End(i) => {
                let Some((id, ..)) = pick(i, &conns) else {
                    continue;
                };
                let heard = s.text(id, END)?;
                prop_assert_eq!(heard.of(id).last(), Some(&ServerMsg::Idle));
                heard
            }
            LimitOp::Advance(d) => s.advance(d)?,
        };
        // Learn the phases from what everyone heard.
        for (id, msgs) in &heard.to {
            let Some(conn) = conns.iter_mut().find(|x| x.0 == *id) else {
                return Err(TestCaseError::fail(format!("{id} is not open: {msgs:?}")));
            };
            for m in msgs {
                conn.2 = match m {
                    ServerMsg::Searching { .. } => LPhase::Searching,
                    ServerMsg::Matched { call, .. } => LPhase::InCall(*call),
                    ServerMsg::CallEnded { .. } | ServerMsg::Idle => LPhase::Idle,
                    ServerMsg::RoomJoined { .. } => LPhase::InRoom,
                    _ => conn.2,
                };
            }
        }
        prop_assert!(heard.closes.is_empty(), "{:?}", heard.closes);
        let waiting = conns.iter().filter(|x| x.2 == LPhase::Searching).count();
        prop_assert_eq!(s.board.stats().waiting, waiting);
    }
    Ok(c)
}

// --- (e) proof of work ---------------------------------------------------------

pub(crate) fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The number in `0..=maxnumber` whose hash with `salt` is `challenge`.
pub(crate) fn solve(salt: &str, challenge: &str, maxnumber: u64) -> Option<u64> {
    (0..=maxnumber).find(|n| sha256_hex(&format!("{salt}{n}")) == challenge)
}

/// What a `hello` carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Proof {
    None,
    /// The solution of the connection's latest challenge (or, failing that,
    /// of the latest one anyone got).
    Solve,
    /// A solution that was accepted before.
    Reuse,
    WrongNumber,
    /// The salt's expiry moved on.
    LongerExpiry,
    BadSignature,
    /// A solved challenge of another server.
    Foreign,
    /// A challenge made up by the client.
    SelfMade,
    ShortChallenge,
    /// A solution, with an unsupported version.
    Version2,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum PowOp {
    Connect(u8),
    Hello(usize, Proof),
    Drop(usize),
    /// All of one client's connections go.
    Leave(u8),
    Advance(Duration),
}

pub(crate) const POW_CLIENTS: u8 = 4;

pub(crate) fn pow_config(mode: PowMode) -> Config {
    let base = scene_config();
    Config {
        pow: PowConfig {
            mode,
            load_threshold: 6,
            client_threshold: 1,
            base_maxnumber: 50,
            max_maxnumber: 400,
            expiry: Duration::from_secs(3),
        },
        per_client: ClientLimits {
            connections: 3,
            ..base.per_client.clone()
        },
        hello_timeout: Duration::from_millis(1500),
        ..base
    }
}

pub(crate) fn pow_ops() -> impl Strategy<Value = (bool, Vec<PowOp>)> {
    let conn = || 0usize..10;
    let proof = prop_oneof![
        3 => Just(Proof::None),
        6 => Just(Proof::Solve),
        2 => Just(Proof::Reuse),
        1 => Just(Proof::WrongNumber),
        1 => Just(Proof::LongerExpiry),
        1 => Just(Proof::BadSignature),
        1 => Just(Proof::Foreign),
        1 => Just(Proof::SelfMade),
        1 => Just(Proof::ShortChallenge),
        1 => Just(Proof::Version2),
    ];
    let op = prop_oneof![
        6 => (0..POW_CLIENTS).prop_map(PowOp::Connect),
        8 => (conn(), proof.clone()).prop_map(|(i, p)| PowOp::Hello(i, p)),
        3 => conn().prop_map(PowOp::Drop),
        1 => (0..POW_CLIENTS).prop_map(PowOp::Leave),
        3 => (0u64..=8).prop_map(|q| PowOp::Advance(Duration::from_millis(250 * q))),
        1 => Just(PowOp::Advance(Duration::from_secs(601))),
    ];
    // Scenes: a client goes over its connection cap (abuse), leaves and
    // comes back with one connection; two clients fill the server (load)
    // and a third comes along. Each ends with a hello from the newest
    // connection.
    let scene = (0..POW_CLIENTS, 1..POW_CLIENTS, any::<bool>(), proof.clone()).prop_map(
        |(c, d, abuse, proof)| {
            let other = (c + d) % POW_CLIENTS;
            let mut ops = if abuse {
                let mut ops = vec![PowOp::Connect(c); 4];
                ops.extend([PowOp::Leave(c), PowOp::Connect(c)]);
                ops
            } else {
                let mut ops = vec![PowOp::Connect(other); 3];
                ops.extend([PowOp::Connect((other + 1) % POW_CLIENTS); 3]);
                ops.push(PowOp::Connect(c));
                ops
            };
            ops.push(PowOp::Hello(NEWEST, proof));
            ops
        },
    );
    let step = prop_oneof![
        12 => op.prop_map(|o| vec![o]),
        1 => scene,
    ];
    (
        any::<bool>(),
        prop::collection::vec(step, 1..=40).prop_map(|steps| steps.concat()),
    )
}

/// `PowOp::Hello` from the newest open connection.
pub(crate) const NEWEST: usize = usize::MAX;

/// A challenge as sent, and its solution.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) solution: PowSolution,
    pub(crate) at: Instant,
    pub(crate) used: bool,
}

/// A solved challenge from a server with another key.
pub(crate) static FOREIGN: LazyLock<PowSolution> = LazyLock::new(|| {
    let mut other =
        Switchboard::with_entropy(pow_config(PowMode::Always), Entropy::new(splitmix(99)));
    let now = Instant::now();
    other.connect(now, ConnId(1), ConnInfo::default());
    other.handle_text(now, ConnId(1), &hello(1));
    match other.poll_output() {
        Some(Output::Send(
            _,
            ServerMsg::Challenge {
                salt,
                challenge,
                maxnumber,
                signature,
                ..
            },
        )) => {
            let number = solve(&salt, &challenge, maxnumber).expect("solvable");
            PowSolution {
                salt,
                number,
                challenge,
                signature,
            }
        }
        other => panic!("{other:?}"),
    }
});

pub(crate) fn pow_json(p: &PowSolution) -> Value {
    json!({"salt": p.salt, "number": p.number, "challenge": p.challenge, "signature": p.signature})
}

/// (e) Four clients open and close connections and say hello with and
/// without solutions. With `Always`, and with `Auto` exactly when the
/// client has more than `client_threshold` open connections, or had a
/// connection closed for abuse within 10 minutes, or the server has
/// `load_threshold` connections: a plain `hello` gets a `challenge` (and no
/// welcome); a solution of a challenge this server issued, unused and
/// unexpired, gets `welcome`; anything else (reused, forged, expired,
/// another server's) gets `pow_invalid` and a new `challenge`. Otherwise
/// `welcome` whatever the `hello` carries. Every challenge is SHA-256,
/// solvable within its `maxnumber`, which is the base one with `Always`
/// and grows with a client's misbehaviour. A connection that has not been
/// welcomed is closed (`hello timeout`) exactly `hello_timeout` after it
/// opened or, if later, when the latest challenge it got expires.
pub(crate) fn run_pow(always: bool, ops: &[PowOp]) -> Result<SceneCounts, TestCaseError> {
    let mode = if always {
        PowMode::Always
    } else {
        PowMode::Auto
    };
    let config = pow_config(mode);
    let pc = config.pow.clone();
    let cap = config.per_client.connections;
    let hello_timeout = config.hello_timeout;
    let mut s = Scene::new(config, 23);
    let mut c = SceneCounts::default();
    // Open connections: id, client, greeted, latest challenge (index into
    // `issued`), when it opened, and until when it may say hello.
    let mut conns: Vec<(ConnId, u8, bool, Option<usize>, Instant, Instant)> = Vec::new();
    let mut issued: Vec<Issued> = Vec::new();
    let mut accepted: Vec<PowSolution> = Vec::new();
    let mut abuse: HashMap<u8, Instant> = HashMap::new();
    for op in ops {
        let now = s.now;
        match *op {
            PowOp::Connect(client) => {
                let open = conns.iter().filter(|x| x.1 == client).count();
                let (id, heard) = s.open(key(client), None)?;
                if open + 1 > cap {
                    prop_assert_eq!(&heard.closes, &vec![(id, CloseReason::TooManyConnections)]);
                    abuse.insert(client, now);
                } else {
                    prop_assert_eq!(heard.count(), 0);
                    conns.push((id, client, false, None, now, now + hello_timeout));
                }
            }
            PowOp::Drop(i) => {
                if conns.is_empty() {
                    continue;
                }
                let (id, ..) = conns.remove(i % conns.len());
                s.close_conn(id)?;
            }
            PowOp::Leave(client) => {
                let leaving: Vec<ConnId> = conns
                    .iter()
                    .filter(|x| x.1 == client)
                    .map(|x| x.0)
                    .collect();
                conns.retain(|x| x.1 != client);
                for id in leaving {
                    s.close_conn(id)?;
                }
            }
            PowOp::Advance(d) => {
                let heard = s.advance(d)?;
                let until = now + d;
                let mut due: Vec<(ConnId, CloseReason)> = conns
                    .iter()
                    .filter(|x| !x.2 && x.5 <= until)
                    .map(|x| (x.0, CloseReason::HelloTimeout))
                    .collect();
                let mut closed = heard.closes.clone();
                due.sort_by_key(|x| x.0);
                closed.sort_by_key(|x| x.0);
                prop_assert_eq!(&closed, &due, "(e) hello deadlines");
                prop_assert_eq!(heard.count(), closed.len());
                conns.retain(|x| !due.iter().any(|d| d.0 == x.0));
                c.hello_timeouts += due.len() as u64;
            }
            PowOp::Hello(i, proof) => {
                if conns.is_empty() {
                    continue;
                }
                let i = if i == NEWEST {
                    conns.len() - 1
                } else {
                    i % conns.len()
                };
                let (id, client, greeted, latest, opened, _) = conns[i];
                // The challenge to solve: the connection's own, else the latest anyone got.
                let target = latest.or(issued.len().checked_sub(1));
                let solved = target.map(|t| issued[t].solution.clone());
                let sol = match proof {
                    Proof::None => None,
                    Proof::Solve | Proof::Version2 => solved,
                    Proof::Reuse => accepted.last().cloned().or(solved),
                    Proof::WrongNumber => solved.map(|mut p| {
                        p.number += 1;
                        p
                    }),
                    Proof::LongerExpiry => solved.map(|mut p| {
                        let (head, exp) = p.salt.rsplit_once("?expires=").expect("an expiry");
                        let later = exp.parse::<u64>().expect("a number") + 60_000;
                        p.salt = format!("{head}?expires={later}");
                        p
                    }),
                    Proof::BadSignature => solved.map(|mut p| {
                        let flipped = if p.signature.starts_with('0') {
                            "1"
                        } else {
                            "0"
                        };
                        p.signature.replace_range(..1, flipped);
                        p
                    }),
                    Proof::Foreign => Some(FOREIGN.clone()),
                    Proof::SelfMade => {
                        let salt = "0123456789abcdef?expires=99999999".to_string();
                        let challenge = sha256_hex(&format!("{salt}7"));
                        Some(PowSolution {
                            salt,
                            number: 7,
                            challenge,
                            signature: "ab".repeat(32),
                        })
                    }
                    Proof::ShortChallenge => solved.map(|mut p| {
                        p.challenge.pop();
                        p
                    }),
                };
                let version = if matches!(proof, Proof::Version2) {
                    2
                } else {
                    1
                };
                let mut v = json!({"type": "hello", "version": version});
                if let Some(p) = &sol {
                    v["pow"] = pow_json(p);
                }
                let heard = s.text(id, &v.to_string())?;
                let got = heard.of(id);
                prop_assert_eq!(heard.count(), got.len(), "hello answered to others");
                if greeted {
                    prop_assert_eq!(got, &[ServerMsg::error(ErrorCode::AlreadyHello)][..]);
                    continue;
                }
                if version != 1 {
                    prop_assert_eq!(got, &[ServerMsg::error(ErrorCode::UnsupportedVersion)][..]);
                    continue;
                }
                let crowded = conns.iter().filter(|x| x.1 == client).count() > pc.client_threshold;
                let abusive = abuse
                    .get(&client)
                    .is_some_and(|&t| now - t < Duration::from_secs(600));
                let loaded = s.live.len() >= pc.load_threshold;
                let needed = always || crowded || abusive || loaded;
                let welcome = |got: &[ServerMsg]| matches!(got, [ServerMsg::Welcome { .. }]);
                if !needed {
                    prop_assert!(welcome(got), "(e) no proof needed, yet {got:?}");
                    c.auto_plain += 1;
                    conns[i].2 = true;
                    continue;
                }
                // Which issued challenge the solution answers, if any, and whether it counts.
                let answered = sol.as_ref().and_then(|p| {
                    issued.iter().position(|x| {
                        x.solution.salt == p.salt
                            && x.solution.challenge == p.challenge
                            && x.solution.signature == p.signature
                    })
                });
                let fresh = |x: &Issued| !x.used && now - x.at < pc.expiry;
                let valid = match (&sol, answered) {
                    (Some(p), Some(k)) => {
                        fresh(&issued[k]) && p.number == issued[k].solution.number
                    }
                    _ => false,
                };
                let rest = match (&sol, valid) {
                    (None, _) => got,
                    (Some(_), true) => {
                        prop_assert!(welcome(got), "(e) a valid solution, yet {got:?}");
                        let k = answered.expect("valid");
                        issued[k].used = true;
                        accepted.push(sol.clone().expect("given"));
                        conns[i].2 = true;
                        c.solved += 1;
                        c.late_welcomes += u64::from(now >= opened + hello_timeout);
                        continue;
                    }
                    (Some(p), false) => {
                        prop_assert!(
                            matches!(
                                got.first(),
                                Some(ServerMsg::Error {
                                    code: ErrorCode::PowInvalid,
                                    ..
                                })
                            ),
                            "(e) an invalid solution ({proof:?}) not refused: {got:?}"
                        );
                        if accepted.contains(p) {
                            c.reused += 1;
                        } else if answered
                            .is_some_and(|k| !issued[k].used && now - issued[k].at >= pc.expiry)
                        {
                            c.expired += 1;
                        } else {
                            c.forged += 1;
                        }
                        &got[1..]
                    }
                };
                let [
                    ServerMsg::Challenge {
                        algorithm,
                        salt,
                        challenge,
                        maxnumber,
                        signature,
                    },
                ] = rest
                else {
                    return Err(TestCaseError::fail(format!(
                        "(e) no challenge (crowded {crowded}, abusive {abusive}, loaded {loaded}): {got:?}"
                    )));
                };
                prop_assert_eq!(*algorithm, "SHA-256");
                prop_assert!(salt.contains("?expires="), "{}", salt);
                if always {
                    prop_assert_eq!(*maxnumber, pc.base_maxnumber);
                } else {
                    prop_assert!((pc.base_maxnumber..=pc.max_maxnumber).contains(maxnumber));
                    if crowded || abusive {
                        prop_assert!(
                            *maxnumber > pc.base_maxnumber,
                            "(e) misbehaviour costs more"
                        );
                    }
                    // Each reason on its own.
                    c.auto_crowded += u64::from(crowded && !abusive && !loaded);
                    c.auto_abuse += u64::from(abusive && !crowded && !loaded);
                    c.auto_load += u64::from(loaded && !crowded && !abusive);
                }
                let Some(number) = solve(salt, challenge, *maxnumber) else {
                    return Err(TestCaseError::fail(format!(
                        "(e) unsolvable challenge {rest:?}"
                    )));
                };
                issued.push(Issued {
                    solution: PowSolution {
                        salt: salt.clone(),
                        number,
                        challenge: challenge.clone(),
                        signature: signature.clone(),
                    },
                    at: now,
                    used: false,
                });
                conns[i].3 = Some(issued.len() - 1);
                conns[i].5 = conns[i].5.max(now + pc.expiry);
                c.challenges += 1;
            }
        }
    }
    Ok(c)
}

proptest! {
    #![proptest_config(proptest_config(256))]

    #[test]
    fn per_client_limits_hold_exactly(ops in limit_ops()) {
        run_limits(&ops)?;
    }

    #[test]
    fn proof_of_work_admits_exactly_the_solved_challenges((always, ops) in pow_ops()) {
        run_pow(always, &ops)?;
    }
}
