//! RFC 9112 framing violations over a real socket: each gets its specific status, a JSON
//! error body, and the connection is closed. Limits and timeouts likewise.

mod common;

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn expect_rejected(addr: std::net::SocketAddr, raw: &[u8], status: u16) {
    let mut c = Client::connect(addr);
    let _ = c.stream.write_all(raw);
    let r = c
        .read_response()
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(raw)));
    assert_eq!(
        r.status,
        status,
        "{:?} → {}",
        String::from_utf8_lossy(raw),
        r.text()
    );
    assert!(r.text().starts_with("{\"error\":{"), "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.is_closed(),
        "connection left open after {:?}",
        String::from_utf8_lossy(raw)
    );
}

#[test]
fn framing_violations_get_specific_statuses() {
    let up = Upstream::echo();
    let gw = gateway(&format!("[limits]\nmax_header_bytes = 4096\nmax_request_line = 1024\nmax_headers = 20\nmax_body_bytes = 1000\n{}", route_all(up.addr, "")));
    let addr = gw.local_addr();
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(2000));
    let big_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..30).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let cases: Vec<(&[u8], u16)> = vec![
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\na", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n  b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Sp : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-CR: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (long_target.as_bytes(), 414),
        (big_headers.as_bytes(), 431),
        (many_headers.as_bytes(), 431),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n", 413),
        (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
    ];
    for (raw, status) in cases {
        expect_rejected(addr, raw, status);
    }
}

#[test]
fn bare_lf_cannot_smuggle_a_second_request() {
    // A bare LF inside a header value is not a line break to us; whatever the parser decides,
    // the upstream must see exactly one request with re-serialized headers.
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET /a HTTP/1.1\r\nHost: a\nX-A: 1\r\nContent-Length: 0\r\n\r\n");
    if let Some(r) = c.read_response() {
        if r.status == 200 {
            assert!(r.text().contains("\"target\":\"/a\""));
            assert_eq!(r.text().matches("\"host: ").count(), 1);
        }
    }
}

#[test]
fn slow_head_gets_408() {
    let up = Upstream::echo();
    let gw = gateway(&format!(
        "[limits]\nheader_read_timeout_ms = 300\n{}",
        route_all(up.addr, "")
    ));
    let mut c = Client::connect(gw.local_addr());
    let start = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(c.is_closed());
}

#[test]
fn stalled_body_gets_408() {
    let up = Upstream::echo();
    let gw = gateway(&format!(
        "[limits]\nbody_idle_timeout_ms = 300\n{}",
        route_all(up.addr, "")
    ));
    let mut c = Client::connect(gw.local_addr());
    c.send(
        &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n".as_slice(),
            &[b'x'; 70000],
        ]
        .concat(),
    );
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 408);
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let up = Upstream::echo();
    let gw = gateway(&format!(
        "[limits]\nkeepalive_idle_timeout_ms = 200\n{}",
        route_all(up.addr, "")
    ));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response().unwrap().status, 200);
    let start = Instant::now();
    let mut b = [0u8; 1];
    assert_eq!(c.stream.read(&mut b).unwrap(), 0);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn connections_over_the_limit_get_503() {
    let up = Upstream::echo();
    let gw = gateway_with(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false",
        &format!(
            "[limits]\nmax_connections_per_worker = 2\n{}",
            route_all(up.addr, "")
        ),
    );
    let held: Vec<Client> = (0..2).map(|_| Client::connect(gw.local_addr())).collect();
    thread::sleep(Duration::from_millis(100));
    let mut extra = Client::connect(gw.local_addr());
    let r = extra.read_response().unwrap();
    assert_eq!(r.status, 503);
    drop(held);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(get(gw.local_addr(), "/").status, 200);
}

/// Found with the `chunked_body` fuzz target: a chunk-size line (or trailer line) of exactly the
/// longest accepted length was refused when a read ended on its CR. Each split point is sent
/// as two writes with a pause between, so the gateway usually reads them apart.
#[test]
fn longest_chunk_lines_are_accepted_however_they_arrive() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let size_line = format!(
        "1;{}",
        "x".repeat(shardgate::http::body::MAX_CHUNK_LINE - 2)
    );
    let trailer = format!(
        "X-T: {}",
        "y".repeat(shardgate::http::body::MAX_TRAILER_BYTES - 5)
    );
    for (body, long) in [
        (format!("{size_line}\r\na\r\n0\r\n\r\n"), &size_line),
        (format!("1\r\na\r\n0\r\n{trailer}\r\n\r\n"), &trailer),
    ] {
        let cr = body.find(long.as_str()).unwrap() + long.len();
        for cut in [cr, cr + 1, body.len() - 1] {
            let mut c = Client::connect(gw.local_addr());
            c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
            c.send(&body.as_bytes()[..cut]);
            thread::sleep(Duration::from_millis(30));
            c.send(&body.as_bytes()[cut..]);
            let r = c.read_response().expect("response");
            assert_eq!(r.status, 200, "cut {cut}: {}", r.text());
            assert!(r.text().contains(r#""body":"a""#), "{}", r.text());
        }
    }
}
