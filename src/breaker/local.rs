//! A worker's side of the resilience stage (data path): its local view of every endpoint's
//! breaker ([`WorkerBreakers`]) and, with its retry budgets, what the proxy asks before and
//! after an upstream attempt ([`WorkerResilience`]).
//!
//! The view follows the decider's broadcasts; the only transition it makes on its own is
//! CLOSED → OPEN after `consecutive_failures` connect errors in a row, because a refused
//! connection is unambiguous and waiting a control round-trip would send more requests into a
//! dead socket. That local open is reported, and the decider's broadcast then opens every core.

use std::time::{Duration, Instant};

use super::decider::StateKind;
use super::health::HealthUpdate;
use super::table::Resilience;
use super::{
    probe_share, BreakerPolicy, BreakerReport, BreakerUpdate, BroadcastState, EndpointId, Outcome,
    RetryBudget, Verdict,
};
use crate::error::{Fault, GatewayError, UpstreamError};

/// `Retry-After` for rejections whose end is not known (no probe permit here, unhealthy).
pub const RETRY_AFTER_UNKNOWN: Duration = Duration::from_secs(1);

/// Leave to make one upstream attempt. Hand it back to [`WorkerBreakers::record`] with the
/// attempt's outcome, exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a permit's outcome must be recorded"]
pub struct Permit {
    endpoint: EndpointId,
    epoch: u32,
    /// `Some(grant)` when this attempt is a HALF_OPEN probe.
    probe: Option<u32>,
}

impl Permit {
    pub fn endpoint(self) -> EndpointId {
        self.endpoint
    }

    /// Whether this attempt is a HALF_OPEN probe (for the access log and metrics).
    pub fn is_probe(self) -> bool {
        self.probe.is_some()
    }
}

/// Why an endpoint refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The breaker is OPEN.
    Open,
    /// HALF_OPEN, and this worker holds no probe permit.
    NoProbePermit,
    /// Active health checks took the endpoint out of rotation.
    Unhealthy,
    /// The engine asked about an endpoint this view does not know (a config mismatch).
    UnknownEndpoint,
}

/// The endpoint must not be tried now: fall back to another endpoint or answer 503 with
/// `Retry-After: ceil(retry_after)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub reason: RejectReason,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Closed,
    /// Opened by the decider.
    Open {
        until: Instant,
    },
    /// Opened by this worker on connect errors; the decider has not confirmed it yet.
    OpenedHere {
        until: Instant,
    },
    HalfOpen {
        permits: u32,
        grant: u32,
    },
}

#[derive(Debug, Clone)]
struct Slot {
    policy: BreakerPolicy,
    state: Local,
    epoch: u32,
    healthy: bool,
    /// Connect errors in a row, for the local open.
    connect_streak: u32,
    pending: BreakerReport,
    dirty: bool,
}

impl Slot {
    fn new(endpoint: EndpointId, policy: BreakerPolicy) -> Self {
        Slot {
            policy,
            state: Local::Closed,
            epoch: 0,
            healthy: true,
            connect_streak: 0,
            pending: BreakerReport {
                endpoint,
                ..BreakerReport::default()
            },
            dirty: false,
        }
    }
}

/// The per-worker breakers, indexed by [`EndpointId`]. Owned by one worker; not `Sync` by use.
#[derive(Debug, Clone)]
pub struct WorkerBreakers {
    worker: u32,
    workers: u32,
    slots: Vec<Slot>,
    /// The endpoints that are CLOSED and healthy, as a bit set by id (bit `i % 64` of word
    /// `i / 64`): `allow` admits them with no question asked, so endpoint choice tests a bit
    /// instead of reading their slot and asks the slot only about the others (open, half-open,
    /// unhealthy). Every method that changes a state or the health keeps it ([`Self::sync`]).
    closed: Vec<u64>,
    /// Endpoints with a pending report; capacity reserved for all, so pushing never allocates.
    dirty: Vec<EndpointId>,
    /// A pending report holds more than successes (a failure, a probe, a local open): the
    /// decider must see it at the next drain. Successes alone may wait (see
    /// [`Self::has_urgent_reports`]).
    urgent: bool,
}

impl WorkerBreakers {
    /// The view of worker `worker` (0-based) of `workers`; `policies[i]` is `EndpointId(i)`'s.
    /// Every endpoint starts CLOSED and healthy at epoch 0, like the decider.
    pub fn new(worker: u32, workers: u32, policies: &[BreakerPolicy]) -> Self {
        let slots = policies
            .iter()
            .enumerate()
            .map(|(i, &policy)| Slot::new(EndpointId(i as u32), policy))
            .collect();
        let mut w = WorkerBreakers {
            worker,
            workers: workers.max(1),
            slots,
            closed: Vec::new(),
            dirty: Vec::with_capacity(policies.len()),
            urgent: false,
        };
        w.sync_all();
        w
    }

    /// After a config reload: endpoint `i` keeps its state and takes `policies[i]`, new
    /// endpoints start CLOSED at epoch 0, endpoints past the end are dropped. Call it with the
    /// same policies as [`BreakerDecider::set_policies`](super::BreakerDecider::set_policies);
    /// ids must name the same endpoints across the reload for state to carry over.
    pub fn set_policies(&mut self, policies: &[BreakerPolicy]) {
        self.slots.truncate(policies.len());
        for (slot, policy) in self.slots.iter_mut().zip(policies) {
            slot.policy = *policy;
        }
        for (i, policy) in policies.iter().enumerate().skip(self.slots.len()) {
            self.slots.push(Slot::new(EndpointId(i as u32), *policy));
        }
        let len = policies.len();
        self.dirty.retain(|e| e.index() < len);
        self.dirty.reserve(len - self.dirty.len());
        self.sync_all();
    }

    /// Rebuilds the bit set of CLOSED, healthy endpoints from every slot (new and reloaded
    /// views; bits past the last endpoint stay clear).
    fn sync_all(&mut self) {
        self.closed.clear();
        self.closed.resize(self.slots.len().div_ceil(64), 0);
        for i in 0..self.slots.len() {
            self.sync(i);
        }
    }

    /// Sets endpoint `i`'s bit in `closed` from its slot.
    #[inline]
    fn sync(&mut self, i: usize) {
        let (Some(slot), Some(word)) = (self.slots.get(i), self.closed.get_mut(i / 64)) else {
            return;
        };
        let bit = 1u64 << (i % 64);
        match slot.healthy && slot.state == Local::Closed {
            true => *word |= bit,
            false => *word &= !bit,
        }
    }

