//! Redis for `earshot-bench nodes`: a plain `redis-server`, or a Redis
//! Cluster of several primaries, on loopback ports (`--save "" --appendonly
//! no`, in a temporary directory, killed on drop); the CPU time each has
//! used (`INFO cpu`); and a delaying TCP proxy to put a network's round
//! trip between the nodes and Redis.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

const START: Duration = Duration::from_secs(15);

/// One or more `redis-server` processes.
pub struct Redis {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for Redis {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that is free, with its cluster bus port (+10000) free too.
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let port = 20_000 + port % 30_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    bail!("no free loopback port")
}

impl Redis {
    /// One plain `redis-server`.
    pub fn standalone() -> anyhow::Result<Redis> {
        Redis::start(1, false)
    }

    /// A cluster of `primaries` primaries, no replicas, ready.
    pub fn cluster(primaries: usize) -> anyhow::Result<Redis> {
        ensure!(primaries >= 3, "a Redis Cluster needs at least 3 primaries");
        let redis = Redis::start(primaries, true)?;
        let addrs: Vec<String> = redis
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run redis-cli (package redis-tools)")?;
        ensure!(status.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + START;
        while !redis.ports.iter().all(|&p| {
            command(p, "CLUSTER INFO").is_ok_and(|info| info.contains("cluster_state:ok"))
        }) {
            ensure!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }

    fn start(n: usize, cluster: bool) -> anyhow::Result<Redis> {
        let dir = std::env::temp_dir().join(format!(
            "earshot-bench-redis-{}-{}",
            std::process::id(),
            crate::client::wall_ns()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut redis = Redis {
            children: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for i in 0..n {
            let port = free_port()?;
            let dir = redis.dir.join(i.to_string());
            std::fs::create_dir_all(&dir)?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir);
            if cluster {
                cmd.args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", "nodes.conf"]);
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start redis-server (is it installed?)")?;
            redis.children.push(child);
            redis.ports.push(port);
        }
        let deadline = Instant::now() + START;
        for &p in &redis.ports {
            while command(p, "PING").is_err() {
                ensure!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(redis)
    }

    /// The URL nodes are given (the first server; a cluster's others are
    /// found from it).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[0])
    }

    /// CPU seconds each server has used so far (`INFO cpu`: user + system).
    pub fn cpu(&self) -> anyhow::Result<Vec<f64>> {
        self.ports.iter().map(|&p| cpu_seconds(p)).collect()
    }

    /// Each server's share of its keys, to see that a cluster spreads them.
    pub fn keys(&self) -> anyhow::Result<Vec<u64>> {
        self.ports
            .iter()
            .map(|&p| {
                let info = command(p, "INFO keyspace")?;
                Ok(info
                    .lines()
                    .filter_map(|l| {
                        l.split_once("keys=")?
                            .1
                            .split(',')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum())
            })
            .collect()
    }
}

impl Redis {
    /// Forgets the servers' command statistics.
    pub fn reset_stats(&self) -> anyhow::Result<()> {
        for &p in &self.ports {
            command(p, "CONFIG RESETSTAT")?;
        }
        Ok(())
    }

    /// Each command's calls and µs per call, summed over the servers, the
    /// costliest first (`INFO commandstats`): where Redis's time goes.
    pub fn command_stats(&self) -> anyhow::Result<Vec<(String, u64, f64)>> {
        let mut total: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
        for &p in &self.ports {
            for line in command(p, "INFO commandstats")?.lines() {
                let Some((name, rest)) = line
                    .strip_prefix("cmdstat_")
                    .and_then(|l| l.split_once(':'))
                else {
                    continue;
                };
                let field = |f: &str| {
                    rest.split(',')
                        .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('=')?.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                let e = total.entry(name.to_owned()).or_default();
                e.0 += field("calls") as u64;
                e.1 += field("usec");
            }
        }
        let mut out: Vec<(String, u64, f64)> = total
            .into_iter()
            .map(|(n, (calls, usec))| (n, calls, usec))
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(out)
    }
}

/// CPU seconds a server has used (`used_cpu_sys` + `used_cpu_user`).
fn cpu_seconds(port: u16) -> anyhow::Result<f64> {
    let info = command(port, "INFO cpu")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in INFO cpu"))
    };
    Ok(field("used_cpu_sys")? + field("used_cpu_user")?)
}

/// Sends one inline command and reads a status or bulk reply as text.
fn command(port: u16, line: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{line}\r\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head)?;
    match head.as_bytes().first() {
        Some(b'+') => Ok(head[1..].trim_end().to_owned()),
        Some(b'$') => {
            let n: usize = head[1..].trim_end().parse().context("bad bulk length")?;
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body)?;
            body.truncate(n);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => bail!("Redis answered {head:?}"),
    }
}

/// A TCP proxy on a loopback port that holds every chunk of bytes for
/// `delay` in each direction, as a network between the nodes and Redis
/// would. Each direction of each connection is one thread that sleeps
/// until a chunk is due (tokio's timers have a millisecond grain; a
/// thread's sleep is good to about 0.1 ms). Stops on drop.
pub struct DelayProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    pub fn start(to: u16, delay: Duration) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                            continue;
                        };
                        for (from, into) in [(&client, &server), (&server, &client)] {
                            let (Ok(from), Ok(into)) = (from.try_clone(), into.try_clone()) else {
                                continue;
                            };
                            let _ = from.set_nodelay(true);
                            let _ = into.set_nodelay(true);
                            pump(from, into, delay, done.clone());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(DelayProxy { port, stop })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `into`, each chunk `delay` after it was read.
fn pump(mut from: TcpStream, mut into: TcpStream, delay: Duration, stop: Arc<AtomicBool>) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if into.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = into.shutdown(std::net::Shutdown::Both);
    });
}
