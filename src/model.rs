//! The JSON request body of an OpenAI-style call: reading `model`/`stream`/`max_tokens`
//! and rewriting it before it goes upstream.
//!
//! # Contract
//!
//! [`JsonBody::parse`] accepts a JSON object: simd-json validates the whole body (grammar,
//! UTF-8), and the inputs simd-json would misread are refused first (see
//! `simd_json_misreads`). `Err(BodyError)` becomes a 400 `invalid_request_error`.
//!
//! The body the upstream receives is the body as received with the gateway's edits spliced
//! into its bytes ([`JsonBody::encode_into`]): the `model` value replaced by the served name,
//! `stream_options.include_usage` set to `true`. A splice leaves nothing for the gateway and
//! the model server to read differently: a top-level key, or a key of `stream_options`, that
//! appears twice is refused (which of two `model`s would the backend take?), and every other
//! byte is one the backend's parser reads exactly as simd-json did.
//!
//! # Performance
//!
//! No allocation once a worker is warm: simd-json parses a copy of the body with this thread's
//! reused buffers ([`Scratch`]) into a reused tape — the request slot's ([`ParseHome`], kept
//! for the adapters: an adapted body is parsed once) or the thread's — the decoded `model`
//! goes into the caller's reused `String`, and the parse notes which members the encoder may
//! edit; their bytes are found only when an edit needs them. Duplicate keys are found with a
//! sort of hashes (random per thread), so a body of many keys costs `n log n`, not `n²`.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::ops::Range;

// By name, not the prelude glob (see `disallowed-methods` in clippy.toml).
use simd_json::prelude::{TypedScalarValue, ValueAsScalar};
use simd_json::tape::{Node, Object, Value};
use simd_json::{Buffers, StaticNode, Tape};

/// Why a body could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    NotJson,
    NotObject,
    /// `model` is present but not a string.
    ModelNotString,
    /// The route needs a `model` and the body has none.
    ModelMissing,
    /// `stream` is present but not a boolean.
    StreamNotBool,
    /// A top-level key (or a key of `stream_options`) appears twice: the gateway and the
    /// backend could read different values, so the body is refused.
    DuplicateKey,
}

impl BodyError {
    pub fn message(self) -> &'static str {
        match self {
            BodyError::NotJson => "request body is not valid JSON",
            BodyError::NotObject => "request body must be a JSON object",
            BodyError::ModelNotString => "`model` must be a string",
            BodyError::ModelMissing => "request body has no `model`",
            BodyError::StreamNotBool => "`stream` must be a boolean",
            BodyError::DuplicateKey => "request body has a duplicate top-level key",
        }
    }
}

impl From<BodyError> for crate::error::GatewayError {
    fn from(e: BodyError) -> Self {
        crate::error::GatewayError::downstream(400, e.message())
    }
}

/// A parsed request body: what the stages read from it, where in its bytes the gateway's
/// edits go, and the edits asked for.
#[derive(Debug)]
pub struct JsonBody<'a> {
    raw: &'a [u8],
    /// Just after the top-level `{`, and whether the object has members.
    open: usize,
    has_members: bool,
    /// The current `model`: as received (decoded), or the name set by [`Self::set_model`].
    model: Option<&'a str>,
    /// Which top-level member is the received `model` (its bytes are found when an edit
    /// needs them, see [`Self::encode_into`]).
    model_at: Option<usize>,
    renamed: bool,
    stream: bool,
    max_tokens: Option<u64>,
    options: StreamOptions,
    usage_requested: bool,
    /// Where the conversation's opening is, when the parse was asked to find it.
    opening: Opening,
    /// The parse's tape, when the body was parsed into a request's [`ParseHome`]: what the
    /// adapters read ([`Self::with_value`]) instead of parsing the body again.
    kept: Option<Kept<'a>>,
}

/// A request's parse, on loan from its request slot (`crate::slot::RequestBufs`) and reused
/// by every request the slot serves: the copy of the body simd-json parses in place and the
/// tape's node buffer. The tape is kept for the whole request (an adapter reads it after the
/// quota stages, which may wait), so it cannot live in the thread's scratch, which every
/// request on the worker uses in turn.
#[derive(Debug, Default)]
pub struct ParseHome {
    input: Vec<u8>,
    /// The tape's buffer, empty; out on loan while a request holds its parse.
    tape: Option<Tape<'static>>,
}

impl ParseHome {
    /// Frees the buffers a body larger than `keep` bytes grew (one large body must not pin
    /// its buffers in the pool).
    pub fn reset(&mut self, keep: usize) {
        if self.input.capacity() > keep {
            self.input = Vec::new();
        }
        let nodes = self.tape.as_ref().map_or(0, |t| t.0.capacity());
        if nodes * std::mem::size_of::<Node<'_>>() > keep {
            self.tape = None;
        }
    }
}

/// A tape kept for its request; its buffer goes back to the home when the body is dropped.
#[derive(Debug)]
struct Kept<'a> {
    tape: Tape<'a>,
    home: &'a mut Option<Tape<'static>>,
    /// The gateway's edits are in the tape ([`JsonBody::with_value`]).
    edited: bool,
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        let tape = std::mem::replace(&mut self.tape, Tape(Vec::new()));
        *self.home = Some(tape.reset());
    }
}

/// Most pieces of a conversation's opening whose place a parse keeps (a system message and
/// a user message with a few content parts each); an opening of more is read again when
/// asked for.
const OPENING_PIECES: usize = 12;

/// Where the conversation's opening lies in the received body (see
/// [`JsonBody::feed_opening`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// Not found at parse time (not asked for, or a piece that is not its received bytes,
    /// one with a `\` escape): read from the body again when asked for.
    Unread,
    /// The body has neither messages nor a prompt.
    Absent,
    /// Each piece as a byte range of the received body, whose bytes are the piece's decoded
    /// text.
    At {
        pieces: [(u32, u32); OPENING_PIECES],
        len: u8,
    },
}

/// The received `stream_options`: which top-level member it is (its bytes are found when an
/// edit needs them).
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamOptions {
    Absent,
    /// Present but not an object.
    NotObject(usize),
    Object {
        member: usize,
        has_members: bool,
        /// Which of its members `include_usage` is, and whether it is `true`.
        include_usage: Option<(usize, bool)>,
    },
}

