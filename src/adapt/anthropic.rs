//! OpenAI Chat Completions ⇄ Anthropic Messages: the pure translators.
//!
//! # Requests ([`chat_request`])
//!
//! | OpenAI                                          | Anthropic                                   |
//! |-------------------------------------------------|---------------------------------------------|
//! | `system` / `developer` messages (anywhere)      | `system`: text blocks, in order             |
//! | `user` content: string, `text`, `image_url` parts | `text` blocks, `image` blocks (`base64` from a `data:` URL, else `url`) |
//! | `assistant` content and `tool_calls`            | `text` and `tool_use` blocks (arguments parsed into `input`) |
//! | `tool` messages                                 | `tool_result` blocks in a `user` turn       |
//! | consecutive messages of one Anthropic role      | one message (the API wants turns to alternate) |
//! | `max_completion_tokens` / `max_tokens`          | `max_tokens` (required there: the configured default when absent) |
//! | `temperature`, `top_p`, `stream`                | the same                                    |
//! | `stop` (string or list)                         | `stop_sequences`                            |
//! | `tools` (`function`), `tool_choice`, `parallel_tool_calls: false` | `tools` (`input_schema`), `tool_choice` (`auto`/`none`/`any`/`tool`), `disable_parallel_tool_use` |
//! | `user`                                          | `metadata.user_id`                          |
//!
//! Fields with no Anthropic meaning that change nothing a client relies on (`stream_options`,
//! penalties, `logprobs`, `seed`, ...) are dropped. A request the adapter cannot honour (`n`
//! above 1, a `response_format` other than text, audio or file parts, a role it does not know,
//! tool arguments that are not a JSON object) is refused with 400 and the path of the field.
//!
//! # Responses
//!
//! [`message_response`] turns a `message` into a `chat.completion` (text blocks joined into
//! `content`, `tool_use` blocks into `tool_calls`, `stop_reason` into `finish_reason`, `usage`
//! into prompt/completion/total tokens with `prompt_tokens_details.cached_tokens`);
//! [`error_response`] turns an error body into OpenAI's error shape, and [`client_status`]
//! maps the status (Anthropic's 529 "overloaded" is 503). Streams are [`stream`].
//!
//! # Performance
//!
//! Requests are written straight from the worker's scratch tape of the body (no tree; the
//! top-level fields found in one walk) into the reused outgoing buffer; responses are read
//! with the allocation-free [`super::json`] reader (one walk over a message body, one over
//! each content block) and strings are copied in their escaped form, never decoded.

pub mod stream;

// By name, not the prelude glob (see `disallowed-methods` in clippy.toml).
use simd_json::prelude::{TypedScalarValue, ValueAsScalar, ValueIntoString, Writable};
use simd_json::tape::{Array, Value};

use super::json::{self, Malformed};
use super::path::{invalid, At, Invalid};
use crate::config_types::AnthropicSettings;
use crate::quota::usage::Usage;

/// The Messages API path every translated request goes to.
pub const MESSAGES_PATH: &[u8] = b"/v1/messages";

/// Request fields the gateway sets toward Anthropic: the client's own are not forwarded.
pub const OWNED_HEADERS: &[&[u8]] = &[b"anthropic-version", b"x-api-key"];

/// The status the client sees for an Anthropic status.
pub fn client_status(status: u16) -> u16 {
    match status {
        // "overloaded_error": OpenAI clients know 503 as retryable.
        529 => 503,
        s => s,
    }
}

/// The Anthropic role of an OpenAI message role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

fn role_of(m: Value<'_, '_>) -> Result<Role, Invalid> {
    match m.get("role").and_then(ValueIntoString::into_string) {
        Some("system" | "developer") => Ok(Role::System),
        Some("user" | "tool") => Ok(Role::User),
        Some("assistant") => Ok(Role::Assistant),
        Some(_) => invalid("role is not one of system, developer, user, assistant, tool"),
        None => invalid("message has no string `role`"),
    }
}

