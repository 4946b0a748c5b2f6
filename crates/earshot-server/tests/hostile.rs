//! Hostile clients against the real `earshot` binary's STUN and TURN, as an
//! attacker would try them: relaying into the operator's network, taking
//! the whole relay with one credential, filling TURN over TCP and TLS, and
//! reflecting floods at a forged source.
//!
//! Each test runs in a network namespace of its own (it re-runs itself
//! under `unshare -n`), with extra addresses on `lo` standing in for the
//! operator's internal hosts (10.0.0.5, 169.254.169.254, ...) and for the
//! server's public address (192.0.2.10, 2001:db8::10). Every packet stays
//! inside that namespace. The server listens on all interfaces and
//! advertises the public address, as a deployment does.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use earshot_core::stun::codec::{Class, Encoder, Message, attr, method};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::server::Server;
use support::turn_client::{Client, Conn, code};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Set in the child that runs inside the namespace.
const INSIDE: &str = "EARSHOT_HOSTILE_NAMESPACE";
/// Addresses the namespace puts on `lo`.
const LO_ADDRESSES: &[&str] = &[
    "10.0.0.5/32",
    "10.0.0.6/32",
    "169.254.169.254/32",
    "192.168.7.7/32",
    "172.17.0.1/32",
    "100.64.0.1/32",
    "192.0.2.10/32",
    "2001:db8::10/128",
    "fd00::5/128",
    "fd00:1:2:3::1/128",
    "fd00:1:2:3::2/128",
    "fd00:1:2:3::3/128",
    "fd00:1:2:4::1/128",
];
/// The internal services an open relay would reach (the probe's list).
const INTERNAL: &[&str] = &[
    "10.0.0.5:53",
    "169.254.169.254:53",
    "192.168.7.7:161",
    "172.17.0.1:8125",
    "100.64.0.1:53",
    "192.0.2.10:11211",
];
const PUBLIC_V4: &str = "192.0.2.10";
const PUBLIC_V6: &str = "2001:db8::10";
const SILENCE: Duration = Duration::from_millis(400);

/// Runs `scenario` inside a namespace of its own: re-runs this test binary
/// for the test `name` under `unshare -n`, or runs it when already there.
fn in_namespace<F: Future<Output = ()>>(name: &str, scenario: impl FnOnce() -> F) {
    if std::env::var_os(INSIDE).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(scenario());
        return;
    }
    let mut setup = String::from("set -e; ip link set lo up; ");
    for a in LO_ADDRESSES {
        let family = if a.contains(':') { "-6" } else { "-4" };
        // nodad: the address is usable at once.
        let flags = if a.contains(':') { " nodad" } else { "" };
        setup += &format!("ip {family} addr add {a} dev lo{flags}; ");
    }
    setup += "exec \"$0\" --exact \"$1\" --nocapture --test-threads 1";
    let exe = std::env::current_exe().unwrap();
    let output = support::netns::unshare_net()
        .args(["--", "bash", "-c", &setup])
        .arg(&exe)
        .arg(name)
        .env(INSIDE, "1")
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if std::env::var("EARSHOT_E2E").as_deref() != Ok("1") => {
            eprintln!("skipped: cannot run unshare ({e}); scripts/test runs this");
            return;
        }
        Err(e) => panic!("cannot run unshare: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success()
        && text.contains("unshare failed")
        && std::env::var("EARSHOT_E2E").as_deref() != Ok("1")
    {
        eprintln!("skipped: no network namespaces here; scripts/test runs this:\n{text}");
        return;
    }
    assert!(output.status.success(), "in the namespace:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the scenario did not run:\n{text}"
    );
    println!("{text}");
}

