//! The Anthropic-compatible side of the mock: `POST /v1/messages`, plain and streamed, so the
//! gateway's provider adapter is tested end to end against the shapes the real API sends.
//!
//! # Requests
//!
//! Checked as strictly as the real API checks them: the `anthropic-version` header, `model`,
//! `max_tokens` (a positive integer), `messages` (user/assistant turns of string or block
//! content: `text`, `image`, `tool_use`, `tool_result`), an optional `system` (string or text
//! blocks), `tools` (with `input_schema`), `stop_sequences` (strings), and no top-level field
//! the API does not know. A request that fails is answered `400` with an Anthropic error body.
//!
//! # Responses
//!
//! - `input_tokens` = ceil(bytes / 4), minimum 1, over every text in `system` and `messages`
//!   (text blocks, `tool_result` text); `output_tokens` = min(`max_tokens`,
//!   [`MockConfig::default_completion_tokens`](super::MockConfig)); `cache_read_input_tokens`
//!   from `x-mock-cache-read` (default 0).
//! - Content: one text block ([`REPLY_TEXT`](super::reply::REPLY_TEXT), or `"tok0 "`,
//!   `"tok1 "`, ... as stream deltas), then, when the request has `tools`, a `tool_use` block
//!   calling the first tool with `{"q":"mock"}`. `stop_reason`: `tool_use` with tools, else
//!   `stop_sequence` (the first of `stop_sequences`) when it has some, else `end_turn`.
//! - A stream is the real event sequence: `message_start`, `content_block_start`, `ping`,
//!   `content_block_delta`..., `content_block_stop`, (the tool block: start, two
//!   `input_json_delta`s, stop), `message_delta` with the usage, `message_stop`.
//! - Errors (`x-mock-status`, the fail knobs) are Anthropic error bodies; `529` is
//!   `overloaded_error`.
use std::io::Write;

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::reply::{json_str, REPLY_TEXT};

/// Top-level fields the Messages API accepts (anything else is refused, as the API does).
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];

/// What a Messages request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesAsk {
    pub model: String,
    pub stream: bool,
    pub max_tokens: u64,
    pub input_tokens: u64,
    /// The first tool's name, when the request has tools.
    pub tool: Option<String>,
    /// The first stop sequence, when it has some.
    pub stop_sequence: Option<String>,
}

/// Reads and checks a Messages request body; `Err` is the 400 message.
pub fn inspect(body: &mut [u8], bufs: &mut simd_json::Buffers) -> Result<MessagesAsk, String> {
    let v = simd_json::to_borrowed_value_with_buffers(body, bufs)
        .map_err(|_| "request body is not valid JSON".to_string())?;
    let obj = v.as_object().ok_or("request body must be an object")?;
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_ref())) {
        return Err(format!("{k}: Extra inputs are not permitted"));
    }
    let model = v
        .get_str("model")
        .ok_or("model: Field required")?
        .to_string();
    let max_tokens = v
        .get_u64("max_tokens")
        .filter(|&n| n > 0)
        .ok_or("max_tokens: Field required (a positive integer)")?;
    let mut text_bytes = 0u64;
    match v.get("system") {
        None => {}
        Some(s) if s.is_str() => text_bytes += s.as_str().map_or(0, str::len) as u64,
        Some(s) => {
            let blocks = s
                .as_array()
                .ok_or("system: must be a string or a list of blocks")?;
            for b in blocks {
                if b.get_str("type") != Some("text") {
                    return Err("system: only text blocks".into());
                }
                text_bytes += b
                    .get_str("text")
                    .ok_or("system: text block needs text")?
                    .len() as u64;
            }
        }
    }
    let messages = v
        .get_array("messages")
        .filter(|m| !m.is_empty())
        .ok_or("messages: Field required (a non-empty list)")?;
    for (i, m) in messages.as_slice().iter().enumerate() {
        match m.get_str("role") {
            Some("user" | "assistant") => {}
            _ => return Err(format!("messages.{i}.role: must be user or assistant")),
        }
        text_bytes += content(m.get("content"), &format!("messages.{i}.content"))?;
    }
    let tool = match v.get("tools") {
        None => None,
        Some(t) => {
            let tools = t.as_array().ok_or("tools: must be a list")?;
            for (i, t) in tools.as_slice().iter().enumerate() {
                if t.get_str("name").is_none()
                    || !t.get("input_schema").is_some_and(|s| s.is_object())
                {
                    return Err(format!("tools.{i}: needs name and an input_schema object"));
                }
            }
            tools
                .first()
                .and_then(|t| t.get_str("name"))
                .map(str::to_string)
        }
    };
    let stop_sequence = match v.get("stop_sequences") {
        None => None,
        Some(s) => {
            let list = s
                .as_array()
                .filter(|l| l.as_slice().iter().all(|x| x.is_str()))
                .ok_or("stop_sequences: must be a list of strings")?;
            list.first().and_then(|x| x.as_str()).map(str::to_string)
        }
    };
    Ok(MessagesAsk {
        model,
        stream: v.get_bool("stream").unwrap_or(false),
        max_tokens,
        input_tokens: text_bytes.div_ceil(4).max(1),
        tool,
        stop_sequence,
    })
}

