//! Relay buffers, lent by a small per-thread pool only while data flows.
//!
//! A connection takes a buffer just before it reads and gives it back as soon as the read
//! finds nothing and nothing read is still waiting to be written. Idle connections therefore
//! hold no buffer at all, and a busy thread reuses the same few blocks instead of asking the
//! allocator for a large block per read.
//!
//! The pools follow the load: a thread keeps at most [`SPARE`] more free buffers than are
//! lent out in the whole process (and never more than [`POOL_LIMIT`]), so once traffic stops
//! each thread's pool shrinks to [`SPARE`] at the next buffer it gets back.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Payload capacity of one relay buffer: upstream's `buffer_size`. 128 KiB buffers (fewer
/// reads per 64 KiB frame) measured no faster in scripts/bench (up 0.91, down 0.94 of the
/// TCP relay), so the smaller size stays.
pub const BUF_SIZE: usize = 64 * 1024;

/// Free buffers kept per thread at most; more are freed instead of pooled.
const POOL_LIMIT: usize = 16;

/// Free buffers a thread keeps beyond those lent out, so a lone busy session reuses its
/// buffer instead of allocating one per read.
const SPARE: usize = 2;

/// Buffers lent out now, in the whole process (one relaxed add per take and per return).
static LENT: AtomicUsize = AtomicUsize::new(0);

/// How many free buffers a pool may keep while `lent` buffers are in use.
fn keep(lent: usize) -> usize {
    POOL_LIMIT.min(lent.saturating_add(SPARE))
}

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`BUF_SIZE`] bytes plus `extra` bytes of headroom; returns to the pool on drop.
pub struct Buf {
    bytes: Option<Box<[u8]>>,
}

impl Buf {
    /// Takes a buffer from this thread's pool, or allocates one.
    pub fn take() -> Buf {
        let pooled = POOL.with(|pool| pool.borrow_mut().pop());
        LENT.fetch_add(1, Ordering::Relaxed);
        Buf {
            bytes: Some(
                pooled.unwrap_or_else(|| vec![0u8; BUF_SIZE + HEADROOM].into_boxed_slice()),
            ),
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes.as_deref().unwrap_or(&[])
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if let Some(bytes) = self.bytes.take() {
            let lent = LENT.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            let keep = keep(lent);
            // `try_with`: during thread teardown the pool may already be gone; then just free.
            let _ = POOL.try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.len() < keep {
                    pool.push(bytes);
                }
                // Shrinks a pool left large by a busier moment.
                pool.truncate(keep);
            });
        }
    }
}

/// Headroom in front of the payload area, room for the largest server frame header.
pub const HEADROOM: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_after_drop() {
        let first = Buf::take();
        let ptr = first.as_ptr();
        assert_eq!(first.len(), BUF_SIZE + HEADROOM);
        drop(first);
        let second = Buf::take();
        assert_eq!(second.as_ptr(), ptr);
    }

    #[test]
    fn pools_keep_a_few_spares_beyond_what_is_lent() {
        assert_eq!(keep(0), SPARE);
        assert_eq!(keep(3), 3 + SPARE);
        assert_eq!(keep(10_000), POOL_LIMIT);
    }

    #[test]
    fn a_pool_shrinks_once_the_buffers_come_back() {
        // Other tests share LENT: only this thread's pool is checked, and only its bound.
        let many: Vec<Buf> = (0..POOL_LIMIT + 4).map(|_| Buf::take()).collect();
        drop(many);
        let pooled = POOL.with(|pool| pool.borrow().len());
        assert!(pooled <= POOL_LIMIT, "{pooled}");
        let one = Buf::take();
        drop(one);
        let lent_elsewhere = LENT.load(Ordering::Relaxed);
        let pooled = POOL.with(|pool| pool.borrow().len());
        assert!(
            pooled <= keep(lent_elsewhere),
            "{pooled} pooled, {lent_elsewhere} lent"
        );
    }
}
