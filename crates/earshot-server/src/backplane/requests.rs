//! The switchboard's requests, one function each, and the loop that runs
//! them: as many at once as [`Order`] allows (see `order.rs`), each a
//! single command sent as it starts or a few steps in a future, all polled
//! by one task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use earshot_core::backplane::{
    self, Event, PairReply, Remote, Request, RoomReply, StrikeRule, Waiter, decode_pair_reply,
    decode_room_reply,
};
use earshot_core::protocol::{CallId, PeerId, Verifier};
use earshot_core::{ClientKey, ConnId};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::link::LinkError;
use super::order::{Order, Shape};
use super::resp::{Cmd, Value};
use super::{
    CALL_TTL, Redis, ROOM_TTL, SCAN_LIMIT, WAITER_TTL, ban_key, call_key, channel, key, millis,
};
use crate::hub::Hub;

/// Why a request got no useful reply.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("Redis refused: {0}")]
    Refused(String),
    #[error("unexpected reply from Redis")]
    Reply,
}

type Then = Box<dyn FnOnce(Result<Value, Failure>) + Send>;

/// A request ready to start.
pub enum Job {
    /// One command, and what to do with its reply.
    Once { cmd: Cmd, link: usize, then: Then },
    /// Several steps; nothing is sent before it is first polled.
    #[allow(dead_code)]
    Steps(BoxFuture<'static, ()>),
    /// Nothing to do.
    Nothing,
}

impl Job {
    fn shape(&self) -> Shape {
        match self {
            Job::Once { link, .. } => Shape::Once(*link),
            Job::Steps(_) | Job::Nothing => Shape::Steps,
        }
    }
}

/// Runs requests until shutdown, or until the switchboard is gone.
pub async fn run(
    redis: Arc<Redis>,
    hub: Arc<Hub>,
    mut requests: UnboundedReceiver<Request>,
    shutdown: CancellationToken,
) {
    let mut order = Order::default();
    let mut waiting: HashMap<u64, Job> = HashMap::new();
    let mut running: FuturesUnordered<BoxFuture<'static, u64>> = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(done) = running.next(), if !running.is_empty() => {
                for id in order.finish(done) {
                    if let Some(job) = waiting.remove(&id) {
                        running.push(redis.start(id, job));
                    }
                }
            }
            request = requests.recv() => {
                let Some(request) = request else { return };
                let keys = request.order_keys();
                let job = redis.prepare(&hub, request);
                let (id, now) = order.submit(keys, job.shape());
                if now {
                    running.push(redis.start(id, job));
                } else {
                    waiting.insert(id, job);
                }
            }
        }
    }
}

/// A reply as text.
fn text(reply: Result<Value, Failure>) -> Result<String, Failure> {
    reply?.text().map(str::to_owned).ok_or(Failure::Reply)
}

/// A reply as an integer.
fn int(reply: Result<Value, Failure>) -> Result<i64, Failure> {
    reply?.int().ok_or(Failure::Reply)
}

/// Logs a failed request that has no one to answer.
fn log(what: &'static str) -> Then {
    Box::new(move |reply| {
        if let Err(e) = reply {
            tracing::warn!(error = %e, "a backplane request failed: {what}");
        }
    })
}

