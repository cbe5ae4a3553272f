//! Glue between the resilience stage and the engine: endpoint ids and policies per snapshot
//! ([`Resilience`]), the worker's side ([`WorkerResilience`]: breakers and retry budgets) and
//! the coordination thread's side ([`CoordResilience`]: the decider and the health thread).
//!
//! # Endpoint ids
//!
//! Endpoints are numbered densely in snapshot order: upstream 0's endpoints first, then
//! upstream 1's, and so on. A reload keeps an endpoint's breaker state only if its id still
//! names the same endpoint; adding, removing or reordering upstreams or endpoints shifts the
//! ids after the change, and the state that moves with them is not meaningful (it settles
//! within one window). Retry budgets restart on every reload. Upstreams added to the snapshot
//! after validation (e.g. from deployments) must be followed by [`Resilience::build`] again;
//! an upstream the table does not cover runs without breakers or budget.
//!
//! # Health checks
//!
//! The health thread is started by the coordination thread for every endpoint whose upstream
//! (or `[defaults]`) configures `health_check`. On reload it is restarted when the targets
//! change, and every endpoint is first announced healthy again: a restarted checker knows
//! nothing, and an endpoint that is still down is taken out after `unhealthy_threshold` probes.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;

use super::config::{RawBreaker, RawHealthCheck, RawRetry};
use super::{
    BreakerDecider, BreakerPolicy, BreakerReport, BreakerSnapshot, BreakerUpdate, EndpointId,
    HealthChecker, HealthTarget, HealthUpdate, HttpProber, Outcome, Permit, RetryBudget,
    RetryPolicy, WorkerBreakers,
};
use crate::config::RawUpstream;
use crate::config_types::{ConfigProblem, Upstream};
use crate::error::{Fault, GatewayError, UpstreamError};
use crate::inbox::ToWorker;

/// All endpoints of the chosen upstream are open or unhealthy (sent with `Retry-After`).
pub const UNAVAILABLE: GatewayError = GatewayError {
    status: 503,
    kind: "upstream_unavailable",
    message: "no endpoint of the upstream is available (circuit open or unhealthy)",
    fault: Fault::Upstream,
    retry: false,
    close: false,
};

/// `[defaults]`: policies every upstream starts from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub breaker: Option<RawBreaker>,
    pub health_check: Option<RawHealthCheck>,
    pub retry: Option<RawRetry>,
}

/// One upstream's slice of the endpoint table.
#[derive(Debug, Clone)]
struct UpstreamEntry {
    first: u32,
    len: u32,
    retry: RetryPolicy,
}

/// Endpoint ids and resilience policies of one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Resilience {
    upstreams: Vec<UpstreamEntry>,
    /// Indexed by [`EndpointId`].
    pub breakers: Vec<BreakerPolicy>,
    /// Endpoints with active health checks.
    pub health: Vec<HealthTarget>,
}

impl Resilience {
    /// Numbers the endpoints of `upstreams` and validates their policies: `raw[i]`'s
    /// `breaker`/`health_check`/`retry` over `defaults`' (upstreams past `raw` take the
    /// defaults). Problems name their key path.
    pub fn build(
        defaults: Option<&RawDefaults>,
        raw: &[RawUpstream],
        upstreams: &[Upstream],
        problems: &mut Vec<ConfigProblem>,
    ) -> Resilience {
        let none = RawDefaults::default();
        let d = defaults.unwrap_or(&none);
        let (db, dh, dr) = (
            d.breaker.clone().unwrap_or_default(),
            d.health_check.clone(),
            d.retry.clone().unwrap_or_default(),
        );
        let mut out = Resilience::default();
        for (i, up) in upstreams.iter().enumerate() {
            let r = raw.get(i);
            let key = |what: &str| match r {
                Some(_) => format!("upstreams[{i}].{what}"),
                None => format!("defaults.{what}"),
            };
            let breaker = r
                .and_then(|r| r.breaker.as_ref())
                .map_or_else(|| db.clone(), |b| b.overlay(&db))
                .validate(&key("breaker"))
                .map_err(|p| problems.extend(p))
                .unwrap_or_default();
            let retry = r
                .and_then(|r| r.retry.as_ref())
                .map_or_else(|| dr.clone(), |b| b.overlay(&dr))
                .validate(&key("retry"))
                .map_err(|p| problems.extend(p))
                .unwrap_or_default();
            let health = match (r.and_then(|r| r.health_check.as_ref()), &dh) {
                (Some(h), Some(d)) => Some(h.overlay(d)),
                (Some(h), None) => Some(h.clone()),
                (None, d) => d.clone(),
            }
            .and_then(|h| {
                h.validate(&key("health_check"))
                    .map_err(|p| problems.extend(p))
                    .ok()
            });
            let first = out.breakers.len() as u32;
            for ep in &up.endpoints {
                let endpoint = EndpointId(out.breakers.len() as u32);
                out.breakers.push(breaker);
                if let Some(policy) = &health {
                    out.health.push(HealthTarget {
                        endpoint,
                        addr: ep.addr,
                        host: ep.host.clone(),
                        policy: policy.clone(),
                    });
                }
            }
            out.upstreams.push(UpstreamEntry {
                first,
                len: up.endpoints.len() as u32,
                retry,
            });
        }
        out
    }

    /// The id of endpoint `i` of upstream `upstream`, if the table covers it.
    #[inline]
    pub fn endpoint(&self, upstream: usize, i: usize) -> Option<EndpointId> {
        let u = self.upstreams.get(upstream)?;
        (i < u.len as usize).then(|| EndpointId(u.first + i as u32))
    }

