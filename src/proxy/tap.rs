//! Reading token usage out of a response while it is relayed, and rewriting the response on
//! the way when an adapter asks for it.
//!
//! # Contract
//!
//! A [`Tap`] sees every payload byte of a response on its way to the client and may change
//! what is forwarded, in two layers:
//!
//! 1. a [`Translator`] (provider adapter or schema transform, see [`crate::adapt`]) rewrites
//!    the upstream's bytes: streams event by event as they arrive, JSON bodies whole at the
//!    end (such a tap [`holds`](Tap::holds) the response: the relay sends nothing before the
//!    end, so a body that cannot be translated can still be answered with 502);
//! 2. the usage meter reads what the client gets (after translation): the SSE meter drops the
//!    final usage event when the gateway, not the client, asked the backend for it. Events are
//!    forwarded as soon as they are known not to be the usage event, so nothing a client can
//!    act on is delayed.
//!
//! After the body, [`Tap::tokens`] gives the tokens the response used: the reported
//! `usage.total_tokens` when there is one, else (for a stream cut short) an estimate from the
//! content deltas.

use crate::adapt::Translator;
use crate::error::UpstreamError;
use crate::quota::usage::{usage_from_body, SseUsageScanner};

/// Largest non-streamed body kept to read its `usage` (bigger ones are not accounted).
pub const MAX_USAGE_BODY: usize = 1024 * 1024;

/// What the pipeline asks the relay to account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSpec {
    /// A JSON (non-streamed) response.
    Json,
    /// A server-sent-event stream; `strip`: drop the usage event (the client did not ask).
    Sse { strip: bool },
}

/// The per-response state: an optional translator, then the usage meter.
pub struct Tap<'a> {
    translate: Option<Translator<'a>>,
    meter: Meter,
}

/// The usage meter over the bytes the client gets.
enum Meter {
    None,
    Json {
        buf: Vec<u8>,
    },
    Sse {
        scanner: Box<SseUsageScanner>,
        out: Vec<u8>,
        strip: bool,
    },
}

impl<'a> Tap<'a> {
    /// A tap for `spec`; `length_framed`: the response keeps the upstream's Content-Length, so
    /// bytes cannot be dropped from it (the usage event is then passed through). With a
    /// translator the client's framing is always re-declared, so the meter may strip.
    pub fn new(
        spec: Option<UsageSpec>,
        length_framed: bool,
        translate: Option<Translator<'a>>,
    ) -> Tap<'a> {
        let length_framed = length_framed && translate.is_none();
        let meter = match spec {
            None => Meter::None,
            Some(UsageSpec::Json) => Meter::Json { buf: Vec::new() },
            Some(UsageSpec::Sse { strip }) => {
                let strip = strip && !length_framed;
                Meter::Sse {
                    scanner: Box::new(SseUsageScanner::new(strip)),
                    out: Vec::new(),
                    strip,
                }
            }
        };
        Tap { translate, meter }
    }

    /// Whether the bytes go to the client exactly as they came (no translator, no meter).
    pub fn is_none(&self) -> bool {
        self.translate.is_none() && matches!(self.meter, Meter::None)
    }

    /// Whether the response is held until its end (see the module docs).
    pub fn holds(&self) -> bool {
        self.translate.as_ref().is_some_and(Translator::holds)
    }

    /// Passes `data` through; what to forward is handed to `forward`.
    pub fn pass(&mut self, data: &[u8], forward: &mut dyn FnMut(&[u8])) {
        match &mut self.translate {
            None => self.meter.pass(data, forward),
            Some(t) => {
                let out = t.feed(data);
                self.meter.pass(out, forward);
            }
        }
    }

    /// Flushes anything held back at the end of the body. `Err`: a held body could not be
    /// translated; nothing of it was forwarded.
    pub fn finish(&mut self, forward: &mut dyn FnMut(&[u8])) -> Result<(), UpstreamError> {
        if let Some(t) = &mut self.translate {
            let out = t.finish().map_err(|_| UpstreamError::BadResponse)?;
            self.meter.pass(out, forward);
        }
        self.meter.finish(forward);
        Ok(())
    }

    /// Tokens the response used (see the module docs); `None` when nothing can be told.
    pub fn tokens(&mut self) -> Option<u64> {
        self.meter.tokens()
    }

    /// Whether the usage event is being removed from the client's stream.
    pub fn strips(&self) -> bool {
        matches!(self.meter, Meter::Sse { strip: true, .. })
    }
}

impl Meter {
    fn pass(&mut self, data: &[u8], forward: &mut dyn FnMut(&[u8])) {
        match self {
            Meter::None => forward(data),
            Meter::Json { buf } => {
                if buf.len() + data.len() <= MAX_USAGE_BODY {
                    buf.extend_from_slice(data);
                }
                forward(data);
            }
            Meter::Sse { scanner, out, .. } => {
                out.clear();
                scanner.feed(data, out);
                forward(out);
            }
        }
    }

    fn finish(&mut self, forward: &mut dyn FnMut(&[u8])) {
        if let Meter::Sse { scanner, out, .. } = self {
            out.clear();
            scanner.finish(out);
            forward(out);
        }
    }

    fn tokens(&mut self) -> Option<u64> {
        match self {
            Meter::None => None,
            Meter::Json { buf } => usage_from_body(buf).map(|u| u64::from(u.total())),
            Meter::Sse { scanner, .. } => Some(match scanner.usage() {
                Some(u) => u64::from(u.total()),
                None => u64::from(scanner.estimated_completion_tokens()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage_is_read() {
        let mut t = Tap::new(Some(UsageSpec::Json), true, None);
        let body =
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let mut seen = Vec::new();
        for part in body.chunks(5) {
            t.pass(part, &mut |d| seen.extend_from_slice(d));
        }
        assert_eq!(seen, body);
        assert_eq!(t.tokens(), Some(7));
    }

    #[test]
    fn sse_usage_event_is_stripped_and_counted() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
        let mut t = Tap::new(Some(UsageSpec::Sse { strip: true }), false, None);
        let mut seen = Vec::new();
        for part in stream.chunks(7) {
            t.pass(part, &mut |d| seen.extend_from_slice(d));
        }
        t.finish(&mut |d| seen.extend_from_slice(d)).unwrap();
        let text = String::from_utf8(seen).unwrap();
        assert!(text.contains("\"hi\"") && text.contains("[DONE]"));
        assert!(!text.contains("usage"), "{text}");
        assert_eq!(t.tokens(), Some(3));
    }
}
