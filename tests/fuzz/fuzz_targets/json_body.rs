//! JSON request body: `JsonBody::parse`, `model()`, `set_model`, `request_usage`,
//! `encode_into`, with serde_json as the oracle.
//!
//! Input: one byte giving the length of a replacement model name taken from the front of the
//! rest (any bytes, made UTF-8 lossily: quotes, backslashes, control characters), then the
//! body. Checks:
//! - a body the reader accepts is a JSON object serde_json reads too, with the same `model`;
//! - encoded unedited (the received bytes), it is JSON serde_json reads as an object with the
//!   same keys and values, and
//!   the reader accepts it again with the same `model`, `stream`, `max_tokens` and
//!   `include_usage`;
//! - after `set_model(name)` the encoding has `model` = `name` and every other key unchanged;
//!   after `request_usage` it has `stream_options.include_usage = true` and nothing else lost;
//! - a refused body is refused for the stated reason (not an object, `model` not a string,
//!   `stream` not a boolean), as serde_json sees the same bytes;
//! - `parse_keyed` (the opening located on the parse's walk) accepts and refuses what `parse`
//!   does, and feeds the same conversation opening, piece by piece and at every cut length,
//!   as reading the body again does;
//! - `parse_kept` (the tape kept for the adapters) accepts and refuses what `parse` does, and
//!   with both edits made in its tape (`with_value`) that tape is, node for node, the tape of
//!   the edited body as `encode_into` writes it.
//!
//! Known differences that are not checked: which value of a key repeated in a nested object
//! a reader keeps (the body is forwarded with splices, so both stay; the top level and
//! `stream_options` refuse repeats), serde_json stops at 128
//! levels of nesting, and simd-json refuses numbers it cannot hold (integers beyond 64 bits,
//! huge exponents; 400 for such a body) where serde_json reads them as floats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use shardgate::model::{BodyError, JsonBody, ParseHome};

fn object(bytes: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(o)) => o,
        other => panic!(
            "encoding {:?} is not a JSON object: {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

fn encode(body: &JsonBody<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    body.encode_into(&mut out);
    out
}

/// JSON equality with numbers compared by value (`-0` may come back as `0`, `1E2` as `100`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// simd-json refuses numbers it cannot hold (integers beyond 64 bits, exponents beyond its
/// range such as `0e-4444`) that serde_json reads as floats: such a body gets 400, a known
/// limitation, not a misread.
fn simd_json_refuses_a_number(body: &[u8]) -> bool {
    matches!(
        simd_json::to_owned_value(&mut body.to_vec()),
        Err(e) if matches!(e.error(), simd_json::ErrorType::InvalidNumber)
    )
}

/// Whether an object at any depth repeats a key. Readers keep one of the values (serde_json
/// the last; simd-json keeps both and re-encodes them in its map's order), so which one the
/// re-encoded body carries is not defined. `JsonBody` refuses repeats at the top level only.
fn has_repeated_key(v: &simd_json::OwnedValue) -> bool {
    match v {
        simd_json::OwnedValue::Object(o) => {
            let keys: Vec<&String> = o.keys().collect();
            keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k))
                || o.values().any(has_repeated_key)
        }
        simd_json::OwnedValue::Array(a) => a.iter().any(has_repeated_key),
        _ => false,
    }
}

/// `got` is `want` with the keys in `changed` allowed to differ (`values`: and the values of
/// the others compared too).
fn same_except(
    got: &Map<String, Value>,
    want: &Map<String, Value>,
    changed: &[&str],
    values: bool,
) {
    for (k, v) in want {
        if !changed.contains(&k.as_str()) {
            let g = got.get(k);
            assert!(g.is_some(), "key {k:?} lost");
            assert!(
                !values || same(g.unwrap(), v),
                "key {k:?} changed: {v:?} → {g:?}"
            );
        }
    }
    for k in got.keys() {
        assert!(
            want.contains_key(k) || changed.contains(&k.as_str()),
            "key {k:?} appeared"
        );
    }
}

