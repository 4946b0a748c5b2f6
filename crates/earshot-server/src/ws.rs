//! One task per signalling WebSocket: the upgrade, frames in to the hub, the
//! hub's messages out, pings, the idle timeout and the close handshake.
//!
//! Bounds: frames over `max_frame_bytes` close the socket (1009); a write
//! that takes longer than `write_timeout` drops it; a socket silent for
//! `idle_timeout` is closed (1001). The task never logs the peer's address:
//! it never even learns it.
//!
//! tungstenite reads frames; the task writes its own (server frames are a
//! header and the payload, unmasked). tungstenite would format every frame
//! into a buffer that keeps the capacity of the largest batch it has sent, a
//! few hundred bytes on every idle socket; ours lives only while a batch is
//! written. tungstenite still writes its own answers (a pong, the reply to a
//! client's close), so the task flushes those before each write of its own.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use earshot_core::{CloseReason, ConnId, ConnInfo};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::App;
use crate::hub::{Outbound, Pop};

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Frames queued together are written with one syscall up to this size (see
/// `drain`).
const WRITE_BATCH_BYTES: usize = 16 * 1024;

/// tungstenite's read buffer: its initial size, and the most one read takes.
/// Small, since it stays allocated while the socket idles; a large SDP gets
/// its whole frame reserved once its header is read. 248 rather than 256:
/// with malloc's 8-byte header that is a 256-byte chunk, not 272, and a
/// trickled candidate (about 240 bytes framed) still takes one read.
const READ_BUFFER_BYTES: usize = 248;

/// A `/ws` upgrade request (HTTP/1.1, RFC 6455 section 4.2.1), checked.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Upgrade, Response> {
        let refuse = |status: StatusCode, why: &'static str| (status, why).into_response();
        if parts.method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"));
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "a WebSocket upgrade only\n",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "WebSocket version 13 only\n",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(refuse(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n"));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "not upgradable\n"));
        };
        Ok(Upgrade { key, on_upgrade })
    }
}

/// Whether a comma-separated header lists `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

impl Upgrade {
    /// Answers 101 and, once hyper hands the connection over, spawns its task.
    pub fn accept(
        self,
        app: Arc<App>,
        info: ConnInfo,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Response {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        app.tracker.clone().spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let config = WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER_BYTES)
                .max_message_size(Some(app.settings.max_frame_bytes))
                .max_frame_size(Some(app.settings.max_frame_bytes));
            let socket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            // The socket gets a task of its own, so that this one and
            // everything it captured are freed at once.
            spawn(socket, app, info, permit);
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
            [(header::SEC_WEBSOCKET_ACCEPT, accept)],
        )
            .into_response()
    }
}

