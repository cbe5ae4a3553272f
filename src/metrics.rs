//! Per-worker metrics: counters and latency histograms, owned by one worker (no sharing).
//!
//! Workers record on the data path into their own [`WorkerMetrics`]; the control thread
//! collects copies over the channels and merges them ([`merge::Merged`]), adding histograms
//! bucket by bucket (never averaging percentiles).
//!
//! - [`counters`]: labelled counters with a cardinality cap, for later stages (auth, quota,
//!   breaker, token usage).
//! - [`merge`]: the control plane's merged view of every worker.
//!
//! # Performance
//!
//! Recording is a few array/`Vec` index operations and histogram increments: no lock, no
//! atomic, and no allocation once a route's status code has been seen once. Per-route state is
//! kept in slots; a slot is found from the route's index in the snapshot through a table
//! rebuilt when a snapshot is applied ([`WorkerMetrics::set_routes`]). A request that started
//! on the previous snapshot and finishes after a reload that reordered routes is charged to the
//! route now at its index (or to [`UNMATCHED_ROUTE`] when there is none): a bounded, rare
//! misattribution instead of a label lookup per request.
//!
//! Each histogram spans 1 µs .. 1 h at 3 significant figures (about 190 KB); a route has three.
//! A collection clones them on the worker, between requests, so a scrape costs each worker a
//! copy of `(2 + 3 × routes) × 190 KB`.

pub mod counters;
pub mod merge;

use hdrhistogram::Histogram;

use crate::route::{Route, Router};
pub use counters::{Family, LabelledCounters};

/// Highest latency recorded, in microseconds (1 hour); larger values are clamped.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant figures kept by the latency histograms.
pub const SIGFIG: u8 = 3;
/// Route label of requests that matched no route (404/405 and requests that failed before
/// routing).
pub const UNMATCHED_ROUTE: &str = "(unmatched)";
/// Slot of [`UNMATCHED_ROUTE`] in [`WorkerMetrics::routes`].
const UNMATCHED_SLOT: usize = 0;

/// Which io driver a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Legacy,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Legacy => "legacy",
        }
    }
}

/// The metrics label of a route. The one place that names routes, so the route trie can
/// replace the prefix list without touching the exposition.
pub fn route_label(route: &Route) -> String {
    route.pattern().to_string()
}

/// Index of `route` among the snapshot's routes (its `RouteId`).
#[inline]
pub fn route_index(route: &Route) -> Option<u32> {
    Some(route.id().0)
}

/// Latency and traffic of one route (or of [`UNMATCHED_ROUTE`]).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    pub label: Box<str>,
    /// Total request latency, microseconds.
    pub total_us: Histogram<u64>,
    /// Upstream time (request sent → response complete), microseconds.
    pub upstream_us: Histogram<u64>,
    /// Time the gateway itself added (total minus upstream), microseconds.
    pub gateway_us: Histogram<u64>,
    /// Responses by exact status code (0: closed without a response).
    pub statuses: Vec<(u16, u64)>,
    /// Bytes read from / written to the client while serving this route's requests.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Upstream time to the response head, microseconds: kept for deployments only (the
    /// canary guards' latency; for a stream, its time to first byte).
    pub ttfb_us: Option<Histogram<u64>>,
}

impl RouteMetrics {
    pub fn new(label: &str) -> Self {
        Self {
            label: label.into(),
            total_us: histogram(),
            upstream_us: histogram(),
            gateway_us: histogram(),
            statuses: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            ttfb_us: None,
        }
    }

    /// A deployment's metrics: a route's, plus time to first byte.
    pub fn for_deployment(label: &str) -> Self {
        Self {
            ttfb_us: Some(histogram()),
            ..Self::new(label)
        }
    }

    /// Requests counted (every request has exactly one status entry).
    pub fn requests(&self) -> u64 {
        self.statuses.iter().map(|(_, n)| n).sum()
    }

