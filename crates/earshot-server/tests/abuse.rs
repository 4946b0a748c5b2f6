//! The server under abuse: while one pair of well-behaved clients keeps
//! talking, others send oversized frames, floods, half-open slow requests and
//! thousands of connections from one network. Nothing may panic, and the pair
//! must keep working throughout. Also: `/metrics` and proof of work.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use earshot_server::{Running, Settings};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

const WAIT: Duration = Duration::from_secs(5);

async fn server(tweak: impl FnOnce(&mut Settings)) -> Running {
    let mut settings = Settings::for_tests("127.0.0.1:0".parse().unwrap());
    tweak(&mut settings);
    earshot_server::start(settings).await.unwrap()
}

async fn tcp_from(source: &str, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(server).await
}

async fn ws_from(source: &str, server: SocketAddr) -> Option<Ws> {
    let tcp = tcp_from(source, server).await.ok()?;
    let (ws, _) = tokio::time::timeout(WAIT, client_async(format!("ws://{server}/ws"), tcp))
        .await
        .ok()?
        .ok()?;
    Some(ws)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    let v = recv(ws).await.expect("a message");
    assert_eq!(v["type"], kind, "{v}");
    v
}

/// The well-behaved pair, each on its own network.
struct Pair {
    a: Ws,
    b: Ws,
    call: u64,
}

impl Pair {
    async fn new(addr: SocketAddr) -> Pair {
        let mut a = ws_from("127.0.0.2", addr).await.unwrap();
        let mut b = ws_from("127.0.0.4", addr).await.unwrap();
        for ws in [&mut a, &mut b] {
            send(ws, json!({"type": "hello", "version": 1})).await;
            recv_type(ws, "welcome").await;
            send(ws, json!({"type": "search"})).await;
            recv_type(ws, "searching").await;
        }
        let call = recv_type(&mut b, "matched").await["call"].as_u64().unwrap();
        recv_type(&mut a, "matched").await;
        Pair { a, b, call }
    }

