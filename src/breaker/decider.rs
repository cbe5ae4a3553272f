//! The coordination thread's breaker authority: one state machine per endpoint over the
//! reports of every worker.
//!
//! ```text
//!            failure rate ≥ threshold (≥ min_calls in window)
//!            or N consecutive failures, or a worker opened locally
//!   CLOSED ─────────────────────────────────────────────────────→ OPEN (until = now + interval(trips))
//!     ↑                                                             │ tick: now ≥ until
//!     │ K probe successes                                           ↓
//!     └──────────────────────────── HALF_OPEN (K probe permits split across workers)
//!                                        │ any probe failure
//!                                        └──────────────→ OPEN (trips + 1: longer interval)
//! ```
//!
//! Every transition bumps the endpoint's epoch and yields one [`BreakerUpdate`] for the
//! coordination thread to send to every worker. Reports carrying another epoch are stale (collected under an earlier state)
//! and are dropped.

use std::time::{Duration, Instant};

use super::window::SlidingWindow;
use super::{BreakerPolicy, BreakerReport, BreakerUpdate, BroadcastState, EndpointId};

/// A HALF_OPEN grant whose permits are not all used by then is re-split (the unstarted ones
/// only) with another offset, so that permits stuck on a worker that sees no traffic for this
/// endpoint do not keep it half-open forever.
///
/// A worker that starts a probe between its last drain and applying the re-grant spends a
/// permit the decider counted as unstarted, so an episode that needed a re-grant may admit a
/// few more than K probes (at most one drain interval's worth); without a re-grant it admits
/// exactly K.
pub const PROBE_REGRANT_AFTER: Duration = Duration::from_secs(1);

/// The three breaker states, for metrics labels and the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    Closed,
    Open,
    HalfOpen,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::Closed => "closed",
            StateKind::Open => "open",
            StateKind::HalfOpen => "half_open",
        }
    }
}

/// The decided transitions, counted per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    ClosedToOpen,
    OpenToHalfOpen,
    HalfOpenToClosed,
    HalfOpenToOpen,
}

impl Transition {
    pub const ALL: [Transition; 4] = [
        Transition::ClosedToOpen,
        Transition::OpenToHalfOpen,
        Transition::HalfOpenToClosed,
        Transition::HalfOpenToOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transition::ClosedToOpen => "closed_to_open",
            Transition::OpenToHalfOpen => "open_to_half_open",
            Transition::HalfOpenToClosed => "half_open_to_closed",
            Transition::HalfOpenToOpen => "half_open_to_open",
        }
    }
}

/// Why a CLOSED breaker tripped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripCause {
    FailureRate,
    ConsecutiveFailures,
    /// A worker saw `consecutive_failures` connect errors in a row and opened at once.
    WorkerLocal,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        started: u32,
        successes: u32,
        grant: u32,
        granted_at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Endpoint {
    policy: BreakerPolicy,
    state: State,
    epoch: u32,
    /// Calls and failures while CLOSED.
    window: SlidingWindow,
    /// Failures in a row while CLOSED, as far as batching across workers can tell.
    consecutive: u32,
    /// Trips since the last close; the open interval grows with it.
    trips: u32,
    transitions: [u64; 4],
    causes: [u64; 3],
}

/// The state of one endpoint for metrics and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub endpoint: EndpointId,
    pub state: StateKind,
    pub epoch: u32,
    /// Trips since the endpoint last closed.
    pub consecutive_trips: u32,
    pub open_until: Option<Instant>,
    /// Counts indexed like [`Transition::ALL`].
    pub transitions: [u64; 4],
    /// Trips by cause: failure rate, consecutive failures, worker-local.
    pub trips_by_cause: [u64; 3],
}

/// Every endpoint's breaker, in endpoint order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSnapshot {
    pub endpoints: Vec<EndpointSnapshot>,
}

/// The coordination thread's breaker authority. Not on the data path.
#[derive(Debug)]
pub struct BreakerDecider {
    endpoints: Vec<Endpoint>,
    /// Rotates the probe split so that small grants visit different workers.
    probe_offset: u32,
    rng: SplitMix64,
}

impl BreakerDecider {
    /// One CLOSED breaker per policy; `policies[i]` belongs to `EndpointId(i)`. `seed` feeds the
    /// open-interval jitter.
    pub fn new(policies: &[BreakerPolicy], seed: u64, now: Instant) -> Self {
        let endpoints = policies.iter().map(|&p| Endpoint::new(p, now)).collect();
        BreakerDecider {
            endpoints,
            probe_offset: 0,
            rng: SplitMix64(seed),
        }
    }

