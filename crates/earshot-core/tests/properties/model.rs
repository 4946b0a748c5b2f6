//! The model of `random_sessions_keep_every_promise`: what the outputs say
//! about everyone, built only from the outputs, the shell's own connects and
//! disconnects, and the frames sent.

#[allow(unused_imports)]
use super::*;

/// A limit of `burst` events at once and one per `interval` on average, in
/// the virtual-scheduling form: `full_at` is when the allowance is whole again.
#[derive(Debug, Clone)]
pub(crate) struct Allowance {
    pub(crate) interval: Duration,
    pub(crate) burst: u32,
    pub(crate) full_at: Option<Instant>,
}

impl Allowance {
    pub(crate) fn new(interval: Duration, burst: u32) -> Allowance {
        Allowance {
            interval,
            burst: burst.max(1),
            full_at: None,
        }
    }

    /// Spends one event, or says how long until one is allowed.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let debt = self
            .full_at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        let slack = self.interval * (self.burst - 1);
        if debt > slack {
            return Err(debt - slack);
        }
        self.full_at = Some(now + debt + self.interval);
        Ok(())
    }
}

/// The allowance of `client` in `map`, made on first use from `(burst, interval)`.
pub(crate) fn allowance<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Allowance>,
    key: K,
    (burst, interval): (u32, Duration),
) -> &mut Allowance {
    map.entry(key)
        .or_insert_with(|| Allowance::new(interval, burst))
}

/// Moderation without the reporter's history: every report weighs fully
/// and nobody arrives together (`moderation`'s own tests weigh reports).
pub(crate) fn unweighed() -> ModConfig {
    ModConfig {
        trusted_after: Duration::ZERO,
        held_calls_for_full: 0,
        arrived_together: Duration::ZERO,
        ..ModConfig::default()
    }
}

/// Reports, strikes and bans by client key, as PROTOCOL.md describes them:
/// a report blocks the pair of clients for good (over the report limit too);
/// reporting the same key again, or oneself (two connections of one client),
/// counts nothing; `reporters_for_ban`
/// distinct reporters within `strike_window` (the members of one room
/// counting as one) ban the key for the next of
/// `ban_lengths` (the last repeats). Strikes are not weighed: the configs
/// here set `weight_for_ban` to 0.
#[derive(Debug)]
pub(crate) struct ModModel {
    pub(crate) config: ModConfig,
    /// (reporter, reported): the two are never matched again.
    pub(crate) blocks: HashSet<(ClientKey, ClientKey)>,
    /// Strikes against a key since its last ban: when, and by whom.
    /// The room's name for a report made in a room.
    pub(crate) strikes: HashMap<ClientKey, Vec<(Instant, ClientKey, Option<String>)>>,
    /// How many bans a key had, and when the latest ends.
    pub(crate) bans: HashMap<ClientKey, (usize, Instant)>,
    /// Every report that got past the report limit (`stats().reports_total`).
    pub(crate) reports_total: u64,
    pub(crate) bans_total: u64,
}

impl ModModel {
    pub(crate) fn new(config: &ModConfig) -> ModModel {
        assert_eq!(config.weight_for_ban, 0, "the model does not weigh strikes");
        assert!(!config.ban_lengths.is_empty());
        ModModel {
            config: config.clone(),
            blocks: HashSet::new(),
            strikes: HashMap::new(),
            bans: HashMap::new(),
            reports_total: 0,
            bans_total: 0,
        }
    }

    /// A report that got past the report limit. Returns whether it counted
    /// and, if it completed a ban, when that ban ends.
    pub(crate) fn report(
        &mut self,
        now: Instant,
        reporter: ClientKey,
        reported: ClientKey,
        room: Option<&str>,
    ) -> (bool, Option<Instant>) {
        self.reports_total += 1;
        if reporter == reported || !self.blocks.insert((reporter, reported)) {
            return (false, None);
        }
        let window = self.config.strike_window;
        let strikes = self.strikes.entry(reported).or_default();
        strikes.retain(|(at, _, _)| now.saturating_duration_since(*at) < window);
        strikes.push((now, reporter, room.map(str::to_owned)));
        let rooms: HashSet<&String> = strikes.iter().filter_map(|s| s.2.as_ref()).collect();
        let reporters = rooms.len() + strikes.iter().filter(|s| s.2.is_none()).count();
        if reporters < self.config.reporters_for_ban {
            return (true, None);
        }
        strikes.clear();
        let lengths = &self.config.ban_lengths;
        let (n, until) = self.bans.entry(reported).or_insert((0, now));
        *until = now + lengths[(*n).min(lengths.len() - 1)];
        *n += 1;
        self.bans_total += 1;
        (true, Some(*until))
    }

    /// A report over the reporter's limit: it counts nothing, but the two
    /// clients (if they are two) are kept apart all the same.
    pub(crate) fn block(&mut self, reporter: ClientKey, reported: ClientKey) {
        if reporter != reported {
            self.blocks.insert((reporter, reported));
        }
    }

    pub(crate) fn banned_until(&self, now: Instant, key: ClientKey) -> Option<Instant> {
        self.bans
            .get(&key)
            .map(|&(_, until)| until)
            .filter(|&until| until > now)
    }

    /// `retry_after_ms` of a `banned` told now.
    pub(crate) fn ban_retry(&self, now: Instant, key: ClientKey) -> Option<u64> {
        self.banned_until(now, key)
            .map(|until| retry_ms(until - now))
    }

    pub(crate) fn blocked(&self, a: ClientKey, b: ClientKey) -> bool {
        a != b && (self.blocks.contains(&(a, b)) || self.blocks.contains(&(b, a)))
    }

    /// A client comes back under `current` (never seen before), naming its
    /// `previous` key: everything recorded under that key is now its.
    pub(crate) fn carry_over(&mut self, previous: ClientKey, current: ClientKey) {
        let swap = |k: ClientKey| if k == previous { current } else { k };
        self.blocks = self
            .blocks
            .iter()
            .map(|&(a, b)| (swap(a), swap(b)))
            .collect();
        for strikes in self.strikes.values_mut() {
            for s in strikes.iter_mut() {
                s.1 = swap(s.1);
            }
        }
        if let Some(s) = self.strikes.remove(&previous) {
            self.strikes.insert(current, s);
        }
        if let Some(b) = self.bans.remove(&previous) {
            self.bans.insert(current, b);
        }
    }
}

/// An `error` as the server sends it.
pub(crate) fn error_msg(code: ErrorCode, retry_after_ms: Option<u64>) -> ServerMsg {
    ServerMsg::Error {
        code,
        re: None,
        message: code.message().into(),
        retry_after_ms,
    }
}

/// `msg` with an error's `re` left out: the checks here do not look at it
/// (tests/answers.rs does).
pub(crate) fn forget_re(msg: ServerMsg) -> ServerMsg {
    match msg {
        ServerMsg::Error {
            code,
            message,
            retry_after_ms,
            ..
        } => ServerMsg::Error {
            code,
            re: None,
            message,
            retry_after_ms,
        },
        other => other,
    }
}