    #[inline]
    fn record(&mut self, s: &Sample) {
        match self.statuses.iter_mut().find(|(st, _)| *st == s.status) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((s.status, 1)),
        }
        self.total_us.saturating_record(s.total_us.max(1));
        let up = s.upstream_us.unwrap_or(0);
        if s.upstream_us.is_some() {
            self.upstream_us.saturating_record(up.max(1));
        }
        self.gateway_us
            .saturating_record(s.total_us.saturating_sub(up).max(1));
        self.bytes_in += s.bytes_in;
        self.bytes_out += s.bytes_out;
    }

    /// Adds `other`'s counts into `self` (control plane).
    pub fn add(&mut self, other: &RouteMetrics) {
        for (st, n) in &other.statuses {
            match self.statuses.iter_mut().find(|(s, _)| s == st) {
                Some((_, m)) => *m += n,
                None => self.statuses.push((*st, *n)),
            }
        }
        self.statuses.sort_unstable();
        add_hist(&mut self.total_us, &other.total_us);
        add_hist(&mut self.upstream_us, &other.upstream_us);
        add_hist(&mut self.gateway_us, &other.gateway_us);
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        match (&mut self.ttfb_us, &other.ttfb_us) {
            (Some(a), Some(b)) => add_hist(a, b),
            (a @ None, Some(b)) => *a = Some(b.clone()),
            _ => {}
        }
    }
}

/// One deployment's outcomes for the canary guards: a light copy of its [`RouteMetrics`]
/// (statuses and time to first byte only), so a rollout's frequent look costs each worker
/// one histogram per deployment watched.
#[derive(Debug, Clone)]
pub struct DeploymentCounts {
    /// `model@version`.
    pub label: Box<str>,
    /// Responses by exact status code (0: closed without a response).
    pub statuses: Vec<(u16, u64)>,
    pub ttfb_us: Histogram<u64>,
}

impl DeploymentCounts {
    pub fn new(label: &str) -> Self {
        DeploymentCounts {
            label: label.into(),
            statuses: Vec::new(),
            ttfb_us: histogram(),
        }
    }

    /// Adds `other`'s counts (another worker's, for the same label).
    pub fn add(&mut self, other: &DeploymentCounts) {
        for (st, n) in &other.statuses {
            match self.statuses.iter_mut().find(|(s, _)| s == st) {
                Some((_, m)) => *m += n,
                None => self.statuses.push((*st, *n)),
            }
        }
        add_hist(&mut self.ttfb_us, &other.ttfb_us);
    }
}

/// One finished request, as the data path reports it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Index of the route in the snapshot the request ran on; `None`: no route matched.
    pub route: Option<u32>,
    /// Status sent; 0 means no response was sent.
    pub status: u16,
    pub total_us: u64,
    pub upstream_us: Option<u64>,
    /// Index of the deployment a split chose (its `DeploymentId`), if any.
    pub deployment: Option<u32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One worker's counters and histograms.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    pub worker: usize,
    pub driver: Driver,
    /// Responses by status class: index 1..=5 for 1xx..5xx, 0 for connections closed without
    /// a response.
    pub by_class: [u64; 6],
    /// Total request latency (head parsed → last byte written), microseconds.
    pub total_us: Histogram<u64>,
    /// Upstream time (request sent → response complete), microseconds.
    pub upstream_us: Histogram<u64>,
    /// Upstream time to the first response byte (request sent → response head), microseconds.
    pub ttfb_us: Histogram<u64>,
    /// Gap between two reads of a streamed (chunked or close-delimited) response body,
    /// microseconds: what a client watching tokens arrive experiences.
    pub stream_gap_us: Histogram<u64>,
    pub upstream_connects: u64,
    pub upstream_reuses: u64,
    pub connections_open: u64,
    pub config_generation: u64,
    /// Per-route detail; `false` (config `metrics.per_route = false`) skips it.
    pub per_route: bool,
    /// Per-route slots; slot 0 is [`UNMATCHED_ROUTE`]. Slots outlive snapshots, so a route
    /// that survives a reload keeps its counts.
    pub routes: Vec<RouteMetrics>,
    /// Snapshot route index → slot in `routes`.
    route_slots: Vec<u32>,
    /// Per model deployment a split chose (label `model@version`), recorded besides the route.
    pub deployments: Vec<RouteMetrics>,
    /// Snapshot deployment index → slot in `deployments`.
    deployment_slots: Vec<u32>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Counters other stages increment (see [`counters`]).
    pub counters: LabelledCounters,
    /// Access log batches dropped because the writer fell behind (filled in on collect).
    pub access_log_dropped: u64,
    /// The span exporter's counters (process-wide: every worker reports the same; filled in
    /// on collect; `None`: tracing is off).
    pub trace: Option<crate::trace::TraceCounters>,
    /// Spans this worker dropped because the exporter's queue was full (filled in on collect).
    pub trace_handover_dropped: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG)
        .expect("static histogram bounds are valid")
}

