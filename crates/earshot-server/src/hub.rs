//! The hub drives the sans-IO [`Switchboard`]: it feeds it events with the
//! current time, delivers its outputs to connection tasks, and runs its timer.
//!
//! One mutex guards the switchboard and the outboxes together, so an event
//! and the delivery of everything it caused happen as one step. Delivery
//! never waits: each connection has a bounded outbox, and a full outbox means
//! a slow reader, which is disconnected at once (its partner is told) rather
//! than allowed to hold up anyone else.
//!
//! Outboxes are plain `VecDeque`s owned by the hub plus the waker of the
//! connection task waiting on it: an empty one allocates nothing, which
//! matters because almost every signalling socket is idle (see BENCHMARKS.md).
//!
//! With `--redis` the switchboard runs in backplane mode: connection ids
//! carry this node's number, `Output::Backplane` requests go to the
//! [`crate::backplane`] task through an unbounded channel (requests follow
//! client messages, which are rate-limited), and its answers come back
//! through [`Hub::backplane_event`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use earshot_core::backplane::{self, Event, NodeId, Request};
use earshot_core::{CloseReason, ConnId, ConnInfo, Output, Switchboard};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// What a connection task is asked to do.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    Close(CloseReason),
}

/// Messages waiting for one connection's task.
struct Outbox {
    items: VecDeque<Outbound>,
    /// The task waiting in [`Hub::poll_outbox`], if it is.
    waker: Option<Waker>,
    /// Time for the task to ping its client (and check it is still there).
    ping: bool,
    /// The connection's place under `--max-connections`, held here rather
    /// than in its task: the task's size is what every idle socket costs.
    _permit: OwnedSemaphorePermit,
}

impl Outbox {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

struct State {
    board: Switchboard,
    /// Boxed: a hash table keeps spare buckets (up to twice as many as
    /// entries), and a spare bucket of a box costs 8 bytes, not an outbox.
    outboxes: HashMap<ConnId, Box<Outbox>>,
    /// Most messages an outbox holds before its reader counts as slow.
    outbox_len: usize,
    /// Where backplane requests go, in backplane mode.
    requests: Option<UnboundedSender<Request>>,
    /// Shutting down: every connection, even one opened now, is closed.
    closing: bool,
}

/// What a connection task finds in its outbox.
pub enum Pop {
    Item(Outbound),
    /// Nothing queued, and a ping is due.
    Ping,
    Empty,
    /// The hub dropped this connection (a slow reader): stop without a close frame.
    Gone,
}

/// Shared by every connection task and the timer task.
pub struct Hub {
    state: Mutex<State>,
    /// Woken when the switchboard's next deadline may have moved earlier.
    timer: Notify,
    next_id: AtomicU64,
    node: Option<NodeId>,
    /// Backplane mode: whether the shared store is reachable; while it is
    /// not, new connections are closed at once with 1012.
    available: AtomicBool,
    /// TURN usernames name the session they were minted for; see
    /// [`Hub::set_turn_credentials`].
    turn_tags: TurnTags,
}

/// How a TURN REST username names its signalling session without saying
/// anything about anyone: `EXPIRY:PPPPPPPPPPPPPPPPSSSSSSSSSSSSSSSS`, this
/// process's random prefix, then the connection id masked with a random
/// number. The username is signed by the REST secret, so it cannot be forged.
#[derive(Debug, Clone, Copy)]
struct TurnTags {
    prefix: u64,
    mask: u64,
}

impl TurnTags {
    fn tag(self, id: ConnId) -> String {
        format!("{:016x}{:016x}", self.prefix, id.0 ^ self.mask)
    }

    /// The connection a username names, `Err(())` for another process's
    /// (another node, or before a restart), `Ok(None)` for a malformed one.
    fn session(self, username: &str) -> Result<Option<ConnId>, ()> {
        let tag = username.split_once(':').map_or("", |(_, tag)| tag);
        if tag.len() != 32 || !tag.is_ascii() {
            return Ok(None);
        }
        let (Ok(prefix), Ok(id)) = (
            u64::from_str_radix(&tag[..16], 16),
            u64::from_str_radix(&tag[16..], 16),
        ) else {
            return Ok(None);
        };
        if prefix != self.prefix {
            return Err(());
        }
        Ok(Some(ConnId(id ^ self.mask)))
    }
}

/// How many groups [`Hub::run_pinger`] pings in turn.
const PING_GROUPS: u64 = 16;

/// The shell's clock. Tokio's, so that tests with paused time drive the core too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Hub {
    pub fn new(config: earshot_core::Config, outbox_len: usize) -> Arc<Hub> {
        Hub::with_backplane(config, outbox_len, None)
    }