/// Writes the Anthropic Messages request for the OpenAI chat request `body` into `out`
/// (see the module docs). On `Err`, `path` holds the path of the refused field (without the
/// root).
pub fn chat_request(
    body: Value<'_, '_>,
    settings: &AnthropicSettings,
    out: &mut Vec<u8>,
    path: &mut String,
) -> Result<(), Invalid> {
    let body = &Top::read(body);
    check_unsupported(body, path)?;
    out.extend_from_slice(b"{\"model\":");
    match body.model {
        Some(m) if m.is_str() => write_value(out, m),
        _ => return invalid("`model` must be a string").key("model", path),
    }
    out.extend_from_slice(b",\"max_tokens\":");
    let max = [
        ("max_completion_tokens", body.max_completion_tokens),
        ("max_tokens", body.max_tokens),
    ]
    .into_iter()
    .find_map(|(k, v)| v.filter(|v| !v.is_null()).map(|v| (k, v)));
    match max {
        None => {
            let _ = std::io::Write::write_fmt(out, format_args!("{}", settings.default_max_tokens));
        }
        Some((_, v)) if v.as_u64().is_some_and(|n| n > 0) => write_value(out, v),
        Some((k, _)) => return invalid("must be a positive integer").key(k, path),
    }
    let messages = match body.messages.and_then(|m| m.as_array()) {
        Some(m) if !m.is_empty() => m,
        _ => return invalid("`messages` must be a non-empty array").key("messages", path),
    };
    system(messages, out, path).key("messages", path)?;
    turns(messages, out, path).key("messages", path)?;
    for (k, v) in [("temperature", body.temperature), ("top_p", body.top_p)] {
        match v {
            None => {}
            Some(v) if v.is_null() => {}
            Some(v) if v.is_number() => {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(b"\":");
                write_value(out, v);
            }
            Some(_) => return invalid("must be a number").key(k, path),
        }
    }
    stop(body.stop, out).key("stop", path)?;
    if body.stream.and_then(|s| s.as_bool()) == Some(true) {
        out.extend_from_slice(b",\"stream\":true");
    }
    tools(body, out, path)?;
    if let Some(u) = body.user.filter(|u| !u.is_null()) {
        if !u.is_str() {
            return invalid("must be a string").key("user", path);
        }
        out.extend_from_slice(b",\"metadata\":{\"user_id\":");
        write_value(out, u);
        out.push(b'}');
    }
    out.push(b'}');
    Ok(())
}

/// The top-level members the translation reads, found in one walk over the body (instead of
/// a scan of its keys per field).
#[derive(Default)]
struct Top<'t, 'i> {
    model: Option<Value<'t, 'i>>,
    max_completion_tokens: Option<Value<'t, 'i>>,
    max_tokens: Option<Value<'t, 'i>>,
    messages: Option<Value<'t, 'i>>,
    temperature: Option<Value<'t, 'i>>,
    top_p: Option<Value<'t, 'i>>,
    stop: Option<Value<'t, 'i>>,
    stream: Option<Value<'t, 'i>>,
    user: Option<Value<'t, 'i>>,
    tools: Option<Value<'t, 'i>>,
    parallel_tool_calls: Option<Value<'t, 'i>>,
    tool_choice: Option<Value<'t, 'i>>,
    n: Option<Value<'t, 'i>>,
    response_format: Option<Value<'t, 'i>>,
}

impl<'t, 'i> Top<'t, 'i> {
    fn read(body: Value<'t, 'i>) -> Self {
        let mut top = Top::default();
        for (k, v) in body.as_object().iter().flat_map(|o| o.iter()) {
            let slot = match k {
                "model" => &mut top.model,
                "max_completion_tokens" => &mut top.max_completion_tokens,
                "max_tokens" => &mut top.max_tokens,
                "messages" => &mut top.messages,
                "temperature" => &mut top.temperature,
                "top_p" => &mut top.top_p,
                "stop" => &mut top.stop,
                "stream" => &mut top.stream,
                "user" => &mut top.user,
                "tools" => &mut top.tools,
                "parallel_tool_calls" => &mut top.parallel_tool_calls,
                "tool_choice" => &mut top.tool_choice,
                "n" => &mut top.n,
                "response_format" => &mut top.response_format,
                _ => continue,
            };
            // The first of a repeated key, as a key lookup would find (the body parser
            // refuses repeated top-level keys anyway).
            slot.get_or_insert(v);
        }
        top
    }
}

