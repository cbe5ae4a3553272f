//! Reload under load: steady keep-alive traffic while the config is rewritten 50 times
//! (split weights flipped, an extra route added and removed, one invalid file in the middle).
//! No traffic request may fail, every worker must reach the final generation, and the invalid
//! file must be reported (file and key) without changing anything.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use shardgate::config;
use shardgate::control::{lock_view, Control, Start, WatchSettings};
use shardgate::runtime::Engine;
use shardgate_mock::{self as mock, MockConfig, MockHandle};

const REWRITES: usize = 50;
/// Rewrites applied by the control thread's file watch instead of `Control::reload()`.
const WATCHED: std::ops::Range<usize> = 0..2;
/// The one invalid file.
const INVALID: usize = 25;
const CLIENTS: usize = 3;

fn mock_named(model: &str) -> MockHandle {
    let cfg = MockConfig {
        model: model.into(),
        ..Default::default()
    };
    mock::spawn(cfg, "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

/// `weight_a`/`weight_b` are TOML values (so the invalid file can give a string).
fn config_text(
    a: SocketAddr,
    b: SocketAddr,
    weight_a: &str,
    weight_b: &str,
    extra: bool,
) -> String {
    let split = format!(
        "{{ model = \"model-a\", weight = {weight_a} }}, {{ model = \"model-b\", weight = {weight_b} }}"
    );
    [
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n".to_string(),
        upstream("extra", &[a], ""),
        deployment("model-a", "1.0.0", &[a], ""),
        deployment("model-b", "1.0.0", &[b], ""),
        model_route("/v1/chat/completions", &split, "methods = [\"POST\"]"),
        if extra {
            route("/echo/*rest", "extra", "")
        } else {
            String::new()
        },
    ]
    .concat()
}

/// What rewrite `i` writes: (weight of A, weight of B, extra route present).
fn plan(i: usize) -> (u32, u32, bool) {
    let (wa, wb) = if i % 2 == 0 { (90, 10) } else { (10, 90) };
    let extra = (10..20).contains(&i) || (30..40).contains(&i);
    (wa, wb, extra)
}

/// Replaces the file atomically (new inode), so the watcher never reads half a file.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A chat completion request, as bytes for a keep-alive connection.
fn chat_request() -> Vec<u8> {
    let body = chat_body("chat");
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[derive(Default)]
struct Traffic {
    ok: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
}

/// One client: POSTs chat completions back to back on a keep-alive connection until `stop`.
/// Returns its first few failures.
fn client_loop(addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Traffic>) -> Vec<String> {
    let req = chat_request();
    let mut failures = Vec::new();
    let mut fail = |what: String| {
        t.failed.fetch_add(1, Ordering::Relaxed);
        if failures.len() < 5 {
            failures.push(what);
        }
    };
    let mut conn = Client::connect(addr);
    while !stop.load(Ordering::Relaxed) {
        conn.send(&req);
        match conn.read_response() {
            Some(r) if r.status == 200 && r.header("x-mock-model").is_some() => {
                t.ok.fetch_add(1, Ordering::Relaxed);
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    t.reconnects.fetch_add(1, Ordering::Relaxed);
                    conn = Client::connect(addr);
                }
            }
            Some(r) => {
                fail(format!("status {}: {}", r.status, r.text()));
            }
            None => {
                fail("connection closed without a response".into());
                conn = Client::connect(addr);
            }
        }
    }
    failures
}

/// Waits until every worker reports at least `generation`; returns what they report.
fn wait_workers(engine: &Engine, generation: u64, within: Duration) -> Vec<u64> {
    let deadline = Instant::now() + within;
    loop {
        let gens: Vec<u64> = engine
            .collect()
            .iter()
            .map(|m| m.config_generation)
            .collect();
        if gens.len() == engine.worker_count() && gens.iter().all(|&g| g >= generation) {
            return gens;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not reach generation {generation}: {gens:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// The extra route answers 200 from the mock's echo when present, 404 from the gateway when not.
fn probe_extra(addr: SocketAddr) -> u16 {
    get(addr, "/echo/extra").status
}

#[test]
fn reload_under_load_applies_50_rewrites_without_failing_a_request() {
    let started = Instant::now();
    let (a, b) = (mock_named("A"), mock_named("B"));
    let dir: PathBuf = std::env::temp_dir().join(format!("sg-reload-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.toml");
    write_atomic(&path, &config_text(a.addr(), b.addr(), "50", "50", false));

    let snap = config::load(&path, 1).unwrap();
    let mut engine = Engine::start(snap.clone()).unwrap();
    let control = Control::spawn(Start::new(path.clone(), snap, engine.inboxes())).unwrap();
    let gw = engine.local_addr();
    let generation = || lock_view(&control.view()).status.generation;
    assert_eq!(probe_extra(gw), 404, "no extra route at start");

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (s, t) = (stop.clone(), traffic.clone());
            thread::spawn(move || client_loop(gw, s, t))
        })
        .collect();
    // Traffic is flowing before the first rewrite.
    while traffic.ok.load(Ordering::Relaxed) < 20 {
        assert!(started.elapsed() < Duration::from_secs(5), "no traffic");
        thread::sleep(Duration::from_millis(5));
    }

    let mut current = 1u64;
    let mut extra_now = false;
    let mut last_explicit = 0u64;
    for i in 0..REWRITES {
        let (wa, wb, extra) = plan(i);
        if i == INVALID {
            // A weight given as a string, and the extra route that must not appear.
            let text = config_text(
                a.addr(),
                b.addr(),
                "\"ninety\"",
                &wb.to_string(),
                !extra_now,
            );
            write_atomic(&path, &text);
            let before = lock_view(&control.view()).status.failures;
            let err = control.reload().expect_err("the invalid file is rejected");
            let shown = err.to_string();
            assert_eq!(err.file, path, "{shown}");
            assert!(!err.problems.is_empty(), "{shown}");
            assert!(
                shown.contains(&path.display().to_string()),
                "the error names the file: {shown}"
            );
            // Type errors come from the TOML parser, which names the line of the bad weight
            // rather than its key path.
            let line = 1 + text.lines().position(|l| l.contains("ninety")).unwrap();
            assert!(
                shown.contains(&format!("line {line}")) && shown.contains("ninety"),
                "the error points at the weight (line {line}): {shown}"
            );
            let view = control.view();
            let v = lock_view(&view);
            assert_eq!(v.status.generation, current, "generation unchanged");
            assert!(v.status.failures > before, "failure counted");
            let last = v.status.last_error.clone().unwrap_or_default();
            assert!(last.contains(&path.display().to_string()), "{last}");
            drop(v);
            let gens = wait_workers(&engine, current, Duration::from_secs(2));
            assert!(gens.iter().all(|&g| g == current), "{gens:?}");
            assert_eq!(
                probe_extra(gw),
                if extra_now { 200 } else { 404 },
                "the invalid file's route change did not apply"
            );
            continue;
        }
        write_atomic(
            &path,
            &config_text(a.addr(), b.addr(), &wa.to_string(), &wb.to_string(), extra),
        );
        let applied = if WATCHED.contains(&i) {
            // The file watch alone picks the change up once it has settled.
            let deadline = Instant::now() + WatchSettings::default().max_apply_delay() * 4;
            loop {
                let g = generation();
                if g > current {
                    break g;
                }
                assert!(Instant::now() < deadline, "watcher missed rewrite {i}");
                thread::sleep(Duration::from_millis(20));
            }
        } else {
            let g = control
                .reload()
                .unwrap_or_else(|e| panic!("rewrite {i}: {e}"));
            last_explicit = g;
            g
        };
        assert!(
            applied > current,
            "rewrite {i}: generation {applied} after {current}"
        );
        current = applied;
        if extra != extra_now {
            wait_workers(&engine, current, Duration::from_secs(2));
            assert_eq!(
                probe_extra(gw),
                if extra { 200 } else { 404 },
                "rewrite {i} (generation {current}): extra route {}",
                if extra { "added" } else { "removed" }
            );
            extra_now = extra;
        }
    }
    assert!(!extra_now);

    // The watcher may re-apply the (unchanged) last file once after the explicit reloads;
    // wait past its settle interval, then every worker must be on the generation in force.
    thread::sleep(WatchSettings::default().max_apply_delay() + Duration::from_millis(300));
    let final_gen = generation();
    assert!(final_gen >= last_explicit, "{final_gen} < {last_explicit}");
    let gens = wait_workers(&engine, final_gen, Duration::from_secs(3));
    assert!(
        gens.iter().all(|&g| g == final_gen),
        "{gens:?} vs {final_gen}"
    );
    assert_eq!(generation(), final_gen, "nothing applied after settling");

    // The final split (A 10 / B 90) is in effect.
    let (wa, wb, _) = plan(REWRITES - 1);
    assert_eq!((wa, wb), (10, 90));
    let mut conn = Client::connect(gw);
    let req = chat_request();
    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..200 {
        conn.send(&req);
        let r = conn.read_response().expect("a response");
        assert_eq!(r.status, 200, "{}", r.text());
        match r.header("x-mock-model") {
            Some("A") => to_a += 1,
            Some("B") => to_b += 1,
            other => panic!("served by {other:?}"),
        }
    }
    assert!(
        (4..=45).contains(&to_a),
        "A {to_a} / B {to_b} for weights 10/90"
    );

    stop.store(true, Ordering::Relaxed);
    let first_failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let (ok, failed) = (
        traffic.ok.load(Ordering::Relaxed),
        traffic.failed.load(Ordering::Relaxed),
    );
    let failures = lock_view(&control.view()).status.failures;
    eprintln!(
        "reload under load: {ok} ok, {failed} failed, {} reconnects; final generation {final_gen} \
         (last explicit {last_explicit}); reload failures {failures}; final split A {to_a} / B {to_b}; {:?}",
        traffic.reconnects.load(Ordering::Relaxed),
        started.elapsed()
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} traffic requests failed: {:?}",
        ok + failed,
        first_failures
    );
    assert!(ok >= 200, "too little traffic: {ok}");
    drop(control);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
