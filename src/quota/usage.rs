//! Token accounting from responses.
//!
//! - [`usage_from_body`]: `usage` of a non-streamed JSON response.
//! - [`SseUsageScanner`]: fed the upstream's SSE bytes as they are relayed; finds the usage
//!   event, and strips it from the client's stream when the client had not asked for usage.
//! - [`SseUsageScanner::estimated_completion_tokens`]: for streams cut off before usage came.
//!
//! # Performance
//!
//! The scanner copies each event once into a reused buffer (capped at
//! [`MAX_EVENT_BYTES`]) and parses JSON only for an event that carries a `usage` object.
//! JSON is parsed onto this thread's reused simd-json buffers and tape and read from the tape
//! (no allocation once warm); what is read is exactly what serde's derived `Deserialize` of
//! the documented shapes read before (the tests keep that reader as their oracle).

use std::cell::RefCell;
use std::sync::LazyLock;

use memchr::memmem::Finder;

// By name, not the prelude glob (see `disallowed-methods` in clippy.toml).
use simd_json::prelude::{TypedScalarValue, ValueAsScalar};
use simd_json::tape::Value;
use simd_json::{Buffers, Tape};

/// Longest event the scanner keeps to look at; longer events are relayed untouched.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Characters per token assumed by the cut-off estimate (OpenAI's rule of thumb for English).
pub const CHARS_PER_TOKEN: u64 = 4;

/// Token counts of one response, the one structure every source of usage fills: the OpenAI
/// `usage` objects read here, and a provider adapter translating another API's usage (issue
/// #15) builds the same value with [`Usage::from_parts`].
///
/// Semantics are OpenAI's: `cached_tokens` is the part of `prompt_tokens` served from the
/// provider's prompt cache (never more than `prompt_tokens`; a report saying otherwise is
/// clamped), so uncached input is `prompt_tokens - cached_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens read from the provider's prompt cache (a part of `prompt_tokens`).
    pub cached_tokens: u32,
    /// As reported; 0 when the server omitted it (see [`Usage::total`]).
    pub total_tokens: u32,
}

impl Usage {
    /// A usage from its parts (an adapter's translation); `total_tokens` is their sum.
    pub fn from_parts(prompt: u32, completion: u32, cached: u32) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached.min(prompt),
            total_tokens: prompt.saturating_add(completion),
        }
    }

    /// Tokens to charge: `total_tokens`, or the sum of the parts when a server omits it.
    pub fn total(&self) -> u32 {
        if self.total_tokens > 0 {
            self.total_tokens
        } else {
            self.prompt_tokens.saturating_add(self.completion_tokens)
        }
    }

    /// Prompt tokens not served from the cache.
    pub fn uncached_prompt(&self) -> u32 {
        self.prompt_tokens.saturating_sub(self.cached_tokens)
    }
}

/// `prompt_tokens_details` / `input_tokens_details`: only the cached count is read.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(test, derive(serde::Deserialize))]
struct Details {
    #[cfg_attr(test, serde(default))]
    cached_tokens: Option<u32>,
}

/// A `usage` object as OpenAI servers write it: Chat Completions names the parts
/// `prompt_tokens`/`completion_tokens` (+ `prompt_tokens_details.cached_tokens`), the
/// Responses API `input_tokens`/`output_tokens` (+ `input_tokens_details.cached_tokens`). A
/// count that is `null` or absent is 0; the Chat name wins when both are present.
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(test, derive(serde::Deserialize))]
struct RawUsage {
    #[cfg_attr(test, serde(default))]
    prompt_tokens: Option<u32>,
    #[cfg_attr(test, serde(default))]
    completion_tokens: Option<u32>,
    #[cfg_attr(test, serde(default))]
    total_tokens: Option<u32>,
    #[cfg_attr(test, serde(default))]
    prompt_tokens_details: Option<Details>,
    #[cfg_attr(test, serde(default))]
    input_tokens: Option<u32>,
    #[cfg_attr(test, serde(default))]
    output_tokens: Option<u32>,
    #[cfg_attr(test, serde(default))]
    input_tokens_details: Option<Details>,
}

impl From<RawUsage> for Usage {
    fn from(r: RawUsage) -> Usage {
        let prompt = r.prompt_tokens.or(r.input_tokens).unwrap_or(0);
        let cached = r
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or_else(|| r.input_tokens_details.and_then(|d| d.cached_tokens))
            .unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: r.completion_tokens.or(r.output_tokens).unwrap_or(0),
            cached_tokens: cached.min(prompt),
            total_tokens: r.total_tokens.unwrap_or(0),
        }
    }
}

/// The `usage` of a complete (non-streamed) JSON response body. `body` is used as simd-json's
/// scratch space and is clobbered: pass a copy if the bytes are still needed. `None` when the
/// body is not JSON or has no usable `usage` object.
///
/// Upstream bodies carry many more fields; only `usage` is read, the rest ignored. The body
/// is an object (or, as serde reads a struct, an array whose first element is `usage`); a
/// repeated `usage` key or a `usage` of another shape makes the whole body unusable.
pub fn usage_from_body(body: &mut [u8]) -> Option<Usage> {
    with_tape(body, |root| {
        let [usage] = fields(root, ["usage"])?;
        usage.map_or(Some(None), usage_value)
    })
    .flatten()
    .flatten()
}

/// An SSE event's data, as far as the usage check reads it: its `usage` (`None` when the
/// data is unusable) and whether `choices` is a non-empty array. Such an event has content
/// for the client and is never stripped, whatever a nested `choices` showed the byte-level
/// [`classify`] first (found while writing the `sse_usage` fuzz target).
fn event_data(data: &mut [u8]) -> Option<(Option<Usage>, bool)> {
    with_tape(data, |root| {
        let [usage, choices] = fields(root, ["usage", "choices"])?;
        let usage = usage.map_or(Some(None), usage_value)?;
        let content = choices
            .and_then(|c| c.as_array())
            .is_some_and(|c| !c.is_empty());
        Some((usage, content))
    })
    .flatten()
}

