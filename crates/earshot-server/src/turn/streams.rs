//! TURN over TCP and TLS: the caps on connections (per client and in
//! all, shared by every listener), the accept loops, the hand-over of TLS
//! connections from the HTTPS listener, and one connection's framing: STUN
//! messages and ChannelData in, whatever the driver queued out.
//!
//! A TLS connection is a TCP connection with a handshake first: admitted
//! (or refused) before the handshake, which must finish within
//! `TLS_HANDSHAKE`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use earshot_core::bytebudget::source_key;
use earshot_core::turn::codec::{Frame, stream_frame};
use earshot_core::turn::{Transport, TurnClient};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Event, TlsHandover, TurnMetrics};

/// Most TCP client connections at once (TLS ones included); more wait in
/// the accept queue.
const MAX_TCP_CONNECTIONS: usize = 1024;
/// A TLS client must finish its handshake within this time, so that a slow
/// one cannot hold a connection slot (a real one needs a round trip or two).
const TLS_HANDSHAKE: Duration = Duration::from_secs(5);
/// Frames queued for one TCP client before more are dropped.
const TCP_QUEUE: usize = 64;
/// A TCP client that does not take a frame within this time is cut off.
const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TCP connection must send its first frame within this time, and then
/// something at least this often (a client refreshes its allocation well
/// within the longest lifetime, 3600 s).
const TCP_FIRST_FRAME: Duration = Duration::from_secs(10);
const TCP_IDLE: Duration = Duration::from_secs(3660);
/// The largest TCP frame: ChannelData with 65535 bytes and padding.
const MAX_TCP_FRAME: usize = 4 + 0xFFFF + 3;

/// The caps on TCP and TLS connections, per client and in all.
pub(super) struct TcpCaps {
    per_client: usize,
    /// Open connections by client (IPv4 address or IPv6 /64).
    open: Arc<Mutex<HashMap<u128, usize>>>,
    /// `MAX_TCP_CONNECTIONS`.
    slots: Arc<Semaphore>,
    metrics: Arc<TurnMetrics>,
    /// Numbers connections of both listeners.
    next_conn: AtomicU64,
}

impl TcpCaps {
    pub(super) fn new(per_client: usize, metrics: Arc<TurnMetrics>) -> TcpCaps {
        TcpCaps {
            per_client,
            open: Arc::default(),
            slots: Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS)),
            metrics,
            next_conn: AtomicU64::new(0),
        }
    }

    /// Counts a connection from `addr` in, unless its client is at the cap.
    fn admit(&self, addr: SocketAddr) -> Option<TcpSlot> {
        let key = source_key(addr.ip());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.per_client {
            self.metrics.tcp_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(TcpSlot {
            key,
            open: self.open.clone(),
        })
    }
}

