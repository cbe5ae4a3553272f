//! An engine that served traffic and shut down has closed every file descriptor it opened:
//! listening sockets, client and pooled upstream connections, each worker's ring and its bell.
//! A worker whose runtime is dropped with an operation still in flight leaks its ring, and
//! with it every close still queued there (a listening socket that keeps accepting after
//! shutdown was how that showed). Alone in its file: the count is of the whole process.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count()
}

/// Waits up to 2 s for the count to come back to `want` (closes that io_uring queued may
/// complete just after the worker thread ends).
fn settles_to(want: usize) -> usize {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let n = open_fds();
        if n <= want || Instant::now() > end {
            return n;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_stopped_engine_leaves_no_descriptor_open() {
    let up = Upstream::echo();
    for driver in ["io_uring", "legacy", "auto"] {
        let before = open_fds();
        let mut gw = gateway_with(
            &format!("listen = \"127.0.0.1:0\"\nworkers = 2\npin = false\ndriver = \"{driver}\""),
            &route_all(up.addr, ""),
        );
        let addr = gw.local_addr();
        // Keep-alive clients (spread over both workers), pooled upstream connections, and
        // messages that ring every worker's bell.
        let mut clients: Vec<_> = (0..6).map(|_| Client::connect(addr)).collect();
        for round in 0..3 {
            for c in &mut clients {
                c.send(format!("GET /r/{round} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
                assert_eq!(
                    c.read_response().expect("a response").status,
                    200,
                    "{driver}"
                );
            }
            gw.inboxes()
                .barrier(Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("{driver}: {e}"));
        }
        // One connection stays open into the shutdown: it is closed by the drain.
        drop(clients.drain(1..));
        gw.shutdown();
        drop(clients);
        drop(gw);
        let after = settles_to(before);
        assert_eq!(after, before, "{driver}: descriptors open before and after");
    }
}
