//! shardgate's measuring tools: the `loadgen` load generator (this library) and the
//! `mock-upstream` binary (a thin CLI over [`shardgate_mock`]).
//!
//! # Layout
//!
//! - [`schedule`]: the open-loop send timeline (coordinated-omission corrected).
//! - [`exchange`]: one HTTP/1.1 request/response on a keep-alive connection, with timestamps.
//! - [`report`]: counters, hdrhistograms, the human table and the JSON export.
//! - this file: [`LoadConfig`] and [`run`], which drive one pinned monoio thread per
//!   `threads`, each with its share of the connections.
//!
//! # Modes
//!
//! - **Open loop** (`rate = Some(r)`): every connection follows a fixed timeline so that the
//!   whole run sends `r` requests/s; latency is measured from the *scheduled* send time, so a
//!   server stall shows as the queue of requests that should have been sent meanwhile.
//! - **Closed loop** (`rate = None`): every connection sends its next request as soon as the
//!   previous response is complete (max throughput); latency is measured from the real send.
//!
//! Requests whose scheduled (or real) send time falls in the warmup are not recorded.
#![deny(unsafe_code)]

pub mod exchange;
pub mod report;
pub mod schedule;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::exchange::Conn;
use crate::report::{record, ErrorKind, Report};
use crate::schedule::Timeline;

/// Delay before reconnecting after a connect failure, so a dead server is not spun on.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Request method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// Extra headers, sent in order.
    pub headers: Vec<(String, String)>,
    /// Bearer tokens, rotated per request (`Authorization: Bearer <token>`); empty = none.
    pub tokens: Vec<String>,
    /// Request body (sent with `Content-Length` when non-empty or the method is POST/PUT).
    pub body: Vec<u8>,
    /// Worker threads (each one monoio runtime).
    pub threads: usize,
    /// Keep-alive connections in total, spread over the threads.
    pub connections: usize,
    /// Total requests/s (open loop); `None` = closed loop.
    pub rate: Option<f64>,
    /// Measured time, after warmup.
    pub duration: Duration,
    /// Time whose results are discarded.
    pub warmup: Duration,
    /// Per-request timeout (send → response complete); the connection is then reopened.
    pub timeout: Duration,
    /// Pin thread `i` to the `i`-th CPU of the process's affinity mask.
    pub pin: bool,
}

impl LoadConfig {
    /// A config for `GET path` on `addr` with one thread and connection, closed loop, 1 s.
    pub fn new(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            method: "GET".to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            tokens: Vec::new(),
            body: Vec::new(),
            threads: 1,
            connections: 1,
            rate: None,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(10),
            pin: false,
        }
    }

    /// The request bytes up to where the token goes, and after it.
    fn template(&self) -> (Vec<u8>, Vec<u8>) {
        let mut pre = format!(
            "{} {} HTTP/1.1\r\nhost: {}\r\n",
            self.method, self.path, self.host
        );
        for (k, v) in &self.headers {
            pre.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut post = String::new();
        let has_body =
            !self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if has_body {
            post.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        post.push_str("\r\n");
        let mut post = post.into_bytes();
        post.extend_from_slice(&self.body);
        (pre.into_bytes(), post)
    }
}

/// Runs the load and returns the merged report.
///
/// # Errors
///
/// Invalid config (zero threads/connections, non-positive rate), or a thread that cannot be
/// started. Request failures are not errors: they are counted in the report.
pub fn run(cfg: &LoadConfig) -> anyhow::Result<Report> {
    if cfg.threads == 0 || cfg.connections == 0 {
        bail!("threads and connections must be at least 1");
    }
    if let Some(r) = cfg.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("rate must be a positive number of requests per second");
        }
    }
    let threads = cfg.threads.min(cfg.connections);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    // Connections start together: the timeline begins shortly after all threads are up.
    let start = Instant::now() + Duration::from_millis(50);
    let mut handles = Vec::new();
    for t in 0..threads {
        let cfg = cfg.clone();
        let core = if cfg.pin && !cores.is_empty() {
            Some(cores[t % cores.len()])
        } else {
            None
        };
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_thread(&cfg, t, threads, start)
            })
            .context("spawning a load thread")?;
        handles.push(h);
    }
    let mut report = Report::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        report.merge(&r);
    }
    report.elapsed = cfg.duration;
    Ok(report)
}

fn run_thread(
    cfg: &LoadConfig,
    t: usize,
    threads: usize,
    start: Instant,
) -> anyhow::Result<Report> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .context("building the monoio runtime")?;
    let reports = rt.block_on(async {
        let tasks: Vec<_> = (t..cfg.connections)
            .step_by(threads)
            .map(|conn| monoio::spawn(connection(cfg.clone(), conn, start)))
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(task.await);
        }
        out
    });
    let mut report = Report::default();
    for r in &reports {
        report.merge(r);
    }
    Ok(report)
}

