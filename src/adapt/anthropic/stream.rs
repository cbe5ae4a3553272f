//! Anthropic's streamed Messages events → OpenAI `chat.completion.chunk` events, one event at a
//! time as they arrive.
//!
//! # Contract
//!
//! [`Stream::event`] takes one complete SSE event (see [`crate::adapt::sse`]) and appends the
//! OpenAI events it stands for:
//!
//! | Anthropic event                                   | OpenAI event(s)                                 |
//! |---------------------------------------------------|-------------------------------------------------|
//! | `message_start`                                   | a chunk with `delta: {role: assistant, content: ""}` |
//! | `content_block_start` of a `tool_use` block       | a chunk opening `tool_calls[k]` (id, name, empty arguments) |
//! | `content_block_delta` `text_delta`                | a chunk with `delta.content`                    |
//! | `content_block_delta` `input_json_delta`          | a chunk with `tool_calls[k].function.arguments` |
//! | `message_delta`                                   | a chunk with `finish_reason` (from `stop_reason`) |
//! | `message_stop`                                    | the usage chunk (`choices: []`), then `data: [DONE]` |
//! | `error`                                           | `data: {"error": {...}}` (OpenAI clients raise it); the stream ends there |
//! | `ping`, `content_block_stop`, thinking and other deltas, unknown types | nothing |
//!
//! Usage is taken from `message_start` and updated by `message_delta`. An event the gateway
//! cannot read (not JSON, content before `message_start`, oversized) ends the translation with
//! an error event; whatever follows is dropped. A stream that ends before `message_stop`
//! gets an error event from [`Stream::finish`], never `[DONE]`, so it cannot look complete.
//! The usage chunk is always written; the relay's usage tap drops it when the client did not
//! ask for it (`stream_options.include_usage`) and charges the tokens it reports.
//!
//! # Performance
//!
//! The chunk prefix (id, created, model) is rendered once at `message_start`; each delta is
//! a copy of the prefix and of the provider's escaped text. Buffers are reused across
//! requests.

use std::io::Write;

use super::{finish_reason, Tokens};
use crate::adapt::json::{self, Malformed};
use crate::adapt::sse::{self, Oversized};

/// Most content blocks one message may have (a block index beyond is an upstream error).
pub const MAX_BLOCKS: usize = 1024;
/// A content block that is not a tool call.
const NOT_A_TOOL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Before `message_start`.
    #[default]
    New,
    Open,
    /// After `message_stop` or an error: nothing more is written.
    Ended,
}

/// One translated stream's state; reused across requests ([`Stream::reset`]).
#[derive(Debug, Default)]
pub struct Stream {
    /// `{"id":…,"object":"chat.completion.chunk","created":…,"model":…`
    head: Vec<u8>,
    /// The tool-call index of each content block ([`NOT_A_TOOL`] for others).
    blocks: Vec<u32>,
    tools: u32,
    tokens: Tokens,
    state: State,
    created: u64,
    /// Joined `data:` lines of an event that has several.
    data: Vec<u8>,
}

impl Stream {
    /// Ready for a new stream whose chunks say they were `created` then (Unix seconds).
    pub fn reset(&mut self, created: u64) {
        self.head.clear();
        self.blocks.clear();
        self.tools = 0;
        self.tokens = Tokens::default();
        self.state = State::New;
        self.created = created;
        self.data.clear();
    }

    /// Capacity held, for the owner's keep-or-free decision.
    pub fn capacity(&self) -> usize {
        self.head.capacity() + self.data.capacity() + self.blocks.capacity() * 4
    }

    /// The usage read so far.
    pub fn tokens(&self) -> Tokens {
        self.tokens
    }

    /// Translates one event (see the module docs).
    pub fn event(&mut self, ev: Result<&[u8], Oversized>, out: &mut Vec<u8>) {
        if self.state == State::Ended {
            return;
        }
        let Ok(ev) = ev else {
            return self.fail(out, "upstream sent a stream event too large to translate");
        };
        let mut data = std::mem::take(&mut self.data);
        if let Some(d) = sse::data(ev, &mut data) {
            if self.translate(d, out).is_err() {
                self.fail(
                    out,
                    "upstream sent a stream event the gateway cannot translate",
                );
            }
        }
        self.data = data;
    }

