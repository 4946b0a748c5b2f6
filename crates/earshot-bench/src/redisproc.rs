//! Redis for `earshot-bench nodes`: a plain `redis-server`, or a Redis
//! Cluster of several primaries, on loopback ports (started by
//! `earshot-redisproc`, in a temporary directory, killed on drop); the CPU
//! time each has used (`INFO cpu`); and a delaying TCP proxy to put a
//! network's round trip between the nodes and Redis.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use earshot_redisproc::{ClusterNode, Process, command, free_port};

/// One or more `redis-server` processes.
pub struct Redis {
    // Before `dir`: the servers stop before their directory goes.
    servers: Vec<Process>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
        earshot_redisproc::create_cluster(&redis.ports)?;
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
            servers: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for i in 0..n {
            let port = free_port()?;
            let dir = redis.dir.join(i.to_string());
            std::fs::create_dir_all(&dir)?;
            let node = cluster.then(ClusterNode::default);
            redis.servers.push(Process::start(port, &dir, node)?);
            redis.ports.push(port);
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
