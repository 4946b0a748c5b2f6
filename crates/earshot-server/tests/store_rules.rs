//! Each Lua script of the backplane against the Rust rule it mirrors, on
//! the same random inputs: the script runs on a real `redis-server`, its
//! twin in `earshot-core` on a model of the same keys, and after every step
//! the replies and the stored state must be the same.
//!
//! - `the_allowance_script_and_the_rust_rule_agree`: `take.lua` and
//!   `allowance::take`.
//! - `the_admission_and_avoid_scripts_and_the_rust_rules_agree`:
//!   `admit.lua`, `avoid.lua` and `admission::Client`.
//! - `the_queue_scripts_and_the_rust_rules_agree`: `pair.lua`, `ZREM`,
//!   `queue_touch.lua`, `queue_sweep.lua` and `queue::Lane`, with tags,
//!   interest waits, expiry, dead nodes, avoid lists and joins again.
//! - `the_room_scripts_and_the_rust_rules_agree`: `room_join.lua`,
//!   `room_leave.lua` and `room::RoomRecord`, with locks, guesses,
//!   removals, creations and dead members.
//! - `the_heartbeat_script_and_the_rust_rule_agree`: `heartbeat.lua` and
//!   `nodes::Registry`, with node numbers taken, tokens replaced and
//!   forgotten, and layouts changing hands.
//! - `the_strike_script_and_the_rust_rule_agree`: `strike.lua` and
//!   `moderation::Strikes`.
//!
//! Time is an argument to both, from one clock that never runs slower
//! than the real one, so a TTL Redis keeps in real time never ends before
//! the twin says its content has.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use earshot_core::backplane::admission::{Client, decode_admission};
use earshot_core::backplane::allowance::{self, Bucket};
use earshot_core::backplane::nodes::{self, Beat, BeatReply, Liveness, Registry, decode_beat};
use earshot_core::backplane::queue::{self, Joiner, Lane, decode_pair_reply};
use earshot_core::backplane::room::{Joining, RoomRecord, decode_room_reply};
use earshot_core::backplane::script::Script;
use earshot_core::backplane::scripts::Scripts;
use earshot_core::moderation::{Added, Strike, StrikeRule, Strikes, strike_args};
use earshot_core::protocol::Country;
use earshot_core::{ClientKey, ConnId};
use support::redis::RedisServer;

/// A small, seeded generator: every run sees the same inputs.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Milliseconds since the epoch, moved on by `jump` and never slower than
/// real time.
struct Clock {
    base: u64,
    start: Instant,
    jumped: u64,
}

impl Clock {
    fn new() -> Clock {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        Clock {
            base,
            start: Instant::now(),
            jumped: 0,
        }
    }

    fn now(&self) -> u64 {
        self.base + self.start.elapsed().as_millis() as u64 + self.jumped
    }

    fn jump(&mut self, ms: u64) {
        self.jumped += ms;
    }
}

/// Runs `script` on `keys` and `args`.
fn eval(
    c: &mut redis::Connection,
    script: &Script,
    keys: &[&str],
    args: &[String],
) -> redis::Value {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(&script.source).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(a);
    }
    cmd.query(c)
        .unwrap_or_else(|e| panic!("{} failed: {e}", script.name))
}

fn text(v: redis::Value) -> String {
    redis::from_redis_value(v).expect("a string reply")
}

fn int(v: redis::Value) -> i64 {
    redis::from_redis_value(v).expect("an integer reply")
}

fn hgetall(c: &mut redis::Connection, key: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(c).unwrap()
}

fn flush(c: &mut redis::Connection) {
    let () = redis::cmd("FLUSHALL").query(c).unwrap();
}

