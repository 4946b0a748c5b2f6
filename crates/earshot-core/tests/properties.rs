//! Property tests of the switchboard and the decoder, on a virtual clock.
//!
//! - `random_sessions_keep_every_promise`: random operation sequences over six
//!   connection slots (slots 0 and 1 are one client, as are 2 and 3). Every
//!   output is checked against a [`Model`] built only from the outputs (plus
//!   the shell's own connects and disconnects, and the frames sent).
//!   Strangers: (a) a `matched` pairs two different live searchers with one
//!   fresh call id and exactly one polite side; (b) a signal is relayed only
//!   to the sender's partner, for the sender's current call; (c) a skipped
//!   pair is not matched again before the cooldown ends; (d) nothing goes to a
//!   connection after its disconnect or `Close`; (e) error codes are
//!   documented, with `retry_after_ms` on `rate_limited` only, and the
//!   message rate limit refuses exactly the frames over it.
//!   Rooms: (ra) `room_joined.peers` is the room's members in joining order,
//!   each of whom gets exactly one `peer_joined` with the newcomer's id, and
//!   peer ids are unique within a room's lifetime; (rb) a room signal goes
//!   only to the addressed member of the sender's room, with `from` set and
//!   the payload and `auth` unchanged, and nothing crosses between rooms or
//!   between rooms and calls; (rc) `peer_left` goes to every remaining member
//!   exactly when someone leaves (end, disconnect, close); (rd) a locked room
//!   asks for a passphrase, refuses a wrong one, limits attempts per client
//!   and per room exactly as configured, admits the right one, and is
//!   forgotten with its lock when its last member leaves; (re) `room_full`
//!   exactly when the room has `max_size` members; (rf) `room_lock_state`
//!   goes to exactly the current members; (rg) suggestions are valid names of
//!   four words from the four lists; (rh) nobody is in a room and in the
//!   queue or a call at once.
//!   Moderation and limits (predicted exactly, per client): `search` (busy,
//!   bad interests, over the client's search limit, banned with the time
//!   left, or `searching`); `skip` over the search limit leaves the call;
//!   `report` ends the call for both at once (reporter `idle`, then
//!   `rate_limited` over the report limit; partner `partner_ended`); the two
//!   connections, and the two clients if they are two, are never matched
//!   again (over the report limit too), nor are banned clients, not even
//!   from where they already waited; `room_report` removes a
//!   member exactly on a majority (`removed` + `idle` to it, `peer_left` to
//!   the rest), removed clients cannot rejoin, and a report that removes
//!   nobody is not answered; creating rooms and connecting are limited per
//!   client (a refused connect is a `Close(TooManyConnections)` at once);
//!   `stats()` counts reports and bans as the model does.
//!   Between steps: no two searchers who could be paired are both still
//!   waiting, a `call_ended` is followed by `searching` (or, for a banned
//!   client, `banned` and `idle`), `stats()` agrees with the model and
//!   `check_invariants` holds.
//!   `random_sessions_reach_calls_skips_and_relays` shows the sequences get
//!   that far.
//! - Scenes, each with its own model, on a board that also checks (d) and the
//!   invariants after every call: `bans_follow_distinct_reporters_and_escalate`
//!   (reports in calls and rooms, escalating bans with the exact time left,
//!   repeats counting once, searching again after a ban, blocks and bans
//!   carried over to a rotated key), `room_reports_remove_exactly_on_a_majority`
//!   (any `num/den`, rooms of up to six, two connections of one client),
//!   `per_client_limits_hold_exactly` (the open-connection cap, connects,
//!   searches and skips, reports, room creations, each client on its own),
//!   `proof_of_work_admits_exactly_the_solved_challenges` (`Always` and
//!   `Auto`: challenges exactly when due, solved by brute force here; reused,
//!   forged, expired and foreign solutions refused; hello deadlines, moved
//!   on by a challenge).
//!   `scene_properties_reach_bans_removals_limits_and_pow` shows they get there.
//! - `decode_*`, `moderation_fields_round_trip` and `handle_text_*`: the
//!   decoder and the switchboard's answer on arbitrary text, arbitrary JSON
//!   trees, message-shaped objects, valid messages and malformed room,
//!   report and proof-of-work messages, for a sender that is new, idle, in a
//!   call or in a room.
//! - `searchers_are_paired_in_arrival_order`, `the_queue_is_first_come_first_served_across_ends`:
//!   untagged searchers are paired first come, first served.
//! - `a_banned_client_already_waiting_is_not_matched`,
//!   `nothing_follows_a_close_for_too_many_errors`: minimal sequences for
//!   bugs the properties found, kept as regression tests.
//!
//! Failure persistence is off so that a failing run writes no
//! `proptest-regressions` file; proptest prints the minimal input instead.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use earshot_core::moderation::ModConfig;
use earshot_core::pow::{PowConfig, PowMode, PowSolution};
use earshot_core::protocol::{
    self, CallId, ClientMsg, DecodeError, EndReason, IceCandidate, MAX_AUTH_LEN, PeerId,
    ReportReason, RoomSignal, SdpType, SessionDescription, Signal, SignalPayload, Verifier,
};
use earshot_core::rooms::RoomConfig;
use earshot_core::switchboard::ClientLimits;
use earshot_core::{
    ClientKey, CloseReason, Config, ConnId, ConnInfo, Entropy, ErrorCode, Output, ServerMsg,
    Switchboard, names,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Short timers, a small burst, small rooms and few passphrase attempts, so
/// interest fallbacks, cooldowns, hello deadlines, rate limits, full rooms
/// and attempt limits all happen within one sequence. Likewise small
/// per-client limits on connects, searches, reports and room creations, two
/// reporters for a ban and short bans; the model predicts all of them
/// exactly. Two limits are out of the way: at most two connections per
/// client are ever open (so `per_client.connections` is never reached; see
/// `per_client_limits_hold_exactly`), and proof of work is off (see
/// `proof_of_work_admits_exactly_the_solved_challenges`). Strikes are not
/// weighed (`weight_for_ban` 0): a ban takes `reporters_for_ban` distinct
/// reporters within the strike window, which is all PROTOCOL.md pins down.
fn session_config() -> Config {
    Config {
        interest_wait: Duration::from_secs(2),
        rematch_cooldown: Duration::from_secs(3),
        messages_per_second: 10,
        message_burst: 12,
        rooms: RoomConfig {
            max_size: 3,
            client_attempts: (2, Duration::from_secs(4)),
            room_attempts: (2, Duration::from_secs(2)),
            report_majority: (1, 2),
        },
        moderation: ModConfig {
            strike_window: Duration::from_secs(20),
            reporters_for_ban: 2,
            weight_for_ban: 0,
            ban_lengths: vec![Duration::from_secs(4), Duration::from_secs(8)],
            ..unweighed()
        },
        per_client: ClientLimits {
            connections: 2,
            connects: (10, Duration::from_secs(1)),
            searches: (3, Duration::from_secs(1)),
            reports: (2, Duration::from_secs(5)),
            room_creations: (3, Duration::from_secs(3)),
        },
        pow: PowConfig {
            mode: PowMode::Off,
            ..PowConfig::default()
        },
        ..Config::default()
    }
}

const SLOTS: usize = 6;

/// The client behind each slot: slots 0 and 1 are one client (two tabs
/// behind one address), as are 2 and 3, so passphrase attempts are limited
/// across connections.
const SLOT_CLIENT: [u8; SLOTS] = [0, 0, 1, 1, 2, 3];

fn client_key(client: u8) -> ClientKey {
    ClientKey([client + 1; 16])
}

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

/// Room names as clients send them: the first five are three rooms in
/// different spellings, the rest break the rules.
const ROOM_NAMES: &[&str] = &[
    "quiet-otters",
    " Quiet-Otters ",
    "abc",
    "room-7",
    "ROOM-7",
    "ab",
    "-abc",
    "abc-",
    "a b c",
    "räume",
];
const VALID_ROOM_NAMES: usize = 5;

/// The room-name rule of PROTOCOL.md, written out independently: trimmed and
/// lower-cased, then 3 to 64 of `a`-`z`, `0`-`9`, `-`, not starting or
/// ending with `-`.
fn room_name_rule(raw: &str) -> Option<String> {
    let name = raw.trim().to_ascii_lowercase();
    let valid = (3..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    valid.then_some(name)
}

const VERIFIERS: usize = 3;

/// Three passphrase verifiers: the second differs from the first in its last
/// byte only, the third in its first byte only.
fn verifier_bytes(i: usize) -> [u8; 32] {
    let mut v: [u8; 32] = std::array::from_fn(|j| (j as u8).wrapping_mul(29).wrapping_add(7));
    match i {
        0 => {}
        1 => v[31] ^= 1,
        _ => v[0] ^= 0x80,
    }
    v
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
fn b64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(B64URL[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

fn b64url_value(c: u8) -> Option<u8> {
    B64URL.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Whether `text` is unpadded base64url of some byte string.
fn is_b64url(text: &str) -> bool {
    text.len() % 4 != 1 && text.bytes().all(|c| b64url_value(c).is_some())
}

/// Whether `text` is the base64url of `bytes` (43 characters). The two
/// unused low bits of the last character are not looked at.
fn encodes(text: &str, bytes: &[u8; 32]) -> bool {
    let canonical = b64url(bytes);
    text.len() == 43
        && text.as_bytes()[..42] == canonical.as_bytes()[..42]
        && b64url_value(text.as_bytes()[42]).map(|v| v >> 2)
            == b64url_value(canonical.as_bytes()[42]).map(|v| v >> 2)
}

fn auth_text() -> String {
    b64url(&[0xa5; 32])
}

/// The four word lists of `names`, read independently of it.
static WORD_LISTS: LazyLock<[HashSet<&'static str>; 4]> = LazyLock::new(|| {
    [
        include_str!("../src/words/adjectives.txt"),
        include_str!("../src/words/nouns.txt"),
        include_str!("../src/words/verbs.txt"),
        include_str!("../src/words/adverbs.txt"),
    ]
    .map(|text| {
        text.lines()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect()
    })
});

/// (rg) A suggestion is a valid name, left unchanged by normalisation, made of
/// an adjective, a noun, a verb and an adverb from the lists.
fn check_suggestion(name: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        names::normalize(name),
        Ok(name.to_string()),
        "(rg) suggestion is not a valid name"
    );
    let words: Vec<&str> = name.split('-').collect();
    prop_assert_eq!(words.len(), 4, "(rg) {} is not four words", name);
    for (i, (word, list)) in words.iter().zip(WORD_LISTS.iter()).enumerate() {
        prop_assert!(
            list.contains(word),
            "(rg) word {i} of {name} is not from its list"
        );
    }
    Ok(())
}

/// SplitMix64: deterministic randomness for room-name suggestions.
fn splitmix(mut state: u64) -> impl FnMut() -> u64 + Send + 'static {
    move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

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

fn room_signal_text(to: PeerId, candidate: bool, auth: bool) -> String {
    let mut v = if candidate {
        json!({"type": "signal", "to": to, "candidate": {
            "candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}})
    } else {
        json!({"type": "signal", "to": to,
            "description": {"type": "offer", "sdp": "v=0\r\na=fingerprint:sha-256 AB:CD"}})
    };
    if auth {
        v["auth"] = auth_text().into();
    }
    v.to_string()
}

/// Whole milliseconds, at least one: how `retry_after_ms` rounds a wait.
fn retry_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
}

// ---------------------------------------------------------------------------
// The model: what the outputs say about everyone.
// ---------------------------------------------------------------------------

/// A limit of `burst` events at once and one per `interval` on average, in
/// the virtual-scheduling form: `full_at` is when the allowance is whole again.
#[derive(Debug, Clone)]
struct Allowance {
    interval: Duration,
    burst: u32,
    full_at: Option<Instant>,
}

impl Allowance {
    fn new(interval: Duration, burst: u32) -> Allowance {
        Allowance {
            interval,
            burst: burst.max(1),
            full_at: None,
        }
    }

    /// Spends one event, or says how long until one is allowed.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
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
fn allowance<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Allowance>,
    key: K,
    (burst, interval): (u32, Duration),
) -> &mut Allowance {
    map.entry(key)
        .or_insert_with(|| Allowance::new(interval, burst))
}

/// Moderation without the reporter's history: every report weighs fully
/// and nobody arrives together (`moderation`'s own tests weigh reports).
fn unweighed() -> ModConfig {
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
struct ModModel {
    config: ModConfig,
    /// (reporter, reported): the two are never matched again.
    blocks: HashSet<(ClientKey, ClientKey)>,
    /// Strikes against a key since its last ban: when, and by whom.
    /// The room's name for a report made in a room.
    strikes: HashMap<ClientKey, Vec<(Instant, ClientKey, Option<String>)>>,
    /// How many bans a key had, and when the latest ends.
    bans: HashMap<ClientKey, (usize, Instant)>,
    /// Every report that got past the report limit (`stats().reports_total`).
    reports_total: u64,
    bans_total: u64,
}

impl ModModel {
    fn new(config: &ModConfig) -> ModModel {
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
    fn report(
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
    fn block(&mut self, reporter: ClientKey, reported: ClientKey) {
        if reporter != reported {
            self.blocks.insert((reporter, reported));
        }
    }

    fn banned_until(&self, now: Instant, key: ClientKey) -> Option<Instant> {
        self.bans
            .get(&key)
            .map(|&(_, until)| until)
            .filter(|&until| until > now)
    }

    /// `retry_after_ms` of a `banned` told now.
    fn ban_retry(&self, now: Instant, key: ClientKey) -> Option<u64> {
        self.banned_until(now, key)
            .map(|until| retry_ms(until - now))
    }

    fn blocked(&self, a: ClientKey, b: ClientKey) -> bool {
        a != b && (self.blocks.contains(&(a, b)) || self.blocks.contains(&(b, a)))
    }

    /// A client comes back under `current` (never seen before), naming its
    /// `previous` key: everything recorded under that key is now its.
    fn carry_over(&mut self, previous: ClientKey, current: ClientKey) {
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
fn error_msg(code: ErrorCode, retry_after_ms: Option<u64>) -> ServerMsg {
    ServerMsg::Error {
        code,
        re: None,
        message: code.message().into(),
        retry_after_ms,
    }
}

/// `msg` with an error's `re` left out: the checks here do not look at it
/// (tests/answers.rs does).
fn forget_re(msg: ServerMsg) -> ServerMsg {
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
fn interest_rule(raw: &[String], max: usize, chars: usize) -> Option<Vec<String>> {
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
    InRoom {
        room: String,
        peer: PeerId,
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
    /// Which client it belongs to (`SLOT_CLIENT`).
    client: u8,
    /// Its message rate limit.
    messages: Allowance,
}

impl Peer {
    fn open(&self) -> bool {
        !self.closed && !self.gone
    }
}

/// A room as its members were told about it.
#[derive(Debug)]
struct Room {
    /// In joining order.
    members: Vec<(PeerId, ConnId)>,
    /// Every peer id given out since the room was created.
    used: HashSet<PeerId>,
    lock: Option<[u8; 32]>,
    /// Passphrase attempts on this room, from everyone.
    attempts: Allowance,
    /// Reported peer → the peers who reported it.
    reports: HashMap<PeerId, Vec<PeerId>>,
    /// Clients the members removed: they may not come back while it lives.
    removed: HashSet<u8>,
}

/// Why a frame is refused, for the coverage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Why {
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
enum Expect {
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

fn refused(code: ErrorCode) -> Expect {
    Expect::Refused {
        codes: vec![code],
        retry: None,
        why: Why::Other,
    }
}

fn refused_for(code: ErrorCode, why: Why) -> Expect {
    Expect::Refused {
        codes: vec![code],
        retry: None,
        why,
    }
}

/// A `room_joined` as seen.
#[derive(Debug, Clone)]
struct JoinedSeen {
    to: ConnId,
    room: String,
    peer: PeerId,
    peers: Vec<PeerId>,
    locked: bool,
}

/// What one step (one call into the board) is expected to do, and what it
/// did: to the connection that caused it and to the rooms.
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
    sender_retries: Vec<Option<u64>>,
    closes: Vec<(ConnId, CloseReason)>,
    expect: Expect,
    room_joined: Option<JoinedSeen>,
    peer_joined: Vec<(ConnId, PeerId)>,
    peer_left: Vec<(ConnId, PeerId)>,
    /// Who left a room in this step: connection, room, peer id.
    left: Vec<(ConnId, String, PeerId)>,
    lock_states: Vec<(ConnId, bool)>,
    room_relays: Vec<(ConnId, RoomSignal)>,
    suggestions: usize,
    /// Every message sent in this step, in order.
    sent: Vec<(ConnId, ServerMsg)>,
    call_ended: Vec<(ConnId, CallId, EndReason)>,
}

/// Whether `id` was sent `want` in this step, or its start up to an error
/// that used up its error budget (then it was closed instead).
fn sent_or_cut(step: &Step, id: ConnId, want: &[ServerMsg]) -> bool {
    let got = step.sent_to(id);
    got == want
        || (got.len() < want.len()
            && got[..] == want[..got.len()]
            && matches!(got.last(), Some(ServerMsg::Error { .. }))
            && step.closes.contains(&(id, CloseReason::TooManyErrors)))
}

impl Step {
    /// The messages `id` got in this step, in order.
    fn sent_to(&self, id: ConnId) -> Vec<ServerMsg> {
        self.sent
            .iter()
            .filter(|(to, _)| *to == id)
            .map(|(_, m)| m.clone())
            .collect()
    }
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
    room_joins: u64,
    /// Joins that found someone already there.
    joins_with_peers: u64,
    room_relays: u64,
    /// `passphrase_required` or `wrong_passphrase`.
    lock_refusals: u64,
    wrong_passphrases: u64,
    /// `rate_limited` by the client's passphrase attempts.
    client_attempts_limited: u64,
    /// ... where the client's other connection made some of the attempts.
    client_limit_across_conns: u64,
    /// `rate_limited` by the room's passphrase attempts.
    room_attempts_limited: u64,
    /// Admitted to a locked room with the right verifier.
    locked_admissions: u64,
    room_full: u64,
    peers_left: u64,
    lock_changes: u64,
    /// A join without a verifier of a room that was forgotten while locked.
    forgotten_locks: u64,
    suggestions: u64,
    /// Connections closed at connect by the client's connect limit.
    connects_limited: u64,
    /// `rate_limited` by the client's search limit, on `search` / `skip`.
    searches_limited: u64,
    skips_limited: u64,
    room_creations_limited: u64,
    /// Stranger reports that counted (a strike, or a repeat counted once).
    reports: u64,
    /// ... over the report limit: the call ended all the same.
    reports_limited: u64,
    /// Reports (stranger or room) by a reporter who had already reported
    /// that client: counted once.
    repeated_reports: u64,
    bans: u64,
    /// `banned` on a `search` or `skip` ...
    banned_searches: u64,
    /// ... or when put back in the queue after a call ended.
    banned_requeues: u64,
    /// A `searching` for a client that was banned earlier: its ban ended.
    searches_after_ban: u64,
    /// Two searchers who would have been paired but for a report, both waiting.
    blocked_waits: u64,
    /// ... of them two connections of one client (one reported the other).
    household_waits: u64,
    /// Room reports that removed nobody (yet).
    room_reports: u64,
    removals: u64,
    /// `removed` to a removed client trying to come back.
    removed_rejoins: u64,
}

impl Counts {
    fn each(&mut self) -> [(&'static str, &mut u64); 38] {
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
struct Model {
    interest_wait: Duration,
    rematch_cooldown: Duration,
    message_interval: Duration,
    message_burst: u32,
    rooms_config: RoomConfig,
    max_interests: usize,
    max_interest_chars: usize,
    per_client: ClientLimits,
    /// Each client's allowances under `per_client`.
    connects: HashMap<u8, Allowance>,
    searches: HashMap<u8, Allowance>,
    reports: HashMap<u8, Allowance>,
    creations: HashMap<u8, Allowance>,
    moderation: ModModel,
    /// Clients that were banned at some point.
    ever_banned: HashSet<u8>,
    /// Pairs of connections one of which reported the other in a call:
    /// never matched again, even behind one client key.
    conn_blocks: HashSet<(ConnId, ConnId)>,
    peers: HashMap<ConnId, Peer>,
    /// The first `matched` of a pair; its partner's must come next.
    half: Option<(ConnId, CallId, bool, Vec<String>)>,
    calls_seen: HashSet<CallId>,
    /// Pairs whose call ended by a skip, with when they may meet again.
    cooldowns: HashMap<(ConnId, ConnId), Instant>,
    /// Told their call ended, so `searching` (or, for a banned client,
    /// `banned` then `idle`) must be what they hear next; `true` once told
    /// `banned`.
    requeued: HashMap<ConnId, bool>,
    /// Rooms by normalised name, while they have members.
    rooms: HashMap<String, Room>,
    /// Each client's passphrase attempts.
    client_attempts: HashMap<u8, Allowance>,
    /// Each client's attempts that got past its limit: when, from which connection.
    attempt_log: HashMap<u8, Vec<(Instant, ConnId)>>,
    /// Rooms whose last member left while they were locked.
    forgotten_locked: HashSet<String>,
    counts: Counts,
}

fn pair_key(a: ConnId, b: ConnId) -> (ConnId, ConnId) {
    (a.min(b), a.max(b))
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

impl Model {
    fn new(config: &Config) -> Model {
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
    fn refuses_connect(&mut self, now: Instant, client: u8) -> bool {
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

    fn key_of(&self, id: ConnId) -> ClientKey {
        client_key(self.peers[&id].client)
    }

    fn connect(&mut self, id: ConnId, client: u8) {
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

    /// What a frame from the open connection `id` must do, from what the
    /// outputs told so far. Spends the attempts it makes.
    fn expect(
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
    fn record_report(&mut self, now: Instant, client: u8, theirs: ClientKey, room: Option<&str>) {
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
    fn expect_join(
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
    fn leave_room(&mut self, id: ConnId, step: &mut Step) -> Result<(), TestCaseError> {
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
    fn members(&self, room: &str) -> Vec<(PeerId, ConnId)> {
        self.rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default()
    }

    /// After a step's outputs: checks what happened in rooms against what the
    /// model expected, then learns from it.
    fn finish(&mut self, step: &mut Step) -> Result<(), TestCaseError> {
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
    fn check_requeue_of_sender(
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
    fn is_open(&self, since: Instant, interests: &[String], now: Instant) -> bool {
        interests.is_empty() || now >= since + self.interest_wait
    }

    /// Between steps, once every due timer has run: nobody is half-matched,
    /// no two searchers who could be paired are both still waiting, rooms
    /// and their members agree, and the board's counts agree with the model's.
    fn check_settled(&mut self, now: Instant, board: &Switchboard) -> Result<(), TestCaseError> {
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

// ---------------------------------------------------------------------------
// Operations and the world that runs them.
// ---------------------------------------------------------------------------

/// Whom a room signal is addressed to.
#[derive(Debug, Clone)]
enum PeerPick {
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

/// Mostly one of the three valid rooms, now and then an invalid name.
fn room_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        9 => select(&ROOM_NAMES[..VALID_ROOM_NAMES]),
        1 => select(&ROOM_NAMES[VALID_ROOM_NAMES..]),
    ]
}

/// Which verifier a lock or join uses: mostly the first, so that joins often
/// bring the right one.
fn verifier() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0), 1 => 1..VERIFIERS]
}

fn room_join() -> impl Strategy<Value = Frame> {
    (room_name(), prop::option::weighted(0.6, verifier()))
        .prop_map(|(room, verifier)| Frame::RoomJoin { room, verifier })
}

fn room_signal() -> impl Strategy<Value = Frame> {
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
fn reason() -> impl Strategy<Value = Option<ReportReason>> {
    prop::option::of(select(&ReportReason::ALL[..]))
}

/// A `room_report`, mostly of another member, now and then of oneself, a
/// departed member or any number.
fn room_report() -> impl Strategy<Value = Frame> {
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
fn frame(rooms: u32, reports: u32) -> BoxedStrategy<Frame> {
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

fn op(rooms: u32, reports: u32) -> impl Strategy<Value = Op> {
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
fn ops() -> impl Strategy<Value = Vec<Op>> {
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
            board: Switchboard::with_entropy(config, Entropy::new(splitmix(0x5eed))),
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

    /// Feeds every pending output to the model, checks the step's room
    /// effects and the invariants.
    fn drain(&mut self, step: &mut Step) -> Result<(), TestCaseError> {
        while let Some(out) = self.board.poll_output() {
            self.model.observe(self.now, &out, step)?;
        }
        self.model.finish(step)?;
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
    fn pick_peer(&self, id: ConnId, pick: &PeerPick) -> PeerId {
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

    fn text(&mut self, id: ConnId, text: &str) -> Result<(), TestCaseError> {
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
    fn connect(&mut self, slot: usize) -> Result<ConnId, TestCaseError> {
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

    fn disconnect(&mut self, slot: usize) -> Result<(), TestCaseError> {
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

    /// (a)-(e), (ra)-(rh) and the invariants, over random sessions of six slots.
    #[test]
    fn random_sessions_keep_every_promise(ops in ops()) {
        World::run(&ops)?;
    }
}

/// The generated sessions do reach calls, skips, relays, cooldowns, rooms,
/// locks and their refusals: run a fixed-seed sample of them and count.
#[test]
fn random_sessions_reach_calls_skips_and_relays() {
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

// ---------------------------------------------------------------------------
// Decoder robustness.
// ---------------------------------------------------------------------------

const KNOWN_TYPES: &[&str] = &[
    "report",
    "room_report",
    "refresh_ice",
    "hello",
    "search",
    "signal",
    "skip",
    "end",
    "room_suggest",
    "room_join",
    "room_lock",
    "room_unlock",
];

/// The types whose fields can be wrong.
const TYPES_WITH_FIELDS: &[&str] = &[
    "hello",
    "search",
    "signal",
    "room_join",
    "room_lock",
    "report",
    "room_report",
];

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
    "to",
    "from",
    "auth",
    "room",
    "verifier",
    "reason",
    "peer",
    "pow",
    "salt",
    "number",
    "challenge",
    "signature",
    "junk",
    "",
];

const WORDS: &[&str] = &[
    "hello",
    "search",
    "signal",
    "skip",
    "end",
    "offer",
    "answer",
    "pranswer",
    "rollback",
    "welcome",
    "matched",
    "Skip",
    "hello ",
    "",
    "v=0",
    "chess",
    "<b>",
    "room_suggest",
    "room_join",
    "room_lock",
    "room_unlock",
    "room_joined",
    "quiet-otters",
    "Room-7",
    "ab",
    "abc_-9",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "report",
    "room_report",
    "refresh_ice",
    "harassment",
    "spam",
    "Spam",
    "underage",
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

fn bytes32() -> impl Strategy<Value = [u8; 32]> {
    prop::array::uniform32(any::<u8>())
}

/// A well-formed `auth`: base64url, at most `MAX_AUTH_LEN` characters.
fn auth() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(auth_text()),
        "[A-Za-z0-9_-]{0,128}".prop_map(|mut a| {
            if a.len() % 4 == 1 {
                a.pop();
            }
            a
        }),
    ]
}

/// Strings that are not a verifier: a wrong length, a character from
/// outside base64url, padding; and values that are not strings.
fn bad_verifier() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,42}".prop_map(Value::from),
        "[A-Za-z0-9_-]{44,64}".prop_map(Value::from),
        (
            "[A-Za-z0-9_-]{43}",
            0usize..43,
            select(&['+', '/', '=', ' ', '.', 'é', '\0'][..])
        )
            .prop_map(|(s, i, c)| {
                let mut chars: Vec<char> = s.chars().collect();
                chars[i] = c;
                Value::from(chars.into_iter().collect::<String>())
            }),
        bytes32().prop_map(|b| Value::from(b64url(&b) + "=")),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        bytes32().prop_map(|b| json!([b64url(&b)])),
        Just(json!({})),
    ]
}

/// Values that are not an `auth`: too long, a character from outside
/// base64url, a length no base64 has; and values that are not strings.
fn bad_auth() -> impl Strategy<Value = Value> {
    prop_oneof![
        (1usize..=8).prop_map(|k| Value::from("A".repeat(MAX_AUTH_LEN + 4 * k))),
        (
            "[A-Za-z0-9_-]{0,40}",
            any::<prop::sample::Index>(),
            select(&['+', '/', '=', ' ', 'é'][..])
        )
            .prop_map(|(s, i, c)| {
                let mut chars: Vec<char> = s.chars().collect();
                chars.insert(i.index(chars.len() + 1), c);
                Value::from(chars.into_iter().collect::<String>())
            }),
        (0usize..32).prop_map(|k| Value::from("A".repeat(4 * k + 1))),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!([])),
    ]
}

/// Room-ish values: names, verifiers (good and bad), `auth` strings.
fn room_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(ROOM_NAMES).prop_map(Value::from),
        bytes32().prop_map(|b| Value::from(b64url(&b))),
        bad_verifier(),
        auth().prop_map(Value::from),
    ]
}

/// `msg` with `reason` if there is one.
fn with_reason(mut msg: Value, reason: &Option<ReportReason>) -> Value {
    if let Some(r) = reason {
        msg["reason"] = r.as_str().into();
    }
    msg
}

/// A decoded `reason` is the one sent, or none was sent.
fn check_reason(v: &Value, reason: Option<ReportReason>) -> Result<(), TestCaseError> {
    match reason {
        None => prop_assert!(
            v.get("reason").is_none_or(Value::is_null),
            "a reason was dropped"
        ),
        Some(r) => prop_assert_eq!(v["reason"].as_str(), Some(r.as_str())),
    }
    Ok(())
}

/// Proof-of-work solutions: any strings, any number.
fn pow_solution() -> impl Strategy<Value = PowSolution> {
    let text = || prop_oneof!["[0-9a-f]{64}", any::<String>()];
    (text(), any::<u64>(), text(), text()).prop_map(|(salt, number, challenge, signature)| {
        PowSolution {
            salt,
            number,
            challenge,
            signature,
        }
    })
}

/// `pow` values that are not a solution: a field missing, null or of the
/// wrong type, a number that is no `u64`, or not an object at all.
fn bad_pow() -> impl Strategy<Value = Value> {
    let bad_number = prop_oneof![
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("7")),
        Just(json!(u64::MAX as f64 * 2.0)),
        Just(Value::Null),
        Just(json!([7])),
    ];
    let bad_text = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        Just(json!(["abc"])),
        Just(json!({})),
        any::<bool>().prop_map(Value::from),
    ];
    const FIELDS: [&str; 4] = ["salt", "number", "challenge", "signature"];
    prop_oneof![
        (pow_solution(), select(&FIELDS[..])).prop_map(|(p, k)| {
            let mut v = pow_json(&p);
            v.as_object_mut().unwrap().remove(k);
            v
        }),
        (pow_solution(), bad_number).prop_map(|(p, n)| {
            let mut v = pow_json(&p);
            v["number"] = n;
            v
        }),
        (
            pow_solution(),
            select(&["salt", "challenge", "signature"][..]),
            bad_text
        )
            .prop_map(|(p, k, x)| {
                let mut v = pow_json(&p);
                v[k] = x;
                v
            }),
        Just(json!({})),
        Just(json!("solved")),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ]
}

/// Values that are not a report reason.
fn bad_reason() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(&["Spam", "vibes", "", "harassment ", "other\0"][..]).prop_map(Value::from),
        "[a-z]{1,12}"
            .prop_filter("a reason", |r| !ReportReason::ALL
                .iter()
                .any(|x| x.as_str() == r))
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!(["spam"])),
        Just(json!({"reason": "spam"})),
    ]
}

/// Values of the moderation fields, good and bad: reasons, peer ids, proofs of work.
fn moderation_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(&ReportReason::ALL[..]).prop_map(|r| Value::from(r.as_str())),
        bad_reason(),
        pow_solution().prop_map(|p| pow_json(&p)),
        bad_pow(),
    ]
}

/// A `report`, `room_report` or `hello` with exactly one thing wrong: a
/// reason not on the list, a missing or invalid peer, a malformed `pow`.
fn malformed_moderation_message() -> impl Strategy<Value = Value> {
    let bad_peer = prop_oneof![
        Just(json!(-1)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!("2")),
        Just(json!(1.5)),
        Just(Value::Null),
        Just(json!([2])),
    ];
    prop_oneof![
        bad_reason().prop_map(|r| json!({"type": "report", "reason": r})),
        (0 as PeerId..8, bad_reason())
            .prop_map(|(peer, r)| json!({"type": "room_report", "peer": peer, "reason": r})),
        (bad_peer, reason()).prop_map(|(peer, r)| {
            with_reason(json!({"type": "room_report", "peer": peer}), &r)
        }),
        reason().prop_map(|r| with_reason(json!({"type": "room_report"}), &r)),
        (0u32..3, bad_pow()).prop_map(|(version, pow)| {
            json!({"type": "hello", "version": version, "pow": pow})
        }),
    ]
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
        2 => room_field(),
        2 => moderation_field(),
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

/// A room signal as a client sends it: `to`, no `from`.
fn client_room_signal() -> impl Strategy<Value = RoomSignal> {
    (
        prop_oneof![0 as PeerId..4, any::<PeerId>()],
        signal_payload(),
        prop::option::of(auth()),
    )
        .prop_map(|(to, payload, auth)| RoomSignal {
            to: Some(to),
            from: None,
            payload,
            auth,
        })
}

/// Room names: the session's, ones made of the right characters, and anything.
fn room_text() -> impl Strategy<Value = String> {
    prop_oneof![
        select(ROOM_NAMES).prop_map(String::from),
        "[a-z0-9-]{1,66}",
        any::<String>(),
    ]
}

/// A well-formed client message as JSON (with unknown extra fields), and
/// what it must decode to.
fn valid_message() -> impl Strategy<Value = (Value, ClientMsg)> {
    let msg = prop_oneof![
        (any::<u32>(), prop::option::of(pow_solution()))
            .prop_map(|(version, pow)| ClientMsg::Hello { version, pow }),
        reason().prop_map(|reason| ClientMsg::Report { reason }),
        (prop_oneof![0 as PeerId..4, any::<PeerId>()], reason())
            .prop_map(|(peer, reason)| ClientMsg::RoomReport { peer, reason }),
        Just(ClientMsg::RefreshIce),
        prop::collection::vec(any::<String>(), 0..7)
            .prop_map(|interests| ClientMsg::Search { interests }),
        (any::<u64>(), signal_payload())
            .prop_map(|(call, payload)| ClientMsg::Signal(Signal { call, payload })),
        Just(ClientMsg::Skip),
        Just(ClientMsg::End),
        Just(ClientMsg::RoomSuggest),
        (room_text(), prop::option::of(bytes32())).prop_map(|(room, v)| ClientMsg::RoomJoin {
            room,
            verifier: v.map(Verifier)
        }),
        client_room_signal().prop_map(ClientMsg::RoomSignal),
        bytes32().prop_map(|v| ClientMsg::RoomLock {
            verifier: Verifier(v)
        }),
        Just(ClientMsg::RoomUnlock),
    ];
    (msg, junk_fields()).prop_map(|(msg, mut m)| {
        let fields = match &msg {
            ClientMsg::Hello { version, pow: None } => json!({"type": "hello", "version": version}),
            ClientMsg::Hello {
                version,
                pow: Some(p),
            } => json!({"type": "hello", "version": version, "pow": pow_json(p)}),
            ClientMsg::Search { interests } if interests.is_empty() => json!({"type": "search"}),
            ClientMsg::Search { interests } => json!({"type": "search", "interests": interests}),
            ClientMsg::Signal(s) => serde_json::to_value(ServerMsg::Signal(s.clone())).unwrap(),
            ClientMsg::Skip => json!({"type": "skip"}),
            ClientMsg::End => json!({"type": "end"}),
            ClientMsg::RoomSuggest => json!({"type": "room_suggest"}),
            ClientMsg::RoomJoin {
                room,
                verifier: None,
            } => json!({"type": "room_join", "room": room}),
            ClientMsg::RoomJoin {
                room,
                verifier: Some(v),
            } => json!({"type": "room_join", "room": room, "verifier": b64url(&v.0)}),
            ClientMsg::RoomSignal(s) => {
                serde_json::to_value(ServerMsg::RoomSignal(s.clone())).unwrap()
            }
            ClientMsg::RoomLock { verifier } => {
                json!({"type": "room_lock", "verifier": b64url(&verifier.0)})
            }
            ClientMsg::RoomUnlock => json!({"type": "room_unlock"}),
            ClientMsg::Report { reason } => with_reason(json!({"type": "report"}), reason),
            ClientMsg::RoomReport { peer, reason } => {
                with_reason(json!({"type": "room_report", "peer": peer}), reason)
            }
            ClientMsg::RefreshIce => json!({"type": "refresh_ice"}),
        };
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        m.extend(fields);
        (Value::Object(m), msg)
    })
}

/// A room message with exactly one thing wrong: a malformed verifier or
/// `auth`, both `call` and `to`, `auth` on a call signal, a missing or
/// non-string room, a `to` that is not a peer id.
fn malformed_room_message() -> impl Strategy<Value = Value> {
    let signal = || {
        client_room_signal().prop_map(|s| serde_json::to_value(ServerMsg::RoomSignal(s)).unwrap())
    };
    let with = |mut v: Value, k: &str, x: Value| {
        v[k] = x;
        v
    };
    prop_oneof![
        (room_text(), bad_verifier())
            .prop_map(|(room, v)| json!({"type": "room_join", "room": room, "verifier": v})),
        prop_oneof![bad_verifier(), Just(Value::Null)]
            .prop_map(|v| json!({"type": "room_lock", "verifier": v})),
        Just(json!({"type": "room_lock"})),
        prop_oneof![
            Just(json!({"type": "room_join"})),
            Just(json!({"type": "room_join", "room": null})),
            any::<i64>().prop_map(|r| json!({"type": "room_join", "room": r})),
            Just(json!({"type": "room_join", "room": ["quiet-otters"]})),
        ],
        (signal(), bad_auth()).prop_map(move |(s, a)| with(s, "auth", a)),
        (signal(), any::<u64>()).prop_map(move |(s, call)| with(s, "call", call.into())),
        (
            signal(),
            prop_oneof![
                Just(json!(-1)),
                Just(json!(u64::from(u32::MAX) + 1)),
                Just(json!("2")),
                Just(json!(1.5)),
            ]
        )
            .prop_map(move |(s, to)| with(s, "to", to)),
        (any::<u64>(), signal_payload(), auth()).prop_map(move |(call, payload, a)| {
            let s = serde_json::to_value(ServerMsg::Signal(Signal { call, payload })).unwrap();
            with(s, "auth", a.into())
        }),
        signal().prop_map(|mut s| {
            let m = s.as_object_mut().unwrap();
            m.remove("description");
            m.remove("candidate");
            s
        }),
    ]
}

/// Frames of every kind: random text, JSON trees, message-shaped objects,
/// valid messages and malformed room messages.
fn any_frame() -> impl Strategy<Value = String> {
    // Boxed: the unboxed value trees are deep enough to overflow a test
    // thread's stack in debug builds.
    prop_oneof![
        1 => garbage().boxed(),
        1 => json_value().prop_map(|v| v.to_string()).boxed(),
        3 => message_value().prop_map(|v| v.to_string()).boxed(),
        2 => valid_message().prop_map(|(v, _)| v.to_string()).boxed(),
        1 => malformed_room_message().prop_map(|v| v.to_string()).boxed(),
        1 => malformed_moderation_message().prop_map(|v| v.to_string()).boxed(),
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
    let given = |k: &str| v.get(k).is_some_and(|x| !x.is_null());
    let verifier_given = |ver: &Verifier| {
        v.get("verifier")
            .and_then(Value::as_str)
            .is_some_and(|text| encodes(text, &ver.0))
    };
    match &decoded {
        Err(DecodeError::UnknownType) => {
            prop_assert!(!KNOWN_TYPES.contains(&kind), "{kind:?} said to be unknown")
        }
        Err(_) => prop_assert!(
            TYPES_WITH_FIELDS.contains(&kind),
            "bad_message for type {kind:?}"
        ),
        Ok(ClientMsg::Hello { version, pow }) => {
            prop_assert_eq!(kind, "hello");
            prop_assert_eq!(v["version"].as_u64(), Some(u64::from(*version)));
            match pow {
                None => prop_assert!(!given("pow"), "a proof of work was dropped"),
                Some(p) => {
                    let given = &v["pow"];
                    prop_assert!(given.is_object(), "a proof of work that is not an object");
                    prop_assert_eq!(given["salt"].as_str(), Some(p.salt.as_str()));
                    prop_assert_eq!(given["number"].as_u64(), Some(p.number));
                    prop_assert_eq!(given["challenge"].as_str(), Some(p.challenge.as_str()));
                    prop_assert_eq!(given["signature"].as_str(), Some(p.signature.as_str()));
                }
            }
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
            prop_assert!(
                given("description") != given("candidate"),
                "a signal needs exactly one of description and candidate"
            );
            prop_assert!(
                !given("to") && !given("auth"),
                "a call signal with `to` or `auth`"
            );
        }
        Ok(ClientMsg::Skip) => prop_assert_eq!(kind, "skip"),
        Ok(ClientMsg::End) => prop_assert_eq!(kind, "end"),
        Ok(ClientMsg::RoomSuggest) => prop_assert_eq!(kind, "room_suggest"),
        Ok(ClientMsg::RoomJoin { room, verifier }) => {
            prop_assert_eq!(kind, "room_join");
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()));
            match verifier {
                None => prop_assert!(!given("verifier"), "a verifier was dropped"),
                Some(ver) => prop_assert!(verifier_given(ver), "the verifier is not the one sent"),
            }
        }
        Ok(ClientMsg::RoomSignal(s)) => {
            prop_assert_eq!(kind, "signal");
            prop_assert!(!given("call"), "a room signal with a call");
            prop_assert!(s.to.is_some(), "a room signal without `to`");
            prop_assert_eq!(v["to"].as_u64(), s.to.map(u64::from));
            prop_assert_eq!(s.from, None, "`from` taken from the client");
            prop_assert!(
                given("description") != given("candidate"),
                "a signal needs exactly one of description and candidate"
            );
            match &s.auth {
                None => prop_assert!(!given("auth"), "auth was dropped"),
                Some(a) => {
                    prop_assert_eq!(v["auth"].as_str(), Some(a.as_str()), "auth changed");
                    prop_assert!(
                        a.len() <= MAX_AUTH_LEN && is_b64url(a),
                        "a malformed auth accepted: {a:?}"
                    );
                }
            }
        }
        Ok(ClientMsg::RoomLock { verifier }) => {
            prop_assert_eq!(kind, "room_lock");
            prop_assert!(verifier_given(verifier), "the verifier is not the one sent");
        }
        Ok(ClientMsg::RoomUnlock) => prop_assert_eq!(kind, "room_unlock"),
        Ok(ClientMsg::Report { reason }) => {
            prop_assert_eq!(kind, "report");
            check_reason(v, *reason)?;
        }
        Ok(ClientMsg::RoomReport { peer, reason }) => {
            prop_assert_eq!(kind, "room_report");
            prop_assert_eq!(v["peer"].as_u64(), Some(u64::from(*peer)));
            check_reason(v, *reason)?;
        }
        Ok(ClientMsg::RefreshIce) => prop_assert_eq!(kind, "refresh_ice"),
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
    /// Greeted and in room `SCENARIO_ROOM`, which `PARTNER` joined first.
    InRoom,
}

const SENDER: ConnId = ConnId(1);
const PARTNER: ConnId = ConnId(2);
const SCENARIO_ROOM: &str = "test-room";

/// The peer ids of the sender and the partner in `Scenario::InRoom`.
#[derive(Debug, Clone, Copy, Default)]
struct RoomIds {
    sender: PeerId,
    partner: PeerId,
}

fn board_in(scenario: Scenario) -> (Switchboard, RoomIds) {
    let now = Instant::now();
    let mut board = Switchboard::with_entropy(Config::default(), Entropy::new(splitmix(7)));
    let join = json!({"type": "room_join", "room": SCENARIO_ROOM}).to_string();
    board.connect(now, SENDER, ConnInfo::default());
    if !matches!(scenario, Scenario::Ungreeted) {
        board.handle_text(now, SENDER, &hello(1));
    }
    if matches!(scenario, Scenario::InCall | Scenario::InRoom) {
        board.connect(now, PARTNER, ConnInfo::default());
        board.handle_text(now, PARTNER, &hello(1));
    }
    match scenario {
        Scenario::InCall => {
            board.handle_text(now, SENDER, r#"{"type":"search"}"#);
            board.handle_text(now, PARTNER, r#"{"type":"search"}"#);
        }
        Scenario::InRoom => {
            board.handle_text(now, PARTNER, &join);
            board.handle_text(now, SENDER, &join);
        }
        Scenario::Ungreeted | Scenario::Idle => {}
    }
    let mut last_call = None;
    let mut ids = RoomIds::default();
    while let Some(out) = board.poll_output() {
        match out {
            Output::Send(_, ServerMsg::Matched { call, .. }) => last_call = Some(call),
            Output::Send(PARTNER, ServerMsg::RoomJoined { peer, .. }) => ids.partner = peer,
            Output::Send(SENDER, ServerMsg::RoomJoined { peer, peers, .. }) => {
                ids.sender = peer;
                assert_eq!(peers, [ids.partner], "the setup put both in the room");
            }
            _ => {}
        }
    }
    if matches!(scenario, Scenario::InCall) {
        assert_eq!(last_call, Some(1), "the setup made call 1");
    }
    if matches!(scenario, Scenario::InRoom) {
        assert_ne!(ids.sender, ids.partner, "the setup gave two peer ids");
    }
    (board, ids)
}

fn send(to: ConnId, msg: ServerMsg) -> Output {
    Output::Send(to, msg)
}

fn error(code: ErrorCode) -> Output {
    send(SENDER, ServerMsg::error(code))
}

/// What the switchboard must answer.
#[derive(Debug)]
enum Answer {
    Exactly(Vec<Output>),
    /// One error to the sender, with one of these codes.
    OneErrorOf(Vec<ErrorCode>),
    /// A `welcome`, checked by shape.
    Welcome,
    /// A `room_suggestion`, checked by shape.
    Suggestion,
    /// `room_joined` to a room of its own with this (normalised) name.
    JoinedAlone(String),
    /// One `ice_servers` to the sender.
    IceServers,
}

/// What the switchboard must answer to `decoded` in `scenario`.
fn expected_outputs(
    scenario: Scenario,
    ids: RoomIds,
    decoded: Result<ClientMsg, DecodeError>,
) -> Answer {
    let config = Config::default();
    let msg = match decoded {
        Err(e) => return Answer::Exactly(vec![error(e.into())]),
        Ok(msg) => msg,
    };
    let one = |code| Answer::Exactly(vec![error(code)]);
    let searching = |interests| send(PARTNER, ServerMsg::Searching { interests });
    // A busy sender with a bad room name has two things wrong; either is told.
    let busy_join = |busy, room: &str| match room_name_rule(room) {
        Some(_) => one(busy),
        None => Answer::OneErrorOf(vec![busy, ErrorCode::BadRoomName]),
    };
    let lock_state = |locked| {
        Answer::Exactly(vec![
            send(PARTNER, ServerMsg::RoomLockState { locked }),
            send(SENDER, ServerMsg::RoomLockState { locked }),
        ])
    };
    match (scenario, msg) {
        (Scenario::Ungreeted, ClientMsg::Hello { version: 1, .. }) => Answer::Welcome,
        (Scenario::Ungreeted, ClientMsg::Hello { .. }) => one(ErrorCode::UnsupportedVersion),
        (Scenario::Ungreeted, _) => one(ErrorCode::HelloRequired),
        (_, ClientMsg::Hello { .. }) => one(ErrorCode::AlreadyHello),
        (_, ClientMsg::RoomSuggest) => Answer::Suggestion,
        (Scenario::Idle, ClientMsg::Search { interests }) => {
            match protocol::normalize_interests(
                &interests,
                config.max_interests,
                config.max_interest_chars,
            ) {
                Ok(interests) => {
                    Answer::Exactly(vec![send(SENDER, ServerMsg::Searching { interests })])
                }
                Err(code) => one(code),
            }
        }
        (Scenario::Idle, ClientMsg::Signal(_) | ClientMsg::Skip) => one(ErrorCode::NotInCall),
        (Scenario::Idle, ClientMsg::End) => Answer::Exactly(vec![send(SENDER, ServerMsg::Idle)]),
        (Scenario::Idle, ClientMsg::RoomJoin { room, .. }) => match room_name_rule(&room) {
            Some(name) => Answer::JoinedAlone(name),
            None => one(ErrorCode::BadRoomName),
        },
        (
            Scenario::Idle | Scenario::InCall,
            ClientMsg::RoomSignal(_) | ClientMsg::RoomLock { .. } | ClientMsg::RoomUnlock,
        ) => one(ErrorCode::NotInRoom),
        (Scenario::InRoom, ClientMsg::Search { .. }) => one(ErrorCode::AlreadyInRoom),
        (Scenario::InRoom, ClientMsg::Signal(_) | ClientMsg::Skip) => one(ErrorCode::NotInCall),
        (Scenario::InRoom, ClientMsg::End) => Answer::Exactly(vec![
            send(PARTNER, ServerMsg::PeerLeft { peer: ids.sender }),
            send(SENDER, ServerMsg::Idle),
        ]),
        (Scenario::InRoom, ClientMsg::RoomJoin { room, .. }) => {
            busy_join(ErrorCode::AlreadyInRoom, &room)
        }
        (Scenario::InRoom, ClientMsg::RoomSignal(s)) if s.to == Some(ids.partner) => {
            Answer::Exactly(vec![send(
                PARTNER,
                ServerMsg::RoomSignal(RoomSignal {
                    to: None,
                    from: Some(ids.sender),
                    ..s
                }),
            )])
        }
        (Scenario::InRoom, ClientMsg::RoomSignal(_)) => one(ErrorCode::UnknownPeer),
        (Scenario::InRoom, ClientMsg::RoomLock { .. }) => lock_state(true),
        (Scenario::InRoom, ClientMsg::RoomUnlock) => lock_state(false),
        (Scenario::InCall, ClientMsg::RoomJoin { room, .. }) => {
            busy_join(ErrorCode::AlreadyInCall, &room)
        }
        (Scenario::InCall, ClientMsg::Search { .. }) => one(ErrorCode::AlreadyInCall),
        (Scenario::InCall, ClientMsg::Signal(s)) if s.call == 1 => {
            Answer::Exactly(vec![send(PARTNER, ServerMsg::Signal(s))])
        }
        (Scenario::InCall, ClientMsg::Signal(_)) => one(ErrorCode::WrongCall),
        (Scenario::InCall, ClientMsg::Skip) => Answer::Exactly(vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerSkipped,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Searching { interests: vec![] }),
        ]),
        (Scenario::InCall, ClientMsg::End) => Answer::Exactly(vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerEnded,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Idle),
        ]),
        // (a) A report ends the call for both at once: an ordinary end for
        // the partner, `idle` for the reporter.
        (Scenario::InCall, ClientMsg::Report { .. }) => Answer::Exactly(vec![
            send(
                PARTNER,
                ServerMsg::CallEnded {
                    call: 1,
                    reason: EndReason::PartnerEnded,
                },
            ),
            searching(vec![]),
            send(SENDER, ServerMsg::Idle),
        ]),
        (_, ClientMsg::Report { .. }) => one(ErrorCode::NotInCall),
        // (c) The only other member reported it: more than half.
        (Scenario::InRoom, ClientMsg::RoomReport { peer, .. }) if peer == ids.partner => {
            Answer::Exactly(vec![
                send(SENDER, ServerMsg::PeerLeft { peer }),
                send(PARTNER, ServerMsg::error(ErrorCode::Removed)),
                send(PARTNER, ServerMsg::Idle),
            ])
        }
        (Scenario::InRoom, ClientMsg::RoomReport { .. }) => one(ErrorCode::UnknownPeer),
        (_, ClientMsg::RoomReport { .. }) => one(ErrorCode::NotInRoom),
        (_, ClientMsg::RefreshIce) => Answer::IceServers,
    }
}

/// Feeds one frame to a fresh board in each scenario and compares the answer.
fn check_switchboard_answers(text: &str) -> Result<(), TestCaseError> {
    let decoded = protocol::decode(text);
    for scenario in [
        Scenario::Ungreeted,
        Scenario::Idle,
        Scenario::InCall,
        Scenario::InRoom,
    ] {
        let (mut board, ids) = board_in(scenario);
        board.handle_text(Instant::now(), SENDER, text);
        let outs: Vec<Output> = std::iter::from_fn(|| board.poll_output())
            .map(|out| match out {
                Output::Send(to, msg) => Output::Send(to, forget_re(msg)),
                other => other,
            })
            .collect();
        let expected = expected_outputs(scenario, ids, decoded.clone());
        match &expected {
            Answer::Welcome => prop_assert!(
                matches!(&outs[..], [Output::Send(SENDER, ServerMsg::Welcome { .. })]),
                "{scenario:?}: hello answered with {outs:?}"
            ),
            Answer::Suggestion => match &outs[..] {
                [Output::Send(SENDER, ServerMsg::RoomSuggestion { name })] => {
                    check_suggestion(name)?
                }
                _ => prop_assert!(false, "{scenario:?}: room_suggest answered with {outs:?}"),
            },
            Answer::JoinedAlone(room) => prop_assert!(
                matches!(
                    &outs[..],
                    [Output::Send(SENDER, ServerMsg::RoomJoined { room: r, peers, locked: false, max_size, .. })]
                        if r == room && peers.is_empty() && *max_size == Config::default().rooms.max_size
                ),
                "{scenario:?}: joining {room:?} answered with {outs:?}"
            ),
            Answer::IceServers => prop_assert!(
                matches!(
                    &outs[..],
                    [Output::Send(SENDER, ServerMsg::IceServers { .. })]
                ),
                "{scenario:?}: refresh_ice answered with {outs:?}"
            ),
            Answer::OneErrorOf(codes) => prop_assert!(
                codes.iter().any(|&c| outs == [error(c)]),
                "{scenario:?}: expected one of {codes:?}, got {outs:?}"
            ),
            Answer::Exactly(expected) => prop_assert_eq!(
                &outs,
                expected,
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

    /// Malformed verifiers and `auth`s, `call` with `to`, `auth` on a call
    /// signal, bad rooms and `to`s: `bad_message`.
    #[test]
    fn decode_rejects_malformed_room_messages(v in malformed_room_message()) {
        prop_assert_eq!(check_decode(&v.to_string())?, Err(DecodeError::BadMessage), "{}", v);
    }

    /// A verifier is accepted in its canonical base64url spelling, and a
    /// room signal's `auth` and payload pass through unchanged.
    #[test]
    fn room_fields_round_trip(
        v in bytes32(),
        s in client_room_signal(),
    ) {
        let text = json!({"type": "room_lock", "verifier": b64url(&v)}).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::RoomLock { verifier: Verifier(v) }));
        prop_assert_eq!(Verifier::parse(&b64url(&v)), Some(Verifier(v)));
        let text = serde_json::to_string(&ServerMsg::RoomSignal(s.clone())).unwrap();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::RoomSignal(s)));
    }

    /// (f) Reasons off the list, bad peer ids, malformed proofs of work: `bad_message`.
    #[test]
    fn decode_rejects_malformed_reports_and_proofs(v in malformed_moderation_message()) {
        prop_assert_eq!(check_decode(&v.to_string())?, Err(DecodeError::BadMessage), "{}", v);
    }

    /// (f) Reports, room reports and proofs of work come through as sent.
    #[test]
    fn moderation_fields_round_trip(
        reason in reason(),
        peer in any::<PeerId>(),
        pow in pow_solution(),
        version in any::<u32>(),
    ) {
        let text = with_reason(json!({"type": "report"}), &reason).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::Report { reason }));
        let text = with_reason(json!({"type": "room_report", "peer": peer}), &reason).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::RoomReport { peer, reason }));
        let text = json!({"type": "hello", "version": version, "pow": pow_json(&pow)}).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::Hello { version, pow: Some(pow) }));
        let text = json!({"type": "hello", "version": version, "pow": null}).to_string();
        prop_assert_eq!(protocol::decode(&text), Ok(ClientMsg::Hello { version, pow: None }));
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
        // One client each: the per-client limits are not what this tests.
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        let info = ConnInfo {
            key: ClientKey(key),
            ..ConnInfo::default()
        };
        board.connect(now, ConnId(i), info);
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

// ---------------------------------------------------------------------------
// Reports, bans, removals, per-client limits and proof of work, scene by scene.
// ---------------------------------------------------------------------------

/// What one call into the board did: each connection's messages, in order,
/// and the closes.
#[derive(Debug, Default)]
struct Heard {
    to: HashMap<ConnId, Vec<ServerMsg>>,
    closes: Vec<(ConnId, CloseReason)>,
}

impl Heard {
    fn of(&self, id: ConnId) -> &[ServerMsg] {
        self.to.get(&id).map_or(&[], Vec::as_slice)
    }

    fn count(&self) -> usize {
        self.to.values().map(Vec::len).sum::<usize>() + self.closes.len()
    }
}

/// A board on a virtual clock for scenes. After every call it checks that
/// nothing was sent to a connection after its `Close` and that the board's
/// invariants hold; then, as the real shell does, it disconnects whatever
/// the board closed (which must be silent).
struct Scene {
    board: Switchboard,
    now: Instant,
    next_id: u64,
    /// Connections the shell has not disconnected, with their client keys.
    live: HashMap<ConnId, ClientKey>,
}

impl Scene {
    fn new(config: Config, seed: u64) -> Scene {
        let board = Switchboard::with_entropy(config, Entropy::new(splitmix(seed)));
        Scene {
            board,
            now: Instant::now(),
            next_id: 1,
            live: HashMap::new(),
        }
    }

    fn collect(&mut self) -> Result<Heard, TestCaseError> {
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
    fn open(
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
    fn greeted(&mut self, key: ClientKey) -> Result<ConnId, TestCaseError> {
        let (id, heard) = self.open(key, None)?;
        prop_assert_eq!(heard.count(), 0, "connect said something: {:?}", heard);
        let heard = self.text(id, &hello(1))?;
        prop_assert!(
            matches!(heard.of(id), [ServerMsg::Welcome { .. }]) && heard.count() == 1,
            "hello answered with {heard:?}"
        );
        Ok(id)
    }

    fn text(&mut self, id: ConnId, text: &str) -> Result<Heard, TestCaseError> {
        self.board.handle_text(self.now, id, text);
        self.collect()
    }

    fn close_conn(&mut self, id: ConnId) -> Result<Heard, TestCaseError> {
        self.live.remove(&id);
        self.board.disconnect(self.now, id);
        self.collect()
    }

    /// Moves the clock on, running every due timeout.
    fn advance(&mut self, d: Duration) -> Result<Heard, TestCaseError> {
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

fn key(n: u8) -> ClientKey {
    ClientKey([0x40 + n; 16])
}

const SEARCH: &str = r#"{"type":"search"}"#;
const END: &str = r#"{"type":"end"}"#;
const REPORT: &str = r#"{"type":"report"}"#;

fn room_report_text(peer: PeerId) -> String {
    json!({"type": "room_report", "peer": peer}).to_string()
}

fn join_text(room: &str) -> String {
    json!({"type": "room_join", "room": room}).to_string()
}

/// A config for scenes: no message rate limit or error budget to speak of,
/// generous per-client limits, proof of work off, two reporters for a ban.
fn scene_config() -> Config {
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
fn meet(s: &mut Scene, a: ConnId, b: ConnId) -> Result<CallId, TestCaseError> {
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
fn a_banned_client_already_waiting_is_not_matched() {
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
fn nothing_follows_a_close_for_too_many_errors() {
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
struct SceneCounts {
    /// (b) Stranger and room reports of the target that counted.
    target_reports: u64,
    /// Reports by a reporter who had reported the target before: once.
    target_repeats: u64,
    /// Searches refused as banned during the first, second, third+ ban.
    banned_first: u64,
    banned_second: u64,
    banned_third: u64,
    /// A reporter and the target both searching but kept apart.
    kept_apart: u64,
    /// The target searching again after a ban ended.
    after_ban: u64,
    /// Reports that ended the call and banned the partner at once.
    banned_on_requeue: u64,
    /// Bans or blocks carried over to a new key.
    carried_over: u64,
    /// (c) Removals, room reports short of one, refused rejoins (also of the
    /// removed client's other connection), removals only after a member left.
    removals: u64,
    room_reports: u64,
    removed_rejoins: u64,
    removed_other_conn: u64,
    /// (d) Closed at connect for the connection cap or the connect limit;
    /// `rate_limited` on search, skip, report, room creation.
    cap_closes: u64,
    connect_closes: u64,
    searches_limited: u64,
    skips_limited: u64,
    reports_limited: u64,
    creations_limited: u64,
    /// ... while another client did the same thing unhindered.
    other_key_fine: u64,
    /// (e) Challenges; welcomes for a solution; rejected reused, forged,
    /// expired solutions; with `Auto`: challenges only for a crowded client,
    /// only for recent abuse, only for load, and plain welcomes. Hello
    /// timeouts, and welcomes after `hello_timeout` thanks to a challenge.
    hello_timeouts: u64,
    late_welcomes: u64,
    challenges: u64,
    solved: u64,
    reused: u64,
    forged: u64,
    expired: u64,
    auto_crowded: u64,
    auto_abuse: u64,
    auto_load: u64,
    auto_plain: u64,
}

impl SceneCounts {
    fn add(&mut self, o: &SceneCounts) {
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
enum BanOp {
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

const REPORTERS: usize = 8;

fn ban_config() -> Config {
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

fn ban_ops() -> impl Strategy<Value = Vec<BanOp>> {
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
fn run_bans(ops: &[BanOp]) -> Result<SceneCounts, TestCaseError> {
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

const ROOM_SLOTS: usize = 7;
/// Slots 5 and 6 are one client.
const ROOM_SLOT_KEY: [u8; ROOM_SLOTS] = [0, 1, 2, 3, 4, 5, 5];
const THE_ROOM: &str = "the-room";

#[derive(Debug, Clone)]
enum RoomOp {
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

fn room_ops() -> impl Strategy<Value = (u32, u32, Vec<RoomOp>)> {
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
struct RoomModel {
    members: Vec<(PeerId, usize)>,
    next_peer: PeerId,
    reports: HashMap<PeerId, Vec<PeerId>>,
    removed: HashSet<u8>,
    removed_slots: HashSet<usize>,
    /// Peer ids that left.
    departed: Vec<PeerId>,
}

/// (c) One room, seven slots (two of them one client), reports from anyone
/// of anyone: the target is removed exactly when more than `num/den` of
/// the other current members have reported it (counted when a report
/// arrives); it gets `removed` then `idle`, everyone else `peer_left`; its
/// client (either connection) is refused with `removed` while the room
/// lives, and may join again once the room was forgotten. A report that
/// removes nobody is not answered.
fn run_rooms(num: u32, den: u32, ops: &[RoomOp]) -> Result<SceneCounts, TestCaseError> {
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
fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// The scene properties reach what they are about: run a fixed-seed sample
/// of each and count.
#[test]
fn scene_properties_reach_bans_removals_limits_and_pow() {
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
enum LimitOp {
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

const LIMIT_CLIENTS: u8 = 3;

fn limit_config() -> Config {
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

fn limit_ops() -> impl Strategy<Value = Vec<LimitOp>> {
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
enum LPhase {
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
fn run_limits(ops: &[LimitOp]) -> Result<SceneCounts, TestCaseError> {
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

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The number in `0..=maxnumber` whose hash with `salt` is `challenge`.
fn solve(salt: &str, challenge: &str, maxnumber: u64) -> Option<u64> {
    (0..=maxnumber).find(|n| sha256_hex(&format!("{salt}{n}")) == challenge)
}

/// What a `hello` carries.
#[derive(Debug, Clone, Copy)]
enum Proof {
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
enum PowOp {
    Connect(u8),
    Hello(usize, Proof),
    Drop(usize),
    /// All of one client's connections go.
    Leave(u8),
    Advance(Duration),
}

const POW_CLIENTS: u8 = 4;

fn pow_config(mode: PowMode) -> Config {
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

fn pow_ops() -> impl Strategy<Value = (bool, Vec<PowOp>)> {
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
const NEWEST: usize = usize::MAX;

/// A challenge as sent, and its solution.
#[derive(Debug, Clone)]
struct Issued {
    solution: PowSolution,
    at: Instant,
    used: bool,
}

/// A solved challenge from a server with another key.
static FOREIGN: LazyLock<PowSolution> = LazyLock::new(|| {
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

fn pow_json(p: &PowSolution) -> Value {
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
fn run_pow(always: bool, ops: &[PowOp]) -> Result<SceneCounts, TestCaseError> {
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
