//! The switchboard's requests, one function each, and the loop that runs
//! them: as many at once as [`Order`] allows (see `order.rs`), each a
//! single command sent as it starts or a few steps in a future, all polled
//! by one task. The loop also moves waiters that found no one in their
//! home lane to the meeting lane ([`queue::MEET_AFTER`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use earshot_core::backplane::admission::{MAX_AVOIDED, avoid_client, avoid_conn};
use earshot_core::backplane::queue;
use earshot_core::backplane::room::{Joining, RoomReply, decode_room_reply};
use earshot_core::backplane::{self, Event, OrderKey, Remote, Request, StrikeRule};
use earshot_core::moderation::strike_args;
use earshot_core::protocol::{CallId, ErrorCode, PeerId, Verifier};
use earshot_core::{ClientKey, ConnId};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::link::LinkError;
use super::order::{Order, Shape};
use super::resp::{Cmd, Value};
use super::{CALL_TTL, ROOM_TTL, Redis, eval, millis, now_ms};
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
    Steps(BoxFuture<'static, ()>),
}

impl Job {
    fn shape(&self) -> Shape {
        match self {
            Job::Once { link, .. } => Shape::Once(*link),
            Job::Steps(_) => Shape::Steps,
        }
    }
}

/// Requests submitted and not finished.
struct Runner {
    order: Order<OrderKey>,
    waiting: HashMap<u64, Job>,
    running: FuturesUnordered<BoxFuture<'static, u64>>,
}

impl Runner {
    fn submit(&mut self, redis: &Redis, keys: Vec<OrderKey>, job: Job) {
        let (id, now) = self.order.submit(keys, job.shape());
        if now {
            self.running.push(redis.start(id, job));
        } else {
            self.waiting.insert(id, job);
        }
    }

    fn finish(&mut self, redis: &Redis, done: u64) {
        for id in self.order.finish(done) {
            if let Some(job) = self.waiting.remove(&id) {
                self.running.push(redis.start(id, job));
            }
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
    let mut r = Runner {
        order: Order::default(),
        waiting: HashMap::new(),
        running: FuturesUnordered::new(),
    };
    let mut meet = tokio::time::interval(queue::MEET_AFTER / 3);
    meet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            Some(done) = r.running.next(), if !r.running.is_empty() => r.finish(&redis, done),
            request = requests.recv() => {
                let Some(request) = request else { return };
                let keys = request.order_keys();
                let job = redis.prepare(&hub, request);
                r.submit(&redis, keys, job);
            }
            _ = meet.tick(), if redis.layout.lanes > 1 => {
                for conn in redis.due_moves(now_ms()) {
                    let job = redis.move_to_meeting_lane(&hub, conn);
                    r.submit(&redis, vec![OrderKey::Conn(conn)], job);
                }
            }
        }
    }
}

/// A reply as text.
pub(super) fn text(reply: Result<Value, Failure>) -> Result<String, Failure> {
    reply?.text().map(str::to_owned).ok_or(Failure::Reply)
}

/// A reply as an integer.
pub(super) fn int(reply: Result<Value, Failure>) -> Result<i64, Failure> {
    reply?.int().ok_or(Failure::Reply)
}

