//! The embedded TURN server over real sockets on 127.0.0.1: a small client
//! of our own (built on `earshot_core::stun::codec`) over UDP, TCP and TLS,
//! and
//! coturn's `turnutils_uclient` with `turnutils_peer`, implementations we
//! did not write.
//!
//! Every packet here goes to 127.0.0.1.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use earshot_core::stun::codec::{Class, Encoder, Message, attr, method};
use earshot_core::turn::codec::{decode_channel_data, encode_channel_data};
use earshot_core::turn::rest_credentials;
use earshot_server::tls::Tls;
use earshot_server::turn::{TurnLimits, TurnListener, TurnSettings};
use support::turn_client::{Client, Conn, code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const SECRET: &[u8] = b"test shared secret";
const REALM: &str = "earshot.test";
/// How long to wait for an answer that should come, or to be sure that one
/// that should not come did not.
const ANSWER_WAIT: Duration = support::turn_client::ANSWER_WAIT;
const SILENCE_WAIT: Duration = Duration::from_millis(300);

/// A TURN server on 127.0.0.1 (UDP and TCP, and TLS with a self-signed
/// certificate for 127.0.0.1) that stops when dropped.
struct Turn {
    addr: SocketAddr,
    tls_addr: SocketAddr,
    /// The DER certificate the TLS listener presents.
    certificate: Vec<u8>,
    metrics: std::sync::Arc<earshot_server::turn::TurnMetrics>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Turn {
    async fn start() -> Turn {
        Turn::start_with(TurnLimits::default()).await
    }

    async fn start_with(limits: TurnLimits) -> Turn {
        let listener = TurnListener::bind(TurnSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_ip: None,
            relay_ports: TurnSettings::DEFAULT_RELAY_PORTS,
            secret: SECRET.to_vec(),
            realm: REALM.into(),
            limits,
        })
        .await
        .unwrap();
        let tls = Tls::self_signed(&["127.0.0.1".parse().unwrap()], &[]).unwrap();
        let listener = listener
            .with_tls("127.0.0.1:0".parse().unwrap(), tls.turn_acceptor.clone())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let tls_addr = listener.tls_addr().unwrap().unwrap();
        let metrics = listener.metrics();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(listener.serve(shutdown.clone()));
        Turn {
            addr,
            tls_addr,
            certificate: tls.certificate,
            metrics,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the server and checks that it stopped cleanly.
    async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(ANSWER_WAIT, task)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Fresh REST credentials under the test secret.
fn credentials() -> (String, String) {
    rest_credentials(SECRET, Duration::from_secs(600), unix_now(), "test")
}

async fn peer_recv(peer: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0; 2048];
    let (n, from) = tokio::time::timeout(wait, peer.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some((buf[..n].to_vec(), from))
}

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    Udp,
    Tcp,
    Tls,
}

impl Via {
    async fn client(self, turn: &Turn, username: String, password: String) -> Client {
        let conn = match self {
            Via::Udp => Conn::open(false, turn.addr).await,
            Via::Tcp => Conn::open(true, turn.addr).await,
            Via::Tls => Conn::open_tls(turn.tls_addr, "127.0.0.1", &turn.certificate).await,
        };
        Client::on(conn, username, password)
    }
}

/// Allocate, then relay both ways with Send/Data indications and with a
/// channel; nothing passes before a permission.
async fn relay_round_trips(via: Via) {
    let turn = Turn::start().await;
    let tcp = via != Via::Udp;
    let (username, password) = credentials();
    let mut client = via.client(&turn, username, password).await;
    let answer = client.allocate().await;
    let m = Message::decode(&answer).unwrap();
    assert_eq!(
        m.class,
        Class::Success,
        "allocation failed: {:?}",
        m.error_code()
    );
    assert!(m.has_integrity());
    let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    assert!(TurnSettings::DEFAULT_RELAY_PORTS.contains(&relayed.port()));
    assert_eq!(m.u32(attr::LIFETIME), Ok(Some(600)));
    let mapped = m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap().unwrap();
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let send = |data: &[u8]| {
        let mut e = Encoder::new(method::SEND, Class::Indication, [0xAB; 12]);
        e.xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
            .add(attr::DATA, data);
        e.finish()
    };

    // No permission: dropped both ways.
    client.conn.send(&send(b"too early")).await;
    assert_eq!(
        peer_recv(&peer, SILENCE_WAIT).await,
        None,
        "relayed without a permission"
    );
    peer.send_to(b"unasked", relayed).await.unwrap();
    assert_eq!(
        client.next(SILENCE_WAIT).await,
        None,
        "peer data without a permission"
    );

    let answer = client
        .request(method::CREATE_PERMISSION, |e| {
            e.xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        })
        .await;
    assert_eq!(code(&answer), None);

    // Send indication out, Data indication back.
    client.conn.send(&send(b"ping")).await;
    let (data, from) = peer_recv(&peer, ANSWER_WAIT)
        .await
        .expect("the peer got nothing");
    assert_eq!((data.as_slice(), from), (&b"ping"[..], relayed));
    peer.send_to(b"pong", relayed).await.unwrap();
    let bytes = client.next(ANSWER_WAIT).await.expect("no Data indication");
    let m = Message::decode(&bytes).unwrap();
    assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
    assert_eq!(m.xor_address(attr::XOR_PEER_ADDRESS), Ok(Some(peer_addr)));
    assert_eq!(m.get(attr::DATA), Some(&b"pong"[..]));

    // A channel: ChannelData both ways (padded over TCP and TLS).
    let answer = client
        .request(method::CHANNEL_BIND, |e| {
            e.add(attr::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0])
                .xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
        })
        .await;
    assert_eq!(code(&answer), None);
    client
        .conn
        .send(&encode_channel_data(0x4000, b"ping 2", tcp))
        .await;
    let (data, from) = peer_recv(&peer, ANSWER_WAIT)
        .await
        .expect("the peer got nothing");
    assert_eq!((data.as_slice(), from), (&b"ping 2"[..], relayed));
    peer.send_to(b"pong 2", relayed).await.unwrap();
    let bytes = client.next(ANSWER_WAIT).await.expect("no ChannelData");
    assert_eq!(decode_channel_data(&bytes), Ok((0x4000, &b"pong 2"[..])));
    if tcp {
        assert_eq!(bytes.len() % 4, 0, "ChannelData over TCP is padded");
    }

    // Another peer IP (127.0.0.2 is loopback too) has no permission.
    // Linux routes all of 127/8 to lo; elsewhere this bind may fail.
    if let Ok(stranger) = UdpSocket::bind("127.0.0.2:0").await {
        stranger.send_to(b"stranger", relayed).await.unwrap();
        assert_eq!(
            client.next(SILENCE_WAIT).await,
            None,
            "a stranger got through"
        );
    }

    // Refresh with lifetime 0 deletes the allocation.
    let answer = client
        .request(method::REFRESH, |e| {
            e.u32(attr::LIFETIME, 0);
        })
        .await;
    assert_eq!(code(&answer), None);
    peer.send_to(b"after", relayed).await.unwrap();
    assert_eq!(client.next(SILENCE_WAIT).await, None);
    turn.stop().await;
}

#[tokio::test]
async fn relays_both_ways_over_udp() {
    relay_round_trips(Via::Udp).await;
}

#[tokio::test]
async fn relays_both_ways_over_tcp() {
    relay_round_trips(Via::Tcp).await;
}

#[tokio::test]
async fn relays_both_ways_over_tls() {
    relay_round_trips(Via::Tls).await;
}

/// One client address may hold a TCP and a TLS connection at once (the
/// kernel can give both the same source port, to two server ports): each
/// is a 5-tuple of its own, with its own allocation.
#[tokio::test]
async fn tcp_and_tls_from_one_source_port_are_two_clients() {
    let turn = Turn::start().await;
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let connect_from = |to: SocketAddr| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(local).unwrap();
        socket.connect(to).await.unwrap()
    };
    let tcp = connect_from(turn.addr).await;
    let tls = connect_from(turn.tls_addr).await;
    let tls = support::turn_client::tls_connect(tls, "127.0.0.1", &turn.certificate)
        .await
        .unwrap();
    let mut relays = Vec::new();
    for conn in [
        Conn::Tcp(tcp, Vec::new()),
        Conn::Tls(Box::new(tls), Vec::new()),
    ] {
        let (username, password) = credentials();
        let mut client = Client::on(conn, username, password);
        let answer = client.allocate().await;
        assert_eq!(code(&answer), None);
        let m = Message::decode(&answer).unwrap();
        assert_eq!(
            m.xor_address(attr::XOR_MAPPED_ADDRESS),
            Ok(Some(local)),
            "both come from the same address"
        );
        relays.push((
            client,
            m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap().unwrap(),
        ));
    }
    assert_ne!(relays[0].1, relays[1].1, "two allocations");
    // Each gets what its own relay receives, on its own connection.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    for (client, _) in &mut relays {
        let answer = client
            .request(method::CREATE_PERMISSION, |e| {
                e.xor_address(attr::XOR_PEER_ADDRESS, peer_addr);
            })
            .await;
        assert_eq!(code(&answer), None);
    }
    for (i, (_, relayed)) in relays.iter().enumerate() {
        peer.send_to(&[i as u8; 8], relayed).await.unwrap();
    }
    for (i, (client, _)) in relays.iter_mut().enumerate() {
        let bytes = client.next(ANSWER_WAIT).await.expect("no Data indication");
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.get(attr::DATA), Some(&[i as u8; 8][..]));
    }
    turn.stop().await;
}