/// Checks one message's content; returns its text bytes.
fn content(c: Option<&BorrowedValue>, at: &str) -> Result<u64, String> {
    let c = c.ok_or_else(|| format!("{at}: Field required"))?;
    if let Some(s) = c.as_str() {
        return Ok(s.len() as u64);
    }
    let blocks = c
        .as_array()
        .ok_or_else(|| format!("{at}: must be a string or a list"))?;
    let mut bytes = 0;
    for (j, b) in blocks.as_slice().iter().enumerate() {
        let at = format!("{at}.{j}");
        match b.get_str("type") {
            Some("text") => {
                let t = b
                    .get_str("text")
                    .ok_or_else(|| format!("{at}.text: Field required"))?;
                if t.is_empty() {
                    return Err(format!("{at}: text content blocks must be non-empty"));
                }
                bytes += t.len() as u64;
            }
            Some("image") => {
                let src = b
                    .get("source")
                    .ok_or_else(|| format!("{at}.source: Field required"))?;
                let ok = match src.get_str("type") {
                    Some("base64") => {
                        src.get_str("media_type").is_some() && src.get_str("data").is_some()
                    }
                    Some("url") => src.get_str("url").is_some(),
                    _ => false,
                };
                if !ok {
                    return Err(format!(
                        "{at}.source: needs base64 media_type/data or a url"
                    ));
                }
            }
            Some("tool_use") => {
                if b.get_str("id").is_none()
                    || b.get_str("name").is_none()
                    || !b.get("input").is_some_and(|i| i.is_object())
                {
                    return Err(format!("{at}: tool_use needs id, name and an input object"));
                }
            }
            Some("tool_result") => {
                if b.get_str("tool_use_id").is_none() {
                    return Err(format!("{at}.tool_use_id: Field required"));
                }
                if let Some(inner) = b.get("content") {
                    bytes += content(Some(inner), &format!("{at}.content"))?;
                }
            }
            _ => return Err(format!("{at}.type: unknown content block type")),
        }
    }
    Ok(bytes)
}

/// The response's token counts and stop reason.
fn outcome(ask: &MessagesAsk, default_completion: u64) -> (u64, &'static str) {
    let reason = if ask.tool.is_some() {
        "tool_use"
    } else if ask.stop_sequence.is_some() {
        "stop_sequence"
    } else {
        "end_turn"
    };
    (ask.max_tokens.min(default_completion), reason)
}

fn usage(out: &mut Vec<u8>, input: u64, output: u64, cache_read: u64) {
    let _ = write!(
        out,
        r#"{{"input_tokens":{input},"cache_creation_input_tokens":0,"cache_read_input_tokens":{cache_read},"output_tokens":{output}}}"#
    );
}

