//! Operations, the world that runs them, and the random-session properties.

#[allow(unused_imports)]
use super::*;

/// Whom a room signal is addressed to.
#[derive(Debug, Clone)]
pub(crate) enum PeerPick {
    /// One of the other members of the sender's room, if any.
    Other(usize),
    /// The sender itself.
    Own,
    /// Someone who was in the room and left.
    Departed,
    /// Any small number.
    Number(PeerId),
    /// The member who has been there longest, other than the sender.
    Oldest,
}

#[derive(Debug, Clone)]
pub(crate) enum Frame {
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
    RoomSuggest,
    RoomJoin {
        room: &'static str,
        /// Index into the verifiers.
        verifier: Option<usize>,
    },
    RoomLock(usize),
    RoomUnlock,
    RoomSignal {
        to: PeerPick,
        candidate: bool,
        auth: bool,
    },
    /// A signal with both `call` and `to`.
    MixedSignal,
    /// `report`, with or without a reason.
    Report(Option<ReportReason>),
    RoomReport {
        peer: PeerPick,
        reason: Option<ReportReason>,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
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

pub(crate) fn garbage() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,24}",
        r#"\{"type":"[a-z]{0,7}"(,"[a-z]{1,9}":(-?[0-9]{1,3}|"[a-z]{0,4}"|null|\[\]|\{\}))?\}"#,
    ]
}

/// Mostly one of the three valid rooms, now and then an invalid name.
pub(crate) fn room_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        9 => select(&ROOM_NAMES[..VALID_ROOM_NAMES]),
        1 => select(&ROOM_NAMES[VALID_ROOM_NAMES..]),
    ]
}

/// Which verifier a lock or join uses: mostly the first, so that joins often
/// bring the right one.
pub(crate) fn verifier() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0), 1 => 1..VERIFIERS]
}

pub(crate) fn room_join() -> impl Strategy<Value = Frame> {
    (room_name(), prop::option::weighted(0.6, verifier()))
        .prop_map(|(room, verifier)| Frame::RoomJoin { room, verifier })
}

pub(crate) fn room_signal() -> impl Strategy<Value = Frame> {
    let to = prop_oneof![
        6 => (0usize..3).prop_map(PeerPick::Other),
        1 => Just(PeerPick::Own),
        1 => Just(PeerPick::Departed),
        1 => (0 as PeerId..6).prop_map(PeerPick::Number),
    ];
    (to, any::<bool>(), any::<bool>()).prop_map(|(to, candidate, auth)| Frame::RoomSignal {
        to,
        candidate,
        auth,
    })
}

/// The stranger frames, plus room frames weighted by `rooms` (none at 0).
pub(crate) fn reason() -> impl Strategy<Value = Option<ReportReason>> {
    prop::option::of(select(&ReportReason::ALL[..]))
}

/// A `room_report`, mostly of another member, now and then of oneself, a
/// departed member or any number.
pub(crate) fn room_report() -> impl Strategy<Value = Frame> {
    let peer = prop_oneof![
        4 => (0usize..3).prop_map(PeerPick::Other),
        2 => Just(PeerPick::Oldest),
        1 => Just(PeerPick::Own),
        1 => Just(PeerPick::Departed),
        1 => (0 as PeerId..6).prop_map(PeerPick::Number),
    ];
    (peer, reason()).prop_map(|(peer, reason)| Frame::RoomReport { peer, reason })
}