impl Redis {
    /// Starts `job`: a single command is sent now, in order.
    fn start(&self, id: u64, job: Job) -> BoxFuture<'static, u64> {
        match job {
            Job::Once { cmd, link, then } => {
                let reply = self.send_on(link, &cmd);
                Box::pin(async move {
                    then(reply.await);
                    id
                })
            }
            Job::Steps(steps) => Box::pin(async move {
                steps.await;
                id
            }),
            Job::Nothing => Box::pin(async move { id }),
        }
    }

    /// Sends `cmd` on link `link` now; its reply, with Redis's errors as
    /// [`Failure::Refused`].
    fn send_on(
        &self,
        link: usize,
        cmd: &Cmd,
    ) -> impl Future<Output = Result<Value, Failure>> + Send + use<> {
        let reply = self.topology.link(link).map(|l| l.send(cmd));
        let stale = self.topology.stale_flag();
        async move {
            let Some(reply) = reply else {
                return Err(Failure::Link(LinkError::Down));
            };
            match reply.await? {
                Value::Error(e) => {
                    if e.starts_with("MOVED") || e.starts_with("ASK") {
                        stale.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(Failure::Refused(e))
                }
                v => Ok(v),
            }
        }
    }

    /// A single command and what to do with its reply.
    fn once(&self, cmd: Cmd, then: Then) -> Job {
        let link = self.topology.index_for(&cmd);
        Job::Once { cmd, link, then }
    }

    /// The job for one request.
    fn prepare(self: &Arc<Self>, hub: &Arc<Hub>, request: Request) -> Job {
        match request {
            Request::Enqueue(w) => self.enqueue(hub, w),
            Request::Dequeue { conn } => self.dequeue(conn),
            Request::Connect {
                conn,
                key,
                allowance,
            } => self.charge_connect(hub, conn, key, allowance),
            Request::Publish(msg) => self.publish(msg),
            Request::KeepApart { a, b, ttl } => self.keep_apart(a, b, ttl),
            Request::Block { a, b, ttl } => self.block(a, b, ttl),
            Request::Ban { key, ttl } => self.ban(key, ttl),
            Request::Strike {
                key,
                reporter,
                weight,
                network,
                previous_network,
                room,
                age,
                rule,
            } => self.strike(
                key,
                Reported {
                    reporter,
                    weight,
                    network,
                    previous_network,
                    room,
                    age,
                },
                rule,
            ),
            Request::CallStart { call, a, b } => self.call_start(call, a, b),
            Request::CallEnd { call } => self.call_end(call),
            Request::RoomJoin {
                conn,
                room,
                key,
                verifier,
                max_size,
                attempts,
                creations,
            } => self.room_join(
                hub,
                Joining {
                    conn,
                    room,
                    key,
                    verifier,
                    max_size,
                    attempts,
                    creations,
                },
            ),
            Request::RoomLeave { room, peer } => self.room_leave(room, peer),
            Request::RoomLock { room, verifier } => self.room_lock(room, verifier),
            Request::RoomRemove { room, key } => self.room_remove(room, key),
            other => {
                tracing::warn!(?other, "backplane request not supported");
                Job::Nothing
            }
        }
    }

    /// Pairs `w` with a waiter or queues it ([`super::PAIR`]).
    fn enqueue(&self, hub: &Arc<Hub>, w: Waiter) -> Job {
        let id = w.conn;
        let tags = serde_json::to_string(&w.interests).expect("strings serialize");
        let mut c = self.eval(&self.scripts.pair, &key("queue"));
        c.arg(id.0)
            .arg(self.node)
            .arg(backplane::hex(&w.key))
            .arg(tags)
            .arg(u8::from(w.open))
            .arg(millis(w.interest_wait))
            .arg(w.country.as_ref().map_or("", |c| c.as_str()))
            .arg(SCAN_LIMIT)
            .arg(millis(WAITER_TTL))
            .arg(self.token())
            .arg(w.limit.map_or(String::new(), |(burst, _)| burst.to_string()))
            .arg(
                w.limit
                    .map_or(String::new(), |(_, every)| millis(every).to_string()),
            );
        let hub = hub.clone();
        self.once(
            c,
            Box::new(move |reply| {
                let event = match text(reply).map(|r| decode_pair_reply(&r)) {
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
            }),
        )
    }

    /// Takes `conn` out of the queue.
    fn dequeue(&self, conn: ConnId) -> Job {
        let mut c = self.eval(&self.scripts.dequeue, &key("queue"));
        c.arg(conn.0);
        self.once(c, log("leaving the queue"))
    }

    /// Charges a new connection to its client's connect allowance.
    fn charge_connect(
        &self,
        hub: &Arc<Hub>,
        conn: ConnId,
        k: ClientKey,
        (burst, every): (u32, Duration),
    ) -> Job {
        let mut c = self.eval(&self.scripts.connect, &key("rl"));
        c.arg(backplane::hex(&k)).arg(burst).arg(millis(every));
        let hub = hub.clone();
        self.once(
            c,
            Box::new(move |reply| match int(reply) {
                Ok(0) => {}
                Ok(_) => hub.backplane_event(Event::TooManyConnects { conn }),
                Err(e) => tracing::warn!(error = %e, "Redis failed a connect check"),
            }),
        )
    }

    /// Publishes `msg` on its node's channel.
    fn publish(&self, msg: Remote) -> Job {
        let node = backplane::node_of(msg.to());
        let ch = channel(node);
        let mut c = Cmd::new(if self.topology.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        c.key(&ch).arg(msg.encode());
        self.once(c, log("a publish"))
    }

    fn keep_apart(&self, a: ConnId, b: ConnId, ttl: Duration) -> Job {
        let (a, b) = (a.min(b), a.max(b));
        let mut c = Cmd::new("SET");
        c.key(&key(&format!("apart:{}:{}", a.0, b.0)))
            .arg(1u8)
            .arg("PX")
            .arg(millis(ttl));
        self.once(c, log("keeping two apart"))
    }

    fn block(&self, a: ClientKey, b: ClientKey, ttl: Duration) -> Job {
        let (a, b) = (backplane::hex(&a), backplane::hex(&b));
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let mut c = Cmd::new("SET");
        c.key(&key(&format!("block:{a}:{b}")))
            .arg(1u8)
            .arg("PX")
            .arg(millis(ttl));
        self.once(c, log("a block"))
    }

    fn ban(&self, k: ClientKey, ttl: Duration) -> Job {
        let mut c = Cmd::new("SET");
        c.key(&ban_key(&k)).arg(1u8).arg("PX").arg(millis(ttl));
        self.once(c, log("a ban"))
    }

    /// Pools a strike against `k` with every node's.
    fn strike(&self, k: ClientKey, r: Reported, rule: StrikeRule) -> Job {
        let lengths: Vec<String> = rule
            .ban_lengths
            .iter()
            .map(|&d| millis(d).to_string())
            .collect();
        let mut c = self.eval(&self.scripts.strike, &key("strikes"));
        c.arg(backplane::hex(&k))
            .arg(backplane::hex(&r.reporter))
            .arg(r.weight)
            .arg(millis(rule.window))
            .arg(rule.reporters)
            .arg(rule.weight)
            .arg(lengths.join(","))
            .arg(rule.reports.0)
            .arg(millis(rule.reports.1))
            .arg(backplane::hex(&r.network))
            .arg(
                r.previous_network
                    .map_or("-".to_owned(), |n| backplane::hex(&n)),
            )
            .arg(u64::try_from(r.age.as_millis()).unwrap_or(u64::MAX))
            .arg(r.room.map_or("-".to_owned(), |r| format!("{r:016x}")))
            .arg(u64::try_from(rule.together.as_millis()).unwrap_or(u64::MAX))
            .arg(rule.max_strikes);
        self.once(
            c,
            Box::new(|reply| match int(reply) {
                Ok(-1) => tracing::debug!("a strike over the reporter's shared allowance"),
                Ok(ms @ 1..) => tracing::info!(ban_ms = ms, "pooled strikes completed a ban"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "a backplane request failed: a strike"),
            }),
        )
    }

    fn call_start(&self, call: CallId, a: ConnId, b: ConnId) -> Job {
        let sides = format!(
            "{}:{} {}:{}",
            backplane::node_of(a),
            a.0,
            backplane::node_of(b),
            b.0
        );
        let mut c = Cmd::new("SET");
        c.key(&call_key(call))
            .arg(sides)
            .arg("PX")
            .arg(millis(CALL_TTL));
        self.once(c, log("recording a call"))
    }

    fn call_end(&self, call: CallId) -> Job {
        let mut c = Cmd::new("DEL");
        c.key(&call_key(call));
        self.once(c, log("ending a call"))
    }

    /// Joins a room, checking its size, lock and removals
    /// ([`super::ROOM_JOIN`]).
    fn room_join(&self, hub: &Arc<Hub>, j: Joining) -> Job {
        let mut c = self.eval(&self.scripts.room_join, &key("room"));
        c.arg(j.room.as_str())
            .arg(j.conn.0)
            .arg(self.node)
            .arg(backplane::hex(&j.key))
            .arg(
                j.verifier
                    .as_ref()
                    .map(backplane::verifier_hex)
                    .unwrap_or_default(),
            )
            .arg(j.max_size)
            .arg(millis(ROOM_TTL))
            .arg(self.token())
            .arg(j.attempts.0)
            .arg(millis(j.attempts.1))
            .arg(j.creations.0)
            .arg(millis(j.creations.1));
        let hub = hub.clone();
        let (conn, room) = (j.conn, j.room);
        self.once(
            c,
            Box::new(move |reply| {
                let event = match text(reply).map(|r| decode_room_reply(&r)) {
                    Ok(Ok(RoomReply::Joined {
                        peer,
                        others,
                        locked,
                    })) => Event::RoomJoined {
                        conn,
                        room,
                        peer,
                        others,
                        locked,
                    },
                    Ok(Ok(RoomReply::Refused(code, retry))) => {
                        Event::RoomRefused { conn, code, retry }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "unexpected reply from the room script");
                        Event::Failed { conn }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Redis failed a room join");
                        Event::Failed { conn }
                    }
                };
                hub.backplane_event(event);
            }),
        )
    }

    fn room_leave(&self, room: String, peer: PeerId) -> Job {
        let mut c = self.eval(&self.scripts.room_leave, &key("room"));
        c.arg(room).arg(peer);
        self.once(c, log("leaving a room"))
    }

    fn room_lock(&self, room: String, verifier: Option<Verifier>) -> Job {
        let k = key(&format!("room:{room}"));
        let c = match verifier {
            Some(v) => {
                let mut c = Cmd::new("HSET");
                c.key(&k).arg("lock").arg(backplane::verifier_hex(&v));
                c
            }
            None => {
                let mut c = Cmd::new("HDEL");
                c.key(&k).arg("lock");
                c
            }
        };
        self.once(c, log("locking a room"))
    }

    fn room_remove(&self, room: String, client: ClientKey) -> Job {
        let mut c = Cmd::new("HSET");
        c.key(&key(&format!("room:{room}")))
            .arg(format!("x:{}", backplane::hex(&client)))
            .arg(1u8);
        self.once(c, log("removing from a room"))
    }
}

/// A strike's details, as the reporter's node judged them.
struct Reported {
    reporter: ClientKey,
    weight: u32,
    network: ClientKey,
    previous_network: Option<ClientKey>,
    room: Option<u64>,
    age: Duration,
}

/// A room join's details.
struct Joining {
    conn: ConnId,
    room: String,
    key: ClientKey,
    verifier: Option<Verifier>,
    max_size: usize,
    attempts: (u32, Duration),
    creations: (u32, Duration),
}