/// The interest rule of PROTOCOL.md, written out independently: at most
/// `max` strings, each trimmed and lower-cased, then 1 to `chars` code
/// points of letters, digits, spaces and `-`; duplicates merged.
pub(crate) fn interest_rule(raw: &[String], max: usize, chars: usize) -> Option<Vec<String>> {
    if raw.len() > max {
        return None;
    }
    let mut out: Vec<String> = Vec::new();
    for r in raw {
        let tag = r.trim().to_lowercase();
        let n = tag.chars().count();
        if n == 0
            || n > chars
            || !tag
                .chars()
                .all(|c| c.is_alphanumeric() || c == ' ' || c == '-')
        {
            return None;
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    Idle,
    Searching {
        since: Instant,
        interests: Vec<String>,
    },
    InCall {
        call: CallId,
        partner: ConnId,
    },
    InRoom {
        room: String,
        peer: PeerId,
    },
}

#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) greeted: bool,
    pub(crate) phase: Phase,
    /// A `Close` output was seen for it.
    pub(crate) closed: bool,
    /// The shell called `disconnect`.
    pub(crate) gone: bool,
    /// The latest call it was matched in, for late signals.
    pub(crate) last_call: Option<CallId>,
    /// Which client it belongs to (`SLOT_CLIENT`).
    pub(crate) client: u8,
    /// Its message rate limit.
    pub(crate) messages: Allowance,
}

impl Peer {
    pub(crate) fn open(&self) -> bool {
        !self.closed && !self.gone
    }
}

/// A room as its members were told about it.
#[derive(Debug)]
pub(crate) struct Room {
    /// In joining order.
    pub(crate) members: Vec<(PeerId, ConnId)>,
    /// Every peer id given out since the room was created.
    pub(crate) used: HashSet<PeerId>,
    pub(crate) lock: Option<[u8; 32]>,
    /// Passphrase attempts on this room, from everyone.
    pub(crate) attempts: Allowance,
    /// Reported peer → the peers who reported it.
    pub(crate) reports: HashMap<PeerId, Vec<PeerId>>,
    /// Clients the members removed: they may not come back while it lives.
    pub(crate) removed: HashSet<u8>,
}

/// Why a frame is refused, for the coverage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Why {
    #[default]
    Other,
    Full,
    NoPassphrase,
    WrongPassphrase,
    /// `shared`: some of the attempts that used up the client's allowance
    /// came from another of its connections.
    ClientAttempts {
        shared: bool,
    },
    RoomAttempts,
    /// The client's searches (`search` and `skip`): on a search, on a skip.
    Searches,
    Skips,
    RoomCreations,
    Reports,
    /// A `room_join` by a client the room removed.
    Removed,
}

/// What the model predicts the sender's frame does.
#[derive(Debug, Clone, Default)]
pub(crate) enum Expect {
    /// Not predicted in detail here (stranger messages, a first hello): the
    /// general rules apply, and nothing about rooms may happen.
    #[default]
    Unpredicted,
    /// An error to the sender with one of these codes and exactly this
    /// `retry_after_ms`, and nothing else (unless it closes the sender).
    Refused {
        codes: Vec<ErrorCode>,
        retry: Option<u64>,
        why: Why,
    },
    /// The sender joins `room` (normalised) after its current members.
    Joins {
        room: String,
        locked: bool,
        /// The room was last forgotten while locked, and this join has no verifier.
        forgotten_lock: bool,
    },
    /// The signal goes to `to` alone, from the sender's peer id `from`.
    RoomRelay {
        to: ConnId,
        from: PeerId,
        signal: RoomSignal,
    },
    /// `room_lock_state` to every member of `room`, which is then locked or not.
    LockState {
        room: String,
        lock: Option<[u8; 32]>,
    },
    /// The sender leaves its room (`end`): `peer_left` to the others, `idle` to it.
    LeavesRoom,
    /// One `room_suggestion` to the sender.
    Suggestion,
    /// A `search` from idle with valid interests, within the limit:
    /// `searching` (and maybe a match), or, if the client is banned,
    /// `banned` with this `retry_after_ms`, then `idle`.
    Search { banned: Option<u64> },
    /// A `skip` in `call` with `partner`, within the limit: the partner hears
    /// `partner_skipped` (then the re-queue rule); the sender searches, or is
    /// told it is banned.
    Skip {
        partner: ConnId,
        call: CallId,
        banned: Option<u64>,
    },
    /// A `report` in `call` with `partner`: the call ends for both at once,
    /// the partner hears `partner_ended` (then the re-queue rule), the sender
    /// `idle`, then `rate_limited` with this wait when over the report limit.
    Report {
        partner: ConnId,
        call: CallId,
        limited: Option<u64>,
    },
    /// A `room_report` of `target` (peer `peer`) that counted: it either
    /// removes the target (`removed`, `idle` to it, `peer_left` to the
    /// others) or has no visible effect at all.
    RoomReport {
        room: String,
        target: ConnId,
        peer: PeerId,
        removes: bool,
    },
}

pub(crate) fn refused(code: ErrorCode) -> Expect {
    Expect::Refused {
        codes: vec![code],
        retry: None,
        why: Why::Other,
    }
}

pub(crate) fn refused_for(code: ErrorCode, why: Why) -> Expect {
    Expect::Refused {
        codes: vec![code],
        retry: None,
        why,
    }
}

/// A `room_joined` as seen.
#[derive(Debug, Clone)]
pub(crate) struct JoinedSeen {
    pub(crate) to: ConnId,
    pub(crate) room: String,
    pub(crate) peer: PeerId,
    pub(crate) peers: Vec<PeerId>,
    pub(crate) locked: bool,
}

/// What one step (one call into the board) is expected to do, and what it
/// did: to the connection that caused it and to the rooms.
#[derive(Debug, Default)]
pub(crate) struct Step {
    pub(crate) sender: Option<ConnId>,
    /// The signal the sender's frame decodes to, if any.
    pub(crate) signal: Option<Signal>,
    /// Where that signal may be relayed: the sender's partner in that call.
    pub(crate) relay_to: Option<ConnId>,
    pub(crate) relayed: usize,
    pub(crate) outputs: usize,
    pub(crate) to_sender: usize,
    pub(crate) sender_errors: Vec<ErrorCode>,
    pub(crate) sender_retries: Vec<Option<u64>>,
    pub(crate) closes: Vec<(ConnId, CloseReason)>,
    pub(crate) expect: Expect,
    pub(crate) room_joined: Option<JoinedSeen>,
    pub(crate) peer_joined: Vec<(ConnId, PeerId)>,
    pub(crate) peer_left: Vec<(ConnId, PeerId)>,
    /// Who left a room in this step: connection, room, peer id.
    pub(crate) left: Vec<(ConnId, String, PeerId)>,
    pub(crate) lock_states: Vec<(ConnId, bool)>,
    pub(crate) room_relays: Vec<(ConnId, RoomSignal)>,
    pub(crate) suggestions: usize,
    /// Every message sent in this step, in order.
    pub(crate) sent: Vec<(ConnId, ServerMsg)>,
    pub(crate) call_ended: Vec<(ConnId, CallId, EndReason)>,
}

