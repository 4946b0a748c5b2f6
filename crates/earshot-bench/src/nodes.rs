//! `earshot-bench nodes`: several nodes, and what each match costs.
//!
//! In one run, on one machine: one node in memory; 1, 2, 3... nodes on one
//! `redis-server`; the same on a Redis Cluster of `--cluster` primaries;
//! and one node on one `redis-server` behind a proxy that delays every
//! byte by `--delay-ms` each way (a network round trip between the nodes
//! and Redis, in user space: `netem` is not available everywhere). For
//! each setup:
//!
//! - **Matches per second.** `--clients` clients (from 127.1.x.y, spread
//!   round-robin over the nodes) search; whenever one is matched as the
//!   joining side it ends the call and searches again, and its partner is
//!   queued again by its node: every match is one search, one join again,
//!   one match and one end, in steady churn. Matches counted over
//!   `--seconds` after `--warmup`.
//! - **Node CPU per match**: the nodes' CPU time (all threads,
//!   `/proc/PID/task/*/schedstat`) over the window, divided by the
//!   matches.
//! - **Redis CPU per match**: `INFO cpu` (user + system) summed over the
//!   servers, over the same window. For a cluster, also the busiest
//!   primary's share of one core, and the capacity that leaves:
//!   matches/s divided by that share (what the busiest primary would
//!   allow with a core of its own, whatever else shares this machine's).
//! - **Relay.** `--pairs` pairs, each a waiter on node i and a joiner on
//!   node i+1 (so with two or more nodes every pair spans two nodes), send
//!   candidates to each other in turn at `--rate` messages per second in
//!   all, for `--seconds`; the time from send to receipt in this process
//!   (p50, p99), and Redis CPU per relayed signal over that window.
//!
//! The clients run in this process on one thread; its own CPU time is
//! printed too, since it shares the machine's cores with the nodes and
//! Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Protocol, Ws, msg_type};
use crate::fleet::Server;
use crate::hist::Histogram;
use crate::procmem::cpu_ns;
use crate::redisproc::{DelayProxy, Redis};

#[derive(Debug, Clone)]
pub struct Config {
    pub nodes: Vec<usize>,
    /// Primaries of the cluster setups (0: none).
    pub cluster: usize,
    pub clients: usize,
    pub warmup: Duration,
    pub window: Duration,
    pub pairs: usize,
    /// Relay messages per second, all pairs together.
    pub rate: f64,
    /// Each way, for the delayed setup (zero: none).
    pub delay: Duration,
    pub server: std::path::PathBuf,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.nodes.is_empty(), "--nodes needs at least one count");
        ensure!(
            self.nodes.iter().all(|&n| (1..=8).contains(&n)),
            "--nodes: 1 to 8 each"
        );
        ensure!(
            self.cluster == 0 || self.cluster >= 3,
            "--cluster: 0, or 3 primaries or more"
        );
        ensure!(
            (2..=10_000).contains(&self.clients),
            "--clients: 2 to 10000"
        );
        ensure!((1..=500).contains(&self.pairs), "--pairs: 1 to 500");
        ensure!(self.rate > 0.0, "--rate must be positive");
        ensure!(
            self.server.exists(),
            "no earshot binary at {} (build it: cargo build --release -p earshot-server)",
            self.server.display()
        );
        Ok(())
    }
}

/// Where the nodes keep their shared state.
#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    Memory,
    Redis,
    Cluster(usize),
    /// One `redis-server` behind a delaying proxy (each way).
    Delayed(Duration),
}

impl Store {
    fn label(&self) -> String {
        match self {
            Store::Memory => "in memory".into(),
            Store::Redis => "one Redis".into(),
            Store::Cluster(n) => format!("cluster ({n} primaries)"),
            Store::Delayed(d) => format!("one Redis, +{} ms each way", d.as_secs_f64() * 1000.0),
        }
    }
}