/// Requests the adapter refuses rather than answer differently than asked.
fn check_unsupported(body: &Top<'_, '_>, path: &mut String) -> Result<(), Invalid> {
    if let Some(n) = body.n.filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            return invalid("the anthropic provider returns one choice: `n` must be 1")
                .key("n", path);
        }
    }
    if let Some(f) = body.response_format.filter(|f| !f.is_null()) {
        if f.get("type").and_then(ValueIntoString::into_string) != Some("text") {
            return invalid("the anthropic provider supports only `response_format` text")
                .key("type", path)
                .key("response_format", path);
        }
    }
    Ok(())
}

/// `,"system":[text blocks]` from every system and developer message, when there are any.
fn system(messages: Array<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    let mut open = false;
    for (i, m) in messages.iter().enumerate() {
        if role_of(m).key("role", path).index(i, path)? != Role::System {
            continue;
        }
        if !open {
            out.extend_from_slice(b",\"system\":[");
            open = true;
        }
        text_blocks(m.get("content"), out, path)
            .key("content", path)
            .index(i, path)?;
    }
    if open {
        // Blocks are written with a trailing comma each.
        strip_comma(out);
        out.push(b']');
    }
    Ok(())
}

/// Content that may only be text (system and tool messages): each text becomes a text block
/// followed by a comma; empty texts are left out (Anthropic refuses empty text blocks).
fn text_blocks(
    content: Option<Value<'_, '_>>,
    out: &mut Vec<u8>,
    path: &mut String,
) -> Result<(), Invalid> {
    match content {
        Some(c) if c.is_str() => {
            text_block(c, out);
            Ok(())
        }
        Some(c) if c.is_array() => {
            for (j, part) in c.as_array().iter().flat_map(Array::iter).enumerate() {
                match part_type(part).key("type", path).index(j, path)? {
                    "text" => text_block(text_of(part).key("text", path).index(j, path)?, out),
                    _ => {
                        return invalid("only text parts are allowed here")
                            .key("type", path)
                            .index(j, path)
                    }
                }
            }
            Ok(())
        }
        _ => invalid("must be a string or an array of text parts"),
    }
}

fn part_type<'i>(part: Value<'_, 'i>) -> Result<&'i str, Invalid> {
    part.get("type")
        .and_then(ValueIntoString::into_string)
        .ok_or(Invalid {
            message: "content part has no string `type`",
        })
}

/// The `text` of a text part (the caller adds `text` to the path of an error).
fn text_of<'t, 'i>(part: Value<'t, 'i>) -> Result<Value<'t, 'i>, Invalid> {
    match part.get("text") {
        Some(t) if t.is_str() => Ok(t),
        _ => invalid("a text part needs a string `text`"),
    }
}

/// `{"type":"text","text":T},` unless `t` is empty.
fn text_block(t: Value<'_, '_>, out: &mut Vec<u8>) {
    if t.as_str().is_some_and(str::is_empty) {
        return;
    }
    out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
    write_value(out, t);
    out.extend_from_slice(b"},");
}

