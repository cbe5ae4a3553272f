//! The metrics hot path: one request recorded into a worker's metrics (per-route on and off),
//! one sampled-out and one sampled-in access log record, and a control-plane merge.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::access_log::WorkerLog;
use shardgate::metrics::merge::Merged;
use shardgate::metrics::{Driver, Sample, WorkerMetrics};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/v1/*rest"
upstream = "up"
[[routes]]
path = "/health"
upstream = "up"
"#;

fn sample(i: u64) -> Sample {
    Sample {
        route: Some((i % 2) as u32),
        status: if i % 50 == 0 { 503 } else { 200 },
        total_us: 800 + (i * 7919) % 5000,
        upstream_us: Some(700 + (i * 7919) % 4000),
        deployment: None,
        bytes_in: 300,
        bytes_out: 900,
    }
}

fn record(c: &mut Criterion) {
    let snap = shardgate::config::from_str(CONFIG, std::path::Path::new("."), 1).unwrap();
    let mut m = WorkerMetrics::new(0, Driver::IoUring);
    m.set_routes(
        snap.generation,
        snap.metrics.per_route,
        snap.metrics.label_series,
        &snap.router,
    );
    let mut i = 0u64;
    c.bench_function("metrics/record_sample per_route", |b| {
        b.iter(|| {
            i += 1;
            m.record_sample(black_box(&sample(i)));
        })
    });
    m.per_route = false;
    c.bench_function("metrics/record_sample totals only", |b| {
        b.iter(|| {
            i += 1;
            m.record_sample(black_box(&sample(i)));
        })
    });
    let (tx, rx) = crossbeam_channel::bounded(1 << 20);
    let mut log = WorkerLog::new(tx.clone(), 0, 0.01);
    c.bench_function("access_log/record 1% sampled", |b| {
        b.iter(|| {
            i += 1;
            log.record(&m, "0badc0de-0-1", black_box(&sample(i)));
        })
    });
    let mut all = WorkerLog::new(tx, 0, 1.0);
    c.bench_function("access_log/record every request", |b| {
        b.iter(|| {
            i += 1;
            all.record(&m, "0badc0de-0-1", black_box(&sample(i)));
            if rx.len() > 1000 {
                rx.try_iter().for_each(drop);
            }
        })
    });
    let workers: Vec<WorkerMetrics> = (0..8)
        .map(|w| {
            let mut m = WorkerMetrics::new(w, Driver::IoUring);
            m.set_routes(
                snap.generation,
                snap.metrics.per_route,
                snap.metrics.label_series,
                &snap.router,
            );
            (0..10_000).for_each(|i| m.record_sample(&sample(i)));
            m
        })
        .collect();
    c.bench_function("merge/8 workers x 2 routes", |b| {
        b.iter(|| Merged::from_workers(black_box(workers.clone())))
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
