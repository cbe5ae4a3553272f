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
        // A raw NUL is never valid JSON, but simd-json takes one as the end of a number or
        // literal (`{"max_tokens":5\0}` parses): refuse it before simd-json sees it.
        if bytes.contains(&0) {
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
                assert_eq!(parse(&nul(&body)).unwrap_err(), BodyError::NotJson, "{body}");
            }
        }
        for body in ["@{}", "{}@", "{@}", r#"{"model":"a@b"}"#, r#"{"mo@del":"a"}"#] {
            assert_eq!(parse(&nul(body)).unwrap_err(), BodyError::NotJson, "{body}");
        }
        // An escaped NUL is a character like any other.
        let b = parse(r#"{"model":"a\u0000b"}"#).unwrap();
        assert_eq!(b.model(), Some("a\0b"));
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
