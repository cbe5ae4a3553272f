//! Adapters: what lets one OpenAI-shaped client reach a backend with another API.
//!
//! Two kinds, both chosen at config load and applied between the split and the proxy:
//!
//! - **Provider adapters** ([`anthropic`]): an upstream or deployment with
//!   `provider = "anthropic"` is sent Anthropic Messages requests translated from the client's
//!   Chat Completions request, and its responses, errors and event streams are translated back.
//! - **Schema transforms** ([`schema`]): a route with `transform = "name"` renames the fields
//!   of request bodies, JSON responses and SSE `data:` payloads by an OpenAPI document's
//!   `x-protocol-field` extensions and naming strategy, and checks requests against the schema.
//!
//! The request side runs in the pipeline's adapt stage (`pipeline::adapt`); the response side
//! is a [`Translator`] the relay's tap runs over the response bytes as they arrive (see
//! `proxy::tap`). Both are pure functions over reused buffers ([`Bufs`]); the readers they use
//! are [`json`] (allocation-free JSON) and [`sse`] (incremental event splitting).
//!
//! # Contract
//!
//! A [`Response`] says what to do with an upstream response; [`Response::client_status`] says
//! whether a response with a given status is rewritten at all and the status the client gets.
//! A [`Translator`] is fed the body read by read. Streams are translated event by event and
//! never held; a JSON body (or an error body) is held whole, up to [`MAX_HELD_BODY`], then
//! translated — if that fails nothing has been sent, and the client gets `502` instead.
//!
//! # Performance
//!
//! With no adapter configured nothing here runs. An adapted request allocates nothing once the
//! request slot's [`Bufs`] are warm.

pub mod anthropic;
pub mod json;
pub mod path;
pub mod schema;
pub mod sse;
pub mod transforms;

pub use transforms::{RawTransform, Transform, Transforms};

use anthropic::stream::Stream;
use json::Malformed;
use schema::{NodeId, Schema};

/// Largest response body held whole to be translated (larger ones are answered 502).
pub const MAX_HELD_BODY: usize = 4 * 1024 * 1024;
/// Adapter buffers that grew past this are freed when the request ends.
const KEEP_CAPACITY: usize = 64 * 1024;

/// What happens to an upstream response (chosen per request by the adapt stage).
#[derive(Debug, Clone, Copy)]
pub enum Response<'s> {
    /// Anthropic Messages → OpenAI Chat Completions (bodies, streams and errors).
    Anthropic,
    /// Backend → client field names of a transform's response schema (2xx JSON and SSE).
    Schema { schema: &'s Schema, root: NodeId },
}

impl Response<'_> {
    /// The status the client gets if a response with `status` is rewritten; `None`: it is
    /// relayed as it is.
    pub fn client_status(self, status: u16) -> Option<u16> {
        match self {
            Response::Anthropic => Some(anthropic::client_status(status)),
            Response::Schema { .. } => (200..300).contains(&status).then_some(status),
        }
    }
}

/// One request's adapter buffers, reused across the requests of a slot.
#[derive(Debug, Default)]
pub struct Bufs {
    /// A held body (JSON or error) until its end.
    held: Vec<u8>,
    /// What to send the client now.
    out: Vec<u8>,
    events: sse::Events,
    stream: Stream,
    /// Joined `data:` lines of a multi-line event (schema streams).
    data: Vec<u8>,
}

