//! Figures for several nodes on one Redis: matches per second and signal
//! relay latency, with 1, 2 or 3 `earshot` nodes (or one node in memory).
//! A benchmark program that prints figures, not a test.
//!
//! ```text
//! cargo build --release -p earshot-server --bin earshot --example backplane
//! target/release/examples/backplane --nodes 2          # through Redis
//! target/release/examples/backplane --nodes 1 --memory # one node, no Redis
//! ```
//!
//! It starts its own `redis-server` (`--save "" --appendonly no`) and nodes
//! (`target/release/earshot`, beside this program's directory), all on
//! 127.0.0.1 ports, and kills them at the end. Clients come from distinct
//! 127.1.x.y addresses, so per-client limits do not stand in for the
//! server's speed; every loop is bounded in time and count.
//!
//! - **Matches per second**: `--clients` clients, spread over the nodes,
//!   each searches; whenever matched, the joining side ends the call and
//!   searches again (its partner is queued again by the server), each
//!   client within its search allowance (30 searches). Pairs made, divided
//!   by the time from the first search to the last pair (at most
//!   `--seconds`).
//! - **Relay latency**: `--pairs` pairs, each waiter on node i and joiner on
//!   node i+1 (so with two or more nodes every pair spans two nodes), send
//!   candidates both ways at 15 a second (under the 20/s message limit) for
//!   `--seconds`; the time from send to receipt, in this one process.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

const STEP: Duration = Duration::from_secs(10);

struct Args {
    nodes: usize,
    memory: bool,
    clients: usize,
    pairs: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 1,
        memory: false,
        clients: 2000,
        pairs: 20,
        seconds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = num().clamp(1, 8),
            "--clients" => a.clients = (num() / 2 * 2).clamp(2, 4000),
            "--pairs" => a.pairs = num().clamp(1, 500),
            "--seconds" => a.seconds = num().clamp(1, 60) as u64,
            "--memory" => a.memory = true,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.memory || a.nodes == 1, "--memory is one node");
    a
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn start_redis() -> (Proc, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + STEP;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), url)
}

/// Starts a node and reads its address from the first line it prints.
fn start_node(redis: Option<&str>) -> (Proc, SocketAddr) {
    use std::io::BufRead;
    let exe = std::env::current_exe().expect("own path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/examples")
        .join("earshot");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--no-stun",
        "--no-turn",
        "--pow",
        "off",
    ])
    .args(["--log", "warn", "--max-connections", "20000"])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(url) = redis {
        cmd.args(["--redis", url]);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the node prints its URL");
    let port: u16 = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    (Proc(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The `i`-th client's own address, 127.1.x.y.
fn source(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250 + 1) as u8], 0))
}

async fn client(i: usize, node: SocketAddr) -> Ws {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.bind(source(i)).expect("127.1.x.y is loopback");
    let tcp = socket.connect(node).await.expect("connect");
    let (mut ws, _) = client_async(format!("ws://{node}/ws"), tcp)
        .await
        .expect("upgrade");
    send(&mut ws, json!({"type": "hello", "version": 1})).await;
    let v = recv(&mut ws).await.expect("welcome");
    assert_eq!(v["type"], "welcome", "{v}");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    let _ = ws.send(Message::text(v.to_string())).await;
}

async fn recv(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn matches_per_second(nodes: &[SocketAddr], clients: usize, seconds: u64) -> f64 {
    let mut conns = Vec::new();
    for i in 0..clients {
        conns.push(client(i, nodes[i % nodes.len()]).await);
    }
    let pairs = Arc::new(AtomicU64::new(0));
    // When the last pair was made, in µs from the start: the clients run
    // out of search allowance before `seconds` unless the server is slow.
    let last = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut ws in conns {
        let (pairs, last) = (pairs.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            send(&mut ws, json!({"type": "search"})).await;
            let mut searches = 1;
            while Instant::now() < end {
                let left = end.saturating_duration_since(Instant::now());
                let Ok(Some(v)) = tokio::time::timeout(left, recv(&mut ws)).await else {
                    break;
                };
                match v["type"].as_str() {
                    Some("matched") if v["polite"] == false => {
                        pairs.fetch_add(1, Ordering::Relaxed);
                        last.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                        send(&mut ws, json!({"type": "end"})).await;
                    }
                    // Ended by us: search again while the allowance lasts.
                    Some("idle") if searches < 30 => {
                        searches += 1;
                        send(&mut ws, json!({"type": "search"})).await;
                    }
                    _ => {}
                }
            }
            ws
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.expect("client task"));
    }
    drop(done);
    let elapsed = last.load(Ordering::Relaxed).max(1) as f64 / 1e6;
    pairs.load(Ordering::Relaxed) as f64 / elapsed
}

async fn relay_latency(nodes: &[SocketAddr], pairs: usize, seconds: u64) -> Vec<f64> {
    let base = 5000;
    let mut matched = Vec::new();
    for p in 0..pairs {
        let mut a = client(base + 2 * p, nodes[p % nodes.len()]).await;
        let mut b = client(base + 2 * p + 1, nodes[(p + 1) % nodes.len()]).await;
        send(&mut a, json!({"type": "search"})).await;
        // Let the waiter reach the queue first, so the pair spans two nodes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&mut b, json!({"type": "search"})).await;
        let mut call = 0;
        for ws in [&mut a, &mut b] {
            loop {
                let v = recv(ws).await.expect("matched");
                if v["type"] == "matched" {
                    call = v["call"].as_u64().expect("a call id");
                    break;
                }
            }
        }
        matched.push((a, b, call));
    }
    let epoch = Instant::now();
    let end = epoch + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (a, b, call) in matched {
        {
            let (mut tx, mut rx) = (a, b);
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(67));
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    tick.tick().await;
                    let sent = epoch.elapsed().as_micros() as u64;
                    let cand = format!("candidate:1 1 udp 1 127.0.0.1 {} typ host", sent);
                    send(
                        &mut tx,
                        json!({"type": "signal", "call": call,
                        "candidate": {"candidate": cand}}),
                    )
                    .await;
                    let Some(v) = recv(&mut rx).await else { break };
                    let got = epoch.elapsed().as_micros() as u64;
                    if let Some(t) = v["candidate"]["candidate"]
                        .as_str()
                        .and_then(|c| c.split(' ').nth(5))
                        .and_then(|t| t.parse::<u64>().ok())
                    {
                        samples.push((got - t) as f64 / 1000.0);
                    }
                    std::mem::swap(&mut tx, &mut rx);
                }
                samples
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("pair task"));
    }
    all.sort_by(f64::total_cmp);
    all
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let redis = (!a.memory).then(start_redis);
    let mut procs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..a.nodes {
        let (p, addr) = start_node(redis.as_ref().map(|(_, url)| url.as_str()));
        procs.push(p);
        nodes.push(addr);
    }
    let mode = if a.memory {
        "1 node, in memory".to_string()
    } else {
        format!("{} node(s), Redis", a.nodes)
    };
    let mps = matches_per_second(&nodes, a.clients, a.seconds).await;
    println!(
        "{mode}: {mps:.0} matches/s ({} clients, {} s)",
        a.clients, a.seconds
    );
    let lat = relay_latency(&nodes, a.pairs, a.seconds).await;
    println!(
        "{mode}: signal relay latency median {:.2} ms, p99 {:.2} ms ({} samples, {} pairs)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len(),
        a.pairs
    );
    drop(procs);
    drop(redis);
}
