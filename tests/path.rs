//! Request paths, methods and header names through the running gateway: every spelling of a
//! dot segment, separator or path parameter that could carry a request from an `auth = false`
//! route to a protected one is refused before routing; the upstream receives exactly the path
//! that was routed; CONNECT, TRACE and non-upper-case methods never reach an upstream; header
//! names with `_` are dropped unless allowed.

mod common;

use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::*;

/// The gateway with an open route `/open/*rest` and protected `/v1/models` and `/v1/*rest`,
/// in front of an upstream that reports every request it receives.
struct Rig {
    seen: Receiver<Received>,
    gw: shardgate::runtime::Engine,
    _up: Upstream,
}

impl Rig {
    fn start(limits: &str) -> Rig {
        let (tx, seen) = mpsc::channel::<Received>();
        let up = Upstream::start(move |mut c| {
            while let Some(r) = c.read_request() {
                let body = format!("{{\"target\":{:?}}}", r.target);
                let _ = tx.send(r);
                c.write(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        let rest = format!(
            "[limits]\n{limits}\n{}[[auth.claim_headers]]\nclaim = \"sub\"\nheader = \"x-user-id\"\n{}{}{}{}",
            auth_hs256(""),
            upstream("up", &[up.addr], ""),
            route("/open/*rest", "up", "auth = false"),
            route("/v1/models", "up", ""),
            route("/v1/*rest", "up", ""),
        );
        Rig {
            seen,
            gw: gateway(&rest),
            _up: up,
        }
    }

    /// Sends raw request bytes on a fresh connection; the response and what the upstream got.
    fn send(&self, raw: &[u8]) -> (Response, Option<Received>) {
        let mut c = Client::connect(self.gw.local_addr());
        c.send(raw);
        let r = c.read_response().expect("a response");
        let seen = if r.status == 200 {
            self.seen.recv_timeout(Duration::from_secs(5)).ok()
        } else {
            None
        };
        (r, seen)
    }

    fn get(&self, target: &str, headers: &str) -> (Response, Option<Received>) {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{headers}\r\n").as_bytes())
    }

    /// Nothing reached the upstream that the test did not already collect.
    fn upstream_saw_nothing_more(&self) {
        let extra: Vec<String> = self.seen.try_iter().map(|r| r.target).collect();
        assert!(extra.is_empty(), "upstream received {extra:?}");
    }
}

/// Every spelling of `.` and `..` a decoder could turn into a dot segment.
const DOTS: &[&str] = &[
    "..", "%2e%2e", "%2E%2E", "%2e%2E", "%2E%2e", ".%2e", ".%2E", "%2e.", "%2E.", ".", "%2e", "%2E",
];

/// Ways to climb from `/open/` to `/v1/models` that are not plain dot segments.
const CLIMBS: &[&str] = &[
    "/open/..%2fv1/models",
    "/open/..%2Fv1/models",
    "/open/%2e%2e%2fv1%2fmodels",
    "/open/%2E%2E%2Fv1%2Fmodels",
    "/open%2f..%2fv1/models",
    "/open/..%5cv1/models",
    "/open/..%5Cv1%5Cmodels",
    "/open/..\\v1/models",
    "/open\\..\\v1\\models",
    "/open/..;/v1/models",
    "/open/%2e%2e;/v1/models",
    "/open/..;a=b/v1/models",
    "/open;/../v1/models",
    "/open/x/..;/..;/v1/models",
    "/open/%252e%252e/v1/models",
    "/open/%252E%252E%252Fv1/models",
    "/open/%c0%ae%c0%ae/v1/models",
    "/open/%C0%AE%C0%AE/v1/models",
    "/open/%e0%80%ae%e0%80%ae/v1/models",
    "/open/..%c0%afv1/models",
    "/open/..%00/v1/models",
    "/open/%2e%2e%00/v1/models",
    "/open/..%0d%0a/v1/models",
    "/open/..%/v1/models",
    "/open/%2/v1/models",
    "/open/%g2e/v1/models",
];

#[test]
fn dot_segment_and_separator_variants_never_reach_a_protected_route() {
    let rig = Rig::start("");
    // The protected route is protected, and the open one open.
    assert_eq!(rig.get("/v1/models", "").0.status, 401);
    let (r, seen) = rig.get("/open/x", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(seen.unwrap().target, "/open/x");

    let mut targets: Vec<String> = Vec::new();
    for d in DOTS {
        for shape in [
            format!("/open/{d}/v1/models"),
            format!("/open/{d}/{d}/v1/models"),
            format!("/open/x/{d}/{d}/v1/models"),
            format!("/open//{d}//v1/models"),
            format!("/open/{d}/v1/models/"),
            format!("/{d}/v1/models"),
            format!("/open/x/{d}"),
        ] {
            targets.push(shape);
        }
    }
    targets.extend(CLIMBS.iter().map(|s| s.to_string()));
    for t in targets.clone() {
        for suffix in ["?a=1", "#x", "?a=1#x", "?a=%2e%2e/..#/../v1"] {
            targets.push(format!("{t}{suffix}"));
        }
    }
    for t in &targets {
        let (r, _) = rig.get(t, "");
        assert_eq!(r.status, 400, "{t}: {}", r.text());
        assert!(r.text().contains("invalid_request_error"), "{t}");
    }
    // Raw non-ASCII (an overlong `..` in raw bytes) and absolute-form targets.
    for raw in [
        &b"GET /open/\xc0\xae\xc0\xae/v1/models HTTP/1.1\r\nHost: gw\r\n\r\n"[..],
        b"GET http://gw/open/../v1/models HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET http://gw/v1/models HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET gw:80 HTTP/1.1\r\nHost: gw\r\n\r\n",
    ] {
        let (r, _) = rig.send(raw);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(raw));
    }
    rig.upstream_saw_nothing_more();
}

/// The path the upstream receives is the one the router matched: unreserved escapes decoded,
/// hex upper-cased, slashes merged, the query as sent, no fragment.
#[test]
fn upstream_receives_exactly_the_routed_path_and_query() {
    let rig = Rig::start("");
    let cases = [
        ("/open/x", "/open/x"),
        ("/open/%61%62//c?x=%2e%2e#frag", "/open/ab/c?x=%2e%2e"),
        ("//open///x//", "/open/x/"),
        ("/%6Fpen/x", "/open/x"),
        ("/open/x%3a%2c", "/open/x%3A%2C"),
        ("/open/x#../../v1/models", "/open/x"),
        ("/open/x#?a=1", "/open/x"),
        ("/open/%7Euser?q=1&r=%2F", "/open/~user?q=1&r=%2F"),
        ("/open/%2e%2e%2e/v1/models", "/open/.../v1/models"),
        ("/open/a%2eb/%2e.x", "/open/a.b/..x"),
        ("/open/%E2%82%AC%20", "/open/%E2%82%AC%20"),
        ("/open/?", "/open/?"),
    ];
    for (sent, want) in cases {
        let (r, seen) = rig.get(sent, "");
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        let seen = seen.expect("the upstream got the request");
        assert_eq!(seen.target, want, "{sent}");
    }
    // An encoded spelling of the protected path is the protected path: 401 without a token,
    // and with one the upstream sees the decoded path.
    let bearer = format!("Authorization: Bearer {}\r\n", token("alice"));
    for sent in [
        "/v1/%6dodels",
        "/v1/%6D%6F%64%65%6C%73?x=1",
        "//v1//models#f",
    ] {
        assert_eq!(rig.get(sent, "").0.status, 401, "{sent}");
        let (r, seen) = rig.get(sent, &bearer);
        assert_eq!(r.status, 200, "{sent}: {}", r.text());
        let target = seen.unwrap().target;
        assert!(
            target == "/v1/models" || target == "/v1/models?x=1",
            "{sent} -> {target}"
        );
    }
    rig.upstream_saw_nothing_more();
}

/// On a route without a method list: CONNECT and TRACE get 501, methods that are not
/// upper-case tokens 400, with or without a token, and none reaches the upstream.
#[test]
fn connect_trace_and_non_uppercase_methods_are_refused_before_routing() {
    let rig = Rig::start("");
    let bearer = format!("Authorization: Bearer {}\r\n", token("alice"));
    let cases = [
        ("CONNECT /open/x HTTP/1.1", 501),
        ("CONNECT gw:443 HTTP/1.1", 501),
        ("CONNECT /v1/models HTTP/1.0", 501),
        ("TRACE /open/x HTTP/1.1", 501),
        ("TRACE /v1/models HTTP/1.1", 501),
        ("TRACE * HTTP/1.1", 501),
        ("get /open/x HTTP/1.1", 400),
        ("Get /open/x HTTP/1.1", 400),
        ("gET /v1/models HTTP/1.1", 400),
        ("post /open/x HTTP/1.1", 400),
        ("Post /open/x HTTP/1.1", 400),
        ("options /open/x HTTP/1.1", 400),
        ("connect /open/x HTTP/1.1", 400),
        ("trace /open/x HTTP/1.1", 400),
        ("Trace /open/x HTTP/1.1", 400),
        ("GE.T /open/x HTTP/1.1", 400),
    ];
    for (line, status) in cases {
        for headers in ["", bearer.as_str()] {
            let raw = format!("{line}\r\nHost: gw\r\n{headers}\r\n");
            let (r, _) = rig.send(raw.as_bytes());
            assert_eq!(r.status, status, "{line}: {}", r.text());
        }
    }
    rig.upstream_saw_nothing_more();
    // Upper-case methods still pass, extension methods included.
    for m in ["GET", "DELETE", "PROPFIND"] {
        let (r, seen) = rig.send(format!("{m} /open/x HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200, "{m}");
        assert_eq!(seen.unwrap().method, m);
    }
}

/// Every underscore spelling of a header the gateway sets or frames by.
const UNDERSCORED: &[&str] = &[
    "x_user_id: mallory",
    "X_User_Id: mallory",
    "x-user_id: mallory",
    "x_user-id: mallory",
    "Content_Length: 5",
    "content_length: 5",
    "Transfer_Encoding: chunked",
    "X_Forwarded_For: 6.6.6.6",
    "x_request_id: forged",
    "_: x",
    "x_custom: 1",
];

#[test]
fn underscore_header_names_are_dropped_by_default() {
    let rig = Rig::start("");
    let bearer = format!("Authorization: Bearer {}\r\n", token("alice"));
    let extra: String = UNDERSCORED.iter().map(|h| format!("{h}\r\n")).collect();
    for (method, body) in [("GET", ""), ("POST", "hi")] {
        for path in ["/open/x", "/v1/models"] {
            let raw = format!(
                "{method} {path} HTTP/1.1\r\nHost: gw\r\n{bearer}{extra}x-custom: 2\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let (r, seen) = rig.send(raw.as_bytes());
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
            let seen = seen.unwrap();
            let names: Vec<&str> = seen.headers.iter().map(|(n, _)| n.as_str()).collect();
            assert!(
                names.iter().all(|n| !n.contains('_')),
                "{method} {path}: {names:?}"
            );
            assert_eq!(seen.header("x-custom"), Some("2"));
            assert_eq!(String::from_utf8_lossy(&seen.body), body);
            let user: Vec<&str> = seen
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-user-id"))
                .map(|(_, v)| v.as_str())
                .collect();
            // The open route has no identity to map; the protected one maps `sub`.
            let want: &[&str] = if path == "/open/x" { &[] } else { &["alice"] };
            assert_eq!(user, want, "{method} {path}");
        }
    }
    rig.upstream_saw_nothing_more();
}

#[test]
fn underscore_header_names_pass_when_allowed() {
    let rig = Rig::start("allow_underscores_in_headers = true");
    let bearer = format!("Authorization: Bearer {}\r\n", token("alice"));
    let (r, seen) = rig.get(
        "/v1/models",
        &format!("{bearer}x_custom: 1\r\nx-user-id: mallory\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = seen.unwrap();
    assert_eq!(seen.header("x_custom"), Some("1"));
    // The gateway's own headers are still its own.
    assert_eq!(seen.header("x-user-id"), Some("alice"));
}