impl Bufs {
    /// Empties the buffers for the next request, freeing any that grew large.
    pub fn reset(&mut self) {
        for b in [&mut self.held, &mut self.out, &mut self.data] {
            if b.capacity() > KEEP_CAPACITY {
                *b = Vec::new();
            } else {
                b.clear();
            }
        }
        if self.events.capacity() > KEEP_CAPACITY {
            self.events = sse::Events::default();
        }
        if self.stream.capacity() > KEEP_CAPACITY {
            self.stream = Stream::default();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode<'s> {
    AnthropicJson,
    AnthropicError { status: u16 },
    AnthropicSse,
    SchemaJson(&'s Schema, NodeId),
    SchemaSse(&'s Schema, NodeId),
}

/// The rewriting of one response body (see the module docs).
pub struct Translator<'a> {
    mode: Mode<'a>,
    bufs: &'a mut Bufs,
    /// A held body grew past [`MAX_HELD_BODY`].
    too_big: bool,
    /// The usage of a translated Messages body, taken from the translation.
    usage: Option<crate::quota::usage::Usage>,
}

impl<'a> Translator<'a> {
    /// A translator for a response with upstream `status` (one [`Response::client_status`]
    /// rewrites); `event_stream`: its content type is `text/event-stream`.
    pub fn new(resp: Response<'a>, status: u16, event_stream: bool, bufs: &'a mut Bufs) -> Self {
        let ok = (200..300).contains(&status);
        let mode = match resp {
            Response::Anthropic if !ok => Mode::AnthropicError { status },
            Response::Anthropic if event_stream => Mode::AnthropicSse,
            Response::Anthropic => Mode::AnthropicJson,
            Response::Schema { schema, root } if event_stream => Mode::SchemaSse(schema, root),
            Response::Schema { schema, root } => Mode::SchemaJson(schema, root),
        };
        bufs.held.clear();
        bufs.out.clear();
        bufs.events.reset();
        if let Mode::AnthropicSse = mode {
            bufs.stream.reset(crate::time::unix_now());
        }
        Translator {
            mode,
            bufs,
            too_big: false,
            usage: None,
        }
    }

    /// Whether the translation itself says what the response used ([`Self::usage`]), so the
    /// usage meter need not read the translated body again: a `chat.completion` translated
    /// from a Messages body carries the counts the translation wrote.
    pub fn counts_usage(&self) -> bool {
        matches!(self.mode, Mode::AnthropicJson)
    }

    /// The usage the translated body states, once [`Self::finish`] wrote it (the same
    /// counts the usage meter reads back from it, see `anthropic::Tokens::openai_usage`);
    /// `None` before, for a body that could not be translated, or one whose counts the meter
    /// could not read either.
    pub fn usage(&self) -> Option<crate::quota::usage::Usage> {
        self.usage
    }

    /// Whether the body is held until its end (nothing may be sent before then).
    pub fn holds(&self) -> bool {
        !matches!(self.mode, Mode::AnthropicSse | Mode::SchemaSse(..))
    }

    /// Feeds one read of the upstream body; returns what to send now.
    pub fn feed(&mut self, data: &[u8]) -> &[u8] {
        let Bufs {
            held,
            out,
            events,
            stream,
            data: joined,
        } = &mut *self.bufs;
        out.clear();
        match self.mode {
            Mode::AnthropicSse => events.feed(data, &mut |ev| stream.event(ev, out)),
            Mode::SchemaSse(s, root) => {
                events.feed(data, &mut |ev| schema_event(s, root, ev, joined, out))
            }
            _ => {
                if held.len() + data.len() > MAX_HELD_BODY {
                    self.too_big = true;
                } else {
                    held.extend_from_slice(data);
                }
            }
        }
        out
    }

    /// The body ended: the rest to send. `Err`: a held body could not be translated (nothing
    /// was sent; answer 502).
    pub fn finish(&mut self) -> Result<&[u8], Malformed> {
        let Bufs {
            held,
            out,
            events,
            stream,
            ..
        } = &mut *self.bufs;
        out.clear();
        if self.too_big {
            return Err(Malformed);
        }
        match self.mode {
            Mode::AnthropicSse => stream.finish(events.pending(), out),
            // A cut event is incomplete: a client would not act on it.
            Mode::SchemaSse(..) => {}
            Mode::AnthropicJson => {
                let tokens = anthropic::message_response(held, crate::time::unix_now(), out)?;
                self.usage = tokens.openai_usage();
            }
            Mode::AnthropicError { status } => anthropic::error_response(held, status, out),
            Mode::SchemaJson(s, root) => schema::map::response(s, root, held, out)?,
        }
        Ok(out)
    }
}

/// One SSE event of a transformed stream: its JSON `data:` mapped, its other lines kept.
/// Data that is not JSON (`[DONE]`) or does not parse passes unchanged.
fn schema_event(
    s: &Schema,
    root: NodeId,
    ev: Result<&[u8], sse::Oversized>,
    joined: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    let Ok(ev) = ev else {
        out.extend_from_slice(b": event too large to map, dropped\n\n");
        return;
    };
    let start = out.len();
    let Some(data) = sse::data(ev, joined) else {
        out.extend_from_slice(ev);
        return;
    };
    let mut mapped = false;
    for line in sse::lines(ev) {
        if line.is_empty() {
            continue;
        }
        if line.starts_with(b"data:") {
            if !mapped {
                out.extend_from_slice(b"data: ");
                let at = out.len();
                let ok = matches!(
                    json::kind(json::trim(data)),
                    json::Kind::Object | json::Kind::Array
                ) && schema::map::response(s, root, data, out).is_ok();
                if !ok {
                    // Not JSON to map: the event goes out as it came.
                    out.truncate(start);
                    out.extend_from_slice(ev);
                    return;
                }
                debug_assert!(out.len() >= at);
                out.push(b'\n');
                mapped = true;
            }
            continue;
        }
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests;
