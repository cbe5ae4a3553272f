//! Reading token usage out of a response while it is relayed.
//!
//! # Contract
//!
//! A [`Tap`] sees every payload byte of a successful response on its way to the client and
//! may change what is forwarded: the SSE tap drops the final usage event when the gateway,
//! not the client, asked the backend for it. Events are forwarded as soon as they are known
//! not to be the usage event, so nothing a client can act on is delayed. After the body,
//! [`Tap::usage`] gives what the response used: the backend's `usage` (prompt, completion and
//! cached tokens) when it sent one, else (for a stream cut short) completion tokens estimated
//! from the content deltas.

use crate::quota::usage::{usage_from_body, SseUsageScanner, Usage};

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

/// The per-response accounting state.
pub enum Tap {
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

impl Tap {
    /// A tap for `spec`; `length_framed`: the response has a fixed Content-Length, so bytes
    /// cannot be dropped from it (the usage event is then passed through).
    pub fn new(spec: Option<UsageSpec>, length_framed: bool) -> Tap {
        match spec {
            None => Tap::None,
            Some(UsageSpec::Json) => Tap::Json { buf: Vec::new() },
            Some(UsageSpec::Sse { strip }) => {
                let strip = strip && !length_framed;
                Tap::Sse {
                    scanner: Box::new(SseUsageScanner::new(strip)),
                    out: Vec::new(),
                    strip,
                }
            }
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Tap::None)
    }

    /// Passes `data` through; what to forward is handed to `forward`.
    pub fn pass(&mut self, data: &[u8], forward: &mut dyn FnMut(&[u8])) {
        match self {
            Tap::None => forward(data),
            Tap::Json { buf } => {
                if buf.len() + data.len() <= MAX_USAGE_BODY {
                    buf.extend_from_slice(data);
                }
                forward(data);
            }
            Tap::Sse { scanner, out, .. } => {
                out.clear();
                scanner.feed(data, out);
                forward(out);
            }
        }
    }

    /// Flushes anything held back at the end of the body.
    pub fn finish(&mut self, forward: &mut dyn FnMut(&[u8])) {
        if let Tap::Sse { scanner, out, .. } = self {
            out.clear();
            scanner.finish(out);
            forward(out);
        }
    }

    /// What the response used (see the module docs); `None` when nothing can be told.
    pub fn usage(&mut self) -> Option<Usage> {
        match self {
            Tap::None => None,
            Tap::Json { buf } => usage_from_body(buf),
            Tap::Sse { scanner, .. } => Some(match scanner.usage() {
                Some(u) => u,
                None => Usage::from_parts(0, scanner.estimated_completion_tokens(), 0),
            }),
        }
    }

    /// Whether the usage event is being removed from the client's stream.
    pub fn strips(&self) -> bool {
        matches!(self, Tap::Sse { strip: true, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage_is_read() {
        let mut t = Tap::new(Some(UsageSpec::Json), true);
        let body =
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let mut seen = Vec::new();
        for part in body.chunks(5) {
            t.pass(part, &mut |d| seen.extend_from_slice(d));
        }
        assert_eq!(seen, body);
        assert_eq!(t.usage().map(|u| u.total()), Some(7));
    }

    #[test]
    fn sse_usage_event_is_stripped_and_counted() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\ndata: [DONE]\n\n";
        let mut t = Tap::new(Some(UsageSpec::Sse { strip: true }), false);
        let mut seen = Vec::new();
        for part in stream.chunks(7) {
            t.pass(part, &mut |d| seen.extend_from_slice(d));
        }
        t.finish(&mut |d| seen.extend_from_slice(d));
        let text = String::from_utf8(seen).unwrap();
        assert!(text.contains("\"hi\"") && text.contains("[DONE]"));
        assert!(!text.contains("usage"), "{text}");
        assert_eq!(
            t.usage(),
            Some(Usage::from_parts(1, 2, 0)).map(|u| Usage {
                total_tokens: 3,
                ..u
            })
        );
    }
}
