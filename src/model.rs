//! The JSON request body of an OpenAI-style call: reading `model`/`stream`/`max_tokens`
//! and rewriting it before it goes upstream.
//!
//! # Contract
//!
//! [`JsonBody::parse`] accepts a JSON object (the buffer is used as simd-json's scratch space
//! and is clobbered). `Err(BodyError)` becomes a 400 `invalid_request_error`. The body the
//! upstream receives is always re-encoded from the parsed value ([`JsonBody::encode_into`]), so
//! the gateway and the model server can never disagree about which of two duplicate `model`
//! keys counts.

use simd_json::prelude::*;
use simd_json::{OwnedValue, StaticNode};

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
    /// A top-level key appears twice: the gateway and the backend could read different
    /// values, so the body is refused.
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

/// A parsed request body.
#[derive(Debug, Clone)]
pub struct JsonBody {
    value: OwnedValue,
}

impl JsonBody {
    pub fn parse(bytes: &mut [u8]) -> Result<JsonBody, BodyError> {
        if simd_json_misreads(bytes) {
            return Err(BodyError::NotJson);
        }
        let value = simd_json::to_owned_value(bytes).map_err(|_| BodyError::NotJson)?;
        let Some(obj) = value.as_object() else {
            return Err(BodyError::NotObject);
        };
        // simd-json keeps duplicate keys; a JSON reader upstream would take the last one.
        let keys: Vec<&str> = obj.keys().map(|k| k.as_ref()).collect();
        if keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k)) {
            return Err(BodyError::DuplicateKey);
        }
        let body = JsonBody { value };
        match body.value.get("model") {
            None => {}
            Some(v) if v.is_str() => {}
            Some(_) => return Err(BodyError::ModelNotString),
        }
        match body.value.get("stream") {
            None => {}
            Some(v) if v.is_bool() || v.is_null() => {}
            Some(_) => return Err(BodyError::StreamNotBool),
        }
        Ok(body)
    }

    /// The parsed body (the adapters translate from it; see `crate::adapt`).
    pub fn value(&self) -> &OwnedValue {
        &self.value
    }

    pub fn model(&self) -> Option<&str> {
        self.value.get("model").and_then(|v| v.as_str())
    }

    pub fn stream(&self) -> bool {
        self.value
            .get("stream")
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    /// `max_tokens`, or the newer `max_completion_tokens`.
    pub fn max_tokens(&self) -> Option<u64> {
        ["max_tokens", "max_completion_tokens"]
            .iter()
            .find_map(|k| self.value.get(*k).and_then(|v| v.as_u64()))
    }

    /// Whether the client asked for the final usage chunk of a stream.
    pub fn include_usage(&self) -> bool {
        self.value
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    }

    pub fn set_model(&mut self, name: &str) {
        if let Some(o) = self.value.as_object_mut() {
            o.insert("model".into(), OwnedValue::from(name));
        }
    }

    /// Asks the backend for a final usage chunk on a stream (`stream_options.include_usage`).
    pub fn request_usage(&mut self) {
        let Some(o) = self.value.as_object_mut() else {
            return;
        };
        let opts = o
            .entry("stream_options".into())
            .or_insert_with(OwnedValue::object);
        if !opts.is_object() {
            *opts = OwnedValue::object();
        }
        if let Some(opts) = opts.as_object_mut() {
            opts.insert(
                "include_usage".into(),
                OwnedValue::Static(StaticNode::Bool(true)),
            );
        }
    }

    /// Appends the JSON encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = self.value.write(out);
    }
}

/// Inputs simd-json accepts although they are not JSON, each of which would reach the
/// upstream changed (the body is re-encoded), all found with the `json_body` fuzz target:
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
        let at = from + memchr::memchr2(b'"', b'\\', bytes.get(from..)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<JsonBody, BodyError> {
        JsonBody::parse(&mut s.as_bytes().to_vec())
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
        let mut out = Vec::new();
        b.encode_into(&mut out);
        let again = JsonBody::parse(&mut out.clone()).unwrap();
        assert_eq!(again.model(), Some("meta-llama/Llama-3-70B"));
        assert!(again.include_usage());
        assert!(String::from_utf8(out).unwrap().contains(r#"hi \"there\""#));
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
        let mut out = Vec::new();
        b.encode_into(&mut out);
        assert!(String::from_utf8(out).unwrap().contains(r#""x":"\\ud800""#));
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
}
