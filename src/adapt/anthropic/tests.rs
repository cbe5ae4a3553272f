use serde_json::{json, Value};

use super::stream::Stream;
use super::*;
use crate::adapt::sse::Events;
use crate::model::both_ways;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adapt/");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}{name}")).unwrap()
}

fn settings() -> AnthropicSettings {
    AnthropicSettings {
        version: "2023-06-01".into(),
        default_max_tokens: 1024,
    }
}

/// The translated request for the OpenAI request `text`, or the refusal and its path.
fn translate(text: &str) -> Result<Value, (String, &'static str)> {
    translate_edited(text, None, false)
}

/// [`translate`] with the gateway's edits (a split's served name, `include_usage` forced),
/// from the kept tape and checked against the re-read body (see `model::both_ways`).
fn translate_edited(
    text: &str,
    served: Option<&str>,
    usage: bool,
) -> Result<Value, (String, &'static str)> {
    let (out, mut path, verdict) = both_ways(text.as_bytes(), served, usage, |v, out, path| {
        chat_request(v, &settings(), out, path)
    })
    .expect("fixture parses");
    match verdict {
        Ok(()) => Ok(serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))),
        Err(e) => {
            crate::adapt::path::root(&mut path);
            Err((path, e.message))
        }
    }
}

#[test]
fn golden_requests() {
    for name in ["chat_full", "chat_simple"] {
        let got = translate(&fixture(&format!("{name}.openai.json"))).unwrap();
        let want: Value =
            serde_json::from_str(&fixture(&format!("{name}.anthropic.json"))).unwrap();
        assert_eq!(got, want, "{name}:\n{got:#}");
    }
}