    /// After a config reload: endpoint `i` keeps its state and counters and takes
    /// `policies[i]` (a changed window length starts an empty window), new endpoints start
    /// CLOSED at epoch 0, endpoints past the end are dropped. Mirror of
    /// [`WorkerBreakers::set_policies`](super::WorkerBreakers::set_policies).
    pub fn set_policies(&mut self, policies: &[BreakerPolicy], now: Instant) {
        self.endpoints.truncate(policies.len());
        for (ep, policy) in self.endpoints.iter_mut().zip(policies) {
            if ep.policy.window != policy.window {
                ep.window = SlidingWindow::new(policy.window, now);
            }
            ep.policy = *policy;
        }
        for policy in &policies[self.endpoints.len()..] {
            self.endpoints.push(Endpoint::new(*policy, now));
        }
    }

    /// Folds one worker report in; pushes the resulting transition's update, if any, to `out`.
    /// Reports for unknown endpoints or another epoch are dropped.
    pub fn ingest(&mut self, report: &BreakerReport, now: Instant, out: &mut Vec<BreakerUpdate>) {
        let Some(ep) = self.endpoints.get_mut(report.endpoint.index()) else {
            return;
        };
        if report.epoch != ep.epoch {
            return;
        }
        match ep.state {
            State::Closed => {
                let calls = u64::from(report.successes) + u64::from(report.failures);
                ep.window.add(now, calls, u64::from(report.failures));
                // Batches from different workers interleave in no known order; a success in
                // this batch breaks the run, otherwise the run continues across batches.
                ep.consecutive = if report.successes > 0 {
                    report.trailing_failures
                } else {
                    ep.consecutive.saturating_add(report.trailing_failures)
                };
                let (calls, failures) = ep.window.sum(now);
                let cause = if report.opened_locally {
                    Some(TripCause::WorkerLocal)
                } else if ep.consecutive >= ep.policy.consecutive_failures {
                    Some(TripCause::ConsecutiveFailures)
                } else if report.failures > 0 && ep.policy.rate_tripped(calls, failures) {
                    Some(TripCause::FailureRate)
                } else {
                    None
                };
                if let Some(cause) = cause {
                    ep.causes[cause as usize] += 1;
                    let unit = self.rng.unit();
                    out.push(ep.open(Transition::ClosedToOpen, now, unit, report.endpoint));
                }
            }
            // Nothing is admitted while OPEN, so a report of this epoch holds nothing new.
            State::Open { .. } => {}
            State::HalfOpen {
                started,
                successes,
                grant,
                granted_at,
            } => {
                if report.probe_failures > 0 {
                    // One failed probe is enough: the endpoint is not back yet.
                    let unit = self.rng.unit();
                    out.push(ep.open(Transition::HalfOpenToOpen, now, unit, report.endpoint));
                    return;
                }
                let successes = successes + report.probe_successes;
                if successes >= ep.policy.half_open_probes {
                    out.push(ep.close(report.endpoint));
                    return;
                }
                let started =
                    (started + report.probes_started).saturating_sub(report.probes_returned);
                ep.state = State::HalfOpen {
                    started,
                    successes,
                    grant,
                    granted_at,
                };
            }
        }
    }

    /// Whether [`Self::tick`] has anything to time: an endpoint that is not CLOSED (an open
    /// breaker's end, a half-open one's probe re-grant). With every breaker closed only a
    /// report can change anything, and a report wakes the coordination thread anyway.
    pub fn has_timers(&self) -> bool {
        self.endpoints
            .iter()
            .any(|ep| !matches!(ep.state, State::Closed))
    }

