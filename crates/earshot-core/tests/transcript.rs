//! A transcript of what the switchboard receives and sends, checked against
//! the one committed in `tests/transcripts/switchboard.txt`.
//!
//! Seeded sessions of several clients send every kind of message (and some
//! garbage) on a virtual clock: hello, searches with interests, signals,
//! skips, ends, reports, rooms with locks, leaves and room reports, ICE
//! refreshes, disconnects, and time passing. Every frame in, message out and
//! close is written down, in order. A change that is meant to keep the
//! behaviour (a refactoring of the switchboard) must keep the transcript to
//! the byte; a change of behaviour shows as a diff, and is blessed with
//! `EARSHOT_BLESS=1 cargo test -p earshot-core --test transcript`.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use earshot_core::pow::PowMode;
use earshot_core::protocol::IceServer;
use earshot_core::{ClientKey, Config, ConnId, ConnInfo, Entropy, Output, Switchboard};

const SESSIONS: u64 = 16;
const STEPS: usize = 300;
const CLIENTS: u64 = 8;
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/transcripts/switchboard.txt"
);

/// splitmix64: a fixed sequence per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const INTERESTS: &[&str] = &["chess", "music", "films", "go"];
const ROOMS: &[&str] = &["quiet-otters-juggle-softly", "brave-lamps-sing-loudly"];
const VERIFIERS: &[&str] = &[
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
];
const AUTH: &str = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC";

