//! Hands memory freed by closed connections back to the kernel.
//!
//! glibc's allocator keeps freed memory in its arenas: after 10,000 connections close, their
//! tasks and buffers are free but still resident, because live allocations sit between them
//! and only the top of a heap is returned on its own. `malloc_trim(0)` walks the arenas and
//! releases every free page (`MADV_DONTNEED`). A worker asks for it only after many of its
//! connections closed ([`Trim`]), since the walk costs about a millisecond per ~50 MB of heap.
//!
//! The one `unsafe` block of the crate lives here, for that call; on other C libraries it is a
//! no-op.

use std::time::{Duration, Instant};

/// Connections that must have closed since the high-water mark before a trim.
pub const TRIM_AFTER_CLOSED: usize = 1_000;
/// Least time between two trims of one worker.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// When a worker should trim: its open connections fell to at most half of their high-water
/// mark, by at least [`TRIM_AFTER_CLOSED`], and it has not trimmed for [`TRIM_INTERVAL`].
#[derive(Debug, Default)]
pub struct Trim {
    high_water: usize,
    last: Option<Instant>,
}

impl Trim {
    /// Called on the worker's tick with its open connections; true when it trimmed.
    pub fn tick(&mut self, conns: usize, now: Instant) -> bool {
        self.high_water = self.high_water.max(conns);
        let closed = self.high_water - conns;
        let rested = self.last.is_none_or(|t| now >= t + TRIM_INTERVAL);
        if closed < TRIM_AFTER_CLOSED || conns > self.high_water / 2 || !rested {
            return false;
        }
        self.high_water = conns;
        self.last = Some(now);
        release_free_memory();
        true
    }
}

/// Returns free heap pages of every arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: `malloc_trim` is glibc's, declared with its C signature (`int malloc_trim(size_t
    // pad)`); it takes no pointers and touches only the allocator's own state, under the
    // arenas' locks, so it is sound to call from any thread at any time (glibc malloc(3)).
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_half_the_connections_closed_and_not_too_often() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Trim::default();
        // (open connections, at second, trims?)
        let steps = [
            (5_000, 0, false),
            (10_000, 1, false),
            (9_100, 2, false), // fewer than TRIM_AFTER_CLOSED closed
            (5_001, 3, false), // more than half still open
            (5_000, 4, true),
            (0, 5, false), // only 1 s after the last trim
            (2_000, 20, true),
            (0, 21, false),
            (0, 22, true),
            (0, 60, false), // nothing closed since
        ];
        for (i, (conns, s, want)) in steps.into_iter().enumerate() {
            assert_eq!(
                t.tick(conns, at(s)),
                want,
                "step {i}: {conns} open at {s} s"
            );
        }
        // A worker that never had TRIM_AFTER_CLOSED connections never trims.
        let mut small = Trim::default();
        assert!(!small.tick(900, t0) && !small.tick(0, at(60)));
    }

    #[test]
    fn live_memory_survives_a_trim_and_freed_memory_is_reusable() {
        let live: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 4_096]).collect();
        drop((0..1_000).map(|_| vec![0u8; 4_096]).collect::<Vec<_>>());
        release_free_memory();
        assert!(live
            .iter()
            .enumerate()
            .all(|(i, v)| v.iter().all(|&b| usize::from(b) == i)));
        let again: Vec<Vec<u8>> = (0..1_000).map(|_| vec![9u8; 4_096]).collect();
        assert!(again.iter().all(|v| v.iter().all(|&b| b == 9)));
    }
}
