//! `/stats`: latency percentiles per route and overall, since start and for the current
//! interval, as JSON; and the table `shardgate stats` prints from that JSON.
//!
//! Shape: `{"generation", "since_start": Window, "interval": Window}` where a `Window` is
//! `{"seconds", "overall": Summary, "routes": {label: Summary}}` and a `Summary` is
//! `{"count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "statuses": {code: n}}`
//! (percentiles of total request latency, plus `upstream_p99_us` and `gateway_p99_us`).

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::metrics::merge::Merged;

/// Quantiles reported, with their JSON field names.
pub const QUANTILES: [(&str, f64); 5] = [
    ("p50_us", 0.5),
    ("p90_us", 0.9),
    ("p99_us", 0.99),
    ("p999_us", 0.999),
    ("max_us", 1.0),
];

fn quantiles(h: &Histogram<u64>, out: &mut Map<String, Value>) {
    for (name, q) in QUANTILES {
        let v = if h.is_empty() {
            0
        } else if q >= 1.0 {
            h.max()
        } else {
            h.value_at_quantile(q)
        };
        out.insert(name.into(), v.into());
    }
}

fn p99(h: &Histogram<u64>) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(0.99)
    }
}

/// One window (since start, or the interval) of a merge.
pub fn window(m: &Merged, seconds: f64) -> Value {
    let mut overall = Map::new();
    overall.insert("count".into(), m.total_us.len().into());
    quantiles(&m.total_us, &mut overall);
    overall.insert("upstream_p99_us".into(), p99(&m.upstream_us).into());
    let routes = summaries(&m.routes);
    let deployments = summaries(&m.deployments);
    json!({"seconds": seconds, "overall": overall, "routes": routes, "deployments": deployments})
}

/// One summary per label (route or deployment).
fn summaries(
    by_label: &std::collections::BTreeMap<Box<str>, crate::metrics::RouteMetrics>,
) -> Map<String, Value> {
    let mut routes = Map::new();
    for (label, r) in by_label {
        let mut s = Map::new();
        s.insert("count".into(), r.total_us.len().into());
        quantiles(&r.total_us, &mut s);
        s.insert("upstream_p99_us".into(), p99(&r.upstream_us).into());
        s.insert("gateway_p99_us".into(), p99(&r.gateway_us).into());
        let statuses: Map<String, Value> = r
            .statuses
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(st, n)| (st.to_string(), (*n).into()))
            .collect();
        s.insert("statuses".into(), statuses.into());
        routes.insert(label.to_string(), s.into());
    }
    routes
}

/// Renders a window of a `/stats` answer as a table (milliseconds).
pub fn table(stats: &Value, which: &str) -> String {
    let mut o = String::new();
    let w = &stats[which];
    let _ = writeln!(
        o,
        "{which} ({:.1} s, config generation {})",
        w["seconds"].as_f64().unwrap_or(0.0),
        stats["generation"]
    );
    let _ = writeln!(
        o,
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "route", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let mut row = |name: &str, s: &Value| {
        let ms = |k: &str| s[k].as_u64().unwrap_or(0) as f64 / 1000.0;
        let _ = writeln!(
            o,
            "{:<32} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            name,
            s["count"].as_u64().unwrap_or(0),
            ms("p50_us"),
            ms("p90_us"),
            ms("p99_us"),
            ms("p999_us"),
            ms("max_us")
        );
    };
    if let Some(routes) = w["routes"].as_object() {
        for (name, s) in routes {
            if s["count"].as_u64().unwrap_or(0) > 0 {
                row(name, s);
            }
        }
    }
    row("(all)", &w["overall"]);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Driver, Sample, WorkerMetrics};

    #[test]
    fn window_percentiles_are_ordered_and_table_renders() {
        let mut w = WorkerMetrics::new(0, Driver::Legacy);
        for us in 1..=1000u64 {
            w.record_sample(&Sample {
                route: None,
                status: 200,
                total_us: us * 10,
                upstream_us: None,
                deployment: None,
                bytes_in: 0,
                bytes_out: 0,
            });
        }
        let v = window(&Merged::from_workers(vec![w]), 1.0);
        let o = &v["overall"];
        assert_eq!(o["count"], 1000);
        let qs: Vec<u64> = QUANTILES
            .iter()
            .map(|(k, _)| o[*k].as_u64().unwrap())
            .collect();
        assert!(qs.windows(2).all(|p| p[0] <= p[1]), "{qs:?}");
        assert!((4_990..=5_010).contains(&qs[0]), "{qs:?}");
        let stats = json!({"generation": 3, "since_start": v});
        let t = table(&stats, "since_start");
        assert!(t.contains("(unmatched)") && t.contains("(all)"), "{t}");
    }
}
