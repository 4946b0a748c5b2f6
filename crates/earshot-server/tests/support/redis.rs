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

    /// The waiting connection ids, oldest first.
    pub fn queue(&self) -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg("{earshot}:queue")
            .arg(0)
            .arg(-1)
            .query(&mut self.conn().unwrap())
            .unwrap()
    }

    /// Queue entries whose node is dead (its heartbeat key is gone).
    pub fn stale_waiters(&self) -> usize {
        let mut c = self.conn().unwrap();
        self.queue()
            .iter()
            .filter(|id| {
                let node = id.parse::<u64>().unwrap() >> 48;
                let alive: bool = redis::cmd("EXISTS")
                    .arg(format!("{{earshot}}:node:{node}"))
                    .query(&mut c)
                    .unwrap();
                !alive
            })
            .count()
    }

    /// Every key, to check what is left behind.
    pub fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS")
            .arg("*")
            .query(&mut self.conn().unwrap())
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