#[test]
fn the_allowance_script_and_the_rust_rule_agree() {
    let redis = RedisServer::start();
    let mut c = redis.conn().unwrap();
    let scripts = Scripts::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut clock = Clock::new();
    let (mut refused, mut granted) = (0, 0);
    for case in 0..40 {
        flush(&mut c);
        let mut twin: HashMap<String, Bucket> = HashMap::new();
        let (burst, every) = (1 + rng.below(4) as u32, 50 + rng.below(400));
        for step in 0..25 {
            clock.jump(rng.below(3) * rng.below(every));
            let now = clock.now();
            let key = format!("earshot:2:{{c{}}}:rl:search", rng.below(3));
            let lua = int(eval(
                &mut c,
                &scripts.take,
                &[&key],
                &[burst.to_string(), every.to_string(), now.to_string()],
            ));
            let rust = match allowance::take(twin.get(&key).copied(), burst, every, now) {
                Ok((b, _)) => {
                    twin.insert(key.clone(), b);
                    0
                }
                Err(wait) => wait as i64,
            };
            assert_eq!(lua, rust, "case {case}, step {step}");
            if lua > 0 {
                refused += 1;
            } else {
                granted += 1;
            }
            let stored: Option<String> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
            let expect = twin.get(&key).map(|b| format!("{}:{}", b.level, b.at));
            assert_eq!(stored, expect, "case {case}, step {step}: the bucket");
        }
    }
    assert!(
        refused > 50 && granted > 200,
        "{refused} refused, {granted} granted"
    );
}

#[test]
fn the_admission_and_avoid_scripts_and_the_rust_rules_agree() {
    let redis = RedisServer::start();
    let mut c = redis.conn().unwrap();
    let scripts = Scripts::new();
    let mut rng = Rng(0x0bad_cafe_f00d_1234);
    let mut clock = Clock::new();
    let keys = [
        "earshot:2:{c1}:ban",
        "earshot:2:{c1}:rl:search",
        "earshot:2:{c1}:avoid",
    ];
    let mut seen = HashMap::<&str, usize>::new();
    for case in 0..40 {
        flush(&mut c);
        let mut twin = Client::default();
        let cap = 2 + rng.below(4) as usize;
        for step in 0..30 {
            clock.jump(rng.below(60));
            let now = clock.now();
            match rng.below(4) {
                0 | 1 => {
                    let who = if rng.chance(2) {
                        format!("c{}", rng.below(6))
                    } else {
                        format!("k{:032x}", rng.below(6))
                    };
                    let until = now + rng.below(300);
                    let lua = int(eval(
                        &mut c,
                        &scripts.avoid,
                        &[keys[2]],
                        &[
                            now.to_string(),
                            who.clone(),
                            until.to_string(),
                            cap.to_string(),
                        ],
                    ));
                    let rust = twin.avoid(now, &who, until, cap);
                    assert_eq!(lua, rust as i64, "case {case}, step {step}: avoid");
                    *seen.entry("avoid").or_default() += 1;
                }
                2 if rng.chance(3) => {
                    let until = now + rng.below(200);
                    let () = redis::cmd("SET")
                        .arg(keys[0])
                        .arg(until)
                        .arg("PX")
                        .arg((until - now).max(1))
                        .query(&mut c)
                        .unwrap();
                    twin.ban = Some(until);
                }
                _ => {
                    let limit = rng
                        .chance(2)
                        .then(|| (1 + rng.below(3) as u32, 50 + rng.below(100)));
                    let args = match limit {
                        Some((b, e)) => vec![now.to_string(), b.to_string(), e.to_string()],
                        None => vec![now.to_string(), String::new(), String::new()],
                    };
                    let lua = text(eval(&mut c, &scripts.admit, &keys, &args));
                    let rust = twin.admit(now, limit);
                    assert_eq!(lua, rust, "case {case}, step {step}: admit");
                    let kind = match decode_admission(&lua).unwrap() {
                        earshot_core::backplane::admission::Admission::Ok { avoid }
                            if !avoid.is_empty() =>
                        {
                            "avoiding"
                        }
                        earshot_core::backplane::admission::Admission::Ok { .. } => "ok",
                        earshot_core::backplane::admission::Admission::Banned { .. } => "banned",
                        earshot_core::backplane::admission::Admission::Limited { .. } => "limited",
                    };
                    *seen.entry(kind).or_default() += 1;
                }
            }
            let stored: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(keys[2])
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(&mut c)
                .unwrap();
            let stored: BTreeMap<String, u64> = stored.into_iter().collect();
            assert_eq!(
                stored, twin.avoid,
                "case {case}, step {step}: the avoid set"
            );
        }
    }
    for kind in ["avoid", "avoiding", "ok", "banned", "limited"] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 10, "{seen:?}");
    }
}

