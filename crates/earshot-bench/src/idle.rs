//! `earshot-bench idle`: how much server memory one idle signalling
//! WebSocket costs.
//!
//! Each run starts a fresh `earshot` process on 127.0.0.1 port 0, opens and
//! closes a few warm-up connections (so the runtime's one-time allocations
//! are paid before the baseline), reads the server's memory, opens N
//! connections that each complete `hello`/`welcome`, lets them sit idle, and
//! reads the memory again: (after - before) / N.
//!
//! The client sockets are spread over worker processes (this binary's hidden
//! `idle-worker` subcommand), because one process may only open 20,000 files
//! here and the server needs its own. Each worker binds to its own
//! 127.0.0.x, so every worker has a full ephemeral port range and no run
//! reuses the previous run's ports (still in TIME_WAIT).
//!
//! Every wait is bounded (server start, warm-up, the run's deadline), and
//! every child process is killed when its owner is dropped, including on
//! errors. Ctrl-C reaches the whole process group, so it stops the server and
//! the workers too; if only the bench is killed (SIGKILL), the workers still
//! exit (their stdin closes) but the server is left running.

use std::net::Ipv4Addr;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::client::Protocol;
use crate::fleet::{Event, Servers, SourceAddrs, Worker, split, wait_ready};
use crate::procmem::{self, Memory};

/// Connections opened and closed before the baseline is read.
const WARMUP: usize = 50;
/// How long the warm-up may take.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after the warm-up connections close, before the baseline.
const WARMUP_SETTLE: Duration = Duration::from_secs(1);

/// Flags of `earshot-bench idle`, checked.
pub struct Config {
    pub connections: Vec<usize>,
    pub runs: usize,
    pub servers: Servers,
    /// The servers to measure, one after the other.
    pub targets: Vec<Protocol>,
    pub per_worker: usize,
    pub settle: Duration,
    pub deadline: Duration,
}

impl Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.connections.is_empty(),
            "--connections needs at least one count"
        );
        ensure!(
            self.connections.iter().all(|&n| n > 0),
            "--connections must be positive"
        );
        ensure!(self.runs >= 1, "--runs must be at least 1");
        ensure!(
            (1..=15_000).contains(&self.per_worker),
            "--per-worker must be 1 to 15000 (a process may open 20,000 files)"
        );
        self.servers.validate(&self.targets)
    }
}

/// One run's readings.
pub struct Run {
    pub connections: usize,
    pub workers: usize,
    /// From starting the workers to the last `welcome`.
    pub connect_time: Duration,
    pub before: Memory,
    pub after: Memory,
}

fn per_conn(before: u64, after: u64, n: usize) -> f64 {
    (after as f64 - before as f64) / n as f64
}

impl Run {
    pub fn rss_per_conn(&self) -> f64 {
        per_conn(self.before.rss, self.after.rss, self.connections)
    }

    pub fn pss_per_conn(&self) -> Option<f64> {
        Some(per_conn(
            self.before.pss?,
            self.after.pss?,
            self.connections,
        ))
    }

    pub fn private_per_conn(&self) -> Option<f64> {
        Some(per_conn(
            self.before.private?,
            self.after.private?,
            self.connections,
        ))
    }
}

/// All runs for one connection count, and which one is the median.
pub struct Summary {
    pub target: Protocol,
    pub connections: usize,
    pub runs: Vec<Run>,
    /// Index into `runs` of the median by RSS per connection (the lower
    /// middle for an even number of runs).
    pub median: usize,
}

impl Summary {
    fn new(target: Protocol, connections: usize, runs: Vec<Run>) -> Summary {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| runs[a].rss_per_conn().total_cmp(&runs[b].rss_per_conn()));
        let median = order[(order.len() - 1) / 2];
        Summary {
            target,
            connections,
            runs,
            median,
        }
    }

    pub fn median_run(&self) -> &Run {
        &self.runs[self.median]
    }
}

pub fn run(config: &Config) -> anyhow::Result<Vec<Summary>> {
    let mut sources = SourceAddrs::default();
    let mut summaries = Vec::new();
    for &target in &config.targets {
        for &n in &config.connections {
            summaries.push(measure(config, target, n, &mut sources)?);
        }
    }
    Ok(summaries)
}

fn measure(
    config: &Config,
    target: Protocol,
    n: usize,
    sources: &mut SourceAddrs,
) -> anyhow::Result<Summary> {
    {
        let mut runs = Vec::new();
        for r in 1..=config.runs {
            eprint!(
                "idle {target:?}: {n} connections, run {r}/{}: ",
                config.runs
            );
            let run = one_run(config, target, n, sources)
                .with_context(|| format!("{target:?}, {n} connections, run {r}"))?;
            eprintln!(
                "RSS {} -> {} ({:.0} bytes/conn), connected in {:.1} s",
                mib(run.before.rss),
                mib(run.after.rss),
                run.rss_per_conn(),
                run.connect_time.as_secs_f64()
            );
            runs.push(run);
        }
        Ok(Summary::new(target, n, runs))
    }
}

