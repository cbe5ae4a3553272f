//! The per-worker pseudo-random generator for weighted choices.

use super::hash::mix64;

/// A per-worker pseudo-random generator (wyrand): one add and one 64×64→128 multiply per
/// draw. Each worker owns one and never shares it, so it needs no atomics.
#[derive(Debug, Clone)]
pub struct WorkerRng {
    state: u64,
}

impl WorkerRng {
    /// A generator with this seed. Two workers must use different seeds (see
    /// [`WorkerRng::for_worker`]).
    pub fn new(seed: u64) -> Self {
        Self {
            state: mix64(seed ^ 0x2545_f491_4f6c_dd1d),
        }
    }

    /// A generator for worker `index`, mixing the index with the wall clock so that restarts
    /// and workers do not repeat each other's sequences.
    pub fn for_worker(index: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos ^ mix64(index as u64 + 1))
    }

    /// The next 64 uniformly distributed bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A value in `0..bound` (`bound > 0`), by Lemire's multiply-shift; the bias is at most
    /// `bound / 2^64`, far below anything a weight split can observe.
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_below_is_roughly_uniform_and_in_range() {
        let mut rng = WorkerRng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let v = rng.below(10);
            counts[v as usize] += 1;
        }
        for c in counts {
            assert!((9_500..=10_500).contains(&c), "{counts:?}");
        }
        assert_ne!(WorkerRng::new(1).next_u64(), WorkerRng::new(2).next_u64());
    }
}
