//! The control plane's view of every worker: counters summed, histograms added bucket by
//! bucket with `Histogram::add` (percentiles are computed from the merged histogram, never
//! averaged across workers).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use super::{add_hist, histogram, Driver, LabelledCounters, RouteMetrics, WorkerMetrics};

/// What the exposition needs to know about one worker.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub worker: usize,
    pub driver: Driver,
    pub connections_open: u64,
    pub config_generation: u64,
}

/// Every worker's metrics, merged.
#[derive(Debug, Clone)]
pub struct Merged {
    pub workers: Vec<WorkerInfo>,
    pub by_class: [u64; 6],
    pub total_us: Histogram<u64>,
    pub upstream_us: Histogram<u64>,
    pub ttfb_us: Histogram<u64>,
    pub stream_gap_us: Histogram<u64>,
    pub upstream_connects: u64,
    pub upstream_reuses: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// By route label.
    pub routes: BTreeMap<Box<str>, RouteMetrics>,
    /// By deployment label (`model@version`), for requests a split routed.
    pub deployments: BTreeMap<Box<str>, RouteMetrics>,
    pub counters: LabelledCounters,
    pub access_log_dropped: u64,
    /// The span exporter's counters, with every worker's hand-over drops in `queue_full`
    /// (`None`: tracing is off).
    pub trace: Option<crate::trace::TraceCounters>,
}

