//! A node's heartbeat: renewing its token in the registry every beat (and
//! with it its view of who is dead), losing and regaining Redis, retiring
//! the token after an outage, and the chores of each beat (ending calls
//! with dead nodes, sweeping lanes, renewing entries and rotating the
//! shared secret).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use earshot_core::ConnId;
use earshot_core::backplane::layout;
use earshot_core::backplane::nodes::{self, BeatReply, Liveness};
use earshot_core::backplane::queue;
use earshot_core::backplane::{Event, NodeId};
use tokio_util::sync::CancellationToken;

use super::resp::Cmd;
use super::{
    Beat, CALL_TTL, FORGET_AFTER, HEARTBEAT, NODE_TTL, REFRESH_BEATS, ROOM_TTL, Redis, SWEEP_LIMIT,
    WAITER_TTL, all, eval, millis, now_ms, other_layout, period, random_secret,
};
use crate::hub::Hub;
use crate::identity::Keyer;

impl Redis {
    pub(super) async fn run_heartbeat(
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
        let mut dead = String::new();
        // Since when Redis may have lost what this node put there, and
        // whether the token it was written under is retired yet.
        let mut lost: Option<tokio::time::Instant> = None;
        let mut retired = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Leaving on purpose: the other nodes end this node's
                    // calls at their next beat rather than after the TTL.
                    let _ = tokio::time::timeout(HEARTBEAT, self.retire(true)).await;
                    return;
                }
                _ = tick.tick() => {}
            }
            beats = beats.wrapping_add(1);
            if let Err(e) = self.topology.refresh_if_stale().await {
                tracing::warn!(error = %e, "cannot read the Redis Cluster's slot map");
            }
            let (up, generations) = self.topology.health();
            let lose = |why: &str, lost: &mut Option<tokio::time::Instant>, retired: &mut bool| {
                if lost.is_none() {
                    tracing::warn!("{why}");
                    hub.set_available(false);
                    *lost = Some(tokio::time::Instant::now());
                    *retired = false;
                }
            };
            if !up || generations != self.generations.load(Ordering::Relaxed) {
                // A link broke, or connected again: what this node wrote
                // there may be gone.
                lose("lost a connection to Redis", &mut lost, &mut retired);
            } else if !self.subscribed.load(Ordering::Relaxed) {
                // Closed by the subscriber: messages may be lost.
                lose("lost the Redis subscription", &mut lost, &mut retired);
            }
            if let Some(since) = lost {
                // The old token is never renewed again: it dies as soon as
                // the registry can say so, or when it expires.
                if !retired {
                    retired = self.retire(false).await.is_ok();
                } else if let Err(e) = self.renew("").await {
                    tracing::debug!(error = %e, "Redis still away");
                }
                // Serve again once every link is back and every token that
                // lived when this node lost Redis is renewed or dead.
                let settled = since.elapsed() >= NODE_TTL + HEARTBEAT;
                let subscribed = self.subscribed.load(Ordering::Relaxed);
                if retired && up && subscribed && settled {
                    match self.sync_secret(&keyer, rotation, keyer.secret()).await {
                        Ok(()) => {
                            self.generations.store(generations, Ordering::Relaxed);
                            lost = None;
                            tracing::info!("Redis is back");
                            hub.set_available(true);
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot restore the shared secret"),
                    }
                }
                continue;
            }
            match self.renew("").await {
                Ok(Beat::Ok { renewed: true }) => {}
                Ok(Beat::Ok { renewed: false }) => {
                    lose(
                        "this node's state in Redis is gone; starting afresh",
                        &mut lost,
                        &mut retired,
                    );
                    continue;
                }
                Ok(Beat::Taken) => {
                    tracing::error!(node = self.node, "another node holds this node's number");
                    lose("giving the number up", &mut lost, &mut retired);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "heartbeat failed");
                    lose("lost Redis", &mut lost, &mut retired);
                    continue;
                }
            }
            hub.set_available(true);
            let view = self.view();
            // Someone died: sweep their waiters now rather than at the
            // next refresh.
            let sweep = view.dead_arg() != dead;
            dead = view.dead_arg();
            if let Err(e) = self.watch(&hub, &view, beats, sweep, &mut tokens).await {
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

    /// Retires this node's token: a new one replaces it in the registry,
    /// which marks the old one dead for every node at once, so whatever
    /// this node left in the store under it (dequeues and leaves that
    /// failed while Redis was away) counts for nothing. `leaving`: this
    /// node stops, and takes no new token.
    async fn retire(&self, leaving: bool) -> anyhow::Result<()> {
        let old = self.token();
        let fresh = nodes::new_token(now_ms(), crate::identity::random_u64());
        let now = now_ms();
        let mut c = eval(&self.scripts.heartbeat, &[layout::REGISTRY]);
        c.arg(self.node)
            .arg(&fresh)
            .arg(&old)
            .arg(if leaving { now } else { now + millis(NODE_TTL) })
            .arg(now)
            .arg(self.layout.stamp())
            .arg(now.saturating_sub(millis(FORGET_AFTER)));
        let v = all(&self.topology, &[c]).await?;
        let text = v[0].text().context("unexpected heartbeat reply")?;
        match nodes::decode_beat(text)? {
            BeatReply::Layout(stamp) => bail!(other_layout(&stamp)),
            BeatReply::Taken => bail!("another node holds this node's number"),
            reply @ BeatReply::Ok { .. } => {
                *self.token.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
                // Whatever this node thought it had queued is gone with
                // its token.
                self.placed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                self.take_view(reply);
                Ok(())
            }
        }
    }

    /// Ends calls and room memberships with nodes that died, or came back
    /// from an outage under a new token (they closed every connection then,
    /// and could not tell anyone); sweeps dead waiters; keeps ours alive.
    /// `tokens`: the token last seen for each watched node.
    async fn watch(
        &self,
        hub: &Hub,
        view: &Liveness,
        beats: u32,
        sweep: bool,
        tokens: &mut HashMap<NodeId, String>,
    ) -> anyhow::Result<()> {
        let nodes = hub.remote_nodes();
        tokens.retain(|n, _| nodes.contains(n));
        for &n in &nodes {
            let token = view.token_of(n).map(str::to_owned);
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
        let refresh = beats.is_multiple_of(REFRESH_BEATS);
        let now = now_ms();
        let mut chores = Vec::new();
        let mut renewals = Vec::new();
        if sweep || refresh {
            for lane in 0..self.layout.lanes {
                let mut c = eval(&self.scripts.queue_sweep, &[&self.layout.lane(lane)]);
                c.arg(now)
                    .arg(SWEEP_LIMIT)
                    .arg(view.dead_arg())
                    .arg(view.born());
                chores.push(c);
            }
        }
        if refresh {
            let expire = |k: String, ttl: Duration| {
                let mut c = Cmd::new("PEXPIRE");
                c.key(&k).arg(millis(ttl));
                c
            };
            // Renewed entries replace the old, keeping their places.
            let expiry = now + millis(WAITER_TTL);
            let mut by_lane: HashMap<u16, Vec<(ConnId, String, String)>> = HashMap::new();
            for (&conn, p) in self.placed.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if let Some(old) = &p.entry
                    && let Some(new) = queue::renewed(old, expiry)
                {
                    by_lane
                        .entry(p.lane)
                        .or_default()
                        .push((conn, old.clone(), new));
                }
            }
            let mut touches = Vec::new();
            for (lane, entries) in by_lane {
                for chunk in entries.chunks(256) {
                    let mut c = eval(&self.scripts.queue_touch, &[&self.layout.lane(lane)]);
                    for (_, old, new) in chunk {
                        c.arg(old.as_str()).arg(new.as_str());
                    }
                    touches.push(c);
                    renewals.extend(chunk.iter().cloned());
                }
            }
            if all(&self.topology, &touches).await.is_ok() {
                let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
                for (conn, old, new) in renewals.drain(..) {
                    if let Some(p) = placed.get_mut(&conn)
                        && p.entry.as_deref() == Some(old.as_str())
                    {
                        p.entry = Some(new);
                    }
                }
            }
            for call in hub.shared_calls() {
                chores.push(expire(self.layout.call(call), CALL_TTL));
            }
            for room in hub.shared_rooms() {
                chores.push(expire(self.layout.room(&room), ROOM_TTL));
            }
        }
        for chunk in chores.chunks(512) {
            all(&self.topology, chunk).await?;
        }
        Ok(())
    }
}
