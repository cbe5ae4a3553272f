//! Server-sent events, split incrementally: the upstream's bytes arrive in reads of any size
//! and an event may straddle any number of them.
//!
//! # Contract
//!
//! [`Events::feed`] hands every complete event (its lines, up to and including the empty line
//! that ends it) to a callback, in order, as soon as its last byte arrives, and keeps the
//! unfinished tail for the next read. Lines end in `\n` or `\r\n`. An event longer than
//! [`MAX_EVENT`] is reported as [`Oversized`] once and its bytes are dropped until it ends.
//! [`Events::pending`] says whether an unfinished event is held (a stream that ends there was
//! cut mid-event). [`data`] joins an event's `data:` lines; [`name`] reads its `event:` line.
//!
//! # Performance
//!
//! An event that lies whole inside one read is handed out in place; only the tail of a read is
//! copied, into a buffer reused across events.

/// Longest event kept whole; longer ones are reported as oversized.
pub const MAX_EVENT: usize = 256 * 1024;

/// An event longer than [`MAX_EVENT`] was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized;

/// What [`Events::feed`] calls with each complete event (or [`Oversized`]).
pub type OnEvent<'f> = dyn FnMut(Result<&[u8], Oversized>) + 'f;

/// The incremental splitter (see the module docs). Its buffer is reused across events.
#[derive(Debug, Default)]
pub struct Events {
    held: Vec<u8>,
    /// The last byte seen ended a line (or nothing was seen yet in this event).
    at_line_start: bool,
    /// At a line start, the one byte seen since is a `\r` (the line is empty if `\n` comes next).
    cr_pending: bool,
    /// The current event passed [`MAX_EVENT`]: skip to its end.
    skipping: bool,
}

impl Events {
    /// Ready for a new stream (keeps the buffer's capacity).
    pub fn reset(&mut self) {
        self.held.clear();
        self.at_line_start = true;
        self.cr_pending = false;
        self.skipping = false;
    }

    /// Whether part of an event is held (the stream so far ends mid-event).
    pub fn pending(&self) -> bool {
        !self.held.is_empty() || self.skipping
    }

    /// The capacity held, for the owner's keep-or-free decision.
    pub fn capacity(&self) -> usize {
        self.held.capacity()
    }

    /// Feeds one read; `on_event` gets each complete event, or `Err(Oversized)` for one that
    /// was too long.
    pub fn feed(&mut self, chunk: &[u8], on_event: &mut OnEvent<'_>) {
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            // Jump to the next newline: only line ends matter.
            let Some(off) = chunk[i..].iter().position(|&c| c == b'\n') else {
                // A line start stays one only through the first `\r` of a possible `\r\n`.
                if self.at_line_start && !self.cr_pending && &chunk[i..] == b"\r" {
                    self.cr_pending = true;
                } else {
                    self.at_line_start = false;
                    self.cr_pending = false;
                }
                break;
            };
            let nl = i + off;
            let line_empty = self.at_line_start
                && if self.cr_pending {
                    nl == i
                } else {
                    nl == i || (nl == i + 1 && chunk[i] == b'\r')
                };
            i = nl + 1;
            self.at_line_start = true;
            self.cr_pending = false;
            if line_empty {
                self.end_event(&chunk[start..i], on_event);
                start = i;
            }
        }
        if start < chunk.len() {
            self.hold(&chunk[start..], on_event);
        }
    }

    fn hold(&mut self, tail: &[u8], on_event: &mut OnEvent<'_>) {
        if self.skipping {
            return;
        }
        if self.held.len() + tail.len() > MAX_EVENT {
            self.held.clear();
            self.skipping = true;
            on_event(Err(Oversized));
            return;
        }
        self.held.extend_from_slice(tail);
    }

    fn end_event(&mut self, last: &[u8], on_event: &mut OnEvent<'_>) {
        if self.skipping {
            self.skipping = false;
            return;
        }
        if self.held.is_empty() {
            on_event(if last.len() > MAX_EVENT {
                Err(Oversized)
            } else {
                Ok(last)
            });
            return;
        }
        if self.held.len() + last.len() > MAX_EVENT {
            self.held.clear();
            on_event(Err(Oversized));
            return;
        }
        self.held.extend_from_slice(last);
        let held = std::mem::take(&mut self.held);
        on_event(Ok(&held));
        self.held = held;
        self.held.clear();
    }
}

/// The lines of an event, without their line ends.
fn lines(ev: &[u8]) -> impl Iterator<Item = &[u8]> {
    ev.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// The value of the field `name` on `line` (`name:` then one optional space), if it is that
/// field.
fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(rest.strip_prefix(b" ").unwrap_or(rest))
}

/// The event's type (`event:` line), if it has one.
pub fn name(ev: &[u8]) -> Option<&[u8]> {
    lines(ev).find_map(|l| field(l, b"event"))
}