thread_local! {
    /// This thread's parse buffers (one per worker thread: nothing is shared).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Documents up to this size leave their parse buffers for the next one; larger ones free them.
const SCRATCH_KEEP: usize = 256 * 1024;

#[derive(Default)]
struct Scratch {
    buffers: Option<Buffers>,
    tape: Option<Tape<'static>>,
}

/// Parses `input` in place (clobbering it) onto this thread's reused buffers and tape and
/// reads the root value with `read`; `None` when `input` is not JSON.
fn with_tape<R>(input: &mut [u8], read: impl FnOnce(Value<'_, '_>) -> R) -> Option<R> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let len = input.len();
        let s = &mut *s;
        let buffers = s.buffers.get_or_insert_with(|| Buffers::new(len));
        let mut tape = s.tape.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let out = match simd_json::fill_tape(input, buffers, &mut tape) {
            Ok(()) => Some(read(tape.as_value())),
            Err(_) => None,
        };
        s.tape = Some(tape.reset());
        if len > SCRATCH_KEEP {
            *s = Scratch::default();
        }
        out
    })
}

/// The values of a struct's fields `names` in `v`, read the way serde reads a struct: an
/// object (other keys ignored, a repeated field refused) or an array holding the fields in
/// order (missing ones absent, further elements ignored). A `null` field is absent.
/// `None` when `v` is neither or a field repeats.
fn fields<'t, 'i, const N: usize>(
    v: Value<'t, 'i>,
    names: [&str; N],
) -> Option<[Option<Value<'t, 'i>>; N]> {
    let mut out = [None; N];
    let mut seen = [false; N];
    if let Some(obj) = v.as_object() {
        for (k, v) in obj.iter() {
            if let Some(i) = names.iter().position(|n| *n == k) {
                if std::mem::replace(&mut seen[i], true) {
                    return None;
                }
                out[i] = Some(v);
            }
        }
    } else if let Some(arr) = v.as_array() {
        for (i, v) in arr.iter().take(N).enumerate() {
            out[i] = Some(v);
        }
    } else {
        return None;
    }
    Some(out.map(|v| v.filter(|v| !v.is_null())))
}

/// A present `usage` value: `Some(None)` for `null`, `None` when it is not a usage object
/// (a count that is not a `u32`, another type, a repeated count).
fn usage_value(v: Value<'_, '_>) -> Option<Option<Usage>> {
    if v.is_null() {
        return Some(None);
    }
    let [prompt, completion, total, prompt_details, input, output, input_details] = fields(
        v,
        [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "input_tokens",
            "output_tokens",
            "input_tokens_details",
        ],
    )?;
    let raw = RawUsage {
        prompt_tokens: count(prompt)?,
        completion_tokens: count(completion)?,
        total_tokens: count(total)?,
        prompt_tokens_details: details(prompt_details)?,
        input_tokens: count(input)?,
        output_tokens: count(output)?,
        input_tokens_details: details(input_details)?,
    };
    Some(Some(raw.into()))
}

/// A count field as serde reads an `Option<u32>`: absent or `null` is `None`; anything but a
/// `u32` makes the whole `usage` unusable (the outer `None`).
fn count(v: Option<Value<'_, '_>>) -> Option<Option<u32>> {
    match v {
        None => Some(None),
        Some(v) => v.as_u32().map(Some),
    }
}

/// `prompt_tokens_details` / `input_tokens_details` as serde reads an `Option<Details>`.
fn details(v: Option<Value<'_, '_>>) -> Option<Option<Details>> {
    let Some(v) = v else {
        return Some(None);
    };
    let [cached] = fields(v, ["cached_tokens"])?;
    Some(Some(Details {
        cached_tokens: count(cached)?,
    }))
}

/// What is known about the event being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Could still be the usage event: held back (strip mode only).
    Undecided,
    /// A normal event: relayed as its bytes arrive.
    Normal,
}

/// Incremental scanner of an OpenAI-style SSE stream, fed the upstream's chunks as relayed.
///
/// Lines end in `\r\n`, `\n` or a lone `\r` (the WHATWG event-stream grammar, as
/// [`crate::http::sse`] splits them) and events end at an empty line; chunk boundaries are
/// arbitrary, also inside a `\r\n` (an event that ends at its `\r` owns the `\n` that opens
/// the next chunk: it is relayed if that event was, dropped with it if it was not). The
/// usage event is the one whose data has `"choices": []` and a `"usage": {…}` object; normal
/// chunks have non-empty `choices` (and `"usage": null` or none). When stripping, an event is
/// held back only until its bytes show `choices` is non-empty (or that it is not a JSON data
/// event) — normally within its first line — and is relayed from then on; an event that ends
/// still undecided is relayed at its end unless it is the usage event. A held event is always
/// incomplete, and SSE clients act on an event only at its end, so holding adds no delay a
/// client can see. Any event that carries a `usage` object (also when not stripping, and also
/// with non-empty choices, as some servers send running usage) updates [`Self::usage`].
#[derive(Debug)]
pub struct SseUsageScanner {
    strip: bool,
    event: Vec<u8>,
    overflow: bool,
    class: Class,
    at_line_start: bool,
    /// The last byte scanned was a `\r` ending a line: a `\n` next completes that line end.
    after_cr: bool,
    /// The event just ended at a `\r`; `true`: it was relayed (so is its `\n`, if one comes).
    cr_ended: Option<bool>,
    usage: Option<Usage>,
    content_chars: u64,
    scratch: Vec<u8>,
}

