//! loadgen's library entry against an in-process mock on loopback.
use std::time::Duration;

use loadtest::{run, LoadConfig};
use shardgate_mock::{self as mock, MockConfig, MockHandle};

fn mock() -> MockHandle {
    mock::spawn(MockConfig::default(), "127.0.0.1:0".parse().unwrap(), 1).expect("mock starts")
}

fn percentiles_ordered(h: &hdrhistogram::Histogram<u64>) {
    let ps: Vec<u64> = [50.0, 90.0, 99.0, 99.9]
        .iter()
        .map(|&p| h.value_at_percentile(p))
        .collect();
    assert!(ps[0] > 0, "p50 present");
    assert!(ps.windows(2).all(|w| w[0] <= w[1]), "ordered: {ps:?}");
    assert!(ps[3] <= h.max());
}

#[test]
fn open_loop_sends_at_the_requested_rate() {
    let m = mock();
    let mut cfg = LoadConfig::new(m.addr(), "/health");
    cfg.connections = 4;
    cfg.threads = 2;
    cfg.rate = Some(500.0);
    cfg.warmup = Duration::from_millis(200);
    cfg.duration = Duration::from_secs(1);
    let before = m.requests();
    let r = run(&cfg).unwrap();
    // 500 req/s × 1 s measured; allow 5 % for the boundaries.
    assert!(
        (475..=525).contains(&r.completed),
        "completed {}",
        r.completed
    );
    assert_eq!(r.error_count(), 0);
    assert_eq!(r.status.get(&200), Some(&r.completed));
    // Warmup requests reached the server but were not recorded.
    let served = m.requests() - before;
    assert!((575..=625).contains(&served), "served {served}");
    percentiles_ordered(&r.total);
    percentiles_ordered(&r.ttfb);
    assert!(r.ttfb.max() <= r.total.max());
}

#[test]
fn streamed_responses_record_event_histograms() {
    let m = mock();
    let mut cfg = LoadConfig::new(m.addr(), "/v1/chat/completions");
    cfg.method = "POST".into();
    cfg.headers.push(("x-mock-chunks".into(), "4".into()));
    cfg.headers.push(("x-mock-gap-ms".into(), "5".into()));
    cfg.tokens = vec!["t1".into(), "t2".into()];
    cfg.body =
        br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_vec();
    cfg.connections = 2;
    cfg.rate = Some(40.0);
    cfg.duration = Duration::from_millis(800);
    let r = run(&cfg).unwrap();
    assert_eq!(r.error_count(), 0);
    assert!(r.completed >= 28, "completed {}", r.completed);
    assert_eq!(r.streamed, r.completed);
    // Events: role, 4 content, finish, [DONE] = 7, so 6 gaps per response.
    assert_eq!(r.event_gap.len(), 6 * r.completed);
    // Four 5 ms gaps before the last content chunk: total ≥ 20 ms, first event well before.
    assert!(r.total.value_at_percentile(50.0) >= 20_000);
    assert!(r.first_event.value_at_percentile(50.0) < r.total.value_at_percentile(50.0));
    percentiles_ordered(&r.first_event);
    percentiles_ordered(&r.event_gap);
}

/// One 200 ms server stall: open loop counts every request that should have been sent during
/// it (p99 shows it); closed loop sends nothing meanwhile, so it is one sample (p99 hides it).
#[test]
fn stall_shows_in_open_loop_but_hides_in_closed_loop() {
    let run_with_stall = |rate: Option<f64>| {
        let m = mock();
        let mut cfg = LoadConfig::new(m.addr(), "/health");
        cfg.rate = rate;
        cfg.warmup = Duration::from_millis(100);
        cfg.duration = Duration::from_millis(1500);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(700));
                m.pause_once(200);
            });
            run(&cfg).unwrap()
        })
    };
    let open = run_with_stall(Some(1000.0));
    assert_eq!(open.error_count(), 0);
    assert!(
        open.total.value_at_percentile(99.0) >= 100_000,
        "open p99 {}",
        open.total.value_at_percentile(99.0)
    );
    let closed = run_with_stall(None);
    assert_eq!(closed.error_count(), 0);
    assert!(
        closed.total.max() >= 190_000,
        "closed max {}",
        closed.total.max()
    );
    assert!(
        closed.total.value_at_percentile(99.0) < 50_000,
        "closed p99 {}",
        closed.total.value_at_percentile(99.0)
    );
}

#[test]
fn dead_server_counts_connect_errors() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = LoadConfig::new(addr, "/");
    cfg.rate = Some(100.0);
    cfg.duration = Duration::from_millis(300);
    let r = run(&cfg).unwrap();
    assert_eq!(r.completed, 0);
    assert!(
        r.errors
            .get(&loadtest::report::ErrorKind::Connect)
            .copied()
            .unwrap_or(0)
            > 0
    );
}