/// One client frame, from the rng; `call` is the last call id this
/// connection was told of.
fn frame(rng: &mut Rng, call: u64) -> String {
    match rng.below(22) {
        0 => r#"{"type":"hello","version":1}"#.into(),
        1..=3 => {
            let n = rng.below(3);
            let tags: Vec<String> = (0..n)
                .map(|_| format!("{:?}", rng.pick(INTERESTS)))
                .collect();
            format!(r#"{{"type":"search","interests":[{}]}}"#, tags.join(","))
        }
        4 | 5 => format!(
            r#"{{"type":"signal","call":{call},"description":{{"type":"{}","sdp":"v=0 x"}}}}"#,
            rng.pick(&["offer", "answer"])
        ),
        6 => format!(
            r#"{{"type":"signal","call":{call},"candidate":{{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}}}"#
        ),
        7 => r#"{"type":"skip"}"#.into(),
        8 => r#"{"type":"end"}"#.into(),
        9 => format!(
            r#"{{"type":"report","reason":"{}"}}"#,
            rng.pick(&["harassment", "spam", "other"])
        ),
        10 | 11 => {
            let room = rng.pick(ROOMS);
            match rng.below(3) {
                0 => format!(r#"{{"type":"room_join","room":"{room}"}}"#),
                1 => format!(
                    r#"{{"type":"room_join","room":"{room}","verifier":"{}"}}"#,
                    rng.pick(VERIFIERS)
                ),
                _ => format!(r#"{{"type":"room_join","room":"{}"}}"#, room.to_uppercase()),
            }
        }
        12 => format!(
            r#"{{"type":"room_lock","verifier":"{}"}}"#,
            rng.pick(VERIFIERS)
        ),
        13 => r#"{"type":"room_unlock"}"#.into(),
        14 => r#"{"type":"room_leave"}"#.into(),
        15 => format!(
            r#"{{"type":"signal","to":{},"description":{{"type":"offer","sdp":"v=0 y"}},"auth":"{AUTH}"}}"#,
            1 + rng.below(CLIENTS + 1)
        ),
        16 => format!(
            r#"{{"type":"room_report","peer":{},"reason":"spam"}}"#,
            1 + rng.below(CLIENTS + 1)
        ),
        17 => r#"{"type":"room_suggest"}"#.into(),
        18 => r#"{"type":"refresh_ice"}"#.into(),
        19 => rng
            .pick(&[
                "not json",
                "{}",
                r#"{"type":"nonsense"}"#,
                r#"{"type":"search","interests":"chess"}"#,
                r#"{"type":"signal","call":"seven"}"#,
                r#"{"type":"room_join","room":"x"}"#,
            ])
            .into(),
        _ => r#"{"type":"search","interests":[]}"#.into(),
    }
}

fn config() -> Config {
    let mut c = Config::default();
    // Proof-of-work challenges carry times from the real clock.
    c.pow.mode = PowMode::Off;
    c
}

fn info(client: u64) -> ConnInfo {
    // Two connections share each client key: limits and reports per client.
    let mut key = [0u8; 16];
    key[0] = (client / 2) as u8;
    ConnInfo {
        key: ClientKey(key),
        ice_servers: Arc::from(vec![IceServer {
            urls: vec!["stun:127.0.0.1:3478".into()],
            username: None,
            credential: None,
        }]),
        ..ConnInfo::default()
    }
}

/// The transcript of one seeded session.
fn session(seed: u64, out: &mut String) {
    let mut rng = Rng(seed);
    let mut entropy_seed = Rng(seed ^ 0xA5A5_A5A5);
    let mut board = Switchboard::with_entropy(config(), Entropy::new(move || entropy_seed.next()));
    let t0 = Instant::now();
    let mut now = t0;
    let mut live = [false; CLIENTS as usize];
    let mut calls = [0u64; CLIENTS as usize];
    let mut generation = [0u64; CLIENTS as usize];
    let ms = |now: Instant| now.duration_since(t0).as_millis();
    let _ = writeln!(out, "# session {seed}");
    let drain = |board: &mut Switchboard, out: &mut String, calls: &mut [u64], now: Instant| {
        while let Some(o) = board.poll_output() {
            match o {
                Output::Send(id, msg) => {
                    let json = serde_json::to_string(&msg).expect("server messages serialise");
                    if let Some(c) = serde_json::from_str::<serde_json::Value>(&json)
                        .ok()
                        .and_then(|v| v["call"].as_u64())
                    {
                        calls[(id.0 % CLIENTS) as usize] = c;
                    }
                    let _ = writeln!(out, "{} out {} {json}", ms(now), id.0);
                }
                Output::Close(id, reason) => {
                    let _ = writeln!(out, "{} close {} {reason:?}", ms(now), id.0);
                }
                other => {
                    let _ = writeln!(out, "{} other {other:?}", ms(now));
                }
            }
        }
        board
            .check_invariants()
            .unwrap_or_else(|e| panic!("invariant broken: {e}"));
    };
    for _ in 0..STEPS {
        let slot = rng.below(CLIENTS) as usize;
        // Connection ids are never reused: the generation tells them apart.
        let id = ConnId(generation[slot] * CLIENTS + slot as u64);
        match rng.below(20) {
            0 if live[slot] => {
                let _ = writeln!(out, "{} disconnect {}", ms(now), id.0);
                board.disconnect(now, id);
                live[slot] = false;
                generation[slot] += 1;
            }
            1 => {
                let step = Duration::from_millis(rng.below(8_000));
                let until = now + step;
                while let Some(at) = board.poll_timeout() {
                    if at > until {
                        break;
                    }
                    now = now.max(at);
                    let _ = writeln!(out, "{} timeout", ms(now));
                    board.handle_timeout(now);
                    drain(&mut board, out, &mut calls, now);
                }
                now = until;
            }
            _ if !live[slot] => {
                let _ = writeln!(out, "{} connect {}", ms(now), id.0);
                board.connect(now, id, info(slot as u64));
                live[slot] = true;
                calls[slot] = 0;
                // Most clients greet at once; some send something else first.
                if rng.below(8) != 0 {
                    let hello = r#"{"type":"hello","version":1}"#;
                    let _ = writeln!(out, "{} in {} {hello}", ms(now), id.0);
                    board.handle_text(now, id, hello);
                }
            }
            _ => {
                let text = frame(&mut rng, calls[slot]);
                let _ = writeln!(out, "{} in {} {text}", ms(now), id.0);
                board.handle_text(now, id, &text);
            }
        }
        drain(&mut board, out, &mut calls, now);
        now += Duration::from_millis(rng.below(50));
    }
}

#[test]
fn the_switchboard_keeps_its_transcript() {
    let mut transcript = String::new();
    for seed in 0..SESSIONS {
        session(seed, &mut transcript);
    }
    if std::env::var_os("EARSHOT_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(GOLDEN).parent().unwrap()).unwrap();
        std::fs::write(GOLDEN, &transcript).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(GOLDEN)
        .expect("tests/transcripts/switchboard.txt (make it with EARSHOT_BLESS=1)");
    if golden != transcript {
        let (n, (want, got)) = golden
            .lines()
            .zip(transcript.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((
                golden.lines().count().min(transcript.lines().count()),
                ("<end>", "<end>"),
            ));
        let path = std::env::temp_dir().join("earshot-transcript.txt");
        let _ = std::fs::write(&path, &transcript);
        panic!(
            "the transcript changed at line {}:\n  was: {want}\n  now: {got}\n\
             whole new transcript: {}",
            n + 1,
            path.display()
        );
    }
    // The sessions reached what they are meant to exercise.
    for needle in [
        "\"type\":\"matched\"",
        "\"type\":\"call_ended\"",
        "\"type\":\"room_joined\"",
        "\"type\":\"peer_joined\"",
        "\"type\":\"room_lock_state\"",
        "\"type\":\"error\"",
        "\"type\":\"ice_servers\"",
        "\"type\":\"room_suggestion\"",
    ] {
        assert!(transcript.contains(needle), "no {needle} in the transcript");
    }
}