impl<'a> JsonBody<'a> {
    /// Parses `raw` (see the module docs); the decoded `model` is kept in `model_buf`.
    pub fn parse(raw: &'a [u8], model_buf: &'a mut String) -> Result<JsonBody<'a>, BodyError> {
        Self::parse_keyed(raw, model_buf, false)
    }

    /// [`Self::parse`], and with `opening` also where the conversation's opening is, found
    /// on the same walk of the parsed body, so that [`Self::feed_opening`] reads those bytes
    /// instead of parsing the body again (for an upstream whose affinity key is the prompt).
    pub fn parse_keyed(
        raw: &'a [u8],
        model_buf: &'a mut String,
        opening: bool,
    ) -> Result<JsonBody<'a>, BodyError> {
        if simd_json_misreads(raw) {
            return Err(BodyError::NotJson);
        }
        model_buf.clear();
        let mut body = SCRATCH.with(|s| s.borrow_mut().read(raw, model_buf, opening))?;
        let model_buf: &'a String = model_buf;
        if body.model_at.is_some() {
            body.model = Some(model_buf.as_str());
        }
        Ok(body)
    }

    /// [`Self::parse_keyed`] into the request's `home`, keeping the tape for the request:
    /// an adapter then reads it ([`Self::with_value`]) instead of parsing the body a second
    /// time. The same work as a parse into the thread's scratch (one copy, one parse).
    pub fn parse_kept(
        raw: &'a [u8],
        model_buf: &'a mut String,
        opening: bool,
        home: &'a mut ParseHome,
    ) -> Result<JsonBody<'a>, BodyError> {
        if simd_json_misreads(raw) {
            return Err(BodyError::NotJson);
        }
        model_buf.clear();
        let ParseHome { input, tape: slot } = home;
        input.clear();
        input.extend_from_slice(raw);
        let input: &'a mut [u8] = input.as_mut_slice();
        let mut tape: Tape<'a> = slot.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let (t, m) = (&mut tape, &mut *model_buf);
        let read = SCRATCH.with(move |s| s.borrow_mut().read_into(raw, input, t, m, opening));
        let mut body = match read {
            Ok(body) => body,
            Err(e) => {
                *slot = Some(tape.reset());
                return Err(e);
            }
        };
        let model_buf: &'a String = model_buf;
        if body.model_at.is_some() {
            body.model = Some(model_buf.as_str());
        }
        body.kept = Some(Kept {
            tape,
            home: slot,
            edited: false,
        });
        Ok(body)
    }

    /// Runs `f` on the body as it goes upstream (the gateway's edits in): what the provider
    /// adapters and schema transforms translate from (see `crate::adapt`); the pass-through
    /// path never calls this. Nothing is allocated once warm (no tree is built: `f` reads a
    /// tape).
    ///
    /// A body parsed with [`Self::parse_kept`] is read from the parse's own tape, the edits
    /// made in it as nodes (`edit_tape`: the same tape a parse of [`Self::encode_into`]'s
    /// output gives). Otherwise the edited body is written out and read again into this
    /// thread's scratch tape; a body `parse` accepted always reads back; should it not, `f`
    /// gets `null`, which every adapter refuses with 400. `f` must not read another body (the
    /// scratch is in use).
    pub fn with_value<R>(&mut self, f: impl FnOnce(Value<'_, '_>) -> R) -> R {
        if let Some(kept) = &mut self.kept {
            if !kept.edited {
                let model = self.model.filter(|_| self.renamed);
                edit_tape(&mut kept.tape.0, model, self.usage_requested);
                kept.edited = true;
            }
            return f(kept.tape.as_value());
        }
        self.with_reread(f)
    }

    /// [`Self::with_value`] by the second read: the edited body written out and parsed again
    /// into the thread's scratch (what a body parsed without a home gets).
    pub fn with_reread<R>(&self, f: impl FnOnce(Value<'_, '_>) -> R) -> R {
        let mut f = Some(f);
        let mut run = |v: Value<'_, '_>| (f.take().expect("called once"))(v);
        SCRATCH
            .with(|s| {
                s.borrow_mut()
                    .walk_with(|input| self.encode_into(input), |v, _, _| run(v))
            })
            .unwrap_or_else(|| run(Value::null()))
    }

    pub fn model(&self) -> Option<&'a str> {
        self.model
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// `max_tokens`, or the newer `max_completion_tokens`.
    pub fn max_tokens(&self) -> Option<u64> {
        self.max_tokens
    }

    /// Whether the body asks for the final usage chunk of a stream (or the gateway did).
    pub fn include_usage(&self) -> bool {
        self.usage_requested
            || matches!(
                self.options,
                StreamOptions::Object {
                    include_usage: Some((_, true)),
                    ..
                }
            )
    }

    /// Feeds the conversation's opening to `piece`, each piece cut to its first `limit` bytes:
    /// for a chat body, the `role` and text (a string `content`, or the `text` of each content
    /// part) of every message up to and including the first `user` message; for a completion,
    /// its `prompt` (the first one of a list). These stay the same on every turn of one
    /// conversation, so they key it. `false` when the body has neither (nothing was fed).
    ///
    /// A body parsed with [`Self::parse_keyed`] hands out the bytes it found; otherwise (or
    /// for an opening with escapes or of more than `OPENING_PIECES` pieces) the body is read
    /// again with this thread's scratch tape. Nothing is allocated once warm.
    pub fn feed_opening(&self, limit: usize, mut piece: impl FnMut(&[u8])) -> bool {
        match self.opening {
            Opening::Absent => false,
            Opening::At { pieces, len } => {
                for &(start, end) in &pieces[..usize::from(len)] {
                    let p = &self.raw[start as usize..end as usize];
                    piece(&p[..p.len().min(limit)]);
                }
                true
            }
            Opening::Unread if self.kept.is_some() => {
                let kept = self.kept.as_ref().expect("checked");
                opening(kept.tape.as_value(), limit, &mut piece)
            }
            Opening::Unread => SCRATCH
                .with(|s| {
                    s.borrow_mut()
                        .walk(self.raw, |v, _, _| opening(v, limit, &mut piece))
                })
                .unwrap_or(false),
        }
    }

    /// Sends `name` as the body's `model`.
    pub fn set_model(&mut self, name: &'a str) {
        self.model = Some(name);
        self.renamed = true;
        self.drop_edited_tape();
    }

    /// Asks the backend for a final usage chunk on a stream (`stream_options.include_usage`).
    pub fn request_usage(&mut self) {
        if !self.include_usage() {
            self.usage_requested = true;
            self.drop_edited_tape();
        }
    }

    /// An edit after the kept tape took the earlier ones: [`Self::with_value`] reads the body
    /// again instead (the pipeline makes every edit before the adapt stage reads it).
    fn drop_edited_tape(&mut self) {
        if self.kept.as_ref().is_some_and(|k| k.edited) {
            self.kept = None;
        }
    }

    /// The received bytes of the top-level members `model` and `stream_options` where an
    /// edit replaces or enters them: found by walking the members up to the later of the
    /// two (the parse noted which members they are, not where, so that a body nothing edits
    /// — every adapted one — is never walked).
    fn edited_members(&self) -> (Option<Range<usize>>, Option<Range<usize>>) {
        let model = self.model_at.filter(|_| self.renamed);
        let options = match self.options {
            StreamOptions::NotObject(m) | StreamOptions::Object { member: m, .. } => {
                Some(m).filter(|_| self.usage_requested)
            }
            StreamOptions::Absent => None,
        };
        let mut found = (None, None);
        let Some(last) = model.max(options) else {
            return found;
        };
        let members = Members {
            raw: self.raw,
            pos: self.open,
        };
        for (i, at) in members.enumerate().take(last + 1) {
            if Some(i) == model {
                found.0 = Some(at.clone());
            }
            if Some(i) == options {
                found.1 = Some(at);
            }
        }
        // simd-json accepted the document, so its members are all there to walk.
        debug_assert!(
            found.0.is_some() == model.is_some() && found.1.is_some() == options.is_some()
        );
        found
    }

    /// Appends the body to send upstream: the received bytes with the edits spliced in.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (model_at, options_at) = self.edited_members();
        let mut edits = [None, None, None];
        let mut n = 0;
        let mut push = |e: Edit| {
            edits[n] = Some(e);
            n += 1;
        };
        let insert_model = self.renamed && self.model_at.is_none();
        let insert_options = self.usage_requested && self.options == StreamOptions::Absent;
        if insert_model || insert_options {
            push(Edit {
                at: self.open..self.open,
                text: Text::TopMembers {
                    model: insert_model,
                    options: insert_options,
                    comma: self.has_members,
                },
            });
        }
        if let Some(at) = model_at {
            push(Edit {
                at,
                text: Text::Model,
            });
        }
        if let Some(value) = options_at {
            let open = || object_open(self.raw, value.start).unwrap_or(value.start);
            match self.options {
                StreamOptions::Absent => {}
                StreamOptions::NotObject(_) => push(Edit {
                    at: value,
                    text: Text::OptionsObject,
                }),
                StreamOptions::Object {
                    include_usage: Some((member, _)),
                    ..
                } => {
                    let mut members = Members {
                        raw: self.raw,
                        pos: open(),
                    };
                    if let Some(at) = members.nth(member) {
                        push(Edit {
                            at,
                            text: Text::True,
                        });
                    }
                }
                StreamOptions::Object { has_members, .. } => {
                    let at = open();
                    push(Edit {
                        at: at..at,
                        text: Text::IncludeMember { comma: has_members },
                    })
                }
            }
        }
        let edits = &mut edits[..n];
        edits.sort_unstable_by_key(|e| e.as_ref().map_or(usize::MAX, |e| e.at.start));
        let mut cursor = 0;
        for e in edits.iter().flatten() {
            out.extend_from_slice(&self.raw[cursor..e.at.start]);
            self.write_edit(e.text, out);
            cursor = e.at.end;
        }
        out.extend_from_slice(&self.raw[cursor..]);
    }

    fn write_edit(&self, text: Text, out: &mut Vec<u8>) {
        const OPTIONS: &[u8] = br#""stream_options":{"include_usage":true}"#;
        let model = self.model.unwrap_or_default();
        match text {
            Text::Model => json_string(out, model),
            Text::TopMembers {
                model: m,
                options,
                comma,
            } => {
                if m {
                    out.extend_from_slice(b"\"model\":");
                    json_string(out, model);
                }
                if options {
                    if m {
                        out.push(b',');
                    }
                    out.extend_from_slice(OPTIONS);
                }
                if comma {
                    out.push(b',');
                }
            }
            Text::OptionsObject => out.extend_from_slice(br#"{"include_usage":true}"#),
            Text::True => out.extend_from_slice(b"true"),
            Text::IncludeMember { comma } => {
                out.extend_from_slice(br#""include_usage":true"#);
                if comma {
                    out.push(b',');
                }
            }
        }
    }
}

/// One splice: the bytes `at` of the received body are replaced by `text`.
struct Edit {
    at: Range<usize>,
    text: Text,
}

#[derive(Clone, Copy)]
enum Text {
    /// The (new) model name as a JSON string.
    Model,
    /// Members inserted at the start of the top-level object.
    TopMembers {
        model: bool,
        options: bool,
        comma: bool,
    },
    /// `stream_options` replaced by an object.
    OptionsObject,
    /// `include_usage`'s value replaced.
    True,
    /// `include_usage` inserted at the start of `stream_options`.
    IncludeMember { comma: bool },
}

/// Writes `s` as a JSON string.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        } else {
            out.extend_from_slice(esc);
        }
        from = i + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// The conversation's opening (see [`JsonBody::feed_opening`]).