fn one_run(
    config: &Config,
    target: Protocol,
    n: usize,
    sources: &mut SourceAddrs,
) -> anyhow::Result<Run> {
    let deadline = Instant::now() + config.deadline;
    let (events_tx, events) = crate::fleet::events();
    let mut server = config.servers.start(target, &[])?;
    let url = server.url.clone();
    let spawn = |count: usize, source: Ipv4Addr, tag: usize| {
        let args = [
            "idle-worker".to_string(),
            "--urls".into(),
            url.clone(),
            "--count".into(),
            count.to_string(),
            "--source".into(),
            source.to_string(),
            "--protocol".into(),
            target.name().into(),
        ];
        Worker::spawn(&args, count, tag, events_tx.clone())
    };

    let mut warm = spawn(WARMUP, sources.next()?, 0)?;
    wait_ready(
        &events,
        &[&warm],
        deadline.min(Instant::now() + WARMUP_TIMEOUT),
    )
    .context("warm-up")?;
    warm.stop(Duration::from_secs(10));
    drop(warm);
    std::thread::sleep(WARMUP_SETTLE);
    server.check_alive()?;
    let before = procmem::read(server.pid())?;

    let started = Instant::now();
    let workers = split(n, config.per_worker)
        .into_iter()
        .enumerate()
        .map(|(i, count)| spawn(count, sources.next()?, i + 1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_ready(&events, &workers.iter().collect::<Vec<_>>(), deadline)?;
    let connect_time = started.elapsed();

    sleep_until(deadline, config.settle)?;
    check_quiet(&events, &workers)?;
    server.check_alive()?;
    let after = procmem::read(server.pid())?;
    check_quiet(&events, &workers)?;

    // The server goes first: its sockets take the TIME_WAITs, not the
    // workers' source ports.
    drop(server);
    drop(workers);
    Ok(Run {
        connections: n,
        workers: split(n, config.per_worker).len(),
        connect_time,
        before,
        after,
    })
}

fn sleep_until(deadline: Instant, wanted: Duration) -> anyhow::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    ensure!(left > wanted, "the run's deadline leaves no time to settle");
    std::thread::sleep(wanted);
    Ok(())
}

/// Fails if one of `workers` reported anything since it was ready (a lost
/// socket, an error, its own end).
fn check_quiet(events: &Receiver<Event>, workers: &[Worker]) -> anyhow::Result<()> {
    while let Ok(event) = events.try_recv() {
        if !workers.iter().any(|w| w.tag == event.tag()) {
            continue; // the warm-up worker ending
        }
        match event {
            Event::Line(tag, line) => bail!("worker {tag} reported `{line}` while idle"),
            Event::Closed(tag) => bail!("worker {tag} exited while idle"),
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

/// A Markdown table of the medians, readable in a terminal too.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| server | connections | runs | RSS before | RSS after | bytes/conn | KiB/conn | Pss bytes/conn | Private bytes/conn | bytes/conn, every run |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for s in summaries {
        let m = s.median_run();
        let all: Vec<String> = s
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.rss_per_conn()))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.2} | {} | {} | {} |\n",
            s.target.name(),
            s.connections,
            s.runs.len(),
            mib(m.before.rss),
            mib(m.after.rss),
            m.rss_per_conn(),
            m.rss_per_conn() / 1024.0,
            opt(m.pss_per_conn()),
            opt(m.private_per_conn()),
            all.join(", "),
        ));
    }
    let ratios = ratios(summaries);
    if !ratios.is_empty() {
        out.push_str("\n| connections | PeerJS bytes/conn ÷ Earshot bytes/conn |\n|---:|---:|\n");
        for (n, ratio) in ratios {
            out.push_str(&format!("| {n} | {ratio:.2} |\n"));
        }
    }
    out
}

/// PeerJS's memory per connection over Earshot's, for every count measured
/// against both (above 1: Earshot uses less).
fn ratios(summaries: &[Summary]) -> Vec<(usize, f64)> {
    let of = |target, n| {
        summaries
            .iter()
            .find(|s| s.target == target && s.connections == n)
            .map(|s| s.median_run().rss_per_conn())
    };
    summaries
        .iter()
        .filter(|s| s.target == Protocol::Earshot)
        .filter_map(|s| {
            let peerjs = of(Protocol::Peerjs, s.connections)?;
            Some((
                s.connections,
                peerjs / of(Protocol::Earshot, s.connections)?,
            ))
        })
        .collect()
}

fn memory_json(m: &Memory) -> serde_json::Value {
    serde_json::json!({ "rss": m.rss, "pss": m.pss, "private": m.private })
}

fn run_json(r: &Run) -> serde_json::Value {
    serde_json::json!({
        "connections": r.connections,
        "workers": r.workers,
        "connect_secs": r.connect_time.as_secs_f64(),
        "before": memory_json(&r.before),
        "after": memory_json(&r.after),
        "rss_bytes_per_conn": r.rss_per_conn(),
        "pss_bytes_per_conn": r.pss_per_conn(),
        "private_bytes_per_conn": r.private_per_conn(),
    })
}

pub fn to_json(config: &Config, summaries: &[Summary]) -> serde_json::Value {
    serde_json::json!({
        "benchmark": "idle",
        "unit": "bytes",
        "server": config.servers.earshot.display().to_string(),
        "warmup_connections": WARMUP,
        "settle_secs": config.settle.as_secs_f64(),
        "peerjs_over_earshot": ratios(summaries).into_iter()
            .map(|(n, r)| serde_json::json!({ "connections": n, "ratio": r }))
            .collect::<Vec<_>>(),
        "results": summaries.iter().map(|s| serde_json::json!({
            "target": s.target.name(),
            "connections": s.connections,
            "median": run_json(s.median_run()),
            "runs": s.runs.iter().map(run_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_run() {
        let m = |rss| Memory {
            anon: None,
            rss,
            pss: None,
            private: None,
        };
        let run = |after| Run {
            connections: 10,
            workers: 1,
            connect_time: Duration::ZERO,
            before: m(0),
            after: m(after),
        };
        let s = Summary::new(Protocol::Earshot, 10, vec![run(300), run(100), run(200)]);
        assert_eq!(s.median_run().rss_per_conn(), 20.0);
    }
}
