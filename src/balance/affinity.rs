//! `balance = "affinity"`: consistent hashing with bounded loads (Mirrokni, Thorup and
//! Zadimoghaddam, 2018), so that the requests of one conversation (one key) keep landing on
//! the endpoint that holds its prefix (KV) cache, while no endpoint carries more than
//! `load_factor` × the mean load.
//!
//! # The ring
//!
//! Each endpoint owns [`VNODES`] points on a 64-bit ring, at hashes of the endpoint as written
//! in the config (`host:port`) and the point's number, so an endpoint's points depend on
//! nothing but itself: adding or removing an endpoint moves only the keys whose first point
//! clockwise belongs to it (about 1/n of them), every other key keeps its endpoint. Many
//! points per endpoint keep the shares even (the spread of one endpoint's arc shrinks as
//! 1/√points).
//!
//! # The bound
//!
//! A key starts at its hash and walks clockwise; the first eligible endpoint that stays within
//! `load_factor` × the mean load once it takes the request (`load + 1 ≤ load_factor × (total
//! + 1) / eligible endpoints`, where load is in flight across the process plus the
//! load-metric gauge, and `total` the eligible endpoints' load) takes it. An overloaded
//! endpoint's keys spill to the next endpoints on the ring and come back as soon as it has
//! room again, so the busiest endpoint never carries more than `load_factor` × the mean.
//!
//! With few requests in flight no endpoint may fit (with three endpoints and a factor of 1.25,
//! with fewer than 7 in flight): the least loaded eligible endpoint takes the request, the key's own
//! first. The price of the bound is that at low concurrency the counts in flight are small
//! and uneven, so keys move more often; a larger `load_factor` keeps more of them home.

use super::key;
use super::{Eligible, Loads};

/// Points per endpoint on the ring.
pub const VNODES: u32 = 160;

/// Most bits of a hash the ring's bucket index is cut by (64 Ki buckets).
const MAX_INDEX_BITS: u32 = 16;

/// The ring of one upstream's endpoints.
///
/// The points are two parallel arrays sorted by hash (the hashes alone are what a lookup
/// searches), with an index by the top bits of the hash (about one bucket per point), so a
/// key's position is found by one index read and a search among a few points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Sorted (by hash, then endpoint, so equal hashes order the same way everywhere).
    hashes: Box<[u64]>,
    /// The endpoint (index in the upstream) of each point.
    owners: Box<[u32]>,
    /// `index[b]`: the first point whose hash's top `bits` bits are at least `b`;
    /// `2^bits + 1` entries.
    index: Box<[u32]>,
    bits: u32,
}

impl Ring {
    /// The ring of endpoints named `names` (in upstream order; a point names its index).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Ring {
        let mut points: Vec<(u64, u32)> = names
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                (0..VNODES).map(move |v| (key::point(name.as_ref(), v), i as u32))
            })
            .collect();
        points.sort_unstable();
        let bits = points
            .len()
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, MAX_INDEX_BITS);
        let hashes: Box<[u64]> = points.iter().map(|p| p.0).collect();
        let index = (0..=1u64 << bits)
            .map(|b| match b.checked_shl(64 - bits) {
                Some(low) if b < 1 << bits => hashes.partition_point(|&h| h < low) as u32,
                _ => hashes.len() as u32,
            })
            .collect();
        Ring {
            owners: points.iter().map(|p| p.1).collect(),
            hashes,
            index,
            bits,
        }
    }

    /// The first point at or after `key` (wrapping to 0 past the last).
    #[inline]
    fn start(&self, key: u64) -> usize {
        let b = (key >> (64 - self.bits)) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let at = lo + self.hashes[lo..hi].partition_point(|&h| h < key);
        if at == self.hashes.len() {
            0
        } else {
            at
        }
    }

    /// The endpoint indices from `key`'s position clockwise, once round the ring.
    #[inline]
    fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let (after, before) = match self.owners.is_empty() {
            true => (&self.owners[..], &self.owners[..]),
            false => {
                let start = self.start(key);
                (&self.owners[start..], &self.owners[..start])
            }
        };
        after.iter().chain(before).map(|&i| i as usize)
    }

    /// The endpoint that owns `key` when every endpoint is eligible and none is full.
    pub fn home(&self, key: u64) -> Option<usize> {
        self.walk(key).next()
    }
}

