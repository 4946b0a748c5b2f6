//! The server on port 0, driven by real WebSocket clients.

use std::net::SocketAddr;
use std::time::Duration;

use earshot_server::{Running, Settings};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(5);

async fn server(tweak: impl FnOnce(&mut Settings)) -> Running {
    let mut settings = Settings::for_tests("127.0.0.1:0".parse().unwrap());
    tweak(&mut settings);
    earshot_server::start(settings).await.unwrap()
}

async fn connect(addr: SocketAddr) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON message, skipping pings.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    let v = recv(ws).await;
    assert_eq!(v["type"], kind, "{v}");
    v
}

/// The close frame the server ends with.
async fn closed_with(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a close in time");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a reason"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before close: {e}"),
        }
    }
}

async fn greeted(addr: SocketAddr) -> (Ws, Value) {
    let mut ws = connect(addr).await;
    send(&mut ws, json!({"type": "hello", "version": 1})).await;
    let welcome = recv_type(&mut ws, "welcome").await;
    (ws, welcome)
}

/// Two greeted clients in one call: (impolite offerer, polite answerer, call id).
async fn pair(addr: SocketAddr) -> (Ws, Ws, u64) {
    let (mut a, _) = greeted(addr).await;
    let (mut b, _) = greeted(addr).await;
    send(&mut a, json!({"type": "search"})).await;
    recv_type(&mut a, "searching").await;
    send(&mut b, json!({"type": "search"})).await;
    recv_type(&mut b, "searching").await;
    let mb = recv_type(&mut b, "matched").await;
    let ma = recv_type(&mut a, "matched").await;
    assert_eq!(ma["call"], mb["call"]);
    assert_eq!(ma["polite"], true);
    assert_eq!(mb["polite"], false);
    (b, a, mb["call"].as_u64().unwrap())
}

#[tokio::test]
async fn welcome_names_only_our_own_stun() {
    let s = server(|_| {}).await;
    let (_ws, welcome) = greeted(s.http_addr).await;
    let stun = s.stun_addr.unwrap();
    assert_eq!(
        welcome["ice_servers"],
        json!([{"urls": [format!("stun:127.0.0.1:{}", stun.port())]}])
    );
    assert_eq!(welcome["version"], 1);
    assert_eq!(welcome["limits"]["max_message_bytes"], 16384);
    assert_eq!(welcome["country"], Value::Null);
}