#[test]
fn golden_message_response() {
    let body = fixture("message_tools.anthropic.json");
    let mut out = Vec::new();
    message_response(body.as_bytes(), 1_700_000_000, &mut out).unwrap();
    let got: Value = serde_json::from_slice(&out).unwrap();
    let want: Value = serde_json::from_str(&fixture("message_tools.openai.json")).unwrap();
    assert_eq!(got, want, "{got:#}");
    // The arguments string holds the tool input, as JSON.
    let args: Value = serde_json::from_str(
        got["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args["note"], "a \"quoted\"\tvalue");
}

/// Runs `stream` through the splitter and the translator in the given reads.
fn run_stream(parts: &[&[u8]]) -> String {
    let mut events = Events::default();
    events.reset();
    let mut s = Stream::default();
    s.reset(1_700_000_000);
    let mut out = Vec::new();
    for p in parts {
        events.feed(p, &mut |ev| s.event(ev, &mut out));
    }
    s.finish(events.pending(), &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn golden_stream_at_every_split_point() {
    let input = fixture("stream_tools.anthropic.sse");
    let want = fixture("stream_tools.openai.sse");
    let b = input.as_bytes();
    for cut in 0..=b.len() {
        assert_eq!(run_stream(&[&b[..cut], &b[cut..]]), want, "cut at {cut}");
    }
    let singles: Vec<&[u8]> = b.chunks(1).collect();
    assert_eq!(run_stream(&singles), want);
    // Every event is JSON OpenAI clients read.
    for line in want.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line != "[DONE]" {
            serde_json::from_str::<Value>(line).unwrap();
        }
    }
}

fn ev(kind: &str, data: &str) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

const START: &str = r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":3,"output_tokens":1}}}"#;

#[test]
fn error_mid_stream_ends_it_with_an_openai_error_event() {
    let text = [
        ev("message_start", START),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
        ),
        ev(
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
        ev("message_stop", r#"{"type":"message_stop"}"#),
    ]
    .concat();
    let out = run_stream(&[text.as_bytes()]);
    let last = out.trim_end().lines().last().unwrap();
    let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error"}})
    );
    assert!(out.contains(r#""content":"hi""#));
    assert!(!out.contains("[DONE]"), "{out}");
}

#[test]
fn unknown_events_and_pings_are_ignored() {
    let text = [
        ev("message_start", START),
        ev("ping", r#"{"type":"ping"}"#),
        ev("brand_new", r#"{"type":"brand_new","x":{"y":[1]}}"#),
        ": a comment\n\n".to_string(),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
        ),
        ev(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}"#,
        ),
        ev("message_stop", r#"{"type":"message_stop"}"#),
    ]
    .concat();
    let out = run_stream(&[text.as_bytes()]);
    let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{out}");
    assert!(events[1].contains(r#""delta":{"content":"ok"}"#));
    assert!(!out.contains("hmm") && !out.contains("brand_new"));
    assert!(events[2].contains(r#""choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1"#));
    assert_eq!(events[3], "data: [DONE]");
}

#[test]
fn broken_streams_end_with_an_error_and_never_done() {
    let delta = ev(
        "content_block_delta",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
    );
    let cases: Vec<(String, &str)> = vec![
        // Cut in the middle of an event.
        (
            format!("{}{}", ev("message_start", START), &delta[..30]),
            "in the middle of an event",
        ),
        // Ends between events without message_stop.
        (
            format!("{}{delta}", ev("message_start", START)),
            "before message_stop",
        ),
        // Content before message_start.
        (delta.clone(), "cannot translate"),
        // Not JSON.
        (
            format!("{}data: {{nope\n\n", ev("message_start", START)),
            "cannot translate",
        ),
        // A block index out of range.
        (
            format!(
                "{}{}",
                ev("message_start", START),
                ev(
                    "content_block_start",
                    r#"{"type":"content_block_start","index":99999999999,"content_block":{"type":"text","text":""}}"#
                )
            ),
            "cannot translate",
        ),
        // Arguments for a block that is not a tool call.
        (
            format!(
                "{}{}",
                ev("message_start", START),
                ev(
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#
                )
            ),
            "cannot translate",
        ),
        // Too large to hold.
        (
            format!(
                "{}data: {}\n\n",
                ev("message_start", START),
                "x".repeat(crate::adapt::sse::MAX_EVENT)
            ),
            "too large",
        ),
    ];
    for (text, why) in cases {
        let out = run_stream(&[text.as_bytes()]);
        assert!(!out.contains("[DONE]"), "{out}");
        let last = out.trim_end().lines().last().unwrap();
        let v: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error", "{out}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(why),
            "{why}: {out}"
        );
    }
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish) in [
        (r#""end_turn""#, r#""stop""#),
        (r#""stop_sequence""#, r#""stop""#),
        (r#""max_tokens""#, r#""length""#),
        (r#""tool_use""#, r#""tool_calls""#),
        (r#""refusal""#, r#""content_filter""#),
        (r#""pause_turn""#, r#""stop""#),
        (r#""something_new""#, r#""stop""#),
        ("null", "null"),
    ] {
        assert_eq!(
            finish_reason(Some(stop.as_bytes())),
            finish.as_bytes(),
            "{stop}"
        );
        let body = format!(
            r#"{{"id":"m","model":"c","content":[{{"type":"text","text":"t"}}],"stop_reason":{stop},"usage":{{"input_tokens":1,"output_tokens":2}}}}"#
        );
        let mut out = Vec::new();
        message_response(body.as_bytes(), 0, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"].to_string(), finish);
        assert_eq!(v["usage"]["total_tokens"], 3);
    }
    assert_eq!(finish_reason(None), b"null");
}

/// The one-walk translation writes what the previous translation (two walks: the members,
/// then the content again; kept here as the oracle, its tool calls written by the unchanged
/// `tool_calls`) wrote, and refuses what it refused: for
/// bodies with members in any order, repeated members, every kind of block, escapes, and
/// every prefix of each body (a body cut anywhere). The one difference, by design: a body
/// with two `content` members whose first holds a text block without a string `text` is
/// refused (the oracle ignored every `content` but the last).
#[test]
fn one_walk_translation_matches_the_two_walk_one() {
    let bodies = [
        r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Hi \"there\"\n\u00e9"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":7,"cache_creation_input_tokens":1,"cache_read_input_tokens":2,"output_tokens":16}}"#,
        r#"{"content":[{"text":"a","type":"text"},{"type":"text","text":"b"}],"usage":{"output_tokens":3},"model":"m","id":"late"}"#,
        r#" {"id":"m","content":[{"type":"tool_use","id":"t1","name":"f","input":{"a":[1,2]}},{"type":"text","text":"x"},{"type":"tool_use","id":"t2","name":"g"}],"stop_reason":"tool_use"} "#,
        r#"{"id":"m","content":[{"type":"thinking","thinking":"hm"},7,"s",[1],null,{"type":"text","text":""}]}"#,
        r#"{"id":"m","content":[{"type":"text","text":"first"}],"content":[{"type":"text","text":"second"}],"id":"m2"}"#,
        r#"{"id":"m","content":"not an array","content":[]}"#,
        r#"{"id":"m","content":[],"content":"not an array"}"#,
        r#"{"id":"m","content":[{"type":"text"}]}"#,
        r#"{"id":"m","content":[{"type":"text","text":1}]}"#,
        r#"{"id":"m","content":[{"type":"text","text":"a","text":"b","type":"tool_use"}]}"#,
        r#"{"id":"m","model":7,"content":[],"usage":{"input_tokens":"x","output_tokens":99999999999}}"#,
        r#"{"id":"m","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]"#,
        r#"{"id":"m","content":[{"type":"text","text":"x"}]}}"#,
        r#"{"id":"m","content":[{"type":"text","text":"x"},]}"#,
        r#"{"id":"m","content":[{"type":"text","text":"x"} {"type":"text","text":"y"}]}"#,
        r#"{"id":"m","content":[{"type":"text" "text":"x"}]}"#,
    ];
    for body in bodies {
        let body = body.as_bytes();
        for cut in 0..=body.len() {
            let b = &body[..cut];
            let mut ours = b"kept".to_vec();
            let mut theirs = b"kept".to_vec();
            let r1 = message_response(b, 1_700_000_000, &mut ours);
            let r2 = two_walks(b, 1_700_000_000, &mut theirs);
            let shown = String::from_utf8_lossy(b);
            assert_eq!(r1, r2, "{shown}");
            if r1.is_ok() {
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&theirs),
                    "{shown}"
                );
                serde_json::from_slice::<Value>(&ours[4..]).expect("JSON");
            } else {
                assert_eq!(ours, b"kept", "a refused body leaves the buffer as it was");
            }
        }
    }
    // Not UTF-8.
    let latin1 = b"{\"id\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"\xff\"}]}";
    let mut out = Vec::new();
    assert_eq!(message_response(latin1, 0, &mut out), Err(Malformed));
    assert_eq!(two_walks(latin1, 0, &mut out), Err(Malformed));
    // The designed difference.
    let mut out = Vec::new();
    let twice = br#"{"id":"m","content":[{"type":"text"}],"content":[]}"#;
    assert_eq!(message_response(twice, 0, &mut out), Err(Malformed));
    assert!(two_walks(twice, 0, &mut out).is_ok());
}

fn two_walks(body: &[u8], created: u64, out: &mut Vec<u8>) -> Result<Tokens, Malformed> {
    std::str::from_utf8(body).map_err(|_| Malformed)?;
    // Walking every top-level member validates the grammar of the whole body.
    let (mut id, mut model, mut content, mut stop_reason, mut usage) =
        (None, None, None, None, None);
    for m in crate::adapt::json::members(body)? {
        let (k, v) = m?;
        match k {
            b"id" => id = Some(v),
            b"model" => model = Some(v),
            b"content" => content = Some(v),
            b"stop_reason" => stop_reason = Some(v),
            b"usage" => usage = Some(v),
            _ => {}
        }
    }
    let id = id
        .filter(|v| crate::adapt::json::kind(v) == crate::adapt::json::Kind::String)
        .ok_or(Malformed)?;
    let content = content
        .filter(|v| crate::adapt::json::kind(v) == crate::adapt::json::Kind::Array)
        .ok_or(Malformed)?;
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    crate::adapt::json::write_u64(out, created);
    out.extend_from_slice(b",\"model\":");
    match model.filter(|v| crate::adapt::json::kind(v) == crate::adapt::json::Kind::String) {
        Some(m) => out.extend_from_slice(m),
        None => out.extend_from_slice(b"\"\""),
    }
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    // Text blocks joined: their escaped contents concatenate into one valid string. One walk
    // over each block reads its `type` and `text`; tool calls, written after, take a second
    // walk only when there are any.
    let mut texts = 0;
    let mut has_tools = false;
    for block in crate::adapt::json::items(content)? {
        let block = block?;
        if crate::adapt::json::kind(block) != crate::adapt::json::Kind::Object {
            continue;
        }
        let (mut kind, mut text) = (None, None);
        for m in crate::adapt::json::members(block)? {
            match m? {
                (b"type", v) if kind.is_none() => kind = Some(v),
                (b"text", v) if text.is_none() => text = Some(v),
                _ => {}
            }
        }
        match kind.and_then(crate::adapt::json::str_inner) {
            Some(b"text") => {}
            Some(b"tool_use") => {
                has_tools = true;
                continue;
            }
            _ => continue,
        }
        let text = text
            .and_then(crate::adapt::json::str_inner)
            .ok_or(Malformed)?;
        if texts == 0 {
            out.push(b'"');
        }
        out.extend_from_slice(text);
        texts += 1;
    }
    if texts == 0 {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'"');
    }
    if has_tools {
        tool_calls(content, out)?;
    }
    close_completion(stop_reason, usage, out)
}

#[test]
fn malformed_message_bodies_are_refused() {
    for bad in [
        "",
        "not json",
        r#"{"id":"m","content":[]"#,
        r#"[]"#,
        r#"{"content":[]}"#,
        r#"{"id":"m"}"#,
        r#"{"id":"m","content":{}}"#,
        r#"{"id":7,"content":[]}"#,
        r#"{"id":"m","content":[{"type":"text","text":5}]}"#,
        r#"{"id":"m","content":[{"type":"tool_use","name":"f"}]}"#,
        r#"{"id":"m","content":[],"usage":{"input_tokens":}}"#,
        r#"{"id":"m","content":[]} trailing"#,
    ] {
        let mut out = Vec::new();
        assert_eq!(
            message_response(bad.as_bytes(), 0, &mut out),
            Err(Malformed),
            "{bad}"
        );
    }
    // A message with no text has null content.
    let mut out = Vec::new();
    message_response(
        br#"{"id":"m","content":[],"stop_reason":"end_turn"}"#,
        0,
        &mut out,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(v["usage"]["total_tokens"], 0);
}

#[test]
fn errors_take_the_openai_shape() {
    let mut out = Vec::new();
    error_response(
        br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: \"x\" bad"}}"#,
        400,
        &mut out,
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v,
        json!({"error": {"message": "max_tokens: \"x\" bad", "type": "invalid_request_error", "param": null, "code": "invalid_request_error"}})
    );
    for other in [
        &b"<html>bad gateway</html>"[..],
        b"",
        br#"{"error":"x"}"#,
        br#"{"type":"error"}"#,
    ] {
        let mut out = Vec::new();
        error_response(other, 502, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["error"]["type"], "upstream_error");
        assert_eq!(v["error"]["message"], "the upstream provider answered 502");
    }
    assert_eq!(client_status(529), 503);
    for s in [200, 400, 401, 403, 404, 413, 429, 500] {
        assert_eq!(client_status(s), s);
    }
}

/// Every refusal names the field, whatever its position among the messages and parts.
#[test]
fn refused_requests_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            "$.model",
            "`model`",
        ),
        (r#"{"model":"m","messages":[]}"#, "$.messages", "non-empty"),
        (r#"{"model":"m"}"#, "$.messages", "non-empty"),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"max_tokens":0}"#,
            "$.max_tokens",
            "positive",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"max_completion_tokens":"9"}"#,
            "$.max_completion_tokens",
            "positive",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"n":2}"#,
            "$.n",
            "`n` must be 1",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"response_format":{"type":"json_object"}}"#,
            "$.response_format.type",
            "response_format",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"temperature":"hot"}"#,
            "$.temperature",
            "number",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"stop":[1]}"#,
            "$.stop",
            "strings",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"robot","content":"b"}]}"#,
            "$.messages[1].role",
            "role",
        ),
        (
            r#"{"model":"m","messages":[{"content":"b"}]}"#,
            "$.messages[0].role",
            "role",
        ),
        (
            r#"{"model":"m","messages":[{"role":"system","content":[{"type":"image_url","image_url":{"url":"https://x"}}]},{"role":"user","content":"a"}]}"#,
            "$.messages[0].content[0].type",
            "text",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":[{"type":"text","text":"ok"},{"type":"input_audio","input_audio":{}}]}]}"#,
            "$.messages[1].content[1].type",
            "text and image",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"ok"},{"type":"weird"}]}]}"#,
            "$.messages[0].content[1].type",
            "unknown",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            "$.messages[0].content[0].text",
            "text",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
            "$.messages[0].content[0].type",
            "type",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://x/y.png"}}]}]}"#,
            "$.messages[0].content[0].image_url.url",
            "https://",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,abc"}}]}]}"#,
            "$.messages[0].content[0].image_url.url",
            "base64",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:text/plain;base64,abc"}}]}]}"#,
            "$.messages[0].content[0].image_url.url",
            "image/",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            "$.messages[0].content[0].image_url",
            "url",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            "$.messages[0].content",
            "string",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","content":"a","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#,
            "$.messages[0].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{\"a\":"}}]}]}"#,
            "$.messages[0].tool_calls[0].function.arguments",
            "JSON object",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f"}}]}]}"#,
            "$.messages[0].tool_calls[0].id",
            "id",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"custom","function":{"name":"f"}}]}]}"#,
            "$.messages[0].tool_calls[0].type",
            "function",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","function":{}}]}]}"#,
            "$.messages[0].tool_calls[0].function.name",
            "name",
        ),
        (
            r#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"image_url"}]}]}"#,
            "$.messages[0].content[0]",
            "text or refusal",
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","content":"r"}]}"#,
            "$.messages[0].tool_call_id",
            "tool_call_id",
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":7}]}"#,
            "$.messages[0].content",
            "text parts",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"tools":[{"type":"web_search"}]}"#,
            "$.tools[0].type",
            "function tools",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"description":"d"}}]}"#,
            "$.tools[0].function.name",
            "name",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"name":"f","parameters":"x"}}]}"#,
            "$.tools[0].function.parameters",
            "JSON Schema",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"tools":{}}"#,
            "$.tools",
            "array",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"tool_choice":"sometimes"}"#,
            "$.tool_choice",
            "auto, none",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a"}],"user":5}"#,
            "$.user",
            "string",
        ),
    ];
    for (body, path, why) in cases {
        let (got_path, message) = translate(body).expect_err(body);
        assert_eq!(got_path, *path, "{body}");
        assert!(message.contains(why), "{body}: {message}");
    }
}

