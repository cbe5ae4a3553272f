//! `balance = "round_robin"` (the default): each worker takes the upstream's endpoints in
//! turn, skipping those `eligible` refuses. Load is not looked at.

use super::Eligible;

/// The next endpoint in turn from `*next` (advanced by one per call) that `eligible` admits.
#[inline]
pub fn pick(next: &mut u32, n: usize, eligible: impl Eligible) -> Option<usize> {
    let start = *next as usize;
    *next = next.wrapping_add(1);
    (0..n)
        .map(|k| (start + k) % n.max(1))
        .find(|&i| eligible.admits(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_turns_and_skips_the_refused() {
        let mut next = 0;
        let seq: Vec<_> = (0..6).map(|_| pick(&mut next, 3, |_| true)).collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2].map(Some));
        let seq: Vec<_> = (0..4).map(|_| pick(&mut next, 3, |i| i != 1)).collect();
        assert_eq!(seq, [0, 2, 2, 0].map(Some));
        assert_eq!(pick(&mut next, 3, |_| false), None);
        assert_eq!(pick(&mut next, 0, |_| true), None);
    }
}
