//! Prometheus text exposition (format 0.0.4) of the merged metrics.
//!
//! Latency histograms are Prometheus histograms whose cumulative bucket counts are read from
//! the merged hdrhistograms (`count_between(0, le)`), so they agree with `/stats`. `_sum` is
//! the hdrhistogram mean × count (exact to the histogram's 3 significant figures).

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::control::ReloadStatus;
use crate::metrics::merge::Merged;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency bucket upper bounds, seconds (0.5 ms .. 60 s).
pub const BUCKETS_S: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0, 60.0,
];

/// Everything the exposition shows besides the workers' metrics.
pub struct Extra<'a> {
    pub reload: &'a ReloadStatus,
    pub draining: bool,
    pub workers_expected: usize,
}

/// Renders the whole exposition.
pub fn render(m: &Merged, x: &Extra) -> String {
    let mut o = String::with_capacity(16 * 1024);
    requests(&mut o, m);
    latency(&mut o, m);
    traffic(&mut o, m);
    workers(&mut o, m, x);
    families(&mut o, m);
    o
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP shardgate_{name} {help}");
    let _ = writeln!(o, "# TYPE shardgate_{name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn status_label(s: u16) -> String {
    if s == 0 {
        "none".into()
    } else {
        s.to_string()
    }
}

fn requests(o: &mut String, m: &Merged) {
    header(
        o,
        "requests_total",
        "counter",
        "Requests finished, by route and status (status \"none\": closed without a response).",
    );
    for (label, r) in &m.routes {
        for (status, n) in &r.statuses {
            let _ = writeln!(
                o,
                "shardgate_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                escape(label),
                status_label(*status)
            );
        }
    }
    header(
        o,
        "responses_total",
        "counter",
        "Requests finished, by status class (recorded even with per-route metrics off).",
    );
    for (i, n) in m.by_class.iter().enumerate() {
        let class = if i == 0 {
            "none".to_string()
        } else {
            format!("{i}xx")
        };
        let _ = writeln!(o, "shardgate_responses_total{{class=\"{class}\"}} {n}");
    }
}

/// Picks one of a route's histograms.
type PickHist = fn(&crate::metrics::RouteMetrics) -> &Histogram<u64>;

fn latency(o: &mut String, m: &Merged) {
    let kinds: [(&str, &str, PickHist); 3] = [
        (
            "request_duration_seconds",
            "Request latency: head parsed to last byte written.",
            |r| &r.total_us,
        ),
        (
            "upstream_duration_seconds",
            "Upstream time: request sent to response complete.",
            |r| &r.upstream_us,
        ),
        (
            "gateway_duration_seconds",
            "Time the gateway added: request latency minus upstream time.",
            |r| &r.gateway_us,
        ),
    ];
    for (name, help, pick) in kinds {
        header(o, name, "histogram", help);
        for (label, r) in &m.routes {
            histogram(o, name, &format!("route=\"{}\"", escape(label)), pick(r));
        }
    }
    header(
        o,
        "deployment_request_duration_seconds",
        "histogram",
        "Request latency of requests a model split sent to each deployment.",
    );
    for (label, r) in &m.deployments {
        histogram(
            o,
            "deployment_request_duration_seconds",
            &format!("deployment=\"{}\"", escape(label)),
            &r.total_us,
        );
    }
    header(
        o,
        "deployment_requests_total",
        "counter",
        "Requests a model split sent to each deployment, by status.",
    );
    for (label, r) in &m.deployments {
        for (status, n) in &r.statuses {
            let _ = writeln!(
                o,
                "shardgate_deployment_requests_total{{deployment=\"{}\",status=\"{}\"}} {n}",
                escape(label),
                status_label(*status)
            );
        }
    }
    let all: [(&str, &str, &Histogram<u64>); 2] = [
        (
            "upstream_first_byte_seconds",
            "Upstream time to first byte: request sent to response head.",
            &m.ttfb_us,
        ),
        (
            "stream_chunk_gap_seconds",
            "Gap between two reads of a streamed response body (inter-chunk latency).",
            &m.stream_gap_us,
        ),
    ];
    for (name, help, h) in all {
        header(o, name, "histogram", help);
        histogram(o, name, "scope=\"all\"", h);
    }
}

/// One Prometheus histogram series from an hdrhistogram in microseconds.
pub fn histogram(o: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    for le in BUCKETS_S {
        let le_us = (le * 1e6) as u64;
        let n = if h.is_empty() {
            0
        } else {
            h.count_between(0, le_us)
        };
        let _ = writeln!(o, "shardgate_{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let count = h.len();
    let _ = writeln!(o, "shardgate_{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let sum = if count == 0 {
        0.0
    } else {
        h.mean() * count as f64 / 1e6
    };
    let _ = writeln!(o, "shardgate_{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(o, "shardgate_{name}_count{{{labels}}} {count}");
}

fn traffic(o: &mut String, m: &Merged) {
    header(
        o,
        "received_bytes_total",
        "counter",
        "Bytes read from clients, by route.",
    );
    for (label, r) in &m.routes {
        let _ = writeln!(
            o,
            "shardgate_received_bytes_total{{route=\"{}\"}} {}",
            escape(label),
            r.bytes_in
        );
    }
    header(
        o,
        "sent_bytes_total",
        "counter",
        "Bytes written to clients, by route.",
    );
    for (label, r) in &m.routes {
        let _ = writeln!(
            o,
            "shardgate_sent_bytes_total{{route=\"{}\"}} {}",
            escape(label),
            r.bytes_out
        );
    }
    header(
        o,
        "upstream_connects_total",
        "counter",
        "New upstream connections opened.",
    );
    let _ = writeln!(
        o,
        "shardgate_upstream_connects_total {}",
        m.upstream_connects
    );
    header(
        o,
        "upstream_reuses_total",
        "counter",
        "Requests sent on a pooled upstream connection.",
    );
    let _ = writeln!(o, "shardgate_upstream_reuses_total {}", m.upstream_reuses);
    header(
        o,
        "access_log_dropped_batches_total",
        "counter",
        "Access log batches dropped because the writer fell behind.",
    );
    let _ = writeln!(
        o,
        "shardgate_access_log_dropped_batches_total {}",
        m.access_log_dropped
    );
    if let Some(t) = &m.trace {
        trace_counters(o, t);
    }
}

/// The span exporter's counters (only with `[tracing]`).
fn trace_counters(o: &mut String, t: &crate::trace::TraceCounters) {
    header(
        o,
        "trace_spans_exported_total",
        "counter",
        "Spans the OTLP collector accepted.",
    );
    let _ = writeln!(o, "shardgate_trace_spans_exported_total {}", t.exported);
    header(
        o,
        "trace_spans_dropped_total",
        "counter",
        "Spans dropped: the export queue was full, or the collector failed or was too slow.",
    );
    let _ = writeln!(
        o,
        "shardgate_trace_spans_dropped_total{{reason=\"queue_full\"}} {}",
        t.queue_full
    );
    let _ = writeln!(
        o,
        "shardgate_trace_spans_dropped_total{{reason=\"export_failed\"}} {}",
        t.failed
    );
}

fn workers(o: &mut String, m: &Merged, x: &Extra) {
    header(
        o,
        "worker_info",
        "gauge",
        "One series per running worker, labelled with its io driver.",
    );
    for w in &m.workers {
        let _ = writeln!(
            o,
            "shardgate_worker_info{{worker=\"{}\",driver=\"{}\"}} 1",
            w.worker,
            w.driver.as_str()
        );
    }
    header(
        o,
        "workers",
        "gauge",
        "Workers configured (compare with the count of worker_info series).",
    );
    let _ = writeln!(o, "shardgate_workers {}", x.workers_expected);
    header(
        o,
        "connections_open",
        "gauge",
        "Client connections open, by worker.",
    );
    for w in &m.workers {
        let _ = writeln!(
            o,
            "shardgate_connections_open{{worker=\"{}\"}} {}",
            w.worker, w.connections_open
        );
    }
    header(
        o,
        "worker_config_generation",
        "gauge",
        "Config generation each worker runs on.",
    );
    for w in &m.workers {
        let _ = writeln!(
            o,
            "shardgate_worker_config_generation{{worker=\"{}\"}} {}",
            w.worker, w.config_generation
        );
    }
    header(
        o,
        "config_generation",
        "gauge",
        "Config generation last applied by the control thread.",
    );
    let _ = writeln!(o, "shardgate_config_generation {}", x.reload.generation);
    header(
        o,
        "config_reload_failures_total",
        "counter",
        "Config reloads rejected by validation.",
    );
    let _ = writeln!(
        o,
        "shardgate_config_reload_failures_total {}",
        x.reload.failures
    );
    header(
        o,
        "config_reloads_refused_total",
        "counter",
        "Config file changes not applied because they would lower protection (auth, quota, admin token, routes).",
    );
    let _ = writeln!(
        o,
        "shardgate_config_reloads_refused_total {}",
        x.reload.refused
    );
    header(
        o,
        "config_reloads_lowering_total",
        "counter",
        "Explicit reloads (SIGHUP, POST /reload) applied although they lowered protection.",
    );
    let _ = writeln!(
        o,
        "shardgate_config_reloads_lowering_total {}",
        x.reload.lowering_applied
    );
    header(
        o,
        "draining",
        "gauge",
        "1 once shutdown has started draining.",
    );
    let _ = writeln!(o, "shardgate_draining {}", u8::from(x.draining));
}

fn families(o: &mut String, m: &Merged) {
    let mut fams: Vec<_> = m.counters.families().collect();
    fams.sort_by_key(|(f, _)| f.name);
    for (f, series) in fams {
        let name = format!("{}_total", f.name);
        header(o, &name, "counter", f.help);
        let mut rows: Vec<_> = series.iter().collect();
        rows.sort();
        for (key, n) in rows {
            let labels: Vec<String> = f
                .labels
                .iter()
                .zip(key.split(crate::metrics::counters::SEP))
                .map(|(l, v)| format!("{l}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(o, "shardgate_{name}{{{}}} {n}", labels.join(","));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{counters, Driver, Sample, WorkerMetrics};

    #[test]
    fn renders_counters_histograms_and_families() {
        let mut w = WorkerMetrics::new(0, Driver::IoUring);
        for us in [300, 2_000, 70_000_000] {
            w.record_sample(&Sample {
                route: None,
                status: 200,
                total_us: us,
                upstream_us: Some(us / 2),
                deployment: None,
                bytes_in: 5,
                bytes_out: 7,
            });
        }
        w.counters
            .add(&counters::AUTH_REJECTIONS, &["bad \"sig\""], 2);
        let m = Merged::from_workers(vec![w]);
        let reload = ReloadStatus::default();
        let text = render(
            &m,
            &Extra {
                reload: &reload,
                draining: false,
                workers_expected: 1,
            },
        );
        assert!(text.contains("shardgate_requests_total{route=\"(unmatched)\",status=\"200\"} 3"));
        assert!(text.contains(
            "shardgate_request_duration_seconds_bucket{route=\"(unmatched)\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains(
            "shardgate_request_duration_seconds_bucket{route=\"(unmatched)\",le=\"60\"} 2"
        ));
        assert!(text.contains(
            "shardgate_request_duration_seconds_bucket{route=\"(unmatched)\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("shardgate_worker_info{worker=\"0\",driver=\"io_uring\"} 1"));
        assert!(text.contains("shardgate_auth_rejections_total{reason=\"bad \\\"sig\\\"\"} 2"));
    }
}