/// `,"messages":[...]`: the non-system messages, consecutive ones of one role merged.
fn turns(messages: Array<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    out.extend_from_slice(b",\"messages\":[");
    let mut open: Option<Role> = None;
    for (i, m) in messages.iter().enumerate() {
        let role = role_of(m).key("role", path).index(i, path)?;
        if role == Role::System {
            continue;
        }
        if open != Some(role) {
            if open.is_some() {
                strip_comma(out);
                out.extend_from_slice(b"]},");
            }
            out.extend_from_slice(match role {
                Role::User => b"{\"role\":\"user\",\"content\":[",
                _ => b"{\"role\":\"assistant\",\"content\":[",
            });
            open = Some(role);
        }
        let kind = m
            .get("role")
            .and_then(ValueIntoString::into_string)
            .unwrap_or("");
        match kind {
            "tool" => tool_result(m, out, path),
            "assistant" => assistant(m, out, path),
            _ => user_content(m.get("content"), out, path).key("content", path),
        }
        .index(i, path)?;
    }
    if open.is_some() {
        strip_comma(out);
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
    Ok(())
}

fn user_content(
    content: Option<Value<'_, '_>>,
    out: &mut Vec<u8>,
    path: &mut String,
) -> Result<(), Invalid> {
    let Some(parts) = content.and_then(|c| c.as_array()) else {
        return match content {
            Some(c) if c.is_str() => {
                text_block(c, out);
                Ok(())
            }
            _ => invalid("must be a string or an array of content parts"),
        };
    };
    for (j, part) in parts.iter().enumerate() {
        user_part(part, out, path).index(j, path)?;
    }
    Ok(())
}

fn user_part(part: Value<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    match part_type(part).key("type", path)? {
        "text" => {
            text_block(text_of(part).key("text", path)?, out);
            Ok(())
        }
        "image_url" => {
            let img = part.get("image_url");
            let url = img
                .and_then(|i| i.get("url").or(Some(i)))
                .and_then(ValueIntoString::into_string);
            let Some(url) = url else {
                return invalid("an image_url part needs `image_url.url`").key("image_url", path);
            };
            image_block(url, out)
                .key("url", path)
                .key("image_url", path)
        }
        "input_audio" | "file" => {
            invalid("the anthropic provider takes text and image parts only").key("type", path)
        }
        _ => invalid("unknown content part type").key("type", path),
    }
}

/// An image block from an OpenAI image URL: a base64 `data:` URL, or an http(s) URL.
fn image_block(url: &str, out: &mut Vec<u8>) -> Result<(), Invalid> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return invalid("a data URL needs a `,` before its data");
        };
        let Some(media) = meta.strip_suffix(";base64") else {
            return invalid("only base64 data URLs are supported");
        };
        if !media.starts_with("image/") {
            return invalid("a data URL image needs an image/* media type");
        }
        out.extend_from_slice(
            b"{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":",
        );
        json::write_str(out, media);
        out.extend_from_slice(b",\"data\":");
        json::write_str(out, data);
        out.extend_from_slice(b"}},");
        return Ok(());
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return invalid("an image URL must be https://, http:// or a base64 data URL");
    }
    out.extend_from_slice(b"{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":");
    json::write_str(out, url);
    out.extend_from_slice(b"}},");
    Ok(())
}

fn assistant(m: Value<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    match m.get("content") {
        None => {}
        Some(c) if c.is_null() => {}
        Some(c) if c.is_str() => text_block(c, out),
        Some(c) if c.is_array() => {
            for (j, part) in c.as_array().iter().flat_map(Array::iter).enumerate() {
                let t = part_type(part)
                    .key("type", path)
                    .index(j, path)
                    .key("content", path)?;
                let text = match t {
                    "text" => part.get("text"),
                    "refusal" => part.get("refusal"),
                    _ => None,
                };
                match text {
                    Some(t) if t.is_str() => text_block(t, out),
                    _ => {
                        return invalid("assistant content parts must be text or refusal")
                            .index(j, path)
                            .key("content", path)
                    }
                }
            }
        }
        Some(_) => return invalid("must be a string, an array or null").key("content", path),
    }
    let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let Some(calls) = calls.as_array() else {
        return invalid("must be an array").key("tool_calls", path);
    };
    for (j, call) in calls.iter().enumerate() {
        tool_use(call, out, path)
            .index(j, path)
            .key("tool_calls", path)?;
    }
    Ok(())
}

