//! One task per signalling WebSocket: frames in to the hub, the hub's
//! messages out, pings, the idle timeout and the close handshake.
//!
//! Bounds: frames over `max_frame_bytes` close the socket (1009); a write
//! that takes longer than `write_timeout` drops it; a socket silent for
//! `idle_timeout` is closed (1001). The task never logs the peer's address:
//! it never even learns it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use earshot_core::{CloseReason, ConnId, ConnInfo};
use futures_util::SinkExt;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::App;
use crate::hub::{Outbound, Pop};

/// Frames queued together are written with one syscall up to this size (see
/// `drain`). tungstenite's buffer grows only as far as a batch needs (and
/// keeps that capacity, as it kept the largest single frame's before).
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// Applies the per-socket buffer limits: signalling sockets are mostly idle,
/// so buffers start small and only grow for the rare large SDP.
pub fn configure(upgrade: WebSocketUpgrade, max_frame_bytes: usize) -> WebSocketUpgrade {
    upgrade
        .read_buffer_size(256)
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(max_frame_bytes * 4)
        .max_message_size(max_frame_bytes)
        .max_frame_size(max_frame_bytes)
}

/// How many groups [`Pinger`] wakes in turn.
const PING_GROUPS: u64 = 16;

/// One timer for every socket's pings and idle checks. A timer of its own
/// would cost each idle socket a boxed `Sleep` and its wheel entry; instead
/// sockets wait in one of [`PING_GROUPS`] groups, and one task wakes a group
/// every `ping_interval / PING_GROUPS`, so pings are spread over the interval.
pub struct Pinger {
    groups: [Notify; PING_GROUPS as usize],
}

impl Pinger {
    pub fn new() -> Pinger {
        Pinger {
            groups: std::array::from_fn(|_| Notify::new()),
        }
    }

    fn group(&self, id: ConnId) -> &Notify {
        // Lossless: the remainder is below PING_GROUPS.
        &self.groups[(id.0 % PING_GROUPS) as usize]
    }

    /// Wakes the groups in turn until shutdown: each socket once per `every`.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let step = (every / PING_GROUPS as u32).max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(Instant::now() + step, step);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for group in self.groups.iter().cycle() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => group.notify_waiters(),
            }
        }
    }
}

/// Serves one upgraded socket until it closes, the hub drops it, or shutdown.
///
/// Spawned as its own task rather than awaited inside axum's upgrade future,
/// and written so that the task holds the socket once and nothing it no
/// longer needs: an idle socket's whole cost is this task (see BENCHMARKS.md).
pub fn spawn(
    socket: WebSocket,
    app: Arc<App>,
    info: ConnInfo,
    permit: Option<OwnedSemaphorePermit>,
) {
    let tracker = app.tracker.clone();
    match permit {
        Some(permit) => {
            let (id, wake) = app.hub.connect(info);
            let span = tracing::debug_span!("conn", conn = %id);
            tracker.spawn(connection(socket, app, id, wake, permit).instrument(span));
        }
        None => {
            let limit = app.settings.write_timeout;
            tracker.spawn(async move {
                let mut socket = socket;
                send_close(&mut socket, CloseReason::ServerFull, limit).await;
            });
        }
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of its arguments in the task"
)]
fn connection(
    mut socket: WebSocket,
    app: Arc<App>,
    id: ConnId,
    wake: Arc<Notify>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    async move {
        tracing::debug!("connected");
        let socket = &mut socket;
        let settings = &app.settings;
        let mut last_heard = Instant::now();
        let end = loop {
            tokio::select! {
                // Shutdown first, then our own output before reading more, so
                // a client's replies never pile up behind its own requests.
                biased;
                () = app.shutdown.cancelled() => {
                    // Peer connections outlive signalling: clients keep their
                    // calls and reconnect.
                    send_close(socket, CloseReason::ServerRestart, Duration::from_secs(1)).await;
                    break "server shutting down";
                }
                () = wake.notified() => match drain(&app, id, socket).await {
                    Ok(()) => {}
                    Err(why) => break why,
                },
                frame = socket.recv() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => app.hub.text(id, text.as_str()),
                        Some(Ok(Message::Binary(_))) => app.hub.binary(id),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Ok(Message::Close(_))) | None => break "client closed",
                        Some(Err(e)) => {
                            if is_too_big(&e) {
                                app.hub.close(id, CloseReason::MessageTooBig);
                                send_close(socket, CloseReason::MessageTooBig, settings.write_timeout).await;
                                break "frame too big";
                            }
                            break "read error";
                        }
                    }
                }
                () = app.pinger.group(id).notified() => {
                    if last_heard.elapsed() >= settings.idle_timeout {
                        app.hub.close(id, CloseReason::IdleTimeout);
                        send_close(socket, CloseReason::IdleTimeout, settings.write_timeout).await;
                        break "idle timeout";
                    }
                    if !write(socket, Message::Ping(Default::default()), settings.write_timeout).await {
                        break "ping failed";
                    }
                }
            }
        };
        app.hub.disconnect(id);
        drop(permit);
        tracing::debug!(why = end, "disconnected");
    }
}

/// Sends everything in the outbox; `Err` says why the connection must end.
/// Messages queued together (`searching` and `matched`, trickled candidates)
/// are buffered and flushed once: on loopback, sending is most of the cost.
async fn drain(app: &App, id: ConnId, socket: &mut WebSocket) -> Result<(), &'static str> {
    let limit = app.settings.write_timeout;
    let mut unflushed = false;
    loop {
        match app.hub.pop(id) {
            Pop::Empty if !unflushed => return Ok(()),
            Pop::Empty => {
                if !matches!(Box::pin(timeout(limit, socket.flush())).await, Ok(Ok(()))) {
                    return Err("write failed or timed out");
                }
                return Ok(());
            }
            Pop::Gone => return Err("dropped as a slow reader"),
            Pop::Item(Outbound::Text(text)) => {
                let feed = Box::pin(timeout(limit, socket.feed(Message::Text(text))));
                if !matches!(feed.await, Ok(Ok(()))) {
                    return Err("write failed or timed out");
                }
                unflushed = true;
            }
            Pop::Item(Outbound::Close(reason)) => {
                send_close(socket, reason, limit).await;
                return Err(reason.reason());
            }
        }
    }
}

/// Boxed so that the rarely-running write does not size every idle task's future.
async fn write(socket: &mut WebSocket, msg: Message, limit: Duration) -> bool {
    matches!(Box::pin(timeout(limit, socket.send(msg))).await, Ok(Ok(())))
}

/// Starts the closing handshake and reads until the client answers it (or
/// `limit` passes), so that unread input does not turn the close into a reset
/// that would hide the reason from the client.
async fn send_close(socket: &mut WebSocket, reason: CloseReason, limit: Duration) -> bool {
    // Boxed, like `write`, to keep idle tasks small.
    Box::pin(close_handshake(socket, reason, limit)).await
}

async fn close_handshake(socket: &mut WebSocket, reason: CloseReason, limit: Duration) -> bool {
    let frame = CloseFrame {
        code: reason.code(),
        reason: reason.reason().into(),
    };
    if !write(socket, Message::Close(Some(frame)), limit).await {
        return false;
    }
    let drain = async {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    timeout(limit.min(Duration::from_secs(2)), drain)
        .await
        .is_ok()
}

/// Whether a read error is tungstenite refusing an oversized frame or message.
fn is_too_big(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}
