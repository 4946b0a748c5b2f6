//! The stranger queue as this node drives it: a search admitted in its
//! client's slot and paired in a lane (lane 0, or its home lane when the
//! node is busy, see `earshot_core::backplane::queue`), this node's
//! waiters and the entries they wait under, moves to the meeting lane,
//! and leaving.

use std::sync::Arc;

use earshot_core::ConnId;
use earshot_core::backplane::admission::{Admission, decode_admission};
use earshot_core::backplane::queue::{self, Joiner};
use earshot_core::backplane::{self, Event, PairReply, Waiter, decode_pair_reply};

use super::requests::{Failure, Job, int, log, text};
use super::resp::Cmd;
use super::{Redis, SCAN_LIMIT, WAITER_TTL, eval, millis, now_ms};
use crate::hub::Hub;

/// One of this node's waiters: where it waits, and what joining another
/// lane needs.
#[derive(Debug, Clone)]
pub struct Placed {
    pub lane: u16,
    /// When it came to this lane (ms).
    since: u64,
    /// Its place in the queue (ms): its first search.
    arrival: u64,
    open_at: u64,
    waiter: Waiter,
    /// Whom it avoids, as admission said.
    avoid: String,
    /// The entry it waits under, once queued.
    pub entry: Option<String>,
    /// A move to lane 0 is under way.
    moving: bool,
}

