//! The Redis backplane: what several `earshot` nodes share (`--redis URL`).
//!
//! The switchboard decides everything; this module only runs its
//! [`Request`]s on Redis and feeds the answers back as [`Event`]s. With no
//! `--redis` none of this runs: the switchboard's own in-memory structures
//! are the (single-node) backplane, exactly as before.
//!
//! Redis layout (every key has a TTL; all keys share the `{earshot}` hash
//! tag, so in a Redis Cluster they live in one slot and the scripts stay
//! atomic):
//!
//! | key | what | TTL |
//! |-----|------|-----|
//! | `{earshot}:node:<n>` | node `n` is alive: its current token | 3 s, refreshed every 1 s |
//! | `{earshot}:queue` | sorted set of waiting connection ids, by arrival | 1 day, refreshed by every sweep |
//! | `{earshot}:w:<conn>` | one waiter: node and its token, client key, interest tags, when it will take anyone, country | 2 min, refreshed every 30 s |
//! | `{earshot}:seq` | arrival counter for the queue | 1 day |
//! | `{earshot}:apart:<conn>:<conn>` | two connections kept apart (skip, report) | the cooldown |
//! | `{earshot}:block:<key>:<key>` | two clients kept apart (report) | key memory (48 h) |
//! | `{earshot}:ban:<key>` | a banned client | the ban |
//! | `{earshot}:rl:connect:<key>` | a client's connect allowance, a token bucket shared by all nodes | until it is full again (at most burst × interval: 60 s) |
//! | `{earshot}:rl:search:<key>` | a client's search allowance, a token bucket shared by all nodes | until it is full again (at most burst × interval: 60 s) |
//! | `{earshot}:rl:report:<key>` | a client's report allowance (its strikes beyond it do not count) | until it is full again (20 min) |
//! | `{earshot}:rl:room:<key>` | a client's room creations | until it is full again (5 min) |
//! | `{earshot}:strikes:<key>` | strikes against a client from every node (at most 8): reporter key → when, weight, network keys, when the reporter arrived, room tag; `n` bans so far | the strike window (24 h) past the last strike |
//! | `{earshot}:call:<call>` | a call's two sides: `<node>:<conn> <node>:<conn>`; deleted when it ends | 2 min, refreshed every 30 s by nodes with a side in it |
//! | `{earshot}:room:<hash>` | a room: `m:<peer>` → node, token, connection and client key of each member, `next` peer id, `lock` verifier, `x:<key>` removed clients | 2 min, refreshed every 30 s by nodes with members |
//! | `{earshot}:secret:<period>` | the client-key HMAC secret of a rotation period | 3 periods |
//!
//! An entry counts only while its node's heartbeat holds the token it was
//! written under: a dead node's entries vanish with its heartbeat, and a
//! node back from an outage takes a new token, so whatever it left behind
//! (leaves and dequeues that failed while Redis was away) is dead at once.
//!
//! Client keys are the HMACs of `identity` (hex); a room is known by the
//! SHA-256 of its name, and a lock by its verifier (the passphrase never
//! reaches a server); no address, room name, SDP or candidate is ever stored. Signalling for a connection on another node
//! is published on that node's channel `{earshot}:ch:<n>` and never stored.
//!
//! Pairing is one Lua script ([`PAIR`]): it charges a search the client
//! made to the client's shared allowance, refuses a banned joiner, scans
//! the oldest waiters, drops those of dead nodes, skips banned, kept-apart
//! and blocked ones, and takes the first compatible waiter out of the queue,
//! or queues the joiner. Per-client allowances are charged inside the
//! script that does the work (searches in [`PAIR`], reports in the strike
//! script, `earshot_core::moderation::STRIKE_LUA`, kept beside the Rust rule it mirrors,
//! room creations in [`ROOM_JOIN`]), so they cost no extra round trip;
//! connects take one ([`CONNECT`]), and one over the allowance is closed
//! once it answers. The per-connection message rate stays with the
//! connection's node, and so does the count of a client's open connections. Nodes watch the heartbeats of the nodes their
//! calls reach and end those calls when one dies ([`Event::NodeDown`]); a
//! sweep every beat removes dead nodes' waiters.
//!
//! Requests are pipelined: a node has one connection per Redis server
//! (`link`), writes commands as they come without waiting for earlier
//! replies, and runs as many requests at once as their order allows
//! (`order`): one connection's, one client's, one room's and one call's
//! requests keep their order; unrelated ones overlap, and a signal waits
//! only for what concerns its own two connections (never for another
//! client's pairing script). Each request is one function in `requests`.
//!
//! Losing Redis (a connection to it breaking, or reconnecting), or finding
//! this node's heartbeat gone (a Redis restart),
//! closes every connection with 1012 "backplane unavailable": clients show
//! "Reconnecting…" and retry; calls carry on peer to peer. New connections
//! are refused the same way until Redis answers again; then the node
//! restores the shared secret, purges its own stale waiters and serves.

