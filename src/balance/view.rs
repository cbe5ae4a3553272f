//! One worker's load view (data path): per endpoint, the attempts in flight from this core,
//! the TTFB and latency samples not yet reported, and the fleet's view as the coordination
//! thread last merged it. Every array is indexed by endpoint id and sized when a snapshot
//! arrives; a request reads and bumps a few of its cells and allocates nothing.
//!
//! An endpoint's load as a policy sees it is this core's in flight now, plus the other cores'
//! in flight as last merged (the fleet total less what this core had reported), plus its
//! load-metric gauge.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use super::config::{Policy, Table, UpstreamBalance};
use super::{affinity, least_requests, p2c, round_robin, Eligible, Loads};
use crate::breaker::EndpointId;
use crate::route::WorkerRng;

/// One endpoint's changes on one worker since its last report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EndpointLoad {
    pub endpoint: EndpointId,
    /// Attempts in flight from this worker now.
    pub in_flight: u32,
    /// Time to the response head of the attempts answered since the last report, summed.
    pub ttfb_us: u64,
    pub ttfb_n: u32,
    /// Time to the end of the response of the attempts completed since, summed.
    pub latency_us: u64,
    pub latency_n: u32,
}

/// One worker's changes, sent on its inbox tick.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub worker: usize,
    pub endpoints: Vec<EndpointLoad>,
}

/// One endpoint in the merged view.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FleetEndpoint {
    /// Attempts in flight on every worker, as last reported.
    pub in_flight: u32,
    /// The load-metric gauge (0 without one).
    pub gauge: u32,
    /// EWMA of the time to the response head, µs (0: no sample yet).
    pub ttfb_us: f32,
    /// EWMA of the time to the end of the response, µs (0: no sample yet).
    pub latency_us: f32,
}

/// The coordination thread's merge of every worker's reports, shared by every worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    pub endpoints: Box<[FleetEndpoint]>,
    /// What each worker reported in flight: `[worker * endpoints + endpoint]`.
    pub by_worker: Box<[u32]>,
}

impl FleetView {
    /// Worker `w`'s row of `by_worker`.
    fn row(&self, w: usize) -> Option<&[u32]> {
        let n = self.endpoints.len();
        self.by_worker.get(w * n..(w + 1) * n)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The endpoint's upstream reads load: count and report it.
    tracked: bool,
    pending: EndpointLoad,
    dirty: bool,
}

/// This worker's load view (see the module docs).
///
/// What a choice reads is kept in contiguous arrays by endpoint id (`in_flight`, `elsewhere`,
/// `ttfb`), so a scan of an upstream's endpoints reads a few cache lines and no pointer: the
/// fleet view's part (`elsewhere`, `ttfb`) is worked out once when the view arrives, not on
/// every choice.
#[derive(Debug)]
pub struct WorkerBalance {
    worker: usize,
    slots: Vec<Slot>,
    /// Attempts in flight from this worker, by endpoint id.
    in_flight: Vec<u32>,
    /// The other workers' in flight as last merged plus the load-metric gauge, by endpoint id
    /// (0 without a usable fleet view).
    elsewhere: Vec<u32>,
    /// The fleet's EWMA of the time to the response head, µs, by endpoint id (0: no sample).
    ttfb: Vec<f32>,
    /// Round-robin position per upstream.
    rr: Vec<u32>,
    fleet: Option<Arc<FleetView>>,
    /// Endpoints with changes to report; room for every endpoint, so pushing never allocates.
    dirty: Vec<EndpointId>,
}

/// The loads of one upstream's endpoints, as a policy reads them (three slices of equal
/// length).
pub struct UpstreamLoads<'a> {
    in_flight: &'a [u32],
    elsewhere: &'a [u32],
    ttfb: &'a [f32],
}

impl Loads for UpstreamLoads<'_> {
    #[inline]
    fn count(&self) -> usize {
        self.in_flight.len()
    }

    #[inline]
    fn load(&self, i: usize) -> u64 {
        u64::from(self.in_flight[i]) + u64::from(self.elsewhere[i])
    }

    #[inline]
    fn ttfb_us(&self, i: usize) -> f64 {
        f64::from(self.ttfb[i])
    }
}

