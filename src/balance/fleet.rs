//! The coordination thread's side of endpoint choice: [`Fleet`] merges what every worker
//! reports ([`LoadReport`]: in flight now, TTFB and latency samples since its last report)
//! and the load-metric gauges ([`super::feed`]) into one [`FleetView`], sent to every worker
//! at most every [`FLEET_INTERVAL`] and only when something changed (an idle gateway, or one
//! where every upstream is on round-robin, sends nothing).
//!
//! # The EWMAs
//!
//! Each endpoint's TTFB and latency are exponentially weighted moving averages over samples
//! (weight [`ALPHA`] per sample; a report of n samples moves it by `1 − (1 − ALPHA)^n` toward
//! their mean). An endpoint that gets no sample for [`IDLE_GRACE`] decays toward 0 with time
//! constant [`IDLE_DECAY`] (Finagle's rule), so an endpoint that was slow once and lost every
//! comparison since is tried again after a while instead of never.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::FleetPlan;
use super::feed::FeedThread;
use super::view::{FleetEndpoint, FleetView, LoadReport};

/// Least time between two fleet views sent to the workers.
pub const FLEET_INTERVAL: Duration = Duration::from_millis(5);
/// Weight of one sample in an EWMA.
pub const ALPHA: f64 = 0.1;
/// Time without samples after which an endpoint's EWMAs start to decay.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);
/// Time constant of that decay.
pub const IDLE_DECAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default)]
struct Ewma {
    value: f64,
    /// When the last sample came; `None`: none yet.
    last: Option<Instant>,
}

impl Ewma {
    fn fold(&mut self, sum_us: u64, n: u32, now: Instant) {
        if n == 0 {
            return;
        }
        let mean = sum_us as f64 / f64::from(n);
        self.value = match self.last {
            None => mean,
            Some(_) => {
                // An i32 exponent: a report never carries 2^31 samples.
                let keep = (1.0 - ALPHA).powi(n.min(i32::MAX as u32) as i32);
                mean + (self.at(now) - mean) * keep
            }
        };
        self.last = Some(now);
    }

    /// The value at `now`, decayed if the endpoint has been idle.
    fn at(&self, now: Instant) -> f64 {
        let Some(last) = self.last else { return 0.0 };
        let idle = now
            .saturating_duration_since(last)
            .saturating_sub(IDLE_GRACE);
        match idle.is_zero() {
            true => self.value,
            false => self.value * (-idle.as_secs_f64() / IDLE_DECAY.as_secs_f64()).exp(),
        }
    }
}

/// The merged load of every endpoint (see the module docs).
pub struct Fleet {
    workers: usize,
    endpoints: usize,
    /// In flight as each worker last reported: `[worker * endpoints + endpoint]`.
    by_worker: Vec<u32>,
    ttfb: Vec<Ewma>,
    latency: Vec<Ewma>,
    gauge: Vec<u32>,
    changed: bool,
    sent: Option<Instant>,
    plan: FleetPlan,
    feed: Option<FeedThread>,
}

impl Fleet {
    /// The merge for `workers` workers of a snapshot whose balance is `plan`; starts the
    /// load-metric thread when `plan` has targets.
    pub fn new(workers: usize, plan: &FleetPlan) -> Fleet {
        let n = plan.endpoints;
        Fleet {
            workers,
            endpoints: n,
            by_worker: vec![0; workers * n],
            ttfb: vec![Ewma::default(); n],
            latency: vec![Ewma::default(); n],
            gauge: vec![0; n],
            changed: false,
            sent: None,
            plan: plan.clone(),
            feed: FeedThread::start(&plan.targets),
        }
    }

    /// Folds in one worker's report.
    pub fn ingest(&mut self, r: &LoadReport, now: Instant) {
        for e in &r.endpoints {
            let i = e.endpoint.index();
            if i >= self.endpoints || r.worker >= self.workers {
                // From before a reload that shrank the table.
                continue;
            }
            self.by_worker[r.worker * self.endpoints + i] = e.in_flight;
            self.ttfb[i].fold(e.ttfb_us, e.ttfb_n, now);
            self.latency[i].fold(e.latency_us, e.latency_n, now);
            self.changed = true;
        }
    }

    /// A reloaded snapshot's plan: endpoints keep their state by id (like the breakers), the
    /// load-metric thread restarts when its targets changed.
    pub fn reload(&mut self, plan: &FleetPlan) {
        let (old, n) = (self.endpoints, plan.endpoints);
        if n != old {
            let mut by_worker = vec![0; self.workers * n];
            for w in 0..self.workers {
                let keep = old.min(n);
                by_worker[w * n..w * n + keep]
                    .copy_from_slice(&self.by_worker[w * old..w * old + keep]);
            }
            self.by_worker = by_worker;
            self.ttfb.resize(n, Ewma::default());
            self.latency.resize(n, Ewma::default());
            self.endpoints = n;
            self.changed = true;
        }
        if plan.targets != self.plan.targets {
            self.feed = None;
            self.gauge = vec![0; n];
            self.feed = FeedThread::start(&plan.targets);
            self.changed = true;
        }
        self.gauge.resize(n, 0);
        self.plan = plan.clone();
    }