/// Logs a failed request that has no one to answer.
pub(super) fn log(what: &'static str) -> Then {
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

    /// Sends `cmd` where its key lives, now; its reply.
    pub(super) fn send(
        &self,
        cmd: &Cmd,
    ) -> impl Future<Output = Result<Value, Failure>> + Send + use<> {
        self.send_on(self.topology.index_for(cmd), cmd)
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
            Request::KeepApart { a, b, keys, ttl } => self.keep_apart(a, b, keys, ttl),
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
            } => {
                let args = strike_args(
                    &reporter,
                    weight,
                    &network,
                    previous_network.as_ref(),
                    age,
                    room,
                    &rule,
                    now_ms(),
                );
                self.strike(key, reporter, &rule, args)
            }
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
                hub, conn, room, key, verifier, max_size, attempts, creations,
            ),
            Request::RoomLeave { room, peer } => self.room_leave(room, peer),
            Request::RoomLock { room, verifier } => self.room_lock(room, verifier),
            Request::RoomRemove { room, key } => self.room_remove(room, key),
        }
    }

    /// Charges a new connection to its client's connect allowance.
    fn charge_connect(
        &self,
        hub: &Arc<Hub>,
        conn: ConnId,
        k: ClientKey,
        (burst, every): (u32, Duration),
    ) -> Job {
        let mut c = eval(&self.scripts.take, &[&self.layout.client(&k, "rl:connect")]);
        c.arg(burst).arg(millis(every)).arg(now_ms());
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
        let ch = self.layout.channel(backplane::node_of(msg.to()));
        let mut c = Cmd::new(if self.topology.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        c.key(&ch).arg(msg.encode());
        self.once(c, log("a publish"))
    }

    /// Writes `who` into each client's avoid set until `ttl` from now.
    fn avoid_both(self: &Arc<Self>, sides: [(ClientKey, String); 2], ttl: Duration) -> Job {
        let now = now_ms();
        let cmds: Vec<Cmd> = sides
            .iter()
            .map(|(k, who)| {
                let mut c = eval(&self.scripts.avoid, &[&self.layout.client(k, "avoid")]);
                c.arg(now)
                    .arg(who.as_str())
                    .arg(now + millis(ttl))
                    .arg(MAX_AVOIDED);
                c
            })
            .collect();
        let redis = self.clone();
        Job::Steps(Box::pin(async move {
            let replies: Vec<_> = cmds.iter().map(|c| redis.send(c)).collect();
            for r in replies {
                log("keeping two apart")(r.await);
            }
        }))
    }

    fn keep_apart(
        self: &Arc<Self>,
        a: ConnId,
        b: ConnId,
        (ka, kb): (ClientKey, ClientKey),
        ttl: Duration,
    ) -> Job {
        self.avoid_both([(ka, avoid_conn(b)), (kb, avoid_conn(a))], ttl)
    }

    fn block(self: &Arc<Self>, a: ClientKey, b: ClientKey, ttl: Duration) -> Job {
        self.avoid_both([(a, avoid_client(&b)), (b, avoid_client(&a))], ttl)
    }

    fn ban(&self, k: ClientKey, ttl: Duration) -> Job {
        let mut c = Cmd::new("SET");
        c.key(&self.layout.client(&k, "ban"))
            .arg(now_ms() + millis(ttl))
            .arg("PX")
            .arg(millis(ttl));
        self.once(c, log("a ban"))
    }

    /// Charges the report to the reporter's allowance (in its slot), then
    /// pools the strike against `k` with every node's (in `k`'s slot).
    fn strike(
        self: &Arc<Self>,
        k: ClientKey,
        reporter: ClientKey,
        rule: &StrikeRule,
        args: Vec<String>,
    ) -> Job {
        let mut take = eval(
            &self.scripts.take,
            &[&self.layout.client(&reporter, "rl:report")],
        );
        take.arg(rule.reports.0)
            .arg(millis(rule.reports.1))
            .arg(now_ms());
        let mut strike = eval(
            &self.scripts.strike,
            &[
                &self.layout.client(&k, "strikes"),
                &self.layout.client(&k, "ban"),
            ],
        );
        for a in args {
            strike.arg(a);
        }
        let redis = self.clone();
        Job::Steps(Box::pin(async move {
            match int(redis.send(&take).await) {
                Ok(0) => {}
                Ok(_) => return tracing::debug!("a strike over the reporter's shared allowance"),
                Err(e) => return tracing::warn!(error = %e, "Redis failed a report's allowance"),
            }
            match int(redis.send(&strike).await) {
                Ok(ms @ 1..) => tracing::info!(ban_ms = ms, "pooled strikes completed a ban"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "a backplane request failed: a strike"),
            }
        }))
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
        c.key(&self.layout.call(call))
            .arg(sides)
            .arg("PX")
            .arg(millis(CALL_TTL));
        self.once(c, log("recording a call"))
    }

    fn call_end(&self, call: CallId) -> Job {
        let mut c = Cmd::new("DEL");
        c.key(&self.layout.call(call));
        self.once(c, log("ending a call"))
    }

    /// Joins a room (in the room's slot); a room with no one in it is
    /// created once the client's creations allowance (in its slot) allows.
    #[allow(clippy::too_many_arguments)]
    fn room_join(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        conn: ConnId,
        room: String,
        key: ClientKey,
        verifier: Option<Verifier>,
        max_size: usize,
        attempts: (u32, Duration),
        creations: (u32, Duration),
    ) -> Job {
        let mut j = Joining {
            conn,
            node: self.node,
            token: self.token(),
            key,
            verifier: verifier
                .as_ref()
                .map(backplane::verifier_hex)
                .unwrap_or_default(),
            max_size,
            ttl: millis(ROOM_TTL),
            attempts: (attempts.0, millis(attempts.1)),
            charged: false,
        };
        let (redis, hub) = (self.clone(), hub.clone());
        Job::Steps(Box::pin(async move {
            let join = |j: &Joining| {
                let mut c = eval(&redis.scripts.room_join, &[&redis.layout.room(&room)]);
                for a in j.args(now_ms(), &redis.view()) {
                    c.arg(a);
                }
                redis.send(&c)
            };
            let mut reply = text(join(&j).await).map(|r| decode_room_reply(&r));
            if let Ok(Ok(RoomReply::Create)) = reply {
                let mut take = eval(
                    &redis.scripts.take,
                    &[&redis.layout.client(&key, "rl:room")],
                );
                take.arg(creations.0).arg(millis(creations.1)).arg(now_ms());
                reply = match int(redis.send(&take).await) {
                    Ok(0) => {
                        j.charged = true;
                        text(join(&j).await).map(|r| decode_room_reply(&r))
                    }
                    Ok(ms) => Ok(Ok(RoomReply::Refused(
                        ErrorCode::RateLimited,
                        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(1).max(1))),
                    ))),
                    Err(e) => Err(e),
                };
            }
            let event = match reply {
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
                Ok(Ok(RoomReply::Refused(code, retry))) => Event::RoomRefused { conn, code, retry },
                Ok(Ok(RoomReply::Create)) => {
                    tracing::warn!("the room script asked for a creation twice");
                    Event::Failed { conn }
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
        }))
    }

    fn room_leave(&self, room: String, peer: PeerId) -> Job {
        let mut c = eval(&self.scripts.room_leave, &[&self.layout.room(&room)]);
        c.arg(peer);
        self.once(c, log("leaving a room"))
    }

    fn room_lock(&self, room: String, verifier: Option<Verifier>) -> Job {
        let k = self.layout.room(&room);
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
        c.key(&self.layout.room(&room))
            .arg(format!("x:{}", backplane::hex(&client)))
            .arg(1u8);
        self.once(c, log("removing from a room"))
    }
}