#[test]
fn choices_and_defaults() {
    let base = r#""model":"m","messages":[{"role":"user","content":"a"}]"#;
    for (extra, key, want) in [
        (
            r#""tool_choice":"required""#,
            "tool_choice",
            json!({"type": "any"}),
        ),
        (
            r#""tool_choice":"none""#,
            "tool_choice",
            json!({"type": "none"}),
        ),
        (
            r#""parallel_tool_calls":false"#,
            "tool_choice",
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            r#""tool_choice":"auto","parallel_tool_calls":true"#,
            "tool_choice",
            json!({"type": "auto"}),
        ),
        (r#""max_tokens":77"#, "max_tokens", json!(77)),
        (r#""max_tokens":null"#, "max_tokens", json!(1024)),
        (
            r#""max_tokens":5,"max_completion_tokens":6"#,
            "max_tokens",
            json!(6),
        ),
        (r#""stop":null"#, "stop_sequences", Value::Null),
        (r#""stream":false"#, "stream", Value::Null),
        (
            r#""n":1,"response_format":{"type":"text"}"#,
            "n",
            Value::Null,
        ),
    ] {
        let got = translate(&format!("{{{base},{extra}}}")).unwrap();
        assert_eq!(
            got.get(key).cloned().unwrap_or(Value::Null),
            want,
            "{extra}"
        );
    }
    // Empty texts are left out; assistant turns with only tool calls have only tool_use.
    let got = translate(
        r#"{"model":"m","messages":[{"role":"user","content":""},{"role":"assistant","content":null,"tool_calls":[{"id":"c","function":{"name":"f","arguments":" {\"a\":1} "}}]},{"role":"assistant","content":[{"type":"refusal","refusal":"no"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        got["messages"],
        json!([
            {"role": "user", "content": []},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}},
                {"type": "text", "text": "no"}
            ]}
        ])
    );
}