fn tool_use(call: Value<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    if let Some(t) = call.get("type") {
        if t.as_str() != Some("function") {
            return invalid("only function tool calls are supported").key("type", path);
        }
    }
    let Some(id) = call.get("id").filter(|i| i.is_str()) else {
        return invalid("a tool call needs a string `id`").key("id", path);
    };
    let Some(f) = call.get("function") else {
        return invalid("a tool call needs `function`").key("function", path);
    };
    let Some(name) = f.get("name").filter(|n| n.is_str()) else {
        return invalid("a tool call needs a string `function.name`")
            .key("name", path)
            .key("function", path);
    };
    let args = match f.get("arguments") {
        None => "",
        Some(a) => match a.into_string() {
            Some(s) => s,
            None => {
                return invalid("must be a string of JSON")
                    .key("arguments", path)
                    .key("function", path)
            }
        },
    };
    out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
    write_value(out, id);
    out.extend_from_slice(b",\"name\":");
    write_value(out, name);
    out.extend_from_slice(b",\"input\":");
    let trimmed = json::trim(args.as_bytes());
    if trimmed.is_empty() {
        out.extend_from_slice(b"{}");
    } else if trimmed[0] == b'{' && json::check(trimmed).is_ok() {
        out.extend_from_slice(trimmed);
    } else {
        return invalid("tool call arguments must be a JSON object")
            .key("arguments", path)
            .key("function", path);
    }
    out.extend_from_slice(b"},");
    Ok(())
}

fn tool_result(m: Value<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    let Some(id) = m.get("tool_call_id").filter(|i| i.is_str()) else {
        return invalid("a tool message needs a string `tool_call_id`").key("tool_call_id", path);
    };
    out.extend_from_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
    write_value(out, id);
    out.extend_from_slice(b",\"content\":[");
    let before = out.len();
    text_blocks(m.get("content"), out, path).key("content", path)?;
    if out.len() > before {
        strip_comma(out);
    }
    out.extend_from_slice(b"]},");
    Ok(())
}

fn stop(stop: Option<Value<'_, '_>>, out: &mut Vec<u8>) -> Result<(), Invalid> {
    let Some(s) = stop.filter(|s| !s.is_null()) else {
        return Ok(());
    };
    out.extend_from_slice(b",\"stop_sequences\":[");
    if s.is_str() {
        write_value(out, s);
    } else if let Some(list) = s.as_array().filter(|l| l.iter().all(|x| x.is_str())) {
        for (i, x) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_value(out, x);
        }
    } else {
        return invalid("must be a string or an array of strings");
    }
    out.push(b']');
    Ok(())
}

fn tools(body: &Top<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    if let Some(list) = body.tools.filter(|t| !t.is_null()) {
        let Some(list) = list.as_array() else {
            return invalid("must be an array").key("tools", path);
        };
        out.extend_from_slice(b",\"tools\":[");
        for (i, t) in list.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            tool(t, out, path).index(i, path).key("tools", path)?;
        }
        out.push(b']');
    }
    let no_parallel = body.parallel_tool_calls.and_then(|p| p.as_bool()) == Some(false);
    let choice = body.tool_choice.filter(|c| !c.is_null());
    let start = out.len();
    match choice {
        None if no_parallel => out.extend_from_slice(b",\"tool_choice\":{\"type\":\"auto\""),
        None => return Ok(()),
        Some(c) => match (c.as_str(), c.get("function").and_then(|f| f.get("name"))) {
            (Some("auto"), _) => out.extend_from_slice(b",\"tool_choice\":{\"type\":\"auto\""),
            (Some("required"), _) => out.extend_from_slice(b",\"tool_choice\":{\"type\":\"any\""),
            (Some("none"), _) => {
                out.extend_from_slice(b",\"tool_choice\":{\"type\":\"none\"}");
                return Ok(());
            }
            (None, Some(name)) if name.is_str() => {
                out.extend_from_slice(b",\"tool_choice\":{\"type\":\"tool\",\"name\":");
                write_value(out, name);
            }
            _ => {
                out.truncate(start);
                return invalid("must be auto, none, required or a function choice")
                    .key("tool_choice", path);
            }
        },
    }
    if no_parallel {
        out.extend_from_slice(b",\"disable_parallel_tool_use\":true");
    }
    out.push(b'}');
    Ok(())
}