    /// A hub whose switchboard is in backplane mode as `node` when given
    /// one: its requests go to `requests`.
    pub fn with_backplane(
        config: earshot_core::Config,
        outbox_len: usize,
        backplane: Option<(NodeId, UnboundedSender<Request>)>,
    ) -> Arc<Hub> {
        let mut board = Switchboard::with_entropy(
            config,
            earshot_core::Entropy::new(crate::identity::random_u64),
        );
        let node = backplane.as_ref().map(|&(node, _)| node);
        board.set_node(node);
        Arc::new(Hub {
            state: Mutex::new(State {
                board,
                outboxes: HashMap::new(),
                outbox_len,
                requests: backplane.map(|(_, tx)| tx),
                closing: false,
            }),
            timer: Notify::new(),
            next_id: AtomicU64::new(1),
            node,
            available: AtomicBool::new(true),
            turn_tags: TurnTags {
                prefix: crate::identity::random_u64(),
                mask: crate::identity::random_u64(),
            },
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug already reported; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one switchboard event, then delivers its outputs.
    fn step(&self, event: impl FnOnce(&mut Switchboard, Instant)) {
        let mut state = self.lock();
        let before = state.board.poll_timeout();
        let now = now();
        event(&mut state.board, now);
        state.deliver(now);
        let after = state.board.poll_timeout();
        if after.is_some() && (before.is_none() || after < before) {
            self.timer.notify_one();
        }
    }

    /// Registers a new connection; its task waits in [`Hub::poll_outbox`].
    pub fn connect(&self, info: ConnInfo, permit: OwnedSemaphorePermit) -> ConnId {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let id = match self.node {
            Some(node) => backplane::conn_id(node, n),
            None => ConnId(n),
        };
        let mut outbox = Outbox {
            items: VecDeque::new(),
            waker: None,
            ping: false,
            _permit: permit,
        };
        let mut state = self.lock();
        if state.closing {
            outbox
                .items
                .push_back(Outbound::Close(CloseReason::ServerRestart));
        }
        state.outboxes.insert(id, Box::new(outbox));
        drop(state);
        let available = self.available.load(Ordering::Relaxed);
        self.step(|board, now| {
            board.connect(now, id, info);
            if !available {
                board.close(now, id, CloseReason::BackplaneLost);
            }
        });
        id
    }

    /// Ready once `id` has something to [`Hub::pop`] (or is gone).
    pub fn poll_outbox(&self, id: ConnId, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        let Some(outbox) = state.outboxes.get_mut(&id) else {
            return Poll::Ready(());
        };
        if !outbox.items.is_empty() || outbox.ping {
            return Poll::Ready(());
        }
        match &mut outbox.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            None => outbox.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes the next message for `id`.
    pub fn pop(&self, id: ConnId) -> Pop {
        let mut state = self.lock();
        let Some(outbox) = state.outboxes.get_mut(&id) else {
            return Pop::Gone;
        };
        let item = outbox.items.pop_front();
        if outbox.items.is_empty() && outbox.items.capacity() > 0 {
            // Give the memory back: most sockets go idle again right away.
            outbox.items = VecDeque::new();
        }
        match item {
            Some(item) => Pop::Item(item),
            None if std::mem::take(&mut outbox.ping) => Pop::Ping,
            None => Pop::Empty,
        }
    }

    /// Pings every connection once per `every`, in [`PING_GROUPS`] groups
    /// spread over the interval; at shutdown, closes every connection with
    /// 1012 (peer connections outlive signalling: clients keep their calls
    /// and reconnect).
    pub async fn run_pinger(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let step = (every / PING_GROUPS as u32).max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for group in (0..PING_GROUPS).cycle() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let mut state = self.lock();
                    for (id, outbox) in &mut state.outboxes {
                        if id.0 % PING_GROUPS == group {
                            outbox.ping = true;
                            outbox.wake();
                        }
                    }
                }
            }
        }
        let mut state = self.lock();
        state.closing = true;
        for outbox in state.outboxes.values_mut() {
            outbox.items.clear();
            outbox
                .items
                .push_back(Outbound::Close(CloseReason::ServerRestart));
            outbox.wake();
        }
    }

    pub fn text(&self, id: ConnId, text: &str) {
        self.step(|board, now| board.handle_text(now, id, text));
    }

    pub fn binary(&self, id: ConnId) {
        self.step(|board, now| board.handle_binary(now, id));
    }

    /// The shell closes a connection (idle, oversized frame): the partner is told now.
    pub fn close(&self, id: ConnId, reason: CloseReason) {
        self.step(|board, now| board.close(now, id, reason));
    }

    pub fn disconnect(&self, id: ConnId) {
        self.step(|board, now| {
            board.disconnect(now, id);
        });
        self.lock().outboxes.remove(&id);
    }

    /// Mints TURN REST credentials for every welcome and refresh; their
    /// usernames name the session (see [`TurnTags`]).
    pub fn set_turn_credentials(&self, secret: Vec<u8>, ttl: std::time::Duration) {
        let tags = self.turn_tags;
        self.lock().board.set_turn_credentials(move |id| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            earshot_core::turn::rest_credentials(&secret, ttl, now, &tags.tag(id))
        });
    }