    /// Moves OPEN endpoints whose interval has passed to HALF_OPEN and re-splits stale probe
    /// grants. Call it on the coordination thread's tick (every few ms up to ~100 ms).
    pub fn tick(&mut self, now: Instant, out: &mut Vec<BreakerUpdate>) {
        for (i, ep) in self.endpoints.iter_mut().enumerate() {
            let endpoint = EndpointId(i as u32);
            let k = ep.policy.half_open_probes;
            match ep.state {
                State::Closed => {}
                State::Open { until } if now >= until => {
                    ep.epoch = ep.epoch.wrapping_add(1);
                    ep.transitions[Transition::OpenToHalfOpen as usize] += 1;
                    ep.state = State::HalfOpen {
                        started: 0,
                        successes: 0,
                        grant: 0,
                        granted_at: now,
                    };
                    let state = BroadcastState::HalfOpen {
                        probes: k,
                        offset: self.probe_offset,
                        grant: 0,
                    };
                    self.probe_offset = self.probe_offset.wrapping_add(k);
                    out.push(BreakerUpdate {
                        endpoint,
                        epoch: ep.epoch,
                        state,
                    });
                }
                State::Open { .. } => {}
                State::HalfOpen {
                    started,
                    successes,
                    grant,
                    granted_at,
                } => {
                    if now.saturating_duration_since(granted_at) < PROBE_REGRANT_AFTER
                        || started >= k
                    {
                        continue;
                    }
                    // Only the unstarted permits are handed out again: probes in flight (model
                    // calls can run for minutes) still count towards K.
                    let grant = grant.wrapping_add(1);
                    let probes = k - started;
                    ep.state = State::HalfOpen {
                        started,
                        successes,
                        grant,
                        granted_at: now,
                    };
                    let state = BroadcastState::HalfOpen {
                        probes,
                        offset: self.probe_offset,
                        grant,
                    };
                    self.probe_offset = self.probe_offset.wrapping_add(probes.max(1));
                    out.push(BreakerUpdate {
                        endpoint,
                        epoch: ep.epoch,
                        state,
                    });
                }
            }
        }
    }

    /// The current decision for `endpoint`, e.g. to bring a (re)started worker up to date.
    pub fn current(&self, endpoint: EndpointId) -> Option<BreakerUpdate> {
        let ep = self.endpoints.get(endpoint.index())?;
        let state = match ep.state {
            State::Closed => BroadcastState::Closed,
            State::Open { until } => BroadcastState::Open { until },
            // A late joiner gets no permits: the split of the current grant is already out.
            State::HalfOpen { grant, .. } => BroadcastState::HalfOpen {
                probes: 0,
                offset: 0,
                grant,
            },
        };
        Some(BreakerUpdate {
            endpoint,
            epoch: ep.epoch,
            state,
        })
    }

    /// Every endpoint's state and transition counters.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let endpoints = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let (state, open_until) = match ep.state {
                    State::Closed => (StateKind::Closed, None),
                    State::Open { until } => (StateKind::Open, Some(until)),
                    State::HalfOpen { .. } => (StateKind::HalfOpen, None),
                };
                EndpointSnapshot {
                    endpoint: EndpointId(i as u32),
                    state,
                    epoch: ep.epoch,
                    consecutive_trips: ep.trips,
                    open_until,
                    transitions: ep.transitions,
                    trips_by_cause: ep.causes,
                }
            })
            .collect();
        BreakerSnapshot { endpoints }
    }
}

impl Endpoint {
    fn new(policy: BreakerPolicy, now: Instant) -> Self {
        Endpoint {
            policy,
            state: State::Closed,
            epoch: 0,
            window: SlidingWindow::new(policy.window, now),
            consecutive: 0,
            trips: 0,
            transitions: [0; 4],
            causes: [0; 3],
        }
    }

    fn open(
        &mut self,
        transition: Transition,
        now: Instant,
        unit: f64,
        endpoint: EndpointId,
    ) -> BreakerUpdate {
        self.trips = self.trips.saturating_add(1);
        let until = now + open_interval(&self.policy, self.trips, unit);
        self.state = State::Open { until };
        self.epoch = self.epoch.wrapping_add(1);
        self.transitions[transition as usize] += 1;
        BreakerUpdate {
            endpoint,
            epoch: self.epoch,
            state: BroadcastState::Open { until },
        }
    }

    fn close(&mut self, endpoint: EndpointId) -> BreakerUpdate {
        // A fresh start: calls from before the trip must not re-trip a recovered endpoint.
        self.window.clear();
        self.consecutive = 0;
        self.trips = 0;
        self.state = State::Closed;
        self.epoch = self.epoch.wrapping_add(1);
        self.transitions[Transition::HalfOpenToClosed as usize] += 1;
        BreakerUpdate {
            endpoint,
            epoch: self.epoch,
            state: BroadcastState::Closed,
        }
    }
}

