//! Privacy invariant 1 (DESIGN.md): no client address, SDP, candidate or
//! user text reaches a log line, at any level.
//!
//! All of this test binary's TRACE output, from every crate (hyper, axum and
//! tungstenite included), is captured while a whole session runs: clients
//! from distinctive loopback addresses connect, search with interests, get
//! matched, exchange an offer and candidates naming documentation addresses,
//! send garbage, skip, end, and ask the STUN server for their address.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const CLIENT_A: &str = "127.0.0.7";
const CLIENT_B: &str = "127.0.0.8";
const STUN_CLIENT: &str = "127.0.0.9";
const SDP_ADDR: &str = "192.0.2.77";
const CANDIDATE_ADDR: &str = "198.51.100.9";
const INTEREST: &str = "zanzibar-kites";

type Ws = WebSocketStream<TcpStream>;

async fn connect_from(source: &str, server: SocketAddr) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(server).await.unwrap();
    let (ws, _) = client_async(format!("ws://{server}/ws"), tcp)
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

async fn recv_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

#[test]
fn a_whole_session_at_trace_level_logs_no_address_sdp_or_user_text() {
    let capture = Capture::default();
    let sink = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let settings = earshot_server::Settings::for_tests("127.0.0.1:0".parse().unwrap());
        let running = earshot_server::start(settings).await.unwrap();
        let addr = running.http_addr;

        let mut a = connect_from(CLIENT_A, addr).await;
        let mut b = connect_from(CLIENT_B, addr).await;
        for ws in [&mut a, &mut b] {
            send(ws, json!({"type": "hello", "version": 1})).await;
            recv_type(ws, "welcome").await;
            send(ws, json!({"type": "search", "interests": [INTEREST]})).await;
        }
        let call = recv_type(&mut b, "matched").await["call"].clone();
        recv_type(&mut a, "matched").await;
        let sdp = format!("v=0\r\nc=IN IP4 {SDP_ADDR}\r\na=candidate:1 1 udp 1 {SDP_ADDR} 4000 typ host\r\n");
        send(&mut b, json!({"type": "signal", "call": call, "description": {"type": "offer", "sdp": sdp}})).await;
        recv_type(&mut a, "signal").await;
        let cand = format!("candidate:2 1 udp 1 {CANDIDATE_ADDR} 5000 typ srflx");
        send(&mut a, json!({"type": "signal", "call": call, "candidate": {"candidate": cand, "sdpMid": "0"}})).await;
        recv_type(&mut b, "signal").await;
        // Garbage that quotes user-ish text back must not be logged either.
        a.send(Message::text(format!("{{\"type\":\"{INTEREST}\"}}"))).await.unwrap();
        recv_type(&mut a, "error").await;
        send(&mut a, json!({"type": "skip"})).await;
        recv_type(&mut b, "call_ended").await;
        send(&mut b, json!({"type": "end"})).await;
        recv_type(&mut b, "idle").await;

        // The STUN server learns an address by design; it must not log it.
        let stun = UdpSocket::bind(format!("{STUN_CLIENT}:0")).await.unwrap();
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(&[7; 12]);
        stun.send_to(&req, running.stun_addr.unwrap()).await.unwrap();
        let mut buf = [0u8; 1500];
        tokio::time::timeout(Duration::from_secs(5), stun.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        stun.send_to(b"garbage", running.stun_addr.unwrap()).await.unwrap();

        drop(a);
        drop(b);
        tokio::time::sleep(Duration::from_millis(200)).await;
        running.shutdown().await;
    });

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("matched") && logs.contains("TRACE"),
        "the capture must see the session, or this test proves nothing:\n{logs}"
    );
    for secret in [
        CLIENT_A,
        CLIENT_B,
        STUN_CLIENT,
        SDP_ADDR,
        CANDIDATE_ADDR,
        INTEREST,
        "v=0",
        "candidate:",
    ] {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("a log line contains {secret:?}: {line}");
        }
    }
}

/// Nothing is written to disk: the binary runs a whole session in an empty
/// working directory with an empty TMPDIR, and both are still empty after it
/// has shut down.
#[test]
fn a_whole_session_writes_no_files() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let base = std::env::temp_dir().join(format!("earshot-nodisk-{}", std::process::id()));
    let (cwd, tmp) = (base.join("cwd"), base.join("tmp"));
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--stun-listen",
            "127.0.0.1:0",
            "--turn-listen",
            "127.0.0.1:0",
            "--log",
            "trace",
        ])
        .current_dir(&cwd)
        .env("TMPDIR", &tmp)
        .env("HOME", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the first line names the URL");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut a = connect_from("127.0.0.7", addr).await;
        let mut b = connect_from("127.0.0.8", addr).await;
        for ws in [&mut a, &mut b] {
            send(ws, json!({"type": "hello", "version": 1})).await;
            recv_type(ws, "welcome").await;
            send(ws, json!({"type": "search", "interests": [INTEREST]})).await;
        }
        let call = recv_type(&mut b, "matched").await["call"].clone();
        send(
            &mut b,
            json!({"type": "signal", "call": call, "description": {"type": "offer", "sdp": "v=0"}}),
        )
        .await;
        recv_type(&mut a, "signal").await;
        send(&mut a, json!({"type": "report", "reason": "spam"})).await;
        recv_type(&mut a, "idle").await;
        send(&mut a, json!({"type": "room_join", "room": "disk-check"})).await;
        recv_type(&mut a, "room_joined").await;
        send(
            &mut a,
            json!({"type": "room_lock", "verifier": "A".repeat(43)}),
        )
        .await;
        recv_type(&mut a, "room_lock_state").await;
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown: {status:?}");
    for dir in [&cwd, &tmp] {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(left.is_empty(), "{} holds {left:?}", dir.display());
    }
    std::fs::remove_dir_all(&base).unwrap();
}