impl WorkerBalance {
    /// Worker `worker`'s view for `table`; round-robin starts at the worker's number so that
    /// workers do not march in step.
    pub fn new(worker: usize, table: &Table) -> Self {
        let mut w = WorkerBalance {
            worker,
            slots: Vec::new(),
            in_flight: Vec::new(),
            elsewhere: Vec::new(),
            ttfb: Vec::new(),
            rr: Vec::new(),
            fleet: None,
            dirty: Vec::new(),
        };
        w.set_table(table);
        w
    }

    /// A new snapshot: endpoints keep their counts by id (ids are stable while the upstreams
    /// keep their order; see `breaker::table`), new ones start at zero.
    pub fn set_table(&mut self, table: &Table) {
        let n = table.endpoints();
        self.slots.resize(n, Slot::default());
        self.in_flight.resize(n, 0);
        self.elsewhere.resize(n, 0);
        self.ttfb.resize(n, 0.0);
        for (i, s) in self.slots.iter_mut().enumerate() {
            s.tracked = false;
            s.pending.endpoint = EndpointId(i as u32);
        }
        for up in table.upstreams() {
            let tracked = up.policy.reads_load();
            for i in 0..up.len() {
                if let Some(s) = up.endpoint(i).and_then(|id| self.slots.get_mut(id.index())) {
                    s.tracked = tracked;
                }
            }
        }
        self.rr.resize(table.upstreams().len(), self.worker as u32);
        self.dirty.retain(|e| e.index() < n);
        for s in &mut self.slots {
            s.dirty = false;
        }
        for e in &self.dirty {
            self.slots[e.index()].dirty = true;
        }
        self.dirty.reserve(n.saturating_sub(self.dirty.len()));
        self.merge_fleet();
    }

    /// The fleet's merged view, from the coordination thread.
    pub fn set_fleet(&mut self, view: Arc<FleetView>) {
        self.fleet = Some(view);
        self.merge_fleet();
    }

    /// Works the fleet view into `elsewhere` and `ttfb`: per endpoint, the fleet's in flight
    /// less what this worker reported, plus the gauge. A view merged for another endpoint
    /// table (a reload in between) is not used until the next one comes.
    fn merge_fleet(&mut self) {
        self.elsewhere.fill(0);
        self.ttfb.fill(0.0);
        let Some(f) = self.fleet.as_deref() else {
            return;
        };
        let Some(mine) = f
            .row(self.worker)
            .filter(|_| f.endpoints.len() == self.slots.len())
        else {
            return;
        };
        for (i, (e, mine)) in f.endpoints.iter().zip(mine).enumerate() {
            self.elsewhere[i] = e.in_flight.saturating_sub(*mine).saturating_add(e.gauge);
            self.ttfb[i] = e.ttfb_us;
        }
    }