const VOCABULARY: [&str; 4] = ["chess", "go", "jazz", "rust lang"];

#[test]
fn the_queue_scripts_and_the_rust_rules_agree() {
    let redis = RedisServer::start();
    let mut c = redis.conn().unwrap();
    let scripts = Scripts::new();
    let mut rng = Rng(0xdead_beef_0123_4567);
    let mut clock = Clock::new();
    let z = "earshot:2:{q0}";
    let mut seen = HashMap::<String, usize>::new();
    for case in 0..60 {
        flush(&mut c);
        let mut lane = Lane::default();
        // Two nodes' tokens, one of them dead in the view; one token older
        // than the registry.
        let born = clock.now() - 10_000;
        let tokens = [
            nodes::new_token(born + 1000, 1),
            nodes::new_token(born + 2000, 2),
            nodes::new_token(born - 60_000, 3),
        ];
        let dead_now = clock.now() + 100_000;
        let live = Liveness::from_tokens(
            &[
                (format!("1:{}", tokens[0]), dead_now),
                (format!("2:{}", tokens[1]), born),
            ],
            born,
            clock.now(),
        );
        let limit = 2 + rng.below(6) as usize;
        let mut arrivals: HashMap<u64, u64> = HashMap::new();
        // The entry each connection last queued under, as a node keeps it.
        let mut entries: HashMap<u64, String> = HashMap::new();
        for step in 0..40 {
            clock.jump(rng.below(400));
            let now = clock.now();
            let conn = 1 + rng.below(8);
            match rng.below(10) {
                0 => {
                    let entry = entries.get(&conn).cloned().unwrap_or_default();
                    let lua: i64 = redis::cmd("ZREM").arg(z).arg(&entry).query(&mut c).unwrap();
                    let rust = lane.leave(&entry);
                    assert_eq!(lua == 1, rust, "case {case}, step {step}: leave");
                }
                1 => {
                    let expiry = now + rng.below(3000);
                    let pairs: Vec<(String, String)> = (0..3)
                        .filter_map(|_| entries.get(&(1 + rng.below(8))).cloned())
                        .map(|old| {
                            let new = queue::renewed(&old, expiry).unwrap();
                            (old, new)
                        })
                        .collect();
                    let args: Vec<String> = pairs
                        .iter()
                        .flat_map(|(o, n)| [o.clone(), n.clone()])
                        .collect();
                    let lua = int(eval(&mut c, &scripts.queue_touch, &[z], &args));
                    assert_eq!(
                        lua as usize,
                        lane.touch(&pairs),
                        "case {case}, step {step}: touch"
                    );
                }
                2 => {
                    let args = [
                        now.to_string(),
                        limit.to_string(),
                        live.dead_arg(),
                        live.born().to_string(),
                    ];
                    let lua = int(eval(&mut c, &scripts.queue_sweep, &[z], &args));
                    assert_eq!(
                        lua as usize,
                        lane.sweep(now, limit, &live),
                        "case {case}, step {step}: sweep"
                    );
                }
                _ => {
                    let node = 1 + rng.below(3) as u16;
                    let tags: Vec<String> = (0..rng.below(3))
                        .map(|_| VOCABULARY[rng.below(4) as usize].to_owned())
                        .fold(Vec::new(), |mut v, t| {
                            if !v.contains(&t) {
                                v.push(t);
                            }
                            v
                        });
                    let arrival = *arrivals.entry(conn).or_insert(now - rng.below(50));
                    let j = Joiner {
                        conn: ConnId(conn),
                        node,
                        token: tokens[node as usize - 1].clone(),
                        key: ClientKey([conn as u8 % 5; 16]),
                        open_at: if tags.is_empty() || rng.chance(3) {
                            now
                        } else {
                            now + rng.below(2000)
                        },
                        country: if rng.chance(2) {
                            Country::new("de")
                        } else {
                            None
                        },
                        tags,
                        expiry: now + rng.below(4000),
                        arrival,
                        again: if rng.chance(2) {
                            entries.get(&conn).cloned()
                        } else {
                            None
                        },
                    };
                    let avoid: Vec<String> = (0..rng.below(3))
                        .map(|_| {
                            if rng.chance(2) {
                                format!("c{}", 1 + rng.below(8))
                            } else {
                                format!(
                                    "k{}",
                                    earshot_core::backplane::hex(&ClientKey(
                                        [rng.below(5) as u8; 16]
                                    ))
                                )
                            }
                        })
                        .collect();
                    let avoid = avoid.join(",");
                    let args = j.args(now, limit, &avoid, &live);
                    let lua = text(eval(&mut c, &scripts.pair, &[z], &args));
                    let rust = lane.pair(&j, now, limit, &avoid, &live);
                    assert_eq!(lua, rust, "case {case}, step {step}: pair");
                    let kind = match decode_pair_reply(&lua).unwrap() {
                        earshot_core::backplane::PairReply::Matched(p) if !p.shared.is_empty() => {
                            "shared"
                        }
                        earshot_core::backplane::PairReply::Matched(_) => "matched",
                        _ => {
                            entries.insert(conn, j.entry());
                            if j.again.is_some() { "again" } else { "queued" }
                        }
                    };
                    *seen.entry(kind.into()).or_default() += 1;
                }
            }
            let stored: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(z)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(&mut c)
                .unwrap();
            assert_eq!(stored, lane.dump(), "case {case}, step {step}: the lane");
        }
    }
    for kind in ["shared", "matched", "queued", "again"] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 10, "{seen:?}");
    }
}

