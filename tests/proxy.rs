//! The real engine proxying to a real upstream over loopback, checked on the wire.

mod common;

use std::io::Read;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    for i in 0..20 {
        c.send(format!("GET /n/{i} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        assert!(r.text().contains(&format!("\"target\":\"/n/{i}\"")));
    }
    // The gateway reuses its upstream connection too.
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    let mut batch = String::new();
    for i in 0..10 {
        batch.push_str(&format!(
            "POST /p/{i} HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{i}{i}"
        ));
    }
    c.send(batch.as_bytes());
    for i in 0..10 {
        let r = c.read_response().unwrap();
        assert!(
            r.text().contains(&format!("\"target\":\"/p/{i}\"")),
            "{}",
            r.text()
        );
        assert!(r.text().contains(&format!("\"body\":\"{i}{i}\"")));
    }
}

#[test]
fn chunked_request_body_is_streamed_and_rechunked() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(
        b"POST /c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=x\r\nhello\r\n",
    );
    thread::sleep(Duration::from_millis(50));
    c.send(b"6\r\n world\r\n0\r\nTrailer-X: 1\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("\"body\":\"hello world\""),
        "{}",
        r.text()
    );
    assert!(r.text().contains("transfer-encoding: chunked"));
}

#[test]
fn chunked_and_close_delimited_responses_are_relayed() {
    let up = Upstream::start(|mut c| {
        while let Some(req) = c.read_request() {
            if req.target == "/close" {
                c.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-close");
                return;
            }
            c.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
            c.write(b"2\r\nde\r\n0\r\n\r\n");
        }
    });
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET /chunked HTTP/1.1\r\nHost: gw\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "abcde"));
    // Close-delimited upstream body is re-chunked, so the client connection survives.
    c.send(b"GET /close HTTP/1.1\r\nHost: gw\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "until-close");
    c.send(b"GET /chunked HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(c.read_response().unwrap().text(), "abcde");
}

#[test]
fn http10_with_and_without_keep_alive() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET /a HTTP/1.0\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());

    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(c.read_response().unwrap().text().contains("/b"));
}

#[test]
fn expect_100_continue_gets_interim_response() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"POST /e HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let mut first = [0u8; 25];
    c.stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"data");
    let r = c.read_response().unwrap();
    assert!(r.text().contains("\"body\":\"data\""));
    assert!(
        !r.text().contains("expect:"),
        "Expect must not reach the upstream"
    );
}

#[test]
fn hop_by_hop_headers_are_stripped_and_forwarding_headers_added() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let r = request(
        gw.local_addr(),
        "GET /h HTTP/1.1\r\nHost: public.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Keep: kept\r\nX-Request-Id: my-id-1\r\n\r\n",
    );
    let t = r.text();
    for gone in [
        "x-secret",
        "keep-alive:",
        "te:",
        "upgrade:",
        "proxy-connection",
        "https",
        "connection:",
    ] {
        assert!(!t.contains(gone), "{gone} leaked: {t}");
    }
    assert!(t.contains("x-keep: kept"));
    assert!(t.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1"));
    assert!(t.contains("x-forwarded-proto: http\""));
    assert!(t.contains("x-forwarded-host: public.example"));
    assert!(t.contains("x-request-id: my-id-1"));
    assert_eq!(r.header("x-request-id"), Some("my-id-1"));
    assert_eq!(r.header("x-upstream"), Some("yes"));
    // A request id is generated when absent.
    let r = get(gw.local_addr(), "/h");
    let id = r.header("x-request-id").unwrap().to_string();
    assert!(r.text().contains(&format!("x-request-id: {id}")));
}

