//! The admin listener serves connections concurrently: silent and slow-trickling clients
//! never hold up a probe, each connection has its own deadline, and the connection cap
//! holds (503 JSON over it).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{get, try_send};
use serde_json::Value;
use shardgate::admin::{self, Admin, AdminLimits, AdminState};

/// A probe's patience: far more than a free listener needs, far less than one silent
/// connection used to cost (the 2 s request deadline, in turn).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn admin_with(limits: AdminLimits) -> Admin {
    Admin::start_with(
        "127.0.0.1:0".parse().unwrap(),
        AdminState {
            workers: Default::default(),
            control: None,
            view: Default::default(),
            breakers: None,
            spend: None,
        },
        limits,
    )
    .unwrap()
}

/// `GET path` within [`PROBE_TIMEOUT`]: the status and body, or the error.
fn probe(addr: SocketAddr, path: &str) -> Result<(u16, String), ureq::Error> {
    try_send(addr, "GET", path, &[], None, PROBE_TIMEOUT).map(|r| (r.status, r.text()))
}

/// Whether the server still holds `s` open (no EOF, no reset, nothing written).
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let open = matches!(s.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// Sends `GET /healthz` one byte at a time, 50 ms apart, until `stop` (never finishing).
fn trickle(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let mut s = TcpStream::connect(addr).unwrap();
    thread::spawn(move || {
        let req = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Padding: ";
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let byte = req.get(i).copied().unwrap_or(b'a');
            if s.write_all(&[byte]).is_err() {
                return;
            }
            i += 1;
            thread::sleep(Duration::from_millis(50));
        }
    })
}

#[test]
fn healthz_answers_while_silent_and_trickling_connections_are_open() {
    const N: usize = 10;
    // A long request deadline keeps the slow clients' connections open for the whole test.
    let admin = admin_with(AdminLimits {
        max_connections: 64,
        request_deadline: Duration::from_secs(30),
    });
    let addr = admin.local_addr();
    let mut silent: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickles: Vec<_> = (0..N).map(|_| trickle(addr, stop.clone())).collect();
    thread::sleep(Duration::from_millis(200));

    for path in ["/healthz", "/healthz", "/config", "/nowhere"] {
        let (status, body) = probe(addr, path)
            .unwrap_or_else(|e| panic!("{path} did not answer within {PROBE_TIMEOUT:?}: {e}"));
        let want = if path == "/nowhere" { 404 } else { 200 };
        assert_eq!(status, want, "{path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap();
    }
    // The slow clients were still connected while the probes were answered.
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(still_open(s), "silent connection {i} was closed");
    }
    stop.store(true, Ordering::Relaxed);
    for t in trickles {
        t.join().unwrap();
    }
}

#[test]
fn the_connection_cap_holds_and_over_it_the_answer_is_503_json() {
    const CAP: usize = 4;
    let admin = admin_with(AdminLimits {
        max_connections: CAP,
        request_deadline: Duration::from_secs(30),
    });
    let addr = admin.local_addr();
    // Fill the cap with silent connections; the listener accepts them in order.
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for _ in 0..3 {
        let (status, body) = probe(addr, "/healthz").expect("an answer over the cap");
        assert_eq!(status, 503, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "busy", "{v}");
    }
    // The retry header is there.
    let r = get(addr, "/healthz");
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    for (i, s) in held.iter_mut().enumerate() {
        assert!(still_open(s), "held connection {i} was closed");
    }

    // One held connection leaves: its place is free again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match probe(addr, "/healthz") {
            Ok((200, _)) => break,
            Ok((503, _)) => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the freed place was not reused");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn each_connection_has_its_own_deadline() {
    let admin = admin_with(AdminLimits {
        max_connections: 8,
        request_deadline: Duration::from_millis(300),
    });
    let addr = admin.local_addr();
    // Silent: closed at the deadline without an answer.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    silent.read_to_end(&mut got).unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // Trickling slower than the deadline allows: closed too, request never served.
    let stop = Arc::new(AtomicBool::new(false));
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = slow.try_clone().unwrap();
    let stop2 = stop.clone();
    let t = thread::spawn(move || {
        for b in b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n" {
            if stop2.load(Ordering::Relaxed) || writer.write_all(&[*b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let mut got = Vec::new();
    let _ = slow.read_to_end(&mut got);
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // Meanwhile and afterwards, a prompt client is served.
    assert_eq!(probe(addr, "/healthz").unwrap().0, 200);
    // The default deadline is the documented one.
    assert_eq!(
        AdminLimits::default().request_deadline,
        admin::http::REQUEST_DEADLINE
    );
}
