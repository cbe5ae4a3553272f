//! Request bodies from the client: streamed to the upstream, or collected for a stage that
//! must read them (the model split reads `model` from a JSON body).
//!
//! # Contract
//!
//! Both functions honour the body limit (413), chunked framing errors (400) and the body's
//! pace ([`BodyPace`]): a silence longer than the body idle timeout is a stall, and a body
//! not complete within `body_read_timeout`, or averaging less than `min_body_rate` once
//! `body_rate_grace` has passed, is too slow (both 408). Every error closes the client
//! connection, since the rest of the body is still in flight; when streaming, the caller
//! drops the upstream connection, whose request was never completed.
//!
//! A body streams to the upstream only while fewer than `max_streaming_uploads` others
//! stream to the same upstream from this worker ([`Upload`]); past that the caller collects
//! it whole first, so slow clients cannot hold more upstream connections than that.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::{Failure, ReqInfo};
use crate::conn::{ClientConn, ReadError};
use crate::error::{self, GatewayError, UpstreamError};
use crate::http::body::ChunkedDecoder;
use crate::http::parse::BodyFraming;
use crate::http::Limits;
use crate::pool::UpConn;
use crate::worker::Worker;

/// Largest read while a body arrives.
pub const BODY_READ: usize = 64 * 1024;

/// Sends `100 Continue` if an HTTP/1.1 client sent `Expect: 100-continue` and the body has
/// still to arrive (RFC 9110 §10.1.1: a server may omit it once body bytes arrived, and
/// ignores the expectation from an HTTP/1.0 client). A 100 must not follow a final response,
/// so call this only before anything was answered for the request.
pub async fn send_continue(c: &mut ClientConn, req: &ReqInfo) -> io::Result<()> {
    if !req.expect_continue || req.minor_version == 0 {
        return Ok(());
    }
    let waiting = match req.framing {
        BodyFraming::None => false,
        BodyFraming::Length(n) => (c.buffered().len() as u64) < n,
        BodyFraming::Chunked => c.buffered().is_empty(),
    };
    if !waiting {
        return Ok(());
    }
    c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    c.flush_out().await
}

/// A streamed upload counted against `max_streaming_uploads` for its upstream on this worker
/// until dropped.
pub struct Upload<'a> {
    worker: &'a Worker,
    upstream: &'a str,
}

impl<'a> Upload<'a> {
    /// `None`: `cap` uploads to `upstream` are streaming already.
    pub fn begin(worker: &'a Worker, upstream: &'a str, cap: u32) -> Option<Self> {
        let ok = worker.pools.borrow_mut().begin_upload(upstream, cap);
        // Built only when counted: dropping an `Upload` uncounts it.
        ok.then(|| Upload { worker, upstream })
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        self.worker.pools.borrow_mut().end_upload(self.upstream);
    }
}

/// The pace a request body must keep (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    start: Instant,
    received: u64,
    idle: Duration,
    total: Duration,
    min_rate: u64,
    grace: Duration,
}

impl BodyPace {
    /// A body whose reading starts at `start`, with `received` bytes of it already here.
    pub fn new(limits: &Limits, start: Instant, received: usize) -> Self {
        Self {
            start,
            received: received as u64,
            idle: limits.body_idle_timeout,
            total: limits.body_read_timeout,
            min_rate: limits.min_body_rate,
            grace: limits.body_rate_grace,
        }
    }

    pub fn record(&mut self, n: usize) {
        self.received = self.received.saturating_add(n as u64);
    }

    /// By when the next read must deliver, and the error if it does not.
    pub fn deadline(&self, now: Instant) -> (Instant, GatewayError) {
        let stall = later(now, self.idle);
        let mut slow = later(self.start, self.total);
        if self.min_rate > 0 {
            // The moment the average would fall below the minimum rate, if nothing more came.
            let ns = u128::from(self.received) * 1_000_000_000 / u128::from(self.min_rate);
            let earned = Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX));
            slow = slow.min(later(self.start, earned.max(self.grace)));
        }
        if stall < slow {
            (stall, error::BODY_TIMEOUT)
        } else {
            (slow, error::BODY_TOO_SLOW)
        }
    }
}

/// `t + d`, or a year after `t` where that overflows (durations come from the config).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(365 * 86_400))
}

