//! `[server.io_uring]` and `server.busy_poll_us` (issue #13) through the real gateway: every
//! ring setting serves keep-alive traffic, a spinning worker still runs its timers (a slow
//! head gets its 408 while other clients keep the worker spinning), a worker whose spin ran
//! out wakes for the next request, and an engine with a busy poll shuts down. That the idle
//! receive still retires an upstream that over-sends under each setting is in
//! `tests/upstream.rs`. Speed is the loadtest's business (`loadtest/busy_poll.sh`).

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn one_worker(server: &str, up: &Upstream) -> shardgate::runtime::Engine {
    gateway_with(
        &format!("listen = \"127.0.0.1:0\"\nworkers = 1\npin = false\n{server}"),
        &(route_all(up.addr, "") + "[limits]\nheader_read_timeout_ms = 300\n"),
    )
}

fn get(c: &mut Client, n: usize) {
    c.send(format!("GET /r/{n} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
    let r = c.read_response().expect("a response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(&format!("/r/{n}")), "{}", r.text());
}

#[test]
fn every_ring_setting_serves_keep_alive_traffic() {
    let up = Upstream::echo();
    for ring in [
        "",
        "entries = 256",
        "entries = 32768",
        "sqpoll = true",
        "sqpoll = true\nsqpoll_idle_ms = 1",
        "sqpoll = true\ncoop_taskrun = false",
        "coop_taskrun = false",
        "coop_taskrun = true",
        "single_issuer = true",
        "single_issuer = true\ndefer_taskrun = true",
        "coop_taskrun = true\nsingle_issuer = true\ndefer_taskrun = true",
    ] {
        let gw = one_worker(
            &format!("driver = \"io_uring\"\n[server.io_uring]\n{ring}"),
            &up,
        );
        let addr = gw.local_addr();
        thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(move || {
                    let mut c = Client::connect(addr);
                    for n in 0..30 {
                        get(&mut c, n);
                    }
                });
            }
        });
        let served: u64 = gw.collect().iter().map(|w| w.requests()).sum();
        assert_eq!(served, 90, "{ring:?}");
    }
}

/// While clients keep a worker spinning, its timers still fire: a client that sends half a
/// head gets `408` after `header_read_timeout_ms` (300 ms), not never.
#[test]
fn a_spinning_worker_runs_its_timers() {
    let up = Upstream::echo();
    for driver in ["io_uring", "legacy"] {
        let gw = one_worker(&format!("driver = \"{driver}\"\nbusy_poll_us = 20000"), &up);
        let addr = gw.local_addr();
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let mut c = Client::connect(addr);
                let mut n = 0;
                while !done.load(Ordering::Relaxed) {
                    get(&mut c, n);
                    n += 1;
                }
                assert!(n > 0, "{driver}");
            });
            let mut slow = TcpStream::connect(addr).unwrap();
            std::io::Write::write_all(&mut slow, b"GET /r/slow HTTP/1.1\r\nHo").unwrap();
            slow.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let started = Instant::now();
            let mut answer = Vec::new();
            let _ = slow.read_to_end(&mut answer);
            done.store(true, Ordering::Relaxed);
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 408"), "{driver}: {answer}");
            // Timed out by the header timer, not by the test's read timeout.
            assert!(started.elapsed() < Duration::from_secs(20), "{driver}");
        });
    }
}

/// A busy poll that ran out of budget sleeps; the next request still gets served (by the
/// ordinary wake-up) and starts the spin again, and the engine drains and stops with it.
#[test]
fn a_busy_poll_sleeps_when_quiet_and_wakes_for_the_next_request() {
    let up = Upstream::echo();
    for driver in ["io_uring", "legacy"] {
        let gw = one_worker(&format!("driver = \"{driver}\"\nbusy_poll_us = 200"), &up);
        let mut c = Client::connect(gw.local_addr());
        for n in 0..20 {
            get(&mut c, n);
            if n % 4 == 0 {
                // Far past the budget: the spin stops and the task sleeps.
                thread::sleep(Duration::from_millis(20));
            }
        }
        drop(c);
        let served: u64 = gw.collect().iter().map(|w| w.requests()).sum();
        assert_eq!(served, 20, "{driver}");
        drop(gw);
    }
}

/// A worker sleeping its long inbox tick (100 ms, `runtime::INBOX_TICK`) hears the control
/// plane at once: its bell wakes it, under each driver and with an `sqpoll` ring, idle or
/// between requests. 40 barriers one after another (each answered only once every worker has
/// applied it) take ~4 s when each waits for the tick (measured with the bell's listener
/// switched off); here they take ~10 ms, or 100–200 ms with `sqpoll` on a 2-core machine
/// (the kernel's submission threads compete with the workers for the cores). The bound, a
/// quarter of the 4 s, leaves load on the machine out of the outcome.
#[test]
fn a_sleeping_worker_hears_the_control_plane_without_waiting_for_its_tick() {
    const BARRIERS: u32 = 40;
    let up = Upstream::echo();
    for server in [
        "driver = \"io_uring\"",
        "driver = \"legacy\"",
        "driver = \"io_uring\"\n[server.io_uring]\nsqpoll = true\nsqpoll_idle_ms = 1",
    ] {
        let gw = gateway_with(
            &format!("listen = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{server}"),
            &route_all(up.addr, ""),
        );
        let workers = gw.inboxes();
        let mut c = Client::connect(gw.local_addr());
        let started = Instant::now();
        for n in 0..BARRIERS {
            if n % 2 == 0 {
                get(&mut c, n as usize);
            }
            workers
                .barrier(Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{server}: barrier {n}: {e}"));
        }
        let took = started.elapsed();
        let tick = shardgate::runtime::INBOX_TICK;
        assert!(
            took < tick * BARRIERS / 4,
            "{server}: {BARRIERS} barriers took {took:?}, as if each waited for the {tick:?} tick"
        );
    }
}