/// The gateway's edits reach the Messages request from the kept tape exactly as from the
/// re-read body (`translate_edited` compares the two byte for byte): the served name of a
/// split (any spelling, escapes included) replaces or supplies `model`, a forced
/// `include_usage` changes nothing Anthropic sees (it has no `stream_options`), whatever
/// `stream_options` was; the rest of the translation is the golden one.
#[test]
fn edits_reach_the_messages_request_as_from_the_reread_body() {
    let served_names = ["claude-3-5-sonnet", "q\"uote\\", "tab\tnl\n✓", ""];
    for name in ["chat_full", "chat_simple"] {
        let body = fixture(&format!("{name}.openai.json"));
        let want: Value =
            serde_json::from_str(&fixture(&format!("{name}.anthropic.json"))).unwrap();
        for served in served_names {
            for usage in [false, true] {
                let mut got = translate_edited(&body, Some(served), usage).unwrap();
                assert_eq!(got["model"], served, "{name}");
                got["model"] = want["model"].clone();
                assert_eq!(got, want, "{name} {served:?} {usage}");
            }
        }
    }
    let stream_options = [
        "",
        r#""stream_options":null,"#,
        r#""stream_options":{},"#,
        r#""stream_options":{"include_usage":false,"x":{"y":[1]}},"#,
        r#""stream\u005foptions":[1,{"include_usage":true}],"#,
    ];
    for opts in stream_options {
        for model in ["", r#""model":"gpt-4o","#, r#""mod\u0065l":"g\"pt","#] {
            let body = format!(
                r#"{{{model}{opts}"stream":true,"messages":[{{"role":"user","content":[{{"type":"text","text":"h\u00e9 \"q\"","x":{{"y":{{"z":[{{}}]}}}}}}]}}],"user":"u\\1"}}"#
            );
            for served in [None, Some("claude-x")] {
                let got = translate_edited(&body, served, true);
                let Some(served) = served.or((!model.is_empty()).then_some("")) else {
                    // No model and none served: refused at the same path both ways.
                    assert_eq!(got.unwrap_err().0, "$.model", "{body}");
                    continue;
                };
                let got = got.unwrap_or_else(|e| panic!("{body}: {e:?}"));
                if !served.is_empty() {
                    assert_eq!(got["model"], served, "{body}");
                }
                assert_eq!(got["stream"], true, "{body}");
                assert_eq!(got["messages"][0]["content"][0]["text"], "hé \"q\"");
                assert_eq!(got["metadata"]["user_id"], "u\\1");
                assert!(got.get("stream_options").is_none(), "{got}");
            }
        }
    }
}

