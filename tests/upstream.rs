//! Upstreams that send more than the response (issue 11, item 2): the extra bytes never reach
//! a client, and the connection they came on is never used again. Checked on the wire through
//! the real gateway (one worker, so pooled connections are reused back to back) on both io
//! drivers, against a raw upstream that misbehaves in each way HTTP/1.1 allows it to. On
//! io_uring also with each `[server.io_uring]` task-run mode, a submission thread and busy
//! polling (issue #13): the peek at reuse must catch what arrived while the connection was
//! idle whoever submits and whenever completions run.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// What a misbehaving upstream slips in after a response. Were it read as the next response,
/// a client would see `x-id: stray`.
const STRAY: &str = "HTTP/1.1 200 OK\r\nx-id: stray\r\ncontent-length: 5\r\n\r\nstray";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A well-behaved upstream (the control: its connections are reused).
    Clean,
    /// A second, unrequested response.
    SecondResponse,
    /// Bytes after a 204, which has no body.
    BodyAfter204,
    /// Bytes after a 304, which has no body (its `content-length` is metadata).
    BodyAfter304,
    /// A body on the response to HEAD.
    HeadWithBody,
    /// A stray CRLF and more past a `Content-Length` body.
    PastContentLength,
    /// Bytes after the terminating chunk.
    AfterLastChunk,
    /// Bytes after a trailer section.
    AfterTrailers,
}

const MISBEHAVIOURS: [Kind; 7] = [
    Kind::SecondResponse,
    Kind::BodyAfter204,
    Kind::BodyAfter304,
    Kind::HeadWithBody,
    Kind::PastContentLength,
    Kind::AfterLastChunk,
    Kind::AfterTrailers,
];

impl Kind {
    fn method(self) -> &'static str {
        if self == Kind::HeadWithBody {
            "HEAD"
        } else {
            "GET"
        }
    }

    fn status(self) -> u16 {
        match self {
            Kind::BodyAfter204 => 204,
            Kind::BodyAfter304 => 304,
            _ => 200,
        }
    }

    /// Whether the response carries the request id as its body.
    fn has_body(self) -> bool {
        !matches!(
            self,
            Kind::BodyAfter204 | Kind::BodyAfter304 | Kind::HeadWithBody
        )
    }

    /// The response to request `id`, and the bytes the upstream sends after it.
    fn answer(self, id: &str) -> (String, String) {
        let n = id.len();
        let ok = format!("HTTP/1.1 200 OK\r\nx-id: {id}\r\ncontent-length: {n}\r\n\r\n{id}");
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nx-id: {id}\r\ntransfer-encoding: chunked\r\n\r\n{n:x}\r\n{id}\r\n0\r\n"
        );
        match self {
            Kind::Clean => (ok, String::new()),
            Kind::SecondResponse => (ok, STRAY.into()),
            Kind::BodyAfter204 => (
                format!("HTTP/1.1 204 No Content\r\nx-id: {id}\r\n\r\n"),
                STRAY.into(),
            ),
            Kind::BodyAfter304 => (
                format!("HTTP/1.1 304 Not Modified\r\nx-id: {id}\r\ncontent-length: 5\r\n\r\n"),
                STRAY.into(),
            ),
            Kind::HeadWithBody => (
                format!(
                    "HTTP/1.1 200 OK\r\nx-id: {id}\r\ncontent-length: {}\r\n\r\n",
                    STRAY.len()
                ),
                STRAY.into(),
            ),
            Kind::PastContentLength => (ok, format!("\r\n{STRAY}")),
            Kind::AfterLastChunk => (chunked + "\r\n", STRAY.into()),
            Kind::AfterTrailers => (chunked + "x-trailer: 1\r\n\r\n", STRAY.into()),
        }
    }
}

/// The raw upstream: answers each request as `kind` says, the extra bytes in the same write
/// as the response or `later` in a write of their own. Returns it and the most requests any
/// one of its connections received.
fn upstream(kind: Kind, later: Option<Duration>) -> (Upstream, Arc<AtomicUsize>) {
    let most = Arc::new(AtomicUsize::new(0));
    let m = most.clone();
    let up = Upstream::start(move |mut c| {
        let mut served = 0;
        while let Some(req) = c.read_request() {
            served += 1;
            m.fetch_max(served, Ordering::Relaxed);
            let (response, extra) = kind.answer(req.header("x-test-id").unwrap_or("missing"));
            match later {
                None => c.write((response + &extra).as_bytes()),
                Some(gap) => {
                    c.write(response.as_bytes());
                    thread::sleep(gap);
                    c.write(extra.as_bytes());
                }
            }
        }
    });
    (up, most)
}