/// The real binary on all interfaces, advertising `public` as its relay
/// address, with `extra` flags.
fn start(public: &str, extra: &[&str]) -> Server {
    let listen = if public.contains(':') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let mut args = vec![
        "--turn-listen",
        listen,
        "--turn-public-ip",
        public,
        "--turn-relay-ports",
        "52000-52999",
        "--pow",
        "off",
    ];
    args.extend_from_slice(extra);
    Server::start_on(&support::earshot_binary(), listen, &args).unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A signalling session: its socket, and the TURN address and credentials
/// its welcome carried.
struct Session {
    ws: Ws,
    turn: SocketAddr,
    username: String,
    password: String,
}

async fn session(server: &Server, host: &str) -> Session {
    let url = format!("ws://{host}:{}/ws", server.port());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = json!({"type": "hello", "version": 1}).to_string();
    ws.send(WsMessage::text(hello)).await.unwrap();
    let welcome = loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a welcome in time")
            .unwrap()
            .unwrap();
        if let WsMessage::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["type"], "welcome", "{v}");
            break v;
        }
    };
    let turn = welcome["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["urls"][0].as_str().unwrap().starts_with("turn:"))
        .expect("the embedded TURN server is offered")
        .clone();
    let url = turn["urls"][0].as_str().unwrap();
    let hostport = url["turn:".len()..].split('?').next().unwrap();
    let (h, port) = hostport.rsplit_once(':').unwrap();
    let ip: IpAddr = h.trim_matches(['[', ']']).parse().unwrap();
    Session {
        ws,
        turn: SocketAddr::new(ip, port.parse().unwrap()),
        username: turn["username"].as_str().unwrap().into(),
        password: turn["credential"].as_str().unwrap().into(),
    }
}

/// A client of `s`'s credentials, over UDP or TCP from `local`. An IPv6
/// client other than ::1 talks to the server at its own address: a socket
/// bound to `::` answers from the address the route to the client picks.
async fn client(s: &Session, tcp: bool, local: &str) -> Client {
    let local: IpAddr = local.parse().unwrap();
    let server = match local {
        IpAddr::V6(v6) if !v6.is_loopback() => SocketAddr::new(local, s.turn.port()),
        _ => s.turn,
    };
    let conn = Conn::open_from(tcp, server, local).await;
    Client::on(conn, s.username.clone(), s.password.clone())
}

/// Allocates; the relayed address, or the error code.
async fn allocate(c: &mut Client) -> Result<SocketAddr, u16> {
    let answer = c.allocate().await;
    match code(&answer) {
        None => Ok(Message::decode(&answer)
            .unwrap()
            .xor_address(attr::XOR_RELAYED_ADDRESS)
            .unwrap()
            .unwrap()),
        Some(code) => Err(code),
    }
}

