//! Per-request cost of endpoint choice, each policy against round-robin in the same run.
//!
//! `cargo bench --bench balance -- --warm-up-time 1 --measurement-time 3`
//!
//! - `choice/<policy>/<n>`: one pick among `n` endpoints with the proxy's `eligible` (the
//!   breaker view's admitted set for the upstream, taken once per choice, and nothing tried
//!   yet), a fleet view with loads and EWMAs in place. Affinity with a key that is its
//!   endpoint's.
//! - `choice_free/<policy>/16`: the same with every endpoint eligible without asking the
//!   breaker view: the policy's own cost.
//! - `attempt/<policy>`: a pick plus the attempt's bookkeeping (counted in flight, a TTFB
//!   and a latency sample, counted out): everything endpoint choice adds to a request. The
//!   attempt starts at the clock read the proxy made for the choice and takes its samples at
//!   the clock reads the proxy makes for its own histograms, as in `proxy::attempt`, so
//!   nothing here reads the clock.
//! - `key/prompt`, `key/header`: computing the affinity key (a 2-message chat body already
//!   parsed with its opening located, as on a route to a prompt-keyed upstream; a header
//!   value). `key/prompt_reread`: the same from a body parsed without (the opening is read
//!   from the body again). `parse/chat`, `parse/chat_keyed`: the body parse without and with
//!   locating the opening.

use std::cell::RefCell;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::balance::key::{self, KeyHasher};
use shardgate::balance::{Attempt, FleetEndpoint, FleetView, Open, Tried, WorkerBalance};
use shardgate::breaker::local::WorkerResilience;
use shardgate::config::Snapshot;
use shardgate::model::JsonBody;
use shardgate::route::WorkerRng;

/// Each policy and the upstream keys that choose it.
const POLICIES: [(&str, &str); 4] = [
    ("round_robin", "balance = \"round_robin\""),
    ("least_requests", "balance = \"least_requests\""),
    ("p2c_ewma", "balance = \"p2c_ewma\""),
    (
        "affinity",
        "balance = \"affinity\"\naffinity = { key = { header = \"x-session-id\" } }",
    ),
];

fn snapshot(keys: &str, n: usize) -> Snapshot {
    let endpoints: Vec<String> = (0..n)
        .map(|i| format!("\"10.0.0.{}:8000\"", i + 1))
        .collect();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n[[upstreams]]\nname = \"up\"\nendpoints = [{}]\n{keys}\n",
        endpoints.join(", ")
    );
    shardgate::config::from_str(&text, Path::new("."), 1).expect("bench config")
}

/// A fleet view in which the other worker has 1..=n in flight and every endpoint has an EWMA.
fn fleet(n: usize) -> Arc<FleetView> {
    let endpoints: Vec<FleetEndpoint> = (0..n)
        .map(|i| FleetEndpoint {
            in_flight: 1 + (i as u32 * 7) % n as u32,
            gauge: 0,
            ttfb_us: 2_000.0 + 500.0 * i as f32,
            latency_us: 4_000.0,
        })
        .collect();
    let mut by_worker = vec![0; 2 * n];
    for (i, e) in endpoints.iter().enumerate() {
        by_worker[i] = e.in_flight;
    }
    Arc::new(FleetView {
        endpoints: endpoints.into(),
        by_worker: by_worker.into(),
    })
}

fn bench(c: &mut Criterion) {
    let key = key::hash(b"session-4242");
    for n in [3, 16] {
        for (name, keys) in POLICIES {
            let snap = snapshot(keys, n);
            let plan = &snap.balance.upstreams()[0];
            let view = RefCell::new(WorkerBalance::new(1, &snap.balance));
            view.borrow_mut().set_fleet(fleet(n));
            let res = WorkerResilience::new(1, 2, &snap.resilience, Instant::now());
            let mut rng = WorkerRng::new(7);
            let tried = Tried::default();
            let now = Instant::now();
            c.bench_function(&format!("choice/{name}/{n}"), |b| {
                b.iter(|| {
                    let admitted = res.admitted(plan.endpoint(0), plan.len(), now);
                    let open = Open {
                        admitted,
                        tried: &tried,
                    };
                    black_box(
                        view.borrow_mut()
                            .pick(plan, 0, Some(black_box(key)), &mut rng, open),
                    )
                })
            });
            if n == 16 {
                c.bench_function(&format!("choice_free/{name}/{n}"), |b| {
                    b.iter(|| {
                        black_box(view.borrow_mut().pick(
                            plan,
                            0,
                            Some(black_box(key)),
                            &mut rng,
                            |_| true,
                        ))
                    })
                });
            }
            if n == 3 {
                c.bench_function(&format!("attempt/{name}"), |b| {
                    b.iter(|| {
                        let admitted = res.admitted(plan.endpoint(0), plan.len(), now);
                        let open = Open {
                            admitted,
                            tried: &tried,
                        };
                        let i = view
                            .borrow_mut()
                            .pick(plan, 0, Some(black_box(key)), &mut rng, open)
                            .unwrap();
                        let a = Attempt::begin(&view, plan.endpoint(i), now);
                        a.head(200, now);
                        a.done(now);
                    })
                });
            }
        }
    }
    let body = br#"{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant that answers questions about the product catalog, in a friendly tone, citing the page you took it from."},{"role":"user","content":"Which of your laptops has the longest battery life, and how long does it last?"}]}"#.to_vec();
    let mut model = String::new();
    c.bench_function("parse/chat", |b| {
        b.iter(|| black_box(JsonBody::parse(black_box(&body), &mut model).is_ok()))
    });
    c.bench_function("parse/chat_keyed", |b| {
        b.iter(|| black_box(JsonBody::parse_keyed(black_box(&body), &mut model, true).is_ok()))
    });
    let mut keyed_model = String::new();
    let keyed = JsonBody::parse_keyed(&body, &mut keyed_model, true).unwrap();
    let json = JsonBody::parse(&body, &mut model).unwrap();
    for (name, json) in [("key/prompt", &keyed), ("key/prompt_reread", &json)] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut h = KeyHasher::new();
                black_box(json).feed_opening(1024, |p| h.piece(p));
                black_box(h.finish())
            })
        });
    }
    c.bench_function("key/header", |b| {
        b.iter(|| {
            black_box(key::hash(black_box(
                b"0f8fad5b-d9cb-469f-a165-70867728950e",
            )))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
