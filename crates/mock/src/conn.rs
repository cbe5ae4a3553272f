//! One mock connection, framed by the gateway's codec ([`shardgate_http`]): heads parsed by
//! [`parse_request_head`] (no path normalisation: the mock sees exactly the target that was
//! sent), bodies by [`BodyDecoder`], responses written with [`write`]'s head and chunk writers.
//!
//! Keep-alive by default (HTTP/1.0: only with `Connection: keep-alive`), `Connection: close`
//! honoured, pipelining-safe (requests are answered one at a time in arrival order; bytes of
//! the next request wait in the buffer), request bodies framed by `Content-Length` or
//! `Transfer-Encoding: chunked` (trailers skipped). A head or body the codec refuses is
//! answered with its status (a malformed one `400`, an oversized head `431`, an oversized
//! body `413`) and the connection is closed.
use std::fmt::Write as FmtWrite;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use shardgate_http::body::BodyDecoder;
use shardgate_http::limits::MAX_HEADERS;
use shardgate_http::parse::{parse_request_head, BodyFraming, RequestHead};
use shardgate_http::{write, Limits};

use super::reply::{self, Ask, Kind};
use super::{anthropic, Mock};

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Initial read buffer capacity; it grows for large bodies and is reused across requests.
const INIT_BUF: usize = 16 * 1024;
/// Smallest free space handed to a read.
const MIN_READ: usize = 4 * 1024;

/// The mock's request limits: a head (request line included) up to [`MAX_HEAD`], as many
/// fields as the codec parses, a body up to [`MAX_BODY`].
fn limits() -> Limits {
    Limits::bounded(MAX_HEAD, MAX_HEADERS, MAX_BODY as u64)
}

/// Per-request overrides from `x-mock-*` headers.
#[derive(Debug, Default, Clone, Copy)]
struct Overrides {
    latency_ms: Option<u64>,
    chunks: Option<u32>,
    gap_ms: Option<u64>,
    status: Option<u16>,
    close_after: Option<u32>,
    hang: bool,
    pause_once_ms: Option<u64>,
    /// `/v1/messages` streams: an `error` event after this many deltas.
    error_after: Option<u32>,
    /// `/v1/messages`: answer 200 with a body that is not JSON.
    malformed: bool,
    /// `/v1/messages` streams: an event type the API does not send, after the first delta.
    unknown_event: bool,
    /// `/v1/messages`: `cache_read_input_tokens`.
    cache_read: Option<u64>,
}

impl Overrides {
    /// The `x-mock-*` fields of a head parsed from `req` (the request's bytes).
    fn of(head: &RequestHead, req: &[u8]) -> Self {
        let mut ov = Overrides::default();
        for (name, value) in head.headers(req) {
            let Some(knob) = name
                .get(..7)
                .filter(|p| p.eq_ignore_ascii_case(b"x-mock-"))
                .map(|_| name[7..].to_ascii_lowercase())
            else {
                continue;
            };
            let v = std::str::from_utf8(value).unwrap_or("").trim();
            let num = || v.parse::<u64>().ok();
            match &knob[..] {
                b"latency-ms" => ov.latency_ms = num(),
                b"chunks" => ov.chunks = num().map(|n| n as u32),
                b"gap-ms" => ov.gap_ms = num(),
                b"status" => ov.status = num().map(|n| n as u16),
                b"close-after-chunks" => ov.close_after = num().map(|n| n as u32),
                b"hang" => ov.hang = v != "0" && !v.eq_ignore_ascii_case("false"),
                b"pause-once-ms" => ov.pause_once_ms = num(),
                b"error-after-chunks" => ov.error_after = num().map(|n| n as u32),
                b"malformed" => ov.malformed = v != "0",
                b"unknown-event" => ov.unknown_event = v != "0",
                b"cache-read" => ov.cache_read = num(),
                _ => {}
            }
        }
        ov
    }
}

/// What the rest of an exchange needs of its head.
#[derive(Debug, Clone)]
struct Head {
    len: usize,
    minor: u8,
    keep_alive: bool,
    framing: BodyFraming,
    ov: Overrides,
}

/// Connection state: the stream and its reused buffers.
struct Conn {
    stream: TcpStream,
    mock: Arc<Mock>,
    limits: Limits,
    /// The current request's head; its spans are relative to `pos`.
    req: RequestHead,
    /// Bytes read; the current request starts at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// Decoded chunked body / JSON scratch.
    body: Vec<u8>,
    json: Vec<u8>,
    bufs: simd_json::Buffers,
    /// Response head+body under construction.
    out: Vec<u8>,
    /// Response body / event under construction.
    scratch: Vec<u8>,
    rng: u64,
}