#[test]
fn the_room_scripts_and_the_rust_rules_agree() {
    let redis = RedisServer::start();
    let mut c = redis.conn().unwrap();
    let scripts = Scripts::new();
    let mut rng = Rng(0x5eed_0000_1111_2222);
    let mut clock = Clock::new();
    let room = "earshot:2:{rabc}";
    let mut seen = HashMap::<String, usize>::new();
    for case in 0..50 {
        flush(&mut c);
        let mut twin = RoomRecord::default();
        let born = clock.now() - 10_000;
        let tokens = [
            nodes::new_token(born + 1000, 1),
            nodes::new_token(born + 1000, 2),
        ];
        let mut live = Liveness::from_tokens(&[], born, clock.now());
        for step in 0..30 {
            clock.jump(rng.below(300));
            let now = clock.now();
            if rng.chance(12) {
                // Node 2 dies.
                live = Liveness::from_tokens(&[(format!("2:{}", tokens[1]), born)], born, now);
            }
            match rng.below(8) {
                0 => {
                    let peer = 1 + rng.below(4) as u32;
                    let lua = int(eval(
                        &mut c,
                        &scripts.room_leave,
                        &[room],
                        &[peer.to_string()],
                    ));
                    assert_eq!(
                        lua == 1,
                        twin.leave(peer),
                        "case {case}, step {step}: leave"
                    );
                }
                1 => {
                    let v = ["aa", "bb"][rng.below(2) as usize];
                    if rng.chance(3) {
                        let () = redis::cmd("HDEL")
                            .arg(room)
                            .arg("lock")
                            .query(&mut c)
                            .map(|_: i64| ())
                            .unwrap();
                        twin.lock(None);
                    } else {
                        let () = redis::cmd("HSET")
                            .arg(room)
                            .arg("lock")
                            .arg(v)
                            .query(&mut c)
                            .map(|_: i64| ())
                            .unwrap();
                        twin.lock(Some(v.into()));
                    }
                }
                2 if rng.chance(3) => {
                    let k = ClientKey([rng.below(6) as u8; 16]);
                    let () = redis::cmd("HSET")
                        .arg(room)
                        .arg(format!("x:{}", earshot_core::backplane::hex(&k)))
                        .arg(1)
                        .query(&mut c)
                        .map(|_: i64| ())
                        .unwrap();
                    twin.remove(&k);
                }
                _ => {
                    let node = 1 + rng.below(2) as u16;
                    let j = Joining {
                        conn: ConnId(1 + rng.below(20)),
                        node,
                        token: tokens[node as usize - 1].clone(),
                        key: ClientKey([rng.below(6) as u8; 16]),
                        verifier: ["", "aa", "bb"][rng.below(3) as usize].into(),
                        max_size: 2 + rng.below(3) as usize,
                        ttl: 120_000,
                        attempts: (1 + rng.below(3) as u32, 100 + rng.below(500)),
                        charged: rng.chance(2),
                    };
                    let lua = text(eval(
                        &mut c,
                        &scripts.room_join,
                        &[room],
                        &j.args(now, &live),
                    ));
                    let rust = twin.join(&j, now, &live);
                    let (l, r) = (decode_room_reply(&lua), decode_room_reply(&rust));
                    assert_eq!(l, r, "case {case}, step {step}: join ({lua} / {rust})");
                    let kind = lua.split('"').nth(3).unwrap_or("?").to_owned();
                    let kind = match lua.split("\"code\":\"").nth(1) {
                        Some(code) => code.split('"').next().unwrap_or("?").to_owned(),
                        None => kind,
                    };
                    *seen.entry(kind).or_default() += 1;
                }
            }
            assert_eq!(
                hgetall(&mut c, room),
                twin.fields,
                "case {case}, step {step}: the room"
            );
        }
    }
    for kind in [
        "joined",
        "create",
        "room_full",
        "passphrase_required",
        "wrong_passphrase",
        "rate_limited",
        "removed",
    ] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 3, "{seen:?}");
    }
}

