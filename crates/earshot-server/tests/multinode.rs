//! Several `earshot` nodes sharing one real `redis-server`, every process on
//! its own loopback port: strangers on different nodes are matched and their
//! offer, answer and candidates relayed; a ban made on one node holds on
//! another, and three reports made on three nodes add up to a ban (when
//! the reporters weigh and are on distinct networks: fresh reporters, or
//! reporters of one /24, ban nobody); one
//! client's connects, searches, reports and room creations on two nodes
//! draw on one allowance each; a call's record in
//! Redis names both sides while it lasts and is gone once it ends, or once a
//! side's node dies; a node killed with SIGKILL ends its calls on the other
//! nodes and leaves no waiter behind; a Redis restart closes connections
//! with 1012 ("backplane unavailable") and the nodes serve again once it is
//! back, and a short outage (Redis frozen) leaves no ghost waiter or room
//! member.
//!
//! Each test starts its own `redis-server` (`--save "" --appendonly no`, so
//! it writes nothing) and its own nodes. Clients connect from distinct
//! 127.0.0.x addresses where they must be distinct clients.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::redis::RedisServer;
use support::server::Server;
use support::ws::{
    WAIT, Ws, ban_by_three_networks, client, client_when_ready, eventually, meet_and_report, recv,
    recv_type, room_join, search, search_when_banned, send, ws_from,
};

fn node(redis: &RedisServer) -> Server {
    Server::node(env!("CARGO_BIN_EXE_earshot"), &redis.url(), &[])
}

/// A node on which every report weighs fully, whoever makes it: what is
/// tested with it is how Redis pools strikes (and groups reporters by
/// network), not how a node weighs them.
fn unweighed_node(redis: &RedisServer) -> Server {
    Server::node(
        env!("CARGO_BIN_EXE_earshot"),
        &redis.url(),
        &["--test-unweighed-reports"],
    )
}

/// `a` waits on one node, `b` joins on another: they are matched, `b`
/// (the joiner) makes the offer. The call id.
async fn match_pair(redis: &RedisServer, a: &mut Ws, b: &mut Ws) -> u64 {
    let before = redis.queue().len();
    search(a).await;
    // `searching` comes before the queue join is done in Redis.
    eventually("a waits in Redis", || redis.queue().len() > before);
    search(b).await;
    let mb = recv_type(b, "matched").await;
    let ma = recv_type(a, "matched").await;
    assert_eq!(ma["call"], mb["call"]);
    assert_eq!(
        (ma["polite"].as_bool(), mb["polite"].as_bool()),
        (Some(true), Some(false))
    );
    ma["call"].as_u64().unwrap()
}

