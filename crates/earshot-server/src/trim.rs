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
//! free lists) is spread over thousands of connections. Right before, the
//! hub shrinks the tables that kept the crowd's peak capacity
//! ([`Hub::compact`]), so that their pages are free to give back.
//!
//! [`tune`] also sets two malloc options at start (see there). Elsewhere than
//! glibc all of this does nothing.

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
            let hub = hub.clone();
            let trimmed = tokio::task::spawn_blocking(move || {
                hub.compact();
                release()
            })
            .await
            .unwrap_or(false);
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

/// Largest allocation malloc serves from its heaps; larger ones are mapped
/// on their own and unmapped as soon as they are freed.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Sets malloc's options for a server whose crowds come and go; call first
/// thing in `main`, before any thread starts.
///
/// - One arena for all threads, unless `MALLOC_ARENA_MAX` says otherwise:
///   each extra arena keeps its own leftovers after a crowd, and idle RSS
///   was 0.2-0.3 MiB lower and flatter with one (BENCHMARKS.md, *Soak*). The
///   server's state is behind one lock anyway, and small allocations go
///   through each thread's cache without the arena's lock.
/// - A fixed mmap threshold. By default glibc raises it to the size of every
///   mapped block freed (up to 32 MiB), so after the first crowd, tables
///   sized for it (hundreds of KiB) come from the heap, where newer chunks
///   pin their pages.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "mallopt is glibc's, with no Rust binding")]
pub fn tune() {
    // An operator's MALLOC_ARENA_MAX wins (glibc has read it already).
    let one_arena = std::env::var_os("MALLOC_ARENA_MAX").is_none();
    // SAFETY: mallopt only sets glibc's allocator parameters, under its
    // locks, and takes no pointers; called before other threads start.
    unsafe {
        if one_arena {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

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
