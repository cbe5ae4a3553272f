//! `balance = "p2c_ewma"`: power of two choices (the Finagle/Linkerd rule). Two distinct
//! endpoints are drawn at random and the cheaper one takes the request, where the cost is
//! (requests in flight + 1) × the EWMA of its time to the response head. Drawing two instead
//! of scanning all keeps the choice O(1) and avoids the herd behaviour of always taking the
//! minimum from a view that is a few milliseconds old.
//!
//! An endpoint with no latency sample yet costs 0 while nothing is in flight to it (so it gets
//! one request and a first sample) and [`PENALTY_US`] per request in flight after that (so a
//! burst does not all go to the unknown endpoint before its first answer).

use super::{Eligible, Loads};
use crate::route::WorkerRng;

/// Cost per request in flight of an endpoint with no latency sample yet, µs.
pub const PENALTY_US: f64 = 1e9;

/// The cost P2C compares.
#[inline]
pub fn cost(loads: &impl Loads, i: usize) -> f64 {
    let load = loads.load(i) as f64;
    match loads.ttfb_us(i) {
        t if t > 0.0 => (load + 1.0) * t,
        _ => load * PENALTY_US,
    }
}

/// Two distinct eligible endpoints at random, the cheaper one (see the module docs). A drawn
/// index that `eligible` refuses moves on to the next eligible one.
#[inline]
pub fn pick(loads: &impl Loads, rng: &mut WorkerRng, eligible: impl Eligible) -> Option<usize> {
    let n = loads.count();
    if n == 0 {
        return None;
    }
    let next = |from: usize, skip: usize| {
        (0..n)
            .map(|k| (from + k) % n)
            .find(|&i| i != skip && eligible.admits(i))
    };
    let a = next(rng.below(n as u64) as usize, usize::MAX)?;
    if n == 1 {
        return Some(a);
    }
    // Uniform among the others: a draw in 1..n added to `a`.
    let from = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
    let Some(b) = next(from, a) else {
        return Some(a);
    };
    Some(if cost(loads, b) < cost(loads, a) {
        b
    } else {
        a
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixed;
    use super::*;

    #[test]
    fn cheaper_of_two_and_never_the_refused() {
        let mut rng = WorkerRng::new(2);
        // Endpoint 2 is 5× slower; all idle.
        let loads = Fixed {
            load: vec![0, 0, 0],
            ttfb: vec![1000.0, 1000.0, 5000.0],
        };
        let mut counts = [0u32; 3];
        for _ in 0..9_000 {
            counts[pick(&loads, &mut rng, |_| true).unwrap()] += 1;
        }
        // The slow one wins no pair; the two fast ones split evenly.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!((4_000..=5_000).contains(&counts[0]), "{counts:?}");
        // In flight counts: 5 in flight at 1 ms costs 6 ms, more than one idle at 5 ms.
        let busy = Fixed {
            load: vec![5, 5, 0],
            ttfb: vec![1000.0, 1000.0, 5000.0],
        };
        let mut counts = [0u32; 3];
        for _ in 0..9_000 {
            counts[pick(&busy, &mut rng, |_| true).unwrap()] += 1;
        }
        assert!(counts[2] > 5_000, "{counts:?}");
        for _ in 0..1_000 {
            assert_ne!(pick(&loads, &mut rng, |i| i != 0), Some(0));
        }
        assert_eq!(pick(&loads, &mut rng, |i| i == 2), Some(2));
        assert_eq!(pick(&loads, &mut rng, |_| false), None);
    }

    #[test]
    fn an_endpoint_without_samples_gets_one_request_then_waits_for_its_answer() {
        let fresh = Fixed {
            load: vec![3, 0],
            ttfb: vec![1000.0, 0.0],
        };
        assert_eq!(cost(&fresh, 1), 0.0);
        let mut rng = WorkerRng::new(3);
        assert_eq!(pick(&fresh, &mut rng, |_| true), Some(1));
        let waiting = Fixed {
            load: vec![3, 1],
            ttfb: vec![1000.0, 0.0],
        };
        assert_eq!(pick(&waiting, &mut rng, |_| true), Some(0));
    }
}
