//! Provider adapter and schema transform costs, each next to what a pass-through route does
//! with the same bytes (the baseline the ratios in the README are taken against):
//!
//! - `request/*`: a 1 KB chat request — `passthrough`: re-encoding the parsed body (what every
//!   JSON route does: splicing the model into the received bytes), `parse_passthrough`: the
//!   body stage's parse and that splice (all a pass-through route does with the body),
//!   `anthropic`: the same parse (its tape kept in the request's slot) and the translation to
//!   a Messages request from that tape (all an adapted route does with the body: it is parsed
//!   once), `anthropic_stage`: the translation alone, from a kept tape, `anthropic_reread`:
//!   what an adapted route did before the tape was kept (the parse, the body written out and
//!   parsed again into the thread's scratch, the translation; `JsonBody::with_reread`).
//! - `response/*`: its ~1 KB answer — `passthrough`: reading `usage` from the OpenAI body (the
//!   usage meter), `anthropic`: translating the Messages body to a `chat.completion`.
//! - `sse_event/*`: one content event — `passthrough`: the usage scanner over an OpenAI chunk,
//!   `anthropic`: splitting and translating an Anthropic `content_block_delta`.
//! - `schema/*`: a 1 KB body through a 20-property schema — `passthrough`: re-encoding,
//!   `parse_passthrough`: the parse and the splice, `request`: the parse (tape kept), mapping
//!   and checking it from that tape (client → backend), `request_stage`: the mapping alone,
//!   `request_reread`: the parse, the second read and the mapping (the way before),
//!   `response`: mapping the raw backend body back.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardgate::adapt::anthropic::{chat_request, message_response, stream::Stream};
use shardgate::adapt::schema::{self, map, Naming};
use shardgate::adapt::sse::Events;
use shardgate::config_types::AnthropicSettings;
use shardgate::model::{JsonBody, ParseHome};
use shardgate::quota::usage::{usage_from_body, SseUsageScanner};

fn chat_request_1k() -> String {
    let filler = "The quick brown fox jumps over the lazy dog. ".repeat(14);
    let body = format!(
        r#"{{"model":"claude-sonnet","max_tokens":256,"temperature":0.3,"stream":false,"messages":[{{"role":"system","content":"You are a helpful assistant that answers briefly."}},{{"role":"user","content":"{filler}"}},{{"role":"assistant","content":"Understood."}},{{"role":"user","content":[{{"type":"text","text":"Summarise the text above in one sentence, please."}}]}}],"stop":["END"],"user":"bench-user"}}"#
    );
    assert!((900..1200).contains(&body.len()), "{}", body.len());
    body
}

fn anthropic_message_1k() -> String {
    let text = "A fox, quick and brown, jumps over a lazy dog again and again. ".repeat(13);
    format!(
        r#"{{"id":"msg_01Bench","type":"message","role":"assistant","model":"claude-sonnet-4","content":[{{"type":"text","text":"{text}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":240,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":212}}}}"#
    )
}

fn openai_completion_1k() -> String {
    let text = "A fox, quick and brown, jumps over a lazy dog again and again. ".repeat(13);
    format!(
        r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":240,"completion_tokens":212,"total_tokens":452}}}}"#
    )
}

const ANTHROPIC_EVENT: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" jumps over the lazy dog\"}}\n\n";
const OPENAI_EVENT: &[u8] = b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" jumps over the lazy dog\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";
const MESSAGE_START: &[u8] = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01Bench\",\"model\":\"claude-sonnet-4\",\"usage\":{\"input_tokens\":240,\"output_tokens\":1}}}\n\n";

