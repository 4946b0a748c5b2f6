//! The embedded STUN server over real UDP sockets on 127.0.0.1: in process
//! (`earshot_server::stun::serve`), through the real `earshot` binary, and
//! against coturn's `turnutils_stunclient`, an implementation we did not
//! write.
//!
//! Every datagram here goes to 127.0.0.1.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
/// How long to wait for an answer that should come, or to be sure that one
/// that should not come did not.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
const SILENCE_WAIT: Duration = Duration::from_millis(300);

/// A Binding request with no attributes.
fn binding_request(txid: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00];
    m.extend_from_slice(&MAGIC_COOKIE);
    m.extend_from_slice(&txid);
    m
}

/// The attributes of a Binding success response to `txid`, or a panic
/// saying what is wrong with it.
fn success_attributes(resp: &[u8], txid: [u8; 12]) -> Vec<(u16, Vec<u8>)> {
    assert!(
        resp.len() >= 20,
        "answer shorter than a header: {resp:02x?}"
    );
    assert_eq!(resp[..2], [0x01, 0x01], "not a Binding success response");
    assert_eq!(
        usize::from(u16::from_be_bytes([resp[2], resp[3]])),
        resp.len() - 20
    );
    assert_eq!(resp[4..8], MAGIC_COOKIE);
    assert_eq!(resp[8..20], txid, "transaction id not echoed");
    let mut attrs = Vec::new();
    let mut rest = &resp[20..];
    while !rest.is_empty() {
        let t = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        attrs.push((t, rest[4..4 + len].to_vec()));
        rest = &rest[4 + len.next_multiple_of(4)..];
    }
    attrs
}

/// XOR-MAPPED-ADDRESS (IPv4) out of a success response.
fn xor_mapped_address(resp: &[u8], txid: [u8; 12]) -> SocketAddr {
    let attrs = success_attributes(resp, txid);
    let (_, v) = attrs
        .iter()
        .find(|(t, _)| *t == ATTR_XOR_MAPPED_ADDRESS)
        .expect("no XOR-MAPPED-ADDRESS in the answer");
    assert_eq!(v[1], 0x01, "expected an IPv4 address");
    let port = u16::from_be_bytes([v[2] ^ MAGIC_COOKIE[0], v[3] ^ MAGIC_COOKIE[1]]);
    let ip: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ MAGIC_COOKIE[i]);
    let mapped = attrs
        .iter()
        .find(|(t, _)| *t == ATTR_MAPPED_ADDRESS)
        .expect("no MAPPED-ADDRESS for old clients");
    assert_eq!(mapped.1[4..], ip, "MAPPED-ADDRESS disagrees");
    SocketAddr::from((ip, port))
}

/// Sends a Binding request to `server` and returns the mapped address the
/// answer reports.
async fn ask(client: &UdpSocket, server: SocketAddr, txid: [u8; 12]) -> SocketAddr {
    client
        .send_to(&binding_request(txid), server)
        .await
        .unwrap();
    let mut buf = [0; 1500];
    let (n, from) = tokio::time::timeout(ANSWER_WAIT, client.recv_from(&mut buf))
        .await
        .expect("no answer to a Binding request")
        .unwrap();
    assert_eq!(from, server);
    xor_mapped_address(&buf[..n], txid)
}

/// Datagrams the server must drop without a word.
fn garbage() -> Vec<Vec<u8>> {
    let mut wrong_cookie = binding_request([7; 12]);
    wrong_cookie[4] ^= 1;
    let mut wrong_length = binding_request([7; 12]);
    wrong_length[3] = 4;
    vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0; 3],
        vec![0xff; 100],
        wrong_cookie,
        wrong_length,
        binding_request([7; 12])[..19].to_vec(),
        vec![0x00; 1501],
    ]
}