impl SseUsageScanner {
    /// `strip`: drop the usage event from what is relayed (the client did not ask for it).
    pub fn new(strip: bool) -> Self {
        SseUsageScanner {
            strip,
            event: Vec::new(),
            overflow: false,
            class: Class::Undecided,
            at_line_start: true,
            after_cr: false,
            cr_ended: None,
            usage: None,
            content_chars: 0,
            scratch: Vec::new(),
        }
    }

    /// Makes this scanner what [`Self::new`] makes, keeping its buffers' capacity (a scanner
    /// reused for the next stream allocates nothing once its buffers have grown).
    pub fn reset(&mut self, strip: bool) {
        let mut event = std::mem::take(&mut self.event);
        let mut scratch = std::mem::take(&mut self.scratch);
        event.clear();
        scratch.clear();
        *self = SseUsageScanner {
            event,
            scratch,
            ..SseUsageScanner::new(strip)
        };
    }

    /// Bytes held by the scanner's buffers (whether it is worth keeping for reuse).
    pub fn capacity(&self) -> usize {
        self.event.capacity() + self.scratch.capacity()
    }

    /// Scans `chunk` and appends to `out` the bytes to relay now. Only line ends matter to the
    /// scan, so it jumps from one to the next (`memchr2`) rather than stepping byte by byte.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut start = 0;
        let mut i = 0;
        while i < chunk.len() {
            if self.after_cr {
                self.after_cr = false;
                let cr_ended = self.cr_ended.take();
                if chunk[i] == b'\n' {
                    // The `\n` of a `\r\n` whose `\r` ended the line already.
                    if let Some(relayed) = cr_ended {
                        // It ends the event before this one (nothing of this one is taken yet).
                        if relayed {
                            out.push(b'\n');
                        }
                        start = i + 1;
                    }
                    i += 1;
                    continue;
                }
            }
            let Some(off) = memchr::memchr2(b'\n', b'\r', &chunk[i..]) else {
                self.at_line_start = false;
                break;
            };
            let at = i + off;
            if off > 0 {
                self.at_line_start = false;
            }
            let b = chunk[at];
            if self.at_line_start {
                self.take(&chunk[start..=at], out);
                let relayed = self.end_event(out);
                start = at + 1;
                if b == b'\r' {
                    self.after_cr = true;
                    self.cr_ended = Some(relayed);
                }
            } else {
                self.at_line_start = true;
                self.after_cr = b == b'\r';
            }
            i = at + 1;
        }
        if start < chunk.len() {
            self.take(&chunk[start..], out);
        }
    }

    /// The stream ended: relays a held, unfinished event (it cannot be a complete usage event).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.strip && self.class == Class::Undecided {
            out.extend_from_slice(&self.event);
        }
        self.event.clear();
        self.class = Class::Undecided;
    }

    /// The last usage reported by the stream, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// For a stream cut off before its usage event: completion tokens estimated as the
    /// characters of the `content` deltas relayed so far divided by [`CHARS_PER_TOKEN`],
    /// rounded up (escapes count as one character). Prompt tokens are not estimated.
    pub fn estimated_completion_tokens(&self) -> u32 {
        u32::try_from(self.content_chars.div_ceil(CHARS_PER_TOKEN)).unwrap_or(u32::MAX)
    }

    fn take(&mut self, seg: &[u8], out: &mut Vec<u8>) {
        if self.event.len() + seg.len() > MAX_EVENT_BYTES {
            if !self.overflow && self.strip && self.class == Class::Undecided {
                out.extend_from_slice(&self.event);
            }
            self.overflow = true;
            self.class = Class::Normal;
            out.extend_from_slice(seg);
            return;
        }
        self.event.extend_from_slice(seg);
        if !self.strip || self.class == Class::Normal {
            out.extend_from_slice(seg);
            return;
        }
        if classify(&self.event) == Class::Normal {
            self.class = Class::Normal;
            out.extend_from_slice(&self.event);
        }
    }

    /// Ends the event; whether its bytes were relayed (not: it was the usage event, stripped).
    fn end_event(&mut self, out: &mut Vec<u8>) -> bool {
        let held = self.strip && self.class == Class::Undecided;
        let mut is_usage_event = false;
        if !self.overflow {
            if value_after_key(&self.event, &USAGE_KEY) == Some(b'{') {
                self.data_payload();
                if let Some((Some(u), content)) = event_data(&mut self.scratch) {
                    self.usage = Some(u);
                    is_usage_event = held && !content;
                }
            } else {
                self.content_chars += content_chars(&self.event);
            }
        }
        if held && !is_usage_event {
            out.extend_from_slice(&self.event);
        }
        self.event.clear();
        self.overflow = false;
        self.class = Class::Undecided;
        self.at_line_start = true;
        !is_usage_event
    }

    /// Joins the event's `data:` lines into `scratch` (SSE: one optional space after `:`).
    fn data_payload(&mut self) {
        self.scratch.clear();
        for line in crate::http::sse::lines(&self.event) {
            if let Some(d) = line.strip_prefix(b"data:") {
                if !self.scratch.is_empty() {
                    self.scratch.push(b'\n');
                }
                self.scratch
                    .extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
            }
        }
    }
}

/// Early verdict on a partial event: `Normal` once it cannot be the usage event.
fn classify(event: &[u8]) -> Class {
    if let Some(data) = first_data(event) {
        match data.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) if data[i] != b'{' => return Class::Normal,
            _ => {}
        }
    }
    if let Some(at) = key_value_pos(event, &CHOICES_KEY) {
        if event[at] == b'[' {
            let rest = &event[at + 1..];
            if let Some(&c) = rest.iter().find(|b| !b.is_ascii_whitespace()) {
                if c != b']' {
                    return Class::Normal;
                }
            }
        } else {
            return Class::Normal;
        }
    }
    Class::Undecided
}