mod link;
mod order;
mod requests;
mod resp;
mod subscriber;
mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use earshot_core::backplane::script::Script;
use earshot_core::backplane::{self, Event, NodeId, Request, decode_remote};
use earshot_core::moderation::STRIKE_LUA;
use earshot_core::{ClientKey, ConnId};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::link::{Addr, Target};
use self::resp::{Cmd, Value};
use self::subscriber::Subscription;
use self::topology::Topology;
use crate::hub::Hub;
use crate::identity::Keyer;

const PREFIX: &str = "{earshot}:";

/// How often a node proves it is alive, and how long the proof lasts.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
pub const NODE_TTL: Duration = Duration::from_secs(3);
const WAITER_TTL: Duration = Duration::from_secs(120);
const ROOM_TTL: Duration = Duration::from_secs(120);
const CALL_TTL: Duration = Duration::from_secs(120);
/// Waiter entries are refreshed every this many heartbeats.
const WAITER_REFRESH_BEATS: u32 = 30;
const SCAN_LIMIT: usize = 64;
const SWEEP_LIMIT: usize = 256;

/// Lua, put before the scripts that use it: `take(key, burst, every_ms,
/// now_ms)` takes one token from a client's allowance, a token bucket in
/// the hash `key` (`l`: ms of refill banked, `t`: when) shared by every
/// node and kept only until it is full again (the same arithmetic as
/// `earshot_core::ratelimit::TokenBucket`). Answers 0, or the ms until a
/// token is there.
pub const TAKE: &str = r#"
local function take(rk, burst, every, now)
  every = tonumber(every)
  local cap = every * tonumber(burst)
  local level, at = cap, now
  local b = redis.call('HMGET', rk, 'l', 't')
  if b[1] then level, at = tonumber(b[1]), tonumber(b[2]) end
  level = math.min(cap, level + math.max(0, now - at))
  if level < every then return every - level end
  level = level - every
  redis.call('HSET', rk, 'l', level, 't', now)
  redis.call('PEXPIRE', rk, cap - level + 1)
  return 0
end
"#;

/// Charges a new connection to its client's connect allowance ([`TAKE`]).
/// ARGV: client key, burst, one more per this many ms. Answers 0, or the
/// ms until the next connect is allowed.
pub const CONNECT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return take('{earshot}:rl:connect:' .. ARGV[1], ARGV[2], ARGV[3], now)
"#;

/// Pairs a joiner with a waiter, or queues it. ARGV: conn, node, client key,
/// tags (JSON array), open (0/1), interest wait (ms), country ("" if none),
/// scan limit, entry TTL (ms), node token, and, for a search the client
/// made, its search allowance: burst and one more per this many ms ("" and
/// "" for a join again), charged with [`TAKE`]. Answers the JSON `decode_pair_reply` reads.
pub const PAIR: &str = r#"
local P = '{earshot}:'
local me, node, key = ARGV[1], ARGV[2], ARGV[3]
local tags = cjson.decode(ARGV[4])
local open = ARGV[5] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local q = P .. 'queue'
local seq = redis.call('ZSCORE', q, me)
redis.call('ZREM', q, me)
redis.call('DEL', P .. 'w:' .. me)
if ARGV[11] ~= '' then
  local wait = take(P .. 'rl:search:' .. key, ARGV[11], ARGV[12], now)
  if wait > 0 then return '{"r":"limited","ms":' .. wait .. '}' end
