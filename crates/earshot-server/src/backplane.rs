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
//! Losing Redis, or finding this node's heartbeat gone (a Redis restart),
//! closes every connection with 1012 "backplane unavailable": clients show
//! "Reconnecting…" and retry; calls carry on peer to peer. New connections
//! are refused the same way until Redis answers again; then the node
//! restores the shared secret, purges its own stale waiters and serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use earshot_core::backplane::{
    self, Event, NodeId, PairReply, Request, RoomReply, decode_pair_reply, decode_remote,
    decode_room_reply,
};
use earshot_core::moderation::STRIKE_LUA;
use earshot_core::{ClientKey, ConnId};
use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// A node's connection to Redis.
pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    node: NodeId,
    /// This node's token in its heartbeat key; a new one after an outage.
    token: std::sync::Mutex<String>,
    pair: redis::Script,
    sweep: redis::Script,
    heartbeat: redis::Script,
    room_join: redis::Script,
    room_leave: redis::Script,
    strike: redis::Script,
    connect: redis::Script,
    leave: redis::Script,
    subscribed: AtomicBool,
    /// The first subscription, made before serving so that nothing
    /// published to this node is missed.
    first_subscription: std::sync::Mutex<Option<redis::aio::PubSub>>,
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

impl Redis {
    /// Connects and claims a node number no live node holds.
    pub async fn connect(url: &str) -> anyhow::Result<Redis> {
        let client = redis::Client::open(url).context("bad --redis URL")?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .context("cannot reach Redis")?;
        let mut redis = Redis {
            client,
            conn,
            node: 0,
            token: std::sync::Mutex::new(new_token()),
            pair: redis::Script::new(&format!("{TAKE}{PAIR}")),
            sweep: redis::Script::new(SWEEP),
            heartbeat: redis::Script::new(HEARTBEAT_SCRIPT),
            room_join: redis::Script::new(&format!("{TAKE}{ROOM_JOIN}")),
            room_leave: redis::Script::new(ROOM_LEAVE),
            strike: redis::Script::new(&format!("{TAKE}{STRIKE_LUA}")),
            connect: redis::Script::new(&format!("{TAKE}{CONNECT}")),
            leave: redis::Script::new(LEAVE),
            subscribed: AtomicBool::new(false),
            first_subscription: std::sync::Mutex::new(None),
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
                redis.first_subscription = std::sync::Mutex::new(Some(pubsub));
                redis.subscribed.store(true, Ordering::Relaxed);
                return Ok(redis);
            }
        }
        anyhow::bail!("no free node number in Redis")
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut p = self.client.get_async_pubsub().await?;
        p.subscribe(channel(self.node)).await?;
        Ok(p)
    }

    fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn beat(&self) -> redis::RedisResult<i64> {
        self.beat_replacing(&self.token()).await
    }

    async fn beat_replacing(&self, old: &str) -> redis::RedisResult<i64> {
        self.heartbeat
            .arg(self.node)
            .arg(self.token())
            .arg(millis(NODE_TTL))
            .arg(old)
            .invoke_async(&mut self.conn.clone())
            .await
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
        let mut conn = self.conn.clone();
        let current_key = key(&format!("secret:{period}"));
        let ttl = millis(rotation.saturating_mul(3));
        let _: Option<String> = redis::cmd("SET")
            .arg(&current_key)
            .arg(earshot_core::hex::encode(&candidate))
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await?;
        let current: Option<String> = conn.get(&current_key).await?;
        let previous: Option<String> = conn
            .get(key(&format!("secret:{}", period.wrapping_sub(1))))
            .await?;
        let current = current
            .as_deref()
            .and_then(earshot_core::hex::decode)
            .context("the shared secret in Redis is malformed")?;
        keyer.set_secrets(
            current,
            previous.as_deref().and_then(earshot_core::hex::decode),
        );
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
        tracker.spawn(
            self.clone()
                .run_requests(hub.clone(), requests, shutdown.clone()),
        );
        tracker.spawn(self.clone().run_subscriber(hub.clone(), shutdown.clone()));
        tracker.spawn(self.run_heartbeat(hub, keyer, rotation, shutdown));
    }

    async fn run_requests(
        self: Arc<Self>,
        hub: Arc<Hub>,
        mut requests: UnboundedReceiver<Request>,
        shutdown: CancellationToken,
    ) {
        loop {
            let request = tokio::select! {
                () = shutdown.cancelled() => return,
                r = requests.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            self.execute(&hub, request).await;
        }
    }

    async fn execute(&self, hub: &Hub, request: Request) {
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<()> = match request {
            Request::Enqueue(w) => {
                let id = w.conn;
                let tags = serde_json::to_string(&w.interests).expect("strings serialize");
                let reply: redis::RedisResult<String> = self
                    .pair
                    .arg(id.0)
                    .arg(self.node)
                    .arg(backplane::hex(&w.key))
                    .arg(tags)
                    .arg(u8::from(w.open))
                    .arg(millis(w.interest_wait))
                    .arg(w.country.as_ref().map_or("", |c| c.as_str()))
                    .arg(SCAN_LIMIT)
                    .arg(millis(WAITER_TTL))
                    .arg(self.token())
                    .arg(
                        w.limit
                            .map_or(String::new(), |(burst, _)| burst.to_string()),
                    )
                    .arg(
                        w.limit
                            .map_or(String::new(), |(_, every)| millis(every).to_string()),
                    )
                    .invoke_async(&mut conn)
                    .await;
                let event = match reply.map(|r| decode_pair_reply(&r)) {
                    Ok(Ok(PairReply::Queued)) => Event::Queued { conn: id },
                    Ok(Ok(PairReply::Banned { ttl })) => Event::Banned { conn: id, ttl },
                    Ok(Ok(PairReply::Limited { retry })) => Event::Limited { conn: id, retry },
                    Ok(Ok(PairReply::Matched(partner))) => Event::Paired { conn: id, partner },
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "unexpected reply from the pairing script");
                        Event::Failed { conn: id }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Redis failed a queue join");
                        Event::Failed { conn: id }
                    }
                };
                hub.backplane_event(event);
                Ok(())
            }
            Request::Connect {
                conn: id,
                key: k,
                allowance: (burst, every),
            } => {
                let wait: redis::RedisResult<u64> = self
                    .connect
                    .arg(backplane::hex(&k))
                    .arg(burst)
                    .arg(millis(every))
                    .invoke_async(&mut conn)
                    .await;
                wait.map(|ms| {
                    if ms > 0 {
                        hub.backplane_event(Event::TooManyConnects { conn: id });
                    }
                })
            }
            Request::Dequeue { conn: id } => {
                redis::pipe()
                    .atomic()
                    .zrem(key("queue"), id.0)
                    .del(key(&format!("w:{}", id.0)))
                    .query_async(&mut conn)
                    .await
            }
            Request::Publish(msg) => {
                let node = backplane::node_of(msg.to());
                conn.publish(channel(node), msg.encode()).await
            }
            Request::KeepApart { a, b, ttl } => {
                let (a, b) = (a.min(b), a.max(b));
                let k = key(&format!("apart:{}:{}", a.0, b.0));
                conn.pset_ex(k, 1, millis(ttl)).await
            }
            Request::Block { a, b, ttl } => {
                let (a, b) = (backplane::hex(&a), backplane::hex(&b));
                let (a, b) = if a < b { (a, b) } else { (b, a) };
                conn.pset_ex(key(&format!("block:{a}:{b}")), 1, millis(ttl))
                    .await
            }
            Request::Ban { key: k, ttl } => conn.pset_ex(ban_key(&k), 1, millis(ttl)).await,
            Request::Strike {
                key: k,
                reporter,
                weight,
                network,
                previous_network,
                room,
                age,
                rule,
            } => {
                let lengths: Vec<String> = rule
                    .ban_lengths
                    .iter()
                    .map(|&d| millis(d).to_string())
                    .collect();
                let banned: redis::RedisResult<i64> = self
                    .strike
                    .arg(backplane::hex(&k))
                    .arg(backplane::hex(&reporter))
                    .arg(weight)
                    .arg(millis(rule.window))
                    .arg(rule.reporters)
                    .arg(rule.weight)
                    .arg(lengths.join(","))
                    .arg(rule.reports.0)
                    .arg(millis(rule.reports.1))
                    .arg(backplane::hex(&network))
                    .arg(previous_network.map_or("-".to_owned(), |n| backplane::hex(&n)))
                    .arg(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
                    .arg(room.map_or("-".to_owned(), |r| format!("{r:016x}")))
                    .arg(u64::try_from(rule.together.as_millis()).unwrap_or(u64::MAX))
                    .arg(rule.max_strikes)
                    .invoke_async(&mut conn)
                    .await;
                banned.map(|ms| match ms {
                    -1 => tracing::debug!("a strike over the reporter's shared allowance"),
                    1.. => tracing::info!(ban_ms = ms, "pooled strikes completed a ban"),
                    _ => {}
                })
            }
            Request::CallStart { call, a, b } => {
                let sides = format!(
                    "{}:{} {}:{}",
                    backplane::node_of(a),
                    a.0,
                    backplane::node_of(b),
                    b.0
                );
                conn.pset_ex(call_key(call), sides, millis(CALL_TTL)).await
            }
            Request::CallEnd { call } => conn.del(call_key(call)).await,
            Request::RoomJoin {
                conn: id,
                room,
                key: k,
                verifier,
                max_size,
                attempts,
                creations,
            } => {
                let reply: redis::RedisResult<String> = self
                    .room_join
                    .arg(&room)
                    .arg(id.0)
                    .arg(self.node)
                    .arg(backplane::hex(&k))
                    .arg(
                        verifier
                            .as_ref()
                            .map(backplane::verifier_hex)
                            .unwrap_or_default(),
                    )
                    .arg(max_size)
                    .arg(millis(ROOM_TTL))
                    .arg(self.token())
                    .arg(attempts.0)
                    .arg(millis(attempts.1))
                    .arg(creations.0)
                    .arg(millis(creations.1))
                    .invoke_async(&mut conn)
                    .await;
                let event = match reply.map(|r| decode_room_reply(&r)) {
                    Ok(Ok(RoomReply::Joined {
                        peer,
                        others,
                        locked,
                    })) => Event::RoomJoined {
                        conn: id,
                        room,
                        peer,
                        others,
                        locked,
                    },
                    Ok(Ok(RoomReply::Refused(code, retry))) => Event::RoomRefused {
                        conn: id,
                        code,
                        retry,
                    },
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "unexpected reply from the room script");
                        Event::Failed { conn: id }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Redis failed a room join");
                        Event::Failed { conn: id }
                    }
                };
                hub.backplane_event(event);
                Ok(())
            }
            Request::RoomLeave { room, peer } => {
                self.room_leave
                    .arg(room)
                    .arg(peer)
                    .invoke_async(&mut conn)
                    .await
            }
            Request::RoomLock { room, verifier } => {
                let k = key(&format!("room:{room}"));
                match verifier {
                    Some(v) => conn.hset(k, "lock", backplane::verifier_hex(&v)).await,
                    None => conn.hdel(k, "lock").await,
                }
            }
            Request::RoomRemove { room, key: client } => {
                let k = key(&format!("room:{room}"));
                conn.hset(k, format!("x:{}", backplane::hex(&client)), 1)
                    .await
            }
            other => {
                tracing::warn!(?other, "backplane request not supported");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "a backplane request failed");
        }
    }

    /// Receives what other nodes publish to this one; a lost subscription
    /// may have lost messages, so it counts as losing the backplane.
    async fn run_subscriber(self: Arc<Self>, hub: Arc<Hub>, shutdown: CancellationToken) {
        loop {
            let first = self
                .first_subscription
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let pubsub = match first {
                Some(p) => Ok(Ok(p)),
                None => tokio::select! {
                    () = shutdown.cancelled() => return,
                    p = tokio::time::timeout(Duration::from_secs(2), self.subscribe()) => p,
                },
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    self.subscribed.store(true, Ordering::Relaxed);
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let msg = tokio::select! {
                            () = shutdown.cancelled() => return,
                            m = messages.next() => m,
                        };
                        let Some(msg) = msg else { break };
                        let Ok(payload) = msg.get_payload::<String>() else {
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
                    let mut leave = self.leave.prepare_invoke();
                    leave.arg(self.node).arg(self.token());
                    let mut conn = self.conn.clone();
                    let _ = tokio::time::timeout(HEARTBEAT, leave.invoke_async::<i64>(&mut conn))
                        .await;
                    return;
                }
                _ = tick.tick() => {}
            }
            beats = beats.wrapping_add(1);
            match self.beat().await {
                Ok(1) if !lost => {}
                Ok(1 | 2) => {
                    if !lost {
                        tracing::warn!("this node's state in Redis is gone; starting afresh");
                        hub.set_available(false);
                    }
                    lost = self.recover(&hub, &keyer, rotation).await.is_err();
                }
                Ok(_) => {
                    tracing::error!(node = self.node, "another node holds this node's number");
                    hub.set_available(false);
                    lost = true;
                }
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
        let old = std::mem::replace(
            &mut *self.token.lock().unwrap_or_else(|e| e.into_inner()),
            new_token(),
        );
        if self.beat_replacing(&old).await? == 0 {
            anyhow::bail!("another node holds this node's number");
        }
        self.sync_secret(keyer, rotation, keyer.secret()).await?;
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
    ) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let nodes = hub.remote_nodes();
        tokens.retain(|n, _| nodes.contains(n));
        if !nodes.is_empty() {
            let mut pipe = redis::pipe();
            for &n in &nodes {
                pipe.get(key(&format!("node:{n}")));
            }
            let now: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            for (&n, token) in nodes.iter().zip(now) {
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
        let _: i64 = self.sweep.arg(SWEEP_LIMIT).invoke_async(&mut conn).await?;
        if beats.is_multiple_of(WAITER_REFRESH_BEATS) {
            let waiters = hub.shared_waiters();
            for chunk in waiters.chunks(512) {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.pexpire(waiter_key(*id), millis(WAITER_TTL) as i64)
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
            }
            let calls = hub.shared_calls();
            for chunk in calls.chunks(512) {
                let mut pipe = redis::pipe();
                for &call in chunk {
                    pipe.pexpire(call_key(call), millis(CALL_TTL) as i64)
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
            }
            let rooms = hub.shared_rooms();
            for chunk in rooms.chunks(512) {
                let mut pipe = redis::pipe();
                for room in chunk {
                    pipe.pexpire(key(&format!("room:{room}")), millis(ROOM_TTL) as i64)
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
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
