//! The Anthropic → OpenAI stream translator (`adapt::sse::Events` + `adapt::anthropic::stream`),
//! and the Messages body translator on the same bytes.
//!
//! Input: one byte seeding the random piece sizes, then an upstream event stream. The stream is
//! translated in one piece, byte by byte and in random pieces. Checks:
//! - every way writes the same bytes (translation does not depend on where reads end);
//! - the output is complete SSE events, each `data: <JSON object>` (a chunk with
//!   `object: chat.completion.chunk`, or an `error`) or `data: [DONE]`; `[DONE]` only last,
//!   after the usage chunk, nothing after an error event, and one of the two always comes;
//! - the relay's usage meter reads the output without trouble, and finds the usage whenever
//!   `[DONE]` was written;
//! - `message_response` on the same bytes either refuses them or writes JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use shardgate::adapt::anthropic::{message_response, stream::Stream};
use shardgate::adapt::sse::Events;
use shardgate::quota::usage::SseUsageScanner;

fn translate(input: &[u8], mut next_piece: impl FnMut() -> usize) -> Vec<u8> {
    let mut events = Events::default();
    events.reset();
    let mut s = Stream::default();
    s.reset(1_700_000_000);
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let end = (at + next_piece().max(1)).min(input.len());
        events.feed(&input[at..end], &mut |ev| s.event(ev, &mut out));
        at = end;
    }
    s.finish(events.pending(), &mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = translate(input, || usize::MAX);
    assert_eq!(translate(input, || 1), whole, "byte by byte");
    let mut rng = u64::from(seed) | 1;
    let random = translate(input, || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 64) as usize + 1
    });
    assert_eq!(random, whole, "random pieces");

    let text = std::str::from_utf8(&whole).expect("the output is UTF-8 when it is JSON");
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    let mut ended = false;
    for (i, ev) in events.iter().enumerate() {
        assert!(!ended, "an event after the end: {text}");
        let data = ev
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("{ev:?}"));
        assert!(!data.contains('\n'), "{ev:?}");
        if data == "[DONE]" {
            assert_eq!(i, events.len() - 1);
            let usage: Value =
                serde_json::from_str(events[i - 1].strip_prefix("data: ").unwrap()).unwrap();
            assert!(usage["usage"]["total_tokens"].is_u64(), "{text}");
            ended = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        if v.get("error").is_some() {
            assert!(
                v["error"]["message"].is_string() && v["error"]["type"].is_string(),
                "{data}"
            );
            ended = true;
        } else {
            assert_eq!(v["object"], "chat.completion.chunk", "{data}");
            assert!(v["choices"].is_array(), "{data}");
        }
    }
    // Every stream ends visibly: `[DONE]` after a complete message, else an error event.
    assert!(ended, "{text}");

    let mut scanner = SseUsageScanner::new(true);
    let mut relayed = Vec::new();
    scanner.feed(&whole, &mut relayed);
    scanner.finish(&mut relayed);
    if text.ends_with("data: [DONE]\n\n") {
        assert!(scanner.usage().is_some(), "{text}");
    }

    let mut body = Vec::new();
    if message_response(input, 0, &mut body).is_ok() {
        serde_json::from_slice::<Value>(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    }
});