    /// The loads of `plan`'s endpoints.
    #[inline]
    fn loads(&self, plan: &UpstreamBalance) -> UpstreamLoads<'_> {
        let n = plan.len();
        let (Some(first), true) = (plan.endpoint(0), n > 0) else {
            return self.range(0..0);
        };
        self.range(first.index()..first.index() + n)
    }

    /// The loads of the endpoints with ids in `range` (none when the table has not them).
    #[inline]
    fn range(&self, range: std::ops::Range<usize>) -> UpstreamLoads<'_> {
        match (
            self.in_flight.get(range.clone()),
            self.elsewhere.get(range.clone()),
            self.ttfb.get(range),
        ) {
            (Some(in_flight), Some(elsewhere), Some(ttfb)) => UpstreamLoads {
                in_flight,
                elsewhere,
                ttfb,
            },
            _ => UpstreamLoads {
                in_flight: &[],
                elsewhere: &[],
                ttfb: &[],
            },
        }
    }

    /// The endpoint (index into the upstream's endpoints) `plan`'s policy chooses among those
    /// `eligible` admits; `None` when it admits none. `up` is the upstream's index (its
    /// round-robin position), `key` the request's affinity key (without one, affinity takes
    /// the least loaded endpoint).
    #[inline]
    pub fn pick(
        &mut self,
        plan: &UpstreamBalance,
        up: usize,
        key: Option<u64>,
        rng: &mut WorkerRng,
        eligible: impl Eligible,
    ) -> Option<usize> {
        if let Policy::RoundRobin = plan.policy {
            let mut spare = self.worker as u32;
            let next = self.rr.get_mut(up).unwrap_or(&mut spare);
            return round_robin::pick(next, plan.len(), eligible);
        }
        let loads = self.loads(plan);
        if loads.count() != plan.len() {
            // Not in this view's table (cannot happen for a snapshot's upstream).
            return round_robin::pick(&mut 0, plan.len(), eligible);
        }
        match (&plan.policy, key) {
            (Policy::P2cEwma, _) => p2c::pick(&loads, rng, eligible),
            (Policy::Affinity(a), Some(k)) => {
                affinity::pick(&a.ring, a.load_factor, &loads, k, eligible)
            }
            _ => least_requests::pick(&loads, rng, eligible),
        }
    }

    /// Endpoint `id`'s load as this worker sees it (for tests and the admin API).
    pub fn load(&self, id: EndpointId) -> u64 {
        let loads = self.range(id.index()..id.index() + 1);
        match loads.count() {
            0 => 0,
            _ => loads.load(0),
        }
    }

    /// Moves the changes since the last call into a report for the coordination thread;
    /// `None` when nothing changed (a gateway on round-robin never reports).
    pub fn drain(&mut self) -> Option<LoadReport> {
        if self.dirty.is_empty() {
            return None;
        }
        let mut endpoints = Vec::with_capacity(self.dirty.len());
        for e in self.dirty.drain(..) {
            let s = &mut self.slots[e.index()];
            s.dirty = false;
            s.pending.in_flight = self.in_flight[e.index()];
            endpoints.push(s.pending);
            s.pending = EndpointLoad {
                endpoint: e,
                ..EndpointLoad::default()
            };
        }
        Some(LoadReport {
            worker: self.worker,
            endpoints,
        })
    }

    /// The slot of a tracked endpoint, marked dirty.
    #[inline]
    fn touch(&mut self, id: EndpointId) -> Option<&mut Slot> {
        let s = self.slots.get_mut(id.index()).filter(|s| s.tracked)?;
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(id);
        }
        Some(s)
    }
}

/// One attempt counted in flight on its endpoint from [`Attempt::begin`] until it is dropped,
/// however the attempt ends (a connect error, a cut stream, a cancelled request).
#[must_use = "the attempt counts as in flight until dropped"]
pub struct Attempt<'w> {
    view: &'w RefCell<WorkerBalance>,
    /// `None`: the endpoint is not tracked (round-robin); every call is a no-op.
    counted: Option<(EndpointId, Instant)>,
}

impl<'w> Attempt<'w> {
    /// Counts an attempt on endpoint `id` starting at `now` (the caller's clock read: the
    /// proxy has just read it to choose); nothing when its upstream does not read load.
    #[inline]
    pub fn begin(view: &'w RefCell<WorkerBalance>, id: Option<EndpointId>, now: Instant) -> Self {
        let counted = id.and_then(|id| {
            let mut v = view.borrow_mut();
            v.touch(id)?;
            v.in_flight[id.index()] += 1;
            Some((id, now))
        });
        Attempt { view, counted }
    }

    /// The response head arrived at `at` with `status`: a time-to-first-byte sample, unless
    /// the endpoint answered with a server error (a fast error must not look like a fast
    /// endpoint). `at` is the caller's clock read (the proxy reads it for its own TTFB
    /// histogram), so the sample costs no clock read of its own.
    #[inline]
    pub fn head(&self, status: u16, at: Instant) {
        if let Some((id, start)) = self.counted.filter(|_| status < 500) {
            let us = crate::time::micros_between(start, at);
            if let Some(s) = self.view.borrow_mut().touch(id) {
                s.pending.ttfb_us += us;
                s.pending.ttfb_n += 1;
            }
        }
    }

