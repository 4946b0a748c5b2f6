//! The Redis backplane: what several `earshot` nodes share (`--redis URL`).
//!
//! The switchboard decides everything; this module only runs its
//! [`Request`]s on Redis and feeds the answers back as [`Event`]s. With no
//! `--redis` none of this runs: the switchboard's own in-memory structures
//! are the (single-node) backplane, exactly as before.
//!
//! **Where the rules are.** Every decision the store makes is a Lua script
//! kept in `earshot-core` beside the Rust rule it mirrors, with its reply
//! decoder, and tested against it on a real `redis-server`
//! (`tests/store_rules.rs`): the key layout and its version in
//! `earshot_core::backplane::layout`, node liveness in `nodes`, queue
//! lanes and pairing in `queue`, admission and keep-apart sets in
//! `admission`, allowances in `allowance`, rooms in `room`, strikes in
//! `earshot_core::moderation`. This module only moves arguments and
//! replies; time is always the node's clock, passed in.
//!
//! **What is atomic, and why.** Each script works inside one slot, so
//! that a Redis Cluster can spread the keys: pairing inside one queue lane
//! (two joiners must never take one waiter), a room's admission (size,
//! lock, removals and attempts against taking a peer id), one bucket of an
//! allowance, a client's strikes and the ban they complete, a node's
//! heartbeat in the registry. What spans slots is done in steps, each
//! safe on its own: a search is admitted in the client's slot (allowance,
//! ban, whom it avoids) and then paired in a lane; a report is charged in
//! the reporter's slot and then counted in the reported client's; a room
//! creation is charged in the creator's slot when the join finds the room
//! empty; a keep-apart or a block is written to both clients' slots; a
//! waiter moves from its home lane to the meeting lane by leaving first.
//! Node liveness is never read by a script: each node passes its view of
//! the registry (at most one beat old). The core modules' docs say what
//! each step leaves open.
//!
//! **Several requests in flight.** A node has one connection per Redis
//! server (`link`), writes commands as they come without waiting for
//! earlier replies, and runs as many requests at once as their order
//! allows (`order`): one connection's, one client's, one room's and one
//! call's requests keep their order; unrelated ones overlap, and a signal
//! waits only for what concerns its own two connections (never for
//! another client's pairing). Each request is one function: in `requests`,
//! or in `waiting` for the stranger queue.
//!
//! Module map: `link` (one pipelined connection), `resp` (the wire
//! protocol), `topology` (which link serves which key), `order` (which
//! requests may be in flight together), `requests` and `waiting` (the
//! requests), `subscriber` (this node's channel), `heartbeat` (the
//! registry, outages, and each beat's chores).
//!
//! **Cluster.** On a Redis Cluster (`topology`) each command goes to the
//! primary of its key's slot, the stranger queue has
//! [`layout::CLUSTER_LANES`] lanes, and node channels are sharded
//! (`SPUBLISH`/`SSUBSCRIBE`, `subscriber`). On one plain `redis-server`
//! everything is on one connection, the queue is one lane, and channels
//! are plain pub/sub.
//!
//! **Versions.** The key layout has a version
//! ([`layout::VERSION`]); a node refuses to start on a store written by
//! another layout (the registry says which, and layout 1 left its own
//! keys), and a running node that finds another layout's registry stops
//! serving: two versions never share a store without knowing it.
//!
//! An entry (a waiter, a room member) counts only while its node's token
//! is alive: a dead node's entries die with its token, and a node back from
//! an outage takes a new token, so whatever it left behind (leaves and
//! dequeues that failed while Redis was away) is dead at once.
//!
//! Client keys are the HMACs of `identity` (hex); a room is known by the
//! SHA-256 of its name, and a lock by its verifier (the passphrase never
//! reaches a server); no address, room name, SDP or candidate is ever
//! stored. Signalling for a connection on another node is published on
//! that node's channel and never stored.
//!
//! Losing Redis (a connection to it breaking, or reconnecting: a restarted
//! server may have lost everything), or finding this node's token gone
//! from the registry, closes every connection with 1012 "backplane
//! unavailable": clients show "Reconnecting…" and retry; calls carry on
//! peer to peer. New connections are refused the same way until Redis
//! answers again; then the node takes a new token, restores the shared
//! secret and serves.

