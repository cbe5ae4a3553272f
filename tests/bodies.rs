//! Request bodies on the wire (issue 11, items 8 and 10): a body trickled too slowly gets 408
//! and releases the upstream connection it held; the streamed uploads one worker sends to an
//! upstream are capped while other requests still get through; `Expect: 100-continue` gets
//! `100 Continue` on plain and split routes alike. Each case runs for both body framings and
//! both body paths (streamed to the upstream on a plain route, read whole for a split route).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use shardgate::http::blocking::ReadError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length,
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// A plain route: the body streams to the upstream as it arrives.
    Streamed,
    /// A split route: the gateway reads the body whole to find `model`.
    Split,
}

impl Path {
    fn target(self) -> &'static str {
        match self {
            Path::Streamed => "/plain/upload",
            Path::Split => "/v1/chat/completions",
        }
    }
}

/// An upstream that echoes whole request bodies and counts the requests cut off midway.
struct Counted {
    up: Upstream,
    cut: Arc<AtomicUsize>,
}

fn counted_upstream() -> Counted {
    let cut = Arc::new(AtomicUsize::new(0));
    let n = cut.clone();
    let up = Upstream::start(move |mut c| loop {
        match c.next_request() {
            Ok(r) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                    r.body.len()
                );
                c.write(&[head.as_bytes(), &r.body].concat());
            }
            Err(e) => {
                if e == ReadError::Truncated {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    });
    Counted { up, cut }
}

/// One worker, a plain route and a split route to the same upstream, and `limits`.
fn gateway_for(up: SocketAddr, limits: &str) -> shardgate::runtime::Engine {
    gateway_with(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &format!(
            "[limits]\n{limits}\n{}{}{}{}",
            upstream("up", &[up], ""),
            deployment("m", "1.0.0", &[up], ""),
            route("/plain/*rest", "up", ""),
            model_route(
                "/v1/chat/completions",
                "{ model = \"m\", weight = 1 }",
                "methods = [\"POST\"]"
            ),
        ),
    )
}

/// A JSON body the split can route, long enough never to finish trickling in a test.
fn body() -> Vec<u8> {
    format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(400)).into_bytes()
}

fn head(path: Path, framing: Framing, len: usize, extra: &str) -> String {
    let framing = match framing {
        Framing::Length => format!("content-length: {len}"),
        Framing::Chunked => "transfer-encoding: chunked".to_string(),
    };
    format!(
        "POST {} HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n{extra}{framing}\r\n\r\n",
        path.target()
    )
}

/// The body's bytes as they go on the wire, one piece per byte of content.
fn pieces(framing: Framing, body: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = match framing {
        Framing::Length => body.iter().map(|b| vec![*b]).collect(),
        Framing::Chunked => body
            .iter()
            .map(|b| [b"1\r\n".as_slice(), &[*b], b"\r\n"].concat())
            .collect(),
    };
    if framing == Framing::Chunked {
        out.push(b"0\r\n\r\n".to_vec());
    }
    out
}

/// Sends the head and then the body one piece every `every` from a thread, until the
/// gateway stops taking it. Returns the client, to read the answer.
fn trickle(gw: SocketAddr, path: Path, framing: Framing, every: Duration) -> Client {
    let b = body();
    let mut c = Client::connect(gw);
    c.send(head(path, framing, b.len(), "").as_bytes());
    let mut w = c.stream.try_clone().unwrap();
    thread::spawn(move || {
        for p in pieces(framing, &b) {
            if w.write_all(&p).is_err() {
                return;
            }
            thread::sleep(every);
        }
    });
    c
}

/// Waits (up to 10 s) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "{what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn assert_408_and_closed(c: &mut Client, ctx: &str) {
    let r = c
        .read_response()
        .unwrap_or_else(|| panic!("{ctx}: no answer"));
    assert_eq!(r.status, 408, "{ctx}: {}", r.text());
    assert!(
        r.text().contains("\"error\""),
        "{ctx}: a JSON error: {}",
        r.text()
    );
    assert_eq!(r.header("connection"), Some("close"), "{ctx}");
    assert!(c.is_closed(), "{ctx}: the connection is closed");
}

#[test]
fn trickled_bodies_get_408_and_release_the_upstream() {
    // Each set of limits lets a body through idle gaps of 100 ms; only the named rule fails it.
    let rules = [
        (
            "total deadline",
            "body_read_timeout_ms = 700\nmin_body_rate_bytes_per_s = 0",
        ),
        (
            "minimum rate",
            "body_read_timeout_ms = 60000\nmin_body_rate_bytes_per_s = 1000\nbody_rate_grace_ms = 400",
        ),
    ];
    thread::scope(|s| {
        for (rule, limits) in rules {
            for path in [Path::Streamed, Path::Split] {
                for framing in [Framing::Length, Framing::Chunked] {
                    s.spawn(move || {
                        let ctx = format!("{rule}, {path:?}, {framing:?}");
                        let up = counted_upstream();
                        let gw = gateway_for(up.up.addr, limits);
                        let mut c =
                            trickle(gw.local_addr(), path, framing, Duration::from_millis(100));
                        assert_408_and_closed(&mut c, &ctx);
                        match path {
                            // The upstream saw its request cut off: the connection is gone,
                            // not left holding a half-sent body.
                            Path::Streamed => {
                                eventually(&format!("{ctx}: upstream connection released"), || {
                                    up.cut.load(Ordering::Relaxed) == 1
                                });
                                assert_eq!(up.up.connections.load(Ordering::Relaxed), 1, "{ctx}");
                            }
                            // A body read whole never reached the upstream.
                            Path::Split => {
                                assert_eq!(up.up.connections.load(Ordering::Relaxed), 0, "{ctx}")
                            }
                        }
                        // The gateway still serves.
                        let json = [("content-type", "application/json")];
                        let ok = send(gw.local_addr(), "POST", path.target(), &json, Some(&body()));
                        assert_eq!(ok.status, 200, "{ctx}: {}", ok.text());
                    });
                }
            }
        }
    });
}