/// The endpoint for `key` under the load bound (see the module docs); `None` when `eligible`
/// admits no endpoint.
///
/// Up to 64 endpoints, `eligible` is read once (as its bits, or asked once per endpoint) into
/// a bit set, and the walk stops once every eligible endpoint has been looked at, so a walk
/// where nothing fits (few requests in flight) costs one look per endpoint, not one per point
/// on the ring.
#[inline]
pub fn pick(
    ring: &Ring,
    load_factor: f64,
    loads: &impl Loads,
    key: u64,
    eligible: impl Eligible,
) -> Option<usize> {
    let n = loads.count();
    if n > 64 {
        return pick_any(ring, load_factor, loads, key, eligible);
    }
    let (admitted, total) = match eligible.bits() {
        Some(bits) => {
            let admitted = bits & 1u64.checked_shl(n as u32).map_or(u64::MAX, |b| b - 1);
            // A select per endpoint rather than a walk over the set bits: no branch, no
            // dependency from one step to the next.
            let total: u64 = (0..n)
                .map(|i| match admitted >> i & 1 {
                    0 => 0,
                    _ => loads.load(i),
                })
                .sum();
            (admitted, total)
        }
        None => {
            let (mut admitted, mut total) = (0u64, 0u64);
            for i in 0..n {
                if eligible.admits(i) {
                    total += loads.load(i);
                    admitted |= 1 << i;
                }
            }
            (admitted, total)
        }
    };
    if admitted == 0 {
        return None;
    }
    let capacity = load_factor * (total + 1) as f64 / f64::from(admitted.count_ones());
    // The least loaded eligible endpoint, the first on the walk among equals.
    let mut least: Option<(u64, usize)> = None;
    let mut left = admitted;
    for i in ring.walk(key) {
        let bit = 1u64.checked_shl(i as u32).unwrap_or(0);
        if left & bit == 0 {
            continue;
        }
        left &= !bit;
        let load = loads.load(i);
        if (load + 1) as f64 <= capacity {
            return Some(i);
        }
        if least.is_none_or(|(l, _)| load < l) {
            least = Some((load, i));
        }
        if left == 0 {
            break;
        }
    }
    least.map(|(_, i)| i)
}