    /// One signal each way still gets through.
    async fn still_talking(&mut self, after: &str) {
        let call = self.call;
        let started = Instant::now();
        send(
            &mut self.a,
            json!({"type": "signal", "call": call, "candidate": {"candidate": "x"}}),
        )
        .await;
        let got = recv(&mut self.b).await;
        assert!(
            got.is_some_and(|v| v["type"] == "signal"),
            "b stopped hearing a after {after}"
        );
        send(
            &mut self.b,
            json!({"type": "signal", "call": call, "candidate": {"candidate": "y"}}),
        )
        .await;
        let got = recv(&mut self.a).await;
        assert!(
            got.is_some_and(|v| v["type"] == "signal"),
            "a stopped hearing b after {after}"
        );
        println!(
            "after {after}: the pair still talks ({} ms round)",
            started.elapsed().as_millis()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_holds_under_abuse_and_a_pair_keeps_talking() {
    let s = server(|s| s.header_timeout = Duration::from_secs(1)).await;
    let addr = s.http_addr;
    let mut pair = Pair::new(addr).await;

    // 1. Oversized frames from 10 connections: each closed with 1009.
    let mut closed_1009 = 0;
    for _ in 0..10 {
        let mut ws = ws_from("127.0.0.10", addr).await.unwrap();
        let _ = ws.send(Message::text("x".repeat(100_000))).await;
        while let Ok(Some(msg)) = tokio::time::timeout(WAIT, ws.next()).await {
            if let Ok(Message::Close(Some(f))) = msg {
                closed_1009 += usize::from(u16::from(f.code) == 1009);
                break;
            }
        }
    }
    assert_eq!(closed_1009, 10);
    pair.still_talking("10 oversized frames").await;

    // 2. 10,000 messages in a burst on one connection: rate limited, then closed.
    let mut flood = ws_from("127.0.0.11", addr).await.unwrap();
    send(&mut flood, json!({"type": "hello", "version": 1})).await;
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..10_000 {
        if flood
            .feed(Message::text(r#"{"type":"end"}"#))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    let _ = flood.flush().await;
    let mut close = None;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, flood.next()).await {
        match msg {
            Ok(Message::Close(f)) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    println!(
        "flood: sent {sent} messages in {} ms; closed with {close:?}",
        started.elapsed().as_millis()
    );
    assert_eq!(close, Some(1008));
    pair.still_talking("a 10,000-message flood").await;

    // 3. 200 half-open requests that never finish their head: dropped at the deadline.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut tcp = tcp_from("127.0.0.12", addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // Refused beyond the per-client TCP cap, or cut at the header deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cut = 0;
    for tcp in &mut slow {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => cut += 1,
            _ => {}
        }
    }
    println!("slow heads: {cut} of 200 cut within 2 s");
    assert_eq!(cut, 200);
    drop(slow);
    pair.still_talking("200 slow request heads").await;

    // 4. 2,000 connection attempts from one network: only its allowance gets in.
    let attacker = "127.0.0.13";
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..2_000 {
        match ws_from(attacker, addr).await {
            Some(mut ws) => {
                send(&mut ws, json!({"type": "hello", "version": 1})).await;
                match recv(&mut ws).await {
                    Some(v) if v["type"] == "welcome" || v["type"] == "challenge" => held.push(ws),
                    _ => refused += 1,
                }
            }
            None => refused += 1,
        }
    }
    println!(
        "one network: {} connections held, {refused} refused or closed",
        held.len()
    );
    assert!(held.len() <= 20, "{} held", held.len());
    assert!(refused >= 1_980);
    pair.still_talking("2,000 connections from one network")
        .await;

    // A newcomer from another network still gets in and is matched.
    let mut c = ws_from("127.0.0.14", addr).await.unwrap();
    send(&mut c, json!({"type": "hello", "version": 1})).await;
    recv_type(&mut c, "welcome").await;
    drop(held);
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_are_aggregate_only() {
    let s = server(|_| {}).await;
    let mut a = ws_from("127.0.0.2", s.http_addr).await.unwrap();
    send(&mut a, json!({"type": "hello", "version": 1})).await;
    recv_type(&mut a, "welcome").await;
    a.send(Message::text("not json")).await.unwrap();
    recv_type(&mut a, "error").await;
    send(&mut a, json!({"type": "room_join", "room": "metric-room"})).await;
    recv_type(&mut a, "room_joined").await;

    let mut tcp = TcpStream::connect(s.http_addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(!body.to_ascii_lowercase().contains("set-cookie"));
    for want in [
        "earshot_connections 1",
        "earshot_rooms 1",
        "earshot_errors_total{code=\"bad_json\"} 1",
        "earshot_matches_total 0",
        "earshot_bans_total 0",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    // No label but the error code; nothing about anyone.
    for line in body.lines().filter(|l| l.starts_with("earshot_")) {
        if let Some(labels) = line.split_once('{').map(|(_, l)| l) {
            assert!(labels.starts_with("code=\""), "{line}");
            assert_eq!(labels.matches('=').count(), 1, "{line}");
        }
    }
    assert!(!body.contains("metric-room") && !body.contains("127.0.0.2"));
}

fn solve(challenge: &Value) -> Value {
    let salt = challenge["salt"].as_str().unwrap();
    let target = challenge["challenge"].as_str().unwrap();
    let max = challenge["maxnumber"].as_u64().unwrap();
    let number = (0..=max)
        .find(|n| {
            let digest = Sha256::digest(format!("{salt}{n}").as_bytes());
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                == target
        })
        .expect("a solution in range");
    json!({"salt": salt, "number": number, "challenge": target,
           "signature": challenge["signature"]})
}

#[tokio::test]
async fn proof_of_work_is_required_single_use_and_checked() {
    let s = server(|s| {
        s.core.pow.mode = earshot_core::pow::PowMode::Always;
        s.core.pow.base_maxnumber = 2_000;
    })
    .await;
    let mut a = ws_from("127.0.0.2", s.http_addr).await.unwrap();
    send(&mut a, json!({"type": "hello", "version": 1})).await;
    let challenge = recv_type(&mut a, "challenge").await;
    assert_eq!(challenge["algorithm"], "SHA-256");
    send(&mut a, json!({"type": "search"})).await;
    assert_eq!(recv_type(&mut a, "error").await["code"], "hello_required");
    let solution = solve(&challenge);
    let mut wrong = solution.clone();
    wrong["number"] = json!(solution["number"].as_u64().unwrap() + 1);
    send(&mut a, json!({"type": "hello", "version": 1, "pow": wrong})).await;
    assert_eq!(recv_type(&mut a, "error").await["code"], "pow_invalid");
    recv_type(&mut a, "challenge").await;
    send(
        &mut a,
        json!({"type": "hello", "version": 1, "pow": solution}),
    )
    .await;
    recv_type(&mut a, "welcome").await;

    // The same solution cannot admit a second connection.
    let mut b = ws_from("127.0.0.4", s.http_addr).await.unwrap();
    send(
        &mut b,
        json!({"type": "hello", "version": 1, "pow": solution}),
    )
    .await;
    assert_eq!(recv_type(&mut b, "error").await["code"], "pow_invalid");
    recv_type(&mut b, "challenge").await;
}

#[tokio::test]
async fn many_connections_from_one_network_make_it_prove_work() {
    let s = server(|_| {}).await;
    let mut held = Vec::new();
    let mut challenged = 0;
    for _ in 0..13 {
        let mut ws = ws_from("127.0.0.20", s.http_addr).await.unwrap();
        send(&mut ws, json!({"type": "hello", "version": 1})).await;
        let v = recv(&mut ws).await.unwrap();
        challenged += usize::from(v["type"] == "challenge");
        held.push(ws);
    }
    // The default allows 10 at once without work.
    assert_eq!(challenged, 3);
    let mut other = ws_from("127.0.0.21", s.http_addr).await.unwrap();
    send(&mut other, json!({"type": "hello", "version": 1})).await;
    recv_type(&mut other, "welcome").await;
}

/// The attack of issue 13 over the real WebSocket: three connections from
/// three fresh addresses (on three /24s) join a room with their victim (and
/// two bystanders, so that all three reports count before the majority is
/// reached) and `room_report` it. The room's majority removes the victim,
/// but three fresh addresses cannot ban anyone from strangers: the victim,
/// and anyone else on its address, can still search and be matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_fresh_room_members_cannot_ban_their_victim_from_strangers() {
    let s = server(|s| s.core.pow.mode = earshot_core::pow::PowMode::Off).await;
    let addr = s.http_addr;
    let greeted = |source: &'static str| async move {
        let mut ws = ws_from(source, addr).await.expect("connected");
        send(&mut ws, json!({"type": "hello", "version": 1})).await;
        recv_type(&mut ws, "welcome").await;
        ws
    };
    let mut victim = greeted("127.0.0.4").await;
    send(
        &mut victim,
        json!({"type": "room_join", "room": "lure-room"}),
    )
    .await;
    let victim_peer = recv_type(&mut victim, "room_joined").await["peer"].clone();
    let mut attackers = Vec::new();
    for source in [
        "127.0.1.2",
        "127.0.2.2",
        "127.0.3.2",
        "127.0.4.2",
        "127.0.5.2",
    ] {
        let mut a = greeted(source).await;
        send(&mut a, json!({"type": "room_join", "room": "lure-room"})).await;
        recv_type(&mut a, "room_joined").await;
        attackers.push(a);
    }
    let _bystanders = attackers.split_off(3);
    for a in &mut attackers {
        send(
            a,
            json!({"type": "room_report", "peer": victim_peer, "reason": "harassment"}),
        )
        .await;
    }
    // Removed from the room: told so, and idle.
    let mut removed = false;
    while let Some(v) = recv(&mut victim).await {
        if v["type"] == "error" && v["code"] == "removed" {
            removed = true;
        }
        if v["type"] == "idle" {
            break;
        }
    }
    assert!(removed, "the room's majority removes the victim");
    // Not banned from strangers: the victim searches and meets a stranger,
    // and so does a housemate on the same address.
    for (mut who, stranger) in [
        (victim, "127.0.0.6"),
        (greeted("127.0.0.4").await, "127.0.0.7"),
    ] {
        send(&mut who, json!({"type": "search"})).await;
        let heard = recv(&mut who).await.expect("an answer");
        assert_eq!(heard["type"], "searching", "not banned: {heard}");
        let mut stranger = greeted(stranger).await;
        send(&mut stranger, json!({"type": "search"})).await;
        recv_type(&mut stranger, "searching").await;
        recv_type(&mut stranger, "matched").await;
        recv_type(&mut who, "matched").await;
    }
    s.shutdown().await;
}
