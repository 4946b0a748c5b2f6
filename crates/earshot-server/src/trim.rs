//! Giving memory back to the operating system after a crowd has left.
//!
//! Every connection allocates a few KiB (its task, buffers, its state in the
//! switchboard) and frees them when it closes. glibc's malloc keeps freed
//! memory for reuse rather than returning it, and what it keeps depends on
//! how the frees fell: after a busy hour, the process can hold its peak for
//! good, and how much of it varies from one crowd to the next. That reads as
//! growth to an operator (and to `earshot-bench soak`) although nothing is
//! left behind.
//!
//! So a task watches the number of open connections, and when it has fallen
//! by at least half of its peak since the last trim (and by at least
//! [`MIN_DROP`]) and has stopped falling, asks malloc to release its free
//! pages (`malloc_trim`), on a blocking thread. That happens at most once per [`CHECK_EVERY`], and
//! only after many connections closed, so its cost (a walk over malloc's
//! free lists) is spread over thousands of connections. Elsewhere than glibc
//! it does nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// How often the connection count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The fewest closed connections worth a trim.
pub const MIN_DROP: usize = 500;

/// Whether to trim, given the peak since the last trim, the count at the
/// previous look and the count now. Waits until the crowd has stopped
/// leaving: a trim halfway down would leave the rest of the exodus's memory
/// kept, and the drop after it might be too small for another.
fn due(peak: usize, before: usize, now: usize) -> bool {
    let dropped = peak.saturating_sub(now);
    dropped >= MIN_DROP && dropped * 2 >= peak && now >= before
}

/// Runs until shutdown.
pub async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0;
    let mut before = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = hub.stats().connections;
        peak = peak.max(now);
        let falling = before;
        before = now;
        if due(peak, falling, now) {
            peak = now;
            let trimmed = tokio::task::spawn_blocking(release).await.unwrap_or(false);
            tracing::debug!(trimmed, "gave free memory back after connections closed");
        }
    }
}

/// Asks malloc to return free memory to the system; whether it did.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "malloc_trim is glibc's, with no Rust binding")]
fn release() -> bool {
    // SAFETY: malloc_trim only walks glibc's own allocator state, under its
    // locks, and may be called from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_many_connections_closed() {
        assert!(!due(0, 0, 0));
        assert!(!due(400, 0, 0), "too few to matter");
        assert!(due(500, 0, 0));
        assert!(due(10_000, 5_000, 5_000));
        assert!(!due(10_000, 6_000, 5_000), "still leaving");
        assert!(due(10_000, 4_000, 5_000), "coming back");
        assert!(!due(10_000, 5_001, 5_001), "less than half closed");
        assert!(!due(10_000, 10_000, 10_000));
        assert!(!due(10, 20, 20));
        // Safe to call at any time, trimmed or not.
        let _ = release();
    }
}
