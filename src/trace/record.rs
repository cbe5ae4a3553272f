//! Finished spans as the workers hand them over: fixed-size records whose strings live in
//! their batch's text buffer, so recording a span copies a few bytes into reused buffers and
//! allocates nothing once the batch has grown to its working size.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::context::{SpanId, TraceId};

/// Most events one span carries; more are counted as dropped.
pub const MAX_EVENTS: usize = 4;

/// A string of a [`SpanBatch`]'s text buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Text {
    start: u32,
    len: u32,
}

/// A span's ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// All zero: a root span.
    pub parent_id: SpanId,
}

/// A point in a span's life (a quota decision, a breaker refusal, the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// The event's name, e.g. `shardgate.quota`.
    pub name: &'static str,
    /// When it happened (the exporter turns instants into Unix time).
    pub at: Instant,
    /// One attribute `(key, value)`, if any.
    pub attr: Option<(&'static str, &'static str)>,
}

/// Up to [`MAX_EVENTS`] events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Events {
    list: [Option<Event>; MAX_EVENTS],
    /// Events that did not fit.
    pub dropped: u8,
}

impl Events {
    pub fn push(&mut self, e: Event) {
        match self.list.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(e),
            None => self.dropped = self.dropped.saturating_add(1),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.list.iter().flatten()
    }
}

/// The gateway's span of one request (kind SERVER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSpan {
    pub ids: Ids,
    pub start: Instant,
    pub end: Instant,
    /// `http.request.method` (`_OTHER` for extension methods).
    pub method: &'static str,
    /// HTTP minor version of the request (`network.protocol.version` 1.0 / 1.1).
    pub minor_version: u8,
    /// 0: no response was sent.
    pub status: u16,
    /// `error.type` when the gateway answered with its own error (its kind).
    pub error: Option<&'static str>,
    pub route: Text,
    pub path: Text,
    pub request_model: Text,
    /// `model@version` of the deployment a split chose (empty: none).
    pub deployment: Text,
    pub subject: Text,
    pub client: Option<IpAddr>,
    /// `(input, output)` tokens the response reported.
    pub usage: Option<(u32, u32)>,
    pub events: Events,
}

/// One attempt to reach an upstream (kind CLIENT), a child of the request's server span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSpan {
    pub ids: Ids,
    pub start: Instant,
    pub end: Instant,
    pub method: &'static str,
    /// 0: no response head was read.
    pub status: u16,
    /// `error.type`: the failure's kind (connect failed, timeout, ...), or the status class.
    pub error: Option<&'static str>,
    /// The upstream's name (`model@version` for a deployment).
    pub upstream: Text,
    /// The endpoint (none when no endpoint could be used).
    pub endpoint: Option<SocketAddr>,
    /// 1 for the first attempt of a request.
    pub attempt: u8,
    /// The connection came from the pool.
    pub reused: bool,
    pub events: Events,
}

/// A finished span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanRecord {
    Server(ServerSpan),
    Client(ClientSpan),
}

/// Finished spans of one worker, sent to the exporter as one message and sent back empty
/// for reuse.
#[derive(Debug, Default)]
pub struct SpanBatch {
    pub spans: Vec<SpanRecord>,
    text: Vec<u8>,
}

impl SpanBatch {
    pub fn with_capacity(spans: usize) -> SpanBatch {
        SpanBatch {
            spans: Vec::with_capacity(spans),
            text: Vec::with_capacity(spans * 64),
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn clear(&mut self) {
        self.spans.clear();
        self.text.clear();
    }

    /// Copies `s` into the text buffer.
    pub fn text(&mut self, s: &str) -> Text {
        let start = self.text.len() as u32;
        self.text.extend_from_slice(s.as_bytes());
        Text {
            start,
            len: s.len() as u32,
        }
    }

    /// The string `t` names (empty if it is not of this batch).
    pub fn str(&self, t: Text) -> &str {
        let (s, e) = (t.start as usize, t.start as usize + t.len as usize);
        self.text
            .get(s..e)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip_and_events_overflow_is_counted() {
        let mut b = SpanBatch::with_capacity(2);
        let a = b.text("/v1/*rest");
        let e = b.text("");
        let c = b.text("llama@1.0.0");
        assert_eq!(
            (b.str(a), b.str(e), b.str(c)),
            ("/v1/*rest", "", "llama@1.0.0")
        );
        assert_eq!(b.str(Text::default()), "");
        let mut ev = Events::default();
        for _ in 0..6 {
            ev.push(Event {
                name: "e",
                at: Instant::now(),
                attr: None,
            });
        }
        assert_eq!(ev.iter().count(), MAX_EVENTS);
        assert_eq!(ev.dropped, 2);
    }
}