end
local ban = redis.call('PTTL', P .. 'ban:' .. key)
if ban > 0 then
  return '{"r":"banned","ms":' .. ban .. '}'
end
-- Connection ids are decimal u64s: longer means larger.
local function idpair(a, b)
  if #a < #b or (#a == #b and a < b) then return a .. ':' .. b end
  return b .. ':' .. a
end
local function keypair(a, b)
  if a < b then return a .. ':' .. b end
  return b .. ':' .. a
end
for _, c in ipairs(redis.call('ZRANGE', q, 0, tonumber(ARGV[8]) - 1)) do
  local raw = redis.call('GET', P .. 'w:' .. c)
  local e = raw and cjson.decode(raw)
  local live = e and e.v and redis.call('GET', P .. 'node:' .. e.n) == e.v
  if not live then
    redis.call('ZREM', q, c)
    redis.call('DEL', P .. 'w:' .. c)
  elseif redis.call('EXISTS', P .. 'ban:' .. e.k) == 0
      and redis.call('EXISTS', P .. 'apart:' .. idpair(me, c)) == 0
      and redis.call('EXISTS', P .. 'block:' .. keypair(key, e.k)) == 0 then
    local theirs = {}
    for _, x in ipairs(e.t) do theirs[x] = true end
    local shared = {}
    for _, x in ipairs(tags) do
      if theirs[x] then table.insert(shared, x) end
    end
    local they_open = #e.t == 0 or e.o <= now
    if #shared > 0 or ((#tags == 0 or open) and they_open) then
      redis.call('ZREM', q, c)
      redis.call('DEL', P .. 'w:' .. c)
      local sj = '[]'
      if #shared > 0 then sj = cjson.encode(shared) end
      local country = 'null'
      if e.c ~= '' then country = cjson.encode(e.c) end
      return '{"r":"matched","conn":"' .. c .. '","key":"' .. e.k .. '","shared":' .. sj
        .. ',"country":' .. country .. '}'
    end
  end
end
if not seq then seq = redis.call('INCR', P .. 'seq') end
redis.call('PEXPIRE', P .. 'seq', 86400000)
redis.call('ZADD', q, seq, me)
redis.call('PEXPIRE', q, 86400000)
local open_at = now
if #tags > 0 and not open then open_at = now + tonumber(ARGV[6]) end
redis.call('SET', P .. 'w:' .. me,
  cjson.encode({n = node, v = ARGV[10], k = key, t = tags, o = open_at, c = ARGV[7]}),
  'PX', ARGV[9])
return '{"r":"queued"}'
"#;

/// Joins a room. ARGV: room hash, conn, node, client key, verifier hex
/// ("" if none), max size, TTL (ms), node token, passphrase attempts on one
/// room (burst), one more per this many ms, and the client's room
/// creations (burst, one more per this many ms; charged with [`TAKE`] when
/// the room has no member yet). A locked room's attempts are a token bucket
/// in the room's hash (`ab`, `at`): shared by all nodes, so a lock cannot be
/// guessed faster by spreading over nodes. Members of dead nodes are
/// dropped first. Answers the JSON `decode_room_reply` reads.
pub const ROOM_JOIN: &str = r#"
local P = '{earshot}:'
local k = P .. 'room:' .. ARGV[1]
local conn, node, key, ver = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HEXISTS', k, 'x:' .. key) == 1 then
  return '{"r":"refused","code":"removed"}'
end
local flat = redis.call('HGETALL', k)
local others = {}
local alive = {}
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  if string.sub(f, 1, 2) == 'm:' then
    local n, t, c, mk = string.match(v, '^(%d+):(%x+):(%d+):(%x+)$')
    local nt = n and (n .. ':' .. t)
    if nt and alive[nt] == nil then
      alive[nt] = redis.call('GET', P .. 'node:' .. n) == t
    end
    if nt and alive[nt] then
      table.insert(others, '[' .. string.sub(f, 3) .. ',"' .. c .. '","' .. mk .. '"]')
    else
      redis.call('HDEL', k, f)
    end
  end
