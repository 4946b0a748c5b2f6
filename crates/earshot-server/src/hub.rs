//! The hub drives the sans-IO [`Switchboard`]: it feeds it events with the
//! current time, delivers its outputs to connection tasks, and runs its timer.
//!
//! One mutex guards the switchboard and the outbound queues together, so an
//! event and the delivery of everything it caused happen as one step.
//! Delivery never waits: each connection has a bounded queue, and a full
//! queue means a slow reader, which is disconnected at once (its partner is
//! told) rather than allowed to hold up anyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use earshot_core::{CloseReason, ConnId, ConnInfo, Output, Switchboard};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What a connection task is asked to do.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
    Close(CloseReason),
}

struct State {
    board: Switchboard,
    queues: HashMap<ConnId, mpsc::Sender<Outbound>>,
}

/// Shared by every connection task and the timer task.
pub struct Hub {
    state: Mutex<State>,
    /// Woken when the switchboard's next deadline may have moved earlier.
    timer: Notify,
    next_id: AtomicU64,
    queue_len: usize,
}

/// The shell's clock. Tokio's, so that tests with paused time drive the core too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Hub {
    pub fn new(config: earshot_core::Config, queue_len: usize) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State {
                board: Switchboard::new(config),
                queues: HashMap::new(),
            }),
            timer: Notify::new(),
            next_id: AtomicU64::new(1),
            queue_len,
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

    /// Registers a new connection; its outbound messages arrive on the receiver.
    pub fn connect(&self, info: ConnInfo) -> (ConnId, mpsc::Receiver<Outbound>) {
        let id = ConnId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(self.queue_len);
        self.lock().queues.insert(id, tx);
        self.step(|board, now| board.connect(now, id, info));
        (id, rx)
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
        self.lock().queues.remove(&id);
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
                    let Some(queue) = self.queues.get(&id) else {
                        continue;
                    };
                    let text = Utf8Bytes::from(msg.to_json());
                    if queue.try_send(Outbound::Text(text)).is_err() {
                        // A slow reader: dropping the sender ends its task
                        // without a close frame, as PROTOCOL.md says.
                        tracing::debug!(conn = %id, "outbound queue full; dropping a slow reader");
                        self.queues.remove(&id);
                        self.board.disconnect(now, id);
                    }
                }
                Output::Close(id, reason) => {
                    if let Some(queue) = self.queues.remove(&id) {
                        let _ = queue.try_send(Outbound::Close(reason));
                    }
                }
            }
        }
    }
}