    /// Whether endpoint `id` is CLOSED and healthy (its bit in `closed`).
    #[inline]
    fn is_closed(&self, id: EndpointId) -> bool {
        let i = id.index();
        self.closed
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// The bits of endpoints `first .. first + n` (`n` ≤ 64) in `closed`, endpoint `first + i`
    /// at bit `i`; ids past the table read as clear.
    #[inline]
    fn closed_window(&self, first: EndpointId, n: usize) -> u64 {
        let (w, s) = (first.index() / 64, first.index() % 64);
        let word = |k: usize| self.closed.get(k).copied().unwrap_or(0);
        let mut bits = word(w) >> s;
        if s != 0 {
            bits |= word(w + 1) << (64 - s);
        }
        bits & low_bits(n)
    }

    /// Which of endpoints `first .. first + n` (`n` ≤ 64) `allow` would admit now, as bits
    /// (endpoint `first + i` at bit `i`), without consuming a probe permit: the CLOSED,
    /// healthy ones from the bit set, and the slot asked about each of the others (open,
    /// half-open, unhealthy: usually none).
    #[inline]
    pub fn admitted(&self, first: EndpointId, n: usize, now: Instant) -> u64 {
        let closed = self.closed_window(first, n);
        let mut ask = !closed & low_bits(n);
        let mut bits = closed;
        while ask != 0 {
            let i = ask.trailing_zeros();
            ask &= ask - 1;
            if self.rejection(EndpointId(first.0 + i), now).is_none() {
                bits |= 1 << i;
            }
        }
        bits
    }

    /// May the engine send an attempt to `endpoint` now? O(1), no allocation. A HALF_OPEN
    /// probe permit is consumed by this call.
    pub fn allow(&mut self, endpoint: EndpointId, now: Instant) -> Result<Permit, Rejected> {
        let Some(slot) = self.slots.get_mut(endpoint.index()) else {
            return Err(Rejected {
                reason: RejectReason::UnknownEndpoint,
                retry_after: RETRY_AFTER_UNKNOWN,
            });
        };
        if !slot.healthy {
            return Err(Rejected {
                reason: RejectReason::Unhealthy,
                retry_after: RETRY_AFTER_UNKNOWN,
            });
        }
        let probe = match &mut slot.state {
            Local::Closed => None,
            // The decider did not confirm in time (its reports may have been lost): fall back
            // to CLOSED rather than strand a possibly healthy endpoint; the next connect errors
            // open it again.
            Local::OpenedHere { until } if now >= *until => {
                slot.state = Local::Closed;
                slot.connect_streak = 0;
                self.sync(endpoint.index());
                None
            }
            // Even past `until` the worker waits for the decider's HALF_OPEN: probes must be
            // counted across all cores, which only the decider can do.
            Local::Open { until } | Local::OpenedHere { until } => {
                let retry_after = until
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1));
                return Err(Rejected {
                    reason: RejectReason::Open,
                    retry_after,
                });
            }
            Local::HalfOpen { permits: 0, .. } => {
                return Err(Rejected {
                    reason: RejectReason::NoProbePermit,
                    retry_after: RETRY_AFTER_UNKNOWN,
                });
            }
            Local::HalfOpen { permits, grant } => {
                *permits -= 1;
                slot.pending.probes_started += 1;
                Some(*grant)
            }
        };
        if probe.is_some() {
            self.mark_dirty(endpoint, true);
        }
        Ok(Permit {
            endpoint,
            epoch: self.slots[endpoint.index()].epoch,
            probe,
        })
    }

    /// Whether `allow` would admit now, without consuming a probe permit: for picking among a
    /// deployment's endpoints.
    #[inline]
    pub fn is_available(&self, endpoint: EndpointId, now: Instant) -> bool {
        self.is_closed(endpoint) || self.rejection(endpoint, now).is_none()
    }

    /// What `allow` would refuse with now (`None`: it would admit), without consuming a probe
    /// permit.
    #[inline]
    pub fn rejection(&self, endpoint: EndpointId, now: Instant) -> Option<Rejected> {
        let unknown = |reason| {
            Some(Rejected {
                reason,
                retry_after: RETRY_AFTER_UNKNOWN,
            })
        };
        let Some(s) = self.slots.get(endpoint.index()) else {
            return unknown(RejectReason::UnknownEndpoint);
        };
        if !s.healthy {
            return unknown(RejectReason::Unhealthy);
        }
        match s.state {
            Local::Closed | Local::HalfOpen { permits: 1.., .. } => None,
            Local::OpenedHere { until } if now >= until => None,
            Local::Open { until } | Local::OpenedHere { until } => Some(Rejected {
                reason: RejectReason::Open,
                retry_after: until
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            }),
            Local::HalfOpen { .. } => unknown(RejectReason::NoProbePermit),
        }
    }

    /// Records how the attempt under `permit` ended. O(1), no allocation. Outcomes of permits
    /// from an earlier epoch are dropped: they belong to a state the decider has left.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) {
        let Some(slot) = self.slots.get_mut(permit.endpoint.index()) else {
            return;
        };
        if permit.epoch != slot.epoch {
            return;
        }
        let verdict = outcome.verdict(&slot.policy);
        let pending = &mut slot.pending;
        match (permit.probe, verdict) {
            (Some(_), Verdict::Success) => pending.probe_successes += 1,
            (Some(_), Verdict::Failure) => {
                pending.probe_failures += 1;
                // The decider will re-open on this report; stop probing a failing endpoint now.
                if let Local::HalfOpen { permits, .. } = &mut slot.state {
                    *permits = 0;
                }
            }
            (Some(grant), Verdict::Ignored) => {
                // The probe proved nothing; the permit goes back so that K verdicts still come.
                // Reported either way so the decider's count of started probes stays right.
                pending.probes_returned += 1;
                match &mut slot.state {
                    Local::HalfOpen {
                        permits,
                        grant: current,
                    } if *current == grant => *permits += 1,
                    _ => {}
                }
            }
            (None, Verdict::Success) => {
                pending.successes += 1;
                pending.trailing_failures = 0;
                slot.connect_streak = 0;
            }
            (None, Verdict::Failure) => {
                pending.failures += 1;
                pending.trailing_failures += 1;
                slot.connect_streak = if outcome == Outcome::ConnectError {
                    slot.connect_streak + 1
                } else {
                    0
                };
                if slot.connect_streak >= slot.policy.consecutive_failures
                    && slot.state == Local::Closed
                {
                    slot.state = Local::OpenedHere {
                        until: now + slot.policy.open_base,
                    };
                    pending.opened_locally = true;
                    self.sync(permit.endpoint.index());
                }
            }
            (None, Verdict::Ignored) => return,
        }
        let urgent = !matches!((permit.probe, verdict), (None, Verdict::Success));
        self.mark_dirty(permit.endpoint, urgent);
    }

    /// Whether a pending report holds anything but successes. Successes only add to the
    /// decider's window (they cannot open or close a breaker), so a worker may hold them back
    /// and drain less often; they go out with the next urgent report either way, so a failure
    /// is always judged with every success before it counted.
    pub fn has_urgent_reports(&self) -> bool {
        self.urgent
    }

    /// Moves every pending report into `out` (for the coordination thread). Allocation-free
    /// when `out` has room for one report per endpoint.
    pub fn drain_reports(&mut self, out: &mut Vec<BreakerReport>) {
        self.urgent = false;
        for endpoint in self.dirty.drain(..) {
            let slot = &mut self.slots[endpoint.index()];
            slot.dirty = false;
            out.push(slot.pending);
            slot.pending = BreakerReport {
                endpoint,
                epoch: slot.epoch,
                ..BreakerReport::default()
            };
        }
    }

    /// Applies the decider's decision. Updates arrive in the order the decider made them.
    pub fn apply(&mut self, update: &BreakerUpdate) {
        let (worker, workers) = (self.worker, self.workers);
        let Some(slot) = self.slots.get_mut(update.endpoint.index()) else {
            return;
        };
        let share = |probes, offset| probe_share(probes, offset, worker, workers);
        if update.epoch == slot.epoch {
            // Same state: only a re-split of HALF_OPEN probes changes anything. A repeated
            // CLOSED must not undo a local open the decider has not seen yet.
            if let (
                Local::HalfOpen { permits, grant },
                BroadcastState::HalfOpen {
                    probes,
                    offset,
                    grant: new,
                },
            ) = (&mut slot.state, update.state)
            {
                if *grant != new {
                    (*permits, *grant) = (share(probes, offset), new);
                }
            }
            return;
        }
        slot.epoch = update.epoch;
        slot.connect_streak = 0;
        // Counts collected under the old epoch would be dropped by the decider anyway.
        slot.pending = BreakerReport {
            endpoint: update.endpoint,
            epoch: update.epoch,
            ..BreakerReport::default()
        };
        slot.state = match update.state {
            BroadcastState::Closed => Local::Closed,
            BroadcastState::Open { until } => Local::Open { until },
            BroadcastState::HalfOpen {
                probes,
                offset,
                grant,
            } => Local::HalfOpen {
                permits: share(probes, offset),
                grant,
            },
        };
        self.sync(update.endpoint.index());
    }

    /// Takes an endpoint out of rotation on this worker, or brings it back.
    pub fn apply_health(&mut self, update: &HealthUpdate) {
        if let Some(slot) = self.slots.get_mut(update.endpoint.index()) {
            slot.healthy = update.healthy;
        }
        self.sync(update.endpoint.index());
    }

    /// This worker's view of `endpoint`'s state.
    pub fn state(&self, endpoint: EndpointId) -> Option<StateKind> {
        self.slots.get(endpoint.index()).map(|s| match s.state {
            Local::Closed => StateKind::Closed,
            Local::Open { .. } | Local::OpenedHere { .. } => StateKind::Open,
            Local::HalfOpen { .. } => StateKind::HalfOpen,
        })
    }

    fn mark_dirty(&mut self, endpoint: EndpointId, urgent: bool) {
        self.urgent |= urgent;
        let slot = &mut self.slots[endpoint.index()];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(endpoint);
        }
    }
}