#[test]
fn the_heartbeat_script_and_the_rust_rule_agree() {
    let redis = RedisServer::start();
    let mut c = redis.conn().unwrap();
    let scripts = Scripts::new();
    let mut rng = Rng(0x4242_4242_1357_9bdf);
    let mut clock = Clock::new();
    let reg = "earshot:{nodes}";
    let mut seen = HashMap::<&str, usize>::new();
    for case in 0..40 {
        flush(&mut c);
        let mut twin = Registry::default();
        let pool: Vec<String> = (0..8).map(|i| nodes::new_token(clock.now(), i)).collect();
        for step in 0..30 {
            clock.jump(rng.below(2000));
            let now = clock.now();
            let node = 1 + rng.below(3) as u16;
            // A few tokens per node, so that beats renew, replace and clash.
            let pick = |rng: &mut Rng| pool[node as usize * 2 + rng.below(2) as usize].clone();
            let token = pick(&mut rng);
            let old = if rng.chance(3) {
                pick(&mut rng)
            } else {
                String::new()
            };
            let b = Beat {
                node,
                token,
                old,
                expiry: now + 3000,
                now,
                stamp: ["2/1", "2/1", "2/1", "2/1", "2/16", "3/1"][rng.below(6) as usize].into(),
                forget: now.saturating_sub(8000),
            };
            let args = [
                b.node.to_string(),
                b.token.clone(),
                b.old.clone(),
                b.expiry.to_string(),
                b.now.to_string(),
                b.stamp.clone(),
                b.forget.to_string(),
            ];
            let lua = decode_beat(&text(eval(&mut c, &scripts.heartbeat, &[reg], &args))).unwrap();
            let rust = twin.beat(&b);
            assert_eq!(lua, rust, "case {case}, step {step}");
            *seen
                .entry(match lua {
                    BeatReply::Ok { renewed: true, .. } => "renewed",
                    BeatReply::Ok { .. } => "new",
                    BeatReply::Taken => "taken",
                    BeatReply::Layout(_) => "layout",
                })
                .or_default() += 1;
            let mut stored = hgetall(&mut c, reg);
            assert_eq!(
                stored.remove("layout"),
                twin.stamp,
                "case {case}, step {step}: stamp"
            );
            let born = stored.remove("born").map(|b| b.parse::<u64>().unwrap());
            assert_eq!(
                born,
                twin.stamp.as_ref().map(|_| twin.born),
                "case {case}, step {step}: born"
            );
            let stored: BTreeMap<String, u64> = stored
                .into_iter()
                .map(|(k, v)| (k, v.parse().unwrap()))
                .collect();
            assert_eq!(stored, twin.tokens, "case {case}, step {step}: tokens");
        }
    }
    for kind in ["renewed", "new", "taken", "layout"] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 5, "{seen:?}");
    }
}