    /// For the embedded TURN server: whether a username names a session
    /// that is still connected and not banned. Usernames of other processes
    /// pass only with a backplane (they are other nodes' users).
    pub fn relay_check(self: &Arc<Hub>) -> earshot_core::turn::CredentialCheck {
        let hub = Arc::downgrade(self);
        let multi_node = self.node.is_some();
        Arc::new(move |username: &str| {
            let Some(hub) = hub.upgrade() else {
                return false;
            };
            match hub.turn_tags.session(username) {
                Ok(Some(id)) => hub.lock().board.may_relay(now(), id),
                Ok(None) => false,
                Err(()) => multi_node,
            }
        })
    }

    /// An answer from the backplane or a message from another node.
    pub fn backplane_event(&self, event: Event) {
        self.step(|board, now| board.handle_backplane(now, event));
    }

    /// The nodes this node's calls reach, whose heartbeats to watch.
    pub fn remote_nodes(&self) -> Vec<NodeId> {
        self.lock().board.remote_nodes()
    }

    /// Connections waiting in the shared queue.
    pub fn shared_waiters(&self) -> Vec<ConnId> {
        self.lock().board.shared_waiters()
    }

    /// Calls with a side here, whose records to keep alive.
    pub fn shared_calls(&self) -> Vec<earshot_core::protocol::CallId> {
        self.lock().board.shared_calls()
    }

    /// The store's names of rooms with members here.
    pub fn shared_rooms(&self) -> Vec<String> {
        self.lock().board.shared_rooms()
    }

    /// Marks the shared store reachable or not. On losing it, every
    /// connection is closed with 1012 ("backplane unavailable"): what the
    /// store held for them may be gone, and clients reconnect with backoff
    /// while their calls carry on.
    pub fn set_available(&self, available: bool) {
        let was = self.available.swap(available, Ordering::Relaxed);
        if was && !available {
            self.close_all(CloseReason::BackplaneLost);
        }
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Closes every connection for `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        self.step(|board, now| {
            for id in board.connection_ids() {
                board.close(now, id, reason);
            }
        });
    }

    /// Gives back the spare room a crowd that has left made the tables grow
    /// to (see [`Switchboard::compact`]), before malloc is asked to trim.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.board.compact();
        state.outboxes.shrink_to_fit();
    }

    pub fn stats(&self) -> earshot_core::switchboard::Stats {
        self.lock().board.stats()
    }

    /// Calls `handle_timeout` whenever the switchboard asks, until shutdown.
    pub async fn run_timer(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let next = self.lock().board.poll_timeout();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.timer.notified() => {}
                () = sleep => self.step(|board, now| board.handle_timeout(now)),
            }
        }
    }
}

impl State {
    fn deliver(&mut self, now: Instant) {
        while let Some(output) = self.board.poll_output() {
            match output {
                Output::Send(id, msg) => {
                    let Some(outbox) = self.outboxes.get_mut(&id) else {
                        continue;
                    };
                    if outbox.items.len() >= self.outbox_len {
                        // A slow reader: removing its outbox ends its task
                        // without a close frame, as PROTOCOL.md says.
                        tracing::debug!(conn = %id, "outbox full; dropping a slow reader");
                        if let Some(mut outbox) = self.outboxes.remove(&id) {
                            outbox.wake();
                        }
                        self.board.disconnect(now, id);
                        continue;
                    }
                    outbox.items.push_back(Outbound::Text(msg.to_json()));
                    outbox.wake();
                }
                Output::Backplane(request) => {
                    if let Some(tx) = &self.requests {
                        // Only fails once the backplane task has stopped (shutdown).
                        let _ = tx.send(request);
                    }
                }
                Output::Close(id, reason) => {
                    if let Some(outbox) = self.outboxes.get_mut(&id) {
                        // Nothing queued behind a close matters any more.
                        outbox.items.clear();
                        outbox.items.push_back(Outbound::Close(reason));
                        outbox.wake();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{ConnId, TurnTags};

    const TAGS: TurnTags = TurnTags {
        prefix: 0x0123_4567_89ab_cdef,
        mask: 0x5555_aaaa_5555_aaaa,
    };

    #[test]
    fn a_username_names_its_session() {
        let username = format!("1700000000:{}", TAGS.tag(ConnId(42)));
        assert_eq!(TAGS.session(&username), Ok(Some(ConnId(42))));
        let other = TurnTags { prefix: 7, ..TAGS };
        assert_eq!(other.session(&username), Err(()));
        assert_eq!(TAGS.session("1700000000:t"), Ok(None));
        assert_eq!(TAGS.session("1700000000"), Ok(None));
    }

    proptest! {
        /// A TURN client chooses the username it sends.
        #[test]
        fn any_username_is_judged_without_panicking(username in ".{0,80}") {
            let _ = TAGS.session(&username);
        }

        #[test]
        fn tags_round_trip(id in any::<u64>()) {
            prop_assert_eq!(TAGS.session(&format!("1:{}", TAGS.tag(ConnId(id)))), Ok(Some(ConnId(id))));
        }
    }
}