/// Bodies the body stage refuses never reach the translation, however they are edited: a
/// repeated top-level key (also one spelled with escapes), a `model` that is not a string.
#[test]
fn refused_bodies_are_refused_before_the_translation() {
    use crate::model::BodyError;
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    for (body, want) in [
        (
            format!(r#"{{"model":"a",{msgs},"model":"b"}}"#),
            BodyError::DuplicateKey,
        ),
        (
            format!(r#"{{"model":"a",{msgs},"mod\u0065l":"b"}}"#),
            BodyError::DuplicateKey,
        ),
        (
            format!(r#"{{{msgs},"stream_options":{{"include_usage":true,"include_usage":true}}}}"#),
            BodyError::DuplicateKey,
        ),
        (
            format!(r#"{{"model":7,{msgs}}}"#),
            BodyError::ModelNotString,
        ),
        (
            format!(r#"{{"model":{{"name":"a"}},{msgs}}}"#),
            BodyError::ModelNotString,
        ),
        (
            format!(r#"{{"model":["a"],{msgs}}}"#),
            BodyError::ModelNotString,
        ),
    ] {
        for served in [None, Some("claude-x")] {
            let got = both_ways(body.as_bytes(), served, true, |v, out, path| {
                chat_request(v, &settings(), out, path)
            });
            assert_eq!(got.unwrap_err(), want, "{body}");
        }
    }
}

/// The usage a translated Messages body states is what the usage meter reads back from the
/// translated body, for every shape of Anthropic's `usage`: absent, `null`, partial, with
/// cache counts, counts that do not fit the meter's `u32` (unusable both ways), counts that
/// are not numbers (ignored by the translation).
#[test]
fn the_translation_states_the_usage_the_meter_reads_back() {
    let big = u64::from(u32::MAX);
    let usages = [
        String::new(),
        r#","usage":null"#.into(),
        r#","usage":{}"#.into(),
        r#","usage":{"input_tokens":12,"output_tokens":3}"#.into(),
        r#","usage":{"output_tokens":3}"#.into(),
        r#","usage":{"input_tokens":5,"cache_read_input_tokens":7,"cache_creation_input_tokens":2,"output_tokens":1}"#.into(),
        r#","usage":{"input_tokens":"5","output_tokens":-1,"cache_read_input_tokens":1.5}"#.into(),
        format!(r#","usage":{{"input_tokens":{big},"output_tokens":0}}"#),
        format!(r#","usage":{{"input_tokens":{big},"output_tokens":1}}"#),
        format!(r#","usage":{{"input_tokens":1,"output_tokens":{}}}"#, big + 1),
        format!(r#","usage":{{"input_tokens":{big},"cache_read_input_tokens":1}}"#),
        format!(r#","usage":{{"cache_read_input_tokens":{}}}"#, u64::MAX),
    ];
    for usage in &usages {
        let body = format!(
            r#"{{"id":"msg_1","type":"message","role":"assistant","model":"c","content":[{{"type":"text","text":"hi"}}],"stop_reason":"end_turn"{usage}}}"#
        );
        let mut out = Vec::new();
        let tokens = message_response(body.as_bytes(), 0, &mut out).unwrap();
        let read_back = crate::quota::usage::usage_from_body(&mut out.clone());
        assert_eq!(tokens.openai_usage(), read_back, "{body}");
    }
}
