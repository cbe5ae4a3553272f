//! Active health checks (control plane, off the data path): an HTTP/1.1 `GET <path>` per
//! endpoint every `interval`, on one dedicated thread with blocking std sockets bounded by
//! `timeout`. A 2xx answer is a pass; anything else (other status, refused, silent, garbled)
//! is a fail. `unhealthy_threshold` fails in a row take an endpoint out of rotation on every
//! core, `healthy_threshold` passes in a row bring it back, via [`HealthUpdate`] broadcasts.
//!
//! Probes run one after another, so one sweep takes at most `timeout` per endpoint; with many
//! slow endpoints a probe may start late, never early, and never two at once.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::http::blocking;

use super::{EndpointId, HealthCheckPolicy};

/// The largest response head a probe reads (the body is never read).
const MAX_PROBE_HEAD: usize = 8 * 1024;
/// How long the thread sleeps when it has nothing to probe.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// An endpoint's health changed: broadcast to every worker
/// ([`super::WorkerBreakers::apply_health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthUpdate {
    pub endpoint: EndpointId,
    pub healthy: bool,
}

/// What to probe for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    pub endpoint: EndpointId,
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    pub policy: HealthCheckPolicy,
}

/// Why a probe failed without a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connect failed: {0}")]
    Connect(io::ErrorKind),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("i/o error: {0}")]
    Io(io::ErrorKind),
    #[error("connection closed before a complete response head")]
    Closed,
    #[error("not an HTTP/1.x response head")]
    Malformed,
    #[error("host or path would break the request line")]
    InvalidRequest,
}

/// Sends `GET path` to `addr` and returns the response status. The whole exchange (connect,
/// write, read the response head) is bounded by `timeout`. A head the gateway could not frame
/// (the codec's [`crate::http::response`] rules) is [`ProbeError::Malformed`], whatever its
/// status: the data path would refuse that endpoint's answers too.
pub fn http_probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<u16, ProbeError> {
    let mut conn = send_get(addr, host, path, timeout)?;
    match conn.read_response_head(MAX_PROBE_HEAD) {
        Ok(head) => Ok(head.status),
        Err(e) => Err(read_error(e)),
    }
}

/// Like [`http_probe`], reading the whole response: its status and a body of at most
/// `max_body` bytes (the load-metric scraper's request, see `balance::feed`).
pub fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    max_body: u64,
) -> Result<(u16, Vec<u8>), ProbeError> {
    let mut conn = send_get(addr, host, path, timeout)?;
    match conn.read_response(false, MAX_PROBE_HEAD, max_body) {
        Ok(r) => Ok((r.status, r.body)),
        Err(e) => Err(read_error(e)),
    }
}

/// Connects and writes `GET path`; every later read on the connection must end by the
/// deadline `timeout` from now.
fn send_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<blocking::Conn, ProbeError> {
    // Both go verbatim into the request head; CR, LF or a space would let config split it.
    if [host, path]
        .iter()
        .any(|s| s.is_empty() || s.bytes().any(|b| b.is_ascii_control() || b == b' '))
    {
        return Err(ProbeError::InvalidRequest);
    }
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeError::Timeout,
        kind => ProbeError::Connect(kind),
    })?;
    let io_err = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeError::Timeout,
        kind => ProbeError::Io(kind),
    };
    stream
        .set_write_timeout(Some(time_left(deadline)?))
        .map_err(io_err)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shardgate-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io_err)?;
    // One deadline for every read: a server dripping one byte at a time cannot stretch the
    // probe past `timeout`.
    let mut conn = blocking::Conn::new(stream);
    conn.set_deadline(Some(deadline));
    Ok(conn)
}

fn read_error(e: blocking::ReadError) -> ProbeError {
    match e {
        blocking::ReadError::TimedOut => ProbeError::Timeout,
        blocking::ReadError::Closed | blocking::ReadError::Truncated => ProbeError::Closed,
        blocking::ReadError::Io(kind) => ProbeError::Io(kind),
        blocking::ReadError::Request(_) | blocking::ReadError::Response => ProbeError::Malformed,
    }
}

fn time_left(deadline: Instant) -> Result<Duration, ProbeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ProbeError::Timeout)
    } else {
        Ok(left)
    }
}

/// Runs one probe; `true` is a pass. The seam that lets the scheduler be tested without sockets.
pub trait Prober {
    fn probe(&mut self, target: &HealthTarget) -> bool;
}