/// The strike script in Redis and the Rust rule it mirrors
/// (`earshot_core::moderation::Strikes`) agree, strike by strike, on random
/// strikes: repeats, weightless and light strikes, a full book, reporters
/// grouped by network (now or under the previous secret), by room and by
/// arrival, and bans.
#[test]
fn the_strike_script_and_the_rust_rule_agree() {
    let redis = RedisServer::start();
    let mut c = redis.conn().unwrap();
    let scripts = Scripts::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut clock = Clock::new();
    let key = |n: u64| ClientKey([n as u8 + 1; 16]);
    let keys = ["earshot:2:{caa}:strikes", "earshot:2:{caa}:ban"];
    let (mut bans, mut grouped) = (0, 0);
    for case in 0..60 {
        flush(&mut c);
        let rule = StrikeRule {
            window: Duration::from_secs(24 * 3600),
            reporters: 2 + rng.below(2) as usize,
            weight: 1000 * (1 + rng.below(3) as u32),
            ban_lengths: vec![Duration::from_secs(3600)],
            reports: (1000, Duration::from_secs(1)),
            together: Duration::from_secs(60),
            max_strikes: 3 + rng.below(4) as usize,
        };
        let mut rust = Strikes::default();
        let base = Instant::now() + Duration::from_secs(3600);
        let start = clock.now();
        for i in 0..12u64 {
            let reporter = key(rng.below(8));
            let network = key(10 + rng.below(5));
            let previous_network = rng.chance(3).then(|| key(10 + rng.below(5)));
            let room = rng.chance(3).then(|| rng.below(2));
            // Arrivals 25 s apart: never within a few ms of the 60 s limit.
            let age = Duration::from_secs(25 * rng.below(20));
            let weight = [0, 333, 500, 1000][rng.below(4) as usize];
            clock.jump(3);
            let now = clock.now();
            let args = strike_args(
                &reporter,
                weight,
                &network,
                previous_network.as_ref(),
                age,
                room,
                &rule,
                now,
            );
            let lua = int(eval(&mut c, &scripts.strike, &keys, &args));
            let at = base + Duration::from_millis(now - start);
            let added = rust.add(
                Strike {
                    at,
                    reporter,
                    network,
                    previous_network,
                    arrived: at - age,
                    room,
                    weight,
                },
                &rule,
            );
            assert_eq!(
                lua > 0,
                added == Added::Ban,
                "case {case}, strike {i}: Lua {lua}, Rust {added:?}"
            );
            if lua > 0 {
                bans += 1;
                let until: u64 = redis::cmd("GET").arg(keys[1]).query(&mut c).unwrap();
                assert_eq!(until, now + 3_600_000, "the ban runs from now");
            }
            let fields: Vec<String> = redis::cmd("HKEYS").arg(keys[0]).query(&mut c).unwrap();
            let kept = fields.iter().filter(|f| *f != "n").count();
            assert_eq!(kept, rust.len(), "case {case}, strike {i}: strikes kept");
            let (reporters, _) = rust.tally(rule.together);
            grouped += usize::from(reporters < rust.len());
        }
    }
    assert!(bans > 10, "only {bans} bans");
    assert!(grouped > 50, "only {grouped} groupings");
}
