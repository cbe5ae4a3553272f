//! Server-sent events, split incrementally: the upstream's bytes arrive in reads of any size
//! and an event may straddle any number of them.
//!
//! # Contract
//!
//! [`Events::feed`] hands every complete event (its lines, up to and including the empty line
//! that ends it) to a callback, in order, as soon as its last byte arrives, and keeps the
//! unfinished tail for the next read. Lines end in `\r\n`, `\n` or a lone `\r` (the WHATWG
//! event-stream grammar), also when a `\r\n` is split between two reads: the event ends at the
//! `\r` and the `\n` that opens the next read is dropped, not taken for an empty line. An event
//! longer than [`MAX_EVENT`] is reported as [`Oversized`] once and its bytes are dropped until it ends.
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
    /// No byte of the current line has been seen yet (the next line end ends an empty line).
    at_line_start: bool,
    /// The last byte seen was a `\r` ending a line at the end of a read: a `\n` at the start
    /// of the next read belongs to that line end (`\r\n`), it is not a line of its own.
    after_cr: bool,
    /// That `\r` ended an event, which was handed out already: its `\n` is dropped.
    cr_ended_event: bool,
    /// The current event passed [`MAX_EVENT`]: skip to its end.
    skipping: bool,
}

impl Events {
    /// Ready for a new stream (keeps the buffer's capacity).
    pub fn reset(&mut self) {
        self.held.clear();
        self.at_line_start = true;
        self.after_cr = false;
        self.cr_ended_event = false;
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
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
                if self.cr_ended_event {
                    start = 1;
                }
            }
        }
        while i < chunk.len() {
            // Jump to the next line end: only they matter.
            let Some(off) = memchr::memchr2(b'\n', b'\r', &chunk[i..]) else {
                self.at_line_start = false;
                break;
            };
            let at = i + off;
            let line_empty = self.at_line_start && off == 0;
            i = at + 1;
            if chunk[at] == b'\r' {
                match chunk.get(i) {
                    Some(b'\n') => i += 1,
                    Some(_) => {}
                    // The `\n` of a `\r\n` may open the next read.
                    None => {
                        self.after_cr = true;
                        self.cr_ended_event = line_empty;
                    }
                }
            }
            self.at_line_start = true;
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

pub use crate::http::sse::{lines, Lines};

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
            &["event: a", "data: {\"x\":1}", ""][..],
            &[": comment", ""],
            &["event: b", "data: 1", "data: 2", ""],
        ];
        assert_splits(STREAM.as_bytes(), &want, false);
        // Fed whole, each event is handed out with its own line ends.
        let (got, _, _) = split(&[STREAM.as_bytes()]);
        assert_eq!(got[1], b": comment\r\n\r\n");
    }

    /// Events as their lines (line ends removed): a `\r\n` split between two reads makes an
    /// event end in `\r` instead of `\r\n`, which reads the same.
    fn split_lines(parts: &[&[u8]]) -> (Vec<Vec<Vec<u8>>>, usize, bool) {
        let (got, over, pending) = split(parts);
        let got = got
            .iter()
            .map(|e| lines(e).map(<[u8]>::to_vec).collect())
            .collect();
        (got, over, pending)
    }

    /// Asserts that `b` split into events gives `want` (each event's lines) fed whole, cut at
    /// every pair of points, and byte by byte.
    fn assert_splits(b: &[u8], want: &[&[&str]], pending: bool) {
        let want: Vec<Vec<Vec<u8>>> = want
            .iter()
            .map(|e| e.iter().map(|l| l.as_bytes().to_vec()).collect())
            .collect();
        let text = String::from_utf8_lossy(b);
        assert_eq!(split_lines(&[b]), (want.clone(), 0, pending), "{text:?}");
        for cut in 0..=b.len() {
            for cut2 in cut..=b.len() {
                let got = split_lines(&[&b[..cut], &b[cut..cut2], &b[cut2..]]);
                assert_eq!(
                    got,
                    (want.clone(), 0, pending),
                    "{text:?} cut at {cut} {cut2}"
                );
            }
        }
        let singles: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(
            split_lines(&singles),
            (want, 0, pending),
            "{text:?} byte by byte"
        );
    }

    /// The WHATWG event-stream grammar: a line ends in `\r\n`, `\n` or `\r`, in any mix, and
    /// an empty line ends an event — wherever the reads end, including between the `\r` and
    /// the `\n` of one `\r\n`.
    #[test]
    fn every_line_end_and_every_mix_splits_the_same_anywhere() {
        let two = [
            &["event: a", "data: 1", ""][..],
            &["data: 2", "data: 3", ""][..],
        ];
        for (b, want, pending) in [
            (
                &b"event: a\ndata: 1\n\ndata: 2\ndata: 3\n\n"[..],
                &two[..],
                false,
            ),
            (
                b"event: a\r\ndata: 1\r\n\r\ndata: 2\r\ndata: 3\r\n\r\n",
                &two,
                false,
            ),
            (b"event: a\rdata: 1\r\rdata: 2\rdata: 3\r\r", &two, false),
            (
                b"event: a\rdata: 1\n\r\ndata: 2\r\ndata: 3\r\r",
                &two,
                false,
            ),
            (b"event: a\r\ndata: 1\r\rdata: 2\ndata: 3\n\r", &two, false),
            (
                b"event: a\ndata: 1\r\ndata: 2\r\n\r\n",
                &[&["event: a", "data: 1", "data: 2", ""][..]],
                false,
            ),
            // `\r\r\n`: a line end, then an empty line (`\r\n`).
            (b"data: 1\r\r\n", &[&["data: 1", ""][..]], false),
            // `\n\r`: the `\r` is an empty line of its own.
            (b"data: 1\n\r", &[&["data: 1", ""][..]], false),
            // Empty lines with no event before them come out as empty events.
            (b"\r\n\r\r\n\n", &[&[""][..], &[""], &[""], &[""]], false),
            (
                b"data: 1\r\n\r\r\n\x08\nN",
                &[&["data: 1", ""][..], &[""]],
                true,
            ),
            (b"data: 1\r\ndata: 2\r", &[], true),
            (b"data: 1\rdata: 2", &[], true),
        ] {
            assert_splits(b, want, pending);
        }
    }

    /// A `\r` that ends a read and the `\n` that opens the next are one line end.
    #[test]
    fn a_crlf_split_between_reads_is_one_line_end() {
        // Ending an event: the `\n` is not another (empty) event.
        let (got, _, pending) = split(&[b"data: 1\r\n\r", b"\ndata: 2\r\n\r\n"]);
        assert_eq!(got, [&b"data: 1\r\n\r"[..], b"data: 2\r\n\r\n"]);
        assert!(!pending);
        // Ending a line inside an event: the `\n` is not the event's end.
        let (got, _, pending) = split(&[b"data: 1\r", b"\ndata: 2\r\n\r\n"]);
        assert_eq!(got, [&b"data: 1\r\ndata: 2\r\n\r\n"[..]]);
        assert!(!pending);
        // An empty read between them changes nothing.
        let (got, _, _) = split(&[b"data: 1\r\n\r", b"", b"\n\n"]);
        assert_eq!(got, [&b"data: 1\r\n\r"[..], b"\n"]);
        // A lone `\r` ends the event at once: it is not held waiting for a `\n`.
        let (got, _, pending) = split(&[b"data: 1\r\r"]);
        assert_eq!(got, [&b"data: 1\r\r"[..]]);
        assert!(!pending);
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
        assert_eq!(data(b"data:a\rdata: b\r\r", &mut s), Some(&b"a\nb"[..]));
        assert_eq!(name(b"event: x\rdata: {}\r\r"), Some(&b"x"[..]));
    }
}