/// What one setup measured.
#[derive(Debug, Clone)]
pub struct Figures {
    pub store: Store,
    pub nodes: usize,
    pub matches_per_sec: f64,
    pub node_cpu_us_per_match: f64,
    pub redis_cpu_us_per_match: Option<f64>,
    /// The busiest Redis server's share of one core during the churn.
    pub busiest_share: Option<f64>,
    /// Matches/s over that share: what the busiest server allows on a core
    /// of its own.
    pub capacity: Option<f64>,
    /// Keys on each Redis server at the end (a cluster spreads them).
    pub keys: Vec<u64>,
    pub client_cpu_us_per_match: f64,
    pub relay_p50_ms: f64,
    pub relay_p99_ms: f64,
    pub signals: u64,
    pub redis_cpu_us_per_signal: Option<f64>,
}

/// The setups of one run, in order.
pub fn setups(config: &Config) -> Vec<(Store, usize)> {
    let mut out = vec![(Store::Memory, 1)];
    out.extend(config.nodes.iter().map(|&n| (Store::Redis, n)));
    if config.cluster > 0 {
        out.extend(
            config
                .nodes
                .iter()
                .map(|&n| (Store::Cluster(config.cluster), n)),
        );
    }
    if !config.delay.is_zero() {
        out.push((Store::Delayed(config.delay), 1));
    }
    out
}

pub fn run(config: &Config) -> anyhow::Result<Vec<Figures>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut out = Vec::new();
    for (i, (store, nodes)) in setups(config).into_iter().enumerate() {
        eprintln!("[nodes] {} node(s), {}", nodes, store.label());
        let figures = match runtime.block_on(measure(config, store.clone(), nodes, i as u8)) {
            Ok(f) => f,
            Err(e) => {
                // A machine too busy for the nodes to reach Redis in time:
                // say so and go on with the next setup.
                eprintln!("[nodes]   failed: {e:#}");
                continue;
            }
        };
        eprintln!(
            "[nodes]   {:.0} matches/s, node {:.0} µs/match, Redis {} µs/match, relay p99 {:.2} ms",
            figures.matches_per_sec,
            figures.node_cpu_us_per_match,
            figures
                .redis_cpu_us_per_match
                .map_or("-".into(), |v| format!("{v:.1}")),
            figures.relay_p99_ms
        );
        out.push(figures);
    }
    Ok(out)
}

/// Flags every node gets: the per-client limits exist against one address
/// holding thousands of sockets, which is what a benchmark does.
const NODE_FLAGS: &[&str] = &["--bench-no-rate-limits"];