fn opening(body: Value<'_, '_>, limit: usize, piece: &mut impl FnMut(&[u8])) -> bool {
    let mut cut = |s: &str| piece(&s.as_bytes()[..s.len().min(limit)]);
    if let Some(messages) = body.get("messages").and_then(|m| m.as_array()) {
        let mut fed = false;
        for m in messages.iter() {
            let role_value = m.get("role");
            let role = role_value.as_ref().and_then(|r| r.as_str()).unwrap_or("");
            cut(role);
            match m.get("content") {
                Some(c) if c.is_str() => cut(c.as_str().unwrap_or("")),
                Some(c) => {
                    if let Some(parts) = c.as_array() {
                        for part in parts.iter() {
                            if let Some(t) = part.get("text") {
                                if let Some(t) = t.as_str() {
                                    cut(t);
                                }
                            }
                        }
                    }
                }
                None => {}
            }
            fed = true;
            if role == "user" {
                break;
            }
        }
        return fed;
    }
    let first = match body.get("prompt") {
        Some(p) if p.is_str() => Some(p),
        Some(p) => p.as_array().and_then(|a| a.get(0)),
        None => None,
    };
    first.as_ref().and_then(|p| p.as_str()).map(cut).is_some()
}

/// Where the opening's pieces are in `raw`: simd-json leaves a string without escapes where
/// it was in its copy of the body, which starts at address `base`, so a piece's place is its
/// offset from there, taken only when `raw`'s bytes there are the piece's.
fn locate_opening(root: Value<'_, '_>, raw: &[u8], base: usize) -> Opening {
    let mut pieces = [(0u32, 0u32); OPENING_PIECES];
    let mut len = 0;
    let mut placed = true;
    let found = opening(root, usize::MAX, &mut |p: &[u8]| {
        let start = (p.as_ptr() as usize).wrapping_sub(base);
        let at = match p.is_empty() {
            true => Some((0, 0)),
            false => start
                .checked_add(p.len())
                .filter(|&end| raw.get(start..end) == Some(p))
                .and_then(|end| Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))),
        };
        match (at, pieces.get_mut(len)) {
            (Some(at), Some(slot)) => {
                *slot = at;
                len += 1;
            }
            _ => placed = false,
        }
    });
    match (found, placed) {
        (false, _) => Opening::Absent,
        (true, true) => Opening::At {
            pieces,
            len: len as u8,
        },
        (true, false) => Opening::Unread,
    }
}

thread_local! {
    /// This thread's parse buffers (one per worker thread: nothing is shared).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Bodies up to this size leave their parse buffers for the next one; larger ones free them.
pub const SCRATCH_KEEP: usize = 256 * 1024;

/// Members of an object above which duplicate keys are found by sorting hashes.
const SMALL_OBJECT: usize = 16;

/// simd-json's reused parse state: the copy it parses in place, its buffers, the tape.
#[derive(Default)]
struct Scratch {
    input: Vec<u8>,
    buffers: Option<Buffers>,
    tape: Option<Tape<'static>>,
    hashes: Vec<u64>,
    seed: foldhash::fast::RandomState,
}

impl Scratch {
    /// Runs `f` on `raw` read into this thread's tape (with the duplicate-key finder);
    /// `None` when it is not JSON. Buffers grown by a body over [`SCRATCH_KEEP`] are freed.
    fn walk<R>(
        &mut self,
        raw: &[u8],
        f: impl FnOnce(Value<'_, '_>, &mut Keys<'_>, usize) -> R,
    ) -> Option<R> {
        self.walk_with(|input| input.extend_from_slice(raw), f)
    }

    /// [`Self::walk`] over the bytes `fill` writes into the (cleared) parse copy.
    fn walk_with<R>(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>),
        f: impl FnOnce(Value<'_, '_>, &mut Keys<'_>, usize) -> R,
    ) -> Option<R> {
        self.input.clear();
        fill(&mut self.input);
        let len = self.input.len();
        // Where the copy simd-json parses (and leaves plain strings in) starts.
        let base = self.input.as_ptr() as usize;
        let buffers = self.buffers.get_or_insert_with(|| Buffers::new(len));
        let mut tape = self.tape.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let out = match simd_json::fill_tape(&mut self.input, buffers, &mut tape) {
            Ok(()) => {
                let mut keys = Keys {
                    hashes: &mut self.hashes,
                    seed: &self.seed,
                };
                Some(f(tape.as_value(), &mut keys, base))
            }
            Err(_) => None,
        };
        self.tape = Some(tape.reset());
        if len > SCRATCH_KEEP {
            *self = Scratch {
                seed: self.seed.clone(),
                ..Scratch::default()
            };
        }
        out
    }

    fn read<'r>(
        &mut self,
        raw: &'r [u8],
        model: &mut String,
        opening: bool,
    ) -> Result<JsonBody<'r>, BodyError> {
        self.walk(raw, |v, keys, base| {
            let mut body = layout(v, raw, keys, model)?;
            if opening {
                body.opening = locate_opening(v, raw, base);
            }
            Ok(body)
        })
        .unwrap_or(Err(BodyError::NotJson))
    }

    /// [`Self::read`] with `raw` copied into `input` and parsed into `tape`, both the
    /// request's (see [`JsonBody::parse_kept`]); only simd-json's buffers are this thread's.
    fn read_into<'r>(
        &mut self,
        raw: &'r [u8],
        input: &'r mut [u8],
        tape: &mut Tape<'r>,
        model: &mut String,
        opening: bool,
    ) -> Result<JsonBody<'r>, BodyError> {
        let len = input.len();
        let base = input.as_ptr() as usize;
        let buffers = self.buffers.get_or_insert_with(|| Buffers::new(len));
        let read = simd_json::fill_tape(input, buffers, tape);
        if len > SCRATCH_KEEP {
            self.buffers = None;
        }
        read.map_err(|_| BodyError::NotJson)?;
        let v = tape.as_value();
        let mut keys = Keys {
            hashes: &mut self.hashes,
            seed: &self.seed,
        };
        let mut body = layout(v, raw, &mut keys, model)?;
        if opening {
            body.opening = locate_opening(v, raw, base);
        }
        Ok(body)
    }
}

/// Makes the gateway's edits in the tape of the received body, node for node as a parse of
/// [`JsonBody::encode_into`]'s output has them: `model`'s value replaced by the served name
/// (or `"model"` inserted first), and with `usage`, `stream_options` made an object with
/// `include_usage: true` (inserted first, after an inserted `model`; replacing a value that
/// is not an object; `include_usage` inserted first in it or its value replaced). The parse
/// refused repeated keys, so each key is found once.
fn edit_tape<'a>(t: &mut Vec<Node<'a>>, model: Option<&'a str>, usage: bool) {
    let Some(&Node::Object { len, .. }) = t.first() else {
        return;
    };
    let (mut model_at, mut options_at) = (None, None);
    let mut i = 1;
    for _ in 0..len {
        let v = i + 1;
        match t[i] {
            Node::String("model") => model_at = Some(v),
            Node::String("stream_options") => options_at = Some(v),
            _ => {}
        }
        i = v + nodes(&t[v]);
    }
    // Added members and nodes of the top-level object.
    let mut grown = 0isize;
    let mut members = 0;
    if let (Some(name), Some(at)) = (model, model_at) {
        t[at] = Node::String(name);
    }
    const INCLUDE: [Node<'static>; 2] = [
        Node::String("include_usage"),
        Node::Static(StaticNode::Bool(true)),
    ];
    let insert_options = usage && options_at.is_none();
    match options_at.filter(|_| usage) {
        None => {}
        Some(at) => match t[at] {
            Node::Object {
                len: o_len,
                count: o_count,
            } => {
                let mut j = at + 1;
                let mut found = None;
                for _ in 0..o_len {
                    if t[j] == Node::String("include_usage") {
                        found = Some(j + 1);
                    }
                    j += 1 + nodes(&t[j + 1]);
                }
                let (o_len, o_count) = match found {
                    Some(u) => {
                        let n = nodes(&t[u]);
                        t.splice(u..u + n, [INCLUDE[1]]);
                        grown += 1 - n as isize;
                        (o_len, (o_count as isize + 1 - n as isize) as usize)
                    }
                    None => {
                        t.splice(at + 1..at + 1, INCLUDE);
                        grown += 2;
                        (o_len + 1, o_count + 2)
                    }
                };
                t[at] = Node::Object {
                    len: o_len,
                    count: o_count,
                };
            }
            ref other => {
                let n = nodes(other);
                let object = Node::Object { len: 1, count: 2 };
                t.splice(at..at + n, [object, INCLUDE[0], INCLUDE[1]]);
                grown += 3 - n as isize;
            }
        },
    }
    let mut front = [Node::Static(StaticNode::Null); 6];
    let mut f = 0;
    if let (Some(name), None) = (model, model_at) {
        front[0] = Node::String("model");
        front[1] = Node::String(name);
        f = 2;
    }
    if insert_options {
        front[f] = Node::String("stream_options");
        front[f + 1] = Node::Object { len: 1, count: 2 };
        front[f + 2] = INCLUDE[0];
        front[f + 3] = INCLUDE[1];
        f += 4;
    }
    if f > 0 {
        t.splice(1..1, front[..f].iter().copied());
        members = usize::from(model.is_some() && model_at.is_none()) + usize::from(insert_options);
        grown += f as isize;
    }
    if let Node::Object { len, count } = &mut t[0] {
        *len += members;
        *count = (*count as isize + grown) as usize;
    }
}