/// The drivers and ring settings every case runs on: a name, then `[server]` lines.
const DRIVERS: [(&str, &str); 5] = [
    ("io_uring", "driver = \"io_uring\""),
    ("legacy", "driver = \"legacy\""),
    (
        "io_uring defer_taskrun + busy poll",
        "driver = \"io_uring\"\nbusy_poll_us = 300\n\
         [server.io_uring]\nsingle_issuer = true\ndefer_taskrun = true",
    ),
    (
        "io_uring coop_taskrun",
        "driver = \"io_uring\"\n[server.io_uring]\ncoop_taskrun = true",
    ),
    (
        "io_uring sqpoll",
        "driver = \"io_uring\"\n[server.io_uring]\nsqpoll = true\nsqpoll_idle_ms = 10",
    ),
];

fn one_worker(driver: &str, up: &Upstream) -> shardgate::runtime::Engine {
    let settings = DRIVERS
        .iter()
        .find(|d| d.0 == driver)
        .expect("a known driver")
        .1;
    gateway_with(
        &format!("listen = \"127.0.0.1:0\"\nworkers = 1\npin = false\n{settings}"),
        &route_all(up.addr, ""),
    )
}

/// Sends request `id` on `c` and checks that the answer is its own.
fn exchange(c: &mut Client, kind: Kind, id: &str, ctx: &str) {
    c.send(
        format!(
            "{} /r HTTP/1.1\r\nHost: gw\r\nx-test-id: {id}\r\n\r\n",
            kind.method()
        )
        .as_bytes(),
    );
    let r = c
        .read_response_to(kind == Kind::HeadWithBody)
        .unwrap_or_else(|| panic!("{ctx}: no response to {id}"));
    assert_eq!(
        (r.status, r.header("x-id")),
        (kind.status(), Some(id)),
        "{ctx}: the response to {id} is its own: {}",
        r.text()
    );
    if kind.has_body() {
        assert_eq!(r.text(), id, "{ctx}");
    }
}

const CLIENTS: usize = 4;
const EACH: usize = 25;

/// Several clients send requests back to back through one worker, so pooled connections are
/// reused within microseconds of their last response.
fn back_to_back(kind: Kind, driver: &str) -> (usize, usize) {
    let (up, most) = upstream(kind, None);
    let gw = one_worker(driver, &up);
    let addr = gw.local_addr();
    thread::scope(|s| {
        for k in 0..CLIENTS {
            s.spawn(move || {
                let mut c = Client::connect(addr);
                for n in 0..EACH {
                    exchange(
                        &mut c,
                        kind,
                        &format!("c{k}-{n}"),
                        &format!("{kind:?} on {driver}"),
                    );
                }
            });
        }
    });
    (
        up.connections.load(Ordering::Relaxed),
        most.load(Ordering::Relaxed),
    )
}

#[test]
fn oversent_bytes_never_reach_a_client_and_retire_the_connection() {
    for (driver, _) in DRIVERS {
        for kind in MISBEHAVIOURS {
            let (connects, most) = back_to_back(kind, driver);
            assert_eq!(
                most, 1,
                "{kind:?} on {driver}: no connection that over-sent serves another request"
            );
            assert_eq!(connects, CLIENTS * EACH, "{kind:?} on {driver}");
        }
        // The control: a well-behaved upstream's connections are reused back to back.
        let (connects, most) = back_to_back(Kind::Clean, driver);
        assert!(
            most > 1 && connects < CLIENTS * EACH,
            "{driver}: connections are pooled ({connects} connects, at most {most} requests)"
        );
    }
}

/// Bytes that arrive while the connection sits idle in the pool (not with the response) are
/// seen by the peek before the connection is reused.
#[test]
fn bytes_arriving_while_idle_retire_the_connection() {
    for (driver, _) in DRIVERS {
        for kind in MISBEHAVIOURS {
            let ctx = format!("{kind:?} on {driver}");
            let (up, most) = upstream(kind, Some(Duration::from_millis(10)));
            let gw = one_worker(driver, &up);
            let mut c = Client::connect(gw.local_addr());
            for n in 0..3 {
                exchange(&mut c, kind, &format!("idle-{n}"), &ctx);
                // The stray bytes arrive while the connection is idle in the pool.
                thread::sleep(Duration::from_millis(60));
            }
            assert_eq!(most.load(Ordering::Relaxed), 1, "{ctx}");
            assert_eq!(up.connections.load(Ordering::Relaxed), 3, "{ctx}");
        }
    }
}