async fn measure(config: &Config, store: Store, n: usize, block: u8) -> anyhow::Result<Figures> {
    let redis = match store {
        Store::Memory => None,
        Store::Redis | Store::Delayed(_) => Some(Redis::standalone()?),
        Store::Cluster(p) => Some(Redis::cluster(p)?),
    };
    let proxy = match (&store, &redis) {
        (Store::Delayed(d), Some(r)) => Some(DelayProxy::start(r.ports[0], *d)?),
        _ => None,
    };
    let url = match (&proxy, &redis) {
        (Some(p), _) => Some(p.url()),
        (None, Some(r)) => Some(r.url()),
        (None, None) => None,
    };
    let mut servers = Vec::new();
    for _ in 0..n {
        let mut flags: Vec<&str> = NODE_FLAGS.to_vec();
        if let Some(url) = &url {
            flags.extend(["--redis", url.as_str()]);
        }
        servers.push(Server::earshot(&config.server, &flags)?);
    }
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let cpu = || -> anyhow::Result<u64> { pids.iter().map(|&p| cpu_ns(p)).sum() };
    let redis_cpu =
        || -> anyhow::Result<Vec<f64>> { redis.as_ref().map_or(Ok(Vec::new()), |r| r.cpu()) };
    let me = std::process::id();

    // Churn.
    let matches = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..config.clients {
        let ws = open(&urls[i % n], block, i).await?;
        tasks.push(tokio::spawn(churn(ws, matches.clone(), stop.clone())));
    }
    tokio::time::sleep(config.warmup).await;
    if let Some(r) = &redis {
        r.reset_stats()?;
    }
    let (m0, c0, r0, s0, t0) = (
        matches.load(Ordering::Relaxed),
        cpu()?,
        redis_cpu()?,
        cpu_ns(me)?,
        Instant::now(),
    );
    tokio::time::sleep(config.window).await;
    let (m1, c1, r1, s1, wall) = (
        matches.load(Ordering::Relaxed),
        cpu()?,
        redis_cpu()?,
        cpu_ns(me)?,
        t0.elapsed().as_secs_f64(),
    );
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let made = (m1 - m0).max(1) as f64;
    if let Some(r) = &redis {
        // Where Redis's time went, per match: for the profile in
        // BENCHMARKS.md.
        let stats = r.command_stats()?;
        let busy: f64 = stats.iter().map(|s| s.2).sum();
        eprintln!(
            "[nodes]   Redis command time {:.1} µs/match of {:.1} µs CPU/match:",
            busy / made,
            r1.iter().zip(&r0).map(|(a, b)| a - b).sum::<f64>() * 1e6 / made
        );
        for (name, calls, usec) in stats.iter().take(8) {
            eprintln!(
                "[nodes]     {name:<12} {:>5.2} calls/match, {:>5.1} µs/call, {:>5.1} µs/match",
                *calls as f64 / made,
                usec / (*calls).max(1) as f64,
                usec / made
            );
        }
    }
    let redis_used: Vec<f64> = r1.iter().zip(&r0).map(|(a, b)| a - b).collect();
    let busiest = redis_used
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let matches_per_sec = made / wall;
    let busiest_share = busiest.map(|b| b / wall);
    let keys = redis.as_ref().map_or(Ok(Vec::new()), |r| r.keys())?;

    // Relay.
    let (hist, signals, relay_redis) = relay(config, &urls, block, &redis_cpu).await?;
    for s in &mut servers {
        s.check_alive()?;
    }
    Ok(Figures {
        store,
        nodes: n,
        matches_per_sec,
        node_cpu_us_per_match: (c1 - c0) as f64 / 1000.0 / made,
        redis_cpu_us_per_match: redis
            .as_ref()
            .map(|_| redis_used.iter().sum::<f64>() * 1e6 / made),
        busiest_share,
        capacity: busiest_share.map(|s| matches_per_sec / s.max(1e-9)),
        keys,
        client_cpu_us_per_match: (s1 - s0) as f64 / 1000.0 / made,
        relay_p50_ms: hist.quantile(0.5).unwrap_or(f64::NAN) / 1000.0,
        relay_p99_ms: hist.quantile(0.99).unwrap_or(f64::NAN) / 1000.0,
        signals,
        redis_cpu_us_per_signal: relay_redis.map(|r| r * 1e6 / signals.max(1) as f64),
    })
}

/// Client `i` of setup `block`, from its own 127.1.x.y.
async fn open(url: &str, block: u8, i: usize) -> anyhow::Result<Ws> {
    let source = std::net::Ipv4Addr::new(127, 1 + block, (i / 250) as u8, (i % 250 + 1) as u8);
    client::open(Protocol::Earshot, url, source, Duration::from_secs(10)).await
}

const SEARCH: &str = r#"{"type":"search"}"#;
const END: &str = r#"{"type":"end"}"#;

