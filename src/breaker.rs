//! Resilience stage: per-endpoint circuit breakers, the retry budget and active health checks.
//!
//! # What this module owns
//!
//! - [`table`]: the endpoint table of one snapshot ([`table::Resilience`]): endpoint ids and
//!   the validated policies of every upstream.
//! - [`local`] (one per worker, data path): [`WorkerBreakers`], the worker's view of every
//!   endpoint's breaker. [`WorkerBreakers::allow`] answers `Ok(Permit)` or `Err(Rejected)` in
//!   O(1) without allocating; [`WorkerBreakers::record`] folds the attempt's [`Outcome`] into a
//!   pending [`BreakerReport`]; [`WorkerBreakers::drain_reports`] hands the batch to the worker
//!   for the coordination thread; [`WorkerBreakers::apply`] takes the decider's
//!   [`BreakerUpdate`]. [`local::WorkerResilience`] pairs it with the retry budgets and is
//!   what the proxy asks.
//! - [`BreakerDecider`] (coordination thread): the authority. It runs the CLOSED → OPEN →
//!   HALF_OPEN state machine per endpoint over the reports of all workers and emits
//!   [`BreakerUpdate`]s that the coordination thread sends to every worker, so all cores open
//!   and close together. Breakers are shared by decision, not by lock.
//! - [`coordinator`]: [`coordinator::BreakerCoordinator`], the decider and the health thread
//!   on the coordination thread; it returns [`coordinator::EndpointUpdate`]s and sends
//!   nothing itself.
//! - [`RetryBudget`] (one per worker, data path): caps retries at a ratio of recent requests.
//! - [`health`]: active HTTP GET probes from a dedicated thread, producing [`HealthUpdate`]s.
//! - [`config`]: the raw TOML (`breaker = {..}`, `health_check = {..}`, `retry = {..}`) and the
//!   validated, `Copy` policies.
//!
//! # Flow
//!
//! ```text
//! worker:  allow(ep, now) ─ Ok(permit) ─→ upstream attempt ─→ record(permit, outcome, now)
//!          drain_reports(&mut buf) ── BreakerReport ──→ coordination thread's inbox
//! coord:   breakers.ingest(&report, now); breakers.tick(now, &mut updates)
//!          every EndpointUpdate ──→ every worker inbox ──→ workers.apply(&update)
//! health:  HealthChecker thread ── HealthUpdate ──→ coord ──→ every worker ──→ apply_health
//! ```
//!
//! The coordination thread ticks the decider every few ms (up to ~100 ms); workers drain
//! reports at once when one holds a failure or a probe (the outcome nudges the inbox loop),
//! and reports of successes alone at most every [`crate::runtime::BREAKER_SUCCESS_FLUSH`]. A
//! (re)started worker is brought up to date with [`BreakerDecider::current`] for each
//! endpoint. On config reload both sides take the new
//! policies with `set_policies` (ids must stay stable), and the health thread is restarted
//! with the new targets.
//!
//! # Error handling
//!
//! [`Rejected`] means "do not touch this endpoint now": the proxy tries another endpoint of
//! the deployment (fallback) or answers `503 Service Unavailable` with `Retry-After` taken
//! from [`Rejected::retry_after`] (rounded up to whole seconds).
//!
//! # Performance
//!
//! Per request the worker does two indexed `Vec` lookups (`allow`, `record`), no allocation,
//! no lock, no atomic. Endpoint choice asks about a whole upstream at once
//! ([`WorkerResilience::admitted`](local::WorkerResilience::admitted)): the CLOSED, healthy
//! endpoints are a bit set kept by every state and health change, so up to 64 endpoints that
//! is a word read, plus a slot read for each endpoint that is not CLOSED and healthy. Reports are per-endpoint counters batched between drains, so the
//! coordination thread's inbox carries at most one report per endpoint per worker per drain.

pub mod budget;
pub mod config;
pub mod coordinator;
pub mod decider;
pub mod health;
pub mod local;
pub mod table;
mod window;

use std::time::Instant;

pub use budget::RetryBudget;
pub use config::{BreakerPolicy, HealthCheckPolicy, RetryPolicy};
pub use decider::{
    BreakerDecider, BreakerSnapshot, EndpointSnapshot, StateKind, Transition, TripCause,
};
pub use health::{HealthChecker, HealthTarget, HealthUpdate, HttpProber};
pub use local::{Permit, RejectReason, Rejected, WorkerBreakers};

/// An upstream endpoint (one address of one deployment), numbered densely from 0 by the
/// endpoint table ([`table::Resilience`]) so that every table here is a `Vec` indexed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EndpointId(pub u32);

impl EndpointId {
    /// The table index of this endpoint.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// How one upstream attempt ended, as the engine saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered and the response was relayed to the end with a status that is
    /// not a configured failure status.
    Success,
    /// The TCP (or TLS) connection could not be established or was refused/reset before the
    /// request was written.
    ConnectError,
    /// The upstream did not answer (head) or went silent (body) within the route's timeout.
    Timeout,
    /// The upstream answered with this status and the response completed.
    Status(u16),
    /// The response died after its first byte: connection closed or reset mid-body/mid-stream.
    StreamCut,
    /// The client went away; says nothing about the upstream.
    ClientCancelled,
}

