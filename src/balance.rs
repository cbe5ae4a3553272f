//! Endpoint choice: which endpoint of an upstream (or deployment) takes an attempt, by the
//! policy the config chose for it, fed by the worker's view of every endpoint's load.
//!
//! # What this module owns
//!
//! - [`config`]: `balance = "round_robin" | "least_requests" | "p2c_ewma" | "affinity"`,
//!   `affinity = {..}` and `load_metric = {..}` on an upstream or deployment, validated into a
//!   [`Table`] (one [`UpstreamBalance`] per upstream: its [`Policy`], a strategy value with the
//!   affinity ring built at config load).
//! - the policies, one module each: [`round_robin`], [`least_requests`], [`p2c`] (power of two
//!   choices on in-flight × EWMA time to first byte) and [`affinity`] (consistent hashing with
//!   bounded loads).
//! - [`view`] (one per worker, data path): [`WorkerBalance`], this core's requests in flight
//!   per endpoint, the samples it has not reported yet, and the fleet's merged view;
//!   [`WorkerBalance::pick`] is the one function the proxy calls to choose.
//!   [`Attempt`] counts an attempt in flight from its start until it is dropped.
//! - [`fleet`] (coordination thread): [`fleet::Fleet`] merges the workers' reports every few
//!   milliseconds into a [`FleetView`] sent to every worker, so every core sees the load of
//!   the whole process, not only its own; it owns the load-metric thread ([`feed`]).
//! - [`key`]: the affinity key's hash (a header, the subject, or the conversation's opening
//!   read from the JSON body).
//!
//! # Contract
//!
//! [`WorkerBalance::pick`] returns the index (into the upstream's `endpoints`) of an endpoint
//! that `eligible` ([`Eligible`]) admits, or `None` when it admits none. The proxy's is
//! [`Open`]: the endpoints whose circuit breaker and health admit traffic (the breaker view's
//! [`Admitted`], taken once per choice without consuming a probe permit; only the chosen
//! endpoint's `allow` takes one) and that this request has not tried yet ([`Tried`]), so
//! every policy skips breaker-open and unhealthy endpoints and a retry goes to another
//! endpoint while one is left.
//!
//! # Flow
//!
//! ```text
//! worker:  pick(plan, key, eligible) → Attempt::begin (in flight +1) → head (TTFB sample)
//!          → done (latency sample) → drop (in flight −1)
//!          inbox tick: drain() ── LoadReport (changed endpoints only) ──→ coordination thread
//! coord:   Fleet::ingest(report); every FLEET_INTERVAL, if anything changed:
//!          Arc<FleetView> ──→ every worker inbox ──→ WorkerBalance::set_fleet
//! feed:    load-metric thread ── GET /metrics every interval ──→ gauge ──→ Fleet
//! ```
//!
//! # Performance
//!
//! A choice is a few indexed reads of fixed arrays (sized per snapshot by endpoint id, one
//! contiguous array each for this core's in flight, the other cores' load and the EWMA, the
//! fleet's part worked out once when its view arrives), no allocation, no lock, no atomic:
//! round-robin one counter; least-requests one pass over the loads and an `and` with the
//! eligible set; P2C two random draws; affinity one pass summing the eligible endpoints'
//! loads, a bucket read and a short search on the ring, and a walk that stops once every
//! eligible endpoint was seen. Up to 64 endpoints the eligible set is one word: the breaker
//! view keeps the CLOSED, healthy endpoints as a bit set and asks its slots only about the
//! others (open, half-open, unhealthy), so a choice reads no breaker slot while every breaker
//! is closed. An attempt reads no clock of its own (its start is the clock read of the
//! choice, its samples are taken at the reads the proxy makes for its TTFB histogram and
//! upstream time) and touches its endpoint's cells three times (begin, head, done); the EWMAs
//! are folded on the coordination thread, once per endpoint per report, never per request.
//! `benches/balance.rs` measures each. Upstreams left on round-robin (the default) track
//! nothing: no report, no fleet message.

pub mod affinity;
pub mod config;
pub mod feed;
pub mod fleet;
pub mod key;
pub mod least_requests;
pub mod p2c;
pub mod round_robin;
pub mod view;

pub use config::{Affinity, FleetPlan, UpstreamBalance};
pub use config::{AffinityKey, LoadMetric, Policy, RawAffinity, RawLoadMetric, RawPolicy, Table};
pub use view::{Attempt, EndpointLoad, FleetEndpoint, FleetView, LoadReport, WorkerBalance};

use crate::breaker::local::Admitted;