end
if #others >= tonumber(ARGV[6]) then
  return '{"r":"refused","code":"room_full"}'
end
local lock = redis.call('HGET', k, 'lock')
if lock then
  if ver == '' then return '{"r":"refused","code":"passphrase_required"}' end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local burst, every = tonumber(ARGV[9]), tonumber(ARGV[10])
  local tokens = tonumber(redis.call('HGET', k, 'ab') or burst)
  local at = tonumber(redis.call('HGET', k, 'at') or now)
  local gained = math.floor((now - at) / every)
  if gained > 0 then
    tokens = math.min(burst, tokens + gained)
    at = at + gained * every
  end
  if tokens >= burst then at = now end
  if tokens < 1 then
    return '{"r":"refused","code":"rate_limited","ms":' .. math.max(1, at + every - now) .. '}'
  end
  redis.call('HSET', k, 'ab', tokens - 1, 'at', at)
  if ver ~= lock then return '{"r":"refused","code":"wrong_passphrase"}' end
end
if #others == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local wait = take(P .. 'rl:room:' .. key, ARGV[11], ARGV[12], now)
  if wait > 0 then return '{"r":"refused","code":"rate_limited","ms":' .. wait .. '}' end
end
local peer = redis.call('HINCRBY', k, 'next', 1)
redis.call('HSET', k, 'm:' .. peer, node .. ':' .. ARGV[8] .. ':' .. conn .. ':' .. key)
redis.call('PEXPIRE', k, ARGV[7])
local locked = 'false'
if lock then locked = 'true' end
return '{"r":"joined","peer":' .. peer .. ',"locked":' .. locked .. ',"others":['
  .. table.concat(others, ',') .. ']}'
"#;

/// Takes a member out of a room (ARGV: room hash, peer); the room goes with
/// its last member, lock and removals included.
const ROOM_LEAVE: &str = r#"
local k = '{earshot}:room:' .. ARGV[1]
redis.call('HDEL', k, 'm:' .. ARGV[2])
for _, f in ipairs(redis.call('HKEYS', k)) do
  if string.sub(f, 1, 2) == 'm:' then return 0 end
end
redis.call('DEL', k)
return 1
"#;

/// Removes waiters of dead nodes, or written under a node's old token, from
/// the oldest ARGV[1] entries.
const SWEEP: &str = r#"
local P = '{earshot}:'
local q = P .. 'queue'
local removed = 0
for _, c in ipairs(redis.call('ZRANGE', q, 0, tonumber(ARGV[1]) - 1)) do
  local raw = redis.call('GET', P .. 'w:' .. c)
  local e = raw and cjson.decode(raw)
  if not (e and e.v and redis.call('GET', P .. 'node:' .. e.n) == e.v) then
    redis.call('ZREM', q, c)
    redis.call('DEL', P .. 'w:' .. c)
    removed = removed + 1
  end
end
if redis.call('EXISTS', q) == 1 then redis.call('PEXPIRE', q, 86400000) end
return removed
"#;

/// Refreshes this node's heartbeat. ARGV: node, token, TTL (ms), the
/// token it replaces. Answers 1 (refreshed), 2 (was missing: new, or Redis
/// lost it) or 0 (another node holds the number).
const HEARTBEAT_SCRIPT: &str = r#"
local k = '{earshot}:node:' .. ARGV[1]
local v = redis.call('GET', k)
if v and v ~= ARGV[2] and v ~= ARGV[4] then return 0 end
redis.call('SET', k, ARGV[2], 'PX', ARGV[3])
if v then return 1 end
return 2
"#;

/// Removes this node's heartbeat if it still holds this node's token.
/// ARGV: node, token.
const LEAVE: &str = r#"
local k = '{earshot}:node:' .. ARGV[1]
if redis.call('GET', k) == ARGV[2] then return redis.call('DEL', k) end
return 0
"#;