/// The real prober: [`http_probe`], passing on 2xx.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpProber;

impl Prober for HttpProber {
    fn probe(&mut self, t: &HealthTarget) -> bool {
        matches!(
            http_probe(t.addr, &t.host, &t.policy.path, t.policy.timeout),
            Ok(200..=299)
        )
    }
}

impl<F: FnMut(&HealthTarget) -> bool> Prober for F {
    fn probe(&mut self, target: &HealthTarget) -> bool {
        self(target)
    }
}

/// One endpoint's pass/fail streak against its thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTracker {
    healthy: bool,
    /// Results in a row that disagree with `healthy`.
    streak: u32,
}

impl Default for HealthTracker {
    /// Starts healthy: endpoints are in rotation at boot, as with no health check at all, so a
    /// gateway restart does not blackhole traffic for `healthy_threshold` intervals.
    fn default() -> Self {
        HealthTracker {
            healthy: true,
            streak: 0,
        }
    }
}

impl HealthTracker {
    /// Folds one probe result in; `Some(healthy)` when the state flips.
    pub fn observe(&mut self, pass: bool, policy: &HealthCheckPolicy) -> Option<bool> {
        if pass == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = if self.healthy {
            policy.unhealthy_threshold
        } else {
            policy.healthy_threshold
        };
        if self.streak < threshold {
            return None;
        }
        self.healthy = pass;
        self.streak = 0;
        Some(pass)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
}

/// The probe schedule of every target.
#[derive(Debug)]
pub struct HealthChecker<P> {
    targets: Vec<(HealthTarget, HealthTracker, Instant)>,
    prober: P,
}

impl<P: Prober> HealthChecker<P> {
    /// First probes are spread over one interval so that N endpoints are not probed in a burst.
    pub fn new(targets: Vec<HealthTarget>, prober: P, now: Instant) -> Self {
        let n = targets.len().max(1) as u32;
        let targets = targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let first = now + t.policy.interval * i as u32 / n;
                (t, HealthTracker::default(), first)
            })
            .collect();
        HealthChecker { targets, prober }
    }

    /// Probes every target due at `now` (blocking, one at a time) and pushes state changes.
    pub fn run_due(&mut self, now: Instant, out: &mut Vec<HealthUpdate>) {
        for (target, tracker, next) in &mut self.targets {
            if *next > now {
                continue;
            }
            let pass = self.prober.probe(target);
            *next = now + target.policy.interval;
            if let Some(healthy) = tracker.observe(pass, &target.policy) {
                out.push(HealthUpdate {
                    endpoint: target.endpoint,
                    healthy,
                });
            }
        }
    }

    /// When the next probe is due, if there are targets.
    pub fn next_due(&self) -> Option<Instant> {
        self.targets.iter().map(|(_, _, next)| *next).min()
    }
}