/// The nodes a value takes on the tape (a container's header and everything in it).
fn nodes(n: &Node<'_>) -> usize {
    match *n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Finds repeated keys.
struct Keys<'s> {
    hashes: &'s mut Vec<u64>,
    seed: &'s foldhash::fast::RandomState,
}

impl Keys<'_> {
    fn repeat_in(&mut self, obj: &Object<'_, '_>) -> bool {
        if obj.len() <= SMALL_OBJECT {
            let mut seen = [""; SMALL_OBJECT];
            for (i, (k, _)) in obj.iter().enumerate() {
                if seen[..i].contains(&k) {
                    return true;
                }
                seen[i] = k;
            }
            return false;
        }
        self.hashes.clear();
        self.hashes
            .extend(obj.iter().map(|(k, _)| self.seed.hash_one(k)));
        self.hashes.sort_unstable();
        // Equal hashes are compared by key (a real repeat, or a collision that is not): every
        // pair of keys with that hash, so a collision cannot hide a repeat behind it.
        let seed = self.seed;
        self.hashes.windows(2).any(|w| {
            w[0] == w[1] && {
                let same = || obj.iter().filter(move |(k, _)| seed.hash_one(k) == w[0]);
                same()
                    .enumerate()
                    .any(|(i, (a, _))| same().skip(i + 1).any(|(b, _)| a == b))
            }
        })
    }
}

/// What the encoder and the stages need from a valid document (see the module docs).
fn layout<'r>(
    root: Value<'_, '_>,
    raw: &'r [u8],
    keys: &mut Keys<'_>,
    model: &mut String,
) -> Result<JsonBody<'r>, BodyError> {
    let obj = root.as_object().ok_or(BodyError::NotObject)?;
    if keys.repeat_in(&obj) {
        return Err(BodyError::DuplicateKey);
    }
    let open = object_open(raw, 0).ok_or(BodyError::NotJson)?;
    let mut body = JsonBody {
        raw,
        open,
        has_members: !obj.is_empty(),
        model: None,
        model_at: None,
        renamed: false,
        stream: false,
        max_tokens: None,
        options: StreamOptions::Absent,
        usage_requested: false,
        opening: Opening::Unread,
        kept: None,
    };
    let (mut max_tokens, mut max_completion_tokens) = (None, None);
    let (mut model_ok, mut stream_ok) = (true, true);
    for (at, (k, v)) in obj.iter().enumerate() {
        match k {
            "model" => match v.as_str() {
                Some(s) => {
                    model.push_str(s);
                    body.model_at = Some(at);
                }
                None => model_ok = false,
            },
            "stream" => match v.as_bool() {
                Some(b) => body.stream = b,
                None => stream_ok = v.is_null(),
            },
            "max_tokens" => max_tokens = v.as_u64(),
            "max_completion_tokens" => max_completion_tokens = v.as_u64(),
            "stream_options" => body.options = stream_options(v, at, keys)?,
            _ => {}
        }
    }
    if !model_ok {
        return Err(BodyError::ModelNotString);
    }
    if !stream_ok {
        return Err(BodyError::StreamNotBool);
    }
    body.max_tokens = max_tokens.or(max_completion_tokens);
    Ok(body)
}

/// What `stream_options` (top-level member `member`) is, for its edit.
fn stream_options(
    v: Value<'_, '_>,
    member: usize,
    keys: &mut Keys<'_>,
) -> Result<StreamOptions, BodyError> {
    let Some(obj) = v.as_object() else {
        return Ok(StreamOptions::NotObject(member));
    };
    if keys.repeat_in(&obj) {
        return Err(BodyError::DuplicateKey);
    }
    let include_usage = obj.iter().position(|(k, _)| k == "include_usage").map(|i| {
        (
            i,
            obj.get("include_usage").and_then(|v| v.as_bool()) == Some(true),
        )
    });
    Ok(StreamOptions::Object {
        member,
        has_members: !obj.is_empty(),
        include_usage,
    })
}

/// The index after the `{` of the object starting at `from` (after whitespace).
fn object_open(raw: &[u8], from: usize) -> Option<usize> {
    let at = skip_ws(raw, from);
    (raw.get(at) == Some(&b'{')).then_some(at + 1)
}

fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while matches!(raw.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The value bytes of an object's members, in order, in a document simd-json accepted (the
/// tape lists the members in the same order).
struct Members<'r> {
    raw: &'r [u8],
    /// Just after the `{` or after the previous value.
    pos: usize,
}

impl Iterator for Members<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        let raw = self.raw;
        let mut i = skip_ws(raw, self.pos);
        if raw.get(i) == Some(&b',') {
            i = skip_ws(raw, i + 1);
        }
        if raw.get(i) != Some(&b'"') {
            return None;
        }
        i = skip_ws(raw, string_end(raw, i + 1)?);
        if raw.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(raw, i + 1);
        let end = value_end(raw, start)?;
        self.pos = end;
        Some(start..end)
    }
}

/// The end of the value starting at `from`.
fn value_end(raw: &[u8], from: usize) -> Option<usize> {
    match raw.get(from)? {
        b'"' => string_end(raw, from + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = from;
            loop {
                match raw.get(i)? {
                    b'"' => {
                        i = string_end(raw, i + 1)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let n = raw[from..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(raw.len() - from);
            Some(from + n)
        }
    }
}

/// Inputs simd-json accepts although they are not JSON, each of which the gateway would read
/// differently from a strict upstream parser (the body is forwarded with splices, so the
/// upstream reads these bytes itself), all found with the `json_body` fuzz target:
/// - a raw NUL, taken as the end of a number or literal (`{"max_tokens":5\0}`);
/// - garbage after a number of more than 19 digits (`1.2345678901234567890x` reads as
///   `1.2345678901234567`), so every number is checked against the JSON grammar and must be
///   followed by whitespace, `,`, `]`, `}` or the end;
/// - a `\uD800`–`\uDBFF` escape not followed by a `\uDC00`–`\uDFFF` one: decoded as U+0000
///   when no `\u` escape follows, and as some other character when one above `\uDFFF`
///   follows (it refuses the other unpaired surrogates).
///
/// Only what simd-json accepts needs to be right here: anything else it refuses itself.
/// String contents are skipped with memchr, so the cost is a pass over the structure.
fn simd_json_misreads(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => match string_end(bytes, i + 1) {
                Some(end) => i = end,
                None => return true,
            },
            b'-' | b'0'..=b'9' => {
                let Some(end) = number_end(bytes, i) else {
                    return true;
                };
                if !matches!(
                    bytes.get(end),
                    None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b']' | b'}')
                ) {
                    return true;
                }
                i = end;
            }
            0 => return true,
            _ => i += 1,
        }
    }
    false
}

/// The index after the closing quote of the string whose content starts at `from`; `None` for
/// an unterminated string or a high surrogate escape without its low one.
fn string_end(bytes: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + quote_or_backslash(bytes.get(from..)?)?;
        if bytes[at] == b'"' {
            return Some(at + 1);
        }
        if bytes.get(at + 1) == Some(&b'u') {
            let high = matches!(
                bytes.get(at + 2..at + 4),
                Some([b'd' | b'D', b'8'..=b'9' | b'a'..=b'b' | b'A'..=b'B'])
            );
            let low_follows = matches!(
                bytes.get(at + 6..at + 10),
                Some([b'\\', b'u', b'd' | b'D', b'c'..=b'f' | b'C'..=b'F'])
            );
            if high && !low_follows {
                return None;
            }
        }
        // The escaped byte is skipped, so `\\"` and `\\\\u` are read right.
        from = at + 2;
    }
}