/// One admitted connection; dropping it counts it out.
struct TcpSlot {
    key: u128,
    open: Arc<Mutex<HashMap<u128, usize>>>,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

pub(super) async fn accept_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    caps: Arc<TcpCaps>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        // Wait for a free slot before accepting: excess connections wait
        // in the kernel's backlog instead of costing memory here.
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = caps.slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                // Over the cap: closed at once, before it costs anything
                // (a TLS handshake included).
                let Some(slot) = caps.admit(addr) else {
                    tracing::debug!("turn: tcp connection refused: client at its cap");
                    continue;
                };
                let events = events.clone();
                let shutdown = shutdown.clone();
                let conn = caps.next_conn.fetch_add(1, Ordering::Relaxed);
                let client = TurnClient { transport, addr };
                let tls = tls.clone();
                let metrics = caps.metrics.clone();
                tracker.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match tls {
                        None => {
                            let (reader, writer) = stream.into_split();
                            serve_stream(reader, writer, Vec::new(), conn, client, events, shutdown)
                                .await;
                        }
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream));
                            let stream = tokio::select! {
                                () = shutdown.cancelled() => return,
                                done = handshake => match done {
                                    Ok(Ok(stream)) => stream,
                                    Ok(Err(_)) | Err(_) => {
                                        metrics.tls_handshake_failed.fetch_add(1, Ordering::Relaxed);
                                        tracing::debug!("turn: tls handshake failed or timed out");
                                        return;
                                    }
                                },
                            };
                            let (reader, writer) = tokio::io::split(stream);
                            serve_stream(reader, writer, Vec::new(), conn, client, events, shutdown)
                                .await;
                        }
                    }
                    drop((permit, slot));
                });
            }
            Err(e) => {
                // Out of file descriptors, say: back off rather than spin.
                tracing::debug!(kind = %e.kind(), "turn: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves TLS connections the HTTPS listener hands over, under the same
/// caps as the others (the HTTPS listener's own caps let them in first).
pub(super) async fn take_handovers(
    mut handovers: mpsc::Receiver<TlsHandover>,
    caps: Arc<TcpCaps>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let handover = tokio::select! {
            () = shutdown.cancelled() => return,
            handover = handovers.recv() => match handover {
                Some(handover) => handover,
                None => return,
            },
        };
        let Ok(permit) = caps.slots.clone().try_acquire_owned() else {
            tracing::debug!("turn: tls connection from https refused: no free slot");
            continue;
        };
        let Some(slot) = caps.admit(handover.addr) else {
            tracing::debug!("turn: tls connection from https refused: client at its cap");
            continue;
        };
        let conn = caps.next_conn.fetch_add(1, Ordering::Relaxed);
        let client = TurnClient {
            transport: Transport::Tls,
            addr: handover.addr,
        };
        let (events, shutdown) = (events.clone(), shutdown.clone());
        tracker.spawn(async move {
            let (reader, writer) = tokio::io::split(handover.stream);
            serve_stream(
                reader,
                writer,
                handover.prefix,
                conn,
                client,
                events,
                shutdown,
            )
            .await;
            drop((permit, slot));
        });
    }
}

/// One TCP or TLS client: frames in to the driver, frames out from its
/// queue. `prefix`: what was read of it already.
async fn serve_stream(
    reader: impl AsyncRead + Unpin,
    writer: impl AsyncWrite + Unpin,
    prefix: Vec<u8>,
    conn: u64,
    client: TurnClient,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) {
    let (queue, outbound) = mpsc::channel(TCP_QUEUE);
    if events
        .send(Event::TcpOpened {
            conn,
            client,
            queue,
        })
        .await
        .is_err()
    {
        return;
    }
    // Whichever half ends first (end of stream, a bad frame, a timeout, a
    // write that does not complete) ends the connection.
    tokio::select! {
        () = shutdown.cancelled() => return,
        () = read_frames(reader, prefix, client, &events) => {}
        () = write_frames(writer, outbound) => {}
    }
    let _ = events.send(Event::TcpClosed { conn, client }).await;
}

async fn read_frames(
    mut reader: impl AsyncRead + Unpin,
    mut buf: Vec<u8>,
    client: TurnClient,
    events: &mpsc::Sender<Event>,
) {
    buf.reserve(2048);
    let mut chunk = [0u8; 4096];
    let mut timeout = TCP_FIRST_FRAME;
    let mut first = true;
    loop {
        // Hand over every complete frame in the buffer.
        loop {
            // A client opens with a request: a stream starting with anything
            // else (HTTP, say, which looks like ChannelData) is not TURN.
            if first && buf.first().is_some_and(|b| b >> 6 != 0) {
                return;
            }
            let len = match stream_frame(&buf) {
                Frame::Incomplete => break,
                Frame::Invalid => return,
                Frame::Len(len) if len > MAX_TCP_FRAME => return,
                Frame::Len(len) if len > buf.len() => break,
                Frame::Len(len) => len,
            };
            let data = buf[..len].to_vec();
            buf.drain(..len);
            timeout = TCP_IDLE;
            first = false;
            if events
                .send(Event::Client { from: client, data })
                .await
                .is_err()
            {
                return;
            }
        }
        match tokio::time::timeout(timeout, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn write_frames(mut writer: impl AsyncWrite + Unpin, mut outbound: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = outbound.recv().await {
        // Flushed frame by frame: TLS holds records back until then.
        let write = async {
            writer.write_all(&frame).await?;
            writer.flush().await
        };
        match tokio::time::timeout(TCP_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}
