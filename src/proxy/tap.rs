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
//! After the body, [`Tap::usage`] gives what the response used: the backend's `usage`
//! (prompt, completion and cached tokens) when it sent one, else (for a stream cut short)
//! completion tokens estimated from the content deltas.
//!
//! # Performance
//!
//! A meter's buffers and scanner come from this thread's spare ones and go back when the tap
//! is dropped ([`Spare`]), so a warm worker allocates nothing for a tap without a translator.

use std::cell::RefCell;

use crate::adapt::Translator;
use crate::error::UpstreamError;
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

/// The per-response state: an optional translator, then the usage meter.
pub struct Tap<'a> {
    translate: Option<Translator<'a>>,
    meter: Meter,
}

/// The usage meter over the bytes the client gets.
enum Meter {
    None,
    /// A JSON body whose translator states its usage ([`Translator::usage`]).
    Translated,
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
        let counted = translate.as_ref().is_some_and(Translator::counts_usage);
        let meter = match spec {
            None => Meter::None,
            // The translation says what it wrote: the translated body is not read again.
            Some(UsageSpec::Json) if counted => Meter::Translated,
            Some(UsageSpec::Json) => Meter::Json { buf: Spare::buf() },
            Some(UsageSpec::Sse { strip }) => {
                let strip = strip && !length_framed;
                Meter::Sse {
                    scanner: Spare::scanner(strip),
                    out: Spare::buf(),
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

    /// What the response used (see the module docs); `None` when nothing can be told.
    pub fn usage(&mut self) -> Option<Usage> {
        match self.meter {
            Meter::Translated => self.translate.as_ref().and_then(Translator::usage),
            _ => self.meter.usage(),
        }
    }

    /// Whether the usage event is being removed from the client's stream.
    pub fn strips(&self) -> bool {
        matches!(self.meter, Meter::Sse { strip: true, .. })
    }
}

impl Meter {
    fn pass(&mut self, data: &[u8], forward: &mut dyn FnMut(&[u8])) {
        match self {
            Meter::None | Meter::Translated => forward(data),
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

    fn usage(&mut self) -> Option<Usage> {
        match self {
            Meter::None | Meter::Translated => None,
            Meter::Json { buf } => usage_from_body(buf),
            Meter::Sse { scanner, .. } => Some(match scanner.usage() {
                Some(u) => u,
                None => Usage::from_parts(0, scanner.estimated_completion_tokens(), 0),
            }),
        }
    }
}

/// The meter's buffers and scanner go back to this thread's spares.
impl Drop for Tap<'_> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.meter, Meter::None) {
            Meter::None | Meter::Translated => {}
            Meter::Json { buf } => Spare::give_buf(buf),
            Meter::Sse { scanner, out, .. } => {
                Spare::give_scanner(scanner);
                Spare::give_buf(out);
            }
        }
    }
}

/// This thread's spare tap buffers and scanners (one set per worker thread: nothing is
/// shared). At most [`SPARE_KEEP`] of each are kept, and no buffer of more than
/// [`SPARE_BUF_KEEP`] bytes, so a burst of large responses does not pin memory.
#[derive(Default)]
struct Spare {
    bufs: Vec<Vec<u8>>,
    // The boxes themselves are what is reused: a tap holds its scanner boxed.
    #[allow(clippy::vec_box)]
    scanners: Vec<Box<SseUsageScanner>>,
}

/// Spare buffers (and scanners) a thread keeps: about the responses a worker relays at once.
pub const SPARE_KEEP: usize = 256;
/// Buffers (and scanners whose buffers) grew beyond this are freed rather than kept.
pub const SPARE_BUF_KEEP: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Spare> = RefCell::new(Spare::default());
}

impl Spare {
    /// An empty buffer, a spare one when there is one.
    fn buf() -> Vec<u8> {
        SPARE
            .try_with(|s| s.borrow_mut().bufs.pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// A scanner as [`SseUsageScanner::new`] makes it, a spare one when there is one.
    fn scanner(strip: bool) -> Box<SseUsageScanner> {
        match SPARE
            .try_with(|s| s.borrow_mut().scanners.pop())
            .ok()
            .flatten()
        {
            Some(mut s) => {
                s.reset(strip);
                s
            }
            None => Box::new(SseUsageScanner::new(strip)),
        }
    }

    fn give_buf(mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > SPARE_BUF_KEEP {
            return;
        }
        buf.clear();
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.bufs.len() < SPARE_KEEP {
                s.bufs.push(buf);
            }
        });
    }