mod heartbeat;
mod link;
mod order;
mod requests;
mod resp;
mod subscriber;
mod topology;
mod waiting;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use earshot_core::ConnId;
use earshot_core::backplane::layout::{self, Layout};
use earshot_core::backplane::nodes::{self, BeatReply, Liveness};
use earshot_core::backplane::script::Script;
use earshot_core::backplane::scripts::Scripts;
use earshot_core::backplane::{Event, NodeId, Request, decode_remote};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::link::{Addr, Target};
use self::resp::{Cmd, Value};
use self::subscriber::Subscription;
use self::topology::Topology;
use self::waiting::Placed;
use crate::hub::Hub;
use crate::identity::Keyer;

/// How often a node proves it is alive, and how long the proof lasts.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const NODE_TTL: Duration = Duration::from_secs(3);
/// Dead tokens are forgotten by the registry this long after they expired.
const FORGET_AFTER: Duration = Duration::from_secs(600);
const WAITER_TTL: Duration = Duration::from_secs(120);
const ROOM_TTL: Duration = Duration::from_secs(120);
const CALL_TTL: Duration = Duration::from_secs(120);
/// Entries are refreshed (and lanes swept) every this many heartbeats.
const REFRESH_BEATS: u32 = 30;
const SCAN_LIMIT: usize = 64;
const SWEEP_LIMIT: usize = 256;

/// A node's connection to Redis.
pub struct Redis {
    topology: Topology,
    layout: Layout,
    node: NodeId,
    /// This node's token in the registry; a new one after an outage.
    token: Mutex<String>,
    scripts: Scripts,
    /// This node's view of the registry: which tokens are dead.
    view: Mutex<Liveness>,
    /// This node's waiters: the lane each waits in, and what moving it
    /// needs.
    placed: Mutex<HashMap<ConnId, Placed>>,
    /// This node's waiters a join took before the answer that they wait
    /// came back.
    taken: Mutex<std::collections::HashSet<ConnId>>,
    /// Searches this node sees a second: a quiet node sends them all to
    /// the meeting lane.
    joins: Mutex<earshot_core::backplane::queue::JoinRate>,
    subscribed: AtomicBool,
    /// The first subscription, made before serving so that nothing
    /// published to this node is missed.
    first_subscription: tokio::sync::Mutex<Option<Subscription>>,
    /// The links' generations when this node last (re)registered: a link
    /// that connected again since may face a Redis that lost everything.
    generations: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The node's clock: milliseconds since the epoch, the time every script
/// is given.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where `--redis URL` points, and how to log in.
fn target(url: &str) -> anyhow::Result<Target> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().context("bad --redis URL")?;
    let addr = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
        redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
        _ => bail!("--redis: TLS is not supported"),
    };
    let settings = info.redis_settings();
    Ok(Target {
        addr,
        username: settings.username().map(str::to_owned),
        password: settings.password().map(str::to_owned),
        db: settings.db(),
    })
}

/// An `EVALSHA` of `script` on `keys` (the first routes it).
fn eval(script: &Script, keys: &[&str]) -> Cmd {
    let mut c = Cmd::new("EVALSHA");
    c.arg(script.sha.as_str()).arg(keys.len());
    for k in keys {
        c.key(k);
    }
    c
}

/// Sends `cmds` together (each on its own link) and waits for all replies.
async fn all(topology: &Topology, cmds: &[Cmd]) -> anyhow::Result<Vec<Value>> {
    let replies: Vec<_> = cmds.iter().map(|c| topology.send(c)).collect();
    let mut out = Vec::with_capacity(replies.len());
    for r in replies {
        match r.await? {
            Value::Error(e) => bail!("Redis: {e}"),
            v => out.push(v),
        }
    }
    Ok(out)
}

/// A beat's outcome, as the heartbeat loop sees it.
enum Beat {
    /// Renewed (`renewed`: the token was still there).
    Ok { renewed: bool },
    /// Another live token holds this node's number.
    Taken,
}