/// What a policy reads about the endpoints of one upstream, by index in the upstream.
pub trait Loads {
    /// Endpoints of the upstream.
    fn count(&self) -> usize;
    /// Requests in flight to endpoint `i` across the process, plus its load-metric gauge.
    fn load(&self, i: usize) -> u64;
    /// EWMA of endpoint `i`'s time to the response head, µs; 0 before its first sample.
    fn ttfb_us(&self, i: usize) -> f64;
}

/// Which endpoints of an upstream (by index in it) a choice may take. Any `Fn(usize) -> bool`
/// is one; [`Open`] (the proxy's: breakers and health less what the request tried) also
/// gives the whole set at once as bits, so a policy that looks at every endpoint reads one
/// word instead of asking about each.
pub trait Eligible: Copy {
    /// Whether endpoint `i` may take the request.
    fn admits(&self, i: usize) -> bool;

    /// The whole set as bits (endpoint `i` at bit `i`, none at or past the upstream's
    /// length), when it is known at once; `None`: ask [`Eligible::admits`]. Only for
    /// upstreams of at most 64 endpoints.
    #[inline]
    fn bits(&self) -> Option<u64> {
        None
    }
}

impl<F: Fn(usize) -> bool + Copy> Eligible for F {
    #[inline]
    fn admits(&self, i: usize) -> bool {
        self(i)
    }
}

/// The proxy's eligible endpoints: those the breaker view admits now (breaker and health,
/// taken once per choice) that the request has not tried.
#[derive(Debug, Clone, Copy)]
pub struct Open<'a> {
    pub admitted: Admitted<'a>,
    pub tried: &'a Tried,
}

impl Eligible for Open<'_> {
    #[inline]
    fn admits(&self, i: usize) -> bool {
        !self.tried.contains(i) && self.admitted.admits(i)
    }

    #[inline]
    fn bits(&self) -> Option<u64> {
        match self.admitted {
            Admitted::Bits(bits) => Some(bits & !self.tried.0[0]),
            _ => None,
        }
    }
}

/// The endpoints (by index in their upstream) one request has tried, as a bit set. Indices
/// past [`Tried::CAPACITY`] are never marked: on an upstream that large a retry may land on
/// an endpoint it tried before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried([u64; 4]);

impl Tried {
    /// Endpoint indices the set can hold.
    pub const CAPACITY: usize = 256;

    #[inline]
    pub fn insert(&mut self, i: usize) {
        if i < Self::CAPACITY {
            self.0[i / 64] |= 1 << (i % 64);
        }
    }

    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        i < Self::CAPACITY && self.0[i / 64] & (1 << (i % 64)) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Loads given outright, for the policies' tests.
    pub(crate) struct Fixed {
        pub load: Vec<u64>,
        pub ttfb: Vec<f64>,
    }

    impl Fixed {
        pub fn loads(load: &[u64]) -> Fixed {
            Fixed {
                load: load.to_vec(),
                ttfb: vec![0.0; load.len()],
            }
        }
    }

    impl Loads for Fixed {
        fn count(&self) -> usize {
            self.load.len()
        }
        fn load(&self, i: usize) -> u64 {
            self.load[i]
        }
        fn ttfb_us(&self, i: usize) -> f64 {
            self.ttfb[i]
        }
    }

    /// `Open::bits` is the set `Open::admits` describes, whatever the breakers admit and the
    /// request tried (marks past 64 included); without a bit set there are no bits.
    #[test]
    fn open_gives_as_bits_what_it_admits() {
        let mut rng = crate::route::WorkerRng::new(3);
        for _ in 0..500 {
            let admitted = Admitted::Bits(rng.next_u64() & rng.next_u64());
            let mut tried = Tried::default();
            for _ in 0..rng.below(6) {
                tried.insert(rng.below(100) as usize);
            }
            let open = Open {
                admitted,
                tried: &tried,
            };
            let bits = open.bits().unwrap();
            for i in 0..64 {
                assert_eq!(bits & (1 << i) != 0, open.admits(i), "{i}");
            }
        }
        let tried = Tried::default();
        let all = Open {
            admitted: Admitted::All,
            tried: &tried,
        };
        assert_eq!(all.bits(), None);
        assert!(all.admits(100));
        assert_eq!((|_: usize| true).bits(), None);
    }

    #[test]
    fn tried_marks_what_it_can_hold() {
        let mut t = Tried::default();
        assert!(t.is_empty());
        for i in [0, 1, 63, 64, 200, 255] {
            assert!(!t.contains(i));
            t.insert(i);
            assert!(t.contains(i), "{i}");
        }
        assert!(!t.contains(2) && !t.contains(65));
        t.insert(256);
        assert!(!t.contains(256), "past the capacity nothing is marked");
        assert!(!t.is_empty());
    }
}