#[tokio::test]
async fn a_matched_pair_exchanges_offer_answer_and_candidates() {
    let s = server(|_| {}).await;
    let (mut offerer, mut answerer, call) = pair(s.http_addr).await;
    let offer =
        json!({"type": "signal", "call": call, "description": {"type": "offer", "sdp": "v=0\r\n"}});
    send(&mut offerer, offer).await;
    let got = recv_type(&mut answerer, "signal").await;
    assert_eq!(got["description"]["sdp"], "v=0\r\n");
    assert_eq!(got["call"], call);
    let cand = json!({"type": "signal", "call": call, "candidate": {
        "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}});
    send(&mut answerer, cand).await;
    let got = recv_type(&mut offerer, "signal").await;
    assert_eq!(got["candidate"]["usernameFragment"], "abcd");

    // Skip: both back in the queue, the skipped one told why.
    send(&mut offerer, json!({"type": "skip"})).await;
    recv_type(&mut offerer, "searching").await;
    let ended = recv_type(&mut answerer, "call_ended").await;
    assert_eq!(ended["reason"], "partner_skipped");
    recv_type(&mut answerer, "searching").await;

    // End: idle.
    send(&mut offerer, json!({"type": "end"})).await;
    recv_type(&mut offerer, "idle").await;
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_the_socket_stays_usable() {
    let s = server(|_| {}).await;
    let mut ws = connect(s.http_addr).await;
    send(&mut ws, json!({"type": "search"})).await;
    assert_eq!(recv_type(&mut ws, "error").await["code"], "hello_required");
    send(&mut ws, json!({"type": "hello", "version": 1})).await;
    recv_type(&mut ws, "welcome").await;
    let cases = [
        (Message::text("{nope"), "bad_json"),
        (Message::text(r#"{"type":"teleport"}"#), "unknown_type"),
        (
            Message::text(r#"{"type":"hello","version":1}"#),
            "already_hello",
        ),
        (
            Message::text(r#"{"type":"signal","call":1,"candidate":{"candidate":"x"}}"#),
            "not_in_call",
        ),
        (Message::binary(vec![1u8, 2, 3]), "bad_message"),
        (Message::text("x".repeat(20_000)), "too_large"),
    ];
    for (msg, code) in cases {
        ws.send(msg).await.unwrap();
        let err = recv_type(&mut ws, "error").await;
        assert_eq!(err["code"], code, "{err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    send(&mut ws, json!({"type": "search", "interests": ["chess"]})).await;
    let searching = recv_type(&mut ws, "searching").await;
    assert_eq!(searching["interests"], json!(["chess"]));
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let s = server(|_| {}).await;
    let (mut ws, _) = greeted(s.http_addr).await;
    ws.send(Message::text("x".repeat(70_000))).await.unwrap();
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(u16::from(code), 1009);
    assert_eq!(reason, "message too big");
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_while_others_keep_talking() {
    let s = server(|_| {}).await;
    let (mut a, mut b, call) = pair(s.http_addr).await;
    let (mut flooder, _) = greeted(s.http_addr).await;
    for _ in 0..500 {
        if flooder
            .send(Message::text(r#"{"type":"end"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut rate_limited = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, flooder.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["code"] == "rate_limited" {
                    assert!(v["retry_after_ms"].as_u64().unwrap() > 0);
                    rate_limited += 1;
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert!(rate_limited > 0);
    assert_eq!(code, (1008, "too many errors".to_string()));
    // The pair was never disturbed.
    send(
        &mut a,
        json!({"type": "signal", "call": call, "description": {"type": "offer", "sdp": "x"}}),
    )
    .await;
    recv_type(&mut b, "signal").await;
}

#[tokio::test]
async fn silent_sockets_are_closed_for_idleness_and_the_partner_is_told() {
    let s = server(|s| {
        s.ping_interval = Duration::from_millis(100);
        s.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut a, b, _) = pair(s.http_addr).await;
    // `b` stops reading, so it answers no pings: only `a`, which reads, stays.
    let keep_b_silent = tokio::spawn(async move {
        let _b = b;
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    let ended = recv_type(&mut a, "call_ended").await;
    assert_eq!(ended["reason"], "partner_left");
    recv_type(&mut a, "searching").await;
    keep_b_silent.abort();
}

#[tokio::test]
async fn a_slow_reader_is_dropped_without_stalling_its_partner() {
    let s = server(|s| {
        s.outbound_queue = 2;
        // Only b's slowness may end the call, not a's rate.
        s.core.messages_per_second = 100_000;
        s.core.message_burst = 100_000;
    })
    .await;
    let (mut a, b, call) = pair(s.http_addr).await;
    // `b` never reads; `a` sends large signals until the server gives up on b.
    let big = "a".repeat(15_000);
    let mut ended = None;
    for _ in 0..5_000 {
        let msg =
            json!({"type": "signal", "call": call, "description": {"type": "offer", "sdp": big}});
        send(&mut a, msg).await;
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(1), a.next()).await
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "call_ended" {
                ended = Some(v);
                break;
            }
        }
    }
    let ended = ended.expect("the slow reader was dropped");
    assert_eq!(ended["reason"], "partner_left");
    drop(b);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1012() {
    let s = server(|_| {}).await;
    let (mut ws, _) = greeted(s.http_addr).await;
    let shutdown = tokio::spawn(s.shutdown());
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(u16::from(code), 1012);
    assert_eq!(reason, "server restart");
    shutdown.await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_1013() {
    let s = server(|s| s.max_connections = 2).await;
    let (_a, _) = greeted(s.http_addr).await;
    let (_b, _) = greeted(s.http_addr).await;
    let mut c = connect(s.http_addr).await;
    let (code, reason) = closed_with(&mut c).await;
    assert_eq!(u16::from(code), 1013);
    assert_eq!(reason, "server full");
}

#[tokio::test]
async fn http_responses_carry_security_headers_and_no_cookies() {
    let s = server(|_| {}).await;
    for path in ["/", "/app.js", "/healthz", "/missing"] {
        let head = raw_get(s.http_addr, path).await;
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("set-cookie"), "{path}: {head}");
        assert!(
            lower.contains("content-security-policy: default-src 'self'"),
            "{path}"
        );
        assert!(lower.contains("referrer-policy: no-referrer"), "{path}");
        assert!(
            lower.contains("permissions-policy: microphone=(self)"),
            "{path}"
        );
    }
    assert!(raw_get(s.http_addr, "/").await.starts_with("HTTP/1.1 200"));
    assert!(
        raw_get(s.http_addr, "/missing")
            .await
            .starts_with("HTTP/1.1 404")
    );
}

/// A bare HTTP/1.1 GET, returning the status line and headers.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    text.split("\r\n\r\n").next().unwrap().to_string()
}

#[tokio::test]
async fn rooms_relay_between_members_and_locks_hold() {
    let s = server(|s| s.core.rooms.max_size = 3).await;
    let (mut a, _) = greeted(s.http_addr).await;
    let (mut b, _) = greeted(s.http_addr).await;
    let (mut c, _) = greeted(s.http_addr).await;
    send(&mut a, json!({"type": "room_suggest"})).await;
    let name = recv_type(&mut a, "room_suggestion").await["name"]
        .as_str()
        .unwrap()
        .to_string();
    send(&mut a, json!({"type": "room_join", "room": name})).await;
    let ja = recv_type(&mut a, "room_joined").await;
    assert_eq!(ja["peers"], json!([]));
    assert_eq!(ja["max_size"], 3);
    send(&mut b, json!({"type": "room_join", "room": name})).await;
    let jb = recv_type(&mut b, "room_joined").await;
    assert_eq!(jb["peers"], json!([ja["peer"]]));
    assert_eq!(recv_type(&mut a, "peer_joined").await["peer"], jb["peer"]);

    let offer = json!({"type": "signal", "to": ja["peer"], "description": {"type": "offer", "sdp": "v=0"}, "auth": "c2ln"});
    send(&mut b, offer).await;
    let got = recv_type(&mut a, "signal").await;
    assert_eq!(got["from"], jb["peer"]);
    assert_eq!(got["auth"], "c2ln");
    assert!(got.get("to").is_none() && got.get("call").is_none());

    let verifier = "A".repeat(43);
    send(&mut a, json!({"type": "room_lock", "verifier": verifier})).await;
    assert_eq!(recv_type(&mut a, "room_lock_state").await["locked"], true);
    assert_eq!(recv_type(&mut b, "room_lock_state").await["locked"], true);
    send(&mut c, json!({"type": "room_join", "room": name})).await;
    assert_eq!(
        recv_type(&mut c, "error").await["code"],
        "passphrase_required"
    );
    send(
        &mut c,
        json!({"type": "room_join", "room": name, "verifier": "B".repeat(43)}),
    )
    .await;
    assert_eq!(recv_type(&mut c, "error").await["code"], "wrong_passphrase");
    send(
        &mut c,
        json!({"type": "room_join", "room": name, "verifier": verifier}),
    )
    .await;
    assert_eq!(recv_type(&mut c, "room_joined").await["locked"], true);

    let (mut d, _) = greeted(s.http_addr).await;
    send(
        &mut d,
        json!({"type": "room_join", "room": name, "verifier": verifier}),
    )
    .await;
    assert_eq!(recv_type(&mut d, "error").await["code"], "room_full");

    let joined = recv_type(&mut a, "peer_joined").await;
    drop(c);
    assert_eq!(recv_type(&mut a, "peer_left").await["peer"], joined["peer"]);
}

#[tokio::test]
async fn turn_credentials_are_minted_per_welcome_and_refreshed() {
    use earshot_server::config::{EmbeddedTurn, TurnSetup};
    let secret = b"a-test-secret-of-some-length".to_vec();
    let s = server(|s| {
        s.turn = TurnSetup {
            embedded: Some(EmbeddedTurn {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls_listen: None,
                public_ip: None,
                relay_ports: 50_000..=50_100,
                limits: Default::default(),
            }),
            urls: vec!["turn:turn.example.org:3478?transport=udp".into()],
            secret: secret.clone(),
            unavailable: None,
        };
    })
    .await;
    let turn = s.turn_addr.expect("embedded TURN runs");
    let (mut ws, welcome) = greeted(s.http_addr).await;
    assert_eq!(welcome["hide_ip_default"], true);
    let ttl_ms = welcome["limits"]["ice_credential_ttl_ms"].as_u64().unwrap();
    assert_eq!(ttl_ms, 6 * 3600 * 1000);
    let servers = welcome["ice_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{servers:?}");
    assert!(
        servers[0].get("username").is_none(),
        "STUN needs no credential"
    );
    assert_eq!(
        servers[1]["urls"],
        json!([
            format!("turn:127.0.0.1:{}?transport=udp", turn.port()),
            format!("turn:127.0.0.1:{}?transport=tcp", turn.port())
        ])
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for turn_server in &servers[1..] {
        let user = turn_server["username"].as_str().unwrap();
        let expiry: u64 = user.split_once(':').unwrap().0.parse().unwrap();
        assert!(expiry.abs_diff(now + 6 * 3600) <= 5, "{user}");
        assert_eq!(
            turn_server["credential"],
            earshot_core::turn::rest_password(&secret, user)
        );
    }
    send(&mut ws, json!({"type": "refresh_ice"})).await;
    let fresh = recv_type(&mut ws, "ice_servers").await;
    // A refreshed credential names the same session (its relay quota is
    // the session's), and lasts at least as long; another session's
    // credential names another.
    let tag = |v: &Value| v.as_str().unwrap().split_once(':').unwrap().1.to_owned();
    let expiry = |v: &Value| -> u64 {
        v.as_str()
            .unwrap()
            .split_once(':')
            .unwrap()
            .0
            .parse()
            .unwrap()
    };
    let (old, new) = (
        &servers[1]["username"],
        &fresh["ice_servers"][1]["username"],
    );
    assert_eq!(tag(new), tag(old));
    assert!(expiry(new) >= expiry(old));
    assert_eq!(
        fresh["ice_servers"][1]["credential"],
        earshot_core::turn::rest_password(&secret, new.as_str().unwrap())
    );
    let (_other, other_welcome) = greeted(s.http_addr).await;
    assert_ne!(tag(&other_welcome["ice_servers"][1]["username"]), tag(old));
}

/// A client whose trusted reverse proxy says it comes from `forwarded_for`.
async fn greeted_via(addr: SocketAddr, forwarded_for: &str) -> (Ws, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send(&mut ws, json!({"type": "hello", "version": 1})).await;
    let welcome = recv_type(&mut ws, "welcome").await;
    (ws, welcome)
}

#[tokio::test]
async fn partners_see_each_others_country_through_a_trusted_proxy_only() {
    let trusted = server(|s| {
        s.proxies = earshot_server::proxy::TrustedProxies::parse(&["127.0.0.0/8".into()]).unwrap();
    })
    .await;
    // The leftmost entry is what the client claimed; the proxy appended the rest.
    let (mut a, wa) = greeted_via(trusted.http_addr, "8.8.8.8").await;
    let (mut b, wb) = greeted_via(trusted.http_addr, "1.2.3.4, 193.0.6.139").await;
    assert_eq!(wa["country"], "US");
    assert_eq!(wb["country"], "NL", "the rightmost untrusted entry counts");
    send(&mut a, json!({"type": "search"})).await;
    send(&mut b, json!({"type": "search"})).await;
    recv_type(&mut a, "searching").await;
    recv_type(&mut b, "searching").await;
    assert_eq!(recv_type(&mut b, "matched").await["country"], "US");
    assert_eq!(recv_type(&mut a, "matched").await["country"], "NL");

    // The same headers from a peer that is not a trusted proxy are ignored.
    let untrusted = server(|_| {}).await;
    let (_c, wc) = greeted_via(untrusted.http_addr, "8.8.8.8").await;
    assert_eq!(wc["country"], Value::Null);
}