/// A 20-property schema (camelCase client names, snake_case backend) and a ~1 KB body for it.
fn schema_and_body() -> (schema::Schema, String, String) {
    let mut props = String::new();
    let mut body = String::from("{");
    let mut backend = String::from("{");
    for i in 0..20 {
        let (ty, value) = match i % 4 {
            0 => (
                "string",
                format!("\"value number {i} with some padding text here\""),
            ),
            1 => ("integer", format!("{}", i * 1000)),
            2 => ("boolean", "true".to_string()),
            _ => ("string", format!("\"{}\"", "x".repeat(24))),
        };
        if i > 0 {
            props.push(',');
            body.push(',');
            backend.push(',');
        }
        props.push_str(&format!(r#""fieldName{i}":{{"type":"{ty}"}}"#));
        body.push_str(&format!(r#""fieldName{i}":{value}"#));
        backend.push_str(&format!(r#""field_name{i}":{value}"#));
    }
    body.push('}');
    backend.push('}');
    let doc = format!(
        r#"{{"components":{{"schemas":{{"Big":{{"type":"object","required":["fieldName0","fieldName1"],"properties":{{{props}}}}}}}}}}}"#
    );
    let doc = schema::parse_document(&doc).unwrap();
    let s = schema::compile(&doc, Some("Big"), Some("Big"), Naming::SnakeCase).unwrap();
    // Pad both to ~1 KB with a free-form field the schema does not describe.
    let pad = format!(
        r#","notes":"{}"}}"#,
        "n".repeat(1024 - body.len().min(1000) - 12)
    );
    let body = format!("{}{pad}", &body[..body.len() - 1]);
    let backend = format!("{}{pad}", &backend[..backend.len() - 1]);
    (s, body, backend)
}

fn bench(c: &mut Criterion) {
    let settings = AnthropicSettings {
        version: "2023-06-01".into(),
        default_max_tokens: 1024,
    };
    let req = chat_request_1k();
    let mut model = String::new();
    let body = JsonBody::parse(req.as_bytes(), &mut model).unwrap();
    let mut out = Vec::with_capacity(4096);
    let mut path = String::new();
    c.bench_function("adapt/request/passthrough", |b| {
        b.iter(|| {
            out.clear();
            body.encode_into(&mut out);
            black_box(out.len())
        })
    });
    let mut home = ParseHome::default();
    let mut loop_model = String::new();
    c.bench_function("adapt/request/parse_passthrough", |b| {
        b.iter(|| {
            out.clear();
            let body =
                JsonBody::parse_kept(black_box(req.as_bytes()), &mut loop_model, false, &mut home);
            body.unwrap().encode_into(&mut out);
            black_box(out.len())
        })
    });
    c.bench_function("adapt/request/anthropic", |b| {
        b.iter(|| {
            out.clear();
            let body =
                JsonBody::parse_kept(black_box(req.as_bytes()), &mut loop_model, false, &mut home);
            body.unwrap()
                .with_value(|v| chat_request(v, &settings, &mut out, &mut path))
                .unwrap();
            black_box(out.len())
        })
    });
    c.bench_function("adapt/request/anthropic_reread", |b| {
        b.iter(|| {
            out.clear();
            let body = JsonBody::parse(black_box(req.as_bytes()), &mut loop_model);
            body.unwrap()
                .with_reread(|v| chat_request(v, &settings, &mut out, &mut path))
                .unwrap();
            black_box(out.len())
        })
    });
    {
        let mut kept_model = String::new();
        let mut kept_home = ParseHome::default();
        let mut kept =
            JsonBody::parse_kept(req.as_bytes(), &mut kept_model, false, &mut kept_home).unwrap();
        c.bench_function("adapt/request/anthropic_stage", |b| {
            b.iter(|| {
                out.clear();
                black_box(&mut kept)
                    .with_value(|v| chat_request(v, &settings, &mut out, &mut path))
                    .unwrap();
                black_box(out.len())
            })
        });
    }

    let message = anthropic_message_1k();
    let completion = openai_completion_1k();
    let mut scratch = Vec::with_capacity(4096);
    c.bench_function("adapt/response/passthrough", |b| {
        b.iter(|| {
            scratch.clear();
            scratch.extend_from_slice(completion.as_bytes());
            black_box(usage_from_body(&mut scratch))
        })
    });
    // The mock backend's answer (what the end-to-end runs translate): a short body.
    let short = br#"{"id":"msg_mock1","type":"message","role":"assistant","model":"mock-gpt","content":[{"type":"text","text":"This is a mock response."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":7,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":16}}"#;
    c.bench_function("adapt/response/anthropic_short", |b| {
        b.iter(|| {
            out.clear();
            message_response(black_box(short), 1_700_000_000, &mut out).unwrap();
            black_box(out.len())
        })
    });
    c.bench_function("adapt/response/anthropic", |b| {
        b.iter(|| {
            out.clear();
            message_response(black_box(message.as_bytes()), 1_700_000_000, &mut out).unwrap();
            black_box(out.len())
        })
    });

    let mut scanner = SseUsageScanner::new(true);
    c.bench_function("adapt/sse_event/passthrough", |b| {
        b.iter(|| {
            out.clear();
            scanner.feed(black_box(OPENAI_EVENT), &mut out);
            black_box(out.len())
        })
    });
    let mut events = Events::default();
    events.reset();
    let mut stream = Stream::default();
    stream.reset(1_700_000_000);
    events.feed(MESSAGE_START, &mut |ev| stream.event(ev, &mut out));
    c.bench_function("adapt/sse_event/anthropic", |b| {
        b.iter(|| {
            out.clear();
            events.feed(black_box(ANTHROPIC_EVENT), &mut |ev| {
                stream.event(ev, &mut out)
            });
            black_box(out.len())
        })
    });

    let (s, client, backend) = schema_and_body();
    let mut client_model = String::new();
    let parsed = JsonBody::parse(client.as_bytes(), &mut client_model).unwrap();
    let root = s.request.unwrap();
    c.bench_function("adapt/schema/passthrough", |b| {
        b.iter(|| {
            out.clear();
            parsed.encode_into(&mut out);
            black_box(out.len())
        })
    });
    c.bench_function("adapt/schema/parse_passthrough", |b| {
        b.iter(|| {
            out.clear();
            let body = JsonBody::parse_kept(
                black_box(client.as_bytes()),
                &mut loop_model,
                false,
                &mut home,
            );
            body.unwrap().encode_into(&mut out);
            black_box(out.len())
        })
    });
    c.bench_function("adapt/schema/request", |b| {
        b.iter(|| {
            out.clear();
            let body = JsonBody::parse_kept(
                black_box(client.as_bytes()),
                &mut loop_model,
                false,
                &mut home,
            );
            body.unwrap()
                .with_value(|v| map::request(&s, root, v, &mut out, &mut path))
                .unwrap();
            black_box(out.len())
        })
    });
    c.bench_function("adapt/schema/request_reread", |b| {
        b.iter(|| {
            out.clear();
            let body = JsonBody::parse(black_box(client.as_bytes()), &mut loop_model);
            body.unwrap()
                .with_reread(|v| map::request(&s, root, v, &mut out, &mut path))
                .unwrap();
            black_box(out.len())
        })
    });
    {
        let mut kept_model = String::new();
        let mut kept_home = ParseHome::default();
        let mut kept =
            JsonBody::parse_kept(client.as_bytes(), &mut kept_model, false, &mut kept_home)
                .unwrap();
        c.bench_function("adapt/schema/request_stage", |b| {
            b.iter(|| {
                out.clear();
                black_box(&mut kept)
                    .with_value(|v| map::request(&s, root, v, &mut out, &mut path))
                    .unwrap();
                black_box(out.len())
            })
        });
    }
    c.bench_function("adapt/schema/response", |b| {
        b.iter(|| {
            out.clear();
            map::response(&s, root, black_box(backend.as_bytes()), &mut out).unwrap();
            black_box(out.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
