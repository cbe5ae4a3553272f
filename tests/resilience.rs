//! Circuit breakers, retry budget and timeouts through the running gateway: two workers, one
//! upstream with two mock endpoints.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use shardgate::breaker::{BreakerSnapshot, StateKind};
use shardgate::runtime::Engine;
use shardgate_mock::{self as mock, MockConfig, MockHandle};

/// Small windows and intervals so that every test finishes in a few seconds.
const FAST_BREAKER: &str = r#"[defaults.breaker]
consecutive_failures = 3
min_calls = 1000
window_ms = 2000
open_base_ms = 400
open_jitter = 0.0
half_open_probes = 1
"#;

fn mock() -> MockHandle {
    mock::spawn(MockConfig::default(), "127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

fn config(defaults: &str, endpoints: &[SocketAddr], extra_upstream: &str) -> String {
    format!(
        "{defaults}\n{}{}",
        upstream("up", endpoints, extra_upstream),
        route("/*rest", "up", "")
    )
}

/// Every endpoint's state as the decider holds it.
fn states(gw: &Engine) -> Vec<StateKind> {
    let s: BreakerSnapshot = gw.breakers().expect("breaker snapshot");
    s.endpoints.iter().map(|e| e.state).collect()
}

/// Polls `cond` every 20 ms for up to `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn models(addr: SocketAddr) -> Response {
    get(addr, "/v1/models")
}

#[test]
fn failing_endpoint_trips_everywhere_and_recovers() {
    let (a, b) = (mock(), mock());
    // Open for 3 s: long enough that the 40 requests below all fall inside the open interval
    // however slow a loaded machine serves them (with 400 ms they did not always).
    let breaker = FAST_BREAKER.replace("open_base_ms = 400", "open_base_ms = 3000");
    let gw = gateway(&config(&breaker, &[a.addr(), b.addr()], ""));
    let addr = gw.local_addr();
    a.set_fail_status(Some(503));
    // Fresh connections spread over both workers; A's 503s trip its breaker.
    let tripped = eventually(Duration::from_secs(3), || {
        let _ = models(addr);
        states(&gw)[0] == StateKind::Open
    });
    assert!(tripped, "A's breaker opens: {:?}", states(&gw));
    assert_eq!(states(&gw)[1], StateKind::Closed);
    // The decision reaches every worker within a few ticks.
    thread::sleep(Duration::from_millis(50));
    let a_before = a.requests();
    for i in 0..40 {
        let r = models(addr);
        assert_eq!(r.status, 200, "request {i} after the trip: {}", r.text());
    }
    assert_eq!(a.requests(), a_before, "no traffic to the open endpoint");

    // A recovers: after the open interval a probe closes the breaker and traffic returns.
    a.set_fail_status(None);
    let closed = eventually(Duration::from_secs(10), || {
        let r = models(addr);
        assert_eq!(r.status, 200, "{}", r.text());
        states(&gw)[0] == StateKind::Closed
    });
    assert!(closed, "A's breaker closes again: {:?}", states(&gw));
    thread::sleep(Duration::from_millis(50));
    let a_before = a.requests();
    for _ in 0..20 {
        assert_eq!(models(addr).status, 200);
    }
    assert!(a.requests() > a_before, "traffic returns to A");
}

#[test]
fn all_endpoints_open_answers_503_with_retry_after() {
    let (a, b) = (mock(), mock());
    let gw = gateway(&config(FAST_BREAKER, &[a.addr(), b.addr()], ""));
    let addr = gw.local_addr();
    a.set_fail_status(Some(503));
    b.set_fail_status(Some(503));
    let mut seen = None;
    let found = eventually(Duration::from_secs(3), || {
        let r = models(addr);
        if r.text().contains("upstream_unavailable") {
            seen = Some(r);
            true
        } else {
            false
        }
    });
    assert!(found, "gateway answers for itself once both are open");
    let r = seen.unwrap();
    assert_eq!(r.status, 503);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry), "retry-after {retry}");
    assert_eq!(states(&gw), vec![StateKind::Open, StateKind::Open]);
}

#[test]
fn hanging_upstream_times_out_with_504_and_counts_as_failure() {
    let a = mock();
    let defaults = "[defaults.breaker]\nconsecutive_failures = 2\nmin_calls = 1000\n";
    let gw = gateway(&config(
        defaults,
        &[a.addr()],
        "first_byte_timeout_ms = 300",
    ));
    let addr = gw.local_addr();
    a.set_hang(true);
    for _ in 0..2 {
        let t = Instant::now();
        let r = models(addr);
        let took = t.elapsed();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            took >= Duration::from_millis(280) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(1), || states(&gw)[0] == StateKind::Open),
        "two timeouts in a row trip the breaker"
    );
}