fn tool(t: Value<'_, '_>, out: &mut Vec<u8>, path: &mut String) -> Result<(), Invalid> {
    if t.get("type").and_then(ValueIntoString::into_string) != Some("function") {
        return invalid("only function tools are supported").key("type", path);
    }
    let Some(f) = t.get("function").filter(|f| f.is_object()) else {
        return invalid("a tool needs a `function` object").key("function", path);
    };
    let Some(name) = f.get("name").filter(|n| n.is_str()) else {
        return invalid("a tool needs a string `name`")
            .key("name", path)
            .key("function", path);
    };
    out.extend_from_slice(b"{\"name\":");
    write_value(out, name);
    if let Some(d) = f.get("description").filter(|d| d.is_str()) {
        out.extend_from_slice(b",\"description\":");
        write_value(out, d);
    }
    out.extend_from_slice(b",\"input_schema\":");
    match f.get("parameters") {
        Some(p) if p.is_object() => write_value(out, p),
        None => out.extend_from_slice(b"{\"type\":\"object\",\"properties\":{}}"),
        Some(_) => {
            return invalid("must be a JSON Schema object")
                .key("parameters", path)
                .key("function", path)
        }
    }
    out.push(b'}');
    Ok(())
}

fn write_value(out: &mut Vec<u8>, v: Value<'_, '_>) {
    // Writing into a Vec cannot fail.
    let _ = v.write(out);
}