impl Redis {
    /// Connects, checks the store's key layout and claims a node number no
    /// live node holds. `rotation` is the client-key rotation period (a
    /// layout-1 node's secret names it).
    pub async fn connect(url: &str, rotation: Duration) -> anyhow::Result<Redis> {
        let seed = target(url)?;
        let scripts = Scripts::new();
        let sources = scripts.all().iter().map(|s| s.source.clone()).collect();
        // The links live as long as the process.
        let topology = Topology::discover(seed, sources, CancellationToken::new())
            .await
            .context("cannot reach Redis")?;
        check_no_layout_1(&topology, rotation).await?;
        let lanes = if topology.is_cluster() {
            layout::CLUSTER_LANES
        } else {
            1
        };
        let mut redis = Redis {
            topology,
            layout: Layout { lanes },
            node: 0,
            token: Mutex::new(String::new()),
            scripts,
            view: Mutex::new(Liveness::default()),
            placed: Mutex::new(HashMap::new()),
            taken: Mutex::default(),
            joins: Mutex::new(Default::default()),
            subscribed: AtomicBool::new(false),
            first_subscription: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
        };
        for _ in 0..32 {
            // Node 0 would make ids look like a single node's.
            redis.node = (crate::identity::random_u64() % u64::from(u16::MAX)) as NodeId + 1;
            *redis.token.lock().unwrap_or_else(|e| e.into_inner()) =
                nodes::new_token(now_ms(), crate::identity::random_u64());
            match redis.beat("").await.context("cannot register with Redis")? {
                Beat::Taken => continue,
                Beat::Ok { .. } => {}
            }
            tracing::info!(
                node = redis.node,
                lanes = redis.layout.lanes,
                cluster = redis.topology.is_cluster(),
                "registered with Redis"
            );
            let pubsub = redis
                .subscribe()
                .await
                .context("cannot subscribe to Redis")?;
            redis.first_subscription = tokio::sync::Mutex::new(Some(pubsub));
            redis.subscribed.store(true, Ordering::Relaxed);
            redis
                .generations
                .store(redis.topology.health().1, Ordering::Relaxed);
            return Ok(redis);
        }
        bail!("no free node number in Redis")
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    async fn subscribe(&self) -> anyhow::Result<Subscription> {
        let ch = self.layout.channel(self.node);
        let link = self
            .topology
            .link(self.topology.index_for_key(&ch))
            .context("no link for this node's channel")?;
        Ok(Subscription::open(link.target(), &ch, self.topology.is_cluster()).await?)
    }

    fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn view(&self) -> Liveness {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Renews this node's token (replacing `old`, if not empty) and takes
    /// the registry's view. A registry of this version with other lanes is
    /// adopted before anything is queued; another version is refused.
    async fn beat(&mut self, old: &str) -> anyhow::Result<Beat> {
        let reply = self.beat_once(old).await?;
        match reply {
            BeatReply::Layout(stamp) => match Layout::from_stamp(&stamp) {
                Some(theirs)
                    if self
                        .placed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .is_empty() =>
                {
                    self.layout = theirs;
                    match self.beat_once(old).await? {
                        BeatReply::Layout(stamp) => bail!(other_layout(&stamp)),
                        reply => Ok(self.take_view(reply)),
                    }
                }
                _ => bail!(other_layout(&stamp)),
            },
            reply => Ok(self.take_view(reply)),
        }
    }

    /// [`Redis::beat`] once the layout is settled.
    async fn renew(&self, old: &str) -> anyhow::Result<Beat> {
        match self.beat_once(old).await? {
            BeatReply::Layout(stamp) => bail!(other_layout(&stamp)),
            reply => Ok(self.take_view(reply)),
        }
    }

    async fn beat_once(&self, old: &str) -> anyhow::Result<BeatReply> {
        let now = now_ms();
        let mut c = eval(&self.scripts.heartbeat, &[layout::REGISTRY]);
        c.arg(self.node)
            .arg(self.token())
            .arg(old)
            .arg(now + millis(NODE_TTL))
            .arg(now)
            .arg(self.layout.stamp())
            .arg(now.saturating_sub(millis(FORGET_AFTER)));
        let v = all(&self.topology, &[c]).await?;
        let text = v[0].text().context("unexpected heartbeat reply")?;
        Ok(nodes::decode_beat(text)?)
    }

    fn take_view(&self, reply: BeatReply) -> Beat {
        match reply {
            BeatReply::Ok {
                renewed,
                born,
                tokens,
            } => {
                let view = Liveness::from_tokens(&tokens, born, now_ms());
                *self.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
                Beat::Ok { renewed }
            }
            BeatReply::Taken | BeatReply::Layout(_) => Beat::Taken,
        }
    }

    /// Agrees this period's client-key secret with the other nodes: the
    /// first to offer one sets it (`candidate`), everyone adopts it.
    pub async fn sync_secret(
        &self,
        keyer: &Keyer,
        rotation: Duration,
        candidate: [u8; 32],
    ) -> anyhow::Result<()> {
        let period = period(rotation);
        let current_key = self.layout.secret(period);
        let previous_key = self.layout.secret(period.wrapping_sub(1));
        let ttl = millis(rotation.saturating_mul(3));
        let mut set = Cmd::new("SET");
        set.key(&current_key)
            .arg(earshot_core::hex::encode(&candidate))
            .arg("NX")
            .arg("PX")
            .arg(ttl);
        let mut get = Cmd::new("GET");
        get.key(&current_key);
        let mut previous = Cmd::new("GET");
        previous.key(&previous_key);
        let v = all(&self.topology, &[set, get, previous]).await?;
        let current = v[1]
            .text()
            .and_then(earshot_core::hex::decode)
            .context("the shared secret in Redis is malformed")?;
        keyer.set_secrets(current, v[2].text().and_then(earshot_core::hex::decode));
        Ok(())
    }

    /// Runs the backplane until shutdown: requests, subscription, heartbeat.
    pub fn spawn(
        self: Arc<Self>,
        hub: Arc<Hub>,
        keyer: Arc<Keyer>,
        rotation: Duration,
        requests: UnboundedReceiver<Request>,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        tracker.spawn(requests::run(
            self.clone(),
            hub.clone(),
            requests,
            shutdown.clone(),
        ));
        tracker.spawn(self.clone().run_subscriber(hub.clone(), shutdown.clone()));
        tracker.spawn(self.run_heartbeat(hub, keyer, rotation, shutdown));
    }

    /// Receives what other nodes publish to this one; a lost subscription
    /// may have lost messages, so it counts as losing the backplane.
    async fn run_subscriber(self: Arc<Self>, hub: Arc<Hub>, shutdown: CancellationToken) {
        loop {
            let first = self.first_subscription.lock().await.take();
            let subscription = match first {
                Some(s) => Ok(Ok(s)),
                None => tokio::select! {
                    () = shutdown.cancelled() => return,
                    s = tokio::time::timeout(Duration::from_secs(2), self.subscribe()) => s,
                },
            };
            match subscription {
                Ok(Ok(mut subscription)) => {
                    self.subscribed.store(true, Ordering::Relaxed);
                    loop {
                        let msg = tokio::select! {
                            () = shutdown.cancelled() => return,
                            m = subscription.next() => m,
                        };
                        let Ok(payload) = msg else { break };
                        let Ok(payload) = String::from_utf8(payload) else {
                            continue;
                        };
                        match decode_remote(&payload) {
                            Ok(remote) => hub.backplane_event(Event::Remote(remote)),
                            Err(e) => tracing::debug!(error = %e, "dropped a backplane message"),
                        }
                    }
                    tracing::warn!("lost the Redis subscription");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to Redis"),
                Err(_) => tracing::debug!("subscribing to Redis timed out"),
            }
            self.subscribed.store(false, Ordering::Relaxed);
            hub.set_available(false);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// Refuses a store that a node of layout 1 (every key under `{earshot}:`)
/// used lately: the two would each see half of the service.
async fn check_no_layout_1(topology: &Topology, rotation: Duration) -> anyhow::Result<()> {
    let p = period(rotation);
    let mut c = Cmd::new("EXISTS");
    for k in layout::LAYOUT_1_KEYS {
        c.key(k);
    }
    c.key(&layout::layout_1_secret(p))
        .key(&layout::layout_1_secret(p.wrapping_sub(1)));
    let v = all(topology, &[c]).await?;
    if v[0].int().unwrap_or(0) > 0 {
        bail!(
            "this Redis holds Earshot state of key layout 1 (keys under '{{earshot}}:'), \
             written by an older version; this node uses layout {} and will not share the \
             store with it. Stop every older node, then delete those keys \
             (redis-cli --scan --pattern '{{earshot}}:*' | xargs -r redis-cli unlink), \
             or give this node another Redis",
            layout::VERSION
        );
    }
    Ok(())
}

/// Why a node will not use a store whose registry says `stamp`.
fn other_layout(stamp: &str) -> String {
    format!(
        "this Redis is in use by Earshot nodes of another key layout ({stamp:?} in {}); this \
         node uses layout {}. Nodes of two layouts would each see half of the service: stop \
         the other nodes first (their registry entry expires a few seconds after the last one \
         stops), or give this node another Redis",
        layout::REGISTRY,
        layout::VERSION
    )
}

/// The number of the key-rotation period now: the same on every node.
fn period(rotation: Duration) -> u64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs / rotation.as_secs().max(1)
}

fn random_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    for chunk in s.chunks_mut(8) {
        chunk.copy_from_slice(&crate::identity::random_u64().to_le_bytes());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_through_hex() {
        let s = random_secret();
        assert_eq!(
            earshot_core::hex::decode(&earshot_core::hex::encode(&s)),
            Some(s)
        );
        assert_eq!(earshot_core::hex::decode::<32>("zz"), None);
        assert_eq!(earshot_core::hex::decode::<32>(&"é".repeat(32)), None);
    }
}