/// What an [`Outcome`] means to a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Counts as a call that went well: the upstream is alive.
    Success,
    /// Counts as a failed call.
    Failure,
    /// Not counted at all (client cancellation, 429 backpressure).
    Ignored,
}

impl Outcome {
    /// Classifies this outcome under `policy`.
    ///
    /// 4xx counts as success: the upstream is alive and rejected the request on its merits.
    /// 429 and client cancellations are ignored: 429 is the upstream asking for less load
    /// (quota and the retry budget react to it, the breaker must not eject a busy but working
    /// model server), and a cancellation tells nothing about the upstream.
    pub fn verdict(self, policy: &BreakerPolicy) -> Verdict {
        match self {
            Outcome::Success => Verdict::Success,
            Outcome::ConnectError | Outcome::Timeout | Outcome::StreamCut => Verdict::Failure,
            Outcome::ClientCancelled | Outcome::Status(429) => Verdict::Ignored,
            Outcome::Status(code) if policy.failure_statuses.contains(code) => Verdict::Failure,
            Outcome::Status(_) => Verdict::Success,
        }
    }
}

/// The breaker state the decider broadcasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastState {
    /// Traffic flows; outcomes are counted.
    Closed,
    /// Fail fast until `until`; the decider will announce HALF_OPEN then.
    Open { until: Instant },
    /// `probes` probe permits are split across all workers: worker `i` of `workers` gets
    /// [`probe_share`]`(probes, offset, i, workers)`. `grant` numbers the split within one
    /// HALF_OPEN episode; a newer grant replaces the permits of an older one.
    HalfOpen {
        probes: u32,
        offset: u32,
        grant: u32,
    },
}

/// The decider's word on one endpoint, sent to every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerUpdate {
    pub endpoint: EndpointId,
    /// Bumped on every decided transition; permits and reports carry it so that a result from
    /// an earlier state is never applied to a later one.
    pub epoch: u32,
    pub state: BroadcastState,
}

/// One worker's outcomes for one endpoint since its previous drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BreakerReport {
    pub endpoint: EndpointId,
    /// The epoch the worker held while collecting these counts.
    pub epoch: u32,
    pub successes: u32,
    pub failures: u32,
    /// Failures at the end of the batch with no success after them.
    pub trailing_failures: u32,
    /// Probe permits consumed (HALF_OPEN) and handed back (probe ended without a verdict).
    pub probes_started: u32,
    pub probes_returned: u32,
    pub probe_successes: u32,
    pub probe_failures: u32,
    /// The worker opened this endpoint locally after consecutive connect errors.
    pub opened_locally: bool,
}

/// Worker `worker`'s share of `probes` probe permits split over `workers` workers starting at
/// `offset`: an even split, with the remainder going to the `probes % workers` workers after
/// `offset` (so that with fewer probes than workers, successive grants land on other workers).
pub fn probe_share(probes: u32, offset: u32, worker: u32, workers: u32) -> u32 {
    let workers = workers.max(1);
    let rank = (worker % workers + workers - offset % workers) % workers;
    probes / workers + u32::from(rank < probes % workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let policy = BreakerPolicy::default();
        let table = [
            (Outcome::Success, Verdict::Success),
            (Outcome::ConnectError, Verdict::Failure),
            (Outcome::Timeout, Verdict::Failure),
            (Outcome::StreamCut, Verdict::Failure),
            (Outcome::ClientCancelled, Verdict::Ignored),
            (Outcome::Status(200), Verdict::Success),
            (Outcome::Status(404), Verdict::Success),
            (Outcome::Status(400), Verdict::Success),
            (Outcome::Status(429), Verdict::Ignored),
            (Outcome::Status(500), Verdict::Failure),
            (Outcome::Status(503), Verdict::Failure),
            (Outcome::Status(599), Verdict::Failure),
        ];
        for (outcome, want) in table {
            assert_eq!(outcome.verdict(&policy), want, "{outcome:?}");
        }
    }

    #[test]
    fn configured_statuses_only() {
        let policy = BreakerPolicy {
            failure_statuses: config::FailureStatuses::from_codes(&[502, 503]),
            ..BreakerPolicy::default()
        };
        assert_eq!(Outcome::Status(503).verdict(&policy), Verdict::Failure);
        assert_eq!(Outcome::Status(500).verdict(&policy), Verdict::Success);
    }

    #[test]
    fn probe_shares_sum_to_total() {
        for workers in 1..6 {
            for probes in 0..10 {
                for offset in 0..7 {
                    let sum: u32 = (0..workers)
                        .map(|w| probe_share(probes, offset, w, workers))
                        .sum();
                    assert_eq!(
                        sum, probes,
                        "probes={probes} workers={workers} offset={offset}"
                    );
                }
            }
        }
        // Fewer probes than workers: the offset moves them to other workers.
        assert_eq!(probe_share(1, 0, 0, 4), 1);
        assert_eq!(probe_share(1, 1, 0, 4), 0);
        assert_eq!(probe_share(1, 1, 1, 4), 1);
    }
}