impl Merged {
    /// Merges the workers' metrics (in worker order).
    pub fn from_workers(mut workers: Vec<WorkerMetrics>) -> Merged {
        workers.sort_by_key(|w| w.worker);
        let mut m = Merged {
            workers: Vec::with_capacity(workers.len()),
            by_class: [0; 6],
            total_us: histogram(),
            upstream_us: histogram(),
            ttfb_us: histogram(),
            stream_gap_us: histogram(),
            upstream_connects: 0,
            upstream_reuses: 0,
            bytes_in: 0,
            bytes_out: 0,
            routes: BTreeMap::new(),
            deployments: BTreeMap::new(),
            counters: LabelledCounters::default(),
            access_log_dropped: 0,
            trace: None,
        };
        let mut handover = 0;
        for w in &workers {
            m.workers.push(WorkerInfo {
                worker: w.worker,
                driver: w.driver,
                connections_open: w.connections_open,
                config_generation: w.config_generation,
            });
            for (a, b) in m.by_class.iter_mut().zip(w.by_class) {
                *a += b;
            }
            add_hist(&mut m.total_us, &w.total_us);
            add_hist(&mut m.upstream_us, &w.upstream_us);
            add_hist(&mut m.ttfb_us, &w.ttfb_us);
            add_hist(&mut m.stream_gap_us, &w.stream_gap_us);
            m.upstream_connects += w.upstream_connects;
            m.upstream_reuses += w.upstream_reuses;
            m.bytes_in += w.bytes_in;
            m.bytes_out += w.bytes_out;
            for r in &w.routes {
                m.routes
                    .entry(r.label.clone())
                    .or_insert_with(|| RouteMetrics::new(&r.label))
                    .add(r);
            }
            for r in &w.deployments {
                m.deployments
                    .entry(r.label.clone())
                    .or_insert_with(|| RouteMetrics::new(&r.label))
                    .add(r);
            }
            m.counters.merge(&w.counters);
            m.access_log_dropped += w.access_log_dropped;
            // The exporter's counts are process-wide (each worker reports the same values,
            // read at slightly different times: the largest is the latest); hand-over drops
            // are per worker.
            if let Some(t) = w.trace {
                let merged = m.trace.get_or_insert_with(Default::default);
                merged.exported = merged.exported.max(t.exported);
                merged.failed = merged.failed.max(t.failed);
                merged.queue_full = merged.queue_full.max(t.queue_full);
                handover += w.trace_handover_dropped;
            }
        }
        if let Some(t) = &mut m.trace {
            t.queue_full += handover;
        }
        m
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    /// What happened since `earlier` (an older merge of the same workers): histograms and
    /// per-route counts subtracted. Routes absent from `earlier` are taken whole.
    pub fn since(&self, earlier: &Merged) -> Merged {
        let mut d = self.clone();
        for (a, b) in d.by_class.iter_mut().zip(earlier.by_class) {
            *a = a.saturating_sub(b);
        }
        sub_hist(&mut d.total_us, &earlier.total_us);
        sub_hist(&mut d.upstream_us, &earlier.upstream_us);
        sub_hist(&mut d.ttfb_us, &earlier.ttfb_us);
        sub_hist(&mut d.stream_gap_us, &earlier.stream_gap_us);
        let pairs = d.routes.iter_mut().map(|(l, r)| (earlier.routes.get(l), r));
        let dep_pairs = d
            .deployments
            .iter_mut()
            .map(|(l, r)| (earlier.deployments.get(l), r));
        for (e, r) in pairs.chain(dep_pairs) {
            let Some(e) = e else {
                continue;
            };
            sub_hist(&mut r.total_us, &e.total_us);
            sub_hist(&mut r.upstream_us, &e.upstream_us);
            sub_hist(&mut r.gateway_us, &e.gateway_us);
            if let (Some(h), Some(eh)) = (&mut r.ttfb_us, &e.ttfb_us) {
                sub_hist(h, eh);
            }
            for (st, n) in r.statuses.iter_mut() {
                let before = e.statuses.iter().find(|(s, _)| s == st).map_or(0, |x| x.1);
                *n = n.saturating_sub(before);
            }
            r.bytes_in = r.bytes_in.saturating_sub(e.bytes_in);
            r.bytes_out = r.bytes_out.saturating_sub(e.bytes_out);
        }
        d
    }
}

/// Counts only grow, so `earlier` is contained in `h`; if a worker was replaced and it is not,
/// the interval restarts from `h` as a whole rather than showing nonsense.
fn sub_hist(h: &mut Histogram<u64>, earlier: &Histogram<u64>) {
    let keep = h.clone();
    if h.subtract(earlier).is_err() {
        *h = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sample;

    fn sample(us: u64) -> Sample {
        Sample {
            route: None,
            status: 200,
            total_us: us,
            upstream_us: Some(us / 2),
            deployment: None,
            bytes_in: 1,
            bytes_out: 2,
        }
    }

    #[test]
    fn merged_percentiles_equal_one_histogram_fed_everything() {
        let mut a = WorkerMetrics::new(0, Driver::Legacy);
        let mut b = WorkerMetrics::new(1, Driver::IoUring);
        let mut all = WorkerMetrics::new(9, Driver::Legacy);
        // Two very different distributions: averaging their percentiles would be wrong.
        for i in 0..10_000u64 {
            let fast = 100 + i % 400;
            a.record_sample(&sample(fast));
            all.record_sample(&sample(fast));
            if i % 10 == 0 {
                let slow = 50_000 + i * 7;
                b.record_sample(&sample(slow));
                all.record_sample(&sample(slow));
            }
        }
        let m = Merged::from_workers(vec![b, a]);
        assert_eq!(m.workers[0].worker, 0);
        assert_eq!(m.requests(), 11_000);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                m.total_us.value_at_quantile(q),
                all.total_us.value_at_quantile(q),
                "q={q}"
            );
            let route = &m.routes[crate::metrics::UNMATCHED_ROUTE];
            assert_eq!(
                route.gateway_us.value_at_quantile(q),
                all.routes[0].gateway_us.value_at_quantile(q)
            );
        }
        assert_eq!((m.bytes_in, m.bytes_out), (11_000, 22_000));
    }

    #[test]
    fn since_subtracts_the_earlier_merge() {
        let mut w = WorkerMetrics::new(0, Driver::Legacy);
        for _ in 0..100 {
            w.record_sample(&sample(1_000));
        }
        let before = Merged::from_workers(vec![w.clone()]);
        for _ in 0..10 {
            w.record_sample(&sample(90_000));
        }
        let now = Merged::from_workers(vec![w]);
        let d = now.since(&before);
        assert_eq!(d.total_us.len(), 10);
        assert!(d.total_us.value_at_quantile(0.5) >= 89_000);
        assert_eq!(d.routes[crate::metrics::UNMATCHED_ROUTE].requests(), 10);
        assert_eq!(d.requests(), 10);
    }
}