/// The opening's pieces: located during the parse, and found by reading the body again.
fn opening_agrees(body: &[u8]) {
    let (mut a, mut b) = (String::new(), String::new());
    let keyed = JsonBody::parse_keyed(body, &mut a, true);
    let plain = JsonBody::parse(body, &mut b);
    match (&keyed, &plain) {
        (Ok(k), Ok(p)) => {
            for limit in [usize::MAX, 1, 7] {
                let (mut got, mut want) = (Vec::new(), Vec::new());
                let fed_k = k.feed_opening(limit, |p| got.push(p.to_vec()));
                let fed_p = p.feed_opening(limit, |p| want.push(p.to_vec()));
                assert_eq!((fed_k, &got), (fed_p, &want), "opening at limit {limit}");
            }
        }
        (Err(k), Err(p)) => assert_eq!(k, p),
        _ => panic!(
            "parse_keyed {:?} but parse {:?}",
            keyed.is_ok(),
            plain.is_ok()
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (name, body) = rest.split_at(usize::from(n % 32).min(rest.len()));
    let name = String::from_utf8_lossy(name);
    let oracle = serde_json::from_slice::<Value>(body);
    opening_agrees(body);
    let mut model_buf = String::new();
    let parsed = JsonBody::parse(body, &mut model_buf);
    let (mut kept_buf, mut home) = (String::new(), ParseHome::default());
    let mut kept = JsonBody::parse_kept(body, &mut kept_buf, false, &mut home);
    assert_eq!(kept.as_ref().err(), parsed.as_ref().err());
    let mut b = match parsed {
        Ok(b) => b,
        Err(e) => {
            if let Ok(v) = &oracle {
                let o = v.as_object();
                match e {
                    BodyError::NotObject => assert!(o.is_none(), "object refused as NotObject"),
                    BodyError::ModelNotString => {
                        assert!(o.unwrap().get("model").is_some_and(|m| !m.is_string()))
                    }
                    BodyError::StreamNotBool => {
                        let s = o.unwrap().get("stream").unwrap();
                        assert!(!s.is_boolean() && !s.is_null());
                    }
                    // serde_json keeps the last of duplicate keys, so it cannot tell.
                    BodyError::DuplicateKey => assert!(o.is_some()),
                    BodyError::NotJson if simd_json_refuses_a_number(body) => {}
                    BodyError::NotJson | BodyError::ModelMissing => {
                        panic!("{e:?} for JSON serde_json reads as {v:?}")
                    }
                }
            }
            return;
        }
    };
    let original = match oracle {
        Ok(Value::Object(o)) => o,
        // serde_json stops at 128 levels; simd-json (and the backends' JSON readers) go deeper.
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => return,
        other => panic!("accepted a body serde_json reads as {other:?}"),
    };
    assert_eq!(b.model(), original.get("model").and_then(Value::as_str));

    let encoded = encode(&b);
    // With a key repeated in a nested object only the keys are compared: which of its values
    // an encoding carries depends on the order of simd-json's map, which an insert may change.
    let values = !simd_json::to_owned_value(&mut body.to_vec()).is_ok_and(|v| has_repeated_key(&v));
    same_except(&object(&encoded), &original, &[], values);
    let mut again_buf = String::new();
    let again = JsonBody::parse(&encoded, &mut again_buf).expect("re-encoded body refused");
    assert_eq!(
        (
            again.model(),
            again.stream(),
            again.max_tokens(),
            again.include_usage()
        ),
        (b.model(), b.stream(), b.max_tokens(), b.include_usage())
    );

    b.set_model(&name);
    let renamed = object(&encode(&b));
    assert_eq!(renamed.get("model").and_then(Value::as_str), Some(&*name));
    same_except(&renamed, &original, &["model"], values);
    assert_eq!(b.model(), Some(&*name));

    b.request_usage();
    let usage = object(&encode(&b));
    let options = usage["stream_options"]
        .as_object()
        .expect("stream_options object");
    assert_eq!(options.get("include_usage"), Some(&Value::Bool(true)));
    if let Some(Value::Object(before)) = original.get("stream_options") {
        same_except(options, before, &["include_usage"], values);
    }
    same_except(&usage, &renamed, &["stream_options"], values);
    assert!(b.include_usage());

    let kept = kept.as_mut().expect("accepted by parse");
    kept.set_model(&name);
    kept.request_usage();
    let mut edited = encode(&b);
    let tape = simd_json::to_tape(&mut edited).expect("the edited body reads");
    assert!(
        kept.with_value(|v| v == tape.as_value()),
        "the kept tape with the edits is not the tape of {:?}",
        String::from_utf8_lossy(&encode(&b))
    );
});