/// Reads the whole body into `out` (decoding chunked framing).
pub async fn collect_body(
    c: &mut ClientConn,
    framing: BodyFraming,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<(), GatewayError> {
    out.clear();
    let mut remaining = match framing {
        BodyFraming::None => return Ok(()),
        BodyFraming::Length(n) => n,
        BodyFraming::Chunked => 0,
    };
    let mut pace = BodyPace::new(limits, Instant::now(), c.buffered().len());
    let mut dec = ChunkedDecoder::new(limits.max_body_bytes);
    loop {
        let done = match framing {
            BodyFraming::Length(_) => {
                let n = (c.buffered().len() as u64).min(remaining) as usize;
                out.extend_from_slice(&c.buffered()[..n]);
                c.consume(n);
                remaining -= n as u64;
                remaining == 0
            }
            _ => loop {
                let step = dec.step(c.buffered())?;
                if let Some((a, b)) = step.data {
                    out.extend_from_slice(&c.buffered()[a..b]);
                }
                c.consume(step.consumed);
                if dec.is_done() {
                    break true;
                }
                if step.consumed == 0 {
                    break false;
                }
            },
        };
        if done {
            return Ok(());
        }
        read_body_bytes(c, &mut pace).await?;
    }
}

async fn read_body_bytes(c: &mut ClientConn, pace: &mut BodyPace) -> Result<(), GatewayError> {
    let now = Instant::now();
    let (deadline, missed) = pace.deadline(now);
    if deadline <= now {
        return Err(missed);
    }
    match c.read_more_until(deadline, BODY_READ).await {
        Ok(0) | Err(ReadError::Io) => Err(error::CLIENT_BODY_ERROR),
        Err(ReadError::Timeout) => Err(missed),
        Ok(n) => {
            pace.record(n);
            Ok(())
        }
    }
}

/// Streams the request body from the client to the upstream as it arrives.
pub async fn stream_body(
    c: &mut ClientConn,
    up: &mut UpConn,
    framing: BodyFraming,
    limits: &Limits,
) -> Result<(), Failure> {
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    let mut remaining = match framing {
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    let mut pace = BodyPace::new(limits, Instant::now(), c.buffered().len());
    let mut dec = ChunkedDecoder::new(limits.max_body_bytes);
    let result = loop {
        // Move what is buffered into `out`, re-encoding chunks.
        let done = match framing {
            BodyFraming::None => true,
            BodyFraming::Length(_) => {
                let n = (c.buffered().len() as u64).min(remaining) as usize;
                out.extend_from_slice(&c.buffered()[..n]);
                c.consume(n);
                remaining -= n as u64;
                remaining == 0
            }
            BodyFraming::Chunked => loop {
                let step = match dec.step(c.buffered()) {
                    Ok(s) => s,
                    Err(e) => break Err(GatewayError::from(e)),
                };
                if let Some((a, b)) = step.data {
                    let _ = write!(out, "{:x}\r\n", b - a);
                    out.extend_from_slice(&c.buffered()[a..b]);
                    out.extend_from_slice(b"\r\n");
                }
                c.consume(step.consumed);
                if dec.is_done() {
                    out.extend_from_slice(b"0\r\n\r\n");
                    break Ok(true);
                }
                if step.consumed == 0 {
                    break Ok(false);
                }
            }
            .map_err(Failure::Respond)?,
        };
        if !out.is_empty() {
            let (res, buf) = up.write_all(out).await;
            out = buf;
            out.clear();
            if res.is_err() {
                break Err(Failure::Respond(
                    GatewayError::from(UpstreamError::ClosedBeforeResponse).closing(),
                ));
            }
        }
        if done {
            break Ok(());
        }
        if let Err(e) = read_body_bytes(c, &mut pace).await {
            break Err(Failure::Respond(e));
        }
    };
    c.out = out;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle: u64, total: u64, rate: u64, grace: u64) -> Limits {
        Limits {
            body_idle_timeout: Duration::from_millis(idle),
            body_read_timeout: Duration::from_millis(total),
            min_body_rate: rate,
            body_rate_grace: Duration::from_millis(grace),
            ..Limits::default()
        }
    }

    /// (limits, bytes received, ms since the body started) → (ms after the start by which
    /// the next read must deliver, 408 for a stall or for a slow body).
    #[test]
    fn next_read_deadline_is_the_earliest_of_stall_total_and_rate() {
        let stall = error::BODY_TIMEOUT;
        let slow = error::BODY_TOO_SLOW;
        let cases = [
            // The idle gap binds while the body keeps up.
            (limits(1_000, 60_000, 100, 5_000), 10_000, 0, 1_000, stall),
            (
                limits(1_000, 60_000, 100, 5_000),
                10_000,
                30_000,
                31_000,
                stall,
            ),
            // The total deadline binds near the end.
            (
                limits(1_000, 60_000, 100, 5_000),
                1_000_000,
                59_500,
                60_000,
                slow,
            ),
            // No bytes: the grace period is all the rate allows.
            (limits(30_000, 60_000, 100, 5_000), 0, 0, 5_000, slow),
            // 1000 bytes at 100 B/s earn 10 s from the start.
            (
                limits(30_000, 60_000, 100, 5_000),
                1_000,
                9_000,
                10_000,
                slow,
            ),
            // A trickle past the grace period: due already (the caller fails it at once).
            (limits(30_000, 60_000, 1_024, 5_000), 3, 15_000, 5_000, slow),
            // Rate 0 turns the check off.
            (limits(30_000, 60_000, 0, 5_000), 0, 0, 30_000, stall),
            (limits(30_000, 60_000, 0, 5_000), 0, 45_000, 60_000, slow),
            // A huge body count saturates instead of overflowing.
            (
                limits(1_000, 60_000, 1, 5_000),
                u64::MAX as usize,
                0,
                1_000,
                stall,
            ),
        ];
        for (i, (l, received, at, due, kind)) in cases.into_iter().enumerate() {
            let start = Instant::now();
            let mut pace = BodyPace::new(&l, start, 0);
            pace.record(received);
            let (deadline, e) = pace.deadline(start + Duration::from_millis(at));
            assert_eq!(
                (deadline.duration_since(start).as_millis() as u64, e),
                (due, kind),
                "case {i}"
            );
        }
    }
}