async fn permit(c: &mut Client, peer: SocketAddr) -> Option<u16> {
    code(
        &c.request(method::CREATE_PERMISSION, |e| {
            e.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .await,
    )
}

async fn bind_channel(c: &mut Client, channel: u16, peer: SocketAddr) -> Option<u16> {
    code(
        &c.request(method::CHANNEL_BIND, |e| {
            e.add(
                attr::CHANNEL_NUMBER,
                &[(channel >> 8) as u8, channel as u8, 0, 0],
            )
            .xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
        .await,
    )
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new(method::SEND, Class::Indication, [0xAB; 12]);
    e.xor_address(attr::XOR_PEER_ADDRESS, peer)
        .add(attr::DATA, data);
    e.finish()
}

/// UDP services listening where an open relay would reach them.
async fn listeners(addrs: &[&str]) -> Vec<(SocketAddr, UdpSocket)> {
    let mut out = Vec::new();
    for a in addrs {
        let addr: SocketAddr = a.parse().unwrap();
        out.push((addr, UdpSocket::bind(addr).await.unwrap()));
    }
    out
}

/// Whether any listener got a datagram within `SILENCE`.
async fn any_received(listeners: &[(SocketAddr, UdpSocket)]) -> Vec<SocketAddr> {
    tokio::time::sleep(SILENCE).await;
    let mut hit = Vec::new();
    for (addr, socket) in listeners {
        let mut buf = [0; 2048];
        while socket.try_recv_from(&mut buf).is_ok() {
            hit.push(*addr);
        }
    }
    hit
}

/// The value of one `/metrics` line.
async fn metric(server: &Server, name: &str) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("earshot_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
        .parse()
        .unwrap()
}

/// Polls a counter (the TURN server publishes them about once a second).
async fn metric_reaches(server: &Server, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = metric(server, name).await;
        if v >= at_least || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two allocations of the same server reach each other through their
/// relay addresses (handed over in memory): proof that the test would see
/// relayed traffic, and the path two "hide my IP" users take.
async fn relay_to_relay_works(
    a: &mut Client,
    relay_a: SocketAddr,
    b: &mut Client,
    relay_b: SocketAddr,
) {
    assert_eq!(permit(a, relay_b).await, None, "own relay address refused");
    assert_eq!(permit(b, relay_a).await, None, "own relay address refused");
    a.conn
        .send(&send_indication(relay_b, b"relay to relay"))
        .await;
    let got = b
        .next(Duration::from_secs(5))
        .await
        .expect("nothing relayed between relays");
    let m = Message::decode(&got).unwrap();
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Ok(Some(relay_a)));
    assert_eq!(m.get(attr::DATA), Some(&b"relay to relay"[..]));
}

#[test]
fn the_relay_never_reaches_internal_addresses_over_udp_or_tcp() {
    in_namespace(
        "the_relay_never_reaches_internal_addresses_over_udp_or_tcp",
        || async {
            let server = start(PUBLIC_V4, &[]);
            let services = listeners(INTERNAL).await;
            for tcp in [false, true] {
                let s = session(&server, "127.0.0.1").await;
                let mut c = client(&s, tcp, "127.0.0.1").await;
                let relay = allocate(&mut c).await.expect("allocation");
                assert_eq!(relay.ip().to_string(), PUBLIC_V4);
                let turn_port = s.turn.port();
                let own = [
                    format!("{PUBLIC_V4}:{turn_port}"),
                    format!("{PUBLIC_V4}:{}", server.port()),
                    format!("127.0.0.1:{turn_port}"),
                ];
                let targets = INTERNAL
                    .iter()
                    .map(|a| a.to_string())
                    .chain(own.iter().cloned());
                for (n, target) in targets.enumerate() {
                    let peer: SocketAddr = target.parse().unwrap();
                    let is_own_relay = peer.ip().to_string() == PUBLIC_V4;
                    // The relay's own address takes a permission (relay to
                    // relay), but only its live relay ports take a channel
                    // or data.
                    let expected = if is_own_relay { None } else { Some(403) };
                    assert_eq!(permit(&mut c, peer).await, expected, "{target} tcp={tcp}");
                    let channel = 0x4000 + n as u16;
                    assert_eq!(
                        bind_channel(&mut c, channel, peer).await,
                        Some(403),
                        "{target} tcp={tcp}"
                    );
                    c.conn.send(&send_indication(peer, b"probe")).await;
                }
                assert_eq!(
                    any_received(&services).await,
                    Vec::<SocketAddr>::new(),
                    "tcp={tcp}"
                );
                // The same credentials do relay between two of our relays.
                let t = session(&server, "127.0.0.1").await;
                let mut other = client(&t, tcp, "127.0.0.1").await;
                let relay_other = allocate(&mut other).await.expect("allocation");
                relay_to_relay_works(&mut c, relay, &mut other, relay_other).await;
            }
            assert!(metric_reaches(&server, "turn_refused_peers_total", 20).await >= 20);
            assert!(metric_reaches(&server, "turn_relay_to_relay_total", 2).await >= 2);
        },
    );
}

#[test]
fn allow_and_deny_flags_open_and_close_ranges() {
    in_namespace("allow_and_deny_flags_open_and_close_ranges", || async {
        let server = start(
            PUBLIC_V4,
            &[
                "--turn-allow-peer",
                "10.0.0.0/8",
                "--turn-deny-peer",
                "10.0.0.6/32",
            ],
        );
        let services = listeners(&["10.0.0.5:53", "10.0.0.6:53", "192.168.7.7:161"]).await;
        let s = session(&server, "127.0.0.1").await;
        let mut c = client(&s, false, "127.0.0.1").await;
        allocate(&mut c).await.expect("allocation");
        let allowed: SocketAddr = "10.0.0.5:53".parse().unwrap();
        assert_eq!(permit(&mut c, allowed).await, None);
        assert_eq!(
            permit(&mut c, "10.0.0.6:53".parse().unwrap()).await,
            Some(403)
        );
        assert_eq!(
            permit(&mut c, "192.168.7.7:161".parse().unwrap()).await,
            Some(403)
        );
        for peer in ["10.0.0.5:53", "10.0.0.6:53", "192.168.7.7:161"] {
            c.conn
                .send(&send_indication(peer.parse().unwrap(), b"x"))
                .await;
        }
        assert_eq!(any_received(&services).await, vec![allowed]);
    });
}

#[test]
fn the_relay_never_reaches_internal_addresses_over_ipv6() {
    in_namespace(
        "the_relay_never_reaches_internal_addresses_over_ipv6",
        || async {
            let server = start(PUBLIC_V6, &[]);
            let services = listeners(&["[fd00::5]:53", "[::1]:53"]).await;
            for tcp in [false, true] {
                let s = session(&server, "[::1]").await;
                assert!(s.turn.is_ipv6());
                let mut c = client(&s, tcp, "::1").await;
                let relay = allocate(&mut c).await.expect("allocation");
                assert_eq!(relay.ip().to_string(), PUBLIC_V6);
                for refused in [
                    "[fd00::5]:53",
                    "[::1]:53",
                    "[fe80::1]:53",
                    "[64:ff9b::a00:5]:53",
                    "[2002:a00:5::1]:53",
                    "[2001:db8::77]:53",
                ] {
                    assert_eq!(
                        permit(&mut c, refused.parse().unwrap()).await,
                        Some(403),
                        "{refused} tcp={tcp}"
                    );
                    c.conn
                        .send(&send_indication(refused.parse().unwrap(), b"x"))
                        .await;
                }
                // IPv4 peers, mapped or not, are another family: 443.
                assert_eq!(
                    permit(&mut c, "[::ffff:10.0.0.5]:53".parse().unwrap()).await,
                    Some(443)
                );
                assert_eq!(any_received(&services).await, Vec::<SocketAddr>::new());
                let t = session(&server, "[::1]").await;
                let mut other = client(&t, tcp, "::1").await;
                let relay_other = allocate(&mut other).await.expect("allocation");
                relay_to_relay_works(&mut c, relay, &mut other, relay_other).await;
            }
        },
    );
}

#[test]
fn one_credential_cannot_take_the_relay_and_ended_sessions_get_none() {
    in_namespace(
        "one_credential_cannot_take_the_relay_and_ended_sessions_get_none",
        || async {
            // Room size 4: 12 allocations per credential, 36 per client.
            let server = start(
                PUBLIC_V4,
                &["--room-size", "4", "--turn-client-quota", "20"],
            );
            let s = session(&server, "127.0.0.1").await;
            // One credential from 16 addresses at 4 allocations each.
            let mut held = Vec::new();
            let mut refused = 0;
            for host in 1..=16 {
                for _ in 0..4 {
                    let mut c = client(&s, false, &format!("127.0.1.{host}")).await;
                    match allocate(&mut c).await {
                        Ok(_) => held.push(c),
                        Err(486) => refused += 1,
                        Err(other) => panic!("unexpected {other}"),
                    }
                }
            }
            assert_eq!(held.len(), 12, "the credential's quota");
            assert_eq!(refused, 64 - 12);
            // A fresh user still gets an allocation.
            let fresh = session(&server, "127.0.0.1").await;
            allocate(&mut client(&fresh, false, "127.0.2.1").await)
                .await
                .expect("a fresh user is served");
            // Sessions from one IPv6 /64 count as one client (20 here); the
            // next /64 is someone else.
            let mut v6 = Vec::new();
            let mut v6_refused = 0;
            let server6 = start(
                PUBLIC_V6,
                &["--room-size", "4", "--turn-client-quota", "20"],
            );
            for _ in 0..3 {
                let s6 = session(&server6, "[::1]").await;
                for host in ["fd00:1:2:3::1", "fd00:1:2:3::2", "fd00:1:2:3::3"] {
                    for _ in 0..3 {
                        let mut c = client(&s6, false, host).await;
                        match allocate(&mut c).await {
                            Ok(_) => v6.push(c),
                            Err(486) => v6_refused += 1,
                            Err(other) => panic!("unexpected {other}"),
                        }
                    }
                }
            }
            assert_eq!(v6.len(), 20, "one /64's quota");
            assert_eq!(v6_refused, 27 - 20);
            let s6 = session(&server6, "[::1]").await;
            allocate(&mut client(&s6, false, "fd00:1:2:4::1").await)
                .await
                .expect("another /64 is served");
            // A session that ended gets no new allocation with its
            // credentials.
            let Session {
                ws,
                turn,
                username,
                password,
            } = session(&server, "127.0.0.1").await;
            drop(ws);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let conn = Conn::open_from(false, turn, "127.0.2.2".parse().unwrap()).await;
            let mut c = Client::on(conn, username, password);
            assert_eq!(allocate(&mut c).await, Err(403));
            assert!(metric_reaches(&server, "turn_quota_credential_total", 52).await >= 52);
            assert!(metric_reaches(&server, "turn_revoked_credentials_total", 1).await >= 1);
            assert!(metric_reaches(&server6, "turn_quota_client_total", 7).await >= 7);
            drop((held, v6));
        },
    );
}

#[test]
fn idle_tcp_connections_from_one_client_do_not_lock_others_out() {
    in_namespace(
        "idle_tcp_connections_from_one_client_do_not_lock_others_out",
        || async {
            let server = start(PUBLIC_V4, &["--turn-tcp-per-client", "8"]);
            let s = session(&server, "127.0.0.1").await;
            // 1024 idle connections from one address: all but 8 are closed
            // at once.
            let mut idle = Vec::new();
            for _ in 0..1024 {
                if let Ok(stream) = TcpStream::connect(s.turn).await {
                    idle.push(stream);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut open = 0;
            for stream in &mut idle {
                let mut byte = [0u8; 1];
                let read = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte));
                if read.await.is_err() {
                    open += 1;
                }
            }
            assert_eq!(open, 8, "connections left open");
            // Someone else is answered over TCP at once.
            let mut other = client(&s, true, "127.0.0.2").await;
            let answer = other.request(method::BINDING, |_| {}).await;
            assert_eq!(code(&answer), None);
            assert!(metric_reaches(&server, "turn_tcp_refused_total", 1000).await >= 1000);
            // A connection that holds no allocation is closed after 15 s.
            let started = Instant::now();
            let bare = &mut other.conn;
            let Conn::Tcp(stream, _) = bare else {
                unreachable!()
            };
            let mut byte = [0u8; 1];
            let closed =
                tokio::time::timeout(Duration::from_secs(25), stream.read(&mut byte)).await;
            assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "still open: {closed:?}"
            );
            assert!(
                started.elapsed() >= Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
            assert!(metric_reaches(&server, "turn_tcp_idle_closed_total", 1).await >= 1);
        },
    );
}

/// TURN over TLS on a port of its own, with a certificate: 1024 stalled
/// handshakes from one address leave 8 open (`--turn-tcp-per-client`
/// covers TLS too), someone else completes a handshake and is answered at
/// once, and the stalled ones are cut off after 5 s (not the 10 s a TCP
/// client gets for its first frame).
#[test]
fn stalled_tls_handshakes_from_one_client_do_not_lock_others_out() {
    in_namespace(
        "stalled_tls_handshakes_from_one_client_do_not_lock_others_out",
        || async {
            let dir = support::TempDir::new("earshot-hostile-tls").unwrap();
            let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, made.cert.pem()).unwrap();
            std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
            let (cert, key) = (cert.display().to_string(), key.display().to_string());
            let server = start(
                PUBLIC_V4,
                &[
                    "--turn-tcp-per-client",
                    "8",
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &key,
                    "--turn-tls-listen",
                    "0.0.0.0:0",
                ],
            );
            // "... and over tls on 0.0.0.0:PORT)" in the start-up line (kept
            // just after the URL in it was seen).
            let mut output = server.output();
            for _ in 0..100 {
                if output.contains("over tls on ") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                output = server.output();
            }
            let port: u16 = output
                .split("over tls on ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no TLS port in the start-up line:\n{output}"));
            let target = SocketAddr::from(([127, 0, 0, 1], port));
            let started = Instant::now();
            let mut stalled = Vec::new();
            for _ in 0..1024 {
                if let Ok(stream) = TcpStream::connect(target).await {
                    stalled.push(stream);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut open = Vec::new();
            for mut stream in stalled {
                let mut byte = [0u8; 1];
                let read = tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte));
                if read.await.is_err() {
                    open.push(stream);
                }
            }
            assert_eq!(open.len(), 8, "stalled handshakes left open");
            // Someone else is served over TLS at once.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let tls = support::turn_client::tls_connect(
                socket.connect(target).await.unwrap(),
                "127.0.0.1",
                made.cert.der(),
            )
            .await
            .expect("a TLS handshake from another address");
            let mut other = Conn::Tls(Box::new(tls), Vec::new());
            let mut e = Encoder::new(method::BINDING, Class::Request, [9; 12]);
            e.fingerprint();
            other.send(&e.finish()).await;
            assert!(
                other.recv(Duration::from_secs(5)).await.is_some(),
                "no answer"
            );
            // The stalled ones are cut off at 5 s.
            for stream in &mut open {
                let mut byte = [0u8; 1];
                let left = Duration::from_secs(8).saturating_sub(started.elapsed());
                let read = tokio::time::timeout(left, stream.read(&mut byte)).await;
                assert!(
                    matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                    "still open: {read:?}"
                );
            }
            assert!(
                started.elapsed() >= Duration::from_secs(4),
                "{:?}",
                started.elapsed()
            );
        },
    );
}

/// Floods `target` from one socket for `length` with `probe`; the bytes
/// sent and the bytes that came back.
async fn flood(target: SocketAddr, from: &str, probe: &[u8], length: Duration) -> (usize, usize) {
    let socket = UdpSocket::bind((from, 0)).await.unwrap();
    let (mut sent, mut back) = (0, 0);
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    while started.elapsed() < length {
        for _ in 0..50 {
            if socket.send_to(probe, target).await.is_ok() {
                sent += probe.len();
            }
        }
        while let Ok((n, _)) = socket.try_recv_from(&mut buf) {
            back += n;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(SILENCE).await;
    while let Ok((n, _)) = socket.try_recv_from(&mut buf) {
        back += n;
    }
    (sent, back)
}

#[test]
fn floods_from_one_source_get_fewer_bytes_back_than_they_send() {
    in_namespace(
        "floods_from_one_source_get_fewer_bytes_back_than_they_send",
        || async {
            let server = start(PUBLIC_V4, &[]);
            let s = session(&server, "127.0.0.1").await;
            let stun: SocketAddr = {
                // The STUN port is the first ICE server's.
                let url = format!("ws://127.0.0.1:{}/ws", server.port());
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                ws.send(WsMessage::text(
                    json!({"type": "hello", "version": 1}).to_string(),
                ))
                .await
                .unwrap();
                let Some(Ok(WsMessage::Text(t))) = ws.next().await else {
                    panic!("no welcome")
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                let url = v["ice_servers"][0]["urls"][0].as_str().unwrap().to_owned();
                let port = url.rsplit(':').next().unwrap().parse().unwrap();
                SocketAddr::from(([127, 0, 0, 1], port))
            };
            // The probe's 20-byte Allocate draws a 401 of about 100 bytes;
            // a Binding draws an answer bigger than itself.
            let allocate = Encoder::new(method::ALLOCATE, Class::Request, [1; 12]).finish();
            let binding = Encoder::new(method::BINDING, Class::Request, [2; 12]).finish();
            assert_eq!(allocate.len(), 20);
            for (target, probe, name) in [
                (s.turn, &allocate, "TURN Allocate"),
                (s.turn, &binding, "TURN Binding"),
                (stun, &binding, "STUN Binding"),
            ] {
                let (sent, back) = flood(target, "127.0.0.3", probe, Duration::from_secs(2)).await;
                println!(
                    "flood of {name}: {sent} bytes in, {back} bytes back ({:.3})",
                    back as f64 / sent as f64
                );
                assert!(
                    sent > 100_000,
                    "{name}: the flood was too small to judge ({sent})"
                );
                assert!(back <= sent, "{name}: {back} bytes back for {sent}");
                // Another source is still answered.
                let socket = UdpSocket::bind("127.0.0.4:0").await.unwrap();
                socket.send_to(probe, target).await.unwrap();
                let mut buf = [0u8; 2048];
                let answered =
                    tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await;
                assert!(answered.is_ok(), "{name}: another source went unanswered");
            }
            assert!(metric_reaches(&server, "turn_rate_limited_total", 1000).await >= 1000);
            assert!(metric(&server, "stun_rate_limited_total").await >= 1000);
        },
    );
}

/// coturn's own client against the hardened relay: `turnutils_uclient`
/// sends to a `turnutils_peer` echoing on an internal address. Nothing comes
/// back; the same run against a server that allows that address gets every
/// message back, proof that the first would have seen them.
#[test]
fn coturn_uclient_cannot_reach_an_internal_peer() {
    in_namespace("coturn_uclient_cannot_reach_an_internal_peer", || async {
        let messages = 10;
        let mut received = Vec::new();
        for extra in [&[][..], &["--turn-allow-peer", "10.0.0.5/32"][..]] {
            let server = start(PUBLIC_V4, extra);
            let s = session(&server, "127.0.0.1").await;
            let _peer = tokio::process::Command::new("turnutils_peer")
                .args(["-L", "10.0.0.5", "-p", "3480"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("turnutils_peer (coturn) is installed by scripts/test");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let output = tokio::time::timeout(
                Duration::from_secs(60),
                tokio::process::Command::new("turnutils_uclient")
                    .args(["-c", "-n", &messages.to_string(), "-l", "120"])
                    .args(["-u", &s.username, "-w", &s.password])
                    .args([
                        "-p",
                        &s.turn.port().to_string(),
                        "-e",
                        "10.0.0.5",
                        "-r",
                        "3480",
                    ])
                    .arg("127.0.0.1")
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("turnutils_uclient finishes")
            .expect("turnutils_uclient (coturn) is installed by scripts/test");
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            // Its tally: "tot_send_msgs=10, tot_recv_msgs=N"; absent when
            // it gave up on a refused permission.
            let recv = all
                .lines()
                .filter(|l| !l.contains("msz="))
                .find_map(|l| l.split("tot_recv_msgs=").nth(1))
                .and_then(|rest| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0);
            println!("turnutils_uclient with {extra:?}: {recv} of {messages} echoed");
            received.push((recv, all));
        }
        assert_eq!(
            received[0].0, 0,
            "the relay reached 10.0.0.5:\n{}",
            received[0].1
        );
        assert_eq!(
            received[1].0, messages,
            "the control run:\n{}",
            received[1].1
        );
    });
}