/// Adds `src` into `dst`. Both come from [`histogram`] (same bounds), so this cannot fail;
/// a failure would only lose samples, never corrupt the merge.
pub(crate) fn add_hist(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    let _ = dst.add(src);
}

impl WorkerMetrics {
    pub fn new(worker: usize, driver: Driver) -> Self {
        Self {
            worker,
            driver,
            by_class: [0; 6],
            total_us: histogram(),
            upstream_us: histogram(),
            ttfb_us: histogram(),
            stream_gap_us: histogram(),
            upstream_connects: 0,
            upstream_reuses: 0,
            connections_open: 0,
            config_generation: 0,
            per_route: true,
            routes: vec![RouteMetrics::new(UNMATCHED_ROUTE)],
            route_slots: Vec::new(),
            deployments: Vec::new(),
            deployment_slots: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            counters: LabelledCounters::default(),
            access_log_dropped: 0,
            trace: None,
            trace_handover_dropped: 0,
        }
    }

    /// Points a snapshot's route and deployment indexes at slots (creating slots for new
    /// labels) and takes its generation and `[metrics]` settings (`per_route`, `label_series`).
    /// Called when a worker applies a snapshot.
    pub fn set_routes(
        &mut self,
        generation: u64,
        per_route: bool,
        label_series: usize,
        router: &Router,
    ) {
        self.config_generation = generation;
        self.per_route = per_route;
        self.counters.set_cap(label_series);
        self.route_slots.clear();
        for r in router.routes() {
            let label = route_label(r);
            let slot = match self.routes.iter().position(|m| *m.label == *label) {
                Some(i) => i,
                None => {
                    self.routes.push(RouteMetrics::new(&label));
                    self.routes.len() - 1
                }
            };
            self.route_slots.push(slot as u32);
        }
        self.deployment_slots.clear();
        for d in router.deployments() {
            let label = format!("{}@{}", d.model(), d.version_str());
            let slot = match self.deployments.iter().position(|m| *m.label == *label) {
                Some(i) => i,
                None => {
                    self.deployments.push(RouteMetrics::for_deployment(&label));
                    self.deployments.len() - 1
                }
            };
            self.deployment_slots.push(slot as u32);
        }
    }

    /// Records one finished request without route or byte detail. `status` 0 means no
    /// response was sent.
    #[inline]
    pub fn record(&mut self, status: u16, total_us: u64, upstream_us: Option<u64>) {
        self.record_sample(&Sample {
            route: None,
            status,
            total_us,
            upstream_us,
            deployment: None,
            bytes_in: 0,
            bytes_out: 0,
        });
    }

    /// Records one finished request.
    #[inline]
    pub fn record_sample(&mut self, s: &Sample) {
        let class = usize::from(s.status / 100).min(5);
        self.by_class[class] += 1;
        self.total_us.saturating_record(s.total_us.max(1));
        if let Some(u) = s.upstream_us {
            self.upstream_us.saturating_record(u.max(1));
        }
        self.bytes_in += s.bytes_in;
        self.bytes_out += s.bytes_out;
        if self.per_route {
            let slot = s
                .route
                .and_then(|i| self.route_slots.get(i as usize))
                .map_or(UNMATCHED_SLOT, |&s| s as usize);
            self.routes[slot].record(s);
            if let Some(&d) = s
                .deployment
                .and_then(|d| self.deployment_slots.get(d as usize))
            {
                self.deployments[d as usize].record(s);
            }
        }
    }

    /// Records the upstream's time to the response head for the deployment a split chose
    /// (its `DeploymentId` in the snapshot the request runs on), with the per-route detail.
    #[inline]
    pub fn record_deployment_ttfb(&mut self, deployment: Option<u32>, us: u64) {
        if !self.per_route {
            return;
        }
        let slot = deployment.and_then(|d| self.deployment_slots.get(d as usize));
        if let Some(h) = slot.and_then(|&s| self.deployments[s as usize].ttfb_us.as_mut()) {
            h.saturating_record(us.max(1));
        }
    }