/// The open interval after the `trips`-th consecutive trip: `base * factor^(trips-1)`, capped
/// at `max`, then scaled by `1 + jitter * unit` (`unit` in [-1, 1]); never above `max`.
pub fn open_interval(policy: &BreakerPolicy, trips: u32, unit: f64) -> Duration {
    let max_ms = policy.open_max.as_secs_f64() * 1000.0;
    let exponent = trips.saturating_sub(1).min(i32::MAX as u32) as i32;
    let grown = policy.open_base.as_secs_f64() * 1000.0 * policy.open_factor.powi(exponent);
    let capped = grown.min(max_ms);
    let jittered = capped * (1.0 + policy.open_jitter * unit.clamp(-1.0, 1.0));
    Duration::from_millis(jittered.clamp(1.0, max_ms) as u64)
}

/// A small, seedable PRNG for jitter (no cryptographic use).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1].
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> BreakerPolicy {
        BreakerPolicy {
            open_jitter: jitter,
            ..BreakerPolicy::default()
        }
    }

    fn report(ep: u32, epoch: u32, successes: u32, failures: u32, trailing: u32) -> BreakerReport {
        BreakerReport {
            endpoint: EndpointId(ep),
            epoch,
            successes,
            failures,
            trailing_failures: trailing,
            ..BreakerReport::default()
        }
    }

    #[test]
    fn rate_trips_exactly_at_threshold_and_not_below_min_calls() {
        // (successes, failures, trailing, trips?) with min_calls 20, rate 0.5, consecutive 5.
        let table = [
            (10, 10, 0, true), // 20 calls, 50%: trips
            (11, 9, 0, false), // 20 calls, 45%
            (9, 10, 0, false), // 19 calls, 53%: below min_calls
            (0, 4, 4, false),  // 4 in a row, below both
            (1, 4, 4, false),  // 4 trailing
            (0, 5, 5, true),   // 5 in a row
        ];
        for (successes, failures, trailing, trips) in table {
            let t0 = Instant::now();
            let mut d = BreakerDecider::new(&[policy(0.0)], 1, t0);
            let mut out = Vec::new();
            d.ingest(&report(0, 0, successes, failures, trailing), t0, &mut out);
            assert_eq!(
                out.len(),
                usize::from(trips),
                "{successes}/{failures}/{trailing}"
            );
            if trips {
                assert_eq!(
                    out[0].state,
                    BroadcastState::Open {
                        until: t0 + Duration::from_secs(1)
                    }
                );
                assert_eq!(out[0].epoch, 1);
            }
        }
    }

    #[test]
    fn consecutive_run_spans_batches_and_a_success_breaks_it() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy(0.0)], 1, t0);
        let mut out = Vec::new();
        d.ingest(&report(0, 0, 0, 3, 3), t0, &mut out);
        d.ingest(&report(0, 0, 1, 1, 1), t0, &mut out); // run is now 1
        d.ingest(&report(0, 0, 0, 3, 3), t0, &mut out); // 4
        assert!(out.is_empty());
        d.ingest(&report(0, 0, 0, 1, 1), t0, &mut out); // 5
        assert_eq!(out.len(), 1);
        assert_eq!(d.snapshot().endpoints[0].trips_by_cause, [0, 1, 0]);
    }

    #[test]
    fn window_forgets_old_failures() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy(0.0)], 1, t0);
        let mut out = Vec::new();
        d.ingest(&report(0, 0, 6, 10, 0), t0, &mut out);
        // 11 s later the first 16 calls are gone: 4 failures of 4 calls is below min_calls.
        d.ingest(
            &report(0, 0, 0, 4, 0),
            t0 + Duration::from_secs(11),
            &mut out,
        );
        assert!(out.is_empty());
        // Within the window they add up: 14 of 20 trips.
        d.ingest(
            &report(0, 0, 6, 10, 0),
            t0 + Duration::from_secs(12),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(d.snapshot().endpoints[0].trips_by_cause, [1, 0, 0]);
    }

    #[test]
    fn stale_epoch_and_unknown_endpoint_are_dropped() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy(0.0)], 1, t0);
        let mut out = Vec::new();
        d.ingest(&report(0, 7, 0, 50, 50), t0, &mut out);
        d.ingest(&report(3, 0, 0, 50, 50), t0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn full_cycle_with_growing_interval() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy(0.0)], 1, t0);
        let mut out = Vec::new();
        assert!(!d.has_timers(), "all closed: nothing to time");
        d.ingest(&report(0, 0, 9, 1, 1), t0, &mut out);
        assert!(out.is_empty() && !d.has_timers(), "counted, still closed");
        let local = BreakerReport {
            opened_locally: true,
            ..report(0, 0, 0, 1, 1)
        };
        d.ingest(&local, t0, &mut out);
        assert!(d.has_timers(), "open: its end is timed");
        assert_eq!(
            out.pop().unwrap().state,
            BroadcastState::Open {
                until: t0 + Duration::from_secs(1)
            }
        );

        d.tick(t0 + Duration::from_millis(999), &mut out);
        assert!(out.is_empty(), "still open");
        let t1 = t0 + Duration::from_secs(1);
        d.tick(t1, &mut out);
        assert!(
            d.has_timers(),
            "half-open: probe grants are re-split on a timer"
        );
        let half = out.pop().unwrap();
        assert_eq!(
            (half.epoch, half.state),
            (
                2,
                BroadcastState::HalfOpen {
                    probes: 3,
                    offset: 0,
                    grant: 0
                }
            )
        );

        // A probe fails: open again for twice as long.
        let failed = BreakerReport {
            probes_started: 1,
            probe_failures: 1,
            ..report(0, 2, 0, 0, 0)
        };
        d.ingest(&failed, t1, &mut out);
        assert_eq!(
            out.pop().unwrap().state,
            BroadcastState::Open {
                until: t1 + Duration::from_secs(2)
            }
        );
        let t2 = t1 + Duration::from_secs(2);
        d.tick(t2, &mut out);
        assert_eq!(out.pop().unwrap().epoch, 4);

        // K successes, possibly from several workers, close it.
        let two = BreakerReport {
            probes_started: 2,
            probe_successes: 2,
            ..report(0, 4, 0, 0, 0)
        };
        d.ingest(&two, t2, &mut out);
        assert!(out.is_empty());
        let one = BreakerReport {
            probes_started: 1,
            probe_successes: 1,
            ..report(0, 4, 0, 0, 0)
        };
        d.ingest(&one, t2, &mut out);
        assert_eq!(
            out.pop().unwrap(),
            BreakerUpdate {
                endpoint: EndpointId(0),
                epoch: 5,
                state: BroadcastState::Closed
            }
        );

        assert!(!d.has_timers(), "closed again");
        let snap = &d.snapshot().endpoints[0];
        assert_eq!(snap.state, StateKind::Closed);
        assert_eq!(snap.transitions, [1, 2, 1, 1]);
        assert_eq!(snap.trips_by_cause, [0, 0, 1]);
        assert_eq!(snap.consecutive_trips, 0);
    }

    #[test]
    fn stale_grant_is_resplit_without_started_probes() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy(0.0)], 1, t0);
        let mut out = Vec::new();
        d.ingest(&report(0, 0, 0, 5, 5), t0, &mut out);
        d.tick(t0 + Duration::from_secs(1), &mut out);
        out.clear();
        let started = BreakerReport {
            probes_started: 1,
            ..report(0, 2, 0, 0, 0)
        };
        d.ingest(&started, t0 + Duration::from_secs(1), &mut out);
        d.tick(t0 + Duration::from_millis(1999), &mut out);
        assert!(out.is_empty());
        d.tick(t0 + Duration::from_secs(2), &mut out);
        assert_eq!(
            out.pop().unwrap().state,
            BroadcastState::HalfOpen {
                probes: 2,
                offset: 3,
                grant: 1
            }
        );
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = policy(0.2);
        let ms = |trips, unit| open_interval(&p, trips, unit).as_millis() as u64;
        let table = [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (6, 32_000),
            (7, 60_000),
            (40, 60_000),
            (u32::MAX, 60_000),
        ];
        for (trips, want) in table {
            assert_eq!(ms(trips, 0.0), want, "trips={trips}");
        }
        assert_eq!(ms(1, -1.0), 800);
        assert_eq!(ms(1, 1.0), 1200);
        assert_eq!(ms(40, -1.0), 48_000);
        assert_eq!(ms(40, 1.0), 60_000, "max is a hard ceiling");
        let mut rng = SplitMix64(42);
        let (mut lo, mut hi) = (u64::MAX, 0);
        for _ in 0..1000 {
            let v = ms(3, rng.unit());
            (lo, hi) = (lo.min(v), hi.max(v));
        }
        assert!(lo >= 3200 && hi <= 4800, "{lo}..{hi}");
        assert!(lo < 3400 && hi > 4600, "jitter spreads: {lo}..{hi}");
    }
}