/// The forwarding chains a client sends are kept, every line in order, with the gateway's hop
/// last: `x-forwarded-for` always, RFC 7239 `Forwarded` when the client sent one (so the last
/// element an upstream reads is the gateway's, never the client's claim). Empty values and
/// fields the client lists in `Connection` are not part of a chain.
#[test]
fn forwarding_chains_are_kept_whole_with_the_gateway_hop_last() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    let send = |extra: &str| {
        request(
            gw.local_addr(),
            &format!("GET /h HTTP/1.1\r\nHost: public.example:8443\r\n{extra}\r\n"),
        )
        .text()
    };
    let t = send("X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n");
    assert!(
        t.contains("x-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1\""),
        "{t}"
    );
    assert_eq!(t.matches("x-forwarded-for").count(), 1, "{t}");
    assert!(!t.contains("forwarded: "), "none added unasked: {t}");
    let t = send("Forwarded: for=6.6.6.6;proto=https;host=admin.internal\r\nForwarded: for=\"[2001:db8::1]\"\r\n");
    assert!(
        t.contains(r#"forwarded: for=6.6.6.6;proto=https;host=admin.internal, for=\"[2001:db8::1]\", for=127.0.0.1;proto=http;host=\"public.example:8443\""#),
        "{t}"
    );
    assert_eq!(t.matches("forwarded: ").count(), 1, "{t}");
    // Empty and hop-by-hop values are no part of a chain.
    let t = send("X-Forwarded-For:\r\nForwarded: \r\n");
    assert!(t.contains("x-forwarded-for: 127.0.0.1\""), "{t}");
    assert!(!t.contains("forwarded: "), "{t}");
    let t = send("Connection: Forwarded, X-Forwarded-For\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n");
    assert!(t.contains("x-forwarded-for: 127.0.0.1\""), "{t}");
    assert!(!t.contains("6.6.6.6"), "{t}");
}

#[test]
fn upstream_credential_replaces_client_authorization() {
    let up = Upstream::echo();
    std::env::set_var("SHARDGATE_TEST_UPSTREAM_KEY", "sk-upstream");
    let gw = gateway(&route_all(
        up.addr,
        "api_key = { env = \"SHARDGATE_TEST_UPSTREAM_KEY\" }",
    ));
    let (name, value) = bearer("client-token");
    let r = get_with(gw.local_addr(), "/", &[(name, &value)]);
    assert!(r.text().contains("authorization: Bearer sk-upstream"));
    assert!(!r.text().contains("client-token"));
}

#[test]
fn sse_chunks_reach_the_client_while_the_stream_is_open() {
    let up = Upstream::start(|mut c| {
        let _ = c.read_request();
        c.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
        for i in 0..3 {
            let ev = format!("data: {{\"n\":{i}}}\n\n");
            c.write(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
            thread::sleep(Duration::from_millis(300));
        }
        c.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n");
    });
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}");
    let start = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut text = String::new();
    while !text.contains("[DONE]") {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        for i in 0..3 {
            if text.contains(&format!("\"n\":{i}")) && seen.len() == i {
                seen.push(start.elapsed());
            }
        }
    }
    assert_eq!(seen.len(), 3);
    // Each event arrives while the upstream is still sleeping before the next one: an event
    // held back by buffering would arrive together with the next (≥ 300 ms later).
    assert!(seen[0] < Duration::from_millis(250), "{seen:?}");
    for w in seen.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap > Duration::from_millis(200) && gap < Duration::from_millis(450),
            "{seen:?}"
        );
    }
    // The gaps are in the stream-gap histogram, the head's wait in time-to-first-byte.
    let m = gw.collect();
    let gaps: u64 = m.iter().map(|w| w.stream_gap_us.len()).sum();
    let slow_gaps: u64 = m
        .iter()
        .map(|w| w.stream_gap_us.count_between(250_000, 10_000_000))
        .sum();
    assert!(
        gaps >= 3 && slow_gaps >= 2,
        "{gaps} gaps, {slow_gaps} of them ≥ 250 ms"
    );
    assert_eq!(m.iter().map(|w| w.ttfb_us.len()).sum::<u64>(), 1);
}

#[test]
fn upstream_down_is_502_with_json_error() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = gateway(&route_all(dead, ""));
    let r = get(gw.local_addr(), "/x");
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r
        .text()
        .starts_with("{\"error\":{\"type\":\"upstream_error\""));
}

