//! Giving memory back after a spike of connections.
//!
//! Every session's memory is freed when it ends (its task, its socket registrations; relay
//! buffers are lent only while data flows, see `buffer.rs`). What glibc's allocator does
//! with the freed memory is another matter: thousands of small blocks freed in a heap whose
//! top is still in use stay in the process, so 9,900 idle sessions that closed left ~48 MiB
//! resident. [`trim_when_quiet`] watches the count of open connections and, once it has
//! fallen well below its recent high, asks the allocator to return its free pages
//! (`malloc_trim(0)`, which releases free pages inside every arena, not only at the top).
//!
//! The trim runs on the blocking pool (it walks every arena under its lock, a few
//! milliseconds for a large heap), at most once a second, and only after a drop of at least
//! [`TRIM_AFTER_DROP`] connections to half or less of the high: never per connection and
//! never on the relay's path.

use std::sync::Arc;
use std::time::Duration;

use crate::limits::Limits;

/// Fewer closed connections than this are not worth a trim.
pub const TRIM_AFTER_DROP: usize = 64;

/// How often the count of open connections is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Decides when a fall in open connections calls for a trim.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// The highest count seen since the last trim.
    high: usize,
}

impl Trimmer {
    /// Takes the most connections open at once since the last look and the count open now;
    /// true when memory should be given back: the count fell by at least [`TRIM_AFTER_DROP`]
    /// and to half of the high or less. The high then starts again from `open`, so a long
    /// fall trims in a few steps, not every second.
    pub fn observe(&mut self, peak: usize, open: usize) -> bool {
        self.high = self.high.max(peak).max(open);
        if self.high - open >= TRIM_AFTER_DROP && open <= self.high / 2 {
            self.high = open;
            true
        } else {
            false
        }
    }
}

/// Runs until dropped (aborted with the server): trims after each large fall in `limits`'
/// open connections.
pub async fn trim_when_quiet(limits: Arc<Limits>) {
    let mut trimmer = Trimmer::default();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The peak, not only the count now: 2,000 sessions can open and close between two
        // looks a second apart, and were then never trimmed for.
        let peak = limits.take_peak();
        let open = limits.open();
        if trimmer.observe(peak, open) {
            match tokio::task::spawn_blocking(release_free_memory).await {
                Ok(true) => tracing::debug!(open, "returned free memory to the system"),
                Ok(false) => {}
                Err(err) => tracing::debug!("memory trim did not run: {err}"),
            }
        }
    }
}

/// Asks the allocator to return its free pages to the system; true if it returned some.
/// Blocking (walks every arena): call it from the blocking pool.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim has no preconditions; it takes glibc's own arena locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl, other systems) return memory on their own, or cannot be asked.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_the_count_falls_to_half_by_enough() {
        let mut t = Trimmer::default();
        assert!(!t.observe(0, 0));
        assert!(!t.observe(10_000, 10_000));
        assert!(!t.observe(6_000, 6_000), "not yet half");
        assert!(t.observe(5_000, 5_000));
        // The high restarts from 5,000: no trim again until it halves again.
        assert!(!t.observe(4_000, 4_000));
        assert!(t.observe(2_500, 2_500));
        assert!(t.observe(0, 0));
        assert!(!t.observe(0, 0), "nothing more fell");
    }

    #[test]
    fn small_falls_never_trim() {
        let mut t = Trimmer::default();
        for _ in 0..100 {
            assert!(!t.observe(TRIM_AFTER_DROP - 1, TRIM_AFTER_DROP - 1));
            assert!(!t.observe(0, 0));
        }
        assert!(!t.observe(TRIM_AFTER_DROP, TRIM_AFTER_DROP));
        assert!(t.observe(0, 0));
    }

    #[test]
    fn a_spike_between_two_looks_is_seen_by_its_peak() {
        let mut t = Trimmer::default();
        assert!(!t.observe(0, 0));
        assert!(t.observe(2_000, 0));
        assert!(!t.observe(0, 0));
    }

    #[test]
    fn release_free_memory_can_be_called_any_time() {
        let spike: Vec<Vec<u8>> = (0..1000).map(|_| vec![1u8; 4096]).collect();
        drop(spike);
        let _ = release_free_memory();
        let _ = release_free_memory();
    }
}
