//! Counts of events in a sliding window, in a fixed number of buckets.
//!
//! A [`Window`] keeps [`BUCKETS`] counters, one per slice of the window
//! (`window / BUCKETS` long), instead of a timestamp per event: its size
//! never changes, however many events it counts. An event is forgotten when
//! its slice leaves the window, so the window is exact to one slice.

/// Slices per window: with the default 24-hour strike window, 3 hours each.
pub const BUCKETS: usize = 8;

/// Events per slice of a window, the newest slice last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Counts by slice number modulo [`BUCKETS`]; saturating.
    counts: [u16; BUCKETS],
    /// The newest slice counted into `counts`.
    head: u32,
}

impl Window {
    /// Forgets the slices that have left the window by slice `now`.
    fn advance(&mut self, now: u32) {
        if now <= self.head {
            return;
        }
        let gone = (now - self.head).min(BUCKETS as u32);
        for i in 1..=gone {
            self.counts[((self.head + i) as usize) % BUCKETS] = 0;
        }
        self.head = now;
    }

    /// Counts one event in slice `now` (a clock going backwards counts in
    /// the newest slice).
    pub fn add(&mut self, now: u32) {
        self.advance(now);
        let c = &mut self.counts[(self.head as usize) % BUCKETS];
        *c = c.saturating_add(1);
    }

    /// Events within the window that ends with slice `now`.
    pub fn total(&mut self, now: u32) -> u32 {
        self.advance(now);
        self.counts.iter().map(|&c| u32::from(c)).sum()
    }

    /// Adds another window's counts (a client's previous key).
    pub fn merge(&mut self, mut other: Window) {
        let head = self.head.max(other.head);
        self.advance(head);
        other.advance(head);
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a = a.saturating_add(b);
        }
    }

    /// How many counters a window keeps: always [`BUCKETS`].
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_then_forgets() {
        let mut w = Window::default();
        w.add(0);
        w.add(0);
        w.add(3);
        assert_eq!(w.total(3), 3);
        assert_eq!(w.total(BUCKETS as u32 - 1), 3);
        assert_eq!(w.total(BUCKETS as u32), 1, "slice 0 has left");
        assert_eq!(w.total(BUCKETS as u32 + 3), 0);
        w.add(1000);
        assert_eq!(w.total(1000), 1);
        w.add(5);
        assert_eq!(w.total(1000), 2, "a late event counts in the newest slice");
    }

    #[test]
    fn merging_keeps_both_counts() {
        let (mut a, mut b) = (Window::default(), Window::default());
        a.add(1);
        b.add(4);
        b.add(4);
        a.merge(b);
        assert_eq!(a.total(4), 3);
        assert_eq!(a.total(9), 2);
    }
}