/// Sends each garbage datagram and checks that nothing comes back.
async fn send_garbage(client: &UdpSocket, server: SocketAddr) {
    for datagram in garbage() {
        client.send_to(&datagram, server).await.unwrap();
    }
    let mut buf = [0; 1500];
    let answer = tokio::time::timeout(SILENCE_WAIT, client.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "garbage got an answer: {answer:?}");
}

#[tokio::test]
async fn serve_reports_the_client_address_and_ignores_garbage() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(earshot_server::stun::serve(
        socket,
        Default::default(),
        shutdown.clone(),
    ));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = client.local_addr().unwrap();
    assert_eq!(ask(&client, server, [1; 12]).await, me);

    send_garbage(&client, server).await;
    // Still serving, and to someone else too.
    assert_eq!(ask(&client, server, [2; 12]).await, me);
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        ask(&other, server, [3; 12]).await,
        other.local_addr().unwrap()
    );

    shutdown.cancel();
    tokio::time::timeout(ANSWER_WAIT, task)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
}

#[tokio::test]
async fn serve_survives_answers_to_a_closed_port() {
    // The client goes away before its answer arrives; on Linux the ICMP
    // "port unreachable" that comes back can fail the server's next
    // receive. The loop must shrug that off.
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = socket.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(earshot_server::stun::serve(
        socket,
        Default::default(),
        shutdown.clone(),
    ));
    for i in 0..20 {
        let gone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        gone.send_to(&binding_request([i; 12]), server)
            .await
            .unwrap();
    }
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(
        ask(&client, server, [99; 12]).await,
        client.local_addr().unwrap()
    );
    shutdown.cancel();
    tokio::time::timeout(ANSWER_WAIT, task)
        .await
        .unwrap()
        .unwrap();
}

/// The real binary, killed on drop.
struct Earshot {
    _child: Child,
    stun: SocketAddr,
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> u16 {
    StdUdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `earshot` with STUN on a fresh loopback port and waits for the
/// `http://127.0.0.1:PORT/` line that says it is serving.
async fn start_earshot() -> Earshot {
    let port = free_udp_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_earshot"))
        .args(["--listen", "127.0.0.1:0", "--no-turn", "--stun-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start the earshot binary");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let found = line.contains("http://127.0.0.1:");
            seen.push(line);
            if found {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "earshot did not print its http://127.0.0.1:PORT/ line; stdout so far: {seen:?}"
    );
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Earshot {
        _child: child,
        stun: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

#[tokio::test]
async fn binary_answers_binding_requests_on_stun_listen() {
    let earshot = start_earshot().await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = client.local_addr().unwrap();
    assert_eq!(ask(&client, earshot.stun, [4; 12]).await, me);
    send_garbage(&client, earshot.stun).await;
    assert_eq!(ask(&client, earshot.stun, [5; 12]).await, me);
}

#[tokio::test]
async fn coturn_stunclient_gets_its_mapped_address() {
    let tool = "turnutils_stunclient";
    if !on_path(tool) {
        if std::env::var("EARSHOT_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
            eprintln!("SKIP coturn_stunclient_gets_its_mapped_address: {tool} not installed");
            return;
        }
        panic!(
            "{tool} (from coturn) is not installed: run scripts/test, which installs it, \
             or set EARSHOT_SKIP_MISSING_TOOLS=1 to skip this test"
        );
    }
    let earshot = start_earshot().await;
    // Without -f it sends plain Binding requests and exits once answered; it
    // would retry forever against a server that never answers.
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(tool)
            .args(["-p", &earshot.stun.port().to_string(), "127.0.0.1"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("turnutils_stunclient got no answer within 20s")
    .expect("cannot run turnutils_stunclient");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!(
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(output.status.success(), "{report}");
    // Success looks like "0: : IPv4. UDP reflexive addr: 127.0.0.1:53656".
    assert!(
        stdout.contains("UDP reflexive addr: 127.0.0.1:"),
        "no mapped address in the output; {report}"
    );
    let lower = format!("{stdout}{stderr}").to_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("fail"),
        "{report}"
    );
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