/// The scripts a node runs, loaded on every link.
struct Scripts {
    pair: Script,
    sweep: Script,
    heartbeat: Script,
    room_join: Script,
    room_leave: Script,
    strike: Script,
    connect: Script,
    leave: Script,
    dequeue: Script,
}

/// Takes a waiter out of the queue (ARGV: conn).
const DEQUEUE: &str = r#"
redis.call('ZREM', '{earshot}:queue', ARGV[1])
return redis.call('DEL', '{earshot}:w:' .. ARGV[1])
"#;

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            pair: Script::new("pair", format!("{TAKE}{PAIR}")),
            sweep: Script::new("sweep", SWEEP),
            heartbeat: Script::new("heartbeat", HEARTBEAT_SCRIPT),
            room_join: Script::new("room_join", format!("{TAKE}{ROOM_JOIN}")),
            room_leave: Script::new("room_leave", ROOM_LEAVE),
            strike: Script::new("strike", format!("{TAKE}{STRIKE_LUA}")),
            connect: Script::new("connect", format!("{TAKE}{CONNECT}")),
            leave: Script::new("leave", LEAVE),
            dequeue: Script::new("dequeue", DEQUEUE),
        }
    }

    fn sources(&self) -> Vec<String> {
        [
            &self.pair,
            &self.sweep,
            &self.heartbeat,
            &self.room_join,
            &self.room_leave,
            &self.strike,
            &self.connect,
            &self.leave,
            &self.dequeue,
        ]
        .iter()
        .map(|s| s.source.clone())
        .collect()
    }
}

/// A node's connection to Redis.
pub struct Redis {
    topology: Topology,
    node: NodeId,
    /// This node's token in its heartbeat key; a new one after an outage.
    token: std::sync::Mutex<String>,
    scripts: Scripts,
    subscribed: AtomicBool,
    /// The first subscription, made before serving so that nothing
    /// published to this node is missed.
    first_subscription: tokio::sync::Mutex<Option<Subscription>>,
    /// The links' generations when this node last (re)registered: a link
    /// that connected again since may face a Redis that lost everything.
    generations: std::sync::atomic::AtomicU64,
}

fn key(k: &str) -> String {
    format!("{PREFIX}{k}")
}

