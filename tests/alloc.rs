//! The allocation budget (issue #13): a warm worker serves a request through the full AI
//! pipeline — JWT (HS256), the body's `model` split 80/20, a per-subject quota, the proxy to
//! the real mock backend, metrics and the access log — without one heap allocation, for a
//! non-streamed chat completion and for a streamed one; and the same with both deployments
//! behind the Anthropic provider adapter (issue #15), held to the same budget.
//!
//! A counting global allocator (this test binary only) counts the allocations made on the
//! engine's worker threads (`shardgate-w*`) while the measured requests run; client, mock,
//! coordination and access-log writer threads are not counted. Run with
//! `SHARDGATE_ALLOC_TRACE=1` to print a backtrace of each distinct allocation site:
//! `SHARDGATE_ALLOC_TRACE=1 cargo test --test alloc -- --nocapture`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use common::*;

/// Counts allocations on worker threads while [`MEASURING`] is set.
struct Counting;

static MEASURING: AtomicBool = AtomicBool::new(false);
static TRACING: AtomicBool = AtomicBool::new(false);
static WORKER_ALLOCS: AtomicU64 = AtomicU64::new(0);

/// Most distinct allocation sites kept for the trace.
const MAX_TRACES: usize = 64;
/// One allocation in this many is traced (a prime, so no per-request pattern hides a site).
const TRACE_STRIDE: u64 = 97;

/// What a thread is, decided on its first allocation while measuring.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Unknown,
    Worker,
    Other,
}

thread_local! {
    static ROLE: Cell<Role> = const { Cell::new(Role::Unknown) };
    /// Set while this thread runs the allocator's own bookkeeping (which may allocate).
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

#[allow(clippy::disallowed_types)] // test-only bookkeeping, never on the gateway's data path
static TRACES: std::sync::Mutex<Option<HashMap<String, u64>>> = std::sync::Mutex::new(None);

fn note() {
    if !MEASURING.load(Ordering::Relaxed) {
        return;
    }
    let _ = BUSY.try_with(|busy| {
        if busy.get() {
            return;
        }
        busy.set(true);
        let role = ROLE.with(|r| {
            if r.get() == Role::Unknown {
                let worker = thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("shardgate-w"));
                r.set(if worker { Role::Worker } else { Role::Other });
            }
            r.get()
        });
        if role == Role::Worker {
            let n = WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
            // Resolving a backtrace takes milliseconds: only every TRACE_STRIDE-th allocation
            // is traced, so the worker stays fast enough for its quota leases.
            if TRACING.load(Ordering::Relaxed) && n % TRACE_STRIDE == 0 {
                trace();
            }
        }
        busy.set(false);
    });
}