#[test]
fn stream_cut_closes_the_client_counts_and_is_not_retried() {
    let (a, b) = (mock(), mock());
    let defaults = "[defaults.breaker]\nconsecutive_failures = 1\nmin_calls = 1000\n";
    let gw = gateway(&config(defaults, &[a.addr(), b.addr()], ""));
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nx-mock-close-after-chunks: 2\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = Client::connect(gw.local_addr());
    c.send(raw.as_bytes());
    // The head went out, then the stream broke: the client sees a truncated response.
    let r = c.read_response();
    assert!(
        r.is_none(),
        "the truncated stream never looks complete: {r:?}"
    );
    assert!(c.is_closed(), "the client connection is closed");
    assert_eq!(
        a.requests() + b.requests(),
        1,
        "a cut stream is never retried"
    );
    assert!(
        eventually(Duration::from_secs(1), || states(&gw)
            .contains(&StateKind::Open)),
        "the cut counts as a failure: {:?}",
        states(&gw)
    );
}

#[test]
fn failed_health_checks_take_an_endpoint_out_and_bring_it_back() {
    let (a, b) = (mock(), mock());
    // The breaker stays out of the way: only health checks move traffic here.
    let defaults = "[defaults.breaker]\nconsecutive_failures = 1000\nmin_calls = 1000\n[defaults.health_check]\ninterval_ms = 50\ntimeout_ms = 50\nunhealthy_threshold = 1\nhealthy_threshold = 1\n";
    let gw = gateway(&config(defaults, &[a.addr(), b.addr()], ""));
    let addr = gw.local_addr();
    a.set_fail_status(Some(503));
    // Until the first failed probe lands, A still answers 503 itself.
    assert!(
        eventually(Duration::from_secs(2), || {
            (0..8).all(|_| models(addr).status == 200)
        }),
        "A leaves rotation"
    );
    let a_before = a.requests();
    for _ in 0..10 {
        assert_eq!(models(addr).status, 200);
    }
    // Only health probes reach A now (at most a few in this time).
    assert!(
        a.requests() - a_before < 10,
        "no traffic to the unhealthy endpoint"
    );
    a.set_fail_status(None);
    assert!(
        eventually(Duration::from_secs(2), || {
            let before = a.requests();
            (0..4).for_each(|_| assert_eq!(models(addr).status, 200));
            a.requests() >= before + 2
        }),
        "A returns to rotation"
    );
    assert_eq!(states(&gw), vec![StateKind::Closed, StateKind::Closed]);
}

#[test]
fn reload_keeps_breaker_state_by_endpoint_id() {
    let (a, b) = (mock(), mock());
    let text = config(FAST_BREAKER, &[a.addr(), b.addr()], "");
    let gw = gateway(&text);
    let addr = gw.local_addr();
    a.set_fail_status(Some(503));
    assert!(eventually(Duration::from_secs(3), || {
        let _ = models(addr);
        states(&gw)[0] == StateKind::Open
    }));
    // Same endpoints, another policy: A stays open, traffic keeps flowing to B.
    let reloaded = text.replace("half_open_probes = 1", "half_open_probes = 2");
    let full = format!("[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{reloaded}");
    let snap = shardgate::config::from_str(&full, std::path::Path::new("."), 2).unwrap();
    gw.apply(&snap);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(states(&gw)[0], StateKind::Open);
    for _ in 0..10 {
        assert_eq!(models(addr).status, 200);
    }
}

/// A failure reaches the decider at once, not on the worker's next inbox tick (100 ms,
/// `runtime::INBOX_TICK`): the outcome nudges the worker's inbox loop, which sends the report.
/// Ten endpoints (one upstream each) trip one after another on their first failure; waiting
/// for the tick each would take ~0.5 s in all (half a tick on average); the bound is half of
/// that, far above what the report's trip through the coordination thread costs.
#[test]
fn a_failure_reaches_the_decider_without_waiting_for_the_tick() {
    const ENDPOINTS: usize = 10;
    let mocks: Vec<_> = (0..ENDPOINTS).map(|_| mock()).collect();
    let mut cfg = "[defaults.breaker]\nconsecutive_failures = 1\nmin_calls = 1000\n\
                   open_base_ms = 60000\nopen_jitter = 0.0\n"
        .to_string();
    for (i, m) in mocks.iter().enumerate() {
        m.set_fail_status(Some(503));
        cfg += &upstream(&format!("u{i}"), &[m.addr()], "");
        cfg += &route(&format!("/e{i}/*rest"), &format!("u{i}"), "");
    }
    let gw = gateway(&cfg);
    let addr = gw.local_addr();
    let mut waited = Duration::ZERO;
    for i in 0..ENDPOINTS {
        assert_eq!(states(&gw)[i], StateKind::Closed, "endpoint {i}");
        let r = get(addr, &format!("/e{i}/v1/models"));
        assert_eq!(r.status, 503, "endpoint {i}: {}", r.text());
        let answered = Instant::now();
        while states(&gw)[i] != StateKind::Open {
            assert!(
                answered.elapsed() < Duration::from_secs(5),
                "endpoint {i} never opened"
            );
            thread::sleep(Duration::from_millis(1));
        }
        waited += answered.elapsed();
    }
    let tick = shardgate::runtime::INBOX_TICK;
    assert!(
        waited < tick * ENDPOINTS as u32 / 4,
        "{ENDPOINTS} trips took {waited:?} after their failures, as if each waited for the \
         {tick:?} tick"
    );
}
