//! SSE usage scanner (`SseUsageScanner`) and `usage_from_body`.
//!
//! Input: one byte (bit 0: strip the usage event; the rest seeds the random piece sizes), then
//! the upstream's event stream. The stream is scanned in one piece, byte by byte and in random
//! pieces. Checks:
//! - every way relays the same bytes and finds the same usage and the same estimate;
//! - without stripping, the bytes relayed are exactly the input;
//! - with stripping, they are the input less whole events (lines end in `\r\n`, `\n` or a lone
//!   `\r`, cut by this target's own splitter), each of them a complete usage event
//!   (its data carries a `usage` object) that had no content for the client (no non-empty
//!   top-level `choices`), and the scanner reports a usage when it stripped one;
//! - `usage_from_body` agrees with serde_json whenever it finds a usage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shardgate::quota::usage::{usage_from_body, SseUsageScanner, Usage};

fn scan(
    input: &[u8],
    strip: bool,
    mut next_piece: impl FnMut() -> usize,
) -> (Vec<u8>, Option<Usage>, u32) {
    let mut s = SseUsageScanner::new(strip);
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + next_piece().max(1)).min(input.len());
        s.feed(&input[at..end], &mut out);
        at = end;
    }
    s.finish(&mut out);
    (out, s.usage(), s.estimated_completion_tokens())
}

/// The input cut into events, each ending at its blank line, and whether it ended (only the
/// last may not have). Lines end in `\r\n`, `\n` or a lone `\r` (the WHATWG event-stream
/// grammar); an event's bytes include its last line end (both bytes of a `\r\n`).
fn events(input: &[u8]) -> Vec<(&[u8], bool)> {
    let mut events = Vec::new();
    let (mut start, mut at_line_start, mut i) = (0, true, 0);
    while i < input.len() {
        if matches!(input[i], b'\r' | b'\n') {
            let end = i + line_end_len(&input[i..]);
            if at_line_start {
                events.push((&input[start..end], true));
                start = end;
            }
            at_line_start = true;
            i = end;
        } else {
            at_line_start = false;
            i += 1;
        }
    }
    if start < input.len() {
        events.push((&input[start..], false));
    }
    events
}

/// Length of the line end `rest` starts with: 2 for `\r\n`, else 1.
fn line_end_len(rest: &[u8]) -> usize {
    if rest.starts_with(b"\r\n") {
        2
    } else {
        1
    }
}

/// The event's `data:` lines joined (SSE: one optional space after the colon).
fn data(event: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    let mut lines = Vec::new();
    while i < event.len() {
        if matches!(event[i], b'\r' | b'\n') {
            lines.push(&event[start..i]);
            i += line_end_len(&event[i..]);
            start = i;
        } else {
            i += 1;
        }
    }
    lines.push(&event[start..]);
    for line in lines {
        if let Some(d) = line.strip_prefix(b"data:") {
            if !out.is_empty() {
                out.push(b'\n');
            }
            out.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
        }
    }
    out
}

/// `usage_from_body`, checked against serde_json when it finds a usage in an object.
fn checked_usage(body: &[u8]) -> Option<Usage> {
    let u = usage_from_body(&mut body.to_vec());
    if let (Some(u), Ok(Value::Object(o))) = (u, serde_json::from_slice::<Value>(body)) {
        let usage = o
            .get("usage")
            .and_then(Value::as_object)
            .expect("usage object");
        // By value: `-0` is a count of 0 to simd-json and a float to serde_json.
        let field = |k: &str| usage.get(k).map_or(Some(0.0), Value::as_f64);
        assert_eq!(
            (
                field("prompt_tokens"),
                field("completion_tokens"),
                field("total_tokens")
            ),
            (
                Some(f64::from(u.prompt_tokens)),
                Some(f64::from(u.completion_tokens)),
                Some(f64::from(u.total_tokens))
            )
        );
    }
    u
}

fuzz_target!(|data_in: &[u8]| {
    let Some((&sel, input)) = data_in.split_first() else {
        return;
    };
    checked_usage(input);
    let strip = sel & 1 != 0;
    let whole = scan(input, strip, || input.len());
    assert_eq!(
        scan(input, strip, || 1),
        whole,
        "byte by byte differs from one piece"
    );
    let mut x = u32::from(sel >> 1) | 0x9e37_7900;
    let pieces = scan(input, strip, || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        [1, 2, 3, 7, 16, 100, 4096][x as usize % 7]
    });
    assert_eq!(pieces, whole, "random pieces differ from one piece");
    let (out, usage, _) = whole;
    if !strip {
        assert_eq!(out, input, "relayed bytes differ from the input");
        return;
    }
    let mut rest = &out[..];
    let mut stripped = false;
    for (event, ended) in events(input) {
        if let Some(after) = rest.strip_prefix(event) {
            rest = after;
            continue;
        }
        assert!(ended, "unfinished event dropped");
        let payload = data(event);
        assert!(
            checked_usage(&payload).is_some(),
            "stripped an event without usage: {:?}",
            String::from_utf8_lossy(event)
        );
        if let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&payload) {
            let content = o
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty());
            assert!(
                !content,
                "stripped an event with choices: {:?}",
                String::from_utf8_lossy(event)
            );
        }
        stripped = true;
    }
    assert!(
        rest.is_empty(),
        "relayed bytes not in the input: {:?}",
        String::from_utf8_lossy(rest)
    );
    assert!(
        !stripped || usage.is_some(),
        "stripped a usage event but reports no usage"
    );
});
