//! Test harness: the real engine on loopback, scriptable upstreams, the shared config fixture
//! ([`fixture`]), and two clients: ureq for ordinary requests ([`client`]) and a raw one
//! ([`Client`]) for tests that must send exact bytes or hold a connection. Every reader here
//! frames HTTP with the gateway's own codec (`shardgate::http::blocking`).
#![allow(dead_code)]

pub mod client;
pub mod fixture;
pub mod registry_rig;
pub mod stack;
pub mod tls;

// Each test file uses some of these.
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use fixture::*;
#[allow(unused_imports)]
pub use stack::*;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use shardgate::config;
use shardgate::http::blocking::{self, ReadError};
use shardgate::http::limits::MAX_HEADERS;
use shardgate::http::Limits;
use shardgate::runtime::Engine;

/// A response as a client read it (status, fields in order, body).
pub use shardgate::http::blocking::Response;

/// Starts the engine with `[server]` on 127.0.0.1:0 and 2 workers plus `rest` of the config.
pub fn gateway(rest: &str) -> Engine {
    gateway_with(
        r#"listen = "127.0.0.1:0"
workers = 2
pin = false"#,
        rest,
    )
}

pub fn gateway_with(server: &str, rest: &str) -> Engine {
    gateway_in(Path::new("."), server, rest)
}

/// Like [`gateway_with`], resolving relative paths in the config against `base`.
pub fn gateway_in(base: &Path, server: &str, rest: &str) -> Engine {
    let text = format!("[server]\n{server}\n{rest}");
    let snap = config::from_str(&text, base, 1)
        .unwrap_or_else(|p| panic!("bad test config: {p:?}\n{text}"));
    Engine::start(snap).expect("engine starts")
}

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<blocking::Request> for Received {
    fn from(r: blocking::Request) -> Self {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Received {
            method: r.method().to_owned(),
            target: r.target().to_owned(),
            headers: r.headers().map(|(n, v)| (text(n), text(v))).collect(),
            body: r.body,
        }
    }
}

/// A scriptable upstream: each connection runs `handler` on its own thread.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start<F>(handler: F) -> Upstream
    where
        F: Fn(UpConn) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (s, n) = (stop.clone(), connections.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        n.fetch_add(1, Ordering::Relaxed);
                        let h = handler.clone();
                        thread::spawn(move || h(UpConn::new(stream)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Upstream {
            addr,
            stop,
            connections,
        }
    }

    /// An upstream that answers every request with `200` and a JSON echo of what it got.
    pub fn echo() -> Upstream {
        Upstream::start(|mut c| {
            while let Some(req) = c.read_request() {
                let body = echo_json(&req);
                c.write(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: yes\r\n\r\n{}", body.len(), body).as_bytes());
            }
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo_json(r: &Received) -> String {
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|(n, v)| format!("{:?}", format!("{}: {}", n.to_ascii_lowercase(), v)))
        .collect();
    format!(
        "{{\"method\":{:?},\"target\":{:?},\"headers\":[{}],\"body\":{:?}}}",
        r.method,
        r.target,
        headers.join(","),
        String::from_utf8_lossy(&r.body)
    )
}

/// What a test upstream accepts: any head the gateway could send, any body.
fn upstream_limits() -> Limits {
    Limits::bounded(1 << 20, MAX_HEADERS, u64::MAX)
}

/// One upstream-side connection: requests are read with the codec; `stream` is there for
/// raw writes and socket tricks.
pub struct UpConn {
    pub stream: TcpStream,
    conn: blocking::Conn,
}

impl UpConn {
    fn new(stream: TcpStream) -> UpConn {
        let conn = blocking::Conn::new(stream.try_clone().unwrap());
        UpConn { stream, conn }
    }

    /// Reads one request (Content-Length or chunked body). None at EOF or on a bad request.
    pub fn read_request(&mut self) -> Option<Received> {
        self.next_request().ok()
    }

    /// Reads one request; [`ReadError::Closed`] between requests, [`ReadError::Truncated`]
    /// when the connection ends in the middle of one.
    pub fn next_request(&mut self) -> Result<Received, ReadError> {
        self.conn
            .read_request(&upstream_limits())
            .map(Received::from)
    }

    pub fn write(&mut self, data: &[u8]) {
        let _ = self.stream.write_all(data);
        let _ = self.stream.flush();
    }
}

/// A raw HTTP/1.1 client connection, for exact bytes, timing and connection identity;
/// responses are read with the codec.
pub struct Client {
    pub stream: TcpStream,
    conn: blocking::Conn,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = blocking::Conn::new(stream.try_clone().unwrap());
        Client { stream, conn }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Reads one final response (interim 1xx ones skipped). `head_request`: the response to a
    /// HEAD has no body.
    pub fn read_response_to(&mut self, head_request: bool) -> Option<Response> {
        self.conn
            .read_response(head_request, 1 << 20, u64::MAX)
            .ok()
    }

    pub fn read_response(&mut self) -> Option<Response> {
        self.read_response_to(false)
    }

    /// Whether the server closed the connection (EOF within the read timeout).
    pub fn is_closed(&mut self) -> bool {
        self.conn.is_closed()
    }
}

/// Sends raw bytes on a fresh connection and reads the response.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.read_response().expect("a response")
}