fn strip_comma(out: &mut Vec<u8>) {
    if out.last() == Some(&b',') {
        out.pop();
    }
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason` (raw JSON value), written raw.
pub(crate) fn finish_reason(stop_reason: Option<&[u8]>) -> &'static [u8] {
    let Some(r) = stop_reason.and_then(json::str_inner) else {
        return b"null";
    };
    match r {
        b"end_turn" | b"stop_sequence" | b"pause_turn" => b"\"stop\"",
        b"max_tokens" | b"model_context_window_exceeded" => b"\"length\"",
        b"tool_use" => b"\"tool_calls\"",
        b"refusal" => b"\"content_filter\"",
        _ => b"\"stop\"",
    }
}

/// Token counts of an Anthropic `usage` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

impl Tokens {
    /// Updates the counts present in the raw `usage` object (absent ones are kept).
    pub fn read(&mut self, usage: &[u8]) -> Result<(), Malformed> {
        if json::kind(usage) != json::Kind::Object {
            return Ok(());
        }
        for m in json::members(usage)? {
            let (k, v) = m?;
            let slot = match k {
                b"input_tokens" => &mut self.input,
                b"output_tokens" => &mut self.output,
                b"cache_read_input_tokens" => &mut self.cache_read,
                b"cache_creation_input_tokens" => &mut self.cache_creation,
                _ => continue,
            };
            if let Some(n) = json::as_u64(v) {
                *slot = n;
            }
        }
        Ok(())
    }

    /// Writes OpenAI's `usage` object. Anthropic counts cached input apart from
    /// `input_tokens`; OpenAI's `prompt_tokens` includes it.
    pub fn write_openai(&self, out: &mut Vec<u8>) {
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_creation);
        out.extend_from_slice(b"{\"prompt_tokens\":");
        json::write_u64(out, prompt);
        out.extend_from_slice(b",\"completion_tokens\":");
        json::write_u64(out, self.output);
        out.extend_from_slice(b",\"total_tokens\":");
        json::write_u64(out, prompt.saturating_add(self.output));
        out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
        json::write_u64(out, self.cache_read);
        out.extend_from_slice(b"}}");
    }

    /// What the usage meter reads from the `usage` [`Self::write_openai`] writes (as
    /// `crate::quota::usage::usage_from_body` would read it back): `None` when a count does
    /// not fit the meter's `u32`, which makes the whole `usage` unusable there too.
    pub fn openai_usage(&self) -> Option<Usage> {
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_creation);
        let n = |v: u64| u32::try_from(v).ok();
        let prompt_tokens = n(prompt)?;
        Some(Usage {
            prompt_tokens,
            completion_tokens: n(self.output)?,
            cached_tokens: n(self.cache_read)?.min(prompt_tokens),
            total_tokens: n(prompt.saturating_add(self.output))?,
        })
    }
}

/// Writes the `chat.completion` for the Anthropic `message` body (see the module docs) and
/// returns its token counts (what its `usage` says, [`Tokens::openai_usage`]); `Err` when the
/// body is not a message object.
pub fn message_response(body: &[u8], created: u64, out: &mut Vec<u8>) -> Result<Tokens, Malformed> {
    let start = out.len();
    let r = write_message(body, created, start, out);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

/// [`message_response`] in one walk of the body: the content's text is written (after
/// `start`) while the walk passes it, and the completion's opening, which needs the `id` and
/// `model` members wherever they are, is moved in front of it at the end.
fn write_message(
    body: &[u8],
    created: u64,
    start: usize,
    out: &mut Vec<u8>,
) -> Result<Tokens, Malformed> {
    std::str::from_utf8(body).map_err(|_| Malformed)?;
    let b = json::trim(body);
    let (mut id, mut model, mut content, mut stop_reason, mut usage) =
        (None, None, None, None, None);
    let (mut texts, mut has_tools) = (0usize, false);
    // Reading every top-level member validates the grammar of the whole body.
    let mut obj = json::object_at(b, 0, 0)?;
    while let Some(k) = obj.key()? {
        match k {
            b"content" => {
                // A repeated member: the last one counts, as for the others.
                out.truncate(start);
                (texts, has_tools) = (0, false);
                let v = obj.read_value(|b, at, depth| match b.get(at) {
                    Some(b'[') => content_text(b, at, depth, out, &mut texts, &mut has_tools),
                    _ => json::skip_value(b, at, depth),
                })?;
                content = Some(v);
            }
            _ => {
                let v = obj.value()?;
                match k {
                    b"id" => id = Some(v),
                    b"model" => model = Some(v),
                    b"stop_reason" => stop_reason = Some(v),
                    b"usage" => usage = Some(v),
                    _ => {}
                }
            }
        }
    }
    if obj.end()? != b.len() {
        return Err(Malformed);
    }
    let id = id
        .filter(|v| json::kind(v) == json::Kind::String)
        .ok_or(Malformed)?;
    let content = content
        .filter(|v| json::kind(v) == json::Kind::Array)
        .ok_or(Malformed)?;
    if texts > 0 {
        out.push(b'"');
    }
    let text_len = out.len() - start;
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    json::write_u64(out, created);
    out.extend_from_slice(b",\"model\":");
    match model.filter(|v| json::kind(v) == json::Kind::String) {
        Some(m) => out.extend_from_slice(m),
        None => out.extend_from_slice(b"\"\""),
    }
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    // The opening goes in front of the text written during the walk.
    out[start..].rotate_left(text_len);
    if texts == 0 {
        out.extend_from_slice(b"null");
    }
    // Tool calls, written after the text, take a second walk of the content only when there
    // are any.
    if has_tools {
        tool_calls(content, out)?;
    }
    close_completion(stop_reason, usage, out)
}

/// Writes the end of a `chat.completion` after its message's last member: `finish_reason`
/// from the raw `stop_reason`, and `usage` from the raw Anthropic `usage`; returns its counts.
pub(super) fn close_completion(
    stop_reason: Option<&[u8]>,
    usage: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> Result<Tokens, Malformed> {
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
    out.extend_from_slice(finish_reason(stop_reason));
    out.extend_from_slice(b"}],\"usage\":");
    let mut tokens = Tokens::default();
    if let Some(u) = usage {
        tokens.read(u)?;
    }
    tokens.write_openai(out);
    out.push(b'}');
    Ok(tokens)
}

/// Writes the `tool_calls` member (with its leading comma) for the `tool_use` blocks of the
/// raw `content` array, nothing when it has none; a `tool_use` block without a string `id`
/// and `name` is malformed.
pub(super) fn tool_calls(content: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    let mut calls = 0;
    for block in json::items(content)? {
        let block = block?;
        if json::kind(block) != json::Kind::Object
            || !json::get(block, b"type")?.is_some_and(|t| json::is_str(t, "tool_use"))
        {
            continue;
        }
        let id = json::get(block, b"id")?.filter(|v| json::kind(v) == json::Kind::String);
        let name = json::get(block, b"name")?.filter(|v| json::kind(v) == json::Kind::String);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(Malformed);
        };
        let input = json::get(block, b"input")?.unwrap_or(b"{}");
        out.extend_from_slice(if calls == 0 {
            b",\"tool_calls\":["
        } else {
            b","
        });
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(id);
        out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        out.extend_from_slice(name);
        out.extend_from_slice(b",\"arguments\":");
        json::write_as_string(out, input);
        out.extend_from_slice(b"}}");
        calls += 1;
    }
    if calls > 0 {
        out.push(b']');
    }
    Ok(())
}

/// Reads the `content` array whose `[` is at `b[at]` (validating it) and writes its text
/// blocks' escaped contents, joined, to `out` after an opening quote (their escaped forms
/// concatenate into one valid string); `texts` counts them, `has_tools` says whether a
/// `tool_use` block was seen. Returns the index after the array; a text block without a
/// string `text` is malformed.
fn content_text(
    b: &[u8],
    at: usize,
    depth: u32,
    out: &mut Vec<u8>,
    texts: &mut usize,
    has_tools: &mut bool,
) -> Result<usize, Malformed> {
    json::each_item(b, at, depth, |b, at, depth| {
        if b.get(at) != Some(&b'{') {
            return json::skip_value(b, at, depth);
        }
        let mut block = json::object_at(b, at, depth)?;
        let (mut kind, mut text) = (None, None);
        while let Some(k) = block.key()? {
            let v = block.value()?;
            match k {
                b"type" if kind.is_none() => kind = Some(v),
                b"text" if text.is_none() => text = Some(v),
                _ => {}
            }
        }
        match kind.and_then(json::str_inner) {
            Some(b"text") => {
                let text = text.and_then(json::str_inner).ok_or(Malformed)?;
                if *texts == 0 {
                    out.push(b'"');
                }
                out.extend_from_slice(text);
                *texts += 1;
            }
            Some(b"tool_use") => *has_tools = true,
            _ => {}
        }
        block.end()
    })
}

/// Writes OpenAI's error body for an Anthropic error `body` (`{"type":"error","error":{...}}`);
/// a body that is not one gets a generic message. Never fails: the status already says what
/// happened.
pub fn error_response(body: &[u8], status: u16, out: &mut Vec<u8>) {
    let err = json::check(body)
        .ok()
        .and_then(|b| json::get(b, b"error").ok().flatten())
        .filter(|e| json::kind(e) == json::Kind::Object);
    let field = |name: &[u8]| {
        err.and_then(|e| json::get(e, name).ok().flatten())
            .filter(|v| json::kind(v) == json::Kind::String)
    };
    let kind = field(b"type");
    out.extend_from_slice(b"{\"error\":{\"message\":");
    match field(b"message") {
        Some(m) => out.extend_from_slice(m),
        None => {
            let _ = std::io::Write::write_fmt(
                out,
                format_args!("\"the upstream provider answered {status}\""),
            );
        }
    }
    out.extend_from_slice(b",\"type\":");
    out.extend_from_slice(kind.unwrap_or(b"\"upstream_error\""));
    out.extend_from_slice(b",\"param\":null,\"code\":");
    out.extend_from_slice(kind.unwrap_or(b"null"));
    out.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests;
