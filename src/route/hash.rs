//! Hashing for target selection: an unkeyed 64-bit string hash for sticky keys, and a
//! finalizer that turns (key, target) into an independent uniform draw (the per-worker PRNG
//! is in [`super::rng`]).
//!
//! None of this is cryptographic. Sticky keys come from callers, but a caller who crafts keys
//! can only choose which target its own requests land on, which it could do anyway by reusing
//! one key.

/// Murmur3's 64-bit finalizer: full avalanche, so nearby inputs give unrelated outputs.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Hashes a byte string eight bytes at a time, then finalizes with [`mix64`] and the length,
/// so keys that differ only by trailing zero bytes still hash apart.
#[inline]
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    mix64(h ^ (bytes.len() as u64).wrapping_mul(K))
}

/// Maps a 64-bit hash to a float in the open interval (0, 1), never 0 (so `ln` is finite).
#[inline]
pub(crate) fn unit_open(h: u64) -> f64 {
    // 52 bits plus a half: the largest value, 2^52 - 0.5, still fits a 53-bit mantissa.
    ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

/// `-ln(unit_open(h))`: an exponentially distributed draw (mean 1) from a hash, the core of
/// weighted rendezvous scoring.
///
/// Computed without libm: `u = 2^e · m` with `m` in `[√½, √2)`, and `ln m` from the
/// `atanh` series in `s = (m-1)/(m+1)` (`|s| ≤ 0.172`) up to `s⁹`; the absolute error is
/// below 1e-9, far below the gap between two targets' scores that could flip a choice
/// measurably.
#[inline]
pub(crate) fn exp_draw(h: u64) -> f64 {
    const MANTISSA: u64 = (1 << 52) - 1;
    let u = unit_open(h);
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & MANTISSA) | (1023 << 52));
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
    -(e as f64 * std::f64::consts::LN_2 + 2.0 * s * series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::rng::WorkerRng;

    #[test]
    fn hash_distinguishes_lengths_and_contents() {
        let inputs: [&[u8]; 6] = [b"", b"\0", b"\0\0", b"a", b"abcdefgh", b"abcdefgh\0"];
        for (i, a) in inputs.iter().enumerate() {
            for b in &inputs[i + 1..] {
                assert_ne!(hash_bytes(a), hash_bytes(b), "{a:?} vs {b:?}");
            }
        }
        assert_eq!(hash_bytes(b"session-1"), hash_bytes(b"session-1"));
    }

    #[test]
    fn unit_open_stays_inside_the_open_interval() {
        for h in [0, 1, u64::MAX, u64::MAX >> 1, 1 << 12] {
            let u = unit_open(h);
            assert!(u > 0.0 && u < 1.0, "{h} -> {u}");
        }
    }

    #[test]
    fn exp_draw_matches_libm() {
        let mut rng = WorkerRng::new(3);
        let extremes = [0, 1, 1 << 12, u64::MAX, u64::MAX / 2, 0x6a09_e667_f3bc_c908];
        let draws = (0..100_000).map(|_| rng.next_u64()).chain(extremes);
        for h in draws {
            let want = -unit_open(h).ln();
            let got = exp_draw(h);
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1.0),
                "{h:#x}: {got} vs {want}"
            );
        }
    }
}
