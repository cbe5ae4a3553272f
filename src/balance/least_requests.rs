//! `balance = "least_requests"`: the endpoint with the fewest requests in flight across the
//! whole process (plus its load-metric gauge, when configured), ties broken at random.

use super::Loads;
use crate::route::WorkerRng;

/// The eligible endpoint with the least load; among equals each is equally likely (reservoir
/// sampling: one random draw per tie, none without ties).
#[inline]
pub fn pick(
    loads: &impl Loads,
    rng: &mut WorkerRng,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best = None;
    let mut min = u64::MAX;
    let mut ties = 0;
    for i in 0..loads.count() {
        if !eligible(i) {
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
    }
}