/// A stream from `local` (any 127/8 address) to `to`.
async fn tcp_from(local: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server has closed `stream` (end of stream or an error)
/// within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// TLS connections count against the per-client cap on TCP connections,
/// and a handshake that is silent, or trickles in a byte at a time, is cut
/// off after 5 s (sooner than the 10 s a TCP client gets for its first
/// frame), so such clients cannot hold slots; meanwhile someone else is
/// served over TLS at once.
#[tokio::test]
async fn slow_tls_handshakes_are_cut_off_and_count_against_the_per_client_cap() {
    let limits = TurnLimits {
        tcp_per_client: 4,
        ..TurnLimits::default()
    };
    let turn = Turn::start_with(limits).await;
    let started = std::time::Instant::now();
    // The cap: two silent TCP connections, two stalled TLS handshakes.
    let mut tcp = vec![
        tcp_from("127.0.0.1", turn.addr).await,
        tcp_from("127.0.0.1", turn.addr).await,
    ];
    let silent = tcp_from("127.0.0.1", turn.tls_addr).await;
    let mut trickle = tcp_from("127.0.0.1", turn.tls_addr).await;
    // The start of a ClientHello, a byte every 200 ms.
    let trickling = tokio::spawn(async move {
        for byte in [0x16, 0x03, 0x01, 0x02, 0x00].iter().cycle().take(100) {
            if trickle.write_all(&[*byte]).await.is_err() {
                return Some(trickle);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fifth, TLS or TCP, is closed at once.
    for to in [turn.tls_addr, turn.addr] {
        let mut over = tcp_from("127.0.0.1", to).await;
        assert!(
            closed_within(&mut over, SILENCE_WAIT).await,
            "a connection over the cap was kept"
        );
    }
    assert!(turn.metrics.tcp_refused.load(Ordering::Relaxed) >= 2);
    // Another client is served over TLS meanwhile.
    let other = tcp_from("127.0.0.2", turn.tls_addr).await;
    let other = support::turn_client::tls_connect(other, "127.0.0.1", &turn.certificate)
        .await
        .unwrap();
    let (username, password) = credentials();
    let mut other = Client::on(Conn::Tls(Box::new(other), Vec::new()), username, password);
    assert_eq!(code(&other.allocate().await), None);

    // The stalled handshakes are cut off at 5 s.
    let mut silent = silent;
    assert!(closed_within(&mut silent, Duration::from_secs(8)).await);
    let trickle = tokio::time::timeout(Duration::from_secs(8), trickling)
        .await
        .expect("the trickled handshake was not cut off")
        .unwrap();
    assert!(trickle.is_some(), "the trickled handshake was not cut off");
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&took),
        "{took:?}"
    );
    assert!(turn.metrics.tls_handshake_failed.load(Ordering::Relaxed) >= 2);
    // Their slots are free again: a TLS client from the same address is
    // served while the TCP ones still wait out their first-frame time.
    let again = support::turn_client::tls_connect(
        tcp_from("127.0.0.1", turn.tls_addr).await,
        "127.0.0.1",
        &turn.certificate,
    )
    .await
    .unwrap();
    let (username, password) = credentials();
    let mut again = Client::on(Conn::Tls(Box::new(again), Vec::new()), username, password);
    assert_eq!(code(&again.allocate().await), None);
    for stream in &mut tcp {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }
    turn.stop().await;
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn wrong_or_expired_credentials_get_401() {
    let turn = Turn::start().await;
    let (username, _) = credentials();
    let mut wrong = Client::new(false, turn.addr, username, "not the password".into()).await;
    let answer = wrong.allocate().await;
    assert_eq!(code(&answer), Some(401));
    assert!(!Message::decode(&answer).unwrap().has_integrity());

    // Correctly signed, but expired a minute ago.
    let (username, password) =
        rest_credentials(SECRET, Duration::from_secs(60), unix_now() - 120, "test");
    let mut expired = Client::new(true, turn.addr, username, password).await;
    assert_eq!(code(&expired.allocate().await), Some(401));

    // A different secret.
    let (username, password) =
        rest_credentials(b"another secret", Duration::from_secs(600), unix_now(), "x");
    let mut other = Client::new(false, turn.addr, username, password).await;
    assert_eq!(code(&other.allocate().await), Some(401));
    turn.stop().await;
}

#[tokio::test]
async fn garbage_is_ignored_and_the_server_keeps_serving() {
    let turn = Turn::start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0; 3],
        &[0xFF; 100],
        &[0x40, 0x00, 0xFF, 0xFF],
    ] {
        socket.send_to(junk, turn.addr).await.unwrap();
    }
    let mut buf = [0; 1500];
    let silence = tokio::time::timeout(SILENCE_WAIT, socket.recv_from(&mut buf)).await;
    assert!(silence.is_err(), "garbage got an answer");

    // A TCP stream that is neither STUN nor ChannelData is closed.
    let mut stream = TcpStream::connect(turn.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "HTTP on the TURN port was not cut off"
    );

    let (username, password) = credentials();
    let mut client = Client::new(false, turn.addr, username, password).await;
    assert_eq!(code(&client.allocate().await), None);
    turn.stop().await;
}

/// Everything written to it, shared with the test.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The whole relay scenario, over UDP, TCP and TLS, at TRACE level: the log
/// must say something, and nothing that names a client, a peer, a relay
/// address or a credential.
#[test]
fn relaying_at_trace_level_logs_no_address_or_credential() {
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    // Thread-local: a current-thread runtime runs every task of the
    // server on this thread, and other tests are not captured.
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        relay_round_trips(Via::Udp).await;
        relay_round_trips(Via::Tcp).await;
        relay_round_trips(Via::Tls).await;
    });
    drop(rt);
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("turn: allocation created"),
        "nothing logged: {logs}"
    );
    let secret = std::str::from_utf8(SECRET).unwrap();
    for needle in ["127.0.0.1", ":test", secret] {
        assert!(!logs.contains(needle), "{needle:?} in the log:\n{logs}");
    }
}