fn channel(node: NodeId) -> String {
    key(&format!("ch:{node}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Where `--redis URL` points, and how to log in.
fn target(url: &str) -> anyhow::Result<Target> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().context("bad --redis URL")?;
    let addr = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
        redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
        _ => anyhow::bail!("--redis: TLS is not supported"),
    };
    let settings = info.redis_settings();
    Ok(Target {
        addr,
        username: settings.username().map(str::to_owned),
        password: settings.password().map(str::to_owned),
        db: settings.db(),
    })
}

/// Sends `cmds` together (each on its own link) and waits for all replies.
async fn all(topology: &Topology, cmds: &[Cmd]) -> anyhow::Result<Vec<Value>> {
    let replies: Vec<_> = cmds.iter().map(|c| topology.send(c)).collect();
    let mut out = Vec::with_capacity(replies.len());
    for r in replies {
        match r.await? {
            Value::Error(e) => anyhow::bail!("Redis: {e}"),
            v => out.push(v),
        }
    }
    Ok(out)
}

impl Redis {
    /// Connects and claims a node number no live node holds.
    pub async fn connect(url: &str) -> anyhow::Result<Redis> {
        let seed = target(url)?;
        let scripts = Scripts::new();
        // The links live as long as the process.
        let topology = Topology::discover(seed, scripts.sources(), CancellationToken::new())
            .await
            .context("cannot reach Redis")?;
        let mut redis = Redis {
            topology,
            node: 0,
            token: std::sync::Mutex::new(new_token()),
            scripts,
            subscribed: AtomicBool::new(false),
            first_subscription: tokio::sync::Mutex::new(None),
            generations: std::sync::atomic::AtomicU64::new(0),
        };
        for _ in 0..32 {
            // Node 0 would make ids look like a single node's.
            redis.node = (crate::identity::random_u64() % u64::from(u16::MAX)) as NodeId + 1;
            if redis.beat().await.context("cannot register with Redis")? == 2 {
                tracing::info!(node = redis.node, "registered with Redis");
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
        }
        anyhow::bail!("no free node number in Redis")
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    async fn subscribe(&self) -> anyhow::Result<Subscription> {
        let ch = channel(self.node);
        let link = self
            .topology
            .link(self.topology.index_for_key(&ch))
            .context("no link for this node's channel")?;
        Ok(Subscription::open(link.target(), &ch, self.topology.is_cluster()).await?)
    }

    fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A call of `script`; `route` names a key in the slot it works on.
    fn eval(&self, script: &Script, route: &str) -> Cmd {
        let mut c = Cmd::new("EVALSHA");
        c.arg(script.sha.as_str()).arg(0u8).route(route);
        c
    }

    async fn beat(&self) -> anyhow::Result<i64> {
        self.beat_replacing(&self.token()).await
    }

    async fn beat_replacing(&self, old: &str) -> anyhow::Result<i64> {
        let mut c = self.eval(&self.scripts.heartbeat, &key("node"));
        c.arg(self.node)
            .arg(self.token())
            .arg(millis(NODE_TTL))
            .arg(old);
        let v = all(&self.topology, &[c]).await?;
        v[0].int().context("unexpected heartbeat reply")
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
        let current_key = key(&format!("secret:{period}"));
        let previous_key = key(&format!("secret:{}", period.wrapping_sub(1)));
        let ttl = millis(rotation.saturating_mul(3));
        let mut set = Cmd::new("SET");
        set.key(&current_key)
            .arg(hex32(&candidate))
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
            .and_then(unhex32)
            .context("the shared secret in Redis is malformed")?;
        keyer.set_secrets(current, v[2].text().and_then(unhex32));
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

    async fn run_heartbeat(
        self: Arc<Self>,
        hub: Arc<Hub>,
        keyer: Arc<Keyer>,
        rotation: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats = 0u32;
        let mut tokens = HashMap::new();
        let mut period = period(rotation);
        // Whether Redis may have lost what this node put there.
        let mut lost = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Leaving on purpose: the other nodes end this node's
                    // calls at their next beat rather than after the TTL.
                    let mut leave = self.eval(&self.scripts.leave, &key("node"));
                    leave.arg(self.node).arg(self.token());
                    let _ = tokio::time::timeout(HEARTBEAT, self.topology.send(&leave)).await;
                    return;
                }
                _ = tick.tick() => {}
            }
            beats = beats.wrapping_add(1);
            if let Err(e) = self.topology.refresh_if_stale().await {
                tracing::warn!(error = %e, "cannot read the Redis Cluster's slot map");
            }
            let (up, generations) = self.topology.health();
            if !up || generations != self.generations.load(Ordering::Relaxed) {
                // A link broke, or connected again: what this node wrote
                // there may be gone.
                if !lost {
                    tracing::warn!("lost a connection to Redis");
                    hub.set_available(false);
                }
                lost = true;
            }
            match self.beat().await {
                Ok(1) if !lost => {}
                Ok(1 | 2) if up => {
                    if !lost {
                        tracing::warn!("this node's state in Redis is gone; starting afresh");
                        hub.set_available(false);
                    }
                    lost = self.recover(&hub, &keyer, rotation).await.is_err();
                }
                Ok(0) => {
                    tracing::error!(node = self.node, "another node holds this node's number");
                    hub.set_available(false);
                    lost = true;
                }
                Ok(_) => {}
                Err(e) => {
                    if !lost {
                        tracing::warn!(error = %e, "lost Redis");
                    }
                    hub.set_available(false);
                    lost = true;
                }
            }
            if lost {
                continue;
            }
            if !self.subscribed.load(Ordering::Relaxed) {
                // Closed by the subscriber; what this node queued is stale.
                lost = true;
                continue;
            }
            hub.set_available(true);
            if let Err(e) = self.watch(&hub, beats, &mut tokens).await {
                tracing::debug!(error = %e, "heartbeat chores failed");
            }
            let now = self::period(rotation);
            if now != period {
                let fresh = random_secret();
                match self.sync_secret(&keyer, rotation, fresh).await {
                    Ok(()) => period = now,
                    Err(e) => tracing::warn!(error = %e, "cannot rotate the shared secret"),
                }
            }
        }
    }

    /// Back from an outage: a new token (what this node left in Redis is
    /// dead), the shared secret restored (ours, if Redis lost it), serve.
    async fn recover(&self, hub: &Hub, keyer: &Keyer, rotation: Duration) -> anyhow::Result<()> {
        if !self.subscribed.load(Ordering::Relaxed) {
            anyhow::bail!("not subscribed yet");
        }
        let generations = self.topology.health().1;
        let old = std::mem::replace(
            &mut *self.token.lock().unwrap_or_else(|e| e.into_inner()),
            new_token(),
        );
        if self.beat_replacing(&old).await? == 0 {
            anyhow::bail!("another node holds this node's number");
        }
        self.sync_secret(keyer, rotation, keyer.secret()).await?;
        self.generations.store(generations, Ordering::Relaxed);
        tracing::info!("Redis is back");
        hub.set_available(true);
        Ok(())
    }

    /// Ends calls and room memberships with nodes that died, or came back
    /// from an outage under a new token (they closed every connection then,
    /// and could not tell anyone); sweeps dead waiters; keeps ours alive.
    /// `tokens`: the token last seen for each watched node.
    async fn watch(
        &self,
        hub: &Hub,
        beats: u32,
        tokens: &mut HashMap<NodeId, String>,
    ) -> anyhow::Result<()> {
        let nodes = hub.remote_nodes();
        tokens.retain(|n, _| nodes.contains(n));
        if !nodes.is_empty() {
            let gets: Vec<Cmd> = nodes
                .iter()
                .map(|n| {
                    let mut c = Cmd::new("GET");
                    c.key(&key(&format!("node:{n}")));
                    c
                })
                .collect();
            let now = all(&self.topology, &gets).await?;
            for (&n, token) in nodes.iter().zip(now) {
                let token = token.text().map(str::to_owned);
                let same = match (&token, tokens.get(&n)) {
                    (Some(t), Some(seen)) => t == seen,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if same {
                    if let Some(t) = token {
                        tokens.insert(n, t);
                    }
                } else {
                    tokens.remove(&n);
                    hub.backplane_event(Event::NodeDown(n));
                }
            }
        }
        let mut sweep = self.eval(&self.scripts.sweep, &key("queue"));
        sweep.arg(SWEEP_LIMIT);
        all(&self.topology, &[sweep]).await?;
        if beats.is_multiple_of(WAITER_REFRESH_BEATS) {
            let mut touch = Vec::new();
            let expire = |k: String, ttl: Duration| {
                let mut c = Cmd::new("PEXPIRE");
                c.key(&k).arg(millis(ttl));
                c
            };
            for id in hub.shared_waiters() {
                touch.push(expire(waiter_key(id), WAITER_TTL));
            }
            for call in hub.shared_calls() {
                touch.push(expire(call_key(call), CALL_TTL));
            }
            for room in hub.shared_rooms() {
                touch.push(expire(key(&format!("room:{room}")), ROOM_TTL));
            }
            for chunk in touch.chunks(512) {
                all(&self.topology, chunk).await?;
            }
        }
        Ok(())
    }
}

fn new_token() -> String {
    format!("{:016x}", crate::identity::random_u64())
}

fn waiter_key(id: ConnId) -> String {
    key(&format!("w:{}", id.0))
}

fn call_key(call: earshot_core::protocol::CallId) -> String {
    key(&format!("call:{call}"))
}

fn ban_key(k: &ClientKey) -> String {
    key(&format!("ban:{}", backplane::hex(k)))
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

fn hex32(b: &[u8; 32]) -> String {
    backplane::hex_bytes(b)
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_through_hex() {
        let s = random_secret();
        assert_eq!(unhex32(&hex32(&s)), Some(s));
        assert_eq!(unhex32("zz"), None);
        assert_eq!(unhex32(&"é".repeat(32)), None);
    }
}
