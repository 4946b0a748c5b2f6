//! `earshot-bench soak`: server memory under churn.
//!
//! One server runs for the whole soak. In each of `batches` batches, fresh
//! worker processes (each from its own 127.0.x.y, as in `match`) open
//! `clients` sockets, say `hello`, search with 1 to 3 interest tags each
//! (the `match` vocabulary), and are matched over three rounds: search, then
//! twice a skip (the impolite side of each call skips, the other is put back
//! in the queue by the server), each round ending when everyone has a new
//! `matched`. Then every client closes its socket and the workers exit.
//! Once the server says it is idle (no connections, nobody waiting, no
//! call, in `/metrics`) and a settle time has passed, its RSS is read.
//!
//! What each connection leaves behind after it is gone shows as growth from
//! batch to batch; the first batch is not counted, since it also fills
//! allocator pools and tables that later batches reuse. The goal is growth
//! under 2 % from the second batch to the last.
//!
//! Every wait has a deadline, and the soak stops after its last batch.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Protocol, Ws, msg_type};
use crate::fleet::{Servers, SourceAddrs, collect, spawn_crowd, wait_ready};
use crate::load::{Done, Fanout, answers, block_on, start_users, stdin_lines};
use crate::matching::{LOAD_FLAGS, interests_of};
use crate::procmem::{self, Memory};

/// Rounds of matching per batch: the search, then the skips.
const ROUNDS: usize = 3;

/// The goal: RSS growth from the second batch to the last, in percent.
pub const GOAL_PERCENT: f64 = 2.0;

/// Flags of `earshot-bench soak`, checked.
pub struct Config {
    pub batches: usize,
    pub clients: usize,
    pub per_worker: usize,
    /// Wait after the server is idle before reading its memory.
    pub settle: Duration,
    /// Most one round (or the connecting, or the leaving) may take.
    pub round_timeout: Duration,
    pub servers: Servers,
    /// An already-running server to use instead of starting one.
    pub target: Option<String>,
    /// With `target`: the process to read memory from.
    pub pid: Option<u32>,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.batches >= 3,
            "--batches must be at least 3 (growth is from the second to the last)"
        );
        ensure!(
            self.clients >= 2 && self.clients.is_multiple_of(2),
            "--clients must be even and at least 2"
        );
        ensure!(
            (1..=15_000).contains(&self.per_worker),
            "--per-worker must be 1 to 15000 (a process may open 20,000 files)"
        );
        match &self.target {
            Some(url) => {
                crate::client::parse_url(url)?;
            }
            None => {
                ensure!(self.pid.is_none(), "--pid goes with --target");
                self.servers.validate(&[Protocol::Earshot])?;
            }
        }
        Ok(())
    }
}

/// One batch, measured once the server was idle again.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The server's memory, when we know its process.
    pub memory: Option<Memory>,
    /// From the first connect to the server idle again.
    pub took: Duration,
    /// Matches the server made in this batch (`earshot_matches_total`).
    pub matches: u64,
}

/// The whole soak.
pub struct Soak {
    pub clients: usize,
    pub batches: Vec<Batch>,
}

impl Soak {
    /// RSS growth from the second batch to the last, in percent.
    pub fn growth_percent(&self) -> Option<f64> {
        let second = self.batches.get(1)?.memory?.rss as f64;
        let last = self.batches.last()?.memory?.rss as f64;
        Some((last - second) / second * 100.0)
    }

    /// RSS change per batch from the second batch on, in bytes: the slope
    /// of a least-squares line, which one batch's allocator luck moves less
    /// than it moves the two ends.
    pub fn trend_per_batch(&self) -> Option<f64> {
        let points: Vec<(f64, f64)> = self
            .batches
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, b)| Some((i as f64, b.memory?.rss as f64)))
            .collect::<Option<_>>()?;
        let n = points.len() as f64;
        if n < 2.0 {
            return None;
        }
        let (mx, my) = points
            .iter()
            .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        Some(sxy / sxx)
    }
}