/// Whether `id` was sent `want` in this step, or its start up to an error
/// that used up its error budget (then it was closed instead).
pub(crate) fn sent_or_cut(step: &Step, id: ConnId, want: &[ServerMsg]) -> bool {
    let got = step.sent_to(id);
    got == want
        || (got.len() < want.len()
            && got[..] == want[..got.len()]
            && matches!(got.last(), Some(ServerMsg::Error { .. }))
            && step.closes.contains(&(id, CloseReason::TooManyErrors)))
}

impl Step {
    /// The messages `id` got in this step, in order.
    pub(crate) fn sent_to(&self, id: ConnId) -> Vec<ServerMsg> {
        self.sent
            .iter()
            .filter(|(to, _)| *to == id)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// How much of the protocol a sequence exercised.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) matches: u64,
    pub(crate) skips: u64,
    pub(crate) relays: u64,
    pub(crate) rematches_after_cooldown: u64,
    pub(crate) shared_interest_matches: u64,
    pub(crate) errors: u64,
    pub(crate) rate_limited: u64,
    pub(crate) closes: u64,
    pub(crate) room_joins: u64,
    /// Joins that found someone already there.
    pub(crate) joins_with_peers: u64,
    pub(crate) room_relays: u64,
    /// `passphrase_required` or `wrong_passphrase`.
    pub(crate) lock_refusals: u64,
    pub(crate) wrong_passphrases: u64,
    /// `rate_limited` by the client's passphrase attempts.
    pub(crate) client_attempts_limited: u64,
    /// ... where the client's other connection made some of the attempts.
    pub(crate) client_limit_across_conns: u64,
    /// `rate_limited` by the room's passphrase attempts.
    pub(crate) room_attempts_limited: u64,
    /// Admitted to a locked room with the right verifier.
    pub(crate) locked_admissions: u64,
    pub(crate) room_full: u64,
    pub(crate) peers_left: u64,
    pub(crate) lock_changes: u64,
    /// A join without a verifier of a room that was forgotten while locked.
    pub(crate) forgotten_locks: u64,
    pub(crate) suggestions: u64,
    /// Connections closed at connect by the client's connect limit.
    pub(crate) connects_limited: u64,
    /// `rate_limited` by the client's search limit, on `search` / `skip`.
    pub(crate) searches_limited: u64,
    pub(crate) skips_limited: u64,
    pub(crate) room_creations_limited: u64,
    /// Stranger reports that counted (a strike, or a repeat counted once).
    pub(crate) reports: u64,
    /// ... over the report limit: the call ended all the same.
    pub(crate) reports_limited: u64,
    /// Reports (stranger or room) by a reporter who had already reported
    /// that client: counted once.
    pub(crate) repeated_reports: u64,
    pub(crate) bans: u64,
    /// `banned` on a `search` or `skip` ...
    pub(crate) banned_searches: u64,
    /// ... or when put back in the queue after a call ended.
    pub(crate) banned_requeues: u64,
    /// A `searching` for a client that was banned earlier: its ban ended.
    pub(crate) searches_after_ban: u64,
    /// Two searchers who would have been paired but for a report, both waiting.
    pub(crate) blocked_waits: u64,
    /// ... of them two connections of one client (one reported the other).
    pub(crate) household_waits: u64,
    /// Room reports that removed nobody (yet).
    pub(crate) room_reports: u64,
    pub(crate) removals: u64,
    /// `removed` to a removed client trying to come back.
    pub(crate) removed_rejoins: u64,
}

impl Counts {
    pub(crate) fn each(&mut self) -> [(&'static str, &mut u64); 38] {
        [
            ("matches", &mut self.matches),
            ("skips", &mut self.skips),
            ("relays", &mut self.relays),
            (
                "rematches_after_cooldown",
                &mut self.rematches_after_cooldown,
            ),
            ("shared_interest_matches", &mut self.shared_interest_matches),
            ("errors", &mut self.errors),
            ("rate_limited", &mut self.rate_limited),
            ("closes", &mut self.closes),
            ("room_joins", &mut self.room_joins),
            ("joins_with_peers", &mut self.joins_with_peers),
            ("room_relays", &mut self.room_relays),
            ("lock_refusals", &mut self.lock_refusals),
            ("wrong_passphrases", &mut self.wrong_passphrases),
            ("client_attempts_limited", &mut self.client_attempts_limited),
            (
                "client_limit_across_conns",
                &mut self.client_limit_across_conns,
            ),
            ("room_attempts_limited", &mut self.room_attempts_limited),
            ("locked_admissions", &mut self.locked_admissions),
            ("room_full", &mut self.room_full),
            ("peers_left", &mut self.peers_left),
            ("lock_changes", &mut self.lock_changes),
            ("forgotten_locks", &mut self.forgotten_locks),
            ("suggestions", &mut self.suggestions),
            ("connects_limited", &mut self.connects_limited),
            ("searches_limited", &mut self.searches_limited),
            ("skips_limited", &mut self.skips_limited),
            ("room_creations_limited", &mut self.room_creations_limited),
            ("reports", &mut self.reports),
            ("reports_limited", &mut self.reports_limited),
            ("repeated_reports", &mut self.repeated_reports),
            ("bans", &mut self.bans),
            ("banned_searches", &mut self.banned_searches),
            ("banned_requeues", &mut self.banned_requeues),
            ("searches_after_ban", &mut self.searches_after_ban),
            ("blocked_waits", &mut self.blocked_waits),
            ("household_waits", &mut self.household_waits),
            ("room_reports", &mut self.room_reports),
            ("removals", &mut self.removals),
            ("removed_rejoins", &mut self.removed_rejoins),
        ]
    }
}

/// Everyone's state as told by the outputs, and the rules outputs must keep.
pub(crate) struct Model {
    pub(crate) interest_wait: Duration,
    pub(crate) rematch_cooldown: Duration,
    pub(crate) message_interval: Duration,
    pub(crate) message_burst: u32,
    pub(crate) rooms_config: RoomConfig,
    pub(crate) max_interests: usize,
    pub(crate) max_interest_chars: usize,
    pub(crate) per_client: ClientLimits,
    /// Each client's allowances under `per_client`.
    pub(crate) connects: HashMap<u8, Allowance>,
    pub(crate) searches: HashMap<u8, Allowance>,
    pub(crate) reports: HashMap<u8, Allowance>,
    pub(crate) creations: HashMap<u8, Allowance>,
    pub(crate) moderation: ModModel,
    /// Clients that were banned at some point.
    pub(crate) ever_banned: HashSet<u8>,
    /// Pairs of connections one of which reported the other in a call:
    /// never matched again, even behind one client key.
    pub(crate) conn_blocks: HashSet<(ConnId, ConnId)>,
    pub(crate) peers: HashMap<ConnId, Peer>,
    /// The first `matched` of a pair; its partner's must come next.
    pub(crate) half: Option<(ConnId, CallId, bool, Vec<String>)>,
    pub(crate) calls_seen: HashSet<CallId>,
    /// Pairs whose call ended by a skip, with when they may meet again.
    pub(crate) cooldowns: HashMap<(ConnId, ConnId), Instant>,
    /// Told their call ended, so `searching` (or, for a banned client,
    /// `banned` then `idle`) must be what they hear next; `true` once told
    /// `banned`.
    pub(crate) requeued: HashMap<ConnId, bool>,
    /// Rooms by normalised name, while they have members.
    pub(crate) rooms: HashMap<String, Room>,
    /// Each client's passphrase attempts.
    pub(crate) client_attempts: HashMap<u8, Allowance>,
    /// Each client's attempts that got past its limit: when, from which connection.
    pub(crate) attempt_log: HashMap<u8, Vec<(Instant, ConnId)>>,
    /// Rooms whose last member left while they were locked.
    pub(crate) forgotten_locked: HashSet<String>,
    pub(crate) counts: Counts,
}

pub(crate) fn pair_key(a: ConnId, b: ConnId) -> (ConnId, ConnId) {
    (a.min(b), a.max(b))
}

pub(crate) fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

impl Model {
    pub(crate) fn new(config: &Config) -> Model {
        Model {
            interest_wait: config.interest_wait,
            rematch_cooldown: config.rematch_cooldown,
            message_interval: Duration::from_secs(1) / config.messages_per_second,
            message_burst: config.message_burst,
            rooms_config: config.rooms.clone(),
            max_interests: config.max_interests,
            max_interest_chars: config.max_interest_chars,
            per_client: config.per_client.clone(),
            connects: HashMap::new(),
            searches: HashMap::new(),
            reports: HashMap::new(),
            creations: HashMap::new(),
            moderation: ModModel::new(&config.moderation),
            ever_banned: HashSet::new(),
            conn_blocks: HashSet::new(),
            peers: HashMap::new(),
            half: None,
            calls_seen: HashSet::new(),
            cooldowns: HashMap::new(),
            requeued: HashMap::new(),
            rooms: HashMap::new(),
            client_attempts: HashMap::new(),
            attempt_log: HashMap::new(),
            forgotten_locked: HashSet::new(),
            counts: Counts::default(),
        }
    }