    fn give_scanner(scanner: Box<SseUsageScanner>) {
        if scanner.capacity() > SPARE_BUF_KEEP {
            return;
        }
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.scanners.len() < SPARE_KEEP {
                s.scanners.push(scanner);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tap as [`Tap::new`] made it before taps reused spare buffers.
    fn fresh(spec: Option<UsageSpec>, length_framed: bool) -> Tap<'static> {
        Tap {
            translate: None,
            meter: match spec {
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
            },
        }
    }

    /// What a tap forwards for `chunks` (then `finish`), the tokens it counts, and whether it
    /// strips.
    fn run(mut t: Tap<'_>, chunks: &[&[u8]]) -> (Vec<u8>, Option<u64>, bool) {
        let mut seen = Vec::new();
        for c in chunks {
            t.pass(c, &mut |d| seen.extend_from_slice(d));
        }
        t.finish(&mut |d| seen.extend_from_slice(d)).unwrap();
        (seen, t.usage().map(|u| u64::from(u.total())), t.strips())
    }

    /// A tap built from the spare buffers and scanner of dropped taps behaves exactly as a
    /// fresh one, whatever the dropped taps were in the middle of (an event held back, a
    /// usage already read, a body cut short, an oversized event), for every kind of tap.
    #[test]
    fn a_tap_on_spare_buffers_starts_fresh() {
        const USAGE: &[u8] = b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\n\n";
        let big = format!(
            "data: {{\"choices\":[],\"pad\":\"{}\"}}\n\n",
            "x".repeat(SPARE_BUF_KEEP)
        );
        let leftovers: [&[u8]; 6] = [
            b"data: {\"choices\":[],\"usa",
            USAGE,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\n\n",
            br#"{"usage":{"total_tokens":9}}"#,
            big.as_bytes(),
            b"",
        ];
        let specs = [
            None,
            Some(UsageSpec::Json),
            Some(UsageSpec::Sse { strip: true }),
            Some(UsageSpec::Sse { strip: false }),
        ];
        let inputs: [&[&[u8]]; 3] = [
            &[b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n", USAGE, b"data: [DONE]\n\n"],
            &[b"data: {\"choices\":[{\"delta\":{\"content\":\"cut sh"],
            &[br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#],
        ];
        for before in specs {
            for leftover in leftovers {
                for spec in specs {
                    for length_framed in [false, true] {
                        for input in inputs {
                            for _ in 0..2 {
                                let mut old = Tap::new(before, false, None);
                                old.pass(leftover, &mut |_| {});
                                drop(old);
                            }
                            let got = run(Tap::new(spec, length_framed, None), input);
                            let want = run(fresh(spec, length_framed), input);
                            assert_eq!(got, want, "{spec:?} after {before:?} {leftover:?}");
                        }
                    }
                }
            }
        }
    }

    /// Dropped taps' buffers are reused (so a warm worker does not allocate for a tap), and
    /// no more than a bounded number, of a bounded size, are kept.
    #[test]
    fn spare_buffers_are_reused_and_bounded() {
        let mut t = Tap::new(Some(UsageSpec::Json), true, None);
        t.pass(&[b'x'; 100], &mut |_| {});
        drop(t);
        match &Tap::new(Some(UsageSpec::Json), true, None).meter {
            Meter::Json { buf } => assert!(buf.is_empty() && buf.capacity() >= 100),
            _ => unreachable!(),
        }
        let many: Vec<Tap<'_>> = (0..SPARE_KEEP + 10)
            .map(|_| {
                let mut t = Tap::new(Some(UsageSpec::Sse { strip: true }), false, None);
                t.pass(b"data: x\n\n", &mut |_| {});
                t
            })
            .collect();
        drop(many);
        SPARE.with(|s| {
            let s = s.borrow();
            assert!(s.bufs.len() <= SPARE_KEEP && s.scanners.len() <= SPARE_KEEP);
            assert!(s
                .bufs
                .iter()
                .all(|b| b.is_empty() && b.capacity() <= SPARE_BUF_KEEP));
        });
        let mut t = Tap::new(Some(UsageSpec::Json), true, None);
        t.pass(&vec![b'x'; SPARE_BUF_KEEP + 1], &mut |_| {});
        drop(t);
        SPARE.with(|s| {
            assert!(s
                .borrow()
                .bufs
                .iter()
                .all(|b| b.capacity() <= SPARE_BUF_KEEP));
        });
    }

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
        assert_eq!(t.usage().map(|u| u.total()), Some(7));
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
        assert_eq!(
            t.usage(),
            Some(Usage::from_parts(1, 2, 0)).map(|u| Usage {
                total_tokens: 3,
                ..u
            })
        );
    }
}
