//! The embedded STUN server's UDP loop: datagrams in, answers out.
//!
//! All decisions live in `earshot_core::stun`; this task only moves bytes
//! between one UDP socket and that codec. Invariants:
//! - One bad datagram, or a failed send, never ends the loop; only
//!   `shutdown` does.
//! - Nothing logged here names a peer: an error is logged by kind only, since
//!   the address is the one thing a STUN server learns about a client.
//! - No allocation per datagram: one receive buffer and one answer buffer.
//! - No amplification: a source address can be forged, so answers draw on
//!   its [`AnswerBudget`]; a flood from one source gets back far fewer
//!   bytes than it sent, and every other source is still answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use earshot_core::bytebudget::{AnswerBudget, AnswerBudgetConfig};
use earshot_core::stun;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Aggregate counters for `/metrics`.
#[derive(Debug, Default)]
pub struct StunMetrics {
    /// Answers not sent for want of the source's budget.
    pub rate_limited: AtomicU64,
}

/// Datagrams longer than this are dropped unread: STUN needs a few dozen
/// bytes, and nothing bigger than an Ethernet MTU is a genuine request.
const MAX_DATAGRAM: usize = 1500;

/// Tallies for the shutdown log line; counts, never addresses.
#[derive(Debug, Default)]
struct Counts {
    answered: u64,
    limited: u64,
    ignored: u64,
    dropped: u64,
    oversized: u64,
    recv_errors: u64,
    send_errors: u64,
}

/// Answer STUN Binding requests on `socket` until `shutdown` is cancelled.
pub async fn serve(socket: UdpSocket, metrics: Arc<StunMetrics>, shutdown: CancellationToken) {
    let mut budget = AnswerBudget::new(Instant::now(), AnswerBudgetConfig::default());
    // Bigger than MAX_DATAGRAM so that an oversized datagram shows as such
    // instead of arriving silently truncated.
    let mut buf = [0u8; 2048];
    let mut out = [0u8; MAX_DATAGRAM];
    let mut counts = Counts::default();
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(e) => {
                // On Linux an ICMP "port unreachable" for an earlier answer
                // surfaces here as ECONNREFUSED; it says nothing about us.
                counts.recv_errors += 1;
                tracing::debug!(kind = %e.kind(), "stun: receive failed");
                // Stay responsive to shutdown should an error repeat.
                tokio::task::yield_now().await;
                continue;
            }
        };
        if len > MAX_DATAGRAM {
            counts.oversized += 1;
            tracing::debug!(len, "stun: oversized datagram dropped");
            continue;
        }
        let n = match stun::answer(&buf[..len], from, &mut out) {
            Ok(Some(n)) => n,
            Ok(None) => {
                counts.ignored += 1;
                continue;
            }
            Err(e) => {
                // Anything can arrive on a public UDP port: not STUN,
                // an RFC 3489 client, a scanner.
                counts.dropped += 1;
                tracing::debug!(error = %e, "stun: datagram dropped");
                continue;
            }
        };
        if !budget.allow(Instant::now(), from.ip(), n) {
            counts.limited += 1;
            metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match socket.send_to(&out[..n], from).await {
            Ok(_) => counts.answered += 1,
            Err(e) => {
                // Only the kind: an `io::Error`'s message is the OS's to
                // word, and a send error must not end the loop.
                counts.send_errors += 1;
                tracing::debug!(kind = %e.kind(), "stun: send failed");
            }
        }
    }
    tracing::debug!(
        answered = counts.answered,
        limited = counts.limited,
        ignored = counts.ignored,
        dropped = counts.dropped,
        oversized = counts.oversized,
        recv_errors = counts.recv_errors,
        send_errors = counts.send_errors,
        "stun: stopped"
    );
}