    /// (d) Whether a new connection of `client` must be closed at once: over
    /// the open-connection cap, or over the connect limit (which a connection
    /// refused for the cap does not spend).
    pub(crate) fn refuses_connect(&mut self, now: Instant, client: u8) -> bool {
        let open = self
            .peers
            .values()
            .filter(|p| p.client == client && !p.gone)
            .count();
        open + 1 > self.per_client.connections
            || allowance(&mut self.connects, client, self.per_client.connects)
                .take(now)
                .is_err()
    }

    pub(crate) fn key_of(&self, id: ConnId) -> ClientKey {
        client_key(self.peers[&id].client)
    }

    pub(crate) fn connect(&mut self, id: ConnId, client: u8) {
        self.peers.insert(
            id,
            Peer {
                greeted: false,
                phase: Phase::Idle,
                closed: false,
                gone: false,
                last_call: None,
                client,
                messages: Allowance::new(self.message_interval, self.message_burst),
            },
        );
    }

    pub(crate) fn phase(&self, id: ConnId) -> Option<&Phase> {
        self.peers.get(&id).map(|p| &p.phase)
    }

    /// Where a signal from `from` for `call` may go: its partner in that call.
    pub(crate) fn relay_target(&self, from: ConnId, call: CallId) -> Option<ConnId> {
        match self.phase(from) {
            Some(&Phase::InCall { call: c, partner }) if c == call => Some(partner),
            _ => None,
        }
    }

    pub(crate) fn peer(&mut self, id: ConnId) -> Result<&mut Peer, TestCaseError> {
        match self.peers.get_mut(&id) {
            Some(p) => Ok(p),
            None => Err(TestCaseError::fail(format!(
                "output for {id}, which never connected"
            ))),
        }
    }

    /// What a frame from the open connection `id` must do, from what the
    /// outputs told so far. Spends the attempts it makes.
    pub(crate) fn expect(
        &mut self,
        now: Instant,
        id: ConnId,
        within_size: bool,
        decoded: &Result<ClientMsg, DecodeError>,
    ) -> Expect {
        if !within_size {
            return refused(ErrorCode::TooLarge);
        }
        let peer = self.peers.get_mut(&id).expect("a connected peer");
        if let Err(wait) = peer.messages.take(now) {
            return Expect::Refused {
                codes: vec![ErrorCode::RateLimited],
                retry: Some(retry_ms(wait)),
                why: Why::Other,
            };
        }
        let msg = match decoded {
            Err(e) => return refused((*e).into()),
            Ok(msg) => msg,
        };
        if !peer.greeted {
            return match msg {
                ClientMsg::Hello { version, .. } if *version == protocol::PROTOCOL_VERSION => {
                    Expect::Unpredicted
                }
                ClientMsg::Hello { .. } => refused(ErrorCode::UnsupportedVersion),
                _ => refused(ErrorCode::HelloRequired),
            };
        }
        let phase = peer.phase.clone();
        let client = peer.client;
        let key = client_key(client);
        let limited = |wait, why| Expect::Refused {
            codes: vec![ErrorCode::RateLimited],
            retry: Some(retry_ms(wait)),
            why,
        };
        match (msg, &phase) {
            (ClientMsg::Hello { .. }, _) => refused(ErrorCode::AlreadyHello),
            (ClientMsg::Search { .. }, Phase::InRoom { .. }) => refused(ErrorCode::AlreadyInRoom),
            (ClientMsg::Search { .. }, Phase::Searching { .. }) => {
                refused(ErrorCode::AlreadySearching)
            }
            (ClientMsg::Search { .. }, Phase::InCall { .. }) => refused(ErrorCode::AlreadyInCall),
            (ClientMsg::Search { interests }, Phase::Idle) => {
                if interest_rule(interests, self.max_interests, self.max_interest_chars).is_none() {
                    return refused(ErrorCode::BadInterests);
                }
                // (d) The client's searches, across its connections.
                let searches = allowance(&mut self.searches, client, self.per_client.searches);
                if let Err(wait) = searches.take(now) {
                    return limited(wait, Why::Searches);
                }
                Expect::Search {
                    banned: self.moderation.ban_retry(now, key),
                }
            }
            (ClientMsg::Skip, &Phase::InCall { call, partner }) => {
                let searches = allowance(&mut self.searches, client, self.per_client.searches);
                if let Err(wait) = searches.take(now) {
                    return limited(wait, Why::Skips);
                }
                Expect::Skip {
                    partner,
                    call,
                    banned: self.moderation.ban_retry(now, key),
                }
            }
            (ClientMsg::Skip, _) => refused(ErrorCode::NotInCall),
            (ClientMsg::Report { .. }, &Phase::InCall { call, partner }) => {
                // (a) Over the report limit the call still ends and the pair
                // is kept apart, but the report counts nothing.
                let reports = allowance(&mut self.reports, client, self.per_client.reports);
                let limited = reports.take(now).err().map(retry_ms);
                let theirs = self.key_of(partner);
                match limited {
                    None => self.record_report(now, client, theirs, None),
                    Some(_) => self.moderation.block(key, theirs),
                }
                self.conn_blocks.insert(pair_key(id, partner));
                Expect::Report {
                    partner,
                    call,
                    limited,
                }
            }
            (ClientMsg::Report { .. }, _) => refused(ErrorCode::NotInCall),
            (ClientMsg::RoomReport { peer: target, .. }, Phase::InRoom { room, peer }) => {
                let target_conn = (target != peer)
                    .then(|| {
                        self.rooms[room]
                            .members
                            .iter()
                            .find(|&&(p, _)| p == *target)
                            .map(|&(_, c)| c)
                    })
                    .flatten();
                let Some(target_conn) = target_conn else {
                    return refused(ErrorCode::UnknownPeer);
                };
                let theirs = self.key_of(target_conn);
                let reports = allowance(&mut self.reports, client, self.per_client.reports);
                if let Err(wait) = reports.take(now) {
                    self.moderation.block(key, theirs);
                    return limited(wait, Why::Reports);
                }
                self.record_report(now, client, theirs, Some(room));
                // (c) Removal once more than num/den of the other members reported it.
                let r = self.rooms.get_mut(room).expect("the sender's room");
                let by = r.reports.entry(*target).or_default();
                if !by.contains(peer) {
                    by.push(*peer);
                }
                let present = by
                    .iter()
                    .filter(|p| r.members.iter().any(|(m, _)| m == *p))
                    .count() as u64;
                let others = r.members.len() as u64 - 1;
                let (num, den) = self.rooms_config.report_majority;
                Expect::RoomReport {
                    room: room.clone(),
                    target: target_conn,
                    peer: *target,
                    removes: present * u64::from(den) > others * u64::from(num),
                }
            }
            (ClientMsg::RoomReport { .. }, _) => refused(ErrorCode::NotInRoom),
            (ClientMsg::Signal(_), Phase::InRoom { .. }) => refused(ErrorCode::NotInCall),
            (ClientMsg::End, Phase::InRoom { .. }) => Expect::LeavesRoom,
            (ClientMsg::RoomSuggest, _) => Expect::Suggestion,
            (ClientMsg::RoomJoin { room, verifier }, _) => {
                self.expect_join(now, id, client, &phase, room, verifier.as_ref())
            }
            (ClientMsg::RoomSignal(s), Phase::InRoom { room, peer }) => {
                let target = s.to.filter(|to| to != peer).and_then(|to| {
                    self.rooms[room]
                        .members
                        .iter()
                        .find(|&&(p, _)| p == to)
                        .map(|&(_, c)| c)
                });
                match target {
                    Some(to) => Expect::RoomRelay {
                        to,
                        from: *peer,
                        signal: s.clone(),
                    },
                    None => refused(ErrorCode::UnknownPeer),
                }
            }
            (ClientMsg::RoomLock { verifier }, Phase::InRoom { room, .. }) => Expect::LockState {
                room: room.clone(),
                lock: Some(verifier.0),
            },
            (ClientMsg::RoomUnlock, Phase::InRoom { room, .. }) => Expect::LockState {
                room: room.clone(),
                lock: None,
            },
            (ClientMsg::RoomSignal(_) | ClientMsg::RoomLock { .. } | ClientMsg::RoomUnlock, _) => {
                refused(ErrorCode::NotInRoom)
            }
            _ => Expect::Unpredicted,
        }
    }

