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

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::procmem::{self, Memory};

/// Connections opened and closed before the baseline is read.
const WARMUP: usize = 50;
/// How long the server may take to print its URL.
const SERVER_START: Duration = Duration::from_secs(15);
/// How long the warm-up may take.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after the warm-up connections close, before the baseline.
const WARMUP_SETTLE: Duration = Duration::from_secs(1);

/// Flags of `earshot-bench idle`, checked.
pub struct Config {
    pub connections: Vec<usize>,
    pub runs: usize,
    pub server: PathBuf,
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
        ensure!(
            self.server.is_file(),
            "no server binary at {} (build it with `cargo build --release -p earshot-server`, or pass --server)",
            self.server.display()
        );
        Ok(())
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
    pub connections: usize,
    pub runs: Vec<Run>,
    /// Index into `runs` of the median by RSS per connection (the lower
    /// middle for an even number of runs).
    pub median: usize,
}

impl Summary {
    fn new(connections: usize, runs: Vec<Run>) -> Summary {
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| runs[a].rss_per_conn().total_cmp(&runs[b].rss_per_conn()));
        let median = order[(order.len() - 1) / 2];
        Summary {
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
    for &n in &config.connections {
        let mut runs = Vec::new();
        for r in 1..=config.runs {
            eprint!("idle: {n} connections, run {r}/{}: ", config.runs);
            let run = one_run(config, n, &mut sources)
                .with_context(|| format!("{n} connections, run {r}"))?;
            eprintln!(
                "RSS {} -> {} ({:.0} bytes/conn), connected in {:.1} s",
                mib(run.before.rss),
                mib(run.after.rss),
                run.rss_per_conn(),
                run.connect_time.as_secs_f64()
            );
            runs.push(run);
        }
        summaries.push(Summary::new(n, runs));
    }
    Ok(summaries)
}

fn one_run(config: &Config, n: usize, sources: &mut SourceAddrs) -> anyhow::Result<Run> {
    let deadline = Instant::now() + config.deadline;
    let (events_tx, events) = mpsc::channel();
    let mut server = Server::start(&config.server)?;

    let mut warm = Worker::spawn(&server.url, WARMUP, sources.next()?, 0, events_tx.clone())?;
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
        .map(|(i, count)| {
            Worker::spawn(
                &server.url,
                count,
                sources.next()?,
                i + 1,
                events_tx.clone(),
            )
        })
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

/// `n` sockets over as few workers as hold at most `per_worker` each, evenly.
fn split(n: usize, per_worker: usize) -> Vec<usize> {
    let workers = n.div_ceil(per_worker).max(1);
    (0..workers)
        .map(|i| n / workers + usize::from(i < n % workers))
        .collect()
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

/// Waits until every worker in `workers` has said `ready`.
fn wait_ready(events: &Receiver<Event>, workers: &[&Worker], until: Instant) -> anyhow::Result<()> {
    let mut pending: HashSet<usize> = workers.iter().map(|w| w.tag).collect();
    while !pending.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            // Another worker (the warm-up's) saying goodbye.
            Ok(event) if !workers.iter().any(|w| w.tag == event.tag()) => {}
            Ok(Event::Line(tag, line)) => {
                if let Some(count) = line.strip_prefix("ready ") {
                    let expected = workers.iter().find(|w| w.tag == tag).map(|w| w.count);
                    ensure!(
                        count.parse::<usize>().ok() == expected,
                        "worker {tag} said `{line}`, expected {expected:?}"
                    );
                    pending.remove(&tag);
                } else {
                    bail!("worker {tag}: {line}");
                }
            }
            Ok(Event::Closed(tag)) => bail!("worker {tag} exited before it was ready"),
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "timed out waiting for {} worker(s) to connect",
                    pending.len()
                )
            }
            Err(RecvTimeoutError::Disconnected) => bail!("lost every worker"),
        }
    }
    Ok(())
}

/// What a child said on stdout, tagged with the worker's number.
enum Event {
    Line(usize, String),
    Closed(usize),
}

impl Event {
    fn tag(&self) -> usize {
        match self {
            Event::Line(tag, _) | Event::Closed(tag) => *tag,
        }
    }
}

/// Source addresses 127.0.x.y, a new one for each worker of the whole bench.
#[derive(Default)]
struct SourceAddrs {
    used: u32,
}

impl SourceAddrs {
    fn next(&mut self) -> anyhow::Result<Ipv4Addr> {
        // 127.0.0.1 is the server's; y stays within 2..=251.
        let (x, y) = (self.used / 250, 2 + self.used % 250);
        ensure!(x < 256, "out of 127.0.x.y source addresses");
        self.used += 1;
        Ok(Ipv4Addr::new(127, 0, x as u8, y as u8))
    }
}