/// Whether `tool` is an executable file in a directory of `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether coturn's test tools are there; panics (pointing to
/// scripts/test) if not, unless told to skip.
fn coturn_tools(test: &str) -> bool {
    for tool in ["turnutils_uclient", "turnutils_peer"] {
        if !on_path(tool) {
            if std::env::var("EARSHOT_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
                eprintln!("SKIP {test}: {tool} not installed");
                return false;
            }
            panic!(
                "{tool} (from coturn) is not installed: run scripts/test, which installs it, \
                 or set EARSHOT_SKIP_MISSING_TOOLS=1 to skip this test"
            );
        }
    }
    true
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `turnutils_uclient` against the embedded server with a
/// `turnutils_peer` echoing on 127.0.0.1, and checks that every message
/// made the round trip.
async fn uclient(test: &str, flags: &[&str]) {
    if !coturn_tools(test) {
        return;
    }
    let turn = Turn::start().await;
    let peer_port = free_udp_port();
    let _peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start turnutils_peer");
    // Let the peer bind its port.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let messages = 20;
    // -S: TLS, on the TLS port.
    let port = if flags.contains(&"-S") {
        turn.tls_addr.port()
    } else {
        turn.addr.port()
    };
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "-c", // no RTCP allocation
            "-n",
            &messages.to_string(),
            "-l",
            "120",
            "-p",
            &port.to_string(),
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "127.0.0.1",
        ]
        .map(String::from),
    );
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("turnutils_uclient")
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("turnutils_uclient did not finish within 60s")
    .expect("cannot run turnutils_uclient");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "args {args:?}\nstatus {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    eprintln!("{report}");
    assert!(output.status.success(), "{report}");
    let all = format!("{stdout}{stderr}");
    // Its summary ends with lines like "2: : start_mclient:
    // tot_send_msgs=20, tot_recv_msgs=20" (the per-second progress lines
    // also say "msz=") and "Total lost packets 0 (0.000000%), total send
    // dropped 0 (0.000000%)".
    let number_in = |line: &str, label: &str| -> Option<u64> {
        let at = line.find(label)? + label.len();
        line[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let line_with = |label: &str| -> &str {
        all.lines()
            .find(|l| l.contains(label) && !l.contains("msz="))
            .unwrap_or_else(|| panic!("no {label:?} line; {report}"))
    };
    let lost = line_with("Total lost packets");
    assert_eq!(number_in(lost, "Total lost packets"), Some(0), "{report}");
    assert_eq!(number_in(lost, "total send dropped"), Some(0), "{report}");
    let tally = line_with("tot_send_msgs=");
    assert_eq!(
        number_in(tally, "tot_send_msgs="),
        Some(messages),
        "{report}"
    );
    assert_eq!(
        number_in(tally, "tot_recv_msgs="),
        Some(messages),
        "{report}"
    );
    turn.stop().await;
}

#[tokio::test]
async fn coturn_uclient_relays_through_channels_over_udp() {
    let (user, pass) = credentials();
    uclient(
        "coturn_uclient_relays_through_channels_over_udp",
        &["-u", &user, "-w", &pass],
    )
    .await;
}

#[tokio::test]
async fn coturn_uclient_relays_with_send_indications_over_udp() {
    let (user, pass) = credentials();
    uclient(
        "coturn_uclient_relays_with_send_indications_over_udp",
        &["-s", "-u", &user, "-w", &pass],
    )
    .await;
}

#[tokio::test]
async fn coturn_uclient_relays_over_tcp() {
    let (user, pass) = credentials();
    uclient(
        "coturn_uclient_relays_over_tcp",
        &["-t", "-u", &user, "-w", &pass],
    )
    .await;
}

/// coturn's client over TLS (it does not check the certificate).
#[tokio::test]
async fn coturn_uclient_relays_over_tls() {
    let (user, pass) = credentials();
    uclient(
        "coturn_uclient_relays_over_tls",
        &["-t", "-S", "-u", &user, "-w", &pass],
    )
    .await;
}

/// uclient derives the REST username and password from the secret
/// itself: an independent implementation of the scheme.
#[tokio::test]
async fn coturn_uclient_computes_rest_credentials_we_accept() {
    let secret = std::str::from_utf8(SECRET).unwrap();
    uclient(
        "coturn_uclient_computes_rest_credentials_we_accept",
        &["-t", "-u", "someone", "-W", secret],
    )
    .await;
}