/// The stranger frames, plus room frames weighted by `rooms` (none at 0),
/// plus reports weighted by `reports` (none at 0).
pub(crate) fn frame(rooms: u32, reports: u32) -> BoxedStrategy<Frame> {
    let strangers = prop_oneof![
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
    .boxed();
    let mut options = vec![(31, strangers)];
    if reports > 0 {
        options.push((4 * reports, reason().prop_map(Frame::Report).boxed()));
    }
    if rooms > 0 {
        let in_rooms = prop_oneof![
            1 => Just(Frame::RoomSuggest),
            8 => room_join(),
            3 => verifier().prop_map(Frame::RoomLock),
            1 => Just(Frame::RoomUnlock),
            2 => Just(Frame::End),
            6 => room_signal(),
            1 => Just(Frame::MixedSignal),
        ];
        options.push((8 * rooms, in_rooms.boxed()));
        if reports > 0 {
            options.push((3 * rooms * reports, room_report().boxed()));
        }
    }
    Union::new_weighted(options).boxed()
}

pub(crate) fn op(rooms: u32, reports: u32) -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    prop_oneof![
        1 => slot.clone().prop_map(Op::Connect),
        6 + 4 * rooms => slot.clone().prop_map(Op::Join),
        1 => slot.clone().prop_map(Op::Disconnect),
        1 => slot.clone().prop_map(Op::Close),
        30 => (slot.clone(), frame(rooms, reports)).prop_map(|(s, f)| Op::Text(s, f)),
        1 => slot.prop_map(Op::Binary),
        // Whole quarter seconds, so steps often land exactly on a deadline.
        2 => (0u64..=4).prop_map(|q| Op::Advance(Duration::from_millis(250 * q))),
        1 => (0u64..=40).prop_map(|q| Op::Advance(Duration::from_millis(250 * q))),
    ]
}

/// Up to 300 steps, each one operation or now and then a burst of chatter
/// (candidates, searches, ends, joins, room signals) from one slot, to reach
/// the rate limits. Half the sequences have no room frames (the stranger
/// sessions as they were before rooms), the others some or many; those also
/// have crowds: one room frame sent from
/// several slots in a row (everyone opening the same link, passphrase
/// guessing from several clients at once).
pub(crate) fn ops() -> impl Strategy<Value = Vec<Op>> {
    let rooms = prop_oneof![2 => Just(0u32), 1 => Just(1), 1 => Just(2)];
    let reports = prop_oneof![3 => Just(0u32), 2 => Just(1)];
    (rooms, reports).prop_flat_map(|(rooms, reports)| {
        let strangers = prop_oneof![
            Just(Frame::SignalCurrent { candidate: true }),
            Just(Frame::Search(Vec::new())),
            Just(Frame::End),
        ];
        let chatter = if rooms == 0 {
            strangers.boxed()
        } else {
            prop_oneof![
                3 => strangers,
                2 => room_join(),
                1 => room_signal(),
            ]
            .boxed()
        };
        let burst = (0..SLOTS, chatter, 2usize..=16).prop_map(|(s, f, n)| vec![Op::Text(s, f); n]);
        let mut steps = vec![
            (40, op(rooms, reports).prop_map(|o| vec![o]).boxed()),
            (1, burst.boxed()),
        ];
        if reports > 0 {
            // Report scenes: a client meets others who report it, one after
            // the other, then searches.
            let scene = (0..SLOTS, prop::collection::vec(0..SLOTS, 1..=3)).prop_map(
                |(target, reporters)| {
                    let mut ops = Vec::new();
                    for r in reporters {
                        ops.extend([
                            Op::Advance(Duration::from_millis(750)),
                            Op::Text(target, Frame::End),
                            Op::Text(r, Frame::End),
                            Op::Text(target, Frame::Search(Vec::new())),
                            Op::Text(r, Frame::Search(Vec::new())),
                            Op::Text(r, Frame::Report(None)),
                        ]);
                    }
                    ops.push(Op::Text(target, Frame::Search(Vec::new())));
                    ops
                },
            );
            steps.push((2, scene.boxed()));
        }
        let step = Union::new_weighted(steps);
        if rooms == 0 {
            return prop::collection::vec(step, 1..=300)
                .prop_map(|steps| steps.concat())
                .boxed();
        }
        let mut crowd_frames = vec![
            (4, room_join().boxed()),
            (1, room_signal().boxed()),
            (1, verifier().prop_map(Frame::RoomLock).boxed()),
        ];
        if reports > 0 {
            // Everyone reports the oldest member: a removal.
            let report = reason().prop_map(|reason| Frame::RoomReport {
                peer: PeerPick::Oldest,
                reason,
            });
            crowd_frames.push((2, report.boxed()));
        }
        let crowd_frame = Union::new_weighted(crowd_frames);
        let crowd = (crowd_frame, prop::collection::vec(0..SLOTS, 2..=8)).prop_map(|(f, slots)| {
            slots
                .into_iter()
                .map(|s| Op::Text(s, f.clone()))
                .collect::<Vec<_>>()
        });
        // Lock scenes: a member locks its room, then others try to join it.
        let lock_scene = (
            0..SLOTS,
            select(&ROOM_NAMES[..VALID_ROOM_NAMES]),
            verifier(),
            prop::collection::vec((0..SLOTS, prop::option::weighted(0.7, verifier())), 1..=5),
        )
            .prop_map(|(owner, room, lock, joiners)| {
                let mut ops = vec![
                    Op::Text(
                        owner,
                        Frame::RoomJoin {
                            room,
                            verifier: None,
                        },
                    ),
                    Op::Text(owner, Frame::RoomLock(lock)),
                ];
                ops.extend(
                    joiners
                        .into_iter()
                        .map(|(s, verifier)| Op::Text(s, Frame::RoomJoin { room, verifier })),
                );
                ops
            });
        let step = prop_oneof![
            40 => step,
            2 * rooms => crowd,
            rooms => lock_scene,
        ];
        prop::collection::vec(step, 1..=300)
            .prop_map(|steps| steps.concat())
            .boxed()
    })
}

