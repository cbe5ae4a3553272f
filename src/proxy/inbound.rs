//! Request bodies from the client: streamed to the upstream, or collected for a stage that
//! must read them (the model split reads `model` from a JSON body).
//!
//! # Contract
//!
//! Both functions honour the body limit (413), the body idle timeout (408) and chunked
//! framing errors (400); every error closes the client connection, since the rest of the body
//! is still in flight.

use std::io::Write;
use std::time::Instant;

use monoio::io::AsyncWriteRentExt;

use super::pool::UpConn;
use super::Failure;
use crate::error::{self, GatewayError, UpstreamError};
use crate::http::body::ChunkedDecoder;
use crate::http::parse::BodyFraming;
use crate::http::Limits;
use crate::server::{ClientConn, ReadError};

/// Largest read while a body arrives.
pub const BODY_READ: usize = 64 * 1024;

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
        read_body_bytes(c, limits).await?;
    }
}

async fn read_body_bytes(c: &mut ClientConn, limits: &Limits) -> Result<(), GatewayError> {
    let deadline = Instant::now() + limits.body_idle_timeout;
    match c.read_more_until(deadline, BODY_READ).await {
        Ok(0) | Err(ReadError::Io) => Err(error::CLIENT_BODY_ERROR),
        Err(ReadError::Timeout) => Err(error::BODY_TIMEOUT),
        Ok(_) => Ok(()),
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
            let (res, buf) = up.stream.write_all(out).await;
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
        if let Err(e) = read_body_bytes(c, limits).await {
            break Err(Failure::Respond(e));
        }
    };
    c.out = out;
    result
}