/// Which endpoints of one upstream (by index in it) may take an attempt now, as
/// [`WorkerResilience::admitted`] found them.
#[derive(Debug, Clone, Copy)]
pub enum Admitted<'a> {
    /// No breaker covers the upstream's more than 64 endpoints: every one may.
    All,
    /// Up to 64 endpoints: endpoint `i` may when bit `i` is set.
    Bits(u64),
    /// More: each endpoint is looked up when asked about (its bit in the set of CLOSED,
    /// healthy endpoints first).
    Each {
        breakers: &'a WorkerBreakers,
        first: EndpointId,
        now: Instant,
    },
}

impl Admitted<'_> {
    /// Whether endpoint `i` (index in the upstream) may take an attempt.
    #[inline]
    pub fn admits(&self, i: usize) -> bool {
        match *self {
            Admitted::All => true,
            Admitted::Bits(bits) => i < 64 && bits & (1 << i) != 0,
            Admitted::Each {
                breakers,
                first,
                now,
            } => breakers.is_available(EndpointId(first.0 + i as u32), now),
        }
    }
}

/// The low `n` bits set (all 64 from `n` = 64 on).
#[inline]
fn low_bits(n: usize) -> u64 {
    1u64.checked_shl(n as u32).map_or(u64::MAX, |b| b - 1)
}

/// All endpoints of the chosen upstream are open or unhealthy (sent with `Retry-After`).
pub const UNAVAILABLE: GatewayError = GatewayError {
    status: 503,
    kind: "upstream_unavailable",
    message: "no endpoint of the upstream is available (circuit open or unhealthy)",
    fault: Fault::Upstream,
    retry: false,
    close: false,
};

/// Why no upstream connection could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// Connecting failed (the last error); answered as that error.
    Failed(UpstreamError),
    /// Every endpoint is open or unhealthy: 503 with `Retry-After` of this wait.
    Unavailable(Duration),
}

/// What an upstream error says about the endpoint.
pub fn outcome_of(e: UpstreamError) -> Outcome {
    match e {
        UpstreamError::ConnectFailed
        | UpstreamError::ConnectTimeout
        | UpstreamError::TlsHandshake => Outcome::ConnectError,
        UpstreamError::FirstByteTimeout | UpstreamError::IdleTimeout => Outcome::Timeout,
        UpstreamError::ClosedBeforeResponse
        | UpstreamError::BadResponse
        | UpstreamError::ClosedMidBody => Outcome::StreamCut,
        UpstreamError::ClientGone => Outcome::ClientCancelled,
    }
}

/// `Retry-After` value (whole seconds, at least 1) for a wait of `d`.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_millis() as u64).div_ceil(1000).max(1)
}

/// A worker's breakers and retry budgets (one per upstream). Data path: no locks.
pub struct WorkerResilience {
    breakers: WorkerBreakers,
    budgets: Vec<RetryBudget>,
    workers: u32,
    reports: Vec<BreakerReport>,
}

impl WorkerResilience {
    pub fn new(worker: u32, workers: u32, table: &Resilience, now: Instant) -> Self {
        let mut w = WorkerResilience {
            breakers: WorkerBreakers::new(worker, workers, &table.breakers),
            budgets: Vec::new(),
            workers,
            reports: Vec::with_capacity(table.breakers.len()),
        };
        w.set_budgets(table, now);
        w
    }