/// The store's record of `call`: its two sides and the record's TTL (ms).
fn call_record(redis: &RedisServer, call: u64) -> Option<(String, i64)> {
    let mut c = redis.conn().unwrap();
    let k = format!("earshot:2:call:{call}");
    let sides: Option<String> = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
    sides.map(|s| (s, ttl))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_two_nodes_are_matched_and_signal_across() {
    let redis = RedisServer::start();
    let (na, nb) = (node(&redis), node(&redis));
    let mut a = client("127.0.0.2", &na).await;
    let mut b = client("127.0.0.3", &nb).await;
    let call = match_pair(&redis, &mut a, &mut b).await;
    assert!(call < 1 << 53, "call ids survive a JavaScript number");
    assert!(redis.queue().is_empty(), "both left the queue");
    // The call's record names both sides, each on its own node.
    let (sides, ttl) = call_record(&redis, call).expect("the call is recorded");
    let sides: Vec<(u64, u64)> = sides
        .split(' ')
        .map(|s| {
            let (n, c) = s.split_once(':').unwrap();
            (n.parse().unwrap(), c.parse().unwrap())
        })
        .collect();
    assert_eq!(sides.len(), 2);
    assert!(sides.iter().all(|&(n, c)| c >> 48 == n), "{sides:?}");
    assert_ne!(sides[0].0, sides[1].0, "two nodes");
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");

    let offer = json!({"type": "signal", "call": call,
        "description": {"type": "offer", "sdp": "v=0 offer from b"}});
    send(&mut b, offer).await;
    let got = recv_type(&mut a, "signal").await;
    assert_eq!(got["description"]["sdp"], "v=0 offer from b");
    assert_eq!(got["call"], call);
    let answer = json!({"type": "signal", "call": call,
        "description": {"type": "answer", "sdp": "v=0 answer from a"}});
    send(&mut a, answer).await;
    assert_eq!(
        recv_type(&mut b, "signal").await["description"]["type"],
        "answer"
    );
    let cand = json!({"type": "signal", "call": call, "candidate": {
        "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}});
    send(&mut a, cand.clone()).await;
    let got = recv_type(&mut b, "signal").await;
    assert_eq!(got["candidate"]["usernameFragment"], "abcd");
    send(&mut b, cand).await;
    let got = recv_type(&mut a, "signal").await;
    assert_eq!(got["candidate"]["sdpMid"], "0");
    // A signal for another call is refused on the sender's node.
    send(
        &mut a,
        json!({"type": "signal", "call": call + 1,
        "description": {"type": "offer", "sdp": "x"}}),
    )
    .await;
    assert_eq!(recv_type(&mut a, "error").await["code"], "wrong_call");

    // Skipping ends the call on the other node, which queues its user again;
    // the skipper is queued too, but the two are kept apart.
    send(&mut b, json!({"type": "skip"})).await;
    recv_type(&mut b, "searching").await;
    let ended = recv_type(&mut a, "call_ended").await;
    assert_eq!(ended["reason"], "partner_skipped");
    recv_type(&mut a, "searching").await;
    eventually("the ended call's record is gone", || {
        call_record(&redis, call).is_none()
    });
    eventually("both wait, kept apart", || redis.queue().len() == 2);

    // A third person on node A is matched with one of them.
    let mut c = client("127.0.0.4", &na).await;
    search(&mut c).await;
    recv_type(&mut c, "matched").await;
    eventually("one is left waiting", || redis.queue().len() == 1);

    // Ending leaves the queue too: nothing stays behind.
    for ws in [&mut a, &mut b, &mut c] {
        send(ws, json!({"type": "end"})).await;
    }
    eventually("the queue is empty", || redis.queue().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_made_on_one_node_holds_on_another() {
    let redis = RedisServer::start();
    let (na, nb) = (unweighed_node(&redis), unweighed_node(&redis));
    // The same address has the same client key on every node.
    let _target = ban_by_three_networks(&nb, &na, || {
        redis.keys().iter().any(|k| k.ends_with(":ban"))
    })
    .await;
    // On node B, which saw no report at all, the client may not search.
    let (mut again, banned) = search_when_banned("127.0.0.9", &nb).await;
    assert!(banned["retry_after_ms"].as_u64().unwrap() > 0);
    recv_type(&mut again, "idle").await;
    // Someone else on node B still gets matched, with a waiter on node A.
    let mut other = client("127.0.0.5", &na).await;
    let mut fine = client("127.0.0.6", &nb).await;
    match_pair(&redis, &mut other, &mut fine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_reporters_on_three_nodes_ban_a_client_everywhere() {
    let redis = RedisServer::start();
    let nodes = [
        unweighed_node(&redis),
        unweighed_node(&redis),
        unweighed_node(&redis),
    ];
    let mut target = client("127.0.0.9", &nodes[0]).await;
    search(&mut target).await;
    // One report per node: no node alone saw enough for a ban.
    for (n, server) in nodes.iter().enumerate() {
        assert!(
            !redis.keys().iter().any(|k| k.ends_with(":ban")),
            "banned after {n} reports"
        );
        let next = meet_and_report(&mut target, &format!("127.0.{}.2", n + 2), server).await;
        if n < 2 {
            assert_eq!(next["type"], "searching", "{next}");
            eventually("the target waits again", || redis.queue().len() == 1);
        }
    }
    eventually("the ban is in Redis", || {
        redis.keys().iter().any(|k| k.ends_with(":ban"))
    });
    // The strike record expires with the strike window.
    let mut c = redis.conn().unwrap();
    let strikes: Vec<String> = redis
        .keys()
        .into_iter()
        .filter(|k| k.ends_with(":strikes"))
        .collect();
    assert_eq!(strikes.len(), 1, "{strikes:?}");
    let ttl: i64 = redis::cmd("PTTL").arg(&strikes[0]).query(&mut c).unwrap();
    assert!(ttl > 0 && ttl <= 24 * 3600 * 1000, "{ttl}");
    for server in &nodes {
        search_when_banned("127.0.0.9", server).await;
    }
}

/// The target waits on `nodes[0]`; a reporter from each of `sources`, on
/// the nodes in turn, meets and reports it. Whether Redis then holds a ban,
/// and how many strikes it kept against the target.
async fn report_on_each_node(
    redis: &RedisServer,
    nodes: &[Server],
    sources: &[&str],
) -> (bool, usize) {
    let mut target = client("127.0.0.9", &nodes[0]).await;
    search(&mut target).await;
    eventually("the target waits", || redis.queue().len() == 1);
    for (n, source) in sources.iter().enumerate() {
        let next = meet_and_report(&mut target, source, &nodes[n % nodes.len()]).await;
        assert_eq!(next["type"], "searching", "not banned: {next}");
        eventually("the target waits again", || redis.queue().len() == 1);
    }
    let banned = redis.keys().iter().any(|k| k.ends_with(":ban"));
    let mut c = redis.conn().unwrap();
    let strikes = redis
        .keys()
        .into_iter()
        .filter(|k| k.ends_with(":strikes"))
        .map(|k| {
            let fields: Vec<String> = redis::cmd("HKEYS").arg(&k).query(&mut c).unwrap();
            fields.iter().filter(|f| *f != "n").count()
        })
        .sum();
    (banned, strikes)
}

/// Three fresh reporters on three networks and three nodes: each node
/// judges its reporter's weight as nothing, and Redis takes that weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_reporters_on_three_nodes_ban_nobody() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    let sources = ["127.0.2.2", "127.0.3.2", "127.0.4.2"];
    let (banned, strikes) = report_on_each_node(&redis, &nodes, &sources).await;
    assert!(!banned);
    assert_eq!(strikes, 0, "weightless strikes are not kept");
}

/// Reporters from one IPv4 /24 on three nodes are one reporter in Redis,
/// even when every report weighs fully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporters_of_one_network_on_three_nodes_count_once() {
    let redis = RedisServer::start();
    let nodes = [
        unweighed_node(&redis),
        unweighed_node(&redis),
        unweighed_node(&redis),
    ];
    let sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let (banned, strikes) = report_on_each_node(&redis, &nodes, &sources).await;
    assert!(!banned, "one /24 is one reporter");
    assert_eq!(strikes, 4, "each strike is kept, grouped when counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_searches_on_two_nodes_share_one_allowance() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis)];
    // One client (one address) with a connection on each node. Each node
    // alone allows a burst of 30 searches, then one every 2 s.
    let mut ws = [
        client("127.0.0.7", &nodes[0]).await,
        client("127.0.0.7", &nodes[1]).await,
    ];
    let mut limited_at = None;
    for i in 0..40 {
        let ws = &mut ws[i % 2];
        search(ws).await;
        // Queued (then leave again), or refused by the shared allowance.
        let deadline = Instant::now() + WAIT;
        loop {
            tokio::select! {
                msg = recv(ws) => {
                    assert_eq!(msg["code"], "rate_limited", "{msg}");
                    assert!(msg["retry_after_ms"].as_u64().unwrap() > 0);
                    recv_type(ws, "idle").await;
                    limited_at = Some(i);
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if redis.queue().len() == 1 {
                        send(ws, json!({"type": "end"})).await;
                        recv_type(ws, "idle").await;
                        // Out of the queue before the other connection
                        // searches, or it would be matched with itself.
                        eventually("the queue is empty", || redis.queue().is_empty());
                        break;
                    }
                    assert!(Instant::now() < deadline, "search {i} never settled");
                }
            }
        }
        if limited_at.is_some() {
            break;
        }
    }
    // 20 searches per node are within each node's own allowance: only the
    // shared one can refuse, after its burst of 30.
    let at = limited_at.expect("the shared allowance ran out");
    assert!(at >= 30, "refused at search {at}");
    assert!(
        redis.keys().iter().any(|k| k.ends_with(":rl:search")),
        "the allowance is kept in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_connects_on_two_nodes_share_one_allowance() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis)];
    // 20 connections per node: within each node's limits (20 open at once;
    // a burst of 30 connects, then one every 2 s), but not the shared one.
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for i in 0..40 {
        let mut ws = ws_from("127.0.0.11", &nodes[i % 2]).await;
        send(&mut ws, json!({"type": "hello", "version": 1})).await;
        let reply = recv(&mut ws).await;
        if reply["type"] == "welcome" {
            open.push((i, ws));
        } else {
            assert_eq!(reply["code"], 1013, "{reply}");
            refused.push(i);
        }
    }
    // Each node's connect checks run in order: once a later client's search
    // is queued on a node, every check before it has been answered there.
    for (n, server) in nodes.iter().enumerate() {
        let mut marker = client(&format!("127.0.0.{}", 12 + n), server).await;
        search(&mut marker).await;
        eventually("the marker waits", || redis.queue().len() == 1);
        send(&mut marker, json!({"type": "end"})).await;
        recv_type(&mut marker, "idle").await;
        eventually("nobody waits", || redis.queue().is_empty());
    }
    for (i, ws) in &mut open {
        send(ws, json!({"type": "room_suggest"})).await;
        let reply = recv(ws).await;
        if reply["type"] != "room_suggestion" {
            assert_eq!(reply["code"], 1013, "{reply}");
            refused.push(*i);
        }
    }
    refused.sort_unstable();
    let first = *refused.first().expect("the shared allowance ran out");
    assert!(first >= 30, "refused at connect {first}");
}

/// The keys in Redis that end with `suffix`.
fn count_keys(redis: &RedisServer, suffix: &str) -> usize {
    redis.keys().iter().filter(|k| k.ends_with(suffix)).count()
}

/// Pairs of clients kept apart by a report: each is written to both
/// clients' avoid sets.
fn blocks(redis: &RedisServer) -> usize {
    let mut c = redis.conn().unwrap();
    let members: usize = redis
        .keys()
        .iter()
        .filter(|k| k.ends_with(":avoid"))
        .map(|k| {
            let m: Vec<String> = redis::cmd("ZRANGE")
                .arg(k)
                .arg(0)
                .arg(-1)
                .query(&mut c)
                .unwrap();
            m.iter().filter(|m| m.starts_with('k')).count()
        })
        .sum();
    members / 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reporters_strikes_on_two_nodes_share_one_allowance() {
    let redis = RedisServer::start();
    // Unweighed: a fresh reporter's strikes would not be kept at all.
    let nodes = [unweighed_node(&redis), unweighed_node(&redis)];
    // One reporter with a connection on each node; each node alone lets it
    // make 10 reports that count (then one every 2 minutes).
    let mut reporter = [
        client("127.0.0.7", &nodes[0]).await,
        client("127.0.0.7", &nodes[1]).await,
    ];
    for i in 0..11 {
        let server = &nodes[i % 2];
        let mut target = client(&format!("127.0.0.{}", 20 + i), server).await;
        search(&mut target).await;
        eventually("the target waits", || redis.queue().len() == 1);
        let ws = &mut reporter[i % 2];
        search(ws).await;
        recv_type(ws, "matched").await;
        send(ws, json!({"type": "report"})).await;
        // 6 and 5 reports: within each node's own allowance.
        recv_type(ws, "idle").await;
        recv_type(&mut target, "matched").await;
        recv_type(&mut target, "call_ended").await;
        drop(target);
        eventually("nobody waits", || redis.queue().is_empty());
    }
    // Each report's block is stored after its strike, on the same node.
    eventually("every report ran", || blocks(&redis) == 11);
    assert_eq!(
        count_keys(&redis, ":strikes"),
        10,
        "the 11th strike is over the shared allowance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_room_creations_on_two_nodes_share_one_allowance() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis)];
    // Each node alone lets a client create 10 rooms, then one every 30 s.
    let mut ws = [
        client("127.0.0.8", &nodes[0]).await,
        client("127.0.0.8", &nodes[1]).await,
    ];
    let mut limited_at = None;
    for i in 0..12 {
        let ws = &mut ws[i % 2];
        let room = format!("quiet-otters-room-{i:02}");
        send(ws, json!({"type": "room_join", "room": room})).await;
        let reply = recv(ws).await;
        if reply["type"] == "error" {
            assert_eq!(reply["code"], "rate_limited", "{reply}");
            limited_at = Some(i);
            break;
        }
        assert_eq!(reply["type"], "room_joined", "{reply}");
        send(ws, json!({"type": "end"})).await;
        recv_type(ws, "idle").await;
    }
    // 6 rooms per node are within each node's own allowance.
    let at = limited_at.expect("the shared allowance ran out");
    assert!(at >= 10, "refused at room {at}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_ends_its_calls_and_leaves_no_waiters() {
    let redis = RedisServer::start();
    let (na, nb, nc) = (node(&redis), node(&redis), node(&redis));
    let mut a = client("127.0.0.2", &na).await;
    let mut b = client("127.0.0.3", &nb).await;
    let call = match_pair(&redis, &mut a, &mut b).await;
    assert!(call_record(&redis, call).is_some(), "the call is recorded");
    // Someone on node B waits, with an interest nobody shares.
    let mut waiting = client("127.0.0.4", &nb).await;
    send(
        &mut waiting,
        json!({"type": "search", "interests": ["zither"]}),
    )
    .await;
    recv_type(&mut waiting, "searching").await;
    eventually("B's user waits", || redis.queue().len() == 1);

    drop(nb); // SIGKILL: no goodbye to anyone.
    let ended = recv_type(&mut a, "call_ended").await;
    assert_eq!(
        (ended["call"].as_u64(), ended["reason"].as_str()),
        (Some(call), Some("partner_left"))
    );
    // The surviving side removed the record of the call.
    eventually("the dead call's record is gone", || {
        call_record(&redis, call).is_none()
    });
    recv_type(&mut a, "searching").await;
    // a waits alone: B's waiter is gone from the queue, not matched.
    eventually("only a waits", || {
        redis.queue().len() == 1 && redis.stale_waiters() == 0
    });
    let mut c = client("127.0.0.5", &nc).await;
    search(&mut c).await;
    recv_type(&mut c, "matched").await;
    recv_type(&mut a, "matched").await;
    eventually("nobody waits", || redis.queue().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_closes_connections_and_nodes_recover_clean() {
    let mut redis = RedisServer::start();
    let (na, nb) = (node(&redis), node(&redis));
    let mut a = client("127.0.0.2", &na).await;
    let mut b = client("127.0.0.3", &nb).await;
    match_pair(&redis, &mut a, &mut b).await;
    let mut waiting = client("127.0.0.4", &na).await;
    search(&mut waiting).await;

    let port = redis.port;
    drop(redis);
    for ws in [&mut a, &mut b, &mut waiting] {
        let close = recv_type(ws, "close").await;
        assert_eq!(close["code"], 1012, "{close}");
        assert_eq!(close["reason"], "backplane unavailable");
    }
    // While Redis is away, new connections are turned away the same way.
    let mut early = ws_from("127.0.0.5", &na).await;
    assert_eq!(recv_type(&mut early, "close").await["code"], 1012);

    redis = RedisServer::start_on(port);
    // Back with empty state: both nodes serve again and match across.
    let mut a = client_when_ready("127.0.0.2", &na).await;
    let mut b = client_when_ready("127.0.0.3", &nb).await;
    match_pair(&redis, &mut a, &mut b).await;
    assert!(redis.queue().is_empty(), "no stale waiter survived");
    drop((na, nb));
}

const ROOM: &str = "quiet-otters-juggle-softly";

async fn join(ws: &mut Ws, verifier: Option<&str>) -> Value {
    room_join(ws, ROOM, verifier).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_three_nodes_and_locks() {
    let redis = RedisServer::start();
    let (na, nb, nc) = (node(&redis), node(&redis), node(&redis));
    let mut p1 = client("127.0.0.2", &na).await;
    let mut p2 = client("127.0.0.3", &nb).await;
    let mut p3 = client("127.0.0.4", &nc).await;
    let j1 = join(&mut p1, None).await;
    assert_eq!(
        (j1["type"].as_str(), j1["peer"].as_u64()),
        (Some("room_joined"), Some(1)),
        "{j1}"
    );
    assert_eq!(j1["room"], ROOM);
    let j2 = join(&mut p2, None).await;
    assert_eq!(j2["peers"], json!([1]), "{j2}");
    assert_eq!(recv_type(&mut p1, "peer_joined").await["peer"], 2);
    let j3 = join(&mut p3, None).await;
    assert_eq!(j3["peers"], json!([1, 2]), "{j3}");
    for ws in [&mut p1, &mut p2] {
        assert_eq!(recv_type(ws, "peer_joined").await["peer"], 3);
    }
    // No room name in Redis, only its hash.
    assert!(redis.keys().iter().all(|k| !k.contains(ROOM)));

    // Signals go to the addressed member on whichever node, with `from`.
    send(
        &mut p3,
        json!({"type": "signal", "to": 1, "auth": "tag",
        "description": {"type": "offer", "sdp": "v=0 from 3"}}),
    )
    .await;
    let got = recv_type(&mut p1, "signal").await;
    assert_eq!(
        (got["from"].as_u64(), got["auth"].as_str()),
        (Some(3), Some("tag")),
        "{got}"
    );
    assert_eq!(got["description"]["sdp"], "v=0 from 3");
    send(
        &mut p1,
        json!({"type": "signal", "to": 2,
        "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}}),
    )
    .await;
    assert_eq!(recv_type(&mut p2, "signal").await["from"], 1);
    send(
        &mut p2,
        json!({"type": "signal", "to": 9,
        "description": {"type": "offer", "sdp": "x"}}),
    )
    .await;
    assert_eq!(recv_type(&mut p2, "error").await["code"], "unknown_peer");

    // Locked on node A: everyone hears it; a newcomer on node B needs the
    // passphrase's verifier.
    let right = "A".repeat(43);
    let wrong = format!("{}E", "A".repeat(42));
    send(&mut p1, json!({"type": "room_lock", "verifier": right})).await;
    for ws in [&mut p1, &mut p2, &mut p3] {
        assert_eq!(recv_type(ws, "room_lock_state").await["locked"], true);
    }
    let mut p4 = client("127.0.0.5", &nb).await;
    assert_eq!(join(&mut p4, None).await["code"], "passphrase_required");
    assert_eq!(
        join(&mut p4, Some(&wrong)).await["code"],
        "wrong_passphrase"
    );
    let j4 = join(&mut p4, Some(&right)).await;
    assert_eq!(
        (j4["peer"].as_u64(), j4["locked"].as_bool()),
        (Some(4), Some(true)),
        "{j4}"
    );
    assert_eq!(j4["peers"], json!([1, 2, 3]));
    for ws in [&mut p1, &mut p2, &mut p3] {
        assert_eq!(recv_type(ws, "peer_joined").await["peer"], 4);
    }

    // Guessing is limited per room across nodes: guessers on B and C, each
    // within its own client allowance (5), together run out the room's 20.
    let mut limited = None;
    'guess: for n in 10..14 {
        let on = if n % 2 == 0 { &nb } else { &nc };
        let mut guesser = client(&format!("127.0.0.{n}"), on).await;
        for _ in 0..5 {
            let answer = join(&mut guesser, Some(&wrong)).await;
            match answer["code"].as_str() {
                Some("wrong_passphrase") => {}
                Some("rate_limited") => {
                    limited = Some(answer);
                    break 'guess;
                }
                _ => panic!("{answer}"),
            }
        }
    }
    let limited = limited.expect("the room's attempts ran out");
    assert!(limited["retry_after_ms"].as_u64().unwrap() > 0, "{limited}");

    // Leaving on node B is heard on A and C.
    send(&mut p2, json!({"type": "end"})).await;
    recv_type(&mut p2, "idle").await;
    for ws in [&mut p1, &mut p3, &mut p4] {
        assert_eq!(recv_type(ws, "peer_left").await["peer"], 2);
    }
    // Node C dies: its member leaves everyone else's room.
    drop(nc);
    for ws in [&mut p1, &mut p4] {
        assert_eq!(recv_type(ws, "peer_left").await["peer"], 3);
    }
    // The last ones out take the room, lock and all, with them.
    send(&mut p1, json!({"type": "end"})).await;
    recv_type(&mut p1, "idle").await;
    assert_eq!(recv_type(&mut p4, "peer_left").await["peer"], 1);
    send(&mut p4, json!({"type": "end"})).await;
    recv_type(&mut p4, "idle").await;
    eventually("the room is gone from Redis", || {
        !redis.keys().iter().any(|k| k.starts_with("earshot:2:{r"))
    });
    // A new room of that name starts unlocked.
    let j = join(&mut p2, None).await;
    assert_eq!(
        (j["peer"].as_u64(), j["locked"].as_bool()),
        (Some(1), Some(false)),
        "{j}"
    );
    drop((na, nb, p3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_redis_outage_leaves_no_ghosts() {
    let redis = RedisServer::start();
    let (na, nb) = (node(&redis), node(&redis));
    let mut a = client("127.0.0.2", &na).await;
    let mut b = client("127.0.0.3", &nb).await;
    match_pair(&redis, &mut a, &mut b).await;
    let mut waiting = client("127.0.0.4", &na).await;
    search(&mut waiting).await;
    let mut member = client("127.0.0.6", &na).await;
    assert_eq!(join(&mut member, None).await["type"], "room_joined");
    eventually("the waiter is in Redis", || redis.queue().len() == 1);

    // Redis stops answering for a while (frozen, state kept): the nodes'
    // leaves and dequeues fail meanwhile.
    let pid = redis.pid().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    for ws in [&mut a, &mut b, &mut waiting, &mut member] {
        let close = recv_type(ws, "close").await;
        assert_eq!(close["reason"], "backplane unavailable", "{close}");
    }
    signal("-CONT");

    // Back: what node A left behind counts for nothing. A newcomer waits
    // alone rather than meeting a ghost, and finds an empty room.
    let mut x = client_when_ready("127.0.0.5", &nb).await;
    search(&mut x).await;
    let mut y = client_when_ready("127.0.0.7", &na).await;
    let j = join(&mut y, None).await;
    assert_eq!(
        (j["peer"].as_u64().is_some(), &j["peers"]),
        (true, &json!([])),
        "{j}"
    );
    eventually("only the newcomer waits", || {
        redis.queue().len() == 1 && redis.stale_waiters() == 0
    });
    // And the two find each other once y searches instead.
    send(&mut y, json!({"type": "end"})).await;
    recv_type(&mut y, "idle").await;
    search(&mut y).await;
    recv_type(&mut y, "matched").await;
    recv_type(&mut x, "matched").await;
}

/// A node will not share a store with nodes of another key layout: not
/// with layout 1's keys, not with a registry another layout's live nodes
/// renew; once those are gone, it takes the store over.
#[test]
fn a_node_refuses_a_store_of_another_key_layout() {
    let redis = RedisServer::start();
    let mut c = redis.conn().unwrap();
    let refusal = || refusal(&redis);
    let _: i64 = redis::cmd("ZADD")
        .arg("{earshot}:queue")
        .arg(1)
        .arg("5")
        .query(&mut c)
        .unwrap();
    let refused = refusal();
    assert!(refused.contains("key layout 1"), "{refused}");

    let () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let _: i64 = redis::cmd("HSET")
        .arg("earshot:{nodes}")
        .arg("layout")
        .arg("3/1")
        .arg("born")
        .arg(now)
        .arg("9:00000000000000000001")
        .arg(now + 60_000)
        .query(&mut c)
        .unwrap();
    let refused = refusal();
    assert!(refused.contains("another key layout"), "{refused}");

    // Layout 3's last node is gone: this one takes the store over.
    let _: i64 = redis::cmd("HSET")
        .arg("earshot:{nodes}")
        .arg("9:00000000000000000001")
        .arg(now - 1)
        .query(&mut c)
        .unwrap();
    let _node = node(&redis);
    let stamp: String = redis::cmd("HGET")
        .arg("earshot:{nodes}")
        .arg("layout")
        .query(&mut c)
        .unwrap();
    assert_eq!(stamp, "2/1");
}

/// What a node says when it refuses to start on `redis` (it must exit).
fn refusal(redis: &RedisServer) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--stun-listen",
            "127.0.0.1:0",
            "--no-turn",
        ])
        .args(["--redis", &redis.url(), "--pow", "off"])
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the node started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