#[test]
fn hanging_upstream_is_504_at_first_byte_timeout() {
    let up = Upstream::start(|mut c| {
        let _ = c.read_request();
        thread::sleep(Duration::from_secs(3));
    });
    let gw = gateway(&route_all(up.addr, "first_byte_timeout_ms = 300"));
    let start = Instant::now();
    let r = get(gw.local_addr(), "/slow");
    assert_eq!(r.status, 504);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn upstream_dying_mid_body_closes_the_client_connection() {
    let up = Upstream::start(|mut c| {
        let _ = c.read_request();
        c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial");
    });
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n");
    let mut all = Vec::new();
    c.stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(
        text.ends_with("partial"),
        "client got exactly what arrived, then EOF: {text}"
    );

    // Same for a chunked stream cut before its last chunk: no terminating chunk is invented.
    let up = Upstream::start(|mut c| {
        let _ = c.read_request();
        c.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    });
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n");
    let mut all = Vec::new();
    c.stream.read_to_end(&mut all).unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.ends_with("3\r\nabc\r\n"), "{text:?}");
}

#[test]
fn stale_pooled_connection_is_not_used() {
    // The upstream answers one request per connection and then closes it, while claiming
    // keep-alive; the gateway must notice the close before reusing the connection.
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let gw = gateway(&route_all(up.addr, ""));
    for _ in 0..5 {
        let r = send(gw.local_addr(), "POST", "/x", &[], Some(b"x"));
        assert_eq!(r.status, 200);
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn head_requests_have_no_body() {
    let up = Upstream::start(|mut c| {
        while c.read_request().is_some() {
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        }
    });
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"HEAD /x HTTP/1.1\r\nHost: gw\r\n\r\n");
    let r = c.read_response_to(true).unwrap();
    assert_eq!(r.header("content-length"), Some("5"));
    c.send(b"HEAD /x HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(c.read_response_to(true).unwrap().status, 200);
}

#[test]
fn unknown_path_and_wrong_method() {
    let up = Upstream::echo();
    let text = upstream("up", &[up.addr], "")
        + &route("/v1/chat/completions", "up", "methods = [\"POST\"]");
    let gw = gateway(&text);
    let r = get(gw.local_addr(), "/nope");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("invalid_request_error"));
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    // The connection stays usable after a recoverable error.
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn error_before_an_unread_body_closes_the_connection() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = gateway(&route_all(dead, ""));
    let mut c = Client::connect(gw.local_addr());
    // The body is announced but not sent: its bytes must not be parsed as the next request.
    c.send(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000\r\n\r\npartial");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
    // A small body that arrived whole is skipped and the connection stays usable.
    let mut c = Client::connect(gw.local_addr());
    c.send(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhiGET /y HTTP/1.1\r\nHost: gw\r\n\r\n");
    assert_eq!(c.read_response().unwrap().status, 502);
    assert_eq!(c.read_response().unwrap().status, 502);
}

#[test]
fn idempotent_request_on_a_connection_closed_moments_ago_is_replayed() {
    // The upstream closes each connection right after answering, without saying so. A GET
    // sent on the freshly pooled connection (no liveness peek below 100 ms of idleness) finds
    // it dead and is replayed on a new connection: the client never sees the failure.
    let up = Upstream::start(|mut c| {
        if c.read_request().is_some() {
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let gw = gateway(&route_all(up.addr, ""));
    let mut c = Client::connect(gw.local_addr());
    for _ in 0..5 {
        c.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert_eq!(c.read_response().unwrap().status, 200);
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn route_timeouts_override_the_upstream_and_total_bounds_the_exchange() {
    let up = Upstream::start(|mut c| {
        if let Some(r) = c.read_request() {
            if r.target == "/hang" {
                thread::sleep(Duration::from_secs(3));
                return;
            }
            // A stream that never ends: one chunk every 100 ms.
            c.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..30 {
                c.write(b"9\r\ndata: x\n\n\r\n");
                thread::sleep(Duration::from_millis(100));
            }
        }
    });
    // The upstream allows 60 s to the first byte; the route 200 ms, and 400 ms in all.
    let text = upstream("up", &[up.addr], "first_byte_timeout_ms = 60000")
        + &route(
            "/*rest",
            "up",
            "timeouts = { first_byte_ms = 200, total_ms = 400 }",
        );
    let gw = gateway(&text);
    let start = Instant::now();
    let r = get(gw.local_addr(), "/hang");
    assert_eq!(r.status, 504);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // The stream starts in time but outlives the total deadline: the client connection is
    // closed (never a response that looks complete) soon after 400 ms.
    let mut c = Client::connect(gw.local_addr());
    let start = Instant::now();
    c.send(b"GET /stream HTTP/1.1\r\nHost: gw\r\n\r\n");
    let mut all = Vec::new();
    let _ = c.stream.read_to_end(&mut all);
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&all);
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(2),
        "{took:?} {text:?}"
    );
    assert!(
        text.starts_with("HTTP/1.1 200 OK") && !text.ends_with("0\r\n\r\n"),
        "{text:?}"
    );
}

#[test]
fn retryable_route_retries_a_failed_attempt_on_another_endpoint() {
    let bad_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hits = bad_hits.clone();
    let bad = Upstream::start(move |mut c| {
        while c.read_request().is_some() {
            hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let good = Upstream::echo();
    let config = |retryable: bool| {
        upstream("up", &[bad.addr, good.addr], "")
            + &route("/*rest", "up", &format!("retryable = {retryable}"))
    };
    let head = "POST /v1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n";
    let post = format!("{head}{{}}");
    let gw = gateway(&config(true));
    for _ in 0..6 {
        // Head and body in one write, as a raw client sends them.
        let r = request(gw.local_addr(), &post);
        assert_eq!(
            r.status, 200,
            "a 503 from one endpoint is retried on the other"
        );
        // Head and body in two writes, as client libraries do: the body is read whole before
        // the first attempt, so it can be replayed too.
        let mut c = Client::connect(gw.local_addr());
        c.send(head.as_bytes());
        std::thread::sleep(std::time::Duration::from_millis(5));
        c.send(b"{}");
        assert_eq!(c.read_response().unwrap().status, 200);
        // And through an HTTP client crate.
        assert_eq!(post_json(gw.local_addr(), "/v1/x", &[], "{}").status, 200);
    }
    assert!(
        bad_hits.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the failing endpoint was tried"
    );
    // Without `retryable`, a POST is never sent twice: the 503 reaches the client.
    let gw = gateway(&config(false));
    let statuses: Vec<u16> = (0..6)
        .map(|_| request(gw.local_addr(), &post).status)
        .collect();
    assert!(statuses.contains(&503), "{statuses:?}");
}

/// Found by the `response_head` fuzz target: `HTTP/1.1 020 OK` reached the client as status
/// 20. Codes outside 100..=599 are invalid (RFC 9110 §15): 502, as for any bad head.
#[test]
fn upstream_status_outside_100_to_599_is_502() {
    // The upstream answers with the status code named by the request path.
    let up = Upstream::start(|mut c| {
        while let Some(req) = c.read_request() {
            let code = req.target.trim_start_matches('/');
            c.write(format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok").as_bytes());
        }
    });
    // Five bad heads in a row would open the endpoint's breaker (its default trips on five
    // consecutive failures) and the valid codes below would get 503.
    let gw = gateway(&route_all(
        up.addr,
        "breaker = { consecutive_failures = 100 }",
    ));
    for code in ["000", "020", "099", "600", "999"] {
        let r = get(gw.local_addr(), &format!("/{code}"));
        assert_eq!(r.status, 502, "upstream status {code}: {}", r.text());
        assert!(r.text().contains("upstream_error"), "{}", r.text());
    }
    for code in ["200", "418", "599"] {
        let r = get(gw.local_addr(), &format!("/{code}"));
        assert_eq!(r.status.to_string(), code);
        assert_eq!(r.text(), "ok");
    }
}