impl Redis {
    /// This node's waiters.
    fn waiters(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ConnId, Placed>> {
        self.placed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Redis failed a queue join or a move: the waiter is forgotten, and
    /// the switchboard closes its connection.
    fn failed(&self, conn: ConnId, what: &str, e: impl std::fmt::Display) -> Event {
        tracing::warn!(error = %e, "Redis failed {what}");
        self.waiters().remove(&conn);
        Event::Failed { conn }
    }

    /// Runs `j` through the pairing script in `lane`: the reply, and the
    /// entry it is queued under if it was.
    async fn pair_in(
        self: &Arc<Self>,
        lane: u16,
        j: &Joiner,
        avoid: &str,
    ) -> Result<(PairReply, String), Failure> {
        let mut c = eval(&self.scripts.pair, &[&self.layout.lane(lane)]);
        for a in j.args(now_ms(), SCAN_LIMIT, avoid, &self.view()) {
            c.arg(a);
        }
        let reply = text(self.send(&c).await)?;
        let reply = decode_pair_reply(&reply).map_err(|e| {
            tracing::warn!(error = %e, "unexpected reply from the pairing script");
            Failure::Reply
        })?;
        Ok((reply, j.entry()))
    }

    fn joiner(&self, p: &Placed, again: bool) -> Joiner {
        Joiner {
            conn: p.waiter.conn,
            node: self.node,
            token: self.token(),
            key: p.waiter.key,
            open_at: p.open_at,
            country: p.waiter.country,
            tags: p.waiter.interests.clone(),
            expiry: now_ms() + millis(WAITER_TTL),
            arrival: p.arrival,
            again: if again { p.entry.clone() } else { None },
        }
    }

    /// What a pairing answer means for this node's waiters and the
    /// switchboard.
    fn paired(&self, p: Placed, lane: u16, (reply, entry): (PairReply, String)) -> Event {
        let conn = p.waiter.conn;
        let mut placed = self.waiters();
        match reply {
            PairReply::Matched(partner) => {
                placed.remove(&conn);
                // A waiter of this node: the script took it out of its lane
                // (perhaps before the answer that it waits got here).
                if placed.remove(&partner.conn).is_none()
                    && backplane::node_of(partner.conn) == self.node
                {
                    let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
                    if taken.len() >= 4096 {
                        taken.clear();
                    }
                    taken.insert(partner.conn);
                }
                Event::Paired { conn, partner }
            }
            PairReply::Queued => {
                if self
                    .taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&conn)
                {
                    // Taken already: it waits no more.
                    return Event::Queued { conn };
                }
                let since = if p.lane == lane { p.since } else { now_ms() };
                placed.insert(
                    conn,
                    Placed {
                        lane,
                        since,
                        entry: Some(entry),
                        moving: false,
                        ..p
                    },
                );
                Event::Queued { conn }
            }
            PairReply::Banned { ttl } => {
                placed.remove(&conn);
                Event::Banned { conn, ttl }
            }
            PairReply::Limited { retry } => {
                placed.remove(&conn);
                Event::Limited { conn, retry }
            }
        }
    }

    /// Admits `w` in its client's slot, then pairs it in its lane: lane 0
    /// or its home lane ([`queue::first_lane`]), or where it waits already
    /// if this is a join again.
    pub(super) fn enqueue(self: &Arc<Self>, hub: &Arc<Hub>, w: Waiter) -> Job {
        let (redis, hub) = (self.clone(), hub.clone());
        Job::Steps(Box::pin(async move {
            let conn = w.conn;
            let event = match redis.try_enqueue(w).await {
                Ok(event) => event,
                Err(e) => redis.failed(conn, "a queue join", e),
            };
            // The switchboard has nothing to do for a waiter queued: spare
            // it the step.
            if !matches!(event, Event::Queued { .. }) {
                hub.backplane_event(event);
            }
        }))
    }

    async fn try_enqueue(self: &Arc<Self>, w: Waiter) -> Result<Event, Failure> {
        let now = now_ms();
        let conn = w.conn;
        let mut c = eval(
            &self.scripts.admit,
            &[
                &self.layout.client(&w.key, "ban"),
                &self.layout.client(&w.key, "rl:search"),
                &self.layout.client(&w.key, "avoid"),
            ],
        );
        c.arg(now);
        match w.limit {
            Some((burst, every)) => c.arg(burst).arg(millis(every)),
            None => c.arg("").arg(""),
        };
        let refused = match decode_admission(&text(self.send(&c).await)?) {
            Ok(Admission::Ok { avoid }) => Ok(avoid),
            Ok(Admission::Banned { ttl }) => Err(Event::Banned { conn, ttl }),
            Ok(Admission::Limited { retry }) => Err(Event::Limited { conn, retry }),
            Err(e) => {
                tracing::warn!(error = %e, "unexpected reply from the admission script");
                return Err(Failure::Reply);
            }
        };
        let avoid = match refused {
            Ok(avoid) => avoid,
            Err(event) => {
                self.waiters().remove(&conn);
                return Ok(event);
            }
        };
        let known = self.waiters().get(&conn).cloned();
        let open_at = if w.open {
            now
        } else {
            now + millis(w.interest_wait)
        };
        let (p, requeue) = match known {
            // A join again: where it waits, keeping its place.
            Some(p) => (
                Placed {
                    open_at,
                    avoid,
                    waiter: w,
                    ..p
                },
                true,
            ),
            None => {
                let busy = {
                    let mut rate = self.joins.lock().unwrap_or_else(|e| e.into_inner());
                    rate.note(now);
                    rate.per_sec(now)
                };
                let lane = queue::first_lane(
                    self.layout.lanes,
                    &w.interests,
                    crate::identity::random_u64(),
                    busy,
                );
                (
                    Placed {
                        lane,
                        since: now,
                        arrival: now,
                        open_at,
                        waiter: w,
                        avoid,
                        entry: None,
                        moving: false,
                    },
                    false,
                )
            }
        };
        let lane = p.lane;
        let reply = self
            .pair_in(lane, &self.joiner(&p, requeue), &p.avoid)
            .await?;
        Ok(self.paired(p, lane, reply))
    }

    /// This node's waiters that have waited out [`queue::MEET_AFTER`]
    /// outside the meeting lane.
    pub(super) fn due_moves(&self, now: u64) -> Vec<ConnId> {
        let after = millis(queue::MEET_AFTER);
        let mut placed = self.waiters();
        placed
            .iter_mut()
            .filter(|(_, p)| p.lane != 0 && !p.moving && p.since + after <= now)
            .map(|(&c, p)| {
                p.moving = true;
                c
            })
            .collect()
    }

    /// Moves a waiter to lane 0: out of its lane first (if someone took it
    /// meanwhile, that pairing stands and the move stops), then a join
    /// there, keeping its place in the queue.
    pub(super) fn move_to_meeting_lane(self: &Arc<Self>, hub: &Arc<Hub>, conn: ConnId) -> Job {
        let (redis, hub) = (self.clone(), hub.clone());
        Job::Steps(Box::pin(async move {
            let Some(p) = redis.waiters().get(&conn).cloned() else {
                return;
            };
            if p.lane == 0 {
                return;
            }
            let Some(entry) = &p.entry else { return };
            let mut c = Cmd::new("ZREM");
            c.key(&redis.layout.lane(p.lane)).arg(entry.as_str());
            let left = int(redis.send(&c).await);
            if left.as_ref().map_or(true, |&n| n == 0) {
                // Taken by someone (the match is on its way), or Redis failed.
                redis.waiters().remove(&conn);
                if let Err(e) = left {
                    tracing::warn!(error = %e, "Redis failed a move between lanes");
                    hub.backplane_event(Event::Failed { conn });
                }
                return;
            }
            let event = match redis.pair_in(0, &redis.joiner(&p, false), &p.avoid).await {
                Ok(reply) => redis.paired(p, 0, reply),
                Err(e) => redis.failed(conn, "a move between lanes", e),
            };
            if let event @ (Event::Paired { .. } | Event::Failed { .. }) = event {
                hub.backplane_event(event);
            }
        }))
    }

    /// Takes `conn` out of the lane it waits in.
    pub(super) fn dequeue(self: &Arc<Self>, conn: ConnId) -> Job {
        let redis = self.clone();
        Job::Steps(Box::pin(async move {
            let placed = redis.waiters().remove(&conn);
            let Some(Placed {
                lane,
                entry: Some(entry),
                ..
            }) = placed
            else {
                return;
            };
            let mut c = Cmd::new("ZREM");
            c.key(&redis.layout.lane(lane)).arg(entry);
            log("leaving the queue")(redis.send(&c).await);
        }))
    }
}
