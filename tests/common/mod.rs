//! Test harness: the real engine on loopback, a scriptable upstream, and a raw HTTP client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use shardgate::config;
use shardgate::runtime::Engine;

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

/// Config fragment routing everything to one upstream at `addr`.
pub fn route_all(addr: SocketAddr, extra_upstream: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"up\"\nendpoints = [\"{addr}\"]\n{extra_upstream}\n[[routes]]\npath = \"/*rest\"\nupstream = \"up\"\n"
    )
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
                        thread::spawn(move || {
                            h(UpConn {
                                stream,
                                buf: Vec::new(),
                            })
                        });
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

/// One upstream-side connection.
pub struct UpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl UpConn {
    /// Reads one request (Content-Length or chunked body). None at EOF.
    pub fn read_request(&mut self) -> Option<Received> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&self.buf) {
                let mut r = Received {
                    method: req.method.unwrap().to_string(),
                    target: req.path.unwrap().to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                    body: Vec::new(),
                };
                self.buf.drain(..n);
                if let Some(cl) = r.header("content-length") {
                    let cl: usize = cl.parse().unwrap();
                    while self.buf.len() < cl {
                        if !self.fill() {
                            return None;
                        }
                    }
                    r.body = self.buf.drain(..cl).collect();
                } else if r.header("transfer-encoding").is_some() {
                    r.body = self.read_chunked()?;
                }
                return Some(r);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line()?;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                while !self.read_line()?.is_empty() {}
                return Some(body);
            }
            while self.buf.len() < size + 2 {
                if !self.fill() {
                    return None;
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        match self.stream.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        let _ = self.stream.write_all(data);
        let _ = self.stream.flush();
    }
}

/// A parsed response as the client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Reads one response. `head_request`: the response to a HEAD has no body.
    pub fn read_response_to(&mut self, head_request: bool) -> Option<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let status = resp.code.unwrap();
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..n);
                let mut r = Response {
                    status,
                    headers,
                    body: Vec::new(),
                };
                if (100..200).contains(&status) {
                    continue;
                }
                if head_request || status == 204 || status == 304 {
                    return Some(r);
                }
                if let Some(cl) = r.header("content-length") {
                    let cl: usize = cl.parse().unwrap();
                    while self.buf.len() < cl {
                        if !self.fill() {
                            return None;
                        }
                    }
                    r.body = self.buf.drain(..cl).collect();
                } else if r.header("transfer-encoding").is_some() {
                    let mut up = UpConn {
                        stream: self.stream.try_clone().unwrap(),
                        buf: std::mem::take(&mut self.buf),
                    };
                    r.body = up.read_chunked()?;
                    self.buf = up.buf;
                } else {
                    while self.fill() {}
                    r.body = std::mem::take(&mut self.buf);
                }
                return Some(r);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    pub fn read_response(&mut self) -> Option<Response> {
        self.read_response_to(false)
    }

    /// Whether the server closed the connection (EOF within the read timeout).
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        match self.stream.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }
}

/// Sends one request on a fresh connection and reads the response.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    c.read_response().expect("a response")
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
}