    /// A report by `client` of `theirs` that got past the report limit.
    pub(crate) fn record_report(
        &mut self,
        now: Instant,
        client: u8,
        theirs: ClientKey,
        room: Option<&str>,
    ) {
        let (counted, ban) = self
            .moderation
            .report(now, client_key(client), theirs, room);
        if !counted && theirs != client_key(client) {
            self.counts.repeated_reports += 1;
        }
        if ban.is_some() {
            self.counts.bans += 1;
            let banned = self.peers.values().find(|p| client_key(p.client) == theirs);
            self.ever_banned
                .insert(banned.expect("a connected client").client);
        }
    }

    /// (rd), (re): what a `room_join` does.
    pub(crate) fn expect_join(
        &mut self,
        now: Instant,
        id: ConnId,
        client: u8,
        phase: &Phase,
        raw: &str,
        verifier: Option<&Verifier>,
    ) -> Expect {
        let busy = match phase {
            Phase::Idle => None,
            Phase::Searching { .. } => Some(ErrorCode::AlreadySearching),
            Phase::InCall { .. } => Some(ErrorCode::AlreadyInCall),
            Phase::InRoom { .. } => Some(ErrorCode::AlreadyInRoom),
        };
        let name = room_name_rule(raw);
        let name = match (busy, name) {
            // Both are wrong; the protocol does not say which is told.
            (Some(busy), None) => {
                return Expect::Refused {
                    codes: vec![busy, ErrorCode::BadRoomName],
                    retry: None,
                    why: Why::Other,
                };
            }
            (Some(busy), Some(_)) => return refused(busy),
            (None, None) => return refused(ErrorCode::BadRoomName),
            (None, Some(name)) => name,
        };
        if !self.rooms.contains_key(&name) {
            // (d) Creating a room is limited per client.
            let creations = allowance(&mut self.creations, client, self.per_client.room_creations);
            if let Err(wait) = creations.take(now) {
                return Expect::Refused {
                    codes: vec![ErrorCode::RateLimited],
                    retry: Some(retry_ms(wait)),
                    why: Why::RoomCreations,
                };
            }
            return Expect::Joins {
                forgotten_lock: verifier.is_none() && self.forgotten_locked.contains(&name),
                room: name,
                locked: false,
            };
        }
        let room = self.rooms.get_mut(&name).expect("just looked");
        // (c) A removed client may not come back while the room lives.
        if room.removed.contains(&client) {
            return refused_for(ErrorCode::Removed, Why::Removed);
        }
        if room.members.len() >= self.rooms_config.max_size {
            return refused_for(ErrorCode::RoomFull, Why::Full);
        }
        let Some(lock) = room.lock else {
            return Expect::Joins {
                room: name,
                locked: false,
                forgotten_lock: false,
            };
        };
        let Some(given) = verifier else {
            return refused_for(ErrorCode::PassphraseRequired, Why::NoPassphrase);
        };
        let (burst, interval) = self.rooms_config.client_attempts;
        let log = self.attempt_log.entry(client).or_default();
        let limited = |wait, why| Expect::Refused {
            codes: vec![ErrorCode::RateLimited],
            retry: Some(retry_ms(wait)),
            why,
        };
        let mine = self
            .client_attempts
            .entry(client)
            .or_insert_with(|| Allowance::new(interval, burst));
        if let Err(wait) = mine.take(now) {
            let recent = now.checked_sub(interval * burst);
            let shared = log
                .iter()
                .any(|&(at, conn)| conn != id && recent.is_none_or(|r| at > r));
            return limited(wait, Why::ClientAttempts { shared });
        }
        log.push((now, id));
        if let Err(wait) = room.attempts.take(now) {
            return limited(wait, Why::RoomAttempts);
        }
        if given.0 != lock {
            return refused_for(ErrorCode::WrongPassphrase, Why::WrongPassphrase);
        }
        Expect::Joins {
            room: name,
            locked: true,
            forgotten_lock: false,
        }
    }