/// The `earshot` child process. Killed on drop.
struct Server {
    child: Child,
    /// ws://127.0.0.1:PORT/ws
    url: String,
}

impl Server {
    fn start(path: &PathBuf) -> anyhow::Result<Server> {
        let mut child = Command::new(path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--stun-listen",
                "127.0.0.1:0",
                "--max-connections",
                "20000",
                // Each worker is one client address holding thousands of
                // sockets: lift the per-client cap and proof of work, which
                // exist against exactly that.
                "--max-connections-per-client",
                "20000",
                "--pow",
                "off",
                "--log",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (first_tx, first) = mpsc::channel();
        // Reads the first line, then drains the rest so the server never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_tx.send(lines.next());
            for _ in lines.map_while(Result::ok) {}
        });
        let mut server = Server {
            child,
            url: String::new(),
        };
        let line = match first.recv_timeout(SERVER_START) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => bail!("the server exited without printing its URL"),
            Err(_) => bail!("the server printed no URL within {SERVER_START:?}"),
        };
        let addr =
            http_addr(&line).with_context(|| format!("no http://127.0.0.1:PORT/ in `{line}`"))?;
        server.url = format!("ws://{addr}/ws");
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the server exited: {status}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loopback address in the server's first line,
/// `Earshot is running at http://127.0.0.1:PORT/ (...)`.
fn http_addr(line: &str) -> Option<SocketAddrV4> {
    let rest = &line[line.find("http://")? + "http://".len()..];
    let addr: SocketAddrV4 = rest[..rest.find('/')?].parse().ok()?;
    addr.ip().is_loopback().then_some(addr)
}

/// One `idle-worker` child. Killed on drop.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    tag: usize,
    count: usize,
}

impl Worker {
    fn spawn(
        url: &str,
        count: usize,
        source: Ipv4Addr,
        tag: usize,
        events: Sender<Event>,
    ) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .args(["idle-worker", "--url", url])
            .args(["--count", &count.to_string()])
            .args(["--source", &source.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a worker")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if events.send(Event::Line(tag, line)).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Closed(tag));
        });
        Ok(Worker {
            child,
            stdin,
            tag,
            count,
        })
    }

    /// Asks the worker to close its sockets and waits up to `limit` for it
    /// to exit (drop kills it otherwise).
    fn stop(&mut self, limit: Duration) {
        drop(self.stdin.take());
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        "| connections | runs | RSS before | RSS after | bytes/conn | KiB/conn | Pss bytes/conn | Private bytes/conn | bytes/conn, every run |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for s in summaries {
        let m = s.median_run();
        let all: Vec<String> = s
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.rss_per_conn()))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {} | {} | {} |\n",
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
    out
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
        "server": config.server.display().to_string(),
        "warmup_connections": WARMUP,
        "settle_secs": config.settle.as_secs_f64(),
        "results": summaries.iter().map(|s| serde_json::json!({
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
    fn split_keeps_workers_under_the_cap_and_evens_them_out() {
        assert_eq!(split(1000, 8000), vec![1000]);
        assert_eq!(split(8000, 8000), vec![8000]);
        assert_eq!(split(15000, 8000), vec![7500, 7500]);
        assert_eq!(split(16001, 8000), vec![5334, 5334, 5333]);
    }

    #[test]
    fn server_url_is_read_from_its_first_line() {
        let line = "Earshot is running at http://127.0.0.1:41234/ (STUN on udp 127.0.0.1:5000)";
        assert_eq!(http_addr(line), Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(http_addr("Earshot is running at http://10.1.2.3:80/"), None);
        assert_eq!(http_addr("no url here"), None);
    }

    #[test]
    fn source_addresses_are_fresh_loopback_and_skip_the_servers() {
        let mut s = SourceAddrs::default();
        let first: Vec<Ipv4Addr> = (0..251).map(|_| s.next().unwrap()).collect();
        assert_eq!(first[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(first[249], Ipv4Addr::new(127, 0, 0, 251));
        assert_eq!(first[250], Ipv4Addr::new(127, 0, 1, 2));
        assert!(
            first
                .iter()
                .all(|a| a.is_loopback() && *a != Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn median_is_the_middle_run() {
        let m = |rss| Memory {
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
        let s = Summary::new(10, vec![run(300), run(100), run(200)]);
        assert_eq!(s.median_run().rss_per_conn(), 20.0);
    }
}