/// The index of the first `"` or `\` of `s`. Most strings of a request are short (keys,
/// roles, names): their first 32 bytes are looked at eight a step, where a SIMD search's
/// setup would cost more than the search; the rest of a longer one is left to `memchr2`.
#[inline]
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each zero byte; above the lowest one, a borrow may flag a byte that is
    // not zero, so only the lowest is read.
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut base = 0;
    for w in s.chunks_exact(8).take(4) {
        let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
        let flags = zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\')));
        if flags != 0 {
            return Some(base + (flags.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    memchr::memchr2(b'"', b'\\', &s[base..]).map(|p| base + p)
}

/// The end of the number starting at `from` (`-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?`).
fn number_end(bytes: &[u8], from: usize) -> Option<usize> {
    let digits = |i: usize| {
        bytes[i.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut i = from + usize::from(bytes[from] == b'-');
    match (bytes.get(i), digits(i)) {
        (Some(b'0'), _) => i += 1,
        (_, 0) => return None,
        (_, n) => i += n,
    }
    if bytes.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return None;
        }
        i += 1 + n;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1 + usize::from(matches!(bytes.get(i + 1), Some(b'+' | b'-')));
        let n = digits(i);
        if n == 0 {
            return None;
        }
        i += n;
    }
    Some(i)
}

/// What an adapter wrote for a body: its output, the path it reported, its verdict.
#[cfg(test)]
pub(crate) type Written<E> = (Vec<u8>, String, Result<(), E>);

/// Test helper: runs the writer `f` (an adapter) on the body `raw` with the gateway's edits
/// (`served`: a split's served name; `usage`: `include_usage` forced) both ways — from the
/// parse's kept tape with the edits made as nodes, and from the edited body read again (the
/// way before the tape was kept) — asserts that both wrote the same bytes, the same path and
/// the same verdict, and returns them. `Err` when the body does not parse.
#[cfg(test)]
pub(crate) fn both_ways<E: PartialEq + std::fmt::Debug>(
    raw: &[u8],
    served: Option<&str>,
    usage: bool,
    mut f: impl FnMut(Value<'_, '_>, &mut Vec<u8>, &mut String) -> Result<(), E>,
) -> Result<Written<E>, BodyError> {
    let mut run = |kept: bool| -> Result<Written<E>, BodyError> {
        let (mut model, mut home) = (String::new(), ParseHome::default());
        let mut body = match kept {
            true => JsonBody::parse_kept(raw, &mut model, false, &mut home)?,
            false => JsonBody::parse(raw, &mut model)?,
        };
        if let Some(name) = served {
            body.set_model(name);
        }
        if usage {
            body.request_usage();
        }
        let (mut out, mut path) = (Vec::new(), String::new());
        let verdict = match kept {
            true => body.with_value(|v| f(v, &mut out, &mut path)),
            false => body.with_reread(|v| f(v, &mut out, &mut path)),
        };
        assert_eq!(body.kept.is_some(), kept);
        Ok((out, path, verdict))
    };
    let kept = run(true)?;
    let again = run(false).expect("parses the same way");
    assert_eq!(
        String::from_utf8_lossy(&kept.0),
        String::from_utf8_lossy(&again.0),
        "the kept tape and the re-read disagree on {}",
        String::from_utf8_lossy(raw)
    );
    assert_eq!((&kept.1, &kept.2), (&again.1, &again.2));
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `s` (kept alive for the test's duration).
    fn parse(s: &str) -> Result<JsonBody<'static>, BodyError> {
        let raw: &'static [u8] = Box::leak(s.as_bytes().into());
        JsonBody::parse(raw, Box::leak(Box::default()))
    }

    fn encode(b: &JsonBody<'_>) -> String {
        let mut out = Vec::new();
        b.encode_into(&mut out);
        String::from_utf8(out).unwrap()
    }

    /// The pieces `feed_opening` hands out, joined with `|`; the same whether the parse found
    /// them (`parse_keyed`) or they are read again.
    fn opening(body: &str, limit: usize) -> Option<String> {
        let raw: &'static [u8] = Box::leak(body.as_bytes().into());
        let feed = |b: &JsonBody<'_>| {
            let mut out = Vec::new();
            let fed = b.feed_opening(limit, |p| out.push(String::from_utf8_lossy(p).into_owned()));
            fed.then(|| out.join("|"))
        };
        let again = feed(&parse(body).unwrap());
        let keyed = JsonBody::parse_keyed(raw, Box::leak(Box::default()), true).unwrap();
        assert_eq!(feed(&keyed), again, "{body}");
        again
    }

    #[test]
    fn the_parse_finds_the_opening_unless_it_has_escapes_or_too_many_pieces() {
        let keyed = |body: &str| {
            let raw: &'static [u8] = Box::leak(body.as_bytes().into());
            JsonBody::parse_keyed(raw, Box::leak(Box::default()), true)
                .unwrap()
                .opening
        };
        let found = |o: Opening| matches!(o, Opening::At { .. });
        let chat = |content: &str| {
            format!(
                r#"{{"messages":[{{"role":"system","content":{content}}},{{"content":"q","role":"user"}}]}}"#
            )
        };
        assert!(found(keyed(&chat(r#""plain text""#))));
        assert!(found(keyed(&chat(r#""""#))));
        assert!(found(keyed(r#"{"messages":[{"content":"no role"}]}"#)));
        assert!(found(keyed(r#"{"prompt":["first","second"]}"#)));
        assert!(found(keyed(&chat(
            r#"[{"type":"text","text":"héllo wörld"}]"#
        ))));
        assert_eq!(keyed(r#"{"model":"m"}"#), Opening::Absent);
        assert_eq!(parse(&chat(r#""x""#)).unwrap().opening, Opening::Unread);
        // Escaped text is decoded, so it is not the received bytes: read again.
        for escaped in [r#""a\"b""#, r#""\n""#, r#""\u00e9""#, r#""x\/""#] {
            assert_eq!(keyed(&chat(escaped)), Opening::Unread, "{escaped}");
            assert!(opening(&chat(escaped), 1024).is_some());
        }
        // Unless the received bytes happen to be the decoded ones: a place is only ever
        // taken for bytes equal to the piece.
        assert_eq!(opening(&chat(r#""\\""#), 1024).unwrap(), "system|\\|user|q");
        // More pieces than a parse keeps: read again, every piece still fed.
        let parts: Vec<String> = (0..OPENING_PIECES)
            .map(|i| format!(r#"{{"type":"text","text":"part {i}"}}"#))
            .collect();
        let many = chat(&format!("[{}]", parts.join(",")));
        assert_eq!(keyed(&many), Opening::Unread);
        let fed = opening(&many, 1024).unwrap();
        assert_eq!(fed.split('|').count(), OPENING_PIECES + 3, "{fed}");
        // Bodies that only differ in whitespace or key order give the same pieces.
        let spaced = "{ \"messages\" : [ { \"content\" : \"plain text\" , \"role\":\"system\" }, {\"role\": \"user\", \"content\": \"q\"} ] }";
        assert_eq!(
            opening(spaced, 1024),
            opening(&chat(r#""plain text""#), 1024)
        );
    }

    #[test]
    fn the_opening_is_the_same_on_every_turn() {
        let sys = r#"{"role":"system","content":"You are terse."}"#;
        let u1 = r#"{"role":"user","content":"Hello there"}"#;
        let a1 = r#"{"role":"assistant","content":"Hi."}"#;
        let u2 = r#"{"role":"user","content":"Tell me more"}"#;
        let turn = |msgs: &[&str]| format!(r#"{{"model":"m","messages":[{}]}}"#, msgs.join(","));
        let first = opening(&turn(&[sys, u1]), 1024).unwrap();
        assert_eq!(first, "system|You are terse.|user|Hello there");
        assert_eq!(opening(&turn(&[sys, u1, a1, u2]), 1024).unwrap(), first);
        // Each piece is cut, not the whole.
        assert_eq!(
            opening(&turn(&[sys, u1, a1]), 4).unwrap(),
            "syst|You |user|Hell"
        );
        // Content parts: their texts; other parts are skipped.
        let parts = r#"{"role":"user","content":[{"type":"text","text":"look"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"here"}]}"#;
        assert_eq!(opening(&turn(&[parts]), 1024).unwrap(), "user|look|here");
        // Completions: the prompt, or the first of a list.
        assert_eq!(opening(r#"{"prompt":"Once upon"}"#, 4).unwrap(), "Once");
        assert_eq!(opening(r#"{"prompt":["a","b"]}"#, 9).unwrap(), "a");
        for none in [
            r#"{"model":"m"}"#,
            r#"{"messages":[]}"#,
            r#"{"messages":"hi"}"#,
            r#"{"prompt":[1,2,3]}"#,
            r#"{"prompt":7}"#,
        ] {
            assert_eq!(opening(none, 1024), None, "{none}");
        }
        // A cut inside a multi-byte character still hashes its bytes (never panics).
        assert!(opening(r#"{"prompt":"héllo"}"#, 2).is_some());
    }

    #[test]
    fn reads_fields() {
        let b = parse(r#"{"model":"llama3","stream":true,"max_tokens":42,"stream_options":{"include_usage":true}}"#).unwrap();
        assert_eq!(b.model(), Some("llama3"));
        assert!(b.stream() && b.include_usage());
        assert_eq!(b.max_tokens(), Some(42));
        let b = parse(r#"{"messages":[],"max_completion_tokens":7}"#).unwrap();
        assert_eq!(
            (b.model(), b.stream(), b.max_tokens()),
            (None, false, Some(7))
        );
    }

    #[test]
    fn rejects_bad_bodies() {
        assert_eq!(parse("not json").unwrap_err(), BodyError::NotJson);
        assert_eq!(parse("[1]").unwrap_err(), BodyError::NotObject);
        assert_eq!(
            parse(r#"{"model":3}"#).unwrap_err(),
            BodyError::ModelNotString
        );
        assert_eq!(
            parse(r#"{"model":"a","stream":"yes"}"#).unwrap_err(),
            BodyError::StreamNotBool
        );
    }

    #[test]
    fn rewrites_model_and_requests_usage() {
        let mut b = parse(r#"{"model":"chat-default","stream":true,"messages":[{"role":"user","content":"hi \"there\""}]}"#).unwrap();
        b.set_model("meta-llama/Llama-3-70B");
        b.request_usage();
        let out = encode(&b);
        let again = parse(&out).unwrap();
        assert_eq!(again.model(), Some("meta-llama/Llama-3-70B"));
        assert!(again.include_usage());
        assert!(out.contains(r#"hi \"there\""#));
    }

    /// Found by the `json_body` fuzz target: a raw NUL after any scalar, in any position, and
    /// anywhere else, is not JSON (`@` marks where the NUL goes).
    #[test]
    fn nul_bytes_are_not_json() {
        let nul = |s: &str| s.replace('@', "\0");
        for atom in ["0", "-1.5e3", "true", "false", "null", r#""s""#, "[]", "{}"] {
            for body in [
                format!(r#"{{"model":"m","x":{atom}@}}"#),
                format!(r#"{{"x":{atom}@,"model":"m"}}"#),
                format!(r#"{{"x":[{atom}@]}}"#),
                format!(r#"{{"x":{atom}{}}}"#, "@".repeat(64)),
            ] {
                assert_eq!(
                    parse(&nul(&body)).unwrap_err(),
                    BodyError::NotJson,
                    "{body}"
                );
            }
        }
        for body in [
            "@{}",
            "{}@",
            "{@}",
            r#"{"model":"a@b"}"#,
            r#"{"mo@del":"a"}"#,
        ] {
            assert_eq!(parse(&nul(body)).unwrap_err(), BodyError::NotJson, "{body}");
        }
        // An escaped NUL is a character like any other.
        let b = parse(r#"{"model":"a\u0000b"}"#).unwrap();
        assert_eq!(b.model(), Some("a\0b"));
    }

    /// Found with the `json_body` fuzz target: simd-json decoded a lone high surrogate as
    /// U+0000, and one followed by `\uEE00` as some other character. Every unpaired or
    /// misordered surrogate is refused, in any case and position.
    #[test]
    fn unpaired_surrogates_are_not_json() {
        for esc in [
            r"\ud800", r"\uD800", r"\udbff", r"\uDBFF", r"\udc00", r"\uDFFF",
        ] {
            for s in [
                esc.to_string(),
                format!("x{esc}y"),
                format!("{esc}\\n"),
                format!("{esc}\\\\"),
                format!("{esc}\\u0041"),
                format!("{esc}\\uee00"),
                format!("{esc}\\uFFFF"),
                format!("{esc}\\ue000x"),
                format!("{esc}{esc}"),
                format!(r"\ude00\ud83d{esc}"),
                format!("a{esc}"),
            ] {
                for body in [
                    format!(r#"{{"model":"{s}"}}"#),
                    format!(r#"{{"x":["{s}"]}}"#),
                ] {
                    assert_eq!(parse(&body).unwrap_err(), BodyError::NotJson, "{body}");
                }
            }
        }
        // A pair is one character; an escaped backslash before `u` is no escape at all.
        let b = parse(r#"{"model":"\ud83d\ude00\uD83D\uDE00","x":"\\ud800"}"#).unwrap();
        assert_eq!(b.model(), Some("\u{1f600}\u{1f600}"));
        assert!(encode(&b).contains(r#""x":"\\ud800""#));
    }

    /// Found by the `json_body` fuzz target: simd-json dropped garbage after a number of more
    /// than 19 digits. Every malformed number is refused, at every position and in arrays;
    /// every valid shape still parses.
    #[test]
    fn malformed_numbers_are_not_json() {
        let long = "1234567890123456789012";
        for bad in [
            format!("{long}.5x"),
            format!("{long}e7x"),
            format!("1.{long}x"),
            format!("-{long}.5str1e-2"),
            format!("{long}.5-"),
            format!("{long}.5."),
            format!("{long}.5e"),
            format!("{long}."),
            format!("0{long}"),
            "1x".into(),
            "-".into(),
            "-x".into(),
            ".5".into(),
            "1.".into(),
            "1e".into(),
            "1e+".into(),
            "01".into(),
            "1.5e3.2".into(),
        ] {
            for body in [
                format!(r#"{{"model":"m","x":{bad}}}"#),
                format!(r#"{{"x":{bad},"model":"m"}}"#),
                format!(r#"{{"x":[1,{bad}]}}"#),
            ] {
                assert_eq!(parse(&body).unwrap_err(), BodyError::NotJson, "{body}");
            }
        }
        for good in [
            "0",
            "-0",
            "1",
            "-12",
            "1.5",
            "-0.25e-3",
            "1E+9",
            "2e5",
            "1.7976931348623157e308",
        ] {
            for body in [
                format!(r#"{{"model":"m","x":{good}}}"#),
                format!(r#"{{"x":[{good}, {good} ,{good}],"model":"m"}}"#),
                format!("{{\"x\":{good}\n,\t\"y\":\"1x\\\"2\\\\\"}}"),
            ] {
                assert!(parse(&body).is_ok(), "{body}");
            }
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert_eq!(
            parse(r#"{"model":"a","model":"b"}"#).unwrap_err(),
            BodyError::DuplicateKey
        );
        assert_eq!(
            parse(r#"{"stream":false,"model":"a","stream":true}"#).unwrap_err(),
            BodyError::DuplicateKey
        );
    }

    /// What serde_json (a strict reader, the last of repeated keys wins) makes of `s`.
    fn oracle(s: &str) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(s) {
            Ok(serde_json::Value::Object(o)) => o,
            other => panic!("{s:?} is not an object: {other:?}"),
        }
    }

    /// The served name replaces `model` wherever and however the key is written, with any
    /// whitespace around it, and nothing else changes.
    #[test]
    fn the_model_is_spliced_in_wherever_it_is() {
        let bodies = [
            r#"{"model":"a"}"#,
            r#"{ "model" : "a" }"#,
            "{\n\t\"model\"\r\n:\t\"a\"\n}",
            r#"{"model":"a","messages":[{"role":"user","content":"{\"model\":\"x\"}"}]}"#,
            r#"{"messages":[{"model":"inner"}],"model":"a","n":1}"#,
            r#"{"x":{"model":"b"},"model":"a"}"#,
            r#"{"mo\u0064el":"a","y":[1,2,{"z":"]}"}]}"#,
            r#"{"\u006d\u006F\u0064\u0065\u006c":"a\"b\\c","t":true,"f":false,"n":null}"#,
            r#"{"n":-1.5e3,"model":"a","m":0}"#,
        ];
        let names = [
            "llama",
            "meta-llama/Llama-3-70B",
            "q\"uote",
            "back\\slash",
            "tab\tnl\nnul\u{0}",
            "ünïcode ✓ \u{2028}",
        ];
        for body in bodies {
            let before = oracle(body);
            for name in names {
                let mut b = parse(body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
                assert_eq!(b.model(), before["model"].as_str(), "{body}");
                b.set_model(name);
                assert_eq!(b.model(), Some(name));
                let out = encode(&b);
                let after = oracle(&out);
                assert_eq!(after["model"].as_str(), Some(name), "{body} → {out}");
                assert_eq!(after.len(), before.len(), "{out}");
                for (k, v) in &before {
                    if k != "model" {
                        assert_eq!(after.get(k), Some(v), "{k} in {out}");
                    }
                }
                let again = parse(&out).unwrap();
                assert_eq!(again.model(), Some(name), "{out}");
            }
        }
    }

    /// The gateway's edits made in the kept tape give, node for node, the tape of the edited
    /// body as it is written out (what the adapters read before the tape was kept): for every
    /// shape of `model` and `stream_options`, present or not, first or last, nested values,
    /// escaped keys and values, and every served name. Bodies the parse refuses are refused
    /// the same way into a home.
    #[test]
    fn edits_in_the_kept_tape_are_the_tape_of_the_edited_body() {
        let mut bodies: Vec<String> = [
            r#"{}"#,
            r#"{ }"#,
            r#"{"model":"a"}"#,
            r#"{"x":1}"#,
            "{\n\t\"model\"\r\n:\t\"a\"\n}",
            r#"{"messages":[{"model":"inner"}],"model":"a","n":1}"#,
            r#"{"x":{"model":"b","stream_options":{}},"model":"a"}"#,
            r#"{"mo\u0064el":"a","y":[1,2,{"z":"]}"}]}"#,
            r#"{"\u006d\u006F\u0064\u0065\u006c":"a\"b\\c","t":true,"f":false,"n":null}"#,
            r#"{"a":{"b":{"c":[1,{"d":{}}]}},"model":"x","e\u00e9":"\ud83d\ude00"}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":5}"#,
            r#"{"model":{"name":"a"}}"#,
            r#"{"model":null}"#,
            r#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
            r#"[{"model":"a"}]"#,
        ]
        .map(String::from)
        .to_vec();
        let options = [
            "null",
            "\"yes\"",
            "[1,[2,3],{\"a\":[]}]",
            "7",
            "false",
            "{}",
            r#"{"x":1}"#,
            r#"{"include_usage":false}"#,
            r#"{"include_usage":true}"#,
            r#"{"include_usage":{"a":[1,{"b":2}]},"y":[1,{"include_usage":false}]}"#,
            r#"{"y":"}","include_usage":[0,[1]]}"#,
            r#"{"include\u005fusage":false,"z":{}}"#,
            r#"{"z":{"include_usage":false}}"#,
        ];
        for o in options {
            for (before, after) in [("", ""), (r#""model":"a","#, ""), ("", r#","model":"a""#)] {
                bodies.push(format!(
                    r#"{{{before}"stream_options":{o},"stream":true,"m":{{"k":[{o}]}}{after}}}"#
                ));
                bodies.push(format!(r#"{{"stream\u005foptions":{o}{after}}}"#));
            }
        }
        let names = [
            None,
            Some("llama"),
            Some("meta-llama/Llama-3-70B"),
            Some(""),
            Some("q\"uote\\"),
            Some("tab\tnl\nnul\u{0}"),
            Some("ünïcode ✓ \u{2028}"),
        ];
        for body in &bodies {
            let raw = body.as_bytes();
            for name in names {
                for usage in [false, true] {
                    let (mut model, mut home) = (String::new(), ParseHome::default());
                    let refused = JsonBody::parse_kept(raw, &mut model, false, &mut home).err();
                    if let Some(e) = refused {
                        assert_eq!(parse(body).unwrap_err(), e, "{body}");
                        assert!(home.tape.is_some(), "the tape went back home");
                        continue;
                    }
                    let mut b = JsonBody::parse_kept(raw, &mut model, false, &mut home).unwrap();
                    if let Some(n) = name {
                        b.set_model(n);
                    }
                    if usage {
                        b.request_usage();
                    }
                    let mut out = Vec::new();
                    b.encode_into(&mut out);
                    let written = String::from_utf8(out.clone()).unwrap();
                    let want = simd_json::to_tape(&mut out).unwrap();
                    let got = b.with_value(|v| {
                        use simd_json::prelude::Writable;
                        (v == want.as_value())
                            .then_some(())
                            .ok_or_else(|| v.encode())
                    });
                    assert_eq!(got, Ok(()), "{body} {name:?} {usage} → {written}");
                    // Read twice, the same: the edits are made once.
                    assert!(b.with_value(|v| v == want.as_value()));
                    drop(b);
                    assert!(home.tape.is_some(), "the tape went back home");
                }
            }
        }
    }

    /// A parse into a request's home reads what a parse into the thread's scratch reads.
    #[test]
    fn a_kept_parse_reads_the_same_fields() {
        for body in [
            r#"{"model":"llama3","stream":true,"max_tokens":42,"stream_options":{"include_usage":true}}"#,
            r#"{"messages":[],"max_completion_tokens":7}"#,
            r#"{"mod\u0065l":"a\"b","stream":false}"#,
            r#"{"stream_options":{"x":1},"stream":true,"model":""}"#,
        ] {
            let b = parse(body).unwrap();
            let (mut model, mut home) = (String::new(), ParseHome::default());
            let k = JsonBody::parse_kept(body.as_bytes(), &mut model, false, &mut home).unwrap();
            let fields = |b: &JsonBody<'_>| {
                (
                    b.model().map(String::from),
                    b.stream(),
                    b.max_tokens(),
                    b.include_usage(),
                )
            };
            assert_eq!(fields(&k), fields(&b), "{body}");
            assert_eq!(
                (&k.model_at, &k.options),
                (&b.model_at, &b.options),
                "{body}"
            );
        }
    }

    /// An edit after the adapter read the kept tape is not lost: the body is read again.
    #[test]
    fn an_edit_after_the_tape_was_read_reads_the_body_again() {
        let raw = br#"{"model":"a","stream":true}"#;
        let (mut model, mut home) = (String::new(), ParseHome::default());
        let mut b = JsonBody::parse_kept(raw, &mut model, false, &mut home).unwrap();
        let model_of = |v: Value<'_, '_>| v.get("model").and_then(|m| m.as_str().map(String::from));
        assert_eq!(b.with_value(model_of).as_deref(), Some("a"));
        b.set_model("b");
        assert!(b.kept.is_none());
        assert_eq!(b.with_value(model_of).as_deref(), Some("b"));
        b.request_usage();
        assert!(b.with_value(|v| v.get("stream_options").is_some()));
        drop(b);
        // The home got its tape back, emptied, for the next request; a large one is freed.
        assert!(home.tape.as_ref().is_some_and(|t| t.0.is_empty()));
        home.reset(0);
        assert!(home.tape.is_none() && home.input.capacity() == 0);
    }

    /// Nothing is touched when nothing is asked: the body goes as received, byte for byte.
    #[test]
    fn an_unedited_body_goes_as_received() {
        for body in [
            r#"{"model":"a","stream":true}"#,
            "  {\n \"x\" : [ 1 , 2 ] }  ",
            r#"{"stream_options":{"include_usage":true},"stream":true}"#,
        ] {
            let mut b = parse(body).unwrap();
            assert_eq!(encode(&b), body);
            // The client asked for usage already: requesting it changes nothing either.
            if b.include_usage() {
                b.request_usage();
                assert_eq!(encode(&b), body);
            }
        }
    }

    /// A body without `model` gets one at the front; an empty object too.
    #[test]
    fn a_missing_model_is_inserted() {
        for body in [r#"{}"#, r#"{ }"#, r#"{"x":1}"#, " {\"stream\":true} "] {
            let mut b = parse(body).unwrap();
            assert_eq!(b.model(), None);
            b.set_model("m\"1");
            b.request_usage();
            let out = encode(&b);
            let o = oracle(&out);
            assert_eq!(o["model"].as_str(), Some("m\"1"), "{out}");
            assert_eq!(o["stream_options"]["include_usage"], true, "{out}");
            assert_eq!(o.len(), oracle(body).len() + 2, "{out}");
            assert!(parse(&out).unwrap().include_usage());
        }
    }

    /// Every shape of `stream_options` ends as an object with `include_usage: true`, its other
    /// members kept, however the key is written.
    #[test]
    fn usage_is_requested_whatever_stream_options_was() {
        let options = [
            None,
            Some("null"),
            Some("\"yes\""),
            Some("[1,2]"),
            Some("7"),
            Some("false"),
            Some("{}"),
            Some("{ }"),
            Some(r#"{"x":1}"#),
            Some(r#"{"include_usage":false}"#),
            Some(r#"{"include_usage":null,"y":[1,{"include_usage":false}]}"#),
            Some(r#"{"y":"}","include_usage":0}"#),
            Some(r#"{"include\u005fusage":false,"z":{}}"#),
            Some(r#"{ "include_usage" : "true" }"#),
        ];
        for opt in options {
            for model_first in [true, false] {
                let o = opt.map(|o| format!(r#""stream_options":{o}"#));
                let members: Vec<String> = [
                    Some(r#""model":"a""#.to_string()),
                    o,
                    Some(r#""stream":true"#.into()),
                ]
                .into_iter()
                .flatten()
                .collect();
                let members = if model_first {
                    members
                } else {
                    members.into_iter().rev().collect()
                };
                let body = format!("{{{}}}", members.join(","));
                let mut b = parse(&body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
                assert!(!b.include_usage(), "{body}");
                b.request_usage();
                assert!(b.include_usage());
                let out = encode(&b);
                let after = oracle(&out);
                let got = after["stream_options"]
                    .as_object()
                    .unwrap_or_else(|| panic!("{out}"));
                assert_eq!(got["include_usage"], true, "{out}");
                if let Some(serde_json::Value::Object(before)) = oracle(&body).get("stream_options")
                {
                    for (k, v) in before {
                        if k != "include_usage" {
                            assert_eq!(got.get(k), Some(v), "{k} in {out}");
                        }
                    }
                }
                assert_eq!(after["model"], "a");
                assert_eq!(after["stream"], true);
                assert!(parse(&out).unwrap().include_usage(), "{out}");
            }
        }
    }

    /// A repeated key of the top level or of `stream_options` is refused however it is
    /// spelled and wherever it is, also in objects large enough to be checked by hashing; a
    /// repeat deeper down (not read, not rewritten) is not.
    #[test]
    fn repeated_keys_are_refused_in_every_object_the_gateway_edits() {
        let filler = |n: usize| -> String { (0..n).map(|i| format!(r#""k{i}":{i},"#)).collect() };
        for n in [0, 3, SMALL_OBJECT, SMALL_OBJECT + 1, 200] {
            let f = filler(n);
            for body in [
                format!(r#"{{{f}"model":"a","model":"b"}}"#),
                format!(r#"{{"model":"a",{f}"mod\u0065l":"b"}}"#),
                format!(r#"{{"x":1,{f}"\u0078":2}}"#),
                format!(
                    r#"{{{f}"stream_options":{{"include_usage":true,"include_usage":false}}}}"#
                ),
                format!(r#"{{"stream_options":{{{f}"a":1,"\u0061":2}}}}"#),
                format!(r#"{{"stream_options":{{}},{f}"stream_options":null}}"#),
            ] {
                assert_eq!(parse(&body).unwrap_err(), BodyError::DuplicateKey, "{body}");
            }
            for body in [
                format!(r#"{{{f}"x":{{"a":1,"a":2}},"model":"m"}}"#),
                format!(r#"{{"stream_options":{{{f}"o":{{"a":1,"a":2}}}}}}"#),
                format!(r#"{{{f}"a":1,"A":2,"a ":3}}"#),
            ] {
                assert!(parse(&body).is_ok(), "{body}");
            }
        }
    }

    /// Numbers of any precision reach the upstream as written, byte for byte, next to a spliced
    /// `model` (a re-encoding would have rounded them); `max_tokens` that is negative or not an
    /// integer is no limit.
    #[test]
    fn huge_numbers_pass_through_as_written() {
        // `None`: refused as not JSON; `Some(max_tokens)` otherwise.
        let cases: &[(&str, Option<Option<u64>>)] = &[
            ("123456789012345678901234567890", None),
            ("18446744073709551615", Some(Some(u64::MAX))),
            ("9223372036854775808", Some(Some(1 << 63))),
            ("18446744073709551616", None),
            ("-9223372036854775808", Some(None)),
            ("-9223372036854775809", None),
            ("1e400", None),
            ("0.1e+0999", None),
            ("-1E-400", Some(None)),
            ("1.000000000000000000000000000001", Some(None)),
            ("12345678901234567.890123456789e-5", Some(None)),
            ("0", Some(Some(0))),
            ("7", Some(Some(7))),
        ];
        for (number, max) in cases {
            for body in [
                format!(r#"{{"model":"a","max_tokens":{number},"x":[{number},{{"y":{number}}}]}}"#),
                format!("{{ \"x\" :\t{number} ,\n\"max_tokens\": {number}, \"model\" : \"a\" }}"),
            ] {
                let Some(max) = max else {
                    // Out of the range of an i64/u64/f64: simd-json refuses these, as it did
                    // when the body was re-encoded.
                    assert_eq!(parse(&body).unwrap_err(), BodyError::NotJson, "{body}");
                    continue;
                };
                let mut b = parse(&body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
                assert_eq!(b.max_tokens(), *max, "{body}");
                b.set_model("bb");
                let out = encode(&b);
                assert_eq!(out, body.replace(r#""a""#, r#""bb""#), "{body}");
            }
        }
    }

    /// Escapes in keys and values, and whitespace anywhere between tokens, are read as JSON
    /// reads them and everything but the edited value is forwarded untouched.
    #[test]
    fn escapes_and_whitespace_are_read_and_kept() {
        let cases: &[(&str, &str)] = &[
            (r#"{"model":"a\/b"}"#, "a/b"),
            (r#"{"model":"\u0041\u00e9\u4e2d"}"#, "Aé中"),
            (r#"{"model":"\"\\\b\f\n\r\t"}"#, "\"\\\u{8}\u{c}\n\r\t"),
            (r#"{"model":"\ud83d\ude00"}"#, "\u{1f600}"),
            (r#"{"\u006dodel":"x"}"#, "x"),
            ("{\r\n\t \"model\"\r\n\t :\r\n\t \"x\"\r\n\t }\r\n", "x"),
            (r#"{"a":"\"model\":\"no\"","model":"x"}"#, "x"),
        ];
        for (body, model) in cases {
            let mut b = parse(body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
            assert_eq!(b.model(), Some(*model), "{body}");
            b.set_model("n");
            let out = encode(&b);
            let before = oracle(body);
            let after = oracle(&out);
            assert_eq!(after["model"], "n", "{out}");
            for (k, v) in &before {
                if k != "model" {
                    assert_eq!(after.get(k), Some(v), "{out}");
                }
            }
            // Only the value changed: the bytes before and after it are the received ones.
            let (start, end) = {
                let r = b.edited_members().0.unwrap();
                (r.start, r.end)
            };
            assert_eq!(&out.as_bytes()[..start], &body.as_bytes()[..start]);
            assert_eq!(&out.as_bytes()[start + 3..], &body.as_bytes()[end..]);
        }
    }

    /// The string scanner finds the first `"` or `\` wherever it is (in the words read eight a
    /// step, at their edges, past them where `memchr2` takes over, or nowhere), also after
    /// bytes that borrow in the word arithmetic (0x00, 0x01, 0x21, 0x5d, 0xff).
    #[test]
    fn the_string_scanner_finds_the_first_quote_or_backslash() {
        for fill in [b'a', 0x00, 0x01, b'!', b']', 0xff] {
            for len in 0..80 {
                for at in (0..len).chain([len]) {
                    for stop in [b'"', b'\\'] {
                        let mut s = vec![fill; len];
                        if at < len {
                            s[at] = stop;
                            // A later stop of the other kind does not hide the first.
                            if at + 1 < len {
                                s[at + 1] = b'"' ^ b'\\' ^ stop;
                            }
                        }
                        let want = memchr::memchr2(b'"', b'\\', &s);
                        assert_eq!(quote_or_backslash(&s), want, "{fill} {len} {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn stream_and_max_tokens_are_read_as_before() {
        let cases: &[(&str, bool, Option<u64>)] = &[
            (r#"{"stream":null}"#, false, None),
            (r#"{"stream":false,"max_tokens":3}"#, false, Some(3)),
            (
                r#"{"max_completion_tokens":9,"max_tokens":3}"#,
                false,
                Some(3),
            ),
            (
                r#"{"max_tokens":-1,"max_completion_tokens":9}"#,
                false,
                Some(9),
            ),
            (r#"{"max_tokens":1.5}"#, false, None),
            (r#"{"stream":true,"max_tokens":"5"}"#, true, None),
        ];
        for (body, stream, max) in cases {
            let b = parse(body).unwrap();
            assert_eq!((b.stream(), b.max_tokens()), (*stream, *max), "{body}");
        }
    }
}