    /// The response was relayed whole at `at` (the caller's clock read, as for
    /// [`Attempt::head`]): a latency sample, and the attempt counted out, in one borrow of
    /// the view and one touch of the endpoint's slot.
    #[inline]
    pub fn done(mut self, at: Instant) {
        if let Some((id, start)) = self.counted.take() {
            let us = crate::time::micros_between(start, at);
            let mut v = self.view.borrow_mut();
            if let Some(n) = v.in_flight.get_mut(id.index()) {
                *n = n.saturating_sub(1);
            }
            if let Some(s) = v.touch(id) {
                s.pending.latency_us += us;
                s.pending.latency_n += 1;
            }
        }
    }
}

impl WorkerBalance {
    /// One attempt on `id` ended. Counted out even if a reload stopped tracking the endpoint
    /// meanwhile, so its count is right should it be tracked again.
    #[inline]
    fn count_out(&mut self, id: EndpointId) {
        if let Some(n) = self.in_flight.get_mut(id.index()) {
            *n = n.saturating_sub(1);
        }
        self.touch(id);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some((id, _)) = self.counted {
            self.view.borrow_mut().count_out(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(balance: &str) -> Table {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[[upstreams]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nbalance = \"{balance}\"\n[[upstreams]]\nname = \"b\"\nendpoints = [\"127.0.0.1:3\"]\n"
        );
        crate::config::from_str(&text, Path::new("."), 1)
            .unwrap()
            .balance
    }

    #[test]
    fn attempts_count_in_flight_and_report_their_samples() {
        let view = RefCell::new(WorkerBalance::new(0, &table("least_requests")));
        let a = Attempt::begin(&view, Some(EndpointId(1)), Instant::now());
        let b = Attempt::begin(&view, Some(EndpointId(1)), Instant::now());
        // Upstream `b` is on round-robin: not counted.
        let c = Attempt::begin(&view, Some(EndpointId(2)), Instant::now());
        assert_eq!(view.borrow().load(EndpointId(1)), 2);
        assert_eq!(view.borrow().load(EndpointId(2)), 0);
        a.head(200, Instant::now());
        b.head(503, Instant::now());
        a.done(Instant::now());
        drop((b, c));
        let report = view.borrow_mut().drain().unwrap();
        assert_eq!(report.endpoints.len(), 1);
        let e = report.endpoints[0];
        assert_eq!((e.endpoint, e.in_flight), (EndpointId(1), 0));
        assert_eq!((e.ttfb_n, e.latency_n), (1, 1), "no TTFB sample for a 503");
        assert!(view.borrow_mut().drain().is_none(), "nothing new");
    }

    /// Every policy, over 3, 16 and 70 endpoints (past the 64 a bit set holds), chooses only
    /// an endpoint the breaker view admits that the request has not tried, and chooses one
    /// whenever there is one; a half-open endpoint with a probe permit is among them.
    #[test]
    fn every_policy_chooses_only_what_the_breakers_admit_and_was_not_tried() {
        use crate::balance::{Open, Tried};
        use crate::breaker::local::WorkerResilience;
        use crate::breaker::{BreakerUpdate, BroadcastState, HealthUpdate};
        let t0 = Instant::now();
        let mut rng = WorkerRng::new(5);
        for n in [3usize, 16, 70] {
            for balance in ["round_robin", "least_requests", "p2c_ewma", "affinity"] {
                let endpoints: Vec<String> = (0..n)
                    .map(|i| format!("\"127.0.0.1:{}\"", 1000 + i))
                    .collect();
                let text = format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n[[upstreams]]\nname = \"a\"\nendpoints = [{}]\nbalance = \"{balance}\"\naffinity = {{ key = {{ header = \"x-session\" }} }}\n",
                    endpoints.join(", ")
                );
                let text = match balance {
                    "affinity" => text,
                    _ => text.replace("affinity = { key = { header = \"x-session\" } }\n", ""),
                };
                let snap = crate::config::from_str(&text, Path::new("."), 1).unwrap();
                let plan = &snap.balance.upstreams()[0];
                let mut view = WorkerBalance::new(0, &snap.balance);
                for _ in 0..40 {
                    let mut res = WorkerResilience::new(0, 1, &snap.resilience, t0);
                    for epoch in 1..=rng.below(n as u64 + 1) as u32 {
                        let endpoint = EndpointId(rng.below(n as u64) as u32);
                        let state = match rng.below(3) {
                            0 => BroadcastState::Open {
                                until: t0 + std::time::Duration::from_secs(1),
                            },
                            1 => BroadcastState::HalfOpen {
                                probes: rng.below(2) as u32,
                                offset: 0,
                                grant: 1,
                            },
                            _ => {
                                res.apply_health(&HealthUpdate {
                                    endpoint,
                                    healthy: false,
                                });
                                continue;
                            }
                        };
                        res.apply(&BreakerUpdate {
                            endpoint,
                            epoch,
                            state,
                        });
                    }
                    let mut tried = Tried::default();
                    for _ in 0..rng.below(3) {
                        tried.insert(rng.below(n as u64) as usize);
                    }
                    let ok = |i: usize| !tried.contains(i) && res.available(plan.endpoint(i), t0);
                    let any = (0..n).any(ok);
                    let admitted = res.admitted(plan.endpoint(0), n, t0);
                    for _ in 0..10 {
                        let open = Open {
                            admitted,
                            tried: &tried,
                        };
                        let got = view.pick(plan, 0, Some(rng.next_u64()), &mut rng, open);
                        assert_eq!(got.is_some(), any, "{balance} {n}");
                        assert!(got.is_none_or(ok), "{balance} {n}: {got:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn round_robin_tracks_nothing() {
        let view = RefCell::new(WorkerBalance::new(0, &table("round_robin")));
        let a = Attempt::begin(&view, Some(EndpointId(0)), Instant::now());
        assert!(a.counted.is_none());
        drop(a);
        assert!(view.borrow_mut().drain().is_none());
    }

    #[test]
    fn the_fleet_view_adds_the_other_workers_in_flight_and_the_gauge() {
        let t = table("least_requests");
        let view = RefCell::new(WorkerBalance::new(1, &t));
        let _mine = Attempt::begin(&view, Some(EndpointId(0)), Instant::now());
        // Worker 0 reports 4 in flight on endpoint 0, worker 1 (this one) reported 1.
        let mut endpoints = vec![FleetEndpoint::default(); 3];
        endpoints[0].in_flight = 5;
        endpoints[1].gauge = 7;
        let by_worker = vec![4, 0, 0, 1, 0, 0].into_boxed_slice();
        view.borrow_mut().set_fleet(Arc::new(FleetView {
            endpoints: endpoints.into(),
            by_worker,
        }));
        let v = view.borrow();
        assert_eq!(v.load(EndpointId(0)), 1 + 4);
        assert_eq!(v.load(EndpointId(1)), 7);
        let plan = &t.upstreams()[0];
        let mut rng = WorkerRng::new(1);
        drop(v);
        let mut v = view.borrow_mut();
        for _ in 0..20 {
            // Endpoint 0 carries 5, endpoint 1 carries 7 (its gauge).
            assert_eq!(v.pick(plan, 0, None, &mut rng, |_| true), Some(0));
        }
        // A view of another endpoint table (before a reload reached the coordinator) is
        // ignored.
        v.set_fleet(Arc::new(FleetView {
            endpoints: vec![FleetEndpoint::default(); 5].into(),
            by_worker: vec![0; 10].into(),
        }));
        assert_eq!(v.load(EndpointId(1)), 0);
    }
}