/// A switchboard on a virtual clock, the shell's connection slots and the model.
pub(crate) struct World {
    pub(crate) board: Switchboard,
    pub(crate) max_message_bytes: usize,
    pub(crate) now: Instant,
    pub(crate) model: Model,
    /// Each slot's current or latest connection.
    pub(crate) slots: [Option<ConnId>; SLOTS],
    pub(crate) next_id: u64,
}

impl World {
    pub(crate) fn new(config: Config) -> World {
        World {
            model: Model::new(&config),
            max_message_bytes: config.max_message_bytes,
            board: Switchboard::with_entropy(config, Entropy::new(splitmix(0x5eed))),
            now: Instant::now(),
            slots: [None; SLOTS],
            next_id: 1,
        }
    }

    /// Runs a sequence, checking after every step; returns what it exercised.
    pub(crate) fn run(ops: &[Op]) -> Result<Counts, TestCaseError> {
        let mut w = World::new(session_config());
        for op in ops {
            w.apply(op)?;
            w.model.check_settled(w.now, &w.board)?;
        }
        Ok(w.model.counts)
    }

    pub(crate) fn is_open(&self, id: ConnId) -> bool {
        self.model.peers.get(&id).is_some_and(Peer::open)
    }

    /// Feeds every pending output to the model, checks the step's room
    /// effects and the invariants.
    pub(crate) fn drain(&mut self, step: &mut Step) -> Result<(), TestCaseError> {
        while let Some(out) = self.board.poll_output() {
            self.model.observe(self.now, &out, step)?;
        }
        self.model.finish(step)?;
        if let Err(e) = self.board.check_invariants() {
            return Err(TestCaseError::fail(format!("invariant broken: {e}")));
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
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

    pub(crate) fn render(&self, id: ConnId, frame: &Frame) -> String {
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
            Frame::RoomSuggest => r#"{"type":"room_suggest"}"#.to_string(),
            Frame::RoomJoin { room, verifier } => {
                let mut v = json!({"type": "room_join", "room": room});
                if let Some(i) = verifier {
                    v["verifier"] = b64url(&verifier_bytes(*i)).into();
                }
                v.to_string()
            }
            Frame::RoomLock(i) => {
                json!({"type": "room_lock", "verifier": b64url(&verifier_bytes(*i))}).to_string()
            }
            Frame::RoomUnlock => r#"{"type":"room_unlock"}"#.to_string(),
            Frame::RoomSignal {
                to,
                candidate,
                auth,
            } => room_signal_text(self.pick_peer(id, to), *candidate, *auth),
            Frame::Report(reason) => {
                let mut v = json!({"type": "report"});
                if let Some(r) = reason {
                    v["reason"] = r.as_str().into();
                }
                v.to_string()
            }
            Frame::RoomReport { peer, reason } => {
                let mut v = json!({"type": "room_report", "peer": self.pick_peer(id, peer)});
                if let Some(r) = reason {
                    v["reason"] = r.as_str().into();
                }
                v.to_string()
            }
            Frame::MixedSignal => {
                let mut v: Value = serde_json::from_str(&room_signal_text(1, true, false)).unwrap();
                v["call"] = 1.into();
                v.to_string()
            }
        }
    }

    /// The peer id `pick` names for `id`, from what the model knows of its room.
    pub(crate) fn pick_peer(&self, id: ConnId, pick: &PeerPick) -> PeerId {
        let (room, own) = match self.model.phase(id) {
            Some(Phase::InRoom { room, peer }) => (self.model.rooms.get(room), *peer),
            _ => (None, 1),
        };
        let others: Vec<PeerId> = room
            .iter()
            .flat_map(|r| r.members.iter().map(|&(p, _)| p))
            .filter(|&p| p != own)
            .collect();
        match pick {
            PeerPick::Other(k) => others
                .get(k % others.len().max(1))
                .copied()
                .unwrap_or(own + 1),
            PeerPick::Oldest => others.first().copied().unwrap_or(own + 1),
            PeerPick::Own => own,
            PeerPick::Departed => room
                .and_then(|r| {
                    r.used
                        .iter()
                        .copied()
                        .filter(|p| !r.members.iter().any(|m| m.0 == *p))
                        .max()
                })
                .unwrap_or(99),
            PeerPick::Number(n) => *n,
        }
    }

    pub(crate) fn text(&mut self, id: ConnId, text: &str) -> Result<(), TestCaseError> {
        let was_open = self.is_open(id);
        let within_size = text.len() <= self.max_message_bytes;
        let decoded = protocol::decode(text);
        let signal = match &decoded {
            Ok(ClientMsg::Signal(s)) if within_size => Some(s.clone()),
            _ => None,
        };
        let relay_to = signal
            .as_ref()
            .and_then(|s| self.model.relay_target(id, s.call));
        let expect = if was_open {
            self.model.expect(self.now, id, within_size, &decoded)
        } else {
            Expect::Unpredicted
        };
        let mut step = Step {
            sender: Some(id),
            signal,
            relay_to,
            expect,
            ..Step::default()
        };
        self.board.handle_text(self.now, id, text);
        self.drain(&mut step)?;
        if !was_open {
            prop_assert_eq!(step.outputs, 0, "a closed connection's frame was answered");
            return Ok(());
        }
        let silent = matches!(step.expect, Expect::RoomReport { removes: false, .. });
        prop_assert!(
            step.to_sender > 0 || step.relayed == 1 || step.room_relays.len() == 1 || silent,
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
    pub(crate) fn connect(&mut self, slot: usize) -> Result<ConnId, TestCaseError> {
        self.disconnect(slot)?;
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.slots[slot] = Some(id);
        let refused = self.model.refuses_connect(self.now, SLOT_CLIENT[slot]);
        self.model.connect(id, SLOT_CLIENT[slot]);
        let info = ConnInfo {
            key: client_key(SLOT_CLIENT[slot]),
            ..ConnInfo::default()
        };
        self.board.connect(self.now, id, info);
        let mut step = Step::default();
        self.drain(&mut step)?;
        if refused {
            // (d) Closed at once, and nothing else.
            prop_assert_eq!(
                &step.closes,
                &vec![(id, CloseReason::TooManyConnections)],
                "(d) a connection over the client's connect limit was not closed at once"
            );
            prop_assert_eq!(step.outputs, 1, "connect said something");
            self.model.counts.connects_limited += 1;
        } else {
            prop_assert_eq!(step.outputs, 0, "connect said something");
        }
        Ok(id)
    }

    pub(crate) fn disconnect(&mut self, slot: usize) -> Result<(), TestCaseError> {
        let Some(id) = self.slots[slot] else {
            return Ok(());
        };
        let already_gone = self.model.peers[&id].gone;
        // Nothing may be sent to it from now on, not even in this step.
        self.model.peer(id)?.gone = true;
        let mut step = Step::default();
        // It leaves its room, if it is in one: the others must hear of it now.
        self.model.leave_room(id, &mut step)?;
        self.board.disconnect(self.now, id);
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
    pub(crate) fn advance(&mut self, d: Duration) -> Result<(), TestCaseError> {
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

    /// (a)-(e), (ra)-(rh) and the invariants, over random sessions of six slots.
    #[test]
    fn random_sessions_keep_every_promise(ops in ops()) {
        World::run(&ops)?;
    }
}

/// The generated sessions do reach calls, skips, relays, cooldowns, rooms,
/// locks and their refusals: run a fixed-seed sample of them and count.
#[test]
pub(crate) fn random_sessions_reach_calls_skips_and_relays() {
    let mut runner = TestRunner::deterministic();
    let strategy = ops();
    let cases: u64 = 256;
    let mut total = Counts::default();
    let mut with = Counts::default();
    for _ in 0..cases {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let mut c = World::run(&ops).unwrap_or_else(|e| panic!("{e}\n{ops:?}"));
        for (((_, sum), (_, seen)), (_, n)) in
            total.each().into_iter().zip(with.each()).zip(c.each())
        {
            *sum += *n;
            *seen += u64::from(*n > 0);
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
    // Half the sequences have rooms.
    assert!(percent(with.room_joins) >= 35, "{with:?}");
    assert!(percent(with.joins_with_peers) >= 30, "{with:?}");
    assert!(percent(with.room_relays) >= 12, "{with:?}");
    assert!(percent(with.peers_left) >= 25, "{with:?}");
    assert!(percent(with.lock_changes) >= 25, "{with:?}");
    assert!(percent(with.lock_refusals) >= 15, "{with:?}");
    assert!(with.wrong_passphrases >= 25, "{with:?}");
    assert!(with.locked_admissions >= 35, "{with:?}");
    assert!(with.client_attempts_limited >= 6, "{with:?}");
    assert!(with.client_limit_across_conns >= 5, "{with:?}");
    assert!(with.room_attempts_limited >= 8, "{with:?}");
    assert!(with.room_full >= 18, "{with:?}");
    assert!(with.forgotten_locks >= 30, "{with:?}");
    assert!(with.suggestions >= 25, "{with:?}");
    // Per-client limits, in every sequence.
    assert!(with.connects_limited >= 8, "{with:?}");
    assert!(with.searches_limited >= 25, "{with:?}");
    assert!(with.skips_limited >= 6, "{with:?}");
    assert!(with.room_creations_limited >= 5, "{with:?}");
    // Reports are in two fifths of the sequences.
    assert!(with.reports >= 50, "{with:?}");
    assert!(with.reports_limited >= 6, "{with:?}");
    assert!(with.repeated_reports >= 3, "{with:?}");
    assert!(with.bans >= 25, "{with:?}");
    assert!(with.banned_searches >= 15, "{with:?}");
    assert!(with.banned_requeues >= 25, "{with:?}");
    assert!(with.searches_after_ban >= 15, "{with:?}");
    assert!(with.blocked_waits >= 40, "{with:?}");
    assert!(with.household_waits >= 10, "{with:?}");
    assert!(with.room_reports >= 3, "{with:?}");
    assert!(with.removals >= 10, "{with:?}");
    assert!(with.removed_rejoins >= 2, "{with:?}");
}
