//! Several `earshot` nodes on a real Redis Cluster of three primaries, all
//! on loopback ports: the stranger queue is split into lanes spread over
//! the primaries, every script touches one slot, node channels are sharded.
//!
//! - Strangers on different nodes meet, whatever lanes they start in, and
//!   their offer, answer and candidates cross between the nodes.
//! - A room spans three nodes and locks; guesses at the lock are limited
//!   per room, across nodes.
//! - A ban made on one node holds on another.
//! - A primary killed: every node closes its connections with 1012
//!   ("backplane unavailable") and serves again once the primary is back;
//!   a waiter and a room member from before the outage, whose entries
//!   survived on the other primaries, are neither matched nor joined.
//!
//! Each test starts its own cluster (`--cluster-node-timeout 1000`) and
//! its own nodes, and kills them all at the end.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;
use support::redis::RedisCluster;
use support::server::Server;
use support::ws::{
    ban_by_three_networks, client, client_when_ready, eventually, matched, recv, recv_type,
    room_join, search, search_when_banned, send, ws_from,
};

fn node(cluster: &RedisCluster, extra: &[&str]) -> Server {
    Server::node(env!("CARGO_BIN_EXE_earshot"), &cluster.url(), extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_a_cluster_meet_across_nodes_and_lanes_and_signal() {
    let cluster = RedisCluster::start();
    let nodes = [
        node(&cluster, &[]),
        node(&cluster, &[]),
        node(&cluster, &[]),
    ];
    assert_eq!(cluster.lanes(), 16, "a cluster splits the queue");
    // The lanes live on more than one primary.
    let primaries: std::collections::HashSet<usize> = (0..16)
        .map(|i| cluster.primary_of(&format!("earshot:2:{{q{i}}}")))
        .collect();
    assert!(primaries.len() > 1);

    // Two at once, on two nodes.
    let mut a = client("127.0.0.2", &nodes[0]).await;
    let mut b = client("127.0.0.3", &nodes[1]).await;
    send(&mut a, json!({"type": "search"})).await;
    send(&mut b, json!({"type": "search"})).await;
    recv_type(&mut a, "searching").await;
    recv_type(&mut b, "searching").await;
    let (call, a_offers) = matched(&mut a, &mut b).await;
    let (offerer, answerer) = if a_offers {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    send(
        offerer,
        json!({"type": "signal", "call": call,
            "description": {"type": "offer", "sdp": "v=0 offer"}}),
    )
    .await;
    assert_eq!(
        recv_type(answerer, "signal").await["description"]["sdp"],
        "v=0 offer"
    );
    send(
        answerer,
        json!({"type": "signal", "call": call,
            "description": {"type": "answer", "sdp": "v=0 answer"}}),
    )
    .await;
    assert_eq!(
        recv_type(offerer, "signal").await["description"]["type"],
        "answer"
    );
    for i in 0..5 {
        let cand = json!({"type": "signal", "call": call, "candidate": {
            "candidate": format!("candidate:{i} 1 udp 1 127.0.0.1 {} typ host", 5000 + i)}});
        send(answerer, cand).await;
    }
    for i in 0..5 {
        let got = recv_type(offerer, "signal").await;
        let c = got["candidate"]["candidate"].as_str().unwrap().to_owned();
        assert!(c.starts_with(&format!("candidate:{i} ")), "in order: {c}");
    }

    // Twelve more on three nodes, some with interests: everyone is
    // matched, shared interests together, whatever lane each started in.
    let mut ws = Vec::new();
    for i in 0..12 {
        let mut w = client(&format!("127.0.1.{}", i + 2), &nodes[i % 3]).await;
        let interests = match i % 4 {
            0 => json!(["chess"]),
            1 => json!(["chess", "jazz"]),
            _ => json!([]),
        };
        send(&mut w, json!({"type": "search", "interests": interests})).await;
        recv_type(&mut w, "searching").await;
        ws.push(w);
    }
    let mut shared = 0;
    for (i, w) in ws.iter_mut().enumerate() {
        let m = recv_type(w, "matched").await;
        if m["interests"] == json!(["chess"]) {
            shared += 1;
        }
        // Matched well inside the interest wait (5 s) for the tagged.
        assert!(m["call"].as_u64().is_some(), "{i}: {m}");
    }
    assert_eq!(shared, 6, "the six chess players meet each other");
    eventually("nobody waits", || cluster.queue().is_empty());
}

const ROOM: &str = "quiet-otters-juggle-softly";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_a_cluster_spans_nodes_and_locks() {
    let cluster = RedisCluster::start();
    let nodes = [
        node(&cluster, &[]),
        node(&cluster, &[]),
        node(&cluster, &[]),
    ];
    let mut p1 = client("127.0.0.2", &nodes[0]).await;
    let mut p2 = client("127.0.0.3", &nodes[1]).await;
    let mut p3 = client("127.0.0.4", &nodes[2]).await;
    assert_eq!(room_join(&mut p1, ROOM, None).await["peer"], 1);
    assert_eq!(room_join(&mut p2, ROOM, None).await["peers"], json!([1]));
    assert_eq!(recv_type(&mut p1, "peer_joined").await["peer"], 2);
    assert_eq!(room_join(&mut p3, ROOM, None).await["peers"], json!([1, 2]));
    for ws in [&mut p1, &mut p2] {
        assert_eq!(recv_type(ws, "peer_joined").await["peer"], 3);
    }
    assert!(cluster.keys().iter().all(|k| !k.contains(ROOM)));
    send(
        &mut p3,
        json!({"type": "signal", "to": 1,
            "description": {"type": "offer", "sdp": "v=0 from 3"}}),
    )
    .await;
    assert_eq!(recv_type(&mut p1, "signal").await["from"], 3);

    let right = "A".repeat(43);
    let wrong = format!("{}E", "A".repeat(42));
    send(&mut p2, json!({"type": "room_lock", "verifier": right})).await;
    for ws in [&mut p1, &mut p2, &mut p3] {
        assert_eq!(recv_type(ws, "room_lock_state").await["locked"], true);
    }
    let mut p4 = client("127.0.0.5", &nodes[0]).await;
    assert_eq!(
        room_join(&mut p4, ROOM, None).await["code"],
        "passphrase_required"
    );
    assert_eq!(
        room_join(&mut p4, ROOM, Some(&wrong)).await["code"],
        "wrong_passphrase"
    );
    let j4 = room_join(&mut p4, ROOM, Some(&right)).await;
    assert_eq!(
        (j4["peer"].as_u64(), j4["locked"].as_bool()),
        (Some(4), Some(true)),
        "{j4}"
    );
    // Guessers on two nodes together run out the room's attempts.
    let mut limited = false;
    'guess: for n in 10..14 {
        let mut guesser = client(&format!("127.0.0.{n}"), &nodes[n % 2 + 1]).await;
        for _ in 0..5 {
            match room_join(&mut guesser, ROOM, Some(&wrong)).await["code"].as_str() {
                Some("wrong_passphrase") => {}
                Some("rate_limited") => {
                    limited = true;
                    break 'guess;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(limited, "the room's attempts ran out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_made_on_one_node_of_a_cluster_holds_on_another() {
    let cluster = RedisCluster::start();
    let unweighed = ["--test-unweighed-reports"];
    let (na, nb) = (node(&cluster, &unweighed), node(&cluster, &unweighed));
    // Reporters on the other node.
    let _target = ban_by_three_networks(&nb, &na, || {
        cluster.keys().iter().any(|k| k.ends_with(":ban"))
    })
    .await;
    search_when_banned("127.0.0.9", &nb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_closes_connections_and_nothing_from_before_survives() {
    let mut cluster = RedisCluster::start();
    let (na, nb) = (node(&cluster, &[]), node(&cluster, &[]));
    // A lone searcher ends up in the meeting lane; pick a room on that
    // lane's primary and a primary holding neither to kill, so that both
    // entries outlive the outage.
    let meeting = cluster.primary_of("earshot:2:{q0}");
    let room = (0..)
        .map(|i| format!("quiet-otters-room-{i}"))
        .find(|name| {
            let key = format!("earshot:2:{{r{}}}", earshot_core::backplane::room_key(name));
            cluster.primary_of(&key) == meeting
        })
        .unwrap();
    let victim = (0..3).find(|&i| i != meeting).unwrap();

    let mut a = client("127.0.0.2", &na).await;
    let mut b = client("127.0.0.3", &nb).await;
    search(&mut a).await;
    search(&mut b).await;
    matched(&mut a, &mut b).await;
    // An interest nobody shares keeps it waiting, whoever searches next.
    let mut waiting = client("127.0.0.4", &na).await;
    send(
        &mut waiting,
        json!({"type": "search", "interests": ["zither"]}),
    )
    .await;
    recv_type(&mut waiting, "searching").await;
    let mut member = client("127.0.0.6", &na).await;
    assert_eq!(
        room_join(&mut member, &room, None).await["type"],
        "room_joined"
    );
    eventually("the waiter waits", || cluster.queue().len() == 1);
    // A quiet node queues it in the meeting lane; let any move settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let meeting_lane = support::redis::lane(&mut cluster.conn(meeting), 0);
    assert_eq!(meeting_lane.len(), 1, "the waiter is in the meeting lane");

    cluster.kill(victim);
    for ws in [&mut a, &mut b, &mut waiting, &mut member] {
        // The other primaries still work until each node sees the loss
        // (within a beat): a node that closes its side of a call first may
        // still tell the partner, who may search and meet someone.
        let mut close = recv(ws).await;
        while close["type"] != "close" {
            close = recv(ws).await;
        }
        assert_eq!(close["type"], "close", "{close}");
        assert_eq!(close["code"], 1012, "{close}");
        assert_eq!(close["reason"], "backplane unavailable");
    }
    // While the primary is away, new connections are turned away too
    // (once the node saw it go: a request that failed may close a
    // connection a little before).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut early = ws_from("127.0.0.5", &nb).await;
        send(&mut early, json!({"type": "hello", "version": 1})).await;
        let reply = recv(&mut early).await;
        if reply["type"] == "close" {
            assert_eq!(reply["code"], 1012, "{reply}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still serving: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.restart(victim);
    // The old waiter's entry outlived the outage (until a sweep): nobody
    // meets it, even once its interest wait is over.
    let mut x = client_when_ready("127.0.0.7", &nb).await;
    search(&mut x).await;
    let mut y = client_when_ready("127.0.0.8", &na).await;
    let j = room_join(&mut y, &room, None).await;
    assert_eq!(j["peers"], json!([]), "no ghost in the room: {j}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // And the two find each other once y searches instead.
    send(&mut y, json!({"type": "end"})).await;
    recv_type(&mut y, "idle").await;
    search(&mut y).await;
    matched(&mut x, &mut y).await;
    eventually("the ghost is swept", || cluster.queue().is_empty());
}
