//! A real `redis-server` on a loopback port for the multi-node tests: it
//! runs with `--save "" --appendonly no` in a temporary directory, so it
//! writes nothing, and is killed (SIGKILL) on drop. Also a few looks at
//! what the Earshot nodes keep in it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long redis-server may take to answer after starting.
const STARTUP: Duration = Duration::from_secs(15);

/// A `redis-server` on a loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: super::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(super::free_port().unwrap())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let dir = super::TempDir::new("earshot-redis").unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP;
        while server.conn().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The process id, to freeze Redis (SIGSTOP) in a test.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let mut c = redis::Client::open(self.url())?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    /// The waiting connection ids, oldest first within each lane.
    pub fn queue(&self) -> Vec<String> {
        let mut c = self.conn().unwrap();
        (0..lanes(&mut c))
            .flat_map(|i| {
                let ids: Vec<String> = redis::cmd("ZRANGE")
                    .arg(format!("earshot:2:{{q{i}}}:z"))
                    .arg(0)
                    .arg(-1)
                    .query(&mut c)
                    .unwrap();
                ids
            })
            .collect()
    }

    /// Queue entries written under a token the registry holds dead (or
    /// does not know): a dead node's, or one from before an outage.
    pub fn stale_waiters(&self) -> usize {
        let mut c = self.conn().unwrap();
        let registry: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg("earshot:{nodes}")
            .query(&mut c)
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        (0..lanes(&mut c))
            .map(|i| {
                let entries: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(format!("earshot:2:{{q{i}}}:w"))
                    .query(&mut c)
                    .unwrap();
                entries
                    .values()
                    .filter(|e| {
                        let mut p = e.split('|').skip(1);
                        let (node, token) = (p.next().unwrap(), p.next().unwrap());
                        let exp: Option<u64> = registry
                            .get(&format!("{node}:{token}"))
                            .and_then(|v| v.parse().ok());
                        exp.is_none_or(|exp| exp < now)
                    })
                    .count()
            })
            .sum()
    }

    /// Every key, to check what is left behind.
    pub fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.conn().unwrap())
            .unwrap()
    }
}

/// The queue lanes the registry names (one on a plain server).
pub fn lanes(c: &mut redis::Connection) -> u16 {
    let stamp: Option<String> = redis::cmd("HGET")
        .arg("earshot:{nodes}")
        .arg("layout")
        .query(c)
        .unwrap();
    stamp
        .and_then(|s| s.split_once('/').and_then(|(_, l)| l.parse().ok()))
        .unwrap_or(1)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