/// The value of the first complete `data:` line start (may be partial).
fn first_data(event: &[u8]) -> Option<&[u8]> {
    let mut from = 0;
    while let Some(p) = DATA_FIELD.find(&event[from..]) {
        let at = from + p;
        if at == 0 || matches!(event[at - 1], b'\n' | b'\r') {
            return Some(&event[at + 5..]);
        }
        from = at + 1;
    }
    None
}

/// The searches the scan repeats on every event, each built once (a `memmem` finder costs
/// about as much to build as to run over one event).
static USAGE_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static CHOICES_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\""));
static CONTENT_KEY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"content\""));
static DATA_FIELD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"data:"));

/// Position of the first non-space byte after `key` `:` (if the bytes reach that far).
fn key_value_pos(hay: &[u8], key: &Finder<'_>) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = key.find(&hay[from..]) {
        let mut i = from + p + key.needle().len();
        while i < hay.len() && hay[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < hay.len() && hay[i] == b':' {
            i += 1;
            while i < hay.len() && hay[i].is_ascii_whitespace() {
                i += 1;
            }
            return (i < hay.len()).then_some(i);
        }
        from += p + 1;
    }
    None
}

fn value_after_key(hay: &[u8], key: &Finder<'_>) -> Option<u8> {
    key_value_pos(hay, key).map(|i| hay[i])
}

