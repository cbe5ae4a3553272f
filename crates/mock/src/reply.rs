//! Response bodies of the mock: what each endpoint answers, byte for byte.
//!
//! # Usage formula (deterministic, so tests can assert on it)
//!
//! - `prompt_tokens` = ceil(bytes / 4), minimum 1, where bytes is the sum of the UTF-8 lengths
//!   of every `messages[].content` string (chat), every `prompt` string (completions) or every
//!   `input` string (embeddings; a token array counts its length instead).
//! - `completion_tokens` = the request's `max_tokens` (or `max_completion_tokens`) when given,
//!   else [`MockConfig::default_completion_tokens`](super::MockConfig); embeddings have none.
//! - `total_tokens` = `prompt_tokens + completion_tokens`.
//!
//! # Content
//!
//! A non-streamed completion's content is [`REPLY_TEXT`] followed by `pad_bytes` `x`
//! characters. A streamed one sends content pieces `"tok0 "`, `"tok1 "`, ... one per chunk.
use std::io::Write;

use shardgate_http::write::json_escape_into;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// Content of every non-streamed completion (before padding).
pub const REPLY_TEXT: &str = "This is a mock response.";

/// `Content-Type` of `/metrics` (Prometheus text exposition 0.0.4).
pub const METRICS_TYPE: &str = "text/plain; version=0.0.4";

/// `/metrics`: vLLM's queue gauges for model `model`, and the mock's request counter.
pub fn metrics(out: &mut Vec<u8>, model: &str, running: u64, waiting: u64, requests: u64) {
    let mut label = Vec::new();
    json_escape_into(&mut label, model);
    let label = String::from_utf8_lossy(&label);
    for (name, help, v) in [
        (
            "vllm:num_requests_running",
            "Requests being answered.",
            running,
        ),
        (
            "vllm:num_requests_waiting",
            "Requests waiting to be answered.",
            waiting,
        ),
    ] {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model_name=\"{label}\"}} {v}\n"
        );
    }
    let _ = write!(
        out,
        "# HELP mock_requests_total Requests served, this one included.\n# TYPE mock_requests_total counter\nmock_requests_total {requests}\n"
    );
}

/// Which OpenAI object family a completion request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`: `chat.completion` / `chat.completion.chunk`.
    Chat,
    /// `/v1/completions`: `text_completion`.
    Text,
}

/// What the parsed request asked for; the fields a completion response depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The request's `model`, or the configured name.
    pub model: String,
    /// `"stream": true`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// See the module's usage formula.
    pub prompt_tokens: u64,
    /// See the module's usage formula.
    pub completion_tokens: u64,
}

/// Why a request body could not be answered as a completion (status 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// The body is not a JSON object.
    NotJson,
}

/// Reads a completion or embedding request body.
///
/// # Errors
///
/// [`BadRequest::NotJson`] when the body is not a JSON object.
pub fn inspect(
    body: &mut [u8],
    bufs: &mut simd_json::Buffers,
    kind_field: &str,
    default_model: &str,
    default_completion: u64,
) -> Result<Ask, BadRequest> {
    let v =
        simd_json::to_borrowed_value_with_buffers(body, bufs).map_err(|_| BadRequest::NotJson)?;
    if v.as_object().is_none() {
        return Err(BadRequest::NotJson);
    }
    let bytes = match kind_field {
        "messages" => v
            .get_array("messages")
            .map(|m| {
                m.as_slice()
                    .iter()
                    .map(|msg| content_bytes(msg.get("content")))
                    .sum()
            })
            .unwrap_or(0),
        field => content_bytes(v.get(field)),
    };
    let completion_tokens = v
        .get_u64("max_tokens")
        .or_else(|| v.get_u64("max_completion_tokens"))
        .unwrap_or(default_completion);
    Ok(Ask {
        model: v.get_str("model").unwrap_or(default_model).to_string(),
        stream: v.get_bool("stream").unwrap_or(false),
        include_usage: v
            .get("stream_options")
            .and_then(|o| o.get_bool("include_usage"))
            .unwrap_or(false),
        prompt_tokens: bytes.div_ceil(4).max(1),
        completion_tokens,
    })
}

