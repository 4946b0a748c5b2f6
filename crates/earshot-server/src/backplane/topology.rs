//! Where each key lives: one plain `redis-server` (every key on one link),
//! or a Redis Cluster (one link per primary, each slot on its primary's
//! link, read from `CLUSTER SLOTS`).
//!
//! The slot map is read once at start. A `MOVED` reply (an operator moved
//! slots) fails that request and marks the map stale; the heartbeat then
//! reads it again. Replicas are not used: reads and writes go to primaries.

use anyhow::{Context, bail};
use earshot_core::backplane::slot::{SLOTS, slot};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

use super::link::{self, Addr, Link, Target};
use super::resp::{Cmd, Value};

struct Map {
    links: Vec<Link>,
    /// The link of each slot; empty for a plain server (always link 0).
    slots: Vec<u16>,
}

/// The links of a node's backplane and the slot map.
pub struct Topology {
    seed: Target,
    scripts: Vec<String>,
    stop: CancellationToken,
    cluster: bool,
    map: RwLock<Map>,
    /// Set by a `MOVED` reply: the slot map is read again at the next beat.
    stale: Arc<AtomicBool>,
}

impl Topology {
    /// Finds out whether `seed` is a cluster and opens a link to each
    /// primary (or to `seed` alone). `scripts` are loaded on every link.
    pub async fn discover(
        seed: Target,
        scripts: Vec<String>,
        stop: CancellationToken,
    ) -> anyhow::Result<Topology> {
        let (cluster, map) = read_map(&seed, &scripts, &stop, &[]).await?;
        let topology = Topology {
            seed,
            scripts,
            stop,
            cluster,
            map: RwLock::new(map),
            stale: Arc::new(AtomicBool::new(false)),
        };
        for l in topology.links() {
            if !l.wait_up(link::TIMEOUT).await {
                bail!("cannot reach Redis at {:?}", l.target());
            }
        }
        Ok(topology)
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Every link, by index.
    pub fn links(&self) -> Vec<Link> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .links
            .clone()
    }

    /// The index of the link that serves `cmd` (by its routing key).
    pub fn index_for(&self, cmd: &Cmd) -> usize {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match cmd.routing_key() {
            Some(k) if !map.slots.is_empty() => usize::from(map.slots[usize::from(slot(k))]),
            _ => 0,
        }
    }

    /// The index of the link that serves `key`.
    pub fn index_for_key(&self, key: &str) -> usize {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        if map.slots.is_empty() {
            0
        } else {
            usize::from(map.slots[usize::from(slot(key.as_bytes()))])
        }
    }

    pub fn link(&self, index: usize) -> Option<Link> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .links
            .get(index)
            .cloned()
    }

    /// Sends `cmd` on its link now; the future is the reply.
    pub fn send(
        &self,
        cmd: &Cmd,
    ) -> impl Future<Output = Result<Value, link::LinkError>> + Send + use<> {
        let link = self.link(self.index_for(cmd));
        let reply = link.as_ref().map(|l| l.send(cmd));
        async move {
            match reply {
                Some(r) => r.await,
                None => Err(link::LinkError::Down),
            }
        }
    }

    /// Raised by a `MOVED` reply.
    pub fn stale_flag(&self) -> Arc<AtomicBool> {
        self.stale.clone()
    }

    /// Reads the slot map again if a reply said it changed. Links to
    /// primaries that stay are kept.
    pub async fn refresh_if_stale(&self) -> anyhow::Result<()> {
        if !self.cluster || !self.stale.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let old = self.links();
        let (_, map) = read_map(&self.seed, &self.scripts, &self.stop, &old).await?;
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = map;
        tracing::info!("the Redis Cluster's slot map changed; read it again");
        Ok(())
    }

    /// Whether every link is connected, and the sum of their generations
    /// (which grows whenever one connected again).
    pub fn health(&self) -> (bool, u64) {
        let links = self.links();
        let up = links.iter().all(Link::is_up);
        (up, links.iter().map(Link::generation).sum())
    }
}

/// Asks `seed` for the cluster's slot map; a plain server has none.
async fn read_map(
    seed: &Target,
    scripts: &[String],
    stop: &CancellationToken,
    reuse: &[Link],
) -> anyhow::Result<(bool, Map)> {
    let (mut stream, mut buf) = tokio::time::timeout(link::TIMEOUT, link::connect(seed, false))
        .await
        .context("connecting to Redis timed out")?
        .context("cannot reach Redis")?;
    let mut c = Cmd::new("CLUSTER");
    c.arg("SLOTS");
    let reply = tokio::time::timeout(link::TIMEOUT, link::ask(&mut stream, &mut buf, &c))
        .await
        .context("Redis did not answer")?
        .context("Redis did not answer")?;
    let open = |target: Target| {
        reuse
            .iter()
            .find(|l| *l.target() == target)
            .cloned()
            .unwrap_or_else(|| Link::open(target, scripts.to_vec(), stop.clone()))
    };
    let ranges = match reply {
        Value::Error(e) if e.contains("cluster support disabled") => {
            let link = open(seed.clone());
            return Ok((
                false,
                Map {
                    links: vec![link],
                    slots: Vec::new(),
                },
            ));
        }
        Value::Array(ranges) => ranges,
        other => bail!("unexpected answer to CLUSTER SLOTS: {other:?}"),
    };
    let mut links: Vec<Link> = Vec::new();
    let mut slots = vec![u16::MAX; usize::from(SLOTS)];
    for range in ranges {
        let Value::Array(parts) = range else {
            bail!("malformed CLUSTER SLOTS");
        };
        let (Some(start), Some(end), Some(Value::Array(primary))) = (
            parts.first().and_then(Value::int),
            parts.get(1).and_then(Value::int),
            parts.get(2),
        ) else {
            bail!("malformed CLUSTER SLOTS");
        };
        let host = primary
            .first()
            .and_then(Value::text)
            .filter(|h| !h.is_empty() && *h != "?")
            .map(str::to_owned)
            .or_else(|| match &seed.addr {
                Addr::Tcp(h, _) => Some(h.clone()),
                Addr::Unix(_) => None,
            })
            .context("a cluster node without an address")?;
        let port = primary
            .get(1)
            .and_then(Value::int)
            .and_then(|p| u16::try_from(p).ok())
            .context("a cluster node without a port")?;
        let target = Target {
            addr: Addr::Tcp(host, port),
            db: 0,
            ..seed.clone()
        };
        let index = match links.iter().position(|l| *l.target() == target) {
            Some(i) => i,
            None => {
                links.push(open(target));
                links.len() - 1
            }
        };
        let (start, end) = (
            usize::try_from(start).unwrap_or(usize::MAX),
            usize::try_from(end).unwrap_or(usize::MAX),
        );
        if start > end || end >= slots.len() {
            bail!("malformed CLUSTER SLOTS");
        }
        for s in &mut slots[start..=end] {
            *s = u16::try_from(index).unwrap_or(u16::MAX);
        }
    }
    if links.is_empty() || slots.contains(&u16::MAX) {
        bail!("the Redis Cluster does not cover every slot (is it ready?)");
    }
    Ok((true, Map { links, slots }))
}