/// One client of the churn: searches; matched as the joiner, it ends the
/// call and searches again (its partner is queued again by its node).
async fn churn(mut ws: Ws, matches: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    if ws.send(Message::text(SEARCH)).await.is_err() {
        return;
    }
    loop {
        let msg = tokio::select! {
            _ = stop.changed() => break,
            m = ws.next() => m,
        };
        let Some(Ok(Message::Text(text))) = msg else {
            if matches!(msg, Some(Ok(_))) {
                continue;
            }
            break;
        };
        let reply = match msg_type(text.as_str()) {
            Some("matched") if text.as_str().contains(r#""polite":false"#) => {
                matches.fetch_add(1, Ordering::Relaxed);
                END
            }
            Some("idle") => SEARCH,
            _ => continue,
        };
        if ws.send(Message::text(reply)).await.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
}

/// Pairs across nodes exchanging candidates: latency, signals relayed, and
/// the Redis CPU seconds they took.
async fn relay(
    config: &Config,
    urls: &[String],
    block: u8,
    redis_cpu: &impl Fn() -> anyhow::Result<Vec<f64>>,
) -> anyhow::Result<(Histogram, u64, Option<f64>)> {
    let n = urls.len();
    let mut pairs = Vec::new();
    for p in 0..config.pairs {
        let mut a = open(&urls[p % n], block, 5000 + 2 * p).await?;
        let mut b = open(&urls[(p + 1) % n], block, 5001 + 2 * p).await?;
        a.send(Message::text(SEARCH)).await?;
        // The waiter first, so the pair spans two nodes.
        tokio::time::sleep(Duration::from_millis(30)).await;
        b.send(Message::text(SEARCH)).await?;
        let mut call = 0;
        for ws in [&mut a, &mut b] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(left, ws.next()).await
                else {
                    bail!("a relay pair was never matched");
                };
                if msg_type(t.as_str()) == Some("matched") {
                    let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                    call = v["call"].as_u64().context("a call id")?;
                    break;
                }
            }
        }
        pairs.push((a, b, call));
    }
    let epoch = Instant::now();
    let period = Duration::from_secs_f64(config.pairs as f64 / config.rate);
    let end = epoch + config.window;
    let before = redis_cpu()?;
    let mut tasks = Vec::new();
    for (a, b, call) in pairs {
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = (a, b);
            let mut hist = Histogram::default();
            let mut tick = tokio::time::interval(period);
            let mut sent = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let t = epoch.elapsed().as_micros() as u64;
                let msg = format!(
                    r#"{{"type":"signal","call":{call},"candidate":{{"candidate":"candidate:1 1 udp 1 127.0.0.1 {t} typ host"}}}}"#
                );
                if tx.send(Message::text(msg)).await.is_err() {
                    break;
                }
                sent += 1;
                let got = loop {
                    match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) if msg_type(text.as_str()) == Some("signal") => {
                            break Some(text);
                        }
                        Ok(Some(Ok(_))) => continue,
                        _ => break None,
                    }
                };
                let Some(text) = got else { break };
                let now = epoch.elapsed().as_micros() as u64;
                if let Some(t) = text
                    .as_str()
                    .split("127.0.0.1 ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    hist.record(now.saturating_sub(t));
                }
                std::mem::swap(&mut tx, &mut rx);
            }
            (hist, sent)
        }));
    }
    let mut all = Histogram::default();
    let mut signals = 0;
    for t in tasks {
        let (h, sent) = t.await?;
        all.merge(&h);
        signals += sent;
    }
    let after = redis_cpu()?;
    let used = (!before.is_empty()).then(|| after.iter().sum::<f64>() - before.iter().sum::<f64>());
    Ok((all, signals, used))
}

/// The Markdown table.
pub fn table(results: &[Figures]) -> String {
    let mut out = String::from(
        "| setup | nodes | matches/s | node CPU µs/match | Redis CPU µs/match | busiest Redis share | capacity (matches/s) | relay p50 | relay p99 | Redis CPU µs/signal | keys per server |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    for f in results {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.2} ms | {:.2} ms | {} | {} |\n",
            f.store.label(),
            f.nodes,
            f.matches_per_sec,
            f.node_cpu_us_per_match,
            opt(f.redis_cpu_us_per_match, 1),
            f.busiest_share
                .map_or("-".to_owned(), |s| format!("{:.0} %", s * 100.0)),
            opt(f.capacity, 0),
            f.relay_p50_ms,
            f.relay_p99_ms,
            opt(f.redis_cpu_us_per_signal, 1),
            f.keys
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" / "),
        ));
    }
    out
}

pub fn to_json(config: &Config, results: &[Figures]) -> serde_json::Value {
    serde_json::json!({
        "clients": config.clients,
        "seconds": config.window.as_secs_f64(),
        "pairs": config.pairs,
        "rate": config.rate,
        "results": results.iter().map(|f| serde_json::json!({
            "setup": f.store.label(),
            "nodes": f.nodes,
            "matches_per_sec": f.matches_per_sec,
            "node_cpu_us_per_match": f.node_cpu_us_per_match,
            "redis_cpu_us_per_match": f.redis_cpu_us_per_match,
            "busiest_redis_share": f.busiest_share,
            "capacity_matches_per_sec": f.capacity,
            "client_cpu_us_per_match": f.client_cpu_us_per_match,
            "relay_p50_ms": f.relay_p50_ms,
            "relay_p99_ms": f.relay_p99_ms,
            "signals": f.signals,
            "redis_cpu_us_per_signal": f.redis_cpu_us_per_signal,
            "keys_per_server": f.keys,
        })).collect::<Vec<_>>(),
    })
}