    fn set_budgets(&mut self, table: &Resilience, now: Instant) {
        self.budgets = table
            .upstreams
            .iter()
            .map(|u| RetryBudget::new(&u.retry, self.workers, now))
            .collect();
    }

    /// A new snapshot: breakers keep their state by id, budgets restart.
    pub fn set_policies(&mut self, table: &Resilience, now: Instant) {
        self.breakers.set_policies(&table.breakers);
        self.set_budgets(table, now);
        let n = table.breakers.len();
        self.reports.reserve(n.saturating_sub(self.reports.len()));
    }

    /// Whether any endpoint of upstream `upstream` may take traffic now (breaker not open, not
    /// failing health checks): what a split asks before choosing a deployment. Upstreams the
    /// table does not cover count as available.
    pub fn upstream_available(&self, table: &Resilience, upstream: usize, now: Instant) -> bool {
        let Some(u) = table.upstreams.get(upstream) else {
            return true;
        };
        (u.first..u.first + u.len).any(|id| self.breakers.is_available(EndpointId(id), now))
    }

    /// Whether endpoint `id` may take an attempt now (breaker and health), without taking a
    /// probe permit; endpoints no breaker covers always may.
    #[inline]
    pub fn available(&self, id: Option<EndpointId>, now: Instant) -> bool {
        id.is_none_or(|id| self.breakers.is_available(id, now))
    }