    /// Whether [`Self::tick`] must run on the short tick: a load gauge is scraped (its values
    /// are collected on the tick) or a change waits to go out.
    pub fn needs_tick(&self) -> bool {
        self.feed.is_some() || self.changed
    }

    /// New gauges, then the view to send every worker if anything changed and the last one
    /// went out at least [`FLEET_INTERVAL`] ago.
    pub fn tick(&mut self, now: Instant) -> Option<Arc<FleetView>> {
        if let Some(feed) = &self.feed {
            for u in feed.updates.try_iter() {
                if let Some(g) = self.gauge.get_mut(u.endpoint.index()) {
                    let v = u.value.unwrap_or(0);
                    self.changed |= *g != v;
                    *g = v;
                }
            }
        }
        if !self.changed || self.sent.is_some_and(|t| now < t + FLEET_INTERVAL) {
            return None;
        }
        self.changed = false;
        self.sent = Some(now);
        Some(Arc::new(self.view(now)))
    }

    /// The merged view at `now`.
    pub fn view(&self, now: Instant) -> FleetView {
        let n = self.endpoints;
        let endpoints = (0..n)
            .map(|i| FleetEndpoint {
                in_flight: (0..self.workers)
                    .map(|w| self.by_worker[w * n + i])
                    .fold(0u32, u32::saturating_add),
                gauge: self.gauge[i],
                ttfb_us: self.ttfb[i].at(now) as f32,
                latency_us: self.latency[i].at(now) as f32,
            })
            .collect();
        FleetView {
            endpoints,
            by_worker: self.by_worker.clone().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::view::EndpointLoad;
    use crate::breaker::EndpointId;

    fn report(worker: usize, endpoint: u32, in_flight: u32, ttfb: (u64, u32)) -> LoadReport {
        LoadReport {
            worker,
            endpoints: vec![EndpointLoad {
                endpoint: EndpointId(endpoint),
                in_flight,
                ttfb_us: ttfb.0,
                ttfb_n: ttfb.1,
                ..EndpointLoad::default()
            }],
        }
    }

    fn plan(endpoints: usize) -> FleetPlan {
        FleetPlan {
            endpoints,
            targets: Vec::new(),
        }
    }

    #[test]
    fn merges_workers_and_sends_only_changes_at_most_every_interval() {
        let t0 = Instant::now();
        let mut f = Fleet::new(2, &plan(2));
        assert!(f.tick(t0).is_none(), "nothing reported, nothing sent");
        f.ingest(&report(0, 1, 3, (3000, 3)), t0);
        f.ingest(&report(1, 1, 2, (0, 0)), t0);
        let v = f.tick(t0).unwrap();
        assert_eq!(v.endpoints[1].in_flight, 5);
        assert_eq!(v.endpoints[1].ttfb_us, 1000.0);
        assert_eq!(&v.by_worker[..], &[0, 3, 0, 2]);
        f.ingest(&report(1, 1, 0, (0, 0)), t0);
        assert!(f.tick(t0 + Duration::from_millis(1)).is_none(), "too soon");
        let v = f.tick(t0 + FLEET_INTERVAL).unwrap();
        assert_eq!(v.endpoints[1].in_flight, 3);
        assert!(f.tick(t0 + FLEET_INTERVAL * 3).is_none(), "no change since");
        // A report from a worker or endpoint the table does not have is ignored.
        f.ingest(&report(5, 0, 9, (0, 0)), t0);
        f.ingest(&report(0, 9, 9, (0, 0)), t0);
        assert!(f.tick(t0 + FLEET_INTERVAL * 4).is_none());
    }

    #[test]
    fn ewma_moves_by_sample_count_and_decays_when_idle() {
        let t0 = Instant::now();
        let mut e = Ewma::default();
        assert_eq!(e.at(t0), 0.0);
        e.fold(10_000, 1, t0);
        assert_eq!(e.at(t0), 10_000.0, "the first sample sets it");
        e.fold(2_000, 1, t0);
        assert!((e.at(t0) - 9_200.0).abs() < 1e-6);
        let mut many = e;
        many.fold(200_000, 10, t0);
        let want = 20_000.0 + (9_200.0 - 20_000.0) * 0.9f64.powi(10);
        assert!((many.at(t0) - want).abs() < 1e-6);
        assert_eq!(e.at(t0 + IDLE_GRACE), e.value, "no decay within the grace");
        let later = e.at(t0 + IDLE_GRACE + IDLE_DECAY);
        assert!((later - e.value / std::f64::consts::E).abs() < 1e-6);
    }

    #[test]
    fn reload_keeps_state_by_id() {
        let t0 = Instant::now();
        let mut f = Fleet::new(2, &plan(3));
        f.ingest(&report(1, 1, 4, (500, 1)), t0);
        f.reload(&plan(2));
        let v = f.tick(t0).unwrap();
        assert_eq!(v.endpoints.len(), 2);
        assert_eq!(v.endpoints[1].in_flight, 4);
        assert_eq!(&v.by_worker[..], &[0, 0, 0, 4]);
        f.reload(&plan(4));
        let v = f.tick(t0 + FLEET_INTERVAL).unwrap();
        assert_eq!(&v.by_worker[..], &[0, 0, 0, 0, 0, 4, 0, 0]);
        assert_eq!(v.endpoints[1].ttfb_us, 500.0);
    }
}