/// Characters inside every `"content": "…"` string of an event.
fn content_chars(event: &[u8]) -> u64 {
    let mut n = 0;
    let mut from = 0;
    while let Some(at) = key_value_pos(&event[from..], &CONTENT_KEY) {
        let start = from + at;
        if event[start] != b'"' {
            from = start + 1;
            continue;
        }
        let mut i = start + 1;
        // Runs without a quote or a backslash are counted whole: one character per byte that
        // does not continue a UTF-8 sequence.
        while let Some(off) = memchr::memchr2(b'"', b'\\', &event[i..]) {
            let run = &event[i..i + off];
            n += run.iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64;
            i += off;
            if event[i] == b'"' {
                break;
            }
            // One character per escape; `\uXXXX` also skips its four hex digits.
            n += 1;
            i += if event.get(i + 1) == Some(&b'u') {
                6
            } else {
                2
            };
            if i >= event.len() {
                break;
            }
        }
        if i < event.len() && event[i] != b'"' {
            // Unterminated (a cut event): count what is there.
            n += event[i..].iter().filter(|&&b| b & 0xC0 != 0x80).count() as u64;
            i = event.len();
        }
        from = i.min(event.len());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const NORMAL: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello wor\"}}],\"usage\":null}\n\n";
    const NORMAL2: &str = "data: {\"id\":\"c1\",\"choices\": [ {\"index\":0,\"delta\":{\"content\":\"ld \\\"é\\\"\"}}]}\r\n\r\n";
    const USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";
    const EXPECTED: Usage = Usage {
        prompt_tokens: 12,
        completion_tokens: 5,
        cached_tokens: 0,
        total_tokens: 17,
    };

    fn stream() -> String {
        format!(": keep-alive\n\n{NORMAL}{NORMAL2}{USAGE}{DONE}")
    }

    fn run(strip: bool, chunks: &[&[u8]]) -> (Vec<u8>, SseUsageScanner) {
        let mut s = SseUsageScanner::new(strip);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out);
        }
        s.finish(&mut out);
        (out, s)
    }

    /// The scan as it was written before it jumped with `memchr`: one byte at a time, the
    /// reference the faster one must agree with.
    fn feed_bytewise(s: &mut SseUsageScanner, chunk: &[u8], out: &mut Vec<u8>) {
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if s.after_cr {
                s.after_cr = false;
                let cr_ended = s.cr_ended.take();
                if b == b'\n' {
                    if let Some(relayed) = cr_ended {
                        if relayed {
                            out.push(b'\n');
                        }
                        start = i + 1;
                    }
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' if s.at_line_start => {
                    s.take(&chunk[start..=i], out);
                    let relayed = s.end_event(out);
                    start = i + 1;
                    if b == b'\r' {
                        s.after_cr = true;
                        s.cr_ended = Some(relayed);
                    }
                }
                b'\n' | b'\r' => {
                    s.at_line_start = true;
                    s.after_cr = b == b'\r';
                }
                _ => s.at_line_start = false,
            }
        }
        if start < chunk.len() {
            s.take(&chunk[start..], out);
        }
    }

    /// Content characters counted one byte at a time (the reference of [`content_chars`]).
    fn content_chars_bytewise(event: &[u8]) -> u64 {
        let (mut n, mut from) = (0, 0);
        while let Some(at) = key_value_pos_windows(&event[from..], b"\"content\"") {
            let start = from + at;
            if event[start] != b'"' {
                from = start + 1;
                continue;
            }
            let mut i = start + 1;
            while i < event.len() && event[i] != b'"' {
                if event[i] == b'\\' {
                    i += if event.get(i + 1) == Some(&b'u') {
                        5
                    } else {
                        1
                    };
                    n += 1;
                } else if event[i] & 0xC0 != 0x80 {
                    n += 1;
                }
                i += 1;
            }
            from = i.min(event.len());
        }
        n
    }

    /// `first_data` and `key_value_pos` as they searched before `memmem`: the references.
    fn first_data_windows(event: &[u8]) -> Option<&[u8]> {
        let at = if event.starts_with(b"data:") {
            0
        } else {
            event
                .windows(6)
                .position(|w| matches!(w[0], b'\n' | b'\r') && &w[1..] == b"data:")?
                + 1
        };
        Some(&event[at + 5..])
    }

    fn key_value_pos_windows(hay: &[u8], key: &[u8]) -> Option<usize> {
        let mut from = 0;
        while let Some(p) = hay[from..].windows(key.len()).position(|w| w == key) {
            let mut i = from + p + key.len();
            while i < hay.len() && hay[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < hay.len() && hay[i] == b':' {
                i += 1;
                while i < hay.len() && hay[i].is_ascii_whitespace() {
                    i += 1;
                }
                return (i < hay.len()).then_some(i);
            }
            from += p + 1;
        }
        None
    }

    /// Random streams made of the pieces the scanner decides on (line ends of every style,
    /// `data:` lines, `choices`, `usage` and `content` keys, escapes, multi-byte characters),
    /// fed in random splits: the jumping scan relays the same bytes, finds the same usage and
    /// counts the same content characters as the byte-at-a-time one.
    #[test]
    fn the_jumping_scan_agrees_with_the_bytewise_one_on_random_streams() {
        const NOISE: &[&str] = &[
            "data:",
            "\n",
            "\r",
            "\r\n",
            "{",
            "}",
            "[",
            "]",
            "\"choices\"",
            ":",
            " ",
            "\"usage\"",
            "\"content\"",
            "\"",
            "\\",
            "é",
            "x",
            ",",
            "null",
        ];
        const TEXT: &[&str] = &[
            "a", "é", "日本", "\\n", "\\\"", "\\u00e9", "\\\\", "x y", "\\",
        ];
        const LINES: &[&str] = &[
            "data: {\"choices\":[{\"delta\":{\"content\":\"TEXT\"}}]}",
            "data:{\"choices\": [ {\"delta\":{\"content\" : \"TEXT\"}}],\"usage\":null}",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}",
            "data: {\"id\":\"c\",\"choices\":[],",
            "data: \"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}",
            "data: [DONE]",
            "event: chunk",
            ": c",
            "x",
            "data: {\"content\":\"TEXT",
        ];
        const EOLS: &[&str] = &["\n", "\r", "\r\n"];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for case in 0..4000 {
            let mut stream = Vec::new();
            for _ in 0..1 + rand(8) {
                for _ in 0..1 + rand(3) {
                    let mut line = LINES[rand(LINES.len())].to_owned();
                    while line.contains("TEXT") {
                        let text: String = (0..rand(5)).map(|_| TEXT[rand(TEXT.len())]).collect();
                        line = line.replacen("TEXT", &text, 1);
                    }
                    stream.extend_from_slice(line.as_bytes());
                    if rand(8) == 0 {
                        stream.extend_from_slice(NOISE[rand(NOISE.len())].as_bytes());
                    }
                    stream.extend_from_slice(EOLS[rand(EOLS.len())].as_bytes());
                }
                // The blank line that ends the event (after a `\r`, a `\n` would only finish
                // that line end).
                let eol = if stream.ends_with(b"\r") {
                    "\r"
                } else {
                    EOLS[rand(EOLS.len())]
                };
                stream.extend_from_slice(eol.as_bytes());
            }
            let strip = case % 2 == 0;
            let (mut fast, mut slow) = (SseUsageScanner::new(strip), SseUsageScanner::new(strip));
            let (mut out_fast, mut out_slow) = (Vec::new(), Vec::new());
            let mut at = 0;
            while at < stream.len() {
                let end = (at + 1 + rand(40)).min(stream.len());
                fast.feed(&stream[at..end], &mut out_fast);
                feed_bytewise(&mut slow, &stream[at..end], &mut out_slow);
                at = end;
            }
            fast.finish(&mut out_fast);
            slow.finish(&mut out_slow);
            let shown = String::from_utf8_lossy(&stream);
            assert_eq!(out_fast, out_slow, "case {case}: {shown:?}");
            assert_eq!(fast.usage(), slow.usage(), "case {case}: {shown:?}");
            assert_eq!(
                fast.estimated_completion_tokens(),
                slow.estimated_completion_tokens(),
                "case {case}: {shown:?}"
            );
            assert_eq!(
                content_chars(&stream),
                content_chars_bytewise(&stream),
                "case {case}: {shown:?}"
            );
            for from in [0, stream.len() / 3, stream.len() / 2] {
                let part = &stream[from..];
                assert_eq!(first_data(part), first_data_windows(part), "case {case}");
                for key in [&b"\"choices\""[..], b"\"usage\"", b"\"content\""] {
                    assert_eq!(
                        key_value_pos(part, &Finder::new(key)),
                        key_value_pos_windows(part, key),
                        "case {case}"
                    );
                }
            }
        }
    }

    #[test]
    fn strips_the_usage_event_at_every_split_point() {
        let all = stream();
        let bytes = all.as_bytes();
        let want = format!(": keep-alive\n\n{NORMAL}{NORMAL2}{DONE}");
        for cut in 0..=bytes.len() {
            for strip in [true, false] {
                let (out, s) = run(strip, &[&bytes[..cut], &bytes[cut..]]);
                let expect = if strip { want.as_bytes() } else { bytes };
                assert_eq!(out, expect, "cut at {cut}, strip {strip}");
                assert_eq!(s.usage(), Some(EXPECTED), "cut at {cut}");
            }
        }
    }

    /// The same stream with every line end written `eol` (a mixed style cycles through the
    /// three): `(whole stream, the stream without the usage event)`.
    fn styled(eols: &[&str]) -> (String, String) {
        let mut k = 0;
        let mut next = || {
            k += 1;
            eols[(k - 1) % eols.len()]
        };
        let events = [
            ": keep-alive\n\n",
            "event: chunk\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            NORMAL,
            NORMAL2,
            "data: {\"id\":\"c1\",\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17}}\n\n",
            DONE,
        ];
        let (mut all, mut without) = (String::new(), String::new());
        for (i, ev) in events.iter().enumerate() {
            let mut styled = String::new();
            for line in ev.replace("\r\n", "\n").split_inclusive('\n') {
                let line = line.trim_end_matches('\n');
                let mut eol = next();
                // `\r` then `\n` on the wire is one line end (`\r\n`), not two.
                if line.is_empty() && styled.ends_with('\r') && eol.starts_with('\n') {
                    eol = "\r";
                }
                styled.push_str(line);
                styled.push_str(eol);
            }
            all.push_str(&styled);
            if i != 4 {
                without.push_str(&styled);
            }
        }
        (all, without)
    }

    /// `\n`, `\r\n`, a lone `\r` and mixes of them end lines alike (a `\r`-only stream's
    /// usage is read, so its tokens are charged), the usage event is stripped with all its line
    /// ends, and everything else is relayed byte for byte — whole, cut at every point, and
    /// byte by byte (a `\r\n` split between reads is one line end).
    #[test]
    fn every_line_end_and_every_mix_scans_the_same_at_every_split_point() {
        let styles: [&[&str]; 6] = [
            &["\n"],
            &["\r\n"],
            &["\r"],
            &["\r", "\n"],
            &["\r\n", "\r"],
            &["\r", "\r\n", "\n"],
        ];
        for eols in styles {
            let (all, without) = styled(eols);
            let bytes = all.as_bytes();
            for strip in [true, false] {
                let expect = if strip { without.as_bytes() } else { bytes };
                let mut splits: Vec<Vec<&[u8]>> = (0..=bytes.len())
                    .map(|cut| vec![&bytes[..cut], &bytes[cut..]])
                    .collect();
                splits.push(bytes.chunks(1).collect());
                for chunks in &splits {
                    let (out, s) = run(strip, chunks);
                    assert_eq!(
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(expect),
                        "{eols:?} strip {strip}, {} chunks",
                        chunks.len()
                    );
                    assert_eq!(s.usage(), Some(EXPECTED), "{eols:?}");
                    assert_eq!(s.estimated_completion_tokens(), 5, "{eols:?}");
                }
            }
        }
    }

    #[test]
    fn byte_at_a_time_and_normal_events_are_not_held() {
        let all = stream();
        let singles: Vec<&[u8]> = all.as_bytes().chunks(1).collect();
        let (out, s) = run(true, &singles);
        assert_eq!(
            out,
            format!(": keep-alive\n\n{NORMAL}{NORMAL2}{DONE}").as_bytes()
        );
        assert_eq!(s.usage(), Some(EXPECTED));

        // A normal event is relayed as soon as its choices show up non-empty.
        let mut s = SseUsageScanner::new(true);
        let mut out = Vec::new();
        let cut = NORMAL.find("[{").unwrap() + 2;
        s.feed(&NORMAL.as_bytes()[..cut], &mut out);
        assert_eq!(out, &NORMAL.as_bytes()[..cut]);
        // A possible usage event is held until it ends.
        let mut out = Vec::new();
        let mut s2 = SseUsageScanner::new(true);
        s2.feed(&USAGE.as_bytes()[..USAGE.len() - 1], &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn cut_off_stream_estimates_from_content() {
        let (_, s) = run(true, &[NORMAL.as_bytes(), NORMAL2.as_bytes()]);
        assert_eq!(s.usage(), None);
        // "Hello wor" (9) + `ld "é"` (6) = 15 chars → 4 tokens.
        assert_eq!(s.estimated_completion_tokens(), 4);
        let esc = "data: {\"choices\":[{\"delta\":{\"content\":\"\\u00e9\\u00e9\\n\"}}]}\n\n";
        let (_, s) = run(false, &[esc.as_bytes()]);
        assert_eq!(s.estimated_completion_tokens(), 1); // 3 chars
    }

    #[test]
    fn running_usage_on_normal_chunks_is_kept_and_relayed() {
        let ev = "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        let (out, s) = run(true, &[ev.as_bytes()]);
        assert_eq!(out, ev.as_bytes());
        assert_eq!(s.usage().map(|u| u.total()), Some(3));
    }

    /// Found by reading what the `sse_usage` fuzz target checks: a content chunk with running
    /// usage whose byte-level classification an earlier, nested empty `choices` fooled (in an
    /// object, in an array across data lines) was stripped. It is relayed whole at every split point, while
    /// the real usage event is still stripped.
    #[test]
    fn content_chunk_that_looks_like_usage_is_relayed() {
        let content = r#""choices":[{"delta":{"content":"hi"}}],"usage":{"total_tokens":3}"#;
        for ev in [
            format!("data: {{\"meta\":{{\"choices\":[]}},{content}}}\n\n"),
            format!("data: {{\"x\":[{{\"choices\" : [ ]}}],\r\ndata: {content}}}\r\n\r\n"),
        ] {
            let all = format!("{ev}{USAGE}");
            for cut in 0..=all.len() {
                let (out, s) = run(true, &[&all.as_bytes()[..cut], &all.as_bytes()[cut..]]);
                assert_eq!(out, ev.as_bytes(), "cut at {cut}");
                assert_eq!(s.usage(), Some(EXPECTED), "cut at {cut}");
            }
        }
    }

    #[test]
    fn unfinished_held_event_is_flushed_at_the_end() {
        let partial = &USAGE.as_bytes()[..20];
        let (out, s) = run(true, &[partial]);
        assert_eq!(out, partial);
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn oversized_event_is_relayed_untouched() {
        let big = format!(
            "data: {{\"choices\":[],\"pad\":\"{}\"}}\n\n",
            "x".repeat(MAX_EVENT_BYTES)
        );
        let (out, _) = run(true, &[big.as_bytes()]);
        assert_eq!(out, big.as_bytes());
    }

    /// The reader this module had before it read the tape (serde's derived `Deserialize`):
    /// the oracle the tape reader must agree with.
    mod serde_oracle {
        use super::{RawUsage, Usage};

        #[derive(serde::Deserialize)]
        struct WithUsage {
            #[serde(default)]
            usage: Option<RawUsage>,
        }

        #[derive(serde::Deserialize)]
        struct EventData {
            #[serde(default)]
            usage: Option<RawUsage>,
            #[serde(default)]
            choices: Option<simd_json::OwnedValue>,
        }

        pub fn body(s: &str) -> Option<Usage> {
            simd_json::serde::from_slice::<WithUsage>(&mut s.as_bytes().to_vec())
                .ok()?
                .usage
                .map(Usage::from)
        }

        pub fn event(s: &str) -> Option<(Option<Usage>, bool)> {
            use simd_json::prelude::*;
            let d = simd_json::serde::from_slice::<EventData>(&mut s.as_bytes().to_vec()).ok()?;
            let content = d
                .choices
                .as_ref()
                .and_then(|c| c.as_array())
                .is_some_and(|c| !c.is_empty());
            Some((d.usage.map(Usage::from), content))
        }
    }

    /// The shapes of `usage` (and of what holds it) that the tape reader must read exactly as
    /// serde did: counts of every JSON type and range, repeated and escaped keys, whitespace,
    /// nesting, arrays in place of objects, bodies that are not JSON.
    const USAGE_SHAPES: &[&str] = &[
        r#"{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}"#,
        r#"{"prompt_tokens":3}"#,
        r#"{}"#,
        r#"{ "total_tokens" : 9 , "x" : {"total_tokens":1} }"#,
        r#"{"\u0074otal_tokens":5,"prompt\u005ftokens":2}"#,
        r#"{"prompt_tokens":4294967295,"completion_tokens":0}"#,
        r#"{"prompt_tokens":4294967296}"#,
        r#"{"prompt_tokens":-1}"#,
        r#"{"prompt_tokens":1.0}"#,
        r#"{"prompt_tokens":1e2}"#,
        r#"{"prompt_tokens":"3"}"#,
        r#"{"prompt_tokens":null}"#,
        r#"{"prompt_tokens":true}"#,
        r#"{"prompt_tokens":[3]}"#,
        r#"{"prompt_tokens":3,"prompt_tokens":4}"#,
        r#"{"total_tokens":3,"Total_tokens":4,"x":1,"x":2}"#,
        r#"{"prompt_tokens_details":{"cached_tokens":0},"total_tokens":2}"#,
        r#"{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":4}}"#,
        r#"{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":9}}"#,
        r#"{"prompt_tokens_details":{"cached_tokens":"4"}}"#,
        r#"{"prompt_tokens_details":{"cached_tokens":null},"prompt_tokens":2}"#,
        r#"{"prompt_tokens_details":null,"prompt_tokens":2}"#,
        r#"{"prompt_tokens_details":[7],"prompt_tokens":8}"#,
        r#"{"prompt_tokens_details":7}"#,
        r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
        r#"{"input_tokens":6,"output_tokens":2,"input_tokens_details":{"cached_tokens":5}}"#,
        r#"{"prompt_tokens":1,"input_tokens":6,"output_tokens":2,"completion_tokens":3}"#,
        r#"{"input_tokens":-6}"#,
        r#"[1,2,3]"#,
        r#"[1,2]"#,
        r#"[]"#,
        r#"[1,2,3,4]"#,
        r#"[1,2,3,null,5,6,null]"#,
        r#"[1,2,3,{"cached_tokens":1},5,6,[2]]"#,
        r#"[1,2,3,null,5,6,null,8]"#,
        r#"[1,null]"#,
        r#"[1,"2"]"#,
        "null",
        "0",
        r#""usage""#,
        "true",
    ];

    /// Whether serde misread `s`: an array of more than the seven `usage` fields followed by
    /// anything.
    fn serde_lost_its_place(s: &str) -> bool {
        s.contains("[1,2,3,null,5,6,null,8]")
            && !s
                .trim_end_matches(['}', ']', ' ', '\t', '\r', '\n'])
                .ends_with("1,2,3,null,5,6,null,8")
    }

    #[test]
    fn usage_is_read_as_serde_read_it() {
        let mut bodies: Vec<String> = Vec::new();
        for u in USAGE_SHAPES {
            bodies.push(format!(r#"{{"usage":{u}}}"#));
            bodies.push(format!(
                r#"{{"id":"x","choices":[{{"usage":{{}}}}],"usage":{u},"z":[]}}"#
            ));
            bodies.push(format!("{{\n \"u\\u0073age\" :\t{u}\r\n}}"));
            bodies.push(format!(r#"{{"usage":{u},"usage":null}}"#));
            bodies.push(format!(r#"[{u}]"#));
            bodies.push(format!(r#"[{u},1]"#));
        }
        bodies.extend(
            [
                "{}",
                "[]",
                "null",
                "1",
                r#""s""#,
                "not json",
                "",
                r#"{"usage":{}"#,
                r#"{"usage":{"total_tokens":5}}x"#,
                r#"{"Usage":{"total_tokens":5}}"#,
            ]
            .map(String::from),
        );
        for body in &bodies {
            let want = serde_oracle::body(body);
            let want = match serde_lost_its_place(body) {
                true => serde_oracle::body(
                    &body.replace("[1,2,3,null,5,6,null,8]", "[1,2,3,null,5,6,null]"),
                ),
                false => want,
            };
            assert_eq!(
                usage_from_body(&mut body.as_bytes().to_vec()),
                want,
                "{body}"
            );
        }
        // SSE event data: `usage` and `choices` in any order and shape.
        let choices = [
            None,
            Some("[]"),
            Some("[{}]"),
            Some("null"),
            Some("{}"),
            Some(r#""x""#),
            Some("[[]]"),
        ];
        for u in USAGE_SHAPES.iter().map(|u| Some(*u)).chain([None]) {
            for c in choices {
                let members: Vec<String> = [
                    u.map(|u| format!(r#""usage":{u}"#)),
                    c.map(|c| format!(r#""choices":{c}"#)),
                    Some(r#""id":"e""#.to_string()),
                ]
                .into_iter()
                .flatten()
                .collect();
                let mut data = vec![
                    format!("{{{}}}", members.join(",")),
                    format!(
                        "{{{}}}",
                        members
                            .clone()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join(" , ")
                    ),
                    format!("[{},{}]", u.unwrap_or("null"), c.unwrap_or("null")),
                    format!("[{}]", u.unwrap_or("null")),
                ];
                if let Some(c) = c {
                    data.push(format!(
                        r#"{{"choices":{c},{},"choices":{c}}}"#,
                        members.join(",")
                    ));
                }
                for d in &data {
                    let want = serde_oracle::event(d);
                    let want = match serde_lost_its_place(d) {
                        true => serde_oracle::event(
                            &d.replace("[1,2,3,null,5,6,null,8]", "[1,2,3,null,5,6,null]"),
                        ),
                        false => want,
                    };
                    assert_eq!(event_data(&mut d.as_bytes().to_vec()), want, "{d}");
                }
            }
        }
    }

    #[test]
    fn usage_from_non_streamed_body() {
        let mut body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}}"#.to_vec();
        let u = usage_from_body(&mut body).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total()), (3, 4, 7));
        assert_eq!(usage_from_body(&mut br#"{"usage":null}"#.to_vec()), None);
        assert_eq!(usage_from_body(&mut b"not json".to_vec()), None);
    }
    /// Every shape of `usage` an OpenAI-compatible server writes, each as a JSON body and as
    /// the usage event of a stream split at every byte: the parts, the cached part, and what
    /// a missing, `null` or inconsistent field reads as.
    #[test]
    fn usage_shapes_read_the_same_from_bodies_and_streams() {
        let u = |p, c, k, t| Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: k,
            total_tokens: t,
        };
        let cases: &[(&str, Usage)] = &[
            (
                r#"{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,"prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}"#,
                u(2006, 300, 1920, 2306),
            ),
            // Details before the counts, and extra whitespace.
            (
                r#"{ "prompt_tokens_details" : { "cached_tokens" : 5 } , "prompt_tokens" : 9 , "completion_tokens" : 1 }"#,
                u(9, 1, 5, 0),
            ),
            (
                r#"{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"prompt_tokens_details":null}"#,
                u(7, 3, 0, 10),
            ),
            (
                r#"{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":null}}"#,
                u(7, 3, 0, 0),
            ),
            (
                r#"{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{}}"#,
                u(7, 3, 0, 0),
            ),
            // More cached than prompt tokens is clamped: uncached input is never negative.
            (
                r#"{"prompt_tokens":4,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":90}}"#,
                u(4, 1, 4, 0),
            ),
            // The Responses API's names.
            (
                r#"{"input_tokens":50,"input_tokens_details":{"cached_tokens":32},"output_tokens":8,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":58}"#,
                u(50, 8, 32, 58),
            ),
            // Both namings: the Chat Completions one wins.
            (
                r#"{"prompt_tokens":1,"input_tokens":99,"completion_tokens":2,"output_tokens":99,"prompt_tokens_details":{"cached_tokens":1},"input_tokens_details":{"cached_tokens":50}}"#,
                u(1, 2, 1, 0),
            ),
            (
                r#"{"prompt_tokens":null,"completion_tokens":6}"#,
                u(0, 6, 0, 0),
            ),
            (r#"{}"#, u(0, 0, 0, 0)),
        ];
        for (usage, want) in cases {
            let mut body = format!(
                r#"{{"id":"x","choices":[{{"message":{{"content":"hi"}}}}],"usage":{usage}}}"#
            )
            .into_bytes();
            assert_eq!(usage_from_body(&mut body), Some(*want), "{usage}");
            let ev = format!("data: {{\"choices\":[],\"usage\":{usage}}}\n\n");
            let all = format!("{NORMAL}{ev}{DONE}");
            for cut in 0..=all.len() {
                let (out, s) = run(true, &[&all.as_bytes()[..cut], &all.as_bytes()[cut..]]);
                assert_eq!(s.usage(), Some(*want), "{usage} cut at {cut}");
                assert_eq!(out, format!("{NORMAL}{DONE}").as_bytes(), "cut at {cut}");
            }
        }
        // Counts that are not unsigned integers make the usage unreadable, not wrong.
        for bad in [
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":"7"}"#,
            r#"{"prompt_tokens":1.5}"#,
        ] {
            let mut body = format!(r#"{{"usage":{bad}}}"#).into_bytes();
            assert_eq!(usage_from_body(&mut body), None, "{bad}");
        }
    }

    #[test]
    fn parts_make_a_usage_and_cached_is_part_of_prompt() {
        let u = Usage::from_parts(100, 20, 150);
        assert_eq!(
            (u.cached_tokens, u.total(), u.uncached_prompt()),
            (100, 120, 0)
        );
        let u = Usage::from_parts(100, 20, 30);
        assert_eq!(u.uncached_prompt(), 70);
    }
}
