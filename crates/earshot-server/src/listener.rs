//! The TCP accept loop's guards, before HTTP even starts.
//!
//! - A cap on TCP connections in total and per client key, so that one
//!   network cannot use up the process's file descriptors.
//! - A deadline for the first request's headers (slowloris): a connection
//!   that has not sent a complete request head within `header_timeout` is
//!   dropped. Once the head is in (for `/ws`, the upgrade request) the
//!   deadline is off: an upgraded signalling socket has its own idle rules.
//!
//! - TLS, when configured: the handshake runs inside the connection's own
//!   task (never in the accept loop), and the head deadline covers it too.
//! - TURN over TLS on the HTTPS port, when configured: a TLS connection
//!   whose first bytes are a STUN message (HTTP starts with a letter) is
//!   handed to the TURN server, and HTTP sees it end.
//!
//! The peer's address is handed on only inside [`Pii`], as [`ClientAddr`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use earshot_core::ClientKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::identity::{Keyer, Pii};
use crate::proxy::TrustedProxies;
use crate::turn::TlsHandover;

type Handovers = tokio::sync::mpsc::Sender<TlsHandover>;

/// The client's address, for deriving its key; never formatted.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub Pii<SocketAddr>);

impl Connected<IncomingStream<'_, GuardedListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        *stream.remote_addr()
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_key: HashMap<ClientKey, usize>,
}

/// Limits for [`GuardedListener`].
#[derive(Debug, Clone, Copy)]
pub struct Guards {
    pub max_total: usize,
    pub max_per_client: usize,
    pub header_timeout: Duration,
}

pub struct GuardedListener {
    inner: TcpListener,
    keyer: Arc<Keyer>,
    /// Their connections carry many clients: no per-client cap for them.
    proxies: TrustedProxies,
    tls: Option<TlsAcceptor>,
    /// Where TURN over TLS goes, if it shares the HTTPS port.
    turn: Option<Handovers>,
    guards: Guards,
    counts: Arc<Mutex<Counts>>,
}

impl GuardedListener {
    /// Hands TLS connections that speak TURN to `turn`.
    pub fn with_turn(mut self, turn: Option<Handovers>) -> GuardedListener {
        self.turn = turn;
        self
    }

    pub fn new(
        inner: TcpListener,
        keyer: Arc<Keyer>,
        proxies: TrustedProxies,
        tls: Option<TlsAcceptor>,
        guards: Guards,
    ) -> GuardedListener {
        GuardedListener {
            inner,
            keyer,
            proxies,
            tls,
            turn: None,
            guards,
            counts: Arc::default(),
        }
    }
}

/// Gives a connection's slot back when it closes.
struct Slot {
    key: ClientKey,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.per_key.remove(&self.key);
            }
        }
    }
}

impl Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::debug!(error = %e.kind(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let key = self.keyer.key(Pii(addr.ip()));
            let admitted = {
                let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
                let mine = c.per_key.get(&key).copied().unwrap_or(0);
                let capped =
                    !self.proxies.contains(addr.ip()) && mine >= self.guards.max_per_client;
                if c.total >= self.guards.max_total || capped {
                    false
                } else {
                    c.total += 1;
                    *c.per_key.entry(key).or_default() += 1;
                    true
                }
            };
            if !admitted {
                tracing::debug!("refused a TCP connection over the caps");
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let io = GuardedStream {
                io: match &self.tls {
                    Some(tls) => Io::Handshaking(Box::new(tls.accept(stream))),
                    None => Io::Plain(stream),
                },
                deadline: Some(Box::pin(tokio::time::sleep(self.guards.header_timeout))),
                head: HeadScan::default(),
                turn: self
                    .turn
                    .clone()
                    .filter(|_| self.tls.is_some())
                    .map(|t| (t, addr)),
                _slot: Slot {
                    key,
                    counts: self.counts.clone(),
                },
            };
            return (io, ClientAddr(Pii(addr)));
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr().map(|a| ClientAddr(Pii(a)))
    }
}

/// Finds the blank line that ends an HTTP request head, across reads.
#[derive(Default)]
struct HeadScan {
    /// How much of "\r\n\r\n" the bytes so far end with.
    matched: u8,
}

impl HeadScan {
    fn feed(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[usize::from(self.matched)] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                return true;
            }
        }
        false
    }
}

