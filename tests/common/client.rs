//! Ordinary requests, through a well-kept HTTP client (ureq): a fresh connection per request,
//! no redirect followed, no retry, every status returned as a response, and no header but the
//! ones a test names (plus `host` and the body's `content-length`). Tests that must control the
//! exact bytes, their timing or the connection use the raw [`super::Client`] instead.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use ureq::config::AutoHeaderValue;

use super::Response;

/// Longest a test waits for one exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(AutoHeaderValue::None)
            .accept(AutoHeaderValue::None)
            .build()
            .into()
    })
}

/// `method path` to `addr` with `headers` and, when given, a body; panics when no response
/// comes back.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    try_send(addr, method, path, headers, body, EXCHANGE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// [`send`] within `timeout`: the response, or why none came.
pub fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ureq::Error> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    match body {
        Some(b) => run(req.body(b.to_vec())?, timeout),
        None => run(req.body(())?, timeout),
    }
}

fn run(
    req: ureq::http::Request<impl ureq::AsSendBody>,
    timeout: Duration,
) -> Result<Response, ureq::Error> {
    let req = agent()
        .configure_request(req)
        .timeout_global(Some(timeout))
        .build();
    let mut res = agent().run(req)?;
    let headers = res
        .headers()
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_owned(), v)
        })
        .collect();
    let body = res.body_mut().with_config().limit(u64::MAX).read_to_vec()?;
    Ok(Response {
        status: res.status().as_u16(),
        headers,
        body,
    })
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    send(addr, "GET", path, &[], None)
}

/// `GET path` with `headers`.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    send(addr, "GET", path, headers, None)
}

/// `POST path` with a JSON `body` and `headers`.
pub fn post_json(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(addr, "POST", path, &all, Some(body.as_bytes()))
}
