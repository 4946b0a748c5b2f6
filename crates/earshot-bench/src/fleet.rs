//! The processes a benchmark run is made of: the server under test (an
//! `earshot` binary, or PeerJS server under node), and the bench's own
//! worker processes, each holding client sockets from its own 127.0.x.y
//! source address (a process may open at most 20,000 files here, and each
//! source address has its own ephemeral port range).
//!
//! Workers talk in lines on stdout (`ready N`, `error ...`, results) and
//! listen for lines on stdin; stdin's end tells them to stop. Every child is
//! killed when its owner is dropped, including on errors.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::client::Protocol;

/// How long a server may take to print its URL.
const SERVER_START: Duration = Duration::from_secs(15);

/// `n` sockets over as few workers as hold at most `per_worker` each, evenly.
pub fn split(n: usize, per_worker: usize) -> Vec<usize> {
    let workers = n.div_ceil(per_worker).max(1);
    (0..workers)
        .map(|i| n / workers + usize::from(i < n % workers))
        .collect()
}

/// Waits until every worker in `workers` has said `ready`.
pub fn wait_ready(
    events: &Receiver<Event>,
    workers: &[&Worker],
    until: Instant,
) -> anyhow::Result<()> {
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

/// Waits for one line starting with `prefix` from each of `workers`, and
/// returns the rest of each line by worker tag. Any other line is an error.
pub fn collect(
    events: &Receiver<Event>,
    workers: &[Worker],
    prefix: &str,
    until: Instant,
) -> anyhow::Result<HashMap<usize, String>> {
    let mut got = HashMap::new();
    while got.len() < workers.len() {
        let left = until.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(event) if !workers.iter().any(|w| w.tag == event.tag()) => {}
            Ok(Event::Line(tag, line)) => match line.strip_prefix(prefix) {
                Some(rest) => {
                    got.insert(tag, rest.trim_start().to_string());
                }
                None => bail!("worker {tag}: {line}"),
            },
            Ok(Event::Closed(tag)) => bail!("worker {tag} exited early"),
            Err(RecvTimeoutError::Timeout) => bail!(
                "timed out waiting for `{prefix}` from {} worker(s)",
                workers.len() - got.len()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!("lost every worker"),
        }
    }
    Ok(got)
}

/// What a child said on stdout, tagged with the worker's number.
pub enum Event {
    Line(usize, String),
    Closed(usize),
}

impl Event {
    pub fn tag(&self) -> usize {
        match self {
            Event::Line(tag, _) | Event::Closed(tag) => *tag,
        }
    }
}

/// Source addresses 127.0.x.y, a new one for each worker of the whole bench.
#[derive(Default)]
pub struct SourceAddrs {
    used: u32,
}

impl SourceAddrs {
    pub fn next(&mut self) -> anyhow::Result<Ipv4Addr> {
        // 127.0.0.1 is the server's; y stays within 2..=251.
        let (x, y) = (self.used / 250, 2 + self.used % 250);
        ensure!(x < 256, "out of 127.0.x.y source addresses");
        self.used += 1;
        Ok(Ipv4Addr::new(127, 0, x as u8, y as u8))
    }
}

/// Where the servers under test come from.
pub struct Servers {
    /// The `earshot` binary.
    pub earshot: PathBuf,
    /// PeerJS's install directory.
    pub peerjs_dir: PathBuf,
}

impl Servers {
    /// Checks the binaries of `targets` are there, installing PeerJS if needed.
    pub fn validate(&self, targets: &[Protocol]) -> anyhow::Result<()> {
        if targets.contains(&Protocol::Earshot) {
            ensure!(
                self.earshot.is_file(),
                "no server binary at {} (build it with `cargo build --release -p earshot-server`, or pass --server)",
                self.earshot.display()
            );
        }
        if targets.contains(&Protocol::Peerjs) {
            crate::peerjs::install(&self.peerjs_dir)?;
        }
        Ok(())
    }

    /// A fresh server of kind `target`; `earshot_flags` go to earshot only.
    pub fn start(&self, target: Protocol, earshot_flags: &[&str]) -> anyhow::Result<Server> {
        match target {
            Protocol::Earshot => Server::earshot(&self.earshot, earshot_flags),
            Protocol::Peerjs => Server::peerjs(&self.peerjs_dir),
        }
    }
}

/// The server under test, as a child process. Killed on drop.
pub struct Server {
    child: Child,
    /// ws://127.0.0.1:PORT/ws
    pub url: String,
}

impl Server {
    /// An `earshot` binary on 127.0.0.1 port 0, with `extra` flags.
    pub fn earshot(path: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        let mut command = Command::new(path);
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--stun-listen",
                "127.0.0.1:0",
                "--no-turn",
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
            .args(extra);
        Server::start(command, "/ws")
    }

    /// PeerJS server (`peer`, installed in `dir`) under node, on 127.0.0.1
    /// port 0, started by `scripts/bench-peerjs-server.js`.
    pub fn peerjs(dir: &Path) -> anyhow::Result<Server> {
        let script = crate::peerjs::script(dir)?;
        let mut command = Command::new("node");
        command.arg(script).current_dir(dir);
        Server::start(command, "/peerjs")
    }

    /// Starts `command` and reads the URL from its first stdout line.
    fn start(mut command: Command, ws_path: &str) -> anyhow::Result<Server> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
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
        server.url = format!("ws://{addr}{ws_path}");
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
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

/// One worker child: this executable re-run with a hidden subcommand.
/// Killed on drop.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    pub tag: usize,
    /// Sockets it holds, as it must say in `ready N`.
    pub count: usize,
}

impl Worker {
    pub fn spawn(
        args: &[String],
        count: usize,
        tag: usize,
        events: Sender<Event>,
    ) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .args(args)
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One command line to the worker.
    pub fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the worker was stopped")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("worker {} is gone", self.tag))
    }

    /// Asks the worker to close its sockets and waits up to `limit` for it
    /// to exit (drop kills it otherwise).
    pub fn stop(&mut self, limit: Duration) {
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

/// Starts `subcommand` workers for `total` users, at most `per_worker`
/// each, global indexes from `first`, each worker from a source address of
/// its own and given `extra` flags.
#[allow(clippy::too_many_arguments)]
pub fn spawn_crowd(
    subcommand: &str,
    urls: &str,
    total: usize,
    per_worker: usize,
    mut first: usize,
    sources: &mut SourceAddrs,
    extra: &[&str],
    events: &Sender<Event>,
) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    for (tag, count) in split(total, per_worker).into_iter().enumerate() {
        let mut args = vec![
            subcommand.to_string(),
            "--urls".into(),
            urls.to_string(),
            "--count".into(),
            count.to_string(),
            "--first".into(),
            first.to_string(),
            "--source".into(),
            sources.next()?.to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        workers.push(Worker::spawn(&args, count, tag, events.clone())?);
        first += count;
    }
    Ok(workers)
}

/// A fresh event channel for one run's workers.
pub fn events() -> (Sender<Event>, Receiver<Event>) {
    mpsc::channel()
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
}