impl<P: Prober + Send + 'static> HealthChecker<P> {
    /// Runs the checker on a thread named `shardgate-health`, sending state changes to
    /// `updates` (to the coordination thread, which sends them to every worker). The thread
    /// ends when `stop` receives a message or is disconnected, or when `updates` is
    /// disconnected.
    pub fn spawn(
        mut self,
        updates: Sender<HealthUpdate>,
        stop: Receiver<()>,
    ) -> io::Result<JoinHandle<()>> {
        thread::Builder::new()
            .name("shardgate-health".into())
            .spawn(move || {
                let mut out = Vec::new();
                loop {
                    self.run_due(Instant::now(), &mut out);
                    for update in out.drain(..) {
                        if updates.send(update).is_err() {
                            return;
                        }
                    }
                    let wait = self
                        .next_due()
                        .map_or(IDLE_WAIT, |t| t.saturating_duration_since(Instant::now()));
                    match stop.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A loopback responder: answers each connection with `response` after reading the request
    /// head, and sends the request line it saw to the returned channel.
    fn responder(response: &'static [u8]) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                if tx.send(line).is_err() {
                    return;
                }
                if !response.is_empty() {
                    let _ = conn.write_all(response);
                } else {
                    // Silent: hold the connection open past the probe's timeout.
                    thread::sleep(Duration::from_secs(3));
                }
            }
        });
        (addr, rx)
    }

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[test]
    fn probe_reads_the_status() {
        for (response, want) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
                Ok(200),
            ),
            (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", Ok(503)),
            (b"HTTP/1.1 204\r\n\r\n", Ok(204)),
            (b"SSH-2.0-OpenSSH\r\n", Err(ProbeError::Malformed)),
            (b"HTTP/2 200\r\n\r\n", Err(ProbeError::Malformed)),
            (b"HTTP/1.1 2000\r\n\r\n", Err(ProbeError::Malformed)),
            (b"HTTP/1.1 abc\r\n\r\n", Err(ProbeError::Malformed)),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(ProbeError::Malformed),
            ),
            (b"HTTP/1.1 200 OK\r\n", Err(ProbeError::Closed)),
        ] {
            let (addr, seen) = responder(response);
            assert_eq!(http_probe(addr, "backend", "/health", TIMEOUT), want);
            assert_eq!(seen.recv().unwrap(), "GET /health HTTP/1.1");
        }
    }

    #[test]
    fn silent_refused_and_unsafe_probes_fail_in_time() {
        let (addr, _seen) = responder(b"");
        let start = Instant::now();
        assert_eq!(
            http_probe(addr, "b", "/health", TIMEOUT),
            Err(ProbeError::Timeout)
        );
        assert!(start.elapsed() < TIMEOUT + Duration::from_secs(1));

        let (addr, _seen) = responder(b"HTTP/1.1 200 OK\r\n\r\n");
        let injected = http_probe(addr, "b\r\nX-Evil: 1", "/health", TIMEOUT);
        assert_eq!(injected, Err(ProbeError::InvalidRequest));

        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            http_probe(closed, "b", "/", TIMEOUT),
            Err(ProbeError::Connect(_))
        ));
    }

    #[test]
    fn thresholds_both_ways() {
        let policy = HealthCheckPolicy {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..HealthCheckPolicy::default()
        };
        // (probe result, change expected)
        let steps = [
            (false, None),
            (false, None),
            (true, None), // streak broken
            (false, None),
            (false, None),
            (false, Some(false)), // 3 in a row: out
            (true, None),
            (false, None), // streak broken
            (true, None),
            (true, Some(true)), // 2 in a row: back
            (true, None),
        ];
        let mut tracker = HealthTracker::default();
        for (i, (pass, want)) in steps.into_iter().enumerate() {
            assert_eq!(tracker.observe(pass, &policy), want, "step {i}");
        }
    }

    fn target(endpoint: u32, addr: SocketAddr, interval_ms: u64) -> HealthTarget {
        let policy = HealthCheckPolicy {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(interval_ms.min(200)),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
            ..HealthCheckPolicy::default()
        };
        HealthTarget {
            endpoint: EndpointId(endpoint),
            addr,
            host: "b".into(),
            policy,
        }
    }

    #[test]
    fn scheduler_probes_each_target_on_its_interval() {
        let t0 = Instant::now();
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut probed = Vec::new();
        let prober = |t: &HealthTarget| {
            probed.push(t.endpoint.0);
            t.endpoint.0 == 0
        };
        let mut checker = HealthChecker::new(
            vec![target(0, addr, 1000), target(1, addr, 1000)],
            prober,
            t0,
        );
        let mut out = Vec::new();
        checker.run_due(t0, &mut out);
        checker.run_due(t0 + Duration::from_millis(499), &mut out);
        checker.run_due(t0 + Duration::from_millis(500), &mut out); // second target, staggered
        checker.run_due(t0 + Duration::from_millis(1000), &mut out);
        assert_eq!(
            out,
            [HealthUpdate {
                endpoint: EndpointId(1),
                healthy: false
            }]
        );
        assert_eq!(checker.next_due(), Some(t0 + Duration::from_millis(1500)));
        drop(checker);
        assert_eq!(probed, [0, 1, 0]);
    }

    #[test]
    fn spawned_checker_reports_over_the_channel_and_stops() {
        let (addr, _seen) = responder(b"HTTP/1.1 503 Busy\r\n\r\n");
        let checker = HealthChecker::new(vec![target(4, addr, 50)], HttpProber, Instant::now());
        let (updates_tx, updates) = crossbeam_channel::unbounded();
        let (stop_tx, stop) = crossbeam_channel::bounded(1);
        let handle = checker.spawn(updates_tx, stop).unwrap();
        let update = updates.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            update,
            HealthUpdate {
                endpoint: EndpointId(4),
                healthy: false
            }
        );
        stop_tx.send(()).unwrap();
        handle.join().unwrap();
    }
}
