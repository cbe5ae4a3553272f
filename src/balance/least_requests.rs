//! `balance = "least_requests"`: the endpoint with the fewest requests in flight across the
//! whole process (plus its load-metric gauge, when configured), ties broken at random.

use super::{Eligible, Loads};
use crate::route::WorkerRng;

/// The eligible endpoint with the least load; among equals each is equally likely.
///
/// Up to 64 endpoints, `eligible` is asked only about the endpoints at the least load: one
/// pass finds the least load and the set of endpoints at it (a bit set), then the eligible
/// ones among them share the request (one random draw when there are several). Only when
/// none of them is eligible (an open breaker on the idlest endpoint) does it fall back to
/// [`scan`], which asks about every endpoint.
#[inline]
pub fn pick(loads: &impl Loads, rng: &mut WorkerRng, eligible: impl Eligible) -> Option<usize> {
    let n = loads.count();
    if n > 64 {
        return scan(loads, rng, eligible);
    }
    let mut min = u64::MAX;
    let mut least = 0u64;
    for i in 0..n {
        let load = loads.load(i);
        if load < min {
            (min, least) = (load, 1 << i);
        } else if load == min {
            least |= 1 << i;
        }
    }
    let mut ok = 0u64;
    match eligible.bits() {
        Some(bits) => ok = least & bits,
        None => {
            let mut rest = least;
            while rest != 0 {
                let i = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if eligible.admits(i) {
                    ok |= 1 << i;
                }
            }
        }
    }
    match ok.count_ones() {
        0 if least == 0 => None,
        0 => scan(loads, rng, eligible),
        1 => Some(ok.trailing_zeros() as usize),
        k => {
            for _ in 0..rng.below(u64::from(k)) {
                ok &= ok - 1;
            }
            Some(ok.trailing_zeros() as usize)
        }
    }
}

/// The same choice asking `eligible` about every endpoint (reservoir sampling among equals:
/// one random draw per tie, none without ties).
pub fn scan(loads: &impl Loads, rng: &mut WorkerRng, eligible: impl Eligible) -> Option<usize> {
    let mut best = None;
    let mut min = u64::MAX;
    let mut ties = 0;
    for i in 0..loads.count() {
        if !eligible.admits(i) {
            continue;
        }
        let load = loads.load(i);
        if load < min {
            (min, best, ties) = (load, Some(i), 1);
        } else if load == min {
            ties += 1;
            if rng.below(ties) == 0 {
                best = Some(i);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixed;
    use super::*;

    #[test]
    fn fewest_in_flight_wins_and_ties_split_evenly() {
        let mut rng = WorkerRng::new(1);
        let loads = Fixed::loads(&[3, 1, 4, 1, 5]);
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[pick(&loads, &mut rng, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts[0] + counts[2] + counts[4], 0, "{counts:?}");
        assert!((4_500..=5_500).contains(&counts[1]), "{counts:?}");
        assert_eq!(pick(&loads, &mut rng, |i| i != 1 && i != 3), Some(0));
        assert_eq!(pick(&loads, &mut rng, |_| false), None);
        // The least loaded refused: the next least, ties still split evenly.
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[pick(&loads, &mut rng, |i| i != 1 && i != 3).unwrap()] += 1;
        }
        assert_eq!(counts, [10_000, 0, 0, 0, 0]);
        let tied = Fixed::loads(&[2, 0, 2, 0, 2]);
        let mut counts = [0u32; 5];
        for _ in 0..9_000 {
            counts[pick(&tied, &mut rng, |i| i % 2 == 0).unwrap()] += 1;
        }
        for c in [counts[0], counts[2], counts[4]] {
            assert!((2_600..=3_400).contains(&c), "{counts:?}");
        }
        assert_eq!(pick(&Fixed::loads(&[]), &mut rng, |_| true), None);
    }

    /// The eligible set given at once as bits: an endpoint at the same least eligible load as
    /// the full scan's, never one outside the set.
    #[test]
    fn the_set_as_bits_chooses_as_the_full_scan_does() {
        use crate::balance::{Eligible, Open, Tried};
        use crate::breaker::local::Admitted;
        let mut rng = WorkerRng::new(12);
        for n in [1usize, 3, 16, 64] {
            for _ in 0..300 {
                let load: Vec<u64> = (0..n).map(|_| rng.below(4)).collect();
                let loads = Fixed::loads(&load);
                let mut tried = Tried::default();
                tried.insert(rng.below(n as u64) as usize);
                let open = Open {
                    admitted: Admitted::Bits(rng.next_u64() | rng.next_u64()),
                    tried: &tried,
                };
                let fast = pick(&loads, &mut rng, open);
                let full = scan(&loads, &mut rng, |i: usize| open.admits(i));
                assert_eq!(fast.map(|i| load[i]), full.map(|i| load[i]), "{n} {load:?}");
                assert!(fast.is_none_or(|i| open.admits(i)));
            }
        }
    }

    #[test]
    fn the_fast_path_chooses_as_the_full_scan_does() {
        // Up to 64 endpoints and past it, every pattern of refusals: the same endpoint, or
        // (among ties) an endpoint at the same least eligible load.
        let mut rng = WorkerRng::new(5);
        for n in [1usize, 2, 3, 16, 63, 64, 65, 100] {
            let load: Vec<u64> = (0..n as u64).map(|i| (i * 7919) % 5).collect();
            let loads = Fixed::loads(&load);
            for refuse in 0..8u64 {
                let eligible = |i: usize| (i as u64 + refuse) % 4 != 0 || refuse == 0;
                let fast = pick(&loads, &mut rng, eligible).map(|i| load[i]);
                let full = scan(&loads, &mut rng, eligible).map(|i| load[i]);
                assert_eq!(fast, full, "n {n}, refuse {refuse}");
                if let Some(i) = pick(&loads, &mut rng, eligible) {
                    assert!(eligible(i));
                }
            }
        }
    }
}