/// Drives one connection for the whole run.
async fn connection(cfg: LoadConfig, id: usize, start: Instant) -> Report {
    let mut report = Report::default();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let timeline = cfg
        .rate
        .map(|r| Timeline::new(start, r, cfg.connections, id));
    let (pre, post) = cfg.template();
    let is_head = cfg.method.eq_ignore_ascii_case("HEAD");
    let mut req = Vec::with_capacity(pre.len() + post.len() + 64);
    let mut gaps = Vec::new();
    let mut conn: Option<Conn> = None;
    let mut k: u64 = 0;
    monoio::time::sleep_until(start.into()).await;
    loop {
        let scheduled = match &timeline {
            Some(tl) => {
                let at = tl.at(k);
                // Stop at the end even when behind schedule: the run stays bounded, and the
                // shortfall shows as a lower req/s.
                if at >= end || Instant::now() >= end {
                    break;
                }
                if at > Instant::now() {
                    monoio::time::sleep_until(at.into()).await;
                }
                at
            }
            None => {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                now
            }
        };
        let measured = scheduled >= measure_from;
        let token_idx = (id as u64 + k * cfg.connections as u64) as usize;
        k += 1;
        req.clear();
        req.extend_from_slice(&pre);
        if !cfg.tokens.is_empty() {
            req.extend_from_slice(b"authorization: Bearer ");
            req.extend_from_slice(cfg.tokens[token_idx % cfg.tokens.len()].as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(&post);
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(cfg.addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    if measured {
                        *report.errors.entry(e).or_default() += 1;
                    }
                    monoio::time::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        gaps.clear();
        let sent = std::mem::take(&mut req);
        let result = monoio::time::timeout(cfg.timeout, c.exchange(sent, is_head, &mut gaps)).await;
        let outcome = match result {
            Ok((outcome, buf)) => {
                req = buf;
                outcome
            }
            Err(_) => Err(ErrorKind::Timeout),
        };
        match outcome {
            Ok(o) => {
                if !o.reusable {
                    conn = None;
                }
                if measured {
                    report.completed += 1;
                    *report.status.entry(o.status).or_default() += 1;
                    record(
                        &mut report.ttfb,
                        o.first_byte.saturating_duration_since(scheduled),
                    );
                    record(
                        &mut report.total,
                        o.end.saturating_duration_since(scheduled),
                    );
                    if o.streamed {
                        report.streamed += 1;
                    }
                    if let Some(fe) = o.first_event {
                        record(
                            &mut report.first_event,
                            fe.saturating_duration_since(scheduled),
                        );
                    }
                    for &g in &gaps {
                        record(&mut report.event_gap, Duration::from_micros(g));
                    }
                }
            }
            Err(e) => {
                conn = None;
                if measured {
                    *report.errors.entry(e).or_default() += 1;
                }
            }
        }
    }
    report
}

/// Reads one bearer token per non-empty line.
///
/// # Errors
///
/// The file cannot be read or holds no token.
pub fn read_tokens(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if tokens.is_empty() {
        bail!("{} holds no token", path.display());
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_frames_body_and_leaves_room_for_token() {
        let mut cfg = LoadConfig::new("127.0.0.1:1".parse().unwrap(), "/v1/x");
        cfg.method = "POST".into();
        cfg.headers.push(("x-a".into(), "1".into()));
        cfg.body = b"{}".to_vec();
        let (pre, post) = cfg.template();
        assert_eq!(
            pre,
            b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:1\r\nx-a: 1\r\n"
        );
        assert_eq!(post, b"content-length: 2\r\n\r\n{}");
        cfg.method = "GET".into();
        cfg.body.clear();
        assert_eq!(cfg.template().1, b"\r\n");
    }

    #[test]
    fn rejects_bad_config() {
        let mut cfg = LoadConfig::new("127.0.0.1:1".parse().unwrap(), "/");
        cfg.rate = Some(0.0);
        assert!(run(&cfg).is_err());
        cfg.rate = None;
        cfg.connections = 0;
        assert!(run(&cfg).is_err());
    }

    #[test]
    fn reads_tokens_skipping_blank_lines() {
        let path = std::env::temp_dir().join(format!("loadgen-tokens-{}", std::process::id()));
        std::fs::write(&path, "a\n\n b \n").unwrap();
        assert_eq!(
            read_tokens(&path).unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(read_tokens(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
