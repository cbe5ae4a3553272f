//! How long a model registry change takes to reach every worker: from the admin request to
//! the moment every worker runs the new snapshot (the transaction with its fsync, the
//! validation of the combined config, the broadcast and every worker's confirmation), next
//! to an explicit reload of the same config file (no database) as the baseline, in one run.
//! The target is under 100 ms; the data path is not involved (routes come from the same
//! snapshot either way).
//!
//! `cargo bench --bench registry -- --warm-up-time 1 --measurement-time 5`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use shardgate::control::{self, Control, RegistryRequest, Start};
use shardgate::registry;
use shardgate::runtime::Engine;

/// How long one change may take to be confirmed before the bench gives up on it.
const CONFIRM: Duration = Duration::from_secs(5);

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = r#"
[server]
listen = "127.0.0.1:0"
workers = 2
pin = false
[registry]
path = "models.db"
[[deployments]]
model = "llama"
version = "1.0.0"
endpoints = ["127.0.0.1:9"]
[[deployments]]
model = "llama"
version = "1.1.0"
endpoints = ["127.0.0.1:9"]
[[routes]]
path = "/v1/chat/completions"
targets = [{ model = "llama", version = "=1.0.0", weight = 1 }]
"#;
    let path = dir.join("gw.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sg-bench-registry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = config(&dir);
    let loaded = registry::load(&path, 1).unwrap();
    let mut engine = Engine::start(loaded.snapshot.clone()).unwrap();
    let workers = engine.inboxes();
    let control = Control::spawn(Start::loaded(path.clone(), loaded, engine.inboxes())).unwrap();
    let tx = control.sender();
    let mut g = c.benchmark_group("change_in_force_on_every_worker");
    g.sample_size(30);
    g.bench_function("explicit_reload_baseline", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                control.reload().unwrap();
                workers.barrier(CONFIRM).unwrap();
            }
            start.elapsed()
        })
    });
    let mut weight = 0u32;
    g.bench_function("registry_split_change", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                weight = weight % 9 + 1;
                let body = json!({"path": "/v1/chat/completions", "targets": [
                    {"model": "llama", "version": "1.0.0", "weight": 10 - weight},
                    {"model": "llama", "version": "1.1.0", "weight": weight}]});
                let req = RegistryRequest::PutSplit {
                    who: "bench".into(),
                    body,
                };
                let reply = control::registry_via(&tx, req, CONFIRM).unwrap().unwrap();
                reply.applied.unwrap().barrier.wait(CONFIRM).unwrap();
            }
            start.elapsed()
        })
    });
    g.finish();
    drop(control);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