/// The transport under HTTP: plain TCP, or TLS once its handshake is done.
enum Io {
    Plain(TcpStream),
    Handshaking(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

pub struct GuardedStream {
    io: Io,
    /// Until the first request head is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    head: HeadScan,
    /// Until the first bytes are read: where to hand the connection if
    /// they are TURN.
    turn: Option<(Handovers, SocketAddr)>,
    _slot: Slot,
}

impl GuardedStream {
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }

    /// Drives a TLS handshake; `Ready(Ok)` once the stream is usable.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Io::Handshaking(accept) = &mut self.io {
            match Pin::new(&mut **accept).poll(cx) {
                Poll::Ready(Ok(tls)) => self.io = Io::Tls(Box::new(tls)),
                Poll::Ready(Err(e)) => {
                    self.io = Io::Failed;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending if self.expired(cx) => return Poll::Ready(Err(too_slow())),
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.io {
            Io::Failed => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

fn too_slow() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "request head too slow")
}

/// Calls the same method on whichever stream is live.
macro_rules! on_stream {
    ($self:ident, $cx:ident, |$s:ident| $call:expr) => {{
        let this = &mut *$self;
        if let Poll::Ready(Err(e)) = this.poll_ready($cx) {
            return Poll::Ready(Err(e));
        }
        if matches!(this.io, Io::Handshaking(_)) {
            return Poll::Pending;
        }
        match &mut this.io {
            Io::Plain($s) => $call,
            Io::Tls(tls) => {
                let $s = &mut **tls;
                $call
            }
            Io::Handshaking(_) | Io::Failed => unreachable!("handled by poll_ready"),
        }
    }};
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = on_stream!(self, cx, |s| Pin::new(s).poll_read(cx, buf));
        let this = &mut *self;
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before && this.turn.is_some() => {
                let (turn, addr) = this.turn.take().expect("checked above");
                // A TURN client opens with a request: first byte 0 or 1.
                if buf.filled()[before] >> 6 == 0 && matches!(this.io, Io::Tls(_)) {
                    let Io::Tls(stream) = std::mem::replace(&mut this.io, Io::Failed) else {
                        unreachable!("matched just above")
                    };
                    let prefix = buf.filled()[before..].to_vec();
                    buf.set_filled(before);
                    let handover = TlsHandover {
                        stream: *stream,
                        addr,
                        prefix,
                    };
                    if turn.try_send(handover).is_err() {
                        tracing::debug!("turn over https: hand-over queue full");
                    }
                    // HTTP sees the end of the stream.
                    return Poll::Ready(Ok(()));
                }
                if this.deadline.is_some() && this.head.feed(&buf.filled()[before..]) {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() && this.head.feed(&buf.filled()[before..]) {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(too_slow())),
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, cx, |s| Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, cx, |s| Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, cx, |s| Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, cx, |s| Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Handshaking(_) | Io::Failed => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScan;

    #[test]
    fn the_head_ends_at_the_first_blank_line_across_reads() {
        let mut h = HeadScan::default();
        assert!(!h.feed(b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!h.feed(b"\n\r"));
        assert!(h.feed(b"\nrest"));
        let mut h = HeadScan::default();
        assert!(!h.feed(b"a\r\n\r\r\n"));
        assert!(h.feed(b"\r\n"));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::HeadScan;

    proptest! {
        /// Fed in any chunks, the scan finds the end of the head exactly
        /// when the bytes so far contain a blank line.
        #[test]
        fn chunking_does_not_matter(
            bytes in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'a')], 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut scan = HeadScan::default();
            let mut found_at = None;
            for w in cuts.windows(2) {
                if scan.feed(&bytes[w[0]..w[1]]) {
                    found_at = Some(w[1]);
                    break;
                }
            }
            let first = bytes.windows(4).position(|w| w == b"\r\n\r\n");
            prop_assert_eq!(found_at.is_some(), first.is_some());
            if let (Some(end), Some(pos)) = (found_at, first) {
                prop_assert!(end >= pos + 4);
            }
        }
    }
}