    /// `id` is no longer in its room: the room forgets it, and itself once empty.
    pub(crate) fn leave_room(&mut self, id: ConnId, step: &mut Step) -> Result<(), TestCaseError> {
        let Some(Phase::InRoom { room: name, peer }) = self.phase(id).cloned() else {
            return Ok(());
        };
        self.peer(id)?.phase = Phase::Idle;
        let room = self.rooms.get_mut(&name).expect("members' rooms exist");
        room.members.retain(|&(_, c)| c != id);
        room.reports.remove(&peer);
        if room.members.is_empty() {
            if room.lock.is_some() {
                self.forgotten_locked.insert(name.clone());
            }
            self.rooms.remove(&name);
        }
        step.left.push((id, name, peer));
        Ok(())
    }

    /// Checks one output against everything seen so far, then learns from it.
    pub(crate) fn observe(
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
            Output::Backplane(r) => {
                return Err(TestCaseError::fail(format!(
                    "a single node asked for a backplane: {r:?}"
                )));
            }
            Output::Close(id, reason) => {
                let peer = self.peer(*id)?;
                prop_assert!(!peer.gone, "(d) Close for {id} after disconnect");
                prop_assert!(!peer.closed, "(d) a second Close for {id}");
                prop_assert!(
                    !matches!(peer.phase, Phase::InCall { .. }),
                    "{id} closed while its partner was not told the call ended"
                );
                peer.closed = true;
                self.requeued.remove(id);
                self.leave_room(*id, step)?;
                self.peer(*id)?.phase = Phase::Idle;
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
        step.sent.push((to, forget_re(msg.clone())));
        let key = self.key_of(to);
        if let Some(told_banned) = self.requeued.get(&to).copied() {
            // (b) Put back in the queue: `searching`, or for a banned client
            // `banned` then `idle`.
            let banned = self.moderation.banned_until(now, key).is_some();
            match (told_banned, msg) {
                (false, ServerMsg::Searching { .. }) if !banned => {
                    self.requeued.remove(&to);
                }
                (
                    false,
                    ServerMsg::Error {
                        code: ErrorCode::Banned,
                        ..
                    },
                ) if banned => {
                    self.requeued.insert(to, true);
                    self.counts.banned_requeues += 1;
                }
                (true, ServerMsg::Idle) => {
                    self.requeued.remove(&to);
                }
                _ => {
                    return Err(TestCaseError::fail(format!(
                        "{to} was told its call ended, then {msg:?} instead of searching \
                         (or banned and idle; banned: {banned})"
                    )));
                }
            }
        }
        match msg {
            ServerMsg::Welcome { .. } => {
                let peer = self.peer(to)?;
                prop_assert!(!peer.greeted, "a second welcome for {to}");
                peer.greeted = true;
            }
            ServerMsg::Searching { interests } => {
                prop_assert!(
                    self.moderation.banned_until(now, key).is_none(),
                    "(b) {to} put in the queue while banned"
                );
                let client = self.peers[&to].client;
                if self.ever_banned.contains(&client) {
                    self.counts.searches_after_ban += 1;
                }
                let peer = self.peer(to)?;
                prop_assert!(peer.greeted, "{to} searching before hello");
                prop_assert!(
                    !matches!(peer.phase, Phase::InCall { .. } | Phase::InRoom { .. }),
                    "(rh) {to} told it is searching while still in {:?}",
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
                self.requeued.insert(to, false);
                step.call_ended.push((to, *call, *reason));
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
                self.leave_room(to, step)?;
                self.peer(to)?.phase = Phase::Idle;
            }
            ServerMsg::RoomSuggestion { name } => {
                prop_assert_eq!(step.sender, Some(to), "a suggestion nobody asked for");
                check_suggestion(name)?;
                step.suggestions += 1;
                self.counts.suggestions += 1;
            }
            ServerMsg::RoomJoined {
                room,
                peer,
                peers,
                locked,
                max_size,
            } => {
                prop_assert!(
                    step.room_joined.is_none(),
                    "(ra) two room_joined in one step"
                );
                prop_assert_eq!(*max_size, self.rooms_config.max_size);
                prop_assert_eq!(
                    self.phase(to),
                    Some(&Phase::Idle),
                    "(rh) {} joined a room while not idle",
                    to
                );
                step.room_joined = Some(JoinedSeen {
                    to,
                    room: room.clone(),
                    peer: *peer,
                    peers: peers.clone(),
                    locked: *locked,
                });
            }
            ServerMsg::PeerJoined { peer } => step.peer_joined.push((to, *peer)),
            ServerMsg::PeerLeft { peer } => {
                step.peer_left.push((to, *peer));
                self.counts.peers_left += 1;
            }
            ServerMsg::RoomSignal(s) => {
                step.room_relays.push((to, s.clone()));
                self.counts.room_relays += 1;
            }
            ServerMsg::RoomLockState { locked } => step.lock_states.push((to, *locked)),
            ServerMsg::Challenge { .. } => {
                return Err(TestCaseError::fail(format!(
                    "a challenge to {to} with proof of work off"
                )));
            }
            ServerMsg::IceServers { .. } => {
                prop_assert_eq!(step.sender, Some(to), "ice servers nobody asked for");
            }
            ServerMsg::Error {
                code,
                message,
                retry_after_ms,
                ..
            } => {
                prop_assert!(
                    ErrorCode::ALL.contains(code),
                    "(e) undocumented code {code:?}"
                );
                prop_assert_eq!(message, code.message());
                prop_assert_eq!(
                    retry_after_ms.is_some(),
                    matches!(code, ErrorCode::RateLimited | ErrorCode::Banned),
                    "(e) retry_after_ms goes with rate_limited and banned only: {:?}",
                    msg
                );
                if *code == ErrorCode::Banned {
                    let retry = self.moderation.ban_retry(now, key);
                    prop_assert!(
                        retry.is_some(),
                        "(b) {} told it is banned, but it is not",
                        to
                    );
                    prop_assert_eq!(
                        *retry_after_ms,
                        retry,
                        "(b) banned's retry_after_ms is not the time left"
                    );
                }
                if *code == ErrorCode::Removed {
                    let predicted = match &step.expect {
                        Expect::RoomReport {
                            removes: true,
                            target,
                            ..
                        } => *target == to,
                        Expect::Refused { codes, .. } => {
                            step.sender == Some(to) && codes.contains(&ErrorCode::Removed)
                        }
                        _ => false,
                    };
                    prop_assert!(predicted, "(c) {} told it was removed out of the blue", to);
                }
                if step.sender == Some(to) {
                    step.sender_errors.push(*code);
                    step.sender_retries.push(*retry_after_ms);
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
    pub(crate) fn matched(
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
        let (a, b) = (self.key_of(first), self.key_of(to));
        prop_assert!(
            !self.moderation.blocked(a, b),
            "(a) {first} and {to} matched though one of their clients reported the other"
        );
        prop_assert!(
            !self.conn_blocks.contains(&pair_key(first, to)),
            "(a) {first} and {to} matched though one reported the other"
        );
        for (who, key) in [(first, a), (to, b)] {
            // Also a connection that was already waiting when its client was banned.
            prop_assert!(
                self.moderation.banned_until(now, key).is_none(),
                "(b) {who} matched while its client is banned"
            );
        }
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

    /// The current members' connections of `room`, in joining order.
    pub(crate) fn members(&self, room: &str) -> Vec<(PeerId, ConnId)> {
        self.rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default()
    }

    /// After a step's outputs: checks what happened in rooms against what the
    /// model expected, then learns from it.
    pub(crate) fn finish(&mut self, step: &mut Step) -> Result<(), TestCaseError> {
        // (rc) Whoever left a room, every remaining member (and nobody else)
        // heard so, once.
        prop_assert!(
            step.left.len() <= 1,
            "two left rooms in one step: {:?}",
            step.left
        );
        let mut told = Vec::new();
        for (_, room, peer) in &step.left {
            told.extend(self.members(room).into_iter().map(|(_, c)| (c, *peer)));
        }
        prop_assert_eq!(
            sorted(step.peer_left.clone()),
            sorted(told),
            "(rc) peer_left went to others than the remaining members (left: {:?})",
            &step.left
        );
        let sender = step.sender;
        let expect = step.expect.clone();
        let no_rooms = |step: &Step| {
            step.room_joined.is_none()
                && step.peer_joined.is_empty()
                && step.lock_states.is_empty()
                && step.room_relays.is_empty()
                && step.suggestions == 0
        };
        match expect {
            Expect::Unpredicted => {
                prop_assert!(
                    no_rooms(step),
                    "(rb) room messages in a step that has nothing to do with rooms: {step:?}"
                );
            }
            Expect::Refused { codes, retry, why } => {
                prop_assert!(
                    step.sender_errors.len() == 1 && codes.contains(&step.sender_errors[0]),
                    "expected one of {codes:?} (why: {why:?}), got errors {:?} in {step:?}",
                    step.sender_errors
                );
                if retry.is_some() {
                    prop_assert_eq!(
                        step.sender_retries[0],
                        retry,
                        "(e)/(rd) retry_after_ms of {:?}",
                        codes
                    );
                }
                prop_assert!(no_rooms(step), "a refused frame did something: {step:?}");
                if step.closes.is_empty() {
                    prop_assert_eq!(step.outputs, 1, "a refused frame did something: {:?}", step);
                } else {
                    prop_assert_eq!(
                        &step.closes,
                        &vec![(sender.unwrap(), CloseReason::TooManyErrors)]
                    );
                }
                let c = &mut self.counts;
                match why {
                    Why::Other => {}
                    Why::Full => c.room_full += 1,
                    Why::NoPassphrase => c.lock_refusals += 1,
                    Why::WrongPassphrase => {
                        c.lock_refusals += 1;
                        c.wrong_passphrases += 1;
                    }
                    Why::ClientAttempts { shared } => {
                        c.client_attempts_limited += 1;
                        c.client_limit_across_conns += u64::from(shared);
                    }
                    Why::RoomAttempts => c.room_attempts_limited += 1,
                    Why::Searches => c.searches_limited += 1,
                    Why::Skips => c.skips_limited += 1,
                    Why::RoomCreations => c.room_creations_limited += 1,
                    Why::Reports => c.reports_limited += 1,
                    Why::Removed => c.removed_rejoins += 1,
                }
            }
            Expect::Joins {
                room,
                locked,
                forgotten_lock,
            } => {
                let Some(seen) = step.room_joined.take() else {
                    return Err(TestCaseError::fail(format!(
                        "(ra) expected {sender:?} to join {room:?}, but: {step:?}"
                    )));
                };
                let others = self.members(&room);
                prop_assert_eq!(Some(seen.to), sender, "(ra) room_joined to another");
                prop_assert_eq!(&seen.room, &room, "(ra) joined another room");
                prop_assert_eq!(
                    &seen.peers,
                    &others.iter().map(|&(p, _)| p).collect::<Vec<_>>(),
                    "(ra) room_joined.peers are not the members in joining order"
                );
                prop_assert_eq!(seen.locked, locked, "(rd) room_joined.locked");
                prop_assert_eq!(
                    sorted(step.peer_joined.clone()),
                    sorted(others.iter().map(|&(_, c)| (c, seen.peer)).collect()),
                    "(ra) peer_joined is not one to each member with the new peer id"
                );
                prop_assert_eq!(
                    step.outputs,
                    others.len() + 1,
                    "(ra) more than a join: {:?}",
                    step
                );
                prop_assert!(step.lock_states.is_empty() && step.room_relays.is_empty());
                let (burst, interval) = self.rooms_config.room_attempts;
                let r = self.rooms.entry(room.clone()).or_insert_with(|| Room {
                    members: Vec::new(),
                    used: HashSet::new(),
                    lock: None,
                    attempts: Allowance::new(interval, burst),
                    reports: HashMap::new(),
                    removed: HashSet::new(),
                });
                prop_assert!(
                    r.used.insert(seen.peer),
                    "(ra) peer id {} used twice in {:?}",
                    seen.peer,
                    room
                );
                r.members.push((seen.peer, seen.to));
                self.forgotten_locked.remove(&room);
                self.peer(seen.to)?.phase = Phase::InRoom {
                    room,
                    peer: seen.peer,
                };
                let c = &mut self.counts;
                c.room_joins += 1;
                c.joins_with_peers += u64::from(!others.is_empty());
                c.locked_admissions += u64::from(locked);
                c.forgotten_locks += u64::from(forgotten_lock);
            }
            Expect::RoomRelay { to, from, signal } => {
                let relayed = RoomSignal {
                    to: None,
                    from: Some(from),
                    ..signal
                };
                prop_assert_eq!(
                    &step.room_relays,
                    &vec![(to, relayed)],
                    "(rb) a room signal went elsewhere, or changed"
                );
                prop_assert_eq!(step.outputs, 1, "(rb) more than a relay: {:?}", step);
            }
            Expect::LockState { room, lock } => {
                let members = self.members(&room);
                prop_assert_eq!(
                    sorted(step.lock_states.clone()),
                    sorted(members.iter().map(|&(_, c)| (c, lock.is_some())).collect()),
                    "(rf) room_lock_state is not one to each member"
                );
                prop_assert_eq!(step.outputs, members.len(), "(rf) more than lock states");
                self.rooms.get_mut(&room).expect("the sender's room").lock = lock;
                self.counts.lock_changes += 1;
            }
            Expect::LeavesRoom => {
                let sender = sender.unwrap();
                prop_assert!(
                    step.left.iter().any(|(c, ..)| *c == sender),
                    "(rc) end did not take {sender} out of its room: {step:?}"
                );
                prop_assert_eq!(step.to_sender, 1);
                prop_assert_eq!(step.outputs, step.peer_left.len() + 1);
                prop_assert!(no_rooms(step));
            }
            Expect::Suggestion => {
                prop_assert_eq!(step.suggestions, 1, "(rg) no suggestion: {:?}", step);
                prop_assert_eq!(step.outputs, 1);
            }
            Expect::Search { banned } => {
                let sender = sender.unwrap();
                prop_assert!(no_rooms(step), "a search did room things: {step:?}");
                self.check_requeue_of_sender(step, sender, banned)?;
            }
            Expect::Skip {
                partner,
                call,
                banned,
            } => {
                let sender = sender.unwrap();
                prop_assert_eq!(
                    &step.call_ended,
                    &vec![(partner, call, EndReason::PartnerSkipped)],
                    "a skip did not end the call for the partner"
                );
                prop_assert!(no_rooms(step), "a skip did room things: {step:?}");
                self.check_requeue_of_sender(step, sender, banned)?;
            }
            Expect::Report {
                partner,
                call,
                limited,
            } => {
                // (a) The call ends for both at once: the partner hears an
                // ordinary end, the reporter is idle (not re-queued).
                let sender = sender.unwrap();
                prop_assert_eq!(
                    &step.call_ended,
                    &vec![(partner, call, EndReason::PartnerEnded)],
                    "(a) a report did not end the call for the partner as partner_ended"
                );
                let mut want = vec![ServerMsg::Idle];
                want.extend(limited.map(|r| error_msg(ErrorCode::RateLimited, Some(r))));
                prop_assert_eq!(
                    step.sent_to(sender),
                    want,
                    "(a) the reporter is not told idle (then rate_limited if over the limit)"
                );
                prop_assert!(
                    step.closes.is_empty() || step.closes == [(sender, CloseReason::TooManyErrors)]
                );
                prop_assert!(no_rooms(step), "a report did room things: {step:?}");
                let c = &mut self.counts;
                match limited {
                    Some(_) => c.reports_limited += 1,
                    None => c.reports += 1,
                }
            }
            Expect::RoomReport {
                room,
                target,
                peer,
                removes,
            } => {
                prop_assert!(
                    no_rooms(step),
                    "a room report did other room things: {step:?}"
                );
                if removes {
                    // (c) `removed` and `idle` to the target, `peer_left` to
                    // everyone else (checked above with (rc)).
                    let want = [error_msg(ErrorCode::Removed, None), ServerMsg::Idle];
                    prop_assert!(
                        sent_or_cut(step, target, &want),
                        "(c) the removed member is not told removed, then idle: {:?}",
                        step.sent_to(target)
                    );
                    prop_assert_eq!(
                        &step.left,
                        &vec![(target, room.clone(), peer)],
                        "(c) the target did not leave"
                    );
                    prop_assert_eq!(step.outputs, step.peer_left.len() + 2, "(c) {:?}", step);
                    let client = self.peers[&target].client;
                    let r = self
                        .rooms
                        .get_mut(&room)
                        .expect("the reporter is still there");
                    r.removed.insert(client);
                    self.counts.removals += 1;
                } else {
                    prop_assert_eq!(
                        step.outputs,
                        0,
                        "(c) a room report that removes nobody is answered: {:?}",
                        step
                    );
                    self.counts.room_reports += 1;
                }
            }
        }
        Ok(())
    }

    /// After a `search` or `skip` by `sender` within the limits: it is told
    /// `searching` (and maybe matched), or, banned, `banned` with the time
    /// left and `idle`.
    pub(crate) fn check_requeue_of_sender(
        &mut self,
        step: &Step,
        sender: ConnId,
        banned: Option<u64>,
    ) -> Result<(), TestCaseError> {
        let got = step.sent_to(sender);
        match banned {
            Some(retry) => {
                let want = [error_msg(ErrorCode::Banned, Some(retry)), ServerMsg::Idle];
                prop_assert!(
                    sent_or_cut(step, sender, &want),
                    "(b) a banned client's search is not answered banned, idle: {got:?}"
                );
                self.counts.banned_searches += 1;
            }
            None => {
                prop_assert!(
                    step.sender_errors.is_empty(),
                    "a search within the limits refused: {:?}",
                    step.sender_errors
                );
                prop_assert!(
                    matches!(got.first(), Some(ServerMsg::Searching { .. })),
                    "a search within the limits not answered searching: {got:?}"
                );
            }
        }
        Ok(())
    }

    /// Whether a searcher has stopped waiting for a shared interest.
    pub(crate) fn is_open(&self, since: Instant, interests: &[String], now: Instant) -> bool {
        interests.is_empty() || now >= since + self.interest_wait
    }

    /// Between steps, once every due timer has run: nobody is half-matched,
    /// no two searchers who could be paired are both still waiting, rooms
    /// and their members agree, and the board's counts agree with the model's.
    pub(crate) fn check_settled(
        &mut self,
        now: Instant,
        board: &Switchboard,
    ) -> Result<(), TestCaseError> {
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
        let (mut blocked_waits, mut household_waits) = (0, 0);
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
                let (key_a, key_b) = (self.key_of(a), self.key_of(b));
                // (a), (b) Never paired: connections or clients one of whom
                // reported the other, and banned clients.
                if self.moderation.blocked(key_a, key_b)
                    || self.conn_blocks.contains(&pair_key(a, b))
                {
                    blocked_waits += u64::from(share || both_open);
                    household_waits += u64::from((share || both_open) && key_a == key_b);
                    continue;
                }
                if [key_a, key_b]
                    .iter()
                    .any(|&k| self.moderation.banned_until(now, k).is_some())
                {
                    continue;
                }
                prop_assert!(
                    !(share || both_open),
                    "{a} {tags_a:?} and {b} {tags_b:?} both still wait though they could be paired"
                );
            }
        }
        self.counts.blocked_waits += blocked_waits;
        self.counts.household_waits += household_waits;
        for (name, room) in &self.rooms {
            prop_assert!(!room.members.is_empty(), "{name:?} kept while empty");
            prop_assert!(room.members.len() <= self.rooms_config.max_size);
            for &(peer, conn) in &room.members {
                let p = &self.peers[&conn];
                prop_assert!(p.open(), "{conn} left but is still in {name:?}");
                prop_assert_eq!(
                    &p.phase,
                    &Phase::InRoom {
                        room: name.clone(),
                        peer
                    }
                );
            }
        }
        let in_rooms: usize = self.rooms.values().map(|r| r.members.len()).sum();
        let stats = board.stats();
        let live = self.peers.values().filter(|p| !p.gone).count();
        let in_call = self
            .peers
            .values()
            .filter(|p| matches!(p.phase, Phase::InCall { .. }))
            .count();
        prop_assert_eq!(
            in_rooms,
            self.peers
                .values()
                .filter(|p| matches!(p.phase, Phase::InRoom { .. }))
                .count(),
            "(rh) someone in a room is not listed in it"
        );
        prop_assert_eq!(stats.connections, live, "connections");
        prop_assert_eq!(stats.waiting, searching.len(), "people waiting");
        prop_assert_eq!(stats.calls * 2, in_call, "people in calls");
        prop_assert_eq!(stats.rooms, self.rooms.len(), "rooms");
        prop_assert_eq!(
            stats.reports_total,
            self.moderation.reports_total,
            "reports counted"
        );
        prop_assert_eq!(stats.bans_total, self.moderation.bans_total, "bans");
        Ok(())
    }
}