/// Records where this allocation came from (called with [`BUSY`] set).
fn trace() {
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    // The frames above the allocator's own (function names only, not file lines).
    let site: Vec<&str> = bt
        .lines()
        .filter(|l| !l.trim_start().starts_with("at "))
        .skip_while(|l| !l.contains("__rust_alloc") && !l.contains("__rust_realloc"))
        .skip(1)
        .filter(|l| !l.contains("alloc::raw_vec") && !l.contains("core::ops::function"))
        .take(16)
        .collect();
    let mut traces = TRACES.lock().unwrap_or_else(|e| e.into_inner());
    let map = traces.get_or_insert_with(HashMap::new);
    let key = site.join("\n");
    if map.len() < MAX_TRACES || map.contains_key(&key) {
        *map.entry(key).or_insert(0) += 1;
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// atomics and (while measuring) thread-locals guarded against re-entry.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Client connections, one subject each.
const CLIENTS: usize = 4;
/// Measured requests of each kind.
const REQUESTS: usize = 10_000;
/// Requests of each kind before measuring (pools, slots, series, leases warm up).
const WARMUP: usize = 2_000;
/// Allocations per request a warm worker may make today: `[non-streamed, streamed]`. The
/// issue's target is `[0, 0]`; each step that removes allocations lowers this, so the count
/// can only go down. History: 41 / 50 (baseline), 15 / 19 (body model spliced in place),
/// 3 / 6 (usage read from a reused tape; no boxed `Vec` iterators from simd-json's prelude),
/// 2 / 2 (tap buffers and SSE scanners reused per worker), 1 / 1 (identity strings reused
/// per worker), 0 / 0 (a pooled upstream connection is peeked at reuse instead of keeping a
/// receive posted whose cancel allocated in monoio's `Canceller::cancel`; see `pool`).
const BUDGET_PER_REQUEST: [u64; 2] = [0, 0];
/// Allocations not made for any one request are allowed up to one per this many requests.
const RARE: usize = 20;

/// The deployments' extra keys for requests translated by the Anthropic adapter (issue #15),
/// to the mock's `/v1/messages`.
const ANTHROPIC: &str = "provider = \"anthropic\"\napi_key = { value = \"sk-ant-test\" }";

/// The gateway's config; `extra`: keys added to both deployments.
fn config(mock: SocketAddr, log: &std::path::Path, extra: &str) -> String {
    let deployments = deployment(
        "m-a",
        "1.0.0",
        &[mock],
        &format!("served_name = \"mock-a\"\n{extra}"),
    ) + &deployment(
        "m-b",
        "1.0.0",
        &[mock],
        &format!("served_name = \"mock-b\"\n{extra}"),
    );
    let split = model_route(
        "/v1/chat/completions",
        r#"{ model = "m-a", weight = 80 }, { model = "m-b", weight = 20 }"#,
        "",
    );
    let quota = "[quota]\n".to_string()
        + &quota_rule(
            "per-subject",
            "subject",
            "requests_per_minute = 100000000\ntokens_per_minute = 1000000000",
        );
    // The subject is also copied to an upstream header (the anchors' AI gateway config does),
    // so a verified-token cache hit copies mapped claim headers too.
    let claim_header = "[[auth.claim_headers]]\nclaim = \"sub\"\nheader = \"x-subject\"\n";
    // The verified-token cache is set associative: when more of the run's 100 tokens (fresh
    // signatures every run) land in one set than it has ways, they evict each other and every
    // request carrying one is verified again — ~1000 allocations that belong to the cache's
    // associativity, not to a warm request path. With two ways and the default 4096 entries
    // that was ~3.6 % of gateways (10 % of runs of this file); with four ways it is ~8e-5,
    // and in 65536 entries ~3e-10.
    format!(
        "{}{claim_header}{deployments}{split}{quota}[metrics]\nper_route = true\n[access_log]\npath = {:?}\nsample_rate = 1.0\n",
        auth_hs256("token_cache_entries = 65536\n"),
        log.display().to_string()
    )
}

/// A chat completion request, streamed or not, as raw bytes.
fn request(token: &str, stream: bool) -> Vec<u8> {
    let body = format!(
        r#"{{"model":"chat","stream":{stream},"max_tokens":16,"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `n` requests on `c`, one after another, and checks every response (its `id` starts
/// with `id`: who answered).
fn drive(c: &mut Client, req: &[u8], n: usize, stream: bool, id: &str) {
    for _ in 0..n {
        c.send(req);
        let r = c.read_response().expect("a response");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains(id), "{id}: {}", r.text());
        if stream {
            assert!(r.text().contains("data: [DONE]"), "{}", r.text());
        } else {
            assert!(r.text().contains("\"usage\""), "{}", r.text());
        }
    }
}

/// Subjects each client rotates through: together more than the labelled counters' cap
/// (`MAX_SERIES_PER_FAMILY`, tokens by subject × model), so the long tail is measured too.
const SUBJECTS_PER_CLIENT: usize = 25;

/// Every client's tokens, minted once per measurement (clients keep their tokens, as real
/// ones do; a token minted anew each round would be a verified-token cache miss).
fn tokens() -> Arc<Vec<Vec<String>>> {
    Arc::new(
        (0..CLIENTS)
            .map(|i| {
                (0..SUBJECTS_PER_CLIENT)
                    .map(|k| token(&format!("user-{i}-{k}")))
                    .collect()
            })
            .collect(),
    )
}

/// Runs `per_client` requests of each kind on every client at once.
fn round(
    clients: &mut Vec<Client>,
    tokens: &Arc<Vec<Vec<String>>>,
    per_client: usize,
    stream: bool,
    id: &'static str,
) {
    let start = Arc::new(Barrier::new(clients.len()));
    let handles: Vec<_> = clients
        .drain(..)
        .enumerate()
        .map(|(i, mut c)| {
            let start = start.clone();
            let tokens = tokens.clone();
            thread::spawn(move || {
                let reqs: Vec<Vec<u8>> = tokens[i].iter().map(|t| request(t, stream)).collect();
                start.wait();
                for n in 0..per_client {
                    drive(&mut c, &reqs[n % reqs.len()], 1, stream, id);
                }
                c
            })
        })
        .collect();
    for h in handles {
        clients.push(h.join().expect("client thread"));
    }
}

/// The `[server]` settings measured: the defaults, then low-latency mode (a busy poll and a
/// ring with deferred task runs), whose spin must not allocate per request either.
const SERVERS: [&str; 2] = [
    "",
    "busy_poll_us = 200\n[server.io_uring]\nsingle_issuer = true\ndefer_taskrun = true",
];

/// One measurement at a time: the counter counts the workers of every gateway in the process.
#[allow(clippy::disallowed_types)] // test-only, never on the gateway's data path
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_warm_worker_serves_the_full_pipeline_without_allocating() {
    for server in SERVERS {
        assert_within_budget(server, measure(server, "", "\"id\":\"chatcmpl-"));
    }
}

/// The same pipeline with both deployments behind the Anthropic adapter: the request is
/// translated from the worker's scratch tape and the answer (a JSON body, an event stream)
/// translated back in reused buffers, so the budget is the same.
#[test]
fn an_adapted_request_allocates_no_more_than_a_pass_through_one() {
    // The mock's Messages ids: the adapter translated both ways.
    assert_within_budget("", measure("", ANTHROPIC, "\"id\":\"msg_mock"));
}

fn assert_within_budget(server: &str, counts: [u64; 2]) {
    // Plus a few allocations not tied to one request (a channel block, a log buffer's
    // growth): up to one per RARE requests.
    let budget = BUDGET_PER_REQUEST.map(|n| n * REQUESTS as u64 + (REQUESTS / RARE) as u64);
    assert!(
        counts[0] <= budget[0] && counts[1] <= budget[1],
        "[server] {server:?}: a warm worker allocated {counts:?}, more than the budget \
         {budget:?} (run with SHARDGATE_ALLOC_TRACE=1 -- --nocapture for sites)"
    );
}

/// Worker allocations over [`REQUESTS`] warm requests, `[non-streamed, streamed]`, on a gateway
/// with `server` settings and `extra` keys on the deployments; every response's `id` starts
/// with `id`.
fn measure(server: &str, extra: &str, id: &'static str) -> [u64; 2] {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mock = shardgate_mock::spawn(
        shardgate_mock::MockConfig {
            stream_chunks: 8,
            stream_gap_ms: 0,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        1,
    )
    .expect("mock starts");
    let dir = std::env::temp_dir().join(format!("shardgate-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let gw = gateway_with(
        &format!("listen = \"127.0.0.1:0\"\nworkers = 1\npin = false\n{server}"),
        &config(mock.addr(), &log, extra),
    );
    let addr = gw.local_addr();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(addr)).collect();
    let tokens = tokens();
    for stream in [false, true] {
        round(&mut clients, &tokens, WARMUP / CLIENTS, stream, id);
    }
    TRACING.store(
        std::env::var_os("SHARDGATE_ALLOC_TRACE").is_some(),
        Ordering::Relaxed,
    );
    let mut counts = [0u64; 2];
    for (i, stream) in [false, true].into_iter().enumerate() {
        let before = WORKER_ALLOCS.load(Ordering::Relaxed);
        MEASURING.store(true, Ordering::SeqCst);
        round(&mut clients, &tokens, REQUESTS / CLIENTS, stream, id);
        MEASURING.store(false, Ordering::SeqCst);
        counts[i] = WORKER_ALLOCS.load(Ordering::Relaxed) - before;
    }
    let per = |n: u64| n as f64 / REQUESTS as f64;
    eprintln!(
        "[server] {server:?}: worker allocations: {} over {REQUESTS} non-streamed requests ({:.3}/request), \
         {} over {REQUESTS} streamed requests ({:.3}/request)",
        counts[0],
        per(counts[0]),
        counts[1],
        per(counts[1]),
    );
    let traces = TRACES.lock().unwrap().take().unwrap_or_default();
    let mut traces: Vec<_> = traces.into_iter().collect();
    traces.sort_by_key(|t| std::cmp::Reverse(t.1));
    for (site, n) in &traces {
        eprintln!("--- {n} traced allocation(s) (one in {TRACE_STRIDE}) at:\n{site}");
    }
    drop(clients);
    drop(gw);
    drop(mock);
    let _ = std::fs::remove_dir_all(&dir);
    counts
}