/// Bytes a content value contributes: a string's length, a list's strings (or text parts,
/// or a token array's length), else 0.
fn content_bytes(v: Option<&BorrowedValue>) -> u64 {
    let Some(v) = v else { return 0 };
    if let Some(s) = v.as_str() {
        return s.len() as u64;
    }
    let Some(items) = v.as_array() else { return 0 };
    items
        .as_slice()
        .iter()
        .map(|item| {
            if let Some(s) = item.as_str() {
                s.len() as u64
            } else if item.is_u64() || item.is_i64() {
                4 // one token id stands for one token: 4 bytes in the formula
            } else if let Some(text) = item.get_str("text") {
                text.len() as u64
            } else {
                content_bytes(Some(item))
            }
        })
        .sum()
}

/// Writes a non-streamed completion body.
pub fn completion(out: &mut Vec<u8>, kind: Kind, ask: &Ask, id: u64, created: u64, pad: usize) {
    let (object, prefix) = match kind {
        Kind::Chat => ("chat.completion", "chatcmpl"),
        Kind::Text => ("text_completion", "cmpl"),
    };
    let _ = write!(
        out,
        r#"{{"id":"{prefix}-mock{id}","object":"{object}","created":{created},"model":"#
    );
    json_str(out, &ask.model);
    out.extend_from_slice(br#","choices":[{"index":0,"#);
    match kind {
        Kind::Chat => out.extend_from_slice(br#""message":{"role":"assistant","content":""#),
        Kind::Text => out.extend_from_slice(br#""text":""#),
    }
    out.extend_from_slice(REPLY_TEXT.as_bytes());
    out.resize(out.len() + pad, b'x');
    out.push(b'"');
    if kind == Kind::Chat {
        out.push(b'}');
    }
    out.extend_from_slice(br#","logprobs":null,"finish_reason":"stop"}],"usage":"#);
    usage(out, ask.prompt_tokens, Some(ask.completion_tokens));
    out.push(b'}');
}

/// Writes one SSE event (`data: {...}\n\n`) of a streamed completion. `piece` is `None` for
/// the opening chunk (chat: `role`), `Some(text)` for content; `finish` marks the last
/// content-less chunk. `usage: null` is included when the client asked for usage, as OpenAI
/// does.
pub fn stream_event(
    out: &mut Vec<u8>,
    kind: Kind,
    ask: &Ask,
    id: u64,
    created: u64,
    piece: Option<&str>,
    finish: bool,
) {
    let (object, prefix) = match kind {
        Kind::Chat => ("chat.completion.chunk", "chatcmpl"),
        Kind::Text => ("text_completion", "cmpl"),
    };
    let _ = write!(
        out,
        r#"data: {{"id":"{prefix}-mock{id}","object":"{object}","created":{created},"model":"#
    );
    json_str(out, &ask.model);
    out.extend_from_slice(br#","choices":[{"index":0,"#);
    match (kind, piece, finish) {
        (Kind::Chat, _, true) => out.extend_from_slice(br#""delta":{}"#),
        (Kind::Chat, None, false) => {
            out.extend_from_slice(br#""delta":{"role":"assistant","content":""}"#)
        }
        (Kind::Chat, Some(p), false) => {
            out.extend_from_slice(br#""delta":{"content":"#);
            json_str(out, p);
            out.push(b'}');
        }
        (Kind::Text, p, _) => {
            out.extend_from_slice(br#""text":"#);
            json_str(out, p.unwrap_or(""));
        }
    }
    let reason = if finish { r#""stop""# } else { "null" };
    let _ = write!(out, r#","logprobs":null,"finish_reason":{reason}}}]"#);
    if ask.include_usage {
        out.extend_from_slice(br#","usage":null"#);
    }
    out.extend_from_slice(b"}\n\n");
}

/// Writes the final usage event of a stream (`choices: []`), sent when `include_usage`.
pub fn stream_usage(out: &mut Vec<u8>, kind: Kind, ask: &Ask, id: u64, created: u64) {
    let (object, prefix) = match kind {
        Kind::Chat => ("chat.completion.chunk", "chatcmpl"),
        Kind::Text => ("text_completion", "cmpl"),
    };
    let _ = write!(
        out,
        r#"data: {{"id":"{prefix}-mock{id}","object":"{object}","created":{created},"model":"#
    );
    json_str(out, &ask.model);
    out.extend_from_slice(br#","choices":[],"usage":"#);
    usage(out, ask.prompt_tokens, Some(ask.completion_tokens));
    out.extend_from_slice(b"}\n\n");
}

/// The stream terminator event.
pub const STREAM_DONE: &[u8] = b"data: [DONE]\n\n";

/// Writes an embeddings response: one `dims`-long deterministic vector per input.
pub fn embeddings(out: &mut Vec<u8>, ask: &Ask, inputs: usize, dims: usize) {
    out.extend_from_slice(br#"{"object":"list","data":["#);
    for i in 0..inputs.max(1) {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, r#"{{"object":"embedding","index":{i},"embedding":["#);
        for d in 0..dims {
            if d > 0 {
                out.push(b',');
            }
            let _ = write!(out, "{:.4}", ((i * 31 + d * 7) % 100) as f64 / 100.0 - 0.5);
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(br#"],"model":"#);
    json_str(out, &ask.model);
    out.extend_from_slice(br#","usage":"#);
    usage(out, ask.prompt_tokens, None);
    out.push(b'}');
}

/// Number of inputs of an embeddings request (a string is one; a list of strings or of
/// token arrays counts its items).
pub fn embedding_inputs(body: &mut [u8], bufs: &mut simd_json::Buffers) -> usize {
    let Ok(v) = simd_json::to_borrowed_value_with_buffers(body, bufs) else {
        return 1;
    };
    match v.get("input").and_then(|i| i.as_array()) {
        Some(items) if items.as_slice().iter().all(|x| x.is_u64() || x.is_i64()) => 1,
        Some(items) => items.len(),
        None => 1,
    }
}

/// Writes `{"prompt_tokens":p,"completion_tokens":c,"total_tokens":p+c}`.
fn usage(out: &mut Vec<u8>, prompt: u64, completion: Option<u64>) {
    match completion {
        Some(c) => {
            let _ = write!(
                out,
                r#"{{"prompt_tokens":{prompt},"completion_tokens":{c},"total_tokens":{}}}"#,
                prompt + c
            );
        }
        None => {
            let _ = write!(
                out,
                r#"{{"prompt_tokens":{prompt},"total_tokens":{prompt}}}"#
            );
        }
    }
}

/// `GET /v1/models` body.
pub fn models(out: &mut Vec<u8>, model: &str, version: &str) {
    out.extend_from_slice(br#"{"object":"list","data":[{"id":"#);
    json_str(out, model);
    out.extend_from_slice(
        br#","object":"model","created":0,"owned_by":"shardgate-mock","version":"#,
    );
    json_str(out, version);
    out.extend_from_slice(b"}]}");
}

/// OpenAI-style error body.
pub fn error(out: &mut Vec<u8>, status: u16, message: &str) {
    out.extend_from_slice(br#"{"error":{"message":"#);
    json_str(out, message);
    let _ = write!(
        out,
        r#","type":"mock_error","param":null,"code":{status}}}}}"#
    );
}

/// The `/echo` body: exactly what was received.
pub fn echo<'h>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    version: u8,
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    body: &[u8],
) {
    out.extend_from_slice(br#"{"method":"#);
    json_str(out, method);
    out.extend_from_slice(br#","path":"#);
    json_str(out, target);
    let _ = write!(out, r#","version":"HTTP/1.{version}","headers":["#);
    for (i, (name, value)) in headers.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        json_str(out, name);
        out.push(b',');
        json_str(out, &String::from_utf8_lossy(value));
        out.push(b']');
    }
    out.extend_from_slice(br#"],"body":"#);
    json_str(out, &String::from_utf8_lossy(body));
    out.push(b'}');
}

/// Writes `s` as a JSON string literal.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_escape_into(out, s);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> simd_json::OwnedValue {
        let mut b = s.as_bytes().to_vec();
        simd_json::to_owned_value(&mut b).expect("valid json")
    }

    fn ask(body: &str, field: &str) -> Ask {
        let mut b = body.as_bytes().to_vec();
        let mut bufs = simd_json::Buffers::default();
        inspect(&mut b, &mut bufs, field, "cfg-model", 16).expect("valid request")
    }

    #[test]
    fn usage_formula_chat() {
        // 5 + 4 = 9 bytes → ceil(9/4) = 3 prompt tokens; max_tokens wins.
        let a = ask(
            r#"{"model":"m1","max_tokens":7,"messages":[{"role":"system","content":"hello"},{"role":"user","content":"abcd"}]}"#,
            "messages",
        );
        assert_eq!(
            (a.model.as_str(), a.prompt_tokens, a.completion_tokens),
            ("m1", 3, 7)
        );
        assert!(!a.stream);
        // No content → min 1; no max_tokens → default; no model → configured name.
        let a = ask(
            r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
            "messages",
        );
        assert_eq!(
            (a.model.as_str(), a.prompt_tokens, a.completion_tokens),
            ("cfg-model", 1, 16)
        );
        assert!(a.stream && a.include_usage);
    }

    #[test]
    fn usage_formula_prompt_list_and_parts() {
        assert_eq!(
            ask(r#"{"prompt":["abcd","abcde"]}"#, "prompt").prompt_tokens,
            3
        );
        let a = ask(
            r#"{"messages":[{"content":[{"type":"text","text":"12345678"}]}]}"#,
            "messages",
        );
        assert_eq!(a.prompt_tokens, 2);
    }

    #[test]
    fn rejects_non_json() {
        let mut b = b"not json".to_vec();
        let mut bufs = simd_json::Buffers::default();
        assert_eq!(
            inspect(&mut b, &mut bufs, "messages", "m", 1),
            Err(BadRequest::NotJson)
        );
    }

    #[test]
    fn chat_completion_is_openai_shaped() {
        let a = ask(
            r#"{"model":"m\"q","messages":[{"content":"hi"}],"max_tokens":2}"#,
            "messages",
        );
        let mut out = Vec::new();
        completion(&mut out, Kind::Chat, &a, 9, 100, 3);
        let v = parse(std::str::from_utf8(&out).unwrap());
        assert_eq!(v["id"], "chatcmpl-mock9");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "m\"q");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            format!("{REPLY_TEXT}xxx").as_str()
        );
        assert_eq!(v["usage"]["prompt_tokens"], 1);
        assert_eq!(v["usage"]["completion_tokens"], 2);
        assert_eq!(v["usage"]["total_tokens"], 3);
    }

    #[test]
    fn stream_events_are_sse_json() {
        let a = ask(
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            "messages",
        );
        let mut out = Vec::new();
        stream_event(&mut out, Kind::Chat, &a, 1, 2, Some("tok0 "), false);
        let text = std::str::from_utf8(&out).unwrap();
        let json = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        let v = parse(json);
        assert_eq!(v["choices"][0]["delta"]["content"], "tok0 ");
        assert_eq!(v["object"], "chat.completion.chunk");
        out.clear();
        stream_usage(&mut out, Kind::Chat, &a, 1, 2);
        let v = parse(
            std::str::from_utf8(&out)
                .unwrap()
                .trim_start_matches("data: ")
                .trim_end(),
        );
        assert_eq!(v["choices"].as_array().map(|c| c.len()), Some(0));
        assert_eq!(v["usage"]["total_tokens"], 17);
    }

    #[test]
    fn echo_and_escaping() {
        let mut out = Vec::new();
        let headers = [("a", &b"1"[..]), ("a", &b"2\t"[..])];
        echo(
            &mut out,
            "PUT",
            "/echo/x?y=1",
            1,
            headers.into_iter(),
            b"line\n\x01",
        );
        let v = parse(std::str::from_utf8(&out).unwrap());
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["path"], "/echo/x?y=1");
        assert_eq!(v["headers"][1][1], "2\t");
        assert_eq!(v["body"], "line\n\u{1}");
    }

    #[test]
    fn embeddings_shape() {
        let body = r#"{"input":["a","bbbbb"],"model":"e"}"#;
        let a = ask(body, "input");
        let mut b = body.as_bytes().to_vec();
        let n = embedding_inputs(&mut b, &mut simd_json::Buffers::default());
        let mut out = Vec::new();
        embeddings(&mut out, &a, n, 4);
        let v = parse(std::str::from_utf8(&out).unwrap());
        assert_eq!(v["data"].as_array().map(|d| d.len()), Some(2));
        assert_eq!(
            v["data"][1]["embedding"].as_array().map(|d| d.len()),
            Some(4)
        );
        assert_eq!(v["usage"]["prompt_tokens"], 2);
    }
}