/// Counts one request in flight (`vllm:num_requests_running`) until dropped.
struct InFlight(Arc<Mock>);

impl InFlight {
    fn count(mock: &Arc<Mock>) -> Self {
        mock.knobs.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(mock.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.knobs.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection until the peer closes, `Connection: close`, an error, or a
/// failure mode ends it.
pub(super) async fn run(stream: TcpStream, mock: Arc<Mock>) {
    let seed = mock.knobs.requests.load(Ordering::Relaxed) ^ (&stream as *const _ as u64);
    let mut c = Conn {
        stream,
        mock,
        limits: limits(),
        req: RequestHead::default(),
        buf: Vec::with_capacity(INIT_BUF),
        pos: 0,
        body: Vec::new(),
        json: Vec::new(),
        bufs: simd_json::Buffers::default(),
        out: Vec::with_capacity(INIT_BUF),
        scratch: Vec::with_capacity(INIT_BUF),
        rng: seed | 1,
    };
    while let Ok(true) = c.one().await {}
}

impl Conn {
    /// Reads more bytes after `buf.len()`; `Ok(0)` at EOF.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(MIN_READ.max(self.buf.len()));
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self
            .stream
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..))
            .await;
        self.buf = slice.into_inner();
        res
    }

    async fn send_out(&mut self) -> std::io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.stream.write_all(out).await;
        out.clear();
        self.out = out;
        res.map(|_| ())
    }

    /// Handles one request; `Ok(true)` to keep the connection.
    async fn one(&mut self) -> std::io::Result<bool> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let len = loop {
            match parse_request_head(&self.buf[self.pos..], &self.limits, &mut self.req) {
                Ok(Some(len)) => break len,
                Ok(None) => {
                    if self.pos > 0 {
                        self.buf.drain(..self.pos);
                        self.pos = 0;
                    }
                    if self.fill().await? == 0 {
                        return Ok(false);
                    }
                }
                Err(e) => {
                    self.respond_error(e.status(), "malformed request", false, 1)
                        .await?;
                    return Ok(false);
                }
            }
        };
        let head = Head {
            len,
            minor: self.req.minor_version,
            keep_alive: self.req.keep_alive,
            framing: self.req.framing,
            ov: Overrides::of(&self.req, &self.buf[self.pos..]),
        };
        let body = match self.read_body(&head).await? {
            Ok(body) => body,
            Err(status) => {
                self.respond_error(status, "malformed body", false, head.minor)
                    .await?;
                return Ok(false);
            }
        };
        let knobs = &self.mock.knobs;
        let n = knobs.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let _answering = InFlight::count(&self.mock);
        if let Some(d) = knobs.stall() {
            monoio::time::sleep(d).await;
        }
        if let Some(ms) = head.ov.pause_once_ms {
            self.mock.knobs.arm_pause(ms);
        }
        if head.ov.hang || self.mock.knobs.hang.load(Ordering::Relaxed) {
            // Never answer; hold the connection until the peer gives up.
            while self.fill().await? > 0 {}
            return Ok(false);
        }
        let delay = match head.ov.latency_ms {
            Some(ms) => ms,
            None => {
                let jitter = self.mock.cfg.jitter_ms;
                let jitter = if jitter > 0 {
                    self.rand() % (jitter + 1)
                } else {
                    0
                };
                self.mock.knobs.latency_ms.load(Ordering::Relaxed) + jitter
            }
        };
        if delay > 0 {
            monoio::time::sleep(Duration::from_millis(delay)).await;
        }
        let end = body.end;
        let keep = self.dispatch(&head, body, n).await?;
        self.pos = end;
        Ok(keep && head.keep_alive)
    }

    /// Reads the body; returns where the request ends in `buf` and the body bytes (in `buf`
    /// for `Content-Length`, decoded into `self.body` for chunked). `Err(status)`: the body
    /// breaks the framing rules.
    async fn read_body(&mut self, head: &Head) -> std::io::Result<Result<BodySpan, u16>> {
        let start = self.pos + head.len;
        let n = match head.framing {
            BodyFraming::None => 0,
            BodyFraming::Length(n) => n as usize,
            BodyFraming::Chunked => {
                self.body.clear();
                let mut dec = BodyDecoder::request(head.framing, MAX_BODY as u64);
                let mut at = start;
                loop {
                    match dec.decode_into(&self.buf[at..], &mut self.body) {
                        Ok(used) => at += used,
                        Err(e) => return Ok(Err(e.status())),
                    }
                    if dec.is_done() {
                        return Ok(Ok(BodySpan {
                            in_buf: None,
                            end: at,
                        }));
                    }
                    if self.fill().await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        };
        while self.buf.len() < start + n {
            self.buf.reserve(start + n - self.buf.len());
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(Ok(BodySpan {
            in_buf: Some(start..start + n),
            end: start + n,
        }))
    }

    fn rand(&mut self) -> u64 {
        // xorshift64: fine for failure draws and jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Status forced by header, runtime knob, or a `fail_rate` draw.
    fn forced_status(&mut self, ov: &Overrides) -> Option<u16> {
        if let Some(s) = ov.status {
            return Some(s);
        }
        let knobs = &self.mock.knobs;
        match knobs.fail_status.load(Ordering::Relaxed) {
            0 => {}
            s => return Some(s),
        }
        let ppm = knobs.fail_ppm.load(Ordering::Relaxed) as u64;
        (ppm > 0 && self.rand() % 1_000_000 < ppm).then_some(self.mock.cfg.fail_status)
    }

    /// Routes and answers one request; `Ok(false)` when the connection must close.
    async fn dispatch(&mut self, head: &Head, span: BodySpan, n: u64) -> std::io::Result<bool> {
        let keep = head.keep_alive;
        let messages = self.req.method.as_str() == "POST"
            && self.req.path.get(&self.buf[self.pos..]) == b"/v1/messages";
        if messages {
            return self.messages(head, &span, n).await;
        }
        if let Some(status) = self.forced_status(&head.ov) {
            self.respond_error(status, "mock failure", keep, head.minor)
                .await?;
            return Ok(keep);
        }
        let req = &self.buf[self.pos..];
        let path = std::str::from_utf8(self.req.path.get(req)).unwrap_or("");
        let kind = match (self.req.method.as_str(), path) {
            (_, p) if p == "/echo" || p.starts_with("/echo/") => {
                self.echo(head, &span);
                return self.finish_full(200, keep, head).await;
            }
            ("GET", "/health") => {
                self.scratch.extend_from_slice(br#"{"status":"ok"}"#);
                return self.finish_full(200, keep, head).await;
            }
            ("GET", "/metrics") => {
                let knobs = &self.mock.knobs;
                // This request is in flight too; it is not the server's load.
                let running = knobs.in_flight.load(Ordering::Relaxed).saturating_sub(1);
                let waiting = knobs.waiting.load(Ordering::Relaxed);
                let requests = knobs.requests.load(Ordering::Relaxed);
                let model = &self.mock.cfg.model;
                reply::metrics(&mut self.scratch, model, running, waiting, requests);
                self.head(
                    200,
                    reply::METRICS_TYPE,
                    Some(self.scratch.len()),
                    keep,
                    head.minor,
                );
                self.out.extend_from_slice(&self.scratch);
                self.scratch.clear();
                self.send_out().await?;
                return Ok(keep);
            }
            ("GET", "/v1/models") => {
                reply::models(
                    &mut self.scratch,
                    &self.mock.cfg.model,
                    &self.mock.cfg.version,
                );
                return self.finish_full(200, keep, head).await;
            }
            ("POST", "/v1/chat/completions") => Some((Kind::Chat, "messages")),
            ("POST", "/v1/completions") => Some((Kind::Text, "prompt")),
            ("POST", "/v1/embeddings") => None,
            _ => {
                reply::error(&mut self.scratch, 404, "no such endpoint");
                return self.finish_full(404, keep, head).await;
            }
        };
        self.json.clear();
        match &span.in_buf {
            Some(r) => self.json.extend_from_slice(&self.buf[r.clone()]),
            None => self.json.extend_from_slice(&self.body),
        }
        let cfg = &self.mock.cfg;
        let field = kind.map_or("input", |k| k.1);
        let mut json = std::mem::take(&mut self.json);
        let ask = reply::inspect(
            &mut json,
            &mut self.bufs,
            field,
            &cfg.model,
            cfg.default_completion_tokens,
        );
        let Ok(ask) = ask else {
            self.json = json;
            self.respond_error(400, "request body is not a JSON object", keep, head.minor)
                .await?;
            return Ok(keep);
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let Some((kind, _)) = kind else {
            // `inspect` consumed the buffer in place; re-copy to count the inputs.
            json.clear();
            match &span.in_buf {
                Some(r) => json.extend_from_slice(&self.buf[r.clone()]),
                None => json.extend_from_slice(&self.body),
            }
            let inputs = reply::embedding_inputs(&mut json, &mut self.bufs);
            self.json = json;
            reply::embeddings(
                &mut self.scratch,
                &ask,
                inputs,
                self.mock.cfg.embedding_dims,
            );
            return self.finish_full(200, keep, head).await;
        };
        self.json = json;
        if ask.stream {
            return self.stream(kind, &ask, n, created, head).await;
        }
        reply::completion(
            &mut self.scratch,
            kind,
            &ask,
            n,
            created,
            self.mock.cfg.pad_bytes,
        );
        let close_after = head.ov.close_after.or(self.mock.cfg.close_after_chunks);
        if close_after.is_some() {
            // Truncate: promise the whole body, send half, close.
            let total = self.scratch.len();
            self.head(200, "application/json", Some(total), keep, head.minor);
            self.out.extend_from_slice(&self.scratch[..total / 2]);
            self.scratch.clear();
            self.send_out().await?;
            return Ok(false);
        }
        self.finish_full(200, keep, head).await
    }

    fn echo(&mut self, head: &Head, span: &BodySpan) {
        let req = &self.buf[self.pos..self.pos + head.len];
        let body = match &span.in_buf {
            Some(r) => &self.buf[r.clone()],
            None => &self.body[..],
        };
        // httparse admits only token characters in names and visible ASCII in targets.
        let text = |b| std::str::from_utf8(b).unwrap_or("");
        reply::echo(
            &mut self.scratch,
            self.req.method.as_str(),
            text(self.req.target(req)),
            head.minor,
            self.req.headers(req).map(|(n, v)| (text(n), v)),
            body,
        );
    }

    /// Writes a response head into `out`.
    fn head(&mut self, status: u16, ctype: &str, len: Option<usize>, keep: bool, minor: u8) {
        let cfg = &self.mock.cfg;
        write::status_line(&mut self.out, status);
        let _ = write!(
            self.out,
            "content-type: {ctype}\r\nx-mock-model: {}\r\nx-mock-version: {}\r\n",
            cfg.model, cfg.version
        );
        write::framing_fields(&mut self.out, len, keep, minor);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Sends `scratch` as a complete JSON response.
    async fn finish_full(&mut self, status: u16, keep: bool, head: &Head) -> std::io::Result<bool> {
        self.head(
            status,
            "application/json",
            Some(self.scratch.len()),
            keep,
            head.minor,
        );
        self.out.extend_from_slice(&self.scratch);
        self.scratch.clear();
        self.send_out().await?;
        Ok(keep)
    }

    async fn respond_error(
        &mut self,
        status: u16,
        msg: &str,
        keep: bool,
        minor: u8,
    ) -> std::io::Result<()> {
        self.scratch.clear();
        reply::error(&mut self.scratch, status, msg);
        self.head(
            status,
            "application/json",
            Some(self.scratch.len()),
            keep,
            minor,
        );
        self.out.extend_from_slice(&self.scratch);
        self.scratch.clear();
        self.send_out().await
    }

    /// Answers `POST /v1/messages` (see [`anthropic`]).
    async fn messages(&mut self, head: &Head, span: &BodySpan, n: u64) -> std::io::Result<bool> {
        let keep = head.keep_alive;
        if let Some(status) = self.forced_status(&head.ov) {
            return self.anthropic_error(status, "mock failure", head).await;
        }
        let req = &self.buf[self.pos..self.pos + head.len];
        if self.req.header(req, "anthropic-version").is_none() {
            return self
                .anthropic_error(400, "anthropic-version: header is required", head)
                .await;
        }
        self.json.clear();
        match &span.in_buf {
            Some(r) => self.json.extend_from_slice(&self.buf[r.clone()]),
            None => self.json.extend_from_slice(&self.body),
        }
        let mut json = std::mem::take(&mut self.json);
        let ask = anthropic::inspect(&mut json, &mut self.bufs);
        self.json = json;
        let ask = match ask {
            Ok(a) => a,
            Err(msg) => return self.anthropic_error(400, &msg, head).await,
        };
        let cfg = &self.mock.cfg;
        let (completion, cache_read) = (
            cfg.default_completion_tokens,
            head.ov.cache_read.unwrap_or(0),
        );
        if head.ov.malformed {
            self.scratch
                .extend_from_slice(br#"{"id":"msg_broken","content":[{"type":"text","#);
            return self.finish_full(200, keep, head).await;
        }
        if !ask.stream {
            anthropic::message(&mut self.scratch, &ask, n, completion, cache_read);
            return self.finish_full(200, keep, head).await;
        }
        let chunks = head.ov.chunks.unwrap_or(cfg.stream_chunks);
        let gap = Duration::from_millis(head.ov.gap_ms.unwrap_or(cfg.stream_gap_ms));
        let close_after = head.ov.close_after.or(cfg.close_after_chunks);
        let keep = head.keep_alive && head.minor == 1;
        self.head(200, "text/event-stream", None, keep, head.minor);
        anthropic::stream_open(&mut self.scratch, &ask, n, cache_read);
        self.frame(head.minor);
        let mut pace = Pace::new(gap);
        self.send_out().await?;
        let mut piece = String::new();
        for i in 0..chunks {
            pace.next().await;
            piece.clear();
            let _ = FmtWrite::write_fmt(&mut piece, format_args!("tok{i} "));
            if close_after == Some(i) {
                // Cut in the middle of the next event.
                anthropic::stream_text(&mut self.scratch, &piece);
                self.scratch.truncate(self.scratch.len() / 2);
                self.frame(head.minor);
                self.send_out().await?;
                return Ok(false);
            }
            if head.ov.error_after == Some(i) {
                anthropic::stream_error(&mut self.scratch);
                self.frame(head.minor);
                if head.minor == 1 {
                    self.out.extend_from_slice(write::LAST_CHUNK);
                }
                self.send_out().await?;
                return Ok(keep);
            }
            anthropic::stream_text(&mut self.scratch, &piece);
            if head.ov.unknown_event && i == 0 {
                anthropic::stream_unknown(&mut self.scratch);
            }
            self.frame(head.minor);
            self.send_out().await?;
        }
        anthropic::stream_close(&mut self.scratch, &ask, n, completion);
        self.frame(head.minor);
        if head.minor == 1 {
            self.out.extend_from_slice(write::LAST_CHUNK);
        }
        self.send_out().await?;
        Ok(keep)
    }

    /// An Anthropic-shaped error response.
    async fn anthropic_error(
        &mut self,
        status: u16,
        msg: &str,
        head: &Head,
    ) -> std::io::Result<bool> {
        self.scratch.clear();
        anthropic::error(&mut self.scratch, status, msg);
        self.finish_full(status, head.keep_alive, head).await
    }

    /// Moves the event in `scratch` to `out`, chunk-framed on HTTP/1.1.
    fn frame(&mut self, minor: u8) {
        if minor == 1 {
            write::chunk(&mut self.out, &self.scratch);
        } else {
            self.out.extend_from_slice(&self.scratch);
        }
        self.scratch.clear();
    }

    /// Streams an SSE completion; each event is written as soon as it is produced.
    async fn stream(
        &mut self,
        kind: Kind,
        ask: &Ask,
        id: u64,
        created: u64,
        head: &Head,
    ) -> std::io::Result<bool> {
        let cfg = &self.mock.cfg;
        let chunks = head.ov.chunks.unwrap_or(cfg.stream_chunks);
        let gap = Duration::from_millis(head.ov.gap_ms.unwrap_or(cfg.stream_gap_ms));
        let close_after = head.ov.close_after.or(cfg.close_after_chunks);
        // HTTP/1.0 has no chunked coding: the stream ends by closing.
        let keep = head.keep_alive && head.minor == 1;
        self.head(200, "text/event-stream", None, keep, head.minor);
        reply::stream_event(&mut self.scratch, kind, ask, id, created, None, false);
        self.frame(head.minor);
        let mut pace = Pace::new(gap);
        self.send_out().await?;
        let mut piece = String::new();
        for i in 0..chunks {
            if close_after == Some(i) {
                return Ok(false);
            }
            pace.next().await;
            piece.clear();
            let _ = FmtWrite::write_fmt(&mut piece, format_args!("tok{i} "));
            reply::stream_event(
                &mut self.scratch,
                kind,
                ask,
                id,
                created,
                Some(&piece),
                false,
            );
            self.frame(head.minor);
            self.send_out().await?;
        }
        if close_after == Some(chunks) {
            return Ok(false);
        }
        reply::stream_event(&mut self.scratch, kind, ask, id, created, None, true);
        self.frame(head.minor);
        if ask.include_usage {
            reply::stream_usage(&mut self.scratch, kind, ask, id, created);
            self.frame(head.minor);
        }
        self.scratch.extend_from_slice(reply::STREAM_DONE);
        self.frame(head.minor);
        if head.minor == 1 {
            self.out.extend_from_slice(write::LAST_CHUNK);
        }
        self.send_out().await?;
        Ok(keep)
    }
}

/// Where a request's body lies and where the request ends in the read buffer.
#[derive(Debug, Clone)]
struct BodySpan {
    /// `Content-Length` body inside `buf`; `None` = decoded into `Conn::body`.
    in_buf: Option<Range<usize>>,
    end: usize,
}

/// When a stream's events are due: event `k` (from 1) at `gap * k` after the first event was
/// ready to be written, not `gap` after the previous one was written, so time spent writing or waiting for a busy
/// core does not pile up into every later gap (a mock that drifts makes gaps the proxy under
/// test did not cause).
struct Pace {
    gap: Duration,
    next: Instant,
}

impl Pace {
    fn new(gap: Duration) -> Self {
        Self {
            gap,
            next: Instant::now() + gap,
        }
    }

    /// Waits for the next event's time (at once when the gap is zero or the time has passed).
    async fn next(&mut self) {
        if self.gap.is_zero() {
            return;
        }
        if self.next > Instant::now() {
            monoio::time::sleep_until(self.next.into()).await;
        }
        self.next += self.gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_keeps_a_fixed_schedule_after_a_late_turn() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let gap = Duration::from_millis(2);
            let mut pace = Pace::new(gap);
            let first_due = pace.next;
            pace.next().await;
            assert!(Instant::now() >= first_due);
            // A turn that comes late (a busy core) does not push the later events back:
            // they are due on the original schedule, so the next ones go at once.
            std::thread::sleep(Duration::from_millis(9));
            for _ in 0..3 {
                pace.next().await;
            }
            assert_eq!(pace.next, first_due + gap * 4);
            let mut none = Pace::new(Duration::ZERO);
            none.next().await;
        });
    }

    /// The head the mock reads from `raw`, or the status it answers.
    fn parse_head(raw: &[u8]) -> Result<Option<(Head, RequestHead)>, u16> {
        let mut req = RequestHead::default();
        match parse_request_head(raw, &limits(), &mut req) {
            Ok(Some(len)) => Ok(Some((
                Head {
                    len,
                    minor: req.minor_version,
                    keep_alive: req.keep_alive,
                    framing: req.framing,
                    ov: Overrides::of(&req, raw),
                },
                req,
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(e.status()),
        }
    }

    #[test]
    fn parses_framing_and_overrides() {
        let raw = b"POST /v1/x?q=1 HTTP/1.1\r\nHost: m\r\nContent-Length: 5\r\nX-Mock-Chunks: 3\r\nx-mock-hang: 1\r\nConnection: close\r\n\r\nhello";
        let (h, req) = parse_head(raw).unwrap().unwrap();
        assert_eq!(req.method.as_str(), "POST");
        assert_eq!(req.target(raw), b"/v1/x?q=1");
        assert_eq!(h.framing, BodyFraming::Length(5));
        assert_eq!(h.ov.chunks, Some(3));
        assert!(h.ov.hang && !h.keep_alive);
        assert_eq!(h.len, raw.len() - 5);
    }

    #[test]
    fn keep_alive_defaults_by_version() {
        let (h, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let (h, _) = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let (h, _) = parse_head(b"GET / HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive && h.framing == BodyFraming::Chunked);
    }

    #[test]
    fn rejects_bad_heads() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost").unwrap().is_none());
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: m\r\nContent-Length: x\r\n\r\n"[..],
            b"G\0T / HTTP/1.1\r\nHost: m\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(raw).map(|_| ()), Err(400), "{raw:?}");
        }
        let big = format!(
            "GET / HTTP/1.1\r\nHost: m\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(parse_head(big.as_bytes()).map(|_| ()), Err(413));
        let mut long = b"GET / HTTP/1.1\r\nx: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(parse_head(&long).map(|_| ()), Err(431));
    }
}