/// The event's data: its single `data:` line in place, or its `data:` lines joined with `\n`
/// in `scratch`. `None` when it has none (a comment, or only an `event:` line).
pub fn data<'a>(ev: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let mut first: Option<&[u8]> = None;
    let mut joined = false;
    for l in lines(ev) {
        let Some(d) = field(l, b"data") else { continue };
        match first {
            None => first = Some(d),
            Some(f) => {
                if !joined {
                    scratch.clear();
                    scratch.extend_from_slice(f);
                    joined = true;
                }
                scratch.push(b'\n');
                scratch.extend_from_slice(d);
            }
        }
    }
    if joined {
        Some(&scratch[..])
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(parts: &[&[u8]]) -> (Vec<Vec<u8>>, usize, bool) {
        let mut ev = Events::default();
        ev.reset();
        let mut got = Vec::new();
        let mut oversized = 0;
        for p in parts {
            ev.feed(p, &mut |e| match e {
                Ok(e) => got.push(e.to_vec()),
                Err(Oversized) => oversized += 1,
            });
        }
        (got, oversized, ev.pending())
    }

    const STREAM: &str =
        "event: a\ndata: {\"x\":1}\n\n: comment\r\n\r\nevent: b\r\ndata: 1\r\ndata: 2\r\n\r\n";

    #[test]
    fn events_split_at_every_point_come_out_whole() {
        let want = [
            "event: a\ndata: {\"x\":1}\n\n",
            ": comment\r\n\r\n",
            "event: b\r\ndata: 1\r\ndata: 2\r\n\r\n",
        ];
        let b = STREAM.as_bytes();
        for cut in 0..=b.len() {
            for cut2 in cut..=b.len() {
                let (got, over, pending) = split(&[&b[..cut], &b[cut..cut2], &b[cut2..]]);
                let got: Vec<String> = got
                    .into_iter()
                    .map(|e| String::from_utf8(e).unwrap())
                    .collect();
                assert_eq!(got, want, "cuts {cut} {cut2}");
                assert_eq!((over, pending), (0, false));
            }
        }
        let singles: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(split(&singles).0.len(), 3);
    }

    /// Line ends around an event's end, fed whole and cut at every pair of points: a lone
    /// `\r` (or several) before `\n` is line content, never an empty line, wherever reads end.
    #[test]
    fn line_ends_split_anywhere_give_the_whole_stream_verdict() {
        let cases: &[&[u8]] = &[
            b"data: 1\r\n\r\r\n\x08\nN",
            b"data: 1\r\n\r\r\n\r\n",
            b"data: 1\n\r\r\r\n\n",
            b"data: 1\r\n\r\ndata: 2\n\n",
            b"data: 1\n\r\n",
            b"data: 1\r\r\n\n",
            b"\r\r\n\n",
            b"\r\n",
            b"data: 1\n\r",
        ];
        for b in cases {
            let whole = split(&[b]);
            for cut in 0..=b.len() {
                for cut2 in cut..=b.len() {
                    let got = split(&[&b[..cut], &b[cut..cut2], &b[cut2..]]);
                    let text = String::from_utf8_lossy(b);
                    assert_eq!(got, whole, "{text:?} cut at {cut} {cut2}");
                }
            }
            let singles: Vec<&[u8]> = b.chunks(1).collect();
            assert_eq!(
                split(&singles),
                whole,
                "{:?} byte by byte",
                String::from_utf8_lossy(b)
            );
        }
        // The fuzzer's input: no empty line, so one unfinished event (not a finished one).
        assert_eq!(split(&[cases[0]]), (vec![], 0, true));
        assert_eq!(split(&[cases[1]]).0.len(), 1);
    }

    #[test]
    fn an_unfinished_event_is_pending() {
        let (got, _, pending) = split(&[b"data: 1\n\ndata: 2\n"]);
        assert_eq!(got.len(), 1);
        assert!(pending);
    }

    #[test]
    fn oversized_events_are_reported_once_and_skipped() {
        let big = format!("data: {}\n\ndata: small\n\n", "x".repeat(MAX_EVENT));
        for parts in [vec![big.as_bytes()], big.as_bytes().chunks(1000).collect()] {
            let (got, over, pending) = split(&parts);
            assert_eq!(over, 1);
            assert_eq!(got, [b"data: small\n\n".to_vec()]);
            assert!(!pending);
        }
    }

    #[test]
    fn data_and_name() {
        let mut s = Vec::new();
        assert_eq!(data(b"event: x\ndata: {}\n\n", &mut s), Some(&b"{}"[..]));
        assert_eq!(
            data(b"data:a\r\ndata: b\r\n\r\n", &mut s),
            Some(&b"a\nb"[..])
        );
        assert_eq!(data(b": ping\n\n", &mut s), None);
        assert_eq!(name(b"event: ping\ndata: {}\n\n"), Some(&b"ping"[..]));
        assert_eq!(name(b"data: {}\n\n"), None);
    }
}