/// The same choice for any number of endpoints, asking `eligible` again at each point.
fn pick_any(
    ring: &Ring,
    load_factor: f64,
    loads: &impl Loads,
    key: u64,
    eligible: impl Eligible,
) -> Option<usize> {
    let (mut total, mut count) = (0u64, 0u64);
    for i in 0..loads.count() {
        if eligible.admits(i) {
            total += loads.load(i);
            count += 1;
        }
    }
    if count == 0 {
        return None;
    }
    let capacity = load_factor * (total + 1) as f64 / count as f64;
    let mut least: Option<(u64, usize)> = None;
    for i in ring.walk(key) {
        if !eligible.admits(i) {
            continue;
        }
        let load = loads.load(i);
        if (load + 1) as f64 <= capacity {
            return Some(i);
        }
        if least.is_none_or(|(l, _)| load < l) {
            least = Some((load, i));
        }
    }
    least.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::super::tests::Fixed;
    use super::*;
    use crate::route::WorkerRng;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8000", i + 1)).collect()
    }

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| key::hash(format!("conversation-{i}").as_bytes()))
    }

    #[test]
    fn removing_one_of_three_moves_only_its_keys() {
        let three = Ring::new(&names(3));
        let two = Ring::new(&names(2));
        let (mut moved, mut total) = (0, 0);
        for k in keys(30_000) {
            let before = three.home(k).unwrap();
            let after = two.home(k).unwrap();
            if before == 2 {
                moved += 1;
            } else {
                assert_eq!(before, after, "a key of a remaining endpoint moved");
            }
            total += 1;
        }
        let share = moved as f64 / total as f64;
        println!(
            "removing 1 of 3 endpoints moves {:.1}% of keys",
            share * 100.0
        );
        assert!((0.28..=0.39).contains(&share), "{share}");
        // Adding it back restores every key's endpoint.
        let again = Ring::new(&names(3));
        assert_eq!(again, three);
    }

    #[test]
    fn shares_are_even_without_load() {
        for n in [2, 3, 5, 8] {
            let ring = Ring::new(&names(n));
            let mut counts = vec![0u32; n];
            for k in keys(60_000) {
                counts[ring.home(k).unwrap()] += 1;
            }
            let mean = 60_000.0 / n as f64;
            for c in &counts {
                assert!((*c as f64 - mean).abs() < 0.2 * mean, "{n}: {counts:?}");
            }
        }
    }

    #[test]
    fn a_full_endpoint_spills_to_the_next_on_the_ring() {
        let ring = Ring::new(&names(3));
        let k = keys(1).next().unwrap();
        let home = ring.home(k).unwrap();
        let next = ring.walk(k).find(|&i| i != home).unwrap();
        // Nothing in flight: nobody fits 1 ≤ 1.25 × 1/3, the least loaded, home first.
        let idle = Fixed::loads(&[0, 0, 0]);
        assert_eq!(pick(&ring, 1.25, &idle, k, |_| true), Some(home));
        // 30 in flight, home at 12: 13 > 1.25 × 31 / 3 = 12.9, so the key moves on.
        let mut load = [9, 9, 9];
        load[home] = 12;
        assert_eq!(
            pick(&ring, 1.25, &Fixed::loads(&load), k, |_| true),
            Some(next)
        );
        // Home at 11: 12 ≤ 12.9, it stays.
        load[home] = 11;
        assert_eq!(
            pick(&ring, 1.25, &Fixed::loads(&load), k, |_| true),
            Some(home)
        );
        // Refused endpoints are skipped whatever the load.
        assert_ne!(pick(&ring, 1.25, &idle, k, |i| i != home), Some(home));
        assert_eq!(pick(&ring, 1.25, &idle, k, |_| false), None);
    }

    #[test]
    fn the_index_finds_what_a_search_of_every_point_finds() {
        let mut rng = WorkerRng::new(4);
        for n in [0, 1, 3, 16, 100] {
            let ring = Ring::new(&names(n));
            let mut probes: Vec<u64> = (0..2_000).map(|_| rng.next_u64()).collect();
            probes.extend([0, u64::MAX, 1 << 63]);
            probes.extend(
                ring.hashes
                    .iter()
                    .flat_map(|&h| [h, h.wrapping_add(1), h.wrapping_sub(1)]),
            );
            for k in probes {
                let at = ring.hashes.partition_point(|&h| h < k);
                let want = ring.owners.get(at).or(ring.owners.first());
                assert_eq!(ring.home(k), want.map(|&i| i as usize), "{n} {k}");
            }
        }
    }

    #[test]
    fn the_bit_set_walk_chooses_as_the_walk_of_every_point() {
        let mut rng = WorkerRng::new(6);
        for n in [1, 3, 16, 64] {
            let ring = Ring::new(&names(n));
            for round in 0..300 {
                let load: Vec<u64> = (0..n).map(|_| rng.below(6)).collect();
                let loads = Fixed::loads(&load);
                let refused = rng.below(n as u64 + 1) as usize;
                let eligible = |i: usize| round % 3 == 0 || i != refused;
                let k = rng.next_u64();
                for lf in [1.0, 1.25, 2.0] {
                    assert_eq!(
                        pick(&ring, lf, &loads, k, eligible),
                        pick_any(&ring, lf, &loads, k, eligible),
                        "{n} {load:?} {refused}"
                    );
                }
            }
        }
    }

    /// The eligible set given at once as bits chooses as the same set asked per endpoint.
    #[test]
    fn the_set_as_bits_chooses_as_asking_per_endpoint() {
        use crate::balance::{Open, Tried};
        use crate::breaker::local::Admitted;
        let mut rng = WorkerRng::new(8);
        for n in [1, 3, 16, 64] {
            let ring = Ring::new(&names(n));
            for _ in 0..300 {
                let load: Vec<u64> = (0..n).map(|_| rng.below(6)).collect();
                let loads = Fixed::loads(&load);
                let mut tried = Tried::default();
                tried.insert(rng.below(n as u64) as usize);
                let open = Open {
                    admitted: Admitted::Bits(rng.next_u64() | rng.next_u64()),
                    tried: &tried,
                };
                let k = rng.next_u64();
                let asked = pick(&ring, 1.25, &loads, k, |i: usize| open.admits(i));
                assert_eq!(pick(&ring, 1.25, &loads, k, open), asked, "{n} {load:?}");
                assert!(asked.is_none_or(|i| open.admits(i)));
            }
        }
    }

    /// Conversations `convs` of 10 turns each, all in flight at once: the first turns arrive in
    /// random order, then a random conversation's turn ends and its next turn starts, until
    /// every one has had its 10. Asserts that past the first few requests no endpoint ever
    /// holds more than 1.25 × the mean in flight; returns the share of turns on each
    /// conversation's most used endpoint and the requests each endpoint served.
    fn converse(ring: &Ring, convs: &[u64]) -> (f64, Vec<u32>) {
        let n = 3;
        let mut rng = WorkerRng::new(9);
        let mut load = vec![0u64; n];
        let mut served = vec![0u32; n];
        let mut by_conv = vec![[0u32; 3]; convs.len()];
        // (conversation, turns done, endpoint of the turn in flight)
        let mut flying: Vec<(usize, u32, usize)> = Vec::new();
        let mut start = |c: usize, done: u32, load: &mut Vec<u64>, flying: &mut Vec<_>| {
            let e = pick(ring, 1.25, &Fixed::loads(load), convs[c], |_| true).unwrap();
            load[e] += 1;
            let total = load.iter().sum::<u64>();
            if total > 7 {
                assert!(load[e] as f64 <= 1.25 * total as f64 / n as f64, "{load:?}");
            }
            served[e] += 1;
            by_conv[c][e] += 1;
            flying.push((c, done, e));
        };
        let mut order: Vec<usize> = (0..convs.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for c in order {
            start(c, 0, &mut load, &mut flying);
        }
        while !flying.is_empty() {
            let (c, done, e) = flying.swap_remove(rng.below(flying.len() as u64) as usize);
            load[e] -= 1;
            if done + 1 < 10 {
                start(c, done + 1, &mut load, &mut flying);
            }
        }
        let kept: u32 = by_conv.iter().map(|c| c.iter().max().unwrap()).sum();
        (kept as f64 / (10 * convs.len()) as f64, served)
    }

    fn busiest(served: &[u32]) -> f64 {
        let mean = served.iter().sum::<u32>() as f64 / served.len() as f64;
        *served.iter().max().unwrap() as f64 / mean
    }

    #[test]
    fn bounded_loads_keep_conversations_home_under_full_concurrency() {
        let ring = Ring::new(&names(3));
        let convs: Vec<u64> = keys(200).collect();
        let (kept, served) = converse(&ring, &convs);
        println!(
            "200 conversations x 10 turns, all in flight: {:.1}% of turns on their endpoint, \
             busiest endpoint {:.2}x the mean ({served:?})",
            kept * 100.0,
            busiest(&served)
        );
        assert!(kept >= 0.95, "{kept}");
        assert!(busiest(&served) <= 1.25, "{served:?}");
        // Keys whose ring shares are far apart (100 homed on endpoint 0, 50 on each other):
        // the bound holds endpoint 0 to 1.25 × the mean, its surplus keys spill.
        let mut homed = [0; 3];
        let skewed: Vec<u64> = keys(10_000)
            .filter(|&k| {
                let h = ring.home(k).unwrap();
                let room = homed[h] < [100, 50, 50][h];
                homed[h] += usize::from(room);
                room
            })
            .collect();
        assert_eq!(skewed.len(), 200);
        let (kept, served) = converse(&ring, &skewed);
        println!(
            "the same with half the keys homed on one endpoint: {:.1}% kept, busiest {:.2}x \
             ({served:?})",
            kept * 100.0,
            busiest(&served)
        );
        assert!(busiest(&served) <= 1.25, "{served:?}");
    }
}