/// Serves one upgraded socket until it closes, the hub drops it, or shutdown.
///
/// Spawned as its own task, and written so that the task holds the socket
/// once and nothing it no longer needs: an idle socket's whole cost is this
/// task (see BENCHMARKS.md).
fn spawn(socket: Socket, app: Arc<App>, info: ConnInfo, permit: Option<OwnedSemaphorePermit>) {
    let tracker = app.tracker.clone();
    match permit {
        Some(permit) => {
            let id = app.hub.connect(info, permit);
            tracker.spawn(connection(socket, app, id));
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
fn connection(mut socket: Socket, app: Arc<App>, id: ConnId) -> impl Future<Output = ()> + Send {
    async move {
        // The id is in each event rather than in a span: a span would be
        // carried by every idle task.
        tracing::debug!(conn = %id, "connected");
        let mut last_heard = Instant::now();
        let end = loop {
            // Everything but the socket reaches the task through its outbox
            // (messages, pings, shutdown): one waker in the hub instead of a
            // future per source in every idle task, and one plain `poll`
            // function rather than `select!`, whose machinery every idle
            // task would carry too.
            let step = std::future::poll_fn(|cx| {
                // Our own output before reading more, so a client's replies
                // never pile up behind its own requests.
                if app.hub.poll_outbox(id, cx).is_ready() {
                    return Poll::Ready(Step::Drain);
                }
                read(&app, id, &mut socket, &mut last_heard, cx).map(Step::Read)
            });
            match step.await {
                Step::Drain => {
                    // Boxed, as the writes below are: the rarely-running
                    // futures must not size every idle task.
                    if let Err(why) = Box::pin(drain(&app, id, &mut socket, last_heard)).await {
                        break why;
                    }
                }
                Step::Read(Some(why)) => break why,
                Step::Read(None) => {}
            }
        };
        app.hub.disconnect(id);
        tracing::debug!(conn = %id, why = end, "disconnected");
    }
}

/// What woke a connection's task.
enum Step {
    /// Its outbox has something.
    Drain,
    /// It read a frame; `Some` says why the connection ends.
    Read(Option<&'static str>),
}

/// Reads one frame and hands it to the hub; `Some` says why the
/// connection ends. A plain function, so that no frame is ever part of the
/// task's state.
fn read(
    app: &App,
    id: ConnId,
    socket: &mut Socket,
    last_heard: &mut Instant,
    cx: &mut Context<'_>,
) -> Poll<Option<&'static str>> {
    let Poll::Ready(frame) = socket.poll_next_unpin(cx) else {
        return Poll::Pending;
    };
    *last_heard = Instant::now();
    Poll::Ready(match frame {
        Some(Ok(Message::Text(text))) => {
            app.hub.text(id, text.as_str());
            None
        }
        Some(Ok(Message::Binary(_))) => {
            app.hub.binary(id);
            None
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
        Some(Ok(Message::Close(_))) | None => Some("client closed"),
        // The close comes back through the outbox.
        Some(Err(tungstenite::Error::Capacity(_))) => {
            app.hub.close(id, CloseReason::MessageTooBig);
            None
        }
        Some(Err(_)) => Some("read error"),
    })
}

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// Appends one unfragmented, unmasked server frame (RFC 6455 section 5.2).
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    // Lossless: each arm's range fits its width.
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Sends everything in the outbox; `Err` says why the connection must end.
/// Messages queued together (`searching` and `matched`, trickled candidates)
/// go out in one write: on loopback, sending is most of the cost.
async fn drain(
    app: &App,
    id: ConnId,
    socket: &mut Socket,
    last_heard: Instant,
) -> Result<(), &'static str> {
    let limit = app.settings.write_timeout;
    let mut batch = Vec::new();
    loop {
        match app.hub.pop(id) {
            Pop::Ping if last_heard.elapsed() >= app.settings.idle_timeout => {
                // Tells the partner; the close comes back through the outbox.
                app.hub.close(id, CloseReason::IdleTimeout);
            }
            Pop::Ping => frame(&mut batch, OP_PING, b""),
            Pop::Empty if batch.is_empty() => return Ok(()),
            Pop::Empty => {
                return match write(socket, batch, limit).await {
                    true => Ok(()),
                    false => Err("write failed or timed out"),
                };
            }
            Pop::Gone => return Err("dropped as a slow reader"),
            Pop::Item(Outbound::Text(text)) => {
                frame(&mut batch, OP_TEXT, text.as_bytes());
                if batch.len() >= WRITE_BATCH_BYTES
                    && !write(socket, std::mem::take(&mut batch), limit).await
                {
                    return Err("write failed or timed out");
                }
            }
            Pop::Item(Outbound::Close(reason)) => {
                if !batch.is_empty() {
                    write(socket, batch, limit).await;
                }
                let limit = match reason {
                    // Peer connections outlive signalling: clients keep
                    // their calls and reconnect; shutdown does not wait long.
                    CloseReason::ServerRestart => limit.min(Duration::from_secs(1)),
                    _ => limit,
                };
                send_close(socket, reason, limit).await;
                return Err(reason.reason());
            }
        }
    }
}

/// Writes whole frames after anything tungstenite has queued (a pong), so
/// that frames never interleave.
async fn write(socket: &mut Socket, frames: Vec<u8>, limit: Duration) -> bool {
    let write = async move {
        socket.flush().await.ok()?;
        let io = socket.get_mut();
        io.write_all(&frames).await.ok()?;
        io.flush().await.ok()
    };
    matches!(timeout(limit, write).await, Ok(Some(())))
}

/// Starts the closing handshake and reads until the client answers it (or
/// `limit` passes), so that unread input does not turn the close into a reset
/// that would hide the reason from the client. Boxed to keep idle tasks small.
fn send_close(
    socket: &mut Socket,
    reason: CloseReason,
    limit: Duration,
) -> Pin<Box<impl Future<Output = bool> + Send + '_>> {
    Box::pin(close_handshake(socket, reason, limit))
}

async fn close_handshake(socket: &mut Socket, reason: CloseReason, limit: Duration) -> bool {
    let mut payload = reason.code().to_be_bytes().to_vec();
    payload.extend_from_slice(reason.reason().as_bytes());
    let mut close = Vec::new();
    frame(&mut close, OP_CLOSE, &payload);
    if !write(socket, close, limit).await {
        return false;
    }
    let drain = async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    timeout(limit.min(Duration::from_secs(2)), drain)
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_use_the_shortest_length_encoding() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            frame(&mut out, OP_TEXT, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len, "payload of {len}");
            assert_eq!(out[0], 0x81);
            let first = match header {
                2 => len,
                4 => 126,
                _ => 127,
            };
            assert_eq!(usize::from(out[1]), first);
        }
    }
}