    /// The upstream body ended; `cut`: it ended inside an event.
    pub fn finish(&mut self, cut: bool, out: &mut Vec<u8>) {
        if self.state != State::Ended {
            let why = if cut {
                "upstream stream ended in the middle of an event"
            } else {
                "upstream stream ended before message_stop"
            };
            self.fail(out, why);
        }
    }

    fn translate(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let data = json::check(data)?;
        let kind = json::get(data, b"type")?
            .and_then(json::str_inner)
            .ok_or(Malformed)?;
        if self.state == State::New && !matches!(kind, b"message_start" | b"ping" | b"error") {
            return Err(Malformed);
        }
        match kind {
            b"message_start" => self.start(data, out),
            b"content_block_start" => self.block_start(data, out),
            b"content_block_delta" => self.delta(data, out),
            b"message_delta" => {
                let delta = json::get(data, b"delta")?.ok_or(Malformed)?;
                let reason = match json::kind(delta) {
                    json::Kind::Object => json::get(delta, b"stop_reason")?,
                    _ => None,
                };
                if let Some(u) = json::get(data, b"usage")? {
                    self.tokens.read(u)?;
                }
                self.chunk(out, b"{}", finish_reason(reason));
                Ok(())
            }
            b"message_stop" => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&self.head);
                out.extend_from_slice(b",\"choices\":[],\"usage\":");
                self.tokens.write_openai(out);
                out.extend_from_slice(b"}\n\ndata: [DONE]\n\n");
                self.state = State::Ended;
                Ok(())
            }
            b"error" => {
                let err =
                    json::get(data, b"error")?.filter(|e| json::kind(e) == json::Kind::Object);
                let field = |name: &[u8]| -> Result<Option<&[u8]>, Malformed> {
                    Ok(match err {
                        Some(e) => {
                            json::get(e, name)?.filter(|v| json::kind(v) == json::Kind::String)
                        }
                        None => None,
                    })
                };
                let message = field(b"message")?.unwrap_or(b"\"upstream error\"");
                let kind = field(b"type")?.unwrap_or(b"\"upstream_error\"");
                error_event(out, |o| o.extend_from_slice(message), kind);
                self.state = State::Ended;
                Ok(())
            }
            // `ping`, `content_block_stop` and event types added after this was written.
            _ => Ok(()),
        }
    }

    fn start(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        if self.state != State::New {
            return Err(Malformed);
        }
        let msg = json::get(data, b"message")?.filter(|m| json::kind(m) == json::Kind::Object);
        let msg = msg.ok_or(Malformed)?;
        let (mut id, mut model) = (None, None);
        for m in json::members(msg)? {
            let (k, v) = m?;
            match k {
                b"id" => id = Some(v),
                b"model" => model = Some(v),
                b"usage" => self.tokens.read(v)?,
                _ => {}
            }
        }
        self.head.extend_from_slice(b"{\"id\":");
        self.head
            .extend_from_slice(json::string(id).ok_or(Malformed)?);
        let _ = write!(
            self.head,
            ",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":",
            self.created
        );
        self.head
            .extend_from_slice(json::string(model).unwrap_or(b"\"\""));
        self.state = State::Open;
        self.chunk(out, b"{\"role\":\"assistant\",\"content\":\"\"}", b"null");
        Ok(())
    }

    fn block_index(&mut self, data: &[u8]) -> Result<usize, Malformed> {
        let i = json::get(data, b"index")?
            .and_then(json::as_u64)
            .ok_or(Malformed)?;
        let i = usize::try_from(i)
            .ok()
            .filter(|&i| i < MAX_BLOCKS)
            .ok_or(Malformed)?;
        if self.blocks.len() <= i {
            self.blocks.resize(i + 1, NOT_A_TOOL);
        }
        Ok(i)
    }

    fn block_start(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let i = self.block_index(data)?;
        let block =
            json::get(data, b"content_block")?.filter(|b| json::kind(b) == json::Kind::Object);
        let block = block.ok_or(Malformed)?;
        let kind = json::get(block, b"type")?
            .and_then(json::str_inner)
            .ok_or(Malformed)?;
        match kind {
            b"tool_use" => {
                let id = json::string(json::get(block, b"id")?).ok_or(Malformed)?;
                let name = json::string(json::get(block, b"name")?).ok_or(Malformed)?;
                let k = self.tools;
                self.tools += 1;
                self.blocks[i] = k;
                self.open_chunk(out);
                let _ = write!(out, "{{\"tool_calls\":[{{\"index\":{k},\"id\":");
                out.extend_from_slice(id);
                out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                out.extend_from_slice(name);
                out.extend_from_slice(b",\"arguments\":\"\"}}]}");
                self.close_chunk(out, b"null");
            }
            b"text" => {
                self.blocks[i] = NOT_A_TOOL;
                if let Some(t) = json::get(block, b"text")?
                    .filter(|t| json::str_inner(t).is_some_and(|s| !s.is_empty()))
                {
                    self.content(out, t);
                }
            }
            _ => self.blocks[i] = NOT_A_TOOL,
        }
        Ok(())
    }

    fn delta(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let i = self.block_index(data)?;
        let delta = json::get(data, b"delta")?.filter(|d| json::kind(d) == json::Kind::Object);
        let delta = delta.ok_or(Malformed)?;
        let kind = json::get(delta, b"type")?
            .and_then(json::str_inner)
            .ok_or(Malformed)?;
        match kind {
            b"text_delta" => {
                let text = json::string(json::get(delta, b"text")?).ok_or(Malformed)?;
                self.content(out, text);
            }
            b"input_json_delta" => {
                let part = json::string(json::get(delta, b"partial_json")?).ok_or(Malformed)?;
                let k = self.blocks[i];
                if k == NOT_A_TOOL {
                    return Err(Malformed);
                }
                self.open_chunk(out);
                let _ = write!(
                    out,
                    "{{\"tool_calls\":[{{\"index\":{k},\"function\":{{\"arguments\":"
                );
                out.extend_from_slice(part);
                out.extend_from_slice(b"}}]}");
                self.close_chunk(out, b"null");
            }
            _ => {}
        }
        Ok(())
    }

    /// A chunk whose delta is `{"content": text}` (`text` a raw JSON string).
    fn content(&self, out: &mut Vec<u8>, text: &[u8]) {
        self.open_chunk(out);
        out.extend_from_slice(b"{\"content\":");
        out.extend_from_slice(text);
        out.push(b'}');
        self.close_chunk(out, b"null");
    }

    fn chunk(&self, out: &mut Vec<u8>, delta: &[u8], finish: &[u8]) {
        self.open_chunk(out);
        out.extend_from_slice(delta);
        self.close_chunk(out, finish);
    }

    fn open_chunk(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
    }

    fn close_chunk(&self, out: &mut Vec<u8>, finish: &[u8]) {
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        out.extend_from_slice(finish);
        out.extend_from_slice(b"}]}\n\n");
    }

    fn fail(&mut self, out: &mut Vec<u8>, why: &str) {
        error_event(out, |o| json::write_str(o, why), b"\"upstream_error\"");
        self.state = State::Ended;
    }
}

/// `data: {"error":{...}}`: how OpenAI streams report an error (its clients raise it).
fn error_event(out: &mut Vec<u8>, message: impl FnOnce(&mut Vec<u8>), kind: &[u8]) {
    out.extend_from_slice(b"data: {\"error\":{\"message\":");
    message(out);
    out.extend_from_slice(b",\"type\":");
    out.extend_from_slice(kind);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    out.extend_from_slice(kind);
    out.extend_from_slice(b"}}\n\n");
}
