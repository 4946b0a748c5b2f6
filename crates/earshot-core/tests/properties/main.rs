//! Property tests of the switchboard and the decoder, on a virtual clock.
//! Shared helpers here; by topic: `model` (what the outputs say about
//! everyone), `sessions` (random sessions), `decoder`, `fifo`, `scenes`
//! (reports, bans, removals, limits and proof of work).
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

mod decoder;
mod fifo;
mod model;
mod scenes;
mod sessions;

#[allow(unused_imports)]
use {decoder::*, fifo::*, model::*, scenes::*, sessions::*};

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
        include_str!("../../src/words/adjectives.txt"),
        include_str!("../../src/words/nouns.txt"),
        include_str!("../../src/words/verbs.txt"),
        include_str!("../../src/words/adverbs.txt"),
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