    /// Which of the `n` endpoints from id `first` on (one upstream's) may take an attempt now,
    /// breaker and health, without taking a probe permit: what endpoint choice asks once per
    /// choice. `first` `None`: no breaker covers them, all may.
    #[inline]
    pub fn admitted(&self, first: Option<EndpointId>, n: usize, now: Instant) -> Admitted<'_> {
        match first {
            None if n <= 64 => Admitted::Bits(low_bits(n)),
            None => Admitted::All,
            Some(first) if n <= 64 => Admitted::Bits(self.breakers.admitted(first, n, now)),
            Some(first) => Admitted::Each {
                breakers: &self.breakers,
                first,
                now,
            },
        }
    }

    /// How long until endpoint `id` may take an attempt, when it may not now.
    pub fn retry_after(&self, id: Option<EndpointId>, now: Instant) -> Option<Duration> {
        self.breakers.rejection(id?, now).map(|r| r.retry_after)
    }

    /// May endpoint `id` be tried? `Ok(None)`: no breaker covers it.
    #[inline]
    pub fn allow(
        &mut self,
        id: Option<EndpointId>,
        now: Instant,
    ) -> Result<Option<Permit>, Rejected> {
        match id {
            Some(id) => self.breakers.allow(id, now).map(Some),
            None => Ok(None),
        }
    }

    /// Records the outcome of the attempt under `permit`.
    #[inline]
    pub fn record(&mut self, permit: Option<Permit>, outcome: Outcome) {
        if let Some(p) = permit {
            self.breakers.record(p, outcome, Instant::now());
        }
    }

    /// The same, at `now` (a clock read the caller already made).
    #[inline]
    pub fn record_at(&mut self, permit: Option<Permit>, outcome: Outcome, now: Instant) {
        if let Some(p) = permit {
            self.breakers.record(p, outcome, now);
        }
    }

    /// Counts one original request toward upstream `upstream`'s retry budget.
    #[inline]
    pub fn record_request(&mut self, upstream: Option<usize>, now: Instant) {
        if let Some(b) = upstream.and_then(|u| self.budgets.get_mut(u)) {
            b.record_request(now);
        }
    }

    /// Takes one retry from upstream `upstream`'s budget (always granted when uncovered).
    #[inline]
    pub fn try_retry(&mut self, upstream: Option<usize>, now: Instant) -> bool {
        match upstream.and_then(|u| self.budgets.get_mut(u)) {
            Some(b) => b.try_retry(now),
            None => true,
        }
    }

    pub fn apply(&mut self, update: &BreakerUpdate) {
        self.breakers.apply(update);
    }

    pub fn apply_health(&mut self, update: &HealthUpdate) {
        self.breakers.apply_health(update);
    }

    /// See [`WorkerBreakers::has_urgent_reports`].
    pub fn has_urgent_reports(&self) -> bool {
        self.breakers.has_urgent_reports()
    }

    /// Hands every pending report to `send` (for the coordination thread).
    pub fn drain_reports(&mut self, mut send: impl FnMut(BreakerReport)) {
        let mut reports = std::mem::take(&mut self.reports);
        self.breakers.drain_reports(&mut reports);
        for r in reports.drain(..) {
            send(r);
        }
        self.reports = reports;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::decider::PROBE_REGRANT_AFTER;
    use crate::breaker::BreakerDecider;

    const EP: EndpointId = EndpointId(0);

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            open_jitter: 0.0,
            ..BreakerPolicy::default()
        }
    }

    /// Drains every worker into the decider and broadcasts what it decides.
    fn round(
        workers: &mut [WorkerBreakers],
        decider: &mut BreakerDecider,
        now: Instant,
    ) -> Vec<BreakerUpdate> {
        let mut reports = Vec::new();
        for w in workers.iter_mut() {
            w.drain_reports(&mut reports);
        }
        let mut updates = Vec::new();
        for r in &reports {
            decider.ingest(r, now, &mut updates);
        }
        decider.tick(now, &mut updates);
        for w in workers.iter_mut() {
            for u in &updates {
                w.apply(u);
            }
        }
        updates
    }

    fn fail(w: &mut WorkerBreakers, outcome: Outcome, n: usize, now: Instant) {
        for _ in 0..n {
            let p = w.allow(EP, now).unwrap();
            w.record(p, outcome, now);
        }
    }

    #[test]
    fn trips_on_all_cores_then_fails_fast() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy()], 1, t0);
        let mut ws = [
            WorkerBreakers::new(0, 2, &[policy()]),
            WorkerBreakers::new(1, 2, &[policy()]),
        ];
        // 3 + 2 timeouts on two cores: 5 in a row for the decider, neither core opens alone.
        fail(&mut ws[0], Outcome::Timeout, 3, t0);
        fail(&mut ws[1], Outcome::Status(503), 2, t0);
        assert!(ws.iter().all(|w| w.state(EP) == Some(StateKind::Closed)));
        round(&mut ws, &mut d, t0);
        for w in &mut ws {
            let err = w.allow(EP, t0 + Duration::from_millis(400)).unwrap_err();
            assert_eq!(
                err,
                Rejected {
                    reason: RejectReason::Open,
                    retry_after: Duration::from_millis(600)
                }
            );
            assert!(!w.is_available(EP, t0));
        }
    }

    /// `rejection` (what endpoint choice asks, consuming nothing) says what `allow` would,
    /// in every state: closed, open (decided and local), half-open with and without a
    /// permit, unhealthy, unknown.
    #[test]
    fn rejection_agrees_with_allow_in_every_state() {
        let t0 = Instant::now();
        let p = BreakerPolicy {
            consecutive_failures: 2,
            ..policy()
        };
        let check = |w: &WorkerBreakers, id: EndpointId, now: Instant, what: &str| {
            let said = w.rejection(id, now);
            let mut probe = w.clone();
            let got = probe.allow(id, now).err();
            assert_eq!(said, got, "{what}");
            assert_eq!(w.is_available(id, now), got.is_none(), "{what}");
        };
        let mut w = WorkerBreakers::new(0, 1, &[p]);
        check(&w, EP, t0, "closed");
        check(&w, EndpointId(7), t0, "unknown");
        fail(&mut w, Outcome::ConnectError, 2, t0);
        check(&w, EP, t0, "opened here");
        check(&w, EP, t0 + p.open_base, "opened here, past its end");
        let at = |state, epoch| BreakerUpdate {
            endpoint: EP,
            epoch,
            state,
        };
        w.apply(&at(
            BroadcastState::Open {
                until: t0 + Duration::from_secs(1),
            },
            1,
        ));
        check(&w, EP, t0, "open");
        check(&w, EP, t0 + Duration::from_secs(2), "open, past its end");
        let half = |probes| BroadcastState::HalfOpen {
            probes,
            offset: 0,
            grant: 1,
        };
        w.apply(&at(half(1), 2));
        check(&w, EP, t0, "half-open with a permit");
        let _probe = w.allow(EP, t0).unwrap();
        check(&w, EP, t0, "half-open, permit taken");
        w.apply(&at(BroadcastState::Closed, 3));
        w.apply_health(&HealthUpdate {
            endpoint: EP,
            healthy: false,
        });
        check(&w, EP, t0, "unhealthy");
    }

    #[test]
    fn four_xx_429_and_cancel_do_not_count() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy()], 1, t0);
        let mut ws = [WorkerBreakers::new(0, 1, &[policy()])];
        for outcome in [
            Outcome::Status(404),
            Outcome::Status(429),
            Outcome::ClientCancelled,
            Outcome::Status(400),
        ] {
            fail(&mut ws[0], outcome, 50, t0);
        }
        round(&mut ws, &mut d, t0);
        assert_eq!(ws[0].state(EP), Some(StateKind::Closed));
        assert_eq!(d.snapshot().endpoints[0].transitions, [0; 4]);
    }

    #[test]
    fn connect_errors_open_locally_and_the_decider_follows() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy()], 1, t0);
        let mut ws = [
            WorkerBreakers::new(0, 2, &[policy()]),
            WorkerBreakers::new(1, 2, &[policy()]),
        ];
        fail(&mut ws[0], Outcome::ConnectError, 4, t0);
        fail(&mut ws[0], Outcome::Timeout, 1, t0); // breaks the connect streak
        fail(&mut ws[0], Outcome::ConnectError, 4, t0);
        assert_eq!(ws[0].state(EP), Some(StateKind::Closed));
        fail(&mut ws[0], Outcome::ConnectError, 1, t0);
        assert_eq!(
            ws[0].state(EP),
            Some(StateKind::Open),
            "opens before any round-trip"
        );
        assert_eq!(ws[1].state(EP), Some(StateKind::Closed));
        round(&mut ws, &mut d, t0);
        assert_eq!(ws[1].state(EP), Some(StateKind::Open));
        assert_eq!(d.snapshot().endpoints[0].trips_by_cause, [0, 0, 1]);
    }

    #[test]
    fn half_open_admits_exactly_k_probes_across_workers_and_k_successes_close() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy()], 1, t0);
        let mut ws = [
            WorkerBreakers::new(0, 2, &[policy()]),
            WorkerBreakers::new(1, 2, &[policy()]),
        ];
        fail(&mut ws[0], Outcome::ConnectError, 5, t0);
        round(&mut ws, &mut d, t0);
        let t1 = t0 + Duration::from_secs(1);
        round(&mut ws, &mut d, t1);
        let mut permits = Vec::new();
        for _ in 0..10 {
            for (w, worker) in ws.iter_mut().enumerate() {
                if let Ok(p) = worker.allow(EP, t1) {
                    assert!(p.is_probe());
                    permits.push((w, p));
                }
            }
        }
        assert_eq!(permits.len(), 3, "K = 3 in total");
        assert_eq!(
            ws[1].allow(EP, t1).unwrap_err().reason,
            RejectReason::NoProbePermit
        );
        // A cancelled probe hands its permit back; a fresh probe replaces it.
        let (w, p) = permits.pop().unwrap();
        ws[w].record(p, Outcome::ClientCancelled, t1);
        let again = ws[w].allow(EP, t1).unwrap();
        permits.push((w, again));
        assert!(ws.iter_mut().all(|w| w.allow(EP, t1).is_err()));
        for (w, p) in permits.drain(..2) {
            ws[w].record(p, Outcome::Success, t1);
        }
        round(&mut ws, &mut d, t1);
        assert_eq!(
            ws[0].state(EP),
            Some(StateKind::HalfOpen),
            "2 of 3 successes"
        );
        let (w, p) = permits.pop().unwrap();
        ws[w].record(p, Outcome::Success, t1);
        round(&mut ws, &mut d, t1);
        assert!(ws.iter().all(|w| w.state(EP) == Some(StateKind::Closed)));
    }

    /// Which reports may wait: successes alone (plain, or a status that is not a failure)
    /// may; every failure kind, a local open and every probe event may not; an ignored
    /// outcome adds nothing. A drain clears the flag, and what waited goes out whole with the
    /// next urgent report, so the decider trips on the same counts either way.
    #[test]
    fn only_reports_of_successes_alone_may_wait() {
        let t0 = Instant::now();
        let p = BreakerPolicy {
            consecutive_failures: 3,
            ..policy()
        };
        let record = |w: &mut WorkerBreakers, outcome: Outcome| {
            let permit = w.allow(EP, t0).unwrap();
            w.record(permit, outcome, t0);
        };
        let mut w = WorkerBreakers::new(0, 1, &[p]);
        assert!(!w.has_urgent_reports());
        for outcome in [Outcome::Success, Outcome::Status(200), Outcome::Status(404)] {
            record(&mut w, outcome);
            assert!(!w.has_urgent_reports(), "{outcome:?}");
        }
        for outcome in [Outcome::ClientCancelled, Outcome::Status(429)] {
            record(&mut w, outcome);
            assert!(!w.has_urgent_reports(), "ignored: {outcome:?}");
        }
        let mut out = Vec::new();
        w.drain_reports(&mut out);
        assert_eq!((out.len(), out[0].successes), (1, 3), "{out:?}");
        for outcome in [
            Outcome::ConnectError,
            Outcome::Timeout,
            Outcome::StreamCut,
            Outcome::Status(503),
        ] {
            let mut w = WorkerBreakers::new(0, 1, &[p]);
            record(&mut w, Outcome::Success);
            record(&mut w, outcome);
            assert!(w.has_urgent_reports(), "{outcome:?}");
            let mut out = Vec::new();
            w.drain_reports(&mut out);
            assert!(!w.has_urgent_reports(), "a drain clears it");
            assert_eq!(
                (out[0].successes, out[0].failures, out[0].trailing_failures),
                (1, 1, 1),
                "{outcome:?}: the held success goes out with the failure"
            );
        }
        // Probes: taking a permit in HALF_OPEN is urgent (the decider counts started
        // probes), and so is every verdict on one.
        for verdict in [Outcome::Success, Outcome::Timeout, Outcome::ClientCancelled] {
            let mut ws = [WorkerBreakers::new(0, 1, &[p])];
            let mut d2 = BreakerDecider::new(&[p], 1, t0);
            fail(&mut ws[0], Outcome::ConnectError, 3, t0);
            round(&mut ws, &mut d2, t0);
            let t1 = t0 + Duration::from_secs(1);
            round(&mut ws, &mut d2, t1);
            let probe = ws[0].allow(EP, t1).unwrap();
            assert!(probe.is_probe() && ws[0].has_urgent_reports());
            round(&mut ws, &mut d2, t1);
            ws[0].record(probe, verdict, t1);
            assert!(ws[0].has_urgent_reports(), "probe {verdict:?}");
        }
        // Successes held back across many drains' worth of time, then a run of failures:
        // the decider opens exactly when it did with a drain after every outcome.
        let mut held = [WorkerBreakers::new(0, 1, &[p])];
        let mut eager = [WorkerBreakers::new(0, 1, &[p])];
        let (mut d, mut d_eager) = (
            BreakerDecider::new(&[p], 1, t0),
            BreakerDecider::new(&[p], 1, t0),
        );
        for i in 0..50 {
            let outcome = if i % 10 == 9 {
                Outcome::Timeout
            } else {
                Outcome::Success
            };
            for w in [&mut held[0], &mut eager[0]] {
                record(w, outcome);
            }
            round(&mut eager, &mut d_eager, t0);
            if held[0].has_urgent_reports() {
                round(&mut held, &mut d, t0);
            }
        }
        let mut timeouts = 0;
        while eager[0].state(EP) == Some(StateKind::Closed) {
            for w in [&mut held[0], &mut eager[0]] {
                record(w, Outcome::Timeout);
            }
            timeouts += 1;
            round(&mut eager, &mut d_eager, t0);
            round(&mut held, &mut d, t0);
            assert_eq!(held[0].state(EP), eager[0].state(EP), "after {timeouts}");
        }
        assert_eq!(
            (timeouts, held[0].state(EP)),
            (2, Some(StateKind::Open)),
            "the 50th outcome was a timeout: two more make three in a row"
        );
    }

    #[test]
    fn probe_failure_reopens_longer_and_stale_outcomes_are_dropped() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy()], 1, t0);
        let mut ws = [WorkerBreakers::new(0, 1, &[policy()])];
        let old = ws[0].allow(EP, t0).unwrap();
        fail(&mut ws[0], Outcome::ConnectError, 5, t0);
        round(&mut ws, &mut d, t0);
        let t1 = t0 + Duration::from_secs(1);
        round(&mut ws, &mut d, t1);
        let probe = ws[0].allow(EP, t1).unwrap();
        // A failure from before the trip arrives late: it must not re-open the half-open breaker.
        ws[0].record(old, Outcome::Timeout, t1);
        round(&mut ws, &mut d, t1);
        assert_eq!(ws[0].state(EP), Some(StateKind::HalfOpen));
        ws[0].record(probe, Outcome::StreamCut, t1);
        assert!(
            ws[0].allow(EP, t1).is_err(),
            "no more probes after a failed one"
        );
        let updates = round(&mut ws, &mut d, t1);
        assert_eq!(
            updates[0].state,
            BroadcastState::Open {
                until: t1 + Duration::from_secs(2)
            }
        );
        assert_eq!(
            ws[0].allow(EP, t1).unwrap_err().retry_after,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn unhealthy_endpoints_leave_rotation() {
        let t0 = Instant::now();
        let mut w = WorkerBreakers::new(0, 1, &[policy()]);
        w.apply_health(&HealthUpdate {
            endpoint: EP,
            healthy: false,
        });
        assert_eq!(w.allow(EP, t0).unwrap_err().reason, RejectReason::Unhealthy);
        assert!(!w.is_available(EP, t0));
        w.apply_health(&HealthUpdate {
            endpoint: EP,
            healthy: true,
        });
        assert!(w.allow(EP, t0).is_ok());
        assert_eq!(
            w.allow(EndpointId(9), t0).unwrap_err().reason,
            RejectReason::UnknownEndpoint
        );
    }

    #[test]
    fn drain_batches_one_report_per_endpoint() {
        let t0 = Instant::now();
        let mut w = WorkerBreakers::new(0, 1, &[policy(), policy()]);
        fail(&mut w, Outcome::Success, 3, t0);
        fail(&mut w, Outcome::Timeout, 2, t0);
        let p = w.allow(EndpointId(1), t0).unwrap();
        w.record(p, Outcome::Status(502), t0);
        let mut out = Vec::with_capacity(2);
        w.drain_reports(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[0].successes, out[0].failures, out[0].trailing_failures),
            (3, 2, 2)
        );
        assert_eq!((out[1].endpoint, out[1].failures), (EndpointId(1), 1));
        out.clear();
        w.drain_reports(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn unconfirmed_local_open_lapses_back_to_closed() {
        let t0 = Instant::now();
        let mut w = WorkerBreakers::new(0, 1, &[policy()]);
        fail(&mut w, Outcome::ConnectError, 5, t0);
        let t1 = t0 + Duration::from_millis(999);
        assert_eq!(
            w.allow(EP, t1).unwrap_err().retry_after,
            Duration::from_millis(1)
        );
        assert!(!w.is_available(EP, t1));
        // No decision arrived within the open interval (reports lost): traffic flows again.
        let t2 = t0 + Duration::from_secs(1);
        assert!(w.is_available(EP, t2));
        assert!(w.allow(EP, t2).is_ok());
        assert_eq!(w.state(EP), Some(StateKind::Closed));
    }

    #[test]
    fn reload_keeps_states_and_adds_endpoints() {
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[policy()], 1, t0);
        let mut ws = [WorkerBreakers::new(0, 1, &[policy()])];
        fail(&mut ws[0], Outcome::ConnectError, 5, t0);
        round(&mut ws, &mut d, t0);
        let longer = BreakerPolicy {
            window: Duration::from_secs(30),
            ..policy()
        };
        d.set_policies(&[policy(), longer], t0);
        ws[0].set_policies(&[policy(), longer]);
        assert_eq!(ws[0].state(EP), Some(StateKind::Open));
        assert_eq!(ws[0].state(EndpointId(1)), Some(StateKind::Closed));
        // The new endpoint is live on both sides.
        for _ in 0..5 {
            let p = ws[0].allow(EndpointId(1), t0).unwrap();
            ws[0].record(p, Outcome::Timeout, t0);
        }
        let updates = round(&mut ws, &mut d, t0);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].endpoint, EndpointId(1));
        ws[0].set_policies(&[policy()]);
        d.set_policies(&[policy()], t0);
        assert_eq!(ws[0].state(EndpointId(1)), None);
        assert_eq!(d.snapshot().endpoints.len(), 1);
    }

    #[test]
    fn idle_probe_permits_move_to_a_busy_worker() {
        let one = BreakerPolicy {
            half_open_probes: 1,
            ..policy()
        };
        let t0 = Instant::now();
        let mut d = BreakerDecider::new(&[one], 1, t0);
        let mut ws = [
            WorkerBreakers::new(0, 2, &[one]),
            WorkerBreakers::new(1, 2, &[one]),
        ];
        fail(&mut ws[1], Outcome::ConnectError, 5, t0);
        round(&mut ws, &mut d, t0);
        let t1 = t0 + Duration::from_secs(1);
        round(&mut ws, &mut d, t1);
        // The one permit sits on worker 0, which sees no traffic for this endpoint.
        assert!(ws[0].is_available(EP, t1));
        assert_eq!(
            ws[1].allow(EP, t1).unwrap_err().reason,
            RejectReason::NoProbePermit
        );
        let t2 = t1 + PROBE_REGRANT_AFTER;
        round(&mut ws, &mut d, t2);
        assert!(!ws[0].is_available(EP, t2), "old grant withdrawn");
        let probe = ws[1].allow(EP, t2).unwrap();
        ws[1].record(probe, Outcome::Success, t2);
        round(&mut ws, &mut d, t2);
        assert!(ws.iter().all(|w| w.state(EP) == Some(StateKind::Closed)));
    }

    /// Checks the bit set of CLOSED, healthy endpoints against the slots, and `admitted` (for
    /// windows at every offset, word boundaries crossed) against `rejection` and `allow`.
    fn check_closed_set(w: &WorkerBreakers, now: Instant, what: &str) {
        let n = w.slots.len();
        assert_eq!(w.closed.len(), n.div_ceil(64), "{what}");
        for (i, slot) in w.slots.iter().enumerate() {
            let id = EndpointId(i as u32);
            let plain = slot.healthy && slot.state == Local::Closed;
            assert_eq!(w.is_closed(id), plain, "{what}: bit of {i}");
            let said = w.rejection(id, now).is_none();
            assert_eq!(w.is_available(id, now), said, "{what}: {i}");
            assert_eq!(w.clone().allow(id, now).is_ok(), said, "{what}: allow {i}");
        }
        for i in n..w.closed.len() * 64 {
            assert!(
                !w.is_closed(EndpointId(i as u32)),
                "{what}: bit {i} past the end"
            );
        }
        for first in (0..n + 2).step_by(7).chain([0, 1, 63, 64, 65]) {
            for len in [0, 1, 3, 16, 63, 64] {
                let bits = w.admitted(EndpointId(first as u32), len, now);
                for i in 0..64 {
                    let want = i < len && w.is_available(EndpointId((first + i) as u32), now);
                    assert_eq!(bits & (1 << i) != 0, want, "{what}: {first}+{i} of {len}");
                }
            }
        }
    }

    #[test]
    fn the_closed_set_follows_every_state_and_health_change() {
        let t0 = Instant::now();
        let p = BreakerPolicy {
            consecutive_failures: 2,
            ..policy()
        };
        let mut w = WorkerBreakers::new(0, 1, &[p; 3]);
        check_closed_set(&w, t0, "new");
        let ep = EndpointId(1);
        // Local open on connect errors, and its lapse once past its end.
        for _ in 0..2 {
            let permit = w.allow(ep, t0).unwrap();
            w.record(permit, Outcome::ConnectError, t0);
        }
        assert!(!w.is_closed(ep));
        check_closed_set(&w, t0, "opened here");
        let later = t0 + p.open_base;
        check_closed_set(&w, later, "opened here, past its end");
        let _lapsed = w.allow(ep, later).unwrap();
        assert!(w.is_closed(ep), "the lapse back to CLOSED sets the bit");
        check_closed_set(&w, later, "lapsed");
        // The decider's states.
        let at = |state, epoch| BreakerUpdate {
            endpoint: ep,
            epoch,
            state,
        };
        let until = t0 + Duration::from_secs(1);
        w.apply(&at(BroadcastState::Open { until }, 1));
        check_closed_set(&w, t0, "open");
        check_closed_set(&w, until, "open, past its end");
        let half = |probes, grant| BroadcastState::HalfOpen {
            probes,
            offset: 0,
            grant,
        };
        w.apply(&at(half(2, 1), 2));
        assert!(
            !w.is_closed(ep),
            "half-open is asked about, not admitted by its bit"
        );
        check_closed_set(&w, t0, "half-open, 2 permits");
        // Asking never takes a permit: still two probes after many choices.
        for _ in 0..10 {
            assert_eq!(w.admitted(EndpointId(0), 3, t0), 0b111);
        }
        let a = w.allow(ep, t0).unwrap();
        check_closed_set(&w, t0, "half-open, 1 permit");
        let b = w.allow(ep, t0).unwrap();
        assert!(a.is_probe() && b.is_probe());
        assert_eq!(w.admitted(EndpointId(0), 3, t0), 0b101, "no permit left");
        check_closed_set(&w, t0, "half-open, none left");
        // A probe without a verdict hands its permit back: admitted again.
        w.record(a, Outcome::ClientCancelled, t0);
        assert_eq!(w.admitted(EndpointId(0), 3, t0), 0b111);
        check_closed_set(&w, t0, "half-open, a permit back");
        // A failed probe stops probing here.
        w.record(b, Outcome::Timeout, t0);
        assert_eq!(w.admitted(EndpointId(0), 3, t0), 0b101);
        check_closed_set(&w, t0, "half-open, a probe failed");
        // A re-split of the same episode brings permits.
        w.apply(&at(half(1, 2), 2));
        check_closed_set(&w, t0, "half-open, re-granted");
        w.apply(&at(BroadcastState::Closed, 3));
        assert!(w.is_closed(ep));
        check_closed_set(&w, t0, "closed");
        // Health down and up, whatever the breaker says.
        let health = |endpoint, healthy| HealthUpdate { endpoint, healthy };
        w.apply_health(&health(EndpointId(2), false));
        assert_eq!(w.admitted(EndpointId(0), 3, t0), 0b011);
        check_closed_set(&w, t0, "unhealthy");
        w.apply(&at(BroadcastState::Open { until }, 4));
        w.apply_health(&health(ep, false));
        w.apply_health(&health(ep, true));
        assert!(!w.is_closed(ep), "healthy again but still open");
        w.apply_health(&health(EndpointId(2), true));
        assert_eq!(w.admitted(EndpointId(0), 3, t0), 0b101);
        check_closed_set(&w, t0, "healthy again");
        w.apply_health(&health(EndpointId(9), false));
        check_closed_set(&w, t0, "health of an unknown endpoint");
    }

    /// Random state changes, health changes, probes, outcomes and reloads (the endpoint
    /// count moving across several 64-bit words): the bit set and `admitted` agree with the
    /// slots after every step.
    #[test]
    fn the_closed_set_agrees_with_the_slots_under_random_changes() {
        let mut rng = crate::route::WorkerRng::new(11);
        let t0 = Instant::now();
        let p = BreakerPolicy {
            consecutive_failures: 2,
            half_open_probes: 2,
            ..policy()
        };
        let mut w = WorkerBreakers::new(1, 2, &vec![p; 70]);
        let mut now = t0;
        let mut epochs = vec![0u32; 200];
        let mut permits = Vec::new();
        for step in 0..3_000 {
            let n = w.slots.len() as u64;
            let id = EndpointId(rng.below(n + 2) as u32);
            match rng.below(8) {
                0 | 1 => {
                    if let Ok(permit) = w.allow(id, now) {
                        permits.push(permit);
                    }
                }
                2 if !permits.is_empty() => {
                    let permit = permits.swap_remove(rng.below(permits.len() as u64) as usize);
                    let outcome = [
                        Outcome::Success,
                        Outcome::ConnectError,
                        Outcome::Timeout,
                        Outcome::ClientCancelled,
                    ][rng.below(4) as usize];
                    w.record(permit, outcome, now);
                }
                3 => {
                    let e = &mut epochs[id.index()];
                    // Mostly a new epoch; sometimes the same one again (a re-split).
                    *e += u32::from(rng.below(4) != 0);
                    let state = match rng.below(3) {
                        0 => BroadcastState::Closed,
                        1 => BroadcastState::Open {
                            until: now + Duration::from_millis(rng.below(50)),
                        },
                        _ => BroadcastState::HalfOpen {
                            probes: rng.below(4) as u32,
                            offset: rng.below(2) as u32,
                            grant: rng.below(3) as u32,
                        },
                    };
                    w.apply(&BreakerUpdate {
                        endpoint: id,
                        epoch: *e,
                        state,
                    });
                }
                4 => w.apply_health(&HealthUpdate {
                    endpoint: id,
                    healthy: rng.below(3) != 0,
                }),
                5 => now += Duration::from_millis(rng.below(20)),
                6 if rng.below(20) == 0 => {
                    let len = 1 + rng.below(140) as usize;
                    w.set_policies(&vec![p; len]);
                    epochs[len..].fill(0);
                    permits.retain(|q: &Permit| q.endpoint().index() < len);
                }
                _ => {}
            }
            if step % 10 == 0 {
                check_closed_set(&w, now, &format!("step {step}"));
            }
        }
    }

    #[test]
    fn a_reload_keeps_bits_by_id_and_clears_those_past_the_end() {
        let t0 = Instant::now();
        let mut w = WorkerBreakers::new(0, 1, &[policy(); 66]);
        assert_eq!(w.closed, [u64::MAX, 0b11]);
        let open = |endpoint| BreakerUpdate {
            endpoint,
            epoch: 1,
            state: BroadcastState::Open {
                until: t0 + Duration::from_secs(1),
            },
        };
        w.apply(&open(EndpointId(3)));
        w.apply(&open(EndpointId(65)));
        w.set_policies(&[policy(); 130]);
        assert_eq!(w.closed, [!(1 << 3), !0b10, 0b11]);
        check_closed_set(&w, t0, "grown");
        w.set_policies(&[policy(); 10]);
        assert_eq!(w.closed, [0b11_1111_0111]);
        assert_eq!(
            w.admitted(EndpointId(8), 4, t0),
            0b11,
            "ids past the table: none"
        );
        check_closed_set(&w, t0, "shrunk");
        w.set_policies(&[policy(); 66]);
        assert_eq!(w.closed, [!(1 << 3), 0b11], "endpoint 65 is new again");
    }

    /// Upstreams of more than 64 endpoints are asked endpoint by endpoint; upstreams outside
    /// the endpoint table admit everything.
    #[test]
    fn worker_resilience_admits_what_the_breakers_admit_at_any_size() {
        let t0 = Instant::now();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[[upstreams]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n[[upstreams]]\nname = \"b\"\nendpoints = [{}]\n",
            (0..100)
                .map(|i| format!("\"127.0.0.1:{}\"", 1000 + i))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let snap = crate::config::from_str(&text, std::path::Path::new("."), 1).unwrap();
        let mut res = WorkerResilience::new(0, 1, &snap.resilience, t0);
        for id in [1, 3, 50, 67, 70, 102] {
            res.apply(&BreakerUpdate {
                endpoint: EndpointId(id),
                epoch: 1,
                state: BroadcastState::Open {
                    until: t0 + Duration::from_secs(1),
                },
            });
        }
        for (u, n) in [(0, 3), (1, 100)] {
            let first = snap.resilience.endpoint(u, 0);
            let admitted = res.admitted(first, n, t0);
            assert_eq!(matches!(admitted, Admitted::Bits(_)), n <= 64);
            for i in 0..n {
                let id = snap.resilience.endpoint(u, i);
                assert_eq!(admitted.admits(i), res.available(id, t0), "{u} {i}");
            }
        }
        assert!(!res.admitted(Some(EndpointId(0)), 3, t0).admits(1));
        for n in [3, 64, 65, 200] {
            let all = res.admitted(None, n, t0);
            assert!((0..n).all(|i| all.admits(i)), "{n}");
        }
        assert!(
            !res.admitted(None, 3, t0).admits(3),
            "none past the upstream"
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