pub fn run(config: &Config) -> anyhow::Result<Soak> {
    let server = match &config.target {
        None => Some(config.servers.start(Protocol::Earshot, LOAD_FLAGS)?),
        Some(_) => None,
    };
    let url = match (&server, &config.target) {
        (Some(s), _) => s.url.clone(),
        (None, Some(target)) => target.clone(),
        (None, None) => unreachable!("validate: a target or a server"),
    };
    let pid = server.as_ref().map(|s| s.pid()).or(config.pid);
    let http = crate::client::parse_url(&url)?;
    let mut sources = SourceAddrs::default();
    let mut batches = Vec::new();
    let mut matches_before = metrics(http)?.get("earshot_matches_total").copied();
    for b in 0..config.batches {
        let started = Instant::now();
        run_batch(config, &url, &mut sources, b).with_context(|| format!("batch {}", b + 1))?;
        let figures = wait_idle(http, config.round_timeout)
            .with_context(|| format!("batch {}: the server did not go idle", b + 1))?;
        std::thread::sleep(config.settle);
        let memory = pid.map(procmem::read).transpose()?;
        let matches_now = figures.get("earshot_matches_total").copied();
        let matches = match (matches_before, matches_now) {
            (Some(before), Some(now)) => now.saturating_sub(before),
            _ => 0,
        };
        matches_before = matches_now;
        let batch = Batch {
            memory,
            took: started.elapsed(),
            matches,
        };
        eprintln!(
            "soak: batch {}/{}: {} clients, {} matches, {:.1} s, server RSS {} (anonymous {})",
            b + 1,
            config.batches,
            config.clients,
            batch.matches,
            batch.took.as_secs_f64(),
            batch.memory.map_or("-".into(), |m| mib(m.rss)),
            batch.memory.and_then(|m| m.anon).map_or("-".into(), mib),
        );
        batches.push(batch);
    }
    drop(server);
    Ok(Soak {
        clients: config.clients,
        batches,
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One batch: workers connect, three rounds of matching, everyone leaves.
fn run_batch(
    config: &Config,
    url: &str,
    sources: &mut SourceAddrs,
    batch: usize,
) -> anyhow::Result<()> {
    let (events_tx, events) = crate::fleet::events();
    // Each batch's users are new people: new indexes, so new interests too.
    let mut workers = spawn_crowd(
        "soak-worker",
        url,
        config.clients,
        config.per_worker,
        batch * config.clients,
        sources,
        &[],
        &events_tx,
    )?;
    let until = Instant::now() + config.round_timeout;
    wait_ready(&events, &workers.iter().collect::<Vec<_>>(), until)?;
    for round in 0..ROUNDS {
        let command = if round == 0 { "search" } else { "skip" };
        for w in &mut workers {
            w.tell(command)?;
        }
        let lines = collect(
            &events,
            &workers,
            "matched",
            Instant::now() + config.round_timeout,
        )?;
        let matched: usize = lines.values().filter_map(|n| n.parse::<usize>().ok()).sum();
        ensure!(
            matched == config.clients,
            "round {}: {matched} of {} users matched",
            round + 1,
            config.clients
        );
    }
    for w in &mut workers {
        w.tell("leave")?;
    }
    collect(
        &events,
        &workers,
        "left",
        Instant::now() + config.round_timeout,
    )?;
    for w in &mut workers {
        w.stop(Duration::from_secs(5));
    }
    Ok(())
}

/// The server's unlabelled figures from `/metrics`.
fn metrics(addr: SocketAddrV4) -> anyhow::Result<HashMap<String, u64>> {
    let mut tcp = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
        .context("connect for /metrics")?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    tcp.read_to_string(&mut body).context("read /metrics")?;
    Ok(parse_metrics(&body))
}

fn parse_metrics(body: &str) -> HashMap<String, u64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Polls `/metrics` until nobody is connected, waiting or in a call.
fn wait_idle(addr: SocketAddrV4, limit: Duration) -> anyhow::Result<HashMap<String, u64>> {
    let until = Instant::now() + limit;
    loop {
        let figures = metrics(addr)?;
        let busy = ["earshot_connections", "earshot_waiting", "earshot_calls"]
            .iter()
            .map(|name| figures.get(*name).copied())
            .collect::<Option<Vec<u64>>>()
            .context("/metrics lacks connections, waiting or calls")?;
        if busy.iter().all(|&n| n == 0) {
            return Ok(figures);
        }
        if Instant::now() > until {
            bail!("still busy after {limit:?}: connections, waiting, calls = {busy:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn table(soak: &Soak) -> String {
    let mut out = String::from(
        "| batch | clients | matches | time | server RSS | change from batch 2 | anonymous RSS |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let second = soak.batches.get(1).and_then(|b| b.memory).map(|m| m.rss);
    for (i, b) in soak.batches.iter().enumerate() {
        let change = match (b.memory, second) {
            (Some(m), Some(s)) if i >= 1 => {
                format!("{:+.2} %", (m.rss as f64 - s as f64) / s as f64 * 100.0)
            }
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} s | {} | {change} | {} |\n",
            i + 1,
            soak.clients,
            b.matches,
            b.took.as_secs_f64(),
            b.memory.map_or("-".into(), |m| mib(m.rss)),
            b.memory.and_then(|m| m.anon).map_or("-".into(), mib),
        ));
    }
    match (soak.growth_percent(), soak.trend_per_batch()) {
        (Some(g), Some(trend)) => out.push_str(&format!(
            "\nRSS growth from batch 2 to batch {}: {g:+.2} % (goal < {GOAL_PERCENT} %: {}); \
             trend {:+.0} KiB per batch (least squares over batches 2 to {0})\n",
            soak.batches.len(),
            if g < GOAL_PERCENT { "met" } else { "not met" },
            trend / 1024.0,
        )),
        _ => out.push_str("\nRSS not measured (no server process to read)\n"),
    }
    out
}

pub fn to_json(soak: &Soak) -> serde_json::Value {
    serde_json::json!({
        "benchmark": "soak",
        "clients_per_batch": soak.clients,
        "rounds_per_batch": ROUNDS,
        "growth_percent_from_batch_2": soak.growth_percent(),
        "trend_bytes_per_batch": soak.trend_per_batch(),
        "goal_percent": GOAL_PERCENT,
        "batches": soak.batches.iter().map(|b| serde_json::json!({
            "rss_bytes": b.memory.map(|m| m.rss),
            "rss_anon_bytes": b.memory.and_then(|m| m.anon),
            "pss_bytes": b.memory.and_then(|m| m.pss),
            "private_bytes": b.memory.and_then(|m| m.private),
            "matches": b.matches,
            "secs": b.took.as_secs_f64(),
        })).collect::<Vec<_>>(),
    })
}

/// Flags of the hidden `soak-worker`.
pub struct WorkerConfig {
    pub fanout: Fanout,
    pub count: usize,
}

pub fn worker(config: WorkerConfig) -> anyhow::Result<()> {
    block_on(serve(config))
}

/// What the parent asks every user to do; the number counts commands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Wait,
    Search,
    Skip(u32),
    Leave,
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    let fanout = Arc::new(config.fanout);
    let first = fanout.first;
    let (step_tx, mut done) =
        start_users(&fanout, config.count, Step::Wait, |i, ws, steps, done| {
            let search = serde_json::json!({
                "type": "search",
                "interests": interests_of(first + i),
            })
            .to_string();
            user(ws, search, steps, done)
        })
        .await?;

    let mut commands = stdin_lines();
    let mut skips = 0;
    while let Some(command) = commands.recv().await {
        let (step, answer) = match command.as_str() {
            "search" => (Step::Search, "matched"),
            "skip" => {
                skips += 1;
                (Step::Skip(skips), "matched")
            }
            "leave" => (Step::Leave, "left"),
            other => bail!("unknown command `{other}`"),
        };
        step_tx.send_replace(step);
        answers(&mut done, config.count).await?;
        crate::worker::say(&format!("{answer} {}", config.count));
    }
    Ok(())
}

/// One user. It reads its socket all along (a partner may skip it, and the
/// server match it again, before this worker hears of the round), counting
/// `matched` messages: round `k` is done for it at its `k`-th.
async fn user(mut ws: Ws, search: String, mut step: watch::Receiver<Step>, done: Done<()>) {
    let mut matched = 0u32;
    // Whether the current call's `matched` said we are the polite side.
    let mut polite = true;
    // The `matched` count that ends the current round, once one is asked for.
    let mut target: Option<u32> = None;
    loop {
        if let Some(t) = target
            && matched >= t
        {
            target = None;
            if done.send(Ok(())).is_err() {
                return;
            }
        }
        let result = tokio::select! {
            changed = step.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = *step.borrow_and_update();
                match current {
                    Step::Wait => Ok(()),
                    Step::Search => {
                        target = Some(1);
                        send(&mut ws, &search).await
                    }
                    Step::Skip(n) => {
                        target = Some(n + 1);
                        // One side of each call skips; the server puts the
                        // other back in the queue.
                        if polite { Ok(()) } else { send(&mut ws, r#"{"type":"skip"}"#).await }
                    }
                    Step::Leave => {
                        let _ = tokio::time::timeout(Duration::from_secs(3), ws.close(None)).await;
                        let _ = done.send(Ok(()));
                        // Reads until the server's close frame, then drops.
                        let drain = async { while ws.next().await.is_some_and(|m| m.is_ok()) {} };
                        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
                        return;
                    }
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => match msg_type(text.as_str()) {
                    Some("matched") => {
                        matched += 1;
                        polite = text.as_str().contains(r#""polite":true"#);
                        Ok(())
                    }
                    Some("error") => Err(format!("server error: {}", text.as_str())),
                    _ => Ok(()),
                },
                Some(Ok(Message::Close(frame))) => Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(format!("read: {e}")),
                None => Err("closed".into()),
            },
        };
        if let Err(e) = result {
            let _ = done.send(Err(e));
            return;
        }
    }
}

async fn send(ws: &mut Ws, text: &str) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rss: u64) -> Batch {
        Batch {
            memory: Some(Memory {
                rss,
                anon: None,
                pss: None,
                private: None,
            }),
            took: Duration::from_secs(1),
            matches: 15_000,
        }
    }

    #[test]
    fn growth_counts_from_the_second_batch() {
        let soak = Soak {
            clients: 10,
            batches: vec![batch(50), batch(100), batch(150), batch(101)],
        };
        assert_eq!(soak.growth_percent(), Some(1.0));
        // 100, 150, 101 at batches 2, 3, 4: half a byte a batch.
        assert_eq!(soak.trend_per_batch(), Some(0.5));
        let t = table(&soak);
        assert!(
            t.contains("+1.00 % (goal < 2 %: met); trend +0 KiB per batch"),
            "{t}"
        );
        assert!(
            t.contains("| 3 | 10 | 15000 | 1.0 s | 0.00 MiB | +50.00 % |"),
            "{t}"
        );
    }

    #[test]
    fn metrics_are_read_without_labels() {
        let body = "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n\
            # HELP earshot_connections Open.\n# TYPE earshot_connections gauge\n\
            earshot_connections 3\nearshot_errors_total{code=\"bad_json\"} 1\n\
            earshot_matches_total 12\n";
        let m = parse_metrics(body);
        assert_eq!(m.get("earshot_connections"), Some(&3));
        assert_eq!(m.get("earshot_matches_total"), Some(&12));
        assert!(!m.keys().any(|k| k.contains("errors")));
    }
}
