//! Throwaway `redis-server` processes for Earshot's multi-node tests
//! (`earshot-server`'s `tests/support/redis.rs`) and `earshot-bench nodes`:
//! one place that knows how to start Redis so that it writes nothing but
//! its cluster file (`--save "" --appendonly no`, in a directory the caller
//! owns), listens on loopback only, and dies with its guard.
//!
//! - [`Process`]: one `redis-server`, killed (SIGKILL) on drop.
//! - [`free_port`]: a loopback port whose cluster bus port is free too.
//! - [`create_cluster`]: `redis-cli --cluster create` over running
//!   primaries, then waits until each says the cluster is ok.
//! - [`command`]: one inline command and its text reply, with no Redis
//!   client library (enough for PING, INFO and CLUSTER INFO).
//!
//! A dev and benchmark helper only: the `earshot` binary never starts Redis.

#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long redis-server may take to answer after starting, and a new
/// cluster to become ok.
pub const STARTUP: Duration = Duration::from_secs(15);

/// How a server takes part in a Redis Cluster.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterNode {
    /// `--cluster-node-timeout`: how soon a dead primary is noticed
    /// (Redis's default, 15 s, when `None`).
    pub node_timeout: Option<Duration>,
}

/// One `redis-server` on a loopback port, killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pub port: u16,
}

impl Process {
    /// Starts `redis-server` on `127.0.0.1:port` with `dir` as its working
    /// directory (`cluster`: as a cluster node) and waits until it answers.
    pub fn start(port: u16, dir: &Path, cluster: Option<ClusterNode>) -> io::Result<Process> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir);
        if let Some(node) = cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"]);
            if let Some(t) = node.node_timeout {
                cmd.args(["--cluster-node-timeout", &t.as_millis().to_string()]);
            }
        }
        let child = quiet(&mut cmd)
            .spawn()
            .map_err(|e| cannot_run(e, "redis-server (package redis-server)"))?;
        let process = Process { child, port };
        wait_until("redis-server to start", || ping(port))?;
        Ok(process)
    }

    /// The process id, to freeze Redis (SIGSTOP) in a test.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago, with its cluster bus port
/// (+10000) free too (so any server can become a cluster node).
pub fn free_port() -> io::Result<u16> {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let port = 20_000 + port % 30_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free loopback port pair"))
}

/// Makes the cluster nodes on `ports` one cluster of primaries (no
/// replicas) and waits until every one says it is ok.
pub fn create_cluster(ports: &[u16]) -> io::Result<()> {
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--cluster", "create"]).args(&addrs).args([
        "--cluster-replicas",
        "0",
        "--cluster-yes",
    ]);
    let status = quiet(&mut cmd)
        .status()
        .map_err(|e| cannot_run(e, "redis-cli (package redis-tools)"))?;
    if !status.success() {
        return Err(io::Error::other("redis-cli --cluster create failed"));
    }
    wait_cluster_ok(ports)
}

/// Waits (up to [`STARTUP`]) until every node on `ports` says the cluster is ok.
pub fn wait_cluster_ok(ports: &[u16]) -> io::Result<()> {
    wait_until("the cluster to become ok", || {
        ports.iter().all(|&p| {
            command(p, "CLUSTER INFO").is_ok_and(|info| info.contains("cluster_state:ok"))
        })
    })
}

/// `cmd` with no input and its output dropped: nobody reads it here.
fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

/// `e` from starting `what`, naming the program and its package.
fn cannot_run(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("cannot run {what}: {e}"))
}

/// Whether a server answers on `port`.
pub fn ping(port: u16) -> bool {
    command(port, "PING").is_ok()
}

/// Polls `ready` until it holds, for at most [`STARTUP`].
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> io::Result<()> {
    let deadline = Instant::now() + STARTUP;
    while !ready() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("gave up waiting for {what}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sends one inline command and reads a status or bulk reply as text.
pub fn command(port: u16, line: &str) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\r\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head)?;
    match head.as_bytes().first() {
        Some(b'+') => Ok(head[1..].trim_end().to_owned()),
        Some(b'$') => {
            let n: usize = head[1..]
                .trim_end()
                .parse()
                .map_err(|_| io::Error::other("bad bulk length"))?;
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body)?;
            body.truncate(n);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(io::Error::other(format!("Redis answered {head:?}"))),
    }
}
