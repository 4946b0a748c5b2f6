//! A real `redis-server` on a loopback port for the multi-node tests, and
//! a Redis Cluster of three primaries, started by `earshot-redisproc` (the
//! same as `earshot-bench nodes` uses): `--save "" --appendonly no` in a
//! temporary directory, so it writes nothing, and killed (SIGKILL) on drop.
//! Also a few looks at what the Earshot nodes keep in it.

use std::time::Duration;

use earshot_redisproc::{ClusterNode, Process, ping};

/// A `redis-server` on a loopback port, killed on drop.
pub struct RedisServer {
    // Before `_dir`: the server stops before its directory goes.
    process: Process,
    pub port: u16,
    _dir: super::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(super::free_port().unwrap())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let dir = super::TempDir::new("earshot-redis").unwrap();
        let process = Process::start(port, dir.path(), None)
            .expect("redis-server is installed (scripts/test installs it)");
        RedisServer {
            process,
            port,
            _dir: dir,
        }
    }

    /// The process id, to freeze Redis (SIGSTOP) in a test.
    pub fn pid(&self) -> u32 {
        self.process.pid()
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
            .flat_map(|i| lane(&mut c, i))
            .map(|e| e.split('|').next().unwrap().to_owned())
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
            .flat_map(|i| lane(&mut c, i))
            .filter(|e| {
                let mut p = e.split('|').skip(2);
                let (node, token) = (p.next().unwrap(), p.next().unwrap());
                let exp: Option<u64> = registry
                    .get(&format!("{node}:{token}"))
                    .and_then(|v| v.parse().ok());
                exp.is_none_or(|exp| exp < now)
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

/// Lane `i`'s entries, oldest first.
pub fn lane(c: &mut redis::Connection, i: u16) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(format!("earshot:2:{{q{i}}}"))
        .arg(0)
        .arg(-1)
        .query(c)
        .unwrap()
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

/// A Redis Cluster of three primaries (no replicas) on loopback ports, each
/// `redis-server` in its own temporary directory (`--save "" --appendonly
/// no`: its `nodes.conf` is all it writes), killed on drop. A primary can
/// be killed and started again on its port with its identity and slots,
/// and nothing else: its data is gone, as after a crash.
pub struct RedisCluster {
    // Before `dirs`: the servers stop before their directories go.
    nodes: Vec<Option<Process>>,
    pub ports: Vec<u16>,
    dirs: Vec<super::TempDir>,
}

/// Find a dead primary within a second or two.
const NODE: ClusterNode = ClusterNode {
    node_timeout: Some(Duration::from_secs(1)),
};

fn cluster_node(port: u16, dir: &std::path::Path) -> Process {
    Process::start(port, dir, Some(NODE))
        .expect("redis-server is installed (scripts/test installs it)")
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let ports: Vec<u16> = (0..3)
            .map(|_| earshot_redisproc::free_port().unwrap())
            .collect();
        let dirs: Vec<super::TempDir> = (0..3)
            .map(|_| super::TempDir::new("earshot-cluster").unwrap())
            .collect();
        let nodes = ports
            .iter()
            .zip(&dirs)
            .map(|(&p, d)| Some(cluster_node(p, d.path())))
            .collect();
        let cluster = RedisCluster { nodes, ports, dirs };
        earshot_redisproc::create_cluster(&cluster.ports)
            .expect("redis-cli is installed and makes the cluster");
        cluster
    }

    /// Waits (bounded) until every primary says the cluster is ok.
    pub fn wait_ok(&self) {
        earshot_redisproc::wait_cluster_ok(&self.ports).expect("the cluster becomes ok");
    }

    /// A URL of one primary: nodes find the others from it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.ports[0])
    }

    /// Which primary (index) serves `key`.
    pub fn primary_of(&self, key: &str) -> usize {
        let slot = earshot_core::backplane::slot::slot(key.as_bytes());
        let mut c = self.conn(self.ports.iter().position(|&p| ping(p)).unwrap());
        let ranges: Vec<(u16, u16, (String, u16))> = {
            let raw: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).unwrap();
            let redis::Value::Array(ranges) = raw else {
                panic!("CLUSTER SLOTS: {raw:?}");
            };
            ranges
                .into_iter()
                .map(|r| {
                    let redis::Value::Array(parts) = r else {
                        panic!("a slot range")
                    };
                    let start: u16 = redis::from_redis_value(parts[0].clone()).unwrap();
                    let end: u16 = redis::from_redis_value(parts[1].clone()).unwrap();
                    let redis::Value::Array(node) = parts[2].clone() else {
                        panic!("a node")
                    };
                    let host: String = redis::from_redis_value(node[0].clone()).unwrap();
                    let port: u16 = redis::from_redis_value(node[1].clone()).unwrap();
                    (start, end, (host, port))
                })
                .collect()
        };
        let port = ranges
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .map(|(_, _, (_, p))| *p)
            .expect("every slot is served");
        self.ports.iter().position(|&p| p == port).unwrap()
    }

    pub fn conn(&self, i: usize) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.ports[i]))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// A connection to the primary that serves `key`.
    pub fn conn_for(&self, key: &str) -> redis::Connection {
        self.conn(self.primary_of(key))
    }

    /// Kills primary `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Starts primary `i` again, on its port, with its identity and slots
    /// and no data, and waits until the cluster is ok.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(cluster_node(self.ports[i], self.dirs[i].path()));
        self.wait_ok();
    }

    /// Every key on every primary.
    pub fn keys(&self) -> Vec<String> {
        (0..self.ports.len())
            .flat_map(|i| {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("*")
                    .query(&mut self.conn(i))
                    .unwrap();
                keys
            })
            .collect()
    }

    /// The queue lanes, as the registry names them.
    pub fn lanes(&self) -> u16 {
        lanes(&mut self.conn_for("earshot:{nodes}"))
    }

    /// The waiting connection ids, by lane.
    pub fn queue(&self) -> Vec<String> {
        (0..self.lanes())
            .flat_map(|i| lane(&mut self.conn_for(&format!("earshot:2:{{q{i}}}")), i))
            .map(|e| e.split('|').next().unwrap().to_owned())
            .collect()
    }
}