#[test]
fn streamed_uploads_per_upstream_are_capped_and_others_get_through() {
    const CAP: usize = 2;
    let up = counted_upstream();
    let gw = gateway_for(
        up.up.addr,
        &format!("max_streaming_uploads = {CAP}\nbody_read_timeout_ms = 1500\nmin_body_rate_bytes_per_s = 0"),
    );
    let addr = gw.local_addr();
    let every = Duration::from_millis(100);
    // Five slow uploads of both framings: two stream, three are read by the gateway first.
    let framings = [
        Framing::Length,
        Framing::Chunked,
        Framing::Length,
        Framing::Chunked,
        Framing::Length,
    ];
    let mut slow: Vec<Client> = framings
        .iter()
        .map(|f| trickle(addr, Path::Streamed, *f, every))
        .collect();
    eventually("two uploads stream", || {
        up.up.connections.load(Ordering::Relaxed) == CAP
    });
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.up.connections.load(Ordering::Relaxed),
        CAP,
        "the other slow uploads hold no upstream connection"
    );
    // Requests with their body at hand still go through: a small one (sent with the head)
    // and a large one arriving at full speed (read whole first, being over the cap).
    let small = request(
        addr,
        "POST /plain/small HTTP/1.1\r\nHost: gw\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert_eq!((small.status, small.text().as_str()), (200, "hello"));
    let large = "y".repeat(200_000);
    let r = request(
        addr,
        &format!(
            "POST /plain/large HTTP/1.1\r\nHost: gw\r\ncontent-length: {}\r\n\r\n{large}",
            large.len()
        ),
    );
    assert_eq!((r.status, r.text().len()), (200, large.len()));
    for (i, c) in slow.iter_mut().enumerate() {
        assert_408_and_closed(c, &format!("slow upload {i}"));
    }
    eventually("both streamed uploads were cut off upstream", || {
        up.cut.load(Ordering::Relaxed) == CAP
    });
    // Their slots are free again: new slow uploads stream (on pooled or new connections).
    let mut again: Vec<Client> = (0..CAP)
        .map(|_| trickle(addr, Path::Streamed, Framing::Length, every))
        .collect();
    for (i, c) in again.iter_mut().enumerate() {
        assert_408_and_closed(c, &format!("later slow upload {i}"));
    }
    eventually("the later uploads streamed, so the slots were free", || {
        up.cut.load(Ordering::Relaxed) == 2 * CAP
    });
}

/// Reads exactly one interim `100 Continue` head off the raw stream.
fn read_continue(c: &mut Client, ctx: &str) {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = c.stream.read(&mut b).unwrap_or(0);
        assert_eq!(
            n,
            1,
            "{ctx}: connection ended after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.push(b[0]);
    }
    assert_eq!(got, b"HTTP/1.1 100 Continue\r\n\r\n", "{ctx}");
}

#[test]
fn expect_100_continue_is_answered_on_plain_and_split_routes() {
    let up = Upstream::echo();
    let gw = gateway_for(up.addr, "");
    for path in [Path::Streamed, Path::Split] {
        for framing in [Framing::Length, Framing::Chunked] {
            let ctx = format!("{path:?}, {framing:?}");
            let b = body();
            let mut c = Client::connect(gw.local_addr());
            // The client holds the body back until told to continue, as curl does.
            c.send(head(path, framing, b.len(), "expect: 100-continue\r\n").as_bytes());
            read_continue(&mut c, &ctx);
            c.send(&pieces(framing, &b).concat());
            let r = c.read_response().unwrap();
            assert_eq!(r.status, 200, "{ctx}: {}", r.text());
            assert!(
                r.text().contains("\\\"pad\\\""),
                "{ctx}: the body arrived: {}",
                r.text()
            );
        }
    }
}

/// RFC 9110 §10.1.1: the expectation of an HTTP/1.0 client is ignored; no interim response
/// goes to a client that may not understand it.
#[test]
fn expect_from_an_http10_client_gets_no_100() {
    let up = Upstream::echo();
    let gw = gateway_for(up.addr, "");
    for path in [Path::Streamed, Path::Split] {
        let b = body();
        let mut c = Client::connect(gw.local_addr());
        let head = head(path, Framing::Length, b.len(), "expect: 100-continue\r\n")
            .replacen("HTTP/1.1", "HTTP/1.0", 1);
        c.send(head.as_bytes());
        // Time for a wrong 100 to be sent before the body.
        thread::sleep(Duration::from_millis(100));
        c.send(&b);
        let mut first = [0u8; 12];
        c.stream.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200", "{path:?}");
    }
}