    /// The `(upstream index, endpoint index)` an id names, for metrics and the admin API.
    pub fn locate(&self, id: EndpointId) -> Option<(usize, usize)> {
        self.upstreams.iter().enumerate().find_map(|(u, e)| {
            (id.0 >= e.first && id.0 < e.first + e.len).then(|| (u, (id.0 - e.first) as usize))
        })
    }
}

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
        UpstreamError::ConnectFailed | UpstreamError::ConnectTimeout => Outcome::ConnectError,
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

    /// May endpoint `id` be tried? `Ok(None)`: no breaker covers it.
    #[inline]
    pub fn allow(
        &mut self,
        id: Option<EndpointId>,
        now: Instant,
    ) -> Result<Option<Permit>, super::Rejected> {
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

/// The index of `upstream` in `snap.upstreams` (the forward path holds a reference).
#[inline]
pub fn upstream_index(snap: &crate::config::Snapshot, upstream: &Upstream) -> Option<usize> {
    snap.upstreams
        .iter()
        .position(|u| std::ptr::eq(u, upstream))
}

/// The coordination thread's side: the decider, the health thread and the broadcast.
pub struct CoordResilience {
    decider: BreakerDecider,
    updates: Vec<BreakerUpdate>,
    health: Option<HealthThread>,
    targets: Vec<HealthTarget>,
    endpoints: usize,
}

struct HealthThread {
    stop: Sender<()>,
    updates: Receiver<HealthUpdate>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_health(targets: &[HealthTarget]) -> Option<HealthThread> {
    if targets.is_empty() {
        return None;
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let checker = HealthChecker::new(targets.to_vec(), HttpProber, Instant::now());
    match checker.spawn(tx, stop_rx) {
        Ok(thread) => Some(HealthThread {
            stop: stop_tx,
            updates: rx,
            thread: Some(thread),
        }),
        Err(e) => {
            eprintln!("shardgate: cannot start the health-check thread ({e}); no active checks");
            None
        }
    }
}

impl CoordResilience {
    pub fn new(table: &Resilience, now: Instant) -> Self {
        // The seed only decorrelates jitter between processes.
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = clock.as_nanos() as u64 ^ u64::from(std::process::id());
        CoordResilience {
            decider: BreakerDecider::new(&table.breakers, seed, now),
            updates: Vec::new(),
            health: start_health(&table.health),
            targets: table.health.clone(),
            endpoints: table.breakers.len(),
        }
    }

    /// Folds in one worker's report (its updates go out on the next [`Self::tick`]).
    pub fn ingest(&mut self, report: &BreakerReport, now: Instant) {
        self.decider.ingest(report, now, &mut self.updates);
    }

    /// A reloaded snapshot's table (see the module docs for what carries over).
    pub fn reload(&mut self, table: &Resilience, now: Instant, workers: &[Sender<ToWorker>]) {
        self.decider.set_policies(&table.breakers, now);
        self.endpoints = table.breakers.len();
        if table.health != self.targets {
            self.health = None;
            for i in 0..self.endpoints {
                let up = HealthUpdate {
                    endpoint: EndpointId(i as u32),
                    healthy: true,
                };
                broadcast(workers, || ToWorker::Health(up));
            }
            self.targets = table.health.clone();
            self.health = start_health(&self.targets);
        }
    }

    /// Health changes, the decider's timers, and the broadcast of every pending update.
    pub fn tick(&mut self, now: Instant, workers: &[Sender<ToWorker>]) {
        if let Some(h) = &self.health {
            while let Ok(up) = h.updates.try_recv() {
                broadcast(workers, || ToWorker::Health(up));
            }
        }
        self.decider.tick(now, &mut self.updates);
        for up in self.updates.drain(..) {
            broadcast(workers, || ToWorker::Breaker(up));
        }
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        self.decider.snapshot()
    }
}

fn broadcast(workers: &[Sender<ToWorker>], msg: impl Fn() -> ToWorker) {
    for w in workers {
        let _ = w.send(msg());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ids_are_dense_in_snapshot_order_and_policies_overlay() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[defaults.breaker]
consecutive_failures = 7
[defaults.retry]
budget_ratio = 0.5
[[upstreams]]
name = "a"
endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
[[upstreams]]
name = "b"
endpoints = ["127.0.0.1:3"]
breaker = { consecutive_failures = 2 }
health_check = { path = "/ready" }
"#;
        let s = crate::config::from_str(text, Path::new("."), 1).unwrap();
        let r = &s.resilience;
        assert_eq!(r.endpoint(0, 1), Some(EndpointId(1)));
        assert_eq!(r.endpoint(1, 0), Some(EndpointId(2)));
        assert_eq!(r.endpoint(1, 1), None);
        assert_eq!(r.endpoint(2, 0), None);
        assert_eq!(r.locate(EndpointId(2)), Some((1, 0)));
        assert_eq!(r.breakers[0].consecutive_failures, 7);
        assert_eq!(r.breakers[2].consecutive_failures, 2);
        assert_eq!(r.upstreams[1].retry.budget_ratio, 0.5);
        assert_eq!(r.health.len(), 1);
        assert_eq!(r.health[0].endpoint, EndpointId(2));
        assert_eq!(r.health[0].policy.path, "/ready");
    }

    #[test]
    fn bad_policies_name_their_key() {
        let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[defaults.retry]
budget_ratio = 3.0
[[upstreams]]
name = "a"
endpoints = ["127.0.0.1:1"]
breaker = { failure_rate = 2.0 }
health_check = { interval_ms = 0 }
"#;
        let p = crate::config::from_str(text, Path::new("."), 1).unwrap_err();
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "upstreams[0].breaker.failure_rate",
            "upstreams[0].health_check.interval_ms",
            "upstreams[0].retry.budget_ratio",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