fn stop_fields(out: &mut Vec<u8>, ask: &MessagesAsk, reason: &str) {
    let _ = write!(out, r#""stop_reason":"{reason}","stop_sequence":"#);
    match (&ask.stop_sequence, reason) {
        (Some(s), "stop_sequence") => json_str(out, s),
        _ => out.extend_from_slice(b"null"),
    }
}

/// Writes a non-streamed `message`.
pub fn message(
    out: &mut Vec<u8>,
    ask: &MessagesAsk,
    id: u64,
    default_completion: u64,
    cache_read: u64,
) {
    let (output, reason) = outcome(ask, default_completion);
    let _ = write!(
        out,
        r#"{{"id":"msg_mock{id}","type":"message","role":"assistant","model":"#
    );
    json_str(out, &ask.model);
    out.extend_from_slice(br#","content":[{"type":"text","text":"#);
    json_str(out, REPLY_TEXT);
    out.push(b'}');
    if let Some(tool) = &ask.tool {
        let _ = write!(out, r#",{{"type":"tool_use","id":"toolu_mock{id}","name":"#);
        json_str(out, tool);
        out.extend_from_slice(br#","input":{"q":"mock"}}"#);
    }
    out.extend_from_slice(b"],");
    stop_fields(out, ask, reason);
    out.extend_from_slice(br#","usage":"#);
    usage(out, ask.input_tokens, output, cache_read);
    out.push(b'}');
}

fn event(out: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    let _ = write!(out, "event: {name}\ndata: ");
    data(out);
    out.extend_from_slice(b"\n\n");
}

/// The events before the first text delta: `message_start`, the text block's start, `ping`.
pub fn stream_open(out: &mut Vec<u8>, ask: &MessagesAsk, id: u64, cache_read: u64) {
    event(out, "message_start", |o| {
        let _ = write!(
            o,
            r#"{{"type":"message_start","message":{{"id":"msg_mock{id}","type":"message","role":"assistant","model":"#
        );
        json_str(o, &ask.model);
        o.extend_from_slice(br#","content":[],"stop_reason":null,"stop_sequence":null,"usage":"#);
        usage(o, ask.input_tokens, 1, cache_read);
        o.extend_from_slice(b"}}");
    });
    event(out, "content_block_start", |o| {
        o.extend_from_slice(br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#)
    });
    event(out, "ping", |o| o.extend_from_slice(br#"{"type": "ping"}"#));
}

/// One text delta of block 0.
pub fn stream_text(out: &mut Vec<u8>, piece: &str) {
    event(out, "content_block_delta", |o| {
        o.extend_from_slice(
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#,
        );
        json_str(o, piece);
        o.extend_from_slice(b"}}");
    });
}

/// An event type the API does not (yet) send: clients must ignore it.
pub fn stream_unknown(out: &mut Vec<u8>) {
    event(out, "mock_future_event", |o| {
        o.extend_from_slice(br#"{"type":"mock_future_event","detail":{"x":[1,2]}}"#)
    });
}

/// The `error` event a stream ends with when the API fails mid-way.
pub fn stream_error(out: &mut Vec<u8>) {
    event(out, "error", |o| {
        o.extend_from_slice(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
    });
}

/// The events after the last text delta: the block stops, the tool block (with tools),
/// `message_delta` with the usage, `message_stop`.
pub fn stream_close(out: &mut Vec<u8>, ask: &MessagesAsk, id: u64, default_completion: u64) {
    let (output, reason) = outcome(ask, default_completion);
    event(out, "content_block_stop", |o| {
        o.extend_from_slice(br#"{"type":"content_block_stop","index":0}"#)
    });
    if let Some(tool) = &ask.tool {
        event(out, "content_block_start", |o| {
            let _ = write!(
                o,
                r#"{{"type":"content_block_start","index":1,"content_block":{{"type":"tool_use","id":"toolu_mock{id}","name":"#
            );
            json_str(o, tool);
            o.extend_from_slice(br#","input":{}}}"#);
        });
        for part in [r#"{"q":"#, r#""mock"}"#] {
            event(out, "content_block_delta", |o| {
                o.extend_from_slice(br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"#);
                json_str(o, part);
                o.extend_from_slice(b"}}");
            });
        }
        event(out, "content_block_stop", |o| {
            o.extend_from_slice(br#"{"type":"content_block_stop","index":1}"#)
        });
    }
    event(out, "message_delta", |o| {
        o.extend_from_slice(br#"{"type":"message_delta","delta":{"#);
        stop_fields(o, ask, reason);
        let _ = write!(o, r#"}},"usage":{{"output_tokens":{output}}}}}"#);
    });
    event(out, "message_stop", |o| {
        o.extend_from_slice(br#"{"type":"message_stop"}"#)
    });
}

/// An Anthropic error body for `status`.
pub fn error(out: &mut Vec<u8>, status: u16, message: &str) {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let _ = write!(
        out,
        r#"{{"type":"error","error":{{"type":"{kind}","message":"#
    );
    json_str(out, message);
    out.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(body: &str) -> Result<MessagesAsk, String> {
        inspect(
            &mut body.as_bytes().to_vec(),
            &mut simd_json::Buffers::default(),
        )
    }

    #[test]
    fn checks_requests_like_the_api() {
        let a = ask(r#"{"model":"c","max_tokens":9,"system":[{"type":"text","text":"abcd"}],"messages":[{"role":"user","content":[{"type":"text","text":"efgh"},{"type":"image","source":{"type":"url","url":"https://x"}}]},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"text","text":"ijkl"}]}]}],"tools":[{"name":"f","input_schema":{"type":"object"}}],"stop_sequences":["Z"],"stream":true}"#).unwrap();
        assert_eq!(a.input_tokens, 3);
        assert_eq!(a.tool.as_deref(), Some("f"));
        assert_eq!(a.stop_sequence.as_deref(), Some("Z"));
        assert!(a.stream);
        for (bad, why) in [
            (
                r#"{"model":"c","messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"c","max_tokens":1,"messages":[{"role":"system","content":"x"}]}"#,
                "role",
            ),
            (
                r#"{"model":"c","max_tokens":1,"messages":[{"role":"user","content":"x"}],"stream_options":{}}"#,
                "Extra inputs",
            ),
            (
                r#"{"model":"c","max_tokens":1,"messages":[{"role":"user","content":[{"type":"text","text":""}]}]}"#,
                "non-empty",
            ),
            (
                r#"{"model":"c","max_tokens":1,"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "unknown content block",
            ),
            (r#"{"model":"c","max_tokens":1,"messages":[]}"#, "messages"),
            (
                r#"{"max_tokens":1,"messages":[{"role":"user","content":"x"}]}"#,
                "model",
            ),
        ] {
            let e = ask(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn stream_has_the_real_event_sequence() {
        let a = ask(r#"{"model":"c","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":{}}]}"#).unwrap();
        let mut out = Vec::new();
        stream_open(&mut out, &a, 1, 0);
        stream_text(&mut out, "tok0 ");
        stream_close(&mut out, &a, 1, 16);
        let text = String::from_utf8(out).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            simd_json::to_owned_value(&mut data.as_bytes().to_vec()).expect(data);
        }
        assert!(
            text.contains(r#""stop_reason":"tool_use""#) && text.contains(r#""output_tokens":5"#)
        );
    }
}