    /// The guards' copy of the deployments labelled `labels` (`model@version`) that this
    /// worker has recorded.
    pub fn deployment_counts(&self, labels: &[Box<str>]) -> Vec<DeploymentCounts> {
        self.deployments
            .iter()
            .filter(|d| labels.contains(&d.label))
            .map(|d| DeploymentCounts {
                label: d.label.clone(),
                statuses: d.statuses.clone(),
                ttfb_us: d.ttfb_us.clone().unwrap_or_else(histogram),
            })
            .collect()
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    /// The `model@version` label of the deployment at `deployment` (a snapshot deployment
    /// index), as recorded.
    pub fn deployment_label_of(&self, deployment: Option<u32>) -> Option<&str> {
        let slot = deployment.and_then(|d| self.deployment_slots.get(d as usize))?;
        self.deployments.get(*slot as usize).map(|d| &*d.label)
    }

    /// The label of the route at `route` (a snapshot route index), as recorded.
    pub fn route_label_of(&self, route: Option<u32>) -> &str {
        let slot = route
            .and_then(|i| self.route_slots.get(i as usize))
            .map_or(UNMATCHED_SLOT, |&s| s as usize);
        &self.routes[slot].label
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/v1/*rest"
upstream = "mock"
[[routes]]
path = "/health"
upstream = "mock"
"#;

    #[test]
    fn records_by_class() {
        let mut m = WorkerMetrics::new(0, Driver::Legacy);
        m.record(200, 150, Some(100));
        m.record(503, 10, None);
        m.record(0, 5, None);
        assert_eq!(m.by_class, [1, 0, 1, 0, 0, 1]);
        assert_eq!(m.total_us.len(), 3);
        assert_eq!(m.upstream_us.len(), 1);
        assert_eq!(m.routes[UNMATCHED_SLOT].requests(), 3);
    }

    #[test]
    fn records_per_route_with_exact_status_and_gateway_time() {
        let snap = crate::config::from_str(CONFIG, Path::new("."), 7).unwrap();
        let mut m = WorkerMetrics::new(0, Driver::Legacy);
        m.set_routes(
            snap.generation,
            snap.metrics.per_route,
            snap.metrics.label_series,
            &snap.router,
        );
        assert_eq!(m.config_generation, 7);
        let v1 = snap
            .router
            .routes()
            .iter()
            .find(|r| r.pattern().ends_with("*rest"))
            .unwrap();
        let ix = route_index(v1);
        assert!(ix.is_some());
        for status in [200, 200, 429] {
            m.record_sample(&Sample {
                route: ix,
                status,
                total_us: 1000,
                upstream_us: Some(900),
                deployment: None,
                bytes_in: 10,
                bytes_out: 20,
            });
        }
        let r = m.routes.iter().find(|r| &*r.label == "/v1/*rest").unwrap();
        assert_eq!(r.statuses, vec![(200, 2), (429, 1)]);
        assert_eq!(r.gateway_us.max(), 100);
        assert_eq!((r.bytes_in, r.bytes_out), (30, 60));
        assert_eq!((m.bytes_in, m.bytes_out), (30, 60));
    }

    #[test]
    fn slots_survive_a_reload_and_unknown_routes_are_unmatched() {
        let snap = crate::config::from_str(CONFIG, Path::new("."), 1).unwrap();
        let mut m = WorkerMetrics::new(0, Driver::Legacy);
        m.set_routes(
            snap.generation,
            snap.metrics.per_route,
            snap.metrics.label_series,
            &snap.router,
        );
        let slots = m.routes.len();
        m.set_routes(
            snap.generation,
            snap.metrics.per_route,
            snap.metrics.label_series,
            &snap.router,
        );
        assert_eq!(m.routes.len(), slots);
        m.record_sample(&Sample {
            route: Some(99),
            status: 404,
            total_us: 5,
            upstream_us: None,
            deployment: None,
            bytes_in: 0,
            bytes_out: 0,
        });
        assert_eq!(m.routes[UNMATCHED_SLOT].statuses, vec![(404, 1)]);
    }
}
