//! Claim values copied out of a verified token: identity values (subject, tenant, label,
//! `jti`) and the values of claim headers.
//!
//! # Identity values
//!
//! A string or an integer (rendered in decimal), 1 to [`MAX_IDENTITY_BYTES`] bytes of
//! [clean text](is_clean_text). These are exactly the ids `POST /revoke` and the revocation
//! file accept ([`super::Revoked::new`] uses the same rule), so any subject or `jti` a token
//! can be accepted with can also be revoked, by the same exact string. Anything else is 401
//! `invalid_claim`.
//!
//! # Claim headers
//!
//! | claim value | header |
//! |-------------|--------|
//! | absent, `null` | not sent |
//! | string | the string; must be non-empty clean text |
//! | integer, float, boolean | JSON text: `42`, `-7`, `1.5`, `1e300`, `true` |
//! | array of strings | the entries joined with the mapping's `separator`; `[]` sends an empty value; each entry non-empty clean text not containing the separator |
//! | object, nested array, array holding a non-string | refused |
//!
//! Every rendered value is at most [`MAX_CLAIM_HEADER_BYTES`]. A refused value fails the token
//! with 401 `claim_not_forwardable` rather than dropping the header: an upstream that trusts
//! the header must never see less than the token says (a missing tenant header falling back
//! to a default tenant) or something the token did not say (entries split differently).
//!
//! # Performance
//!
//! One allocation per value kept; nothing is copied for claims that are not configured.

use std::fmt::Write as _;

// By name, not the prelude glob (see `disallowed-methods` in clippy.toml).
use simd_json::prelude::{TypedValue, ValueAsScalar};
use simd_json::tape::Value;
use simd_json::ValueType;

use super::AuthError;

/// Longest identity value (subject, tenant, label, `jti`) accepted, in bytes; a revoked id
/// has the same bound.
pub const MAX_IDENTITY_BYTES: usize = 1024;

/// Longest claim header value rendered, in bytes (well under every upstream's line limit).
pub const MAX_CLAIM_HEADER_BYTES: usize = 4096;

/// Text that reads the same to every HTTP parser and log reader: no control character (C0,
/// DEL, C1, so no CR, LF, NUL, TAB or NEL), no Unicode line or paragraph separator (U+2028,
/// U+2029), and no leading or trailing whitespace (which parsers and `trim` calls drop).
pub fn is_clean_text(s: &str) -> bool {
    !s.chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
        && !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
}

/// Why `s` cannot be an identity value (subject, `jti`, revoked id), or `None`.
pub fn identity_problem(s: &str) -> Option<&'static str> {
    const _: () = assert!(MAX_IDENTITY_BYTES == 1024, "update the message below");
    if s.is_empty() || s.len() > MAX_IDENTITY_BYTES {
        Some("must be 1 to 1024 bytes")
    } else if !is_clean_text(s) {
        Some("must not contain control characters or line separators, or start or end with whitespace")
    } else {
        None
    }
}

/// A string or integer claim as an identity value (module docs). The `String` is one of this
/// thread's spares when there is one ([`give_back`] returns it when the identity is dropped),
/// so a warm worker allocates nothing for it.
pub fn identity(v: Value<'_, '_>) -> Result<String, AuthError> {
    let mut s = spare_string();
    let _ = match v.value_type() {
        ValueType::String => s.write_str(v.as_str().unwrap_or_default()),
        ValueType::I64 => write!(s, "{}", v.as_i64().unwrap_or_default()),
        ValueType::U64 => write!(s, "{}", v.as_u64().unwrap_or_default()),
        _ => {
            give_back(s);
            return Err(AuthError::InvalidClaim);
        }
    };
    match identity_problem(&s) {
        None => Ok(s),
        Some(_) => {
            give_back(s);
            Err(AuthError::InvalidClaim)
        }
    }
}

/// Spare identity strings a thread keeps: about the requests a worker holds at once.
pub const SPARE_KEEP: usize = 256;

thread_local! {
    /// This thread's spare identity strings (one pool per worker thread: nothing is shared).
    static SPARE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty string, a spare one when there is one.
fn spare_string() -> String {
    SPARE
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

thread_local! {
    /// This thread's spare lists of mapped claim headers (see [`copy_headers`]).
    static SPARE_HEADERS: std::cell::RefCell<Vec<Vec<(usize, String)>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Most mapped claim headers a kept spare list may hold room for.
const SPARE_HEADERS_MAX: usize = 16;

/// A copy of a cached identity's mapped claim headers in one of this thread's spare lists,
/// each value in a spare string: a warm worker allocates nothing for it.
pub fn copy_headers(src: &[(usize, String)]) -> Vec<(usize, String)> {
    let mut out = SPARE_HEADERS
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default();
    out.extend(src.iter().map(|(i, v)| (*i, copy_identity(v))));
    out
}

/// Keeps `headers` (and its values, see [`give_back`]) as spares, within the same bounds.
pub fn give_back_headers(mut headers: Vec<(usize, String)>) {
    for (_, v) in headers.drain(..) {
        give_back(v);
    }
    if headers.capacity() == 0 || headers.capacity() > SPARE_HEADERS_MAX {
        return;
    }
    let _ = SPARE_HEADERS.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < SPARE_KEEP {
            p.push(headers);
        }
    });
}

/// `s` in one of this thread's spare strings (a copy of a cached identity value).
pub fn copy_identity(s: &str) -> String {
    let mut out = spare_string();
    out.push_str(s);
    out
}

/// Keeps `s` as a spare (at most [`SPARE_KEEP`], none larger than an identity value).
pub fn give_back(mut s: String) {
    if s.capacity() == 0 || s.capacity() > MAX_IDENTITY_BYTES {
        return;
    }
    s.clear();
    let _ = SPARE.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < SPARE_KEEP {
            p.push(s);
        }
    });
}

/// The header value for a mapped claim (module docs): `Ok(None)` sends no header.
pub fn header_value(v: Value<'_, '_>, separator: &str) -> Result<Option<String>, AuthError> {
    const REFUSED: AuthError = AuthError::ClaimNotForwardable;
    let text = |s: &str| !s.is_empty() && is_clean_text(s);
    let mut out = String::new();
    match v.value_type() {
        ValueType::Null => return Ok(None),
        ValueType::String => {
            let s = v.as_str().unwrap_or_default();
            if !text(s) {
                return Err(REFUSED);
            }
            out.push_str(s);
        }
        ValueType::Bool => out.push_str(if v.as_bool() == Some(true) {
            "true"
        } else {
            "false"
        }),
        ValueType::I64 => out = v.as_i64().unwrap_or_default().to_string(),
        ValueType::U64 => out = v.as_u64().unwrap_or_default().to_string(),
        // `{:?}` is the shortest text that reads back as the same f64, and valid JSON:
        // `1.5`, `3.0`, `1e300`, `-2e-7` (JSON has no NaN or infinity to meet here).
        ValueType::F64 => {
            let _ = write!(out, "{:?}", v.as_f64().unwrap_or_default());
        }
        ValueType::Array => {
            let arr = v.as_array().ok_or(REFUSED)?;
            for (i, e) in arr.iter().enumerate() {
                let s = e.as_str().ok_or(REFUSED)?;
                if !text(s) || s.contains(separator) {
                    return Err(REFUSED);
                }
                if i > 0 {
                    out.push_str(separator);
                }
                out.push_str(s);
                if out.len() > MAX_CLAIM_HEADER_BYTES {
                    return Err(REFUSED);
                }
            }
        }
        _ => return Err(REFUSED),
    }
    if out.len() > MAX_CLAIM_HEADER_BYTES {
        return Err(REFUSED);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<T>(json: &str, f: impl FnOnce(Value<'_, '_>) -> T) -> T {
        let mut bytes = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).expect("json");
        f(tape.as_value())
    }

    fn header(json: &str, sep: &str) -> Result<Option<String>, AuthError> {
        with(json, |v| header_value(v, sep))
    }

    #[test]
    fn header_values_by_shape() {
        let ok: &[(&str, &str, Option<&str>)] = &[
            (r#""alice""#, " ", Some("alice")),
            (r#""user 42""#, " ", Some("user 42")),
            (r#""José""#, " ", Some("José")),
            (r#""a\"b""#, " ", Some("a\"b")),
            ("42", " ", Some("42")),
            ("-7", " ", Some("-7")),
            ("0", " ", Some("0")),
            ("18446744073709551615", " ", Some("18446744073709551615")),
            ("-9223372036854775808", " ", Some("-9223372036854775808")),
            ("1.5", " ", Some("1.5")),
            ("3.0", " ", Some("3.0")),
            ("-0.25", " ", Some("-0.25")),
            ("1e300", " ", Some("1e300")),
            ("true", " ", Some("true")),
            ("false", " ", Some("false")),
            ("null", " ", None),
            ("[]", " ", Some("")),
            (r#"["read"]"#, " ", Some("read")),
            (r#"["read","write","admin"]"#, " ", Some("read write admin")),
            (r#"["read","write"]"#, ",", Some("read,write")),
            (r#"["read all","write"]"#, ",", Some("read all,write")),
            (r#"["a","b"]"#, ", ", Some("a, b")),
            (r#"["a,b"]"#, " ", Some("a,b")),
        ];
        for (json, sep, want) in ok {
            assert_eq!(
                header(json, sep),
                Ok(want.map(str::to_owned)),
                "{json} sep {sep:?}"
            );
        }
        let refused: &[(&str, &str)] = &[
            (r#""""#, " "),
            ("{}", " "),
            (r#"{"a":"b"}"#, " "),
            ("[[]]", " "),
            (r#"[["a"]]"#, " "),
            ("[1,2]", " "),
            (r#"["a",1]"#, " "),
            ("[true]", " "),
            ("[null]", " "),
            (r#"[{"a":1}]"#, " "),
            (r#"[""]"#, " "),
            (r#"["a",""]"#, ","),
            (r#"["read write"]"#, " "),
            (r#"["a,b","c"]"#, ","),
            (r#"["a"," b"]"#, ","),
            (r#"["a","b "]"#, ","),
            (r#"["a","b\nc"]"#, ","),
        ];
        for (json, sep) in refused {
            assert_eq!(
                header(json, sep),
                Err(AuthError::ClaimNotForwardable),
                "{json} sep {sep:?}"
            );
        }
    }

    /// Everything that could end or fold a header line, hide in a log, or be trimmed away,
    /// at the start, middle and end of a string claim and of an array entry.
    #[test]
    fn injection_is_refused_in_every_position() {
        let bad = [
            "\r\n", "\n", "\r", "\0", "\t", "\u{b}", "\u{c}", "\u{1b}", "\u{7f}", "\u{85}",
            "\u{9f}", "\u{2028}", "\u{2029}",
        ];
        let json = |s: &str| {
            let mut out = String::new();
            for c in s.chars() {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            out
        };
        for b in bad {
            let b = json(b);
            for s in [
                format!("{b}x"),
                format!("x{b}"),
                format!("x{b}x-evil: 1"),
                b.clone(),
            ] {
                for (claim, sep) in [
                    (format!("\"{s}\""), " "),
                    (format!("[\"ok\",\"{s}\"]"), ","),
                ] {
                    assert_eq!(
                        header(&claim, sep),
                        Err(AuthError::ClaimNotForwardable),
                        "{claim}"
                    );
                }
                assert!(with(&format!("\"{s}\""), identity).is_err(), "identity {s}");
            }
        }
        // Raw (unescaped) UTF-8 line separators too, and whitespace at either end.
        for s in ["a\u{2028}b", " a", "a ", "\u{a0}a", "a\u{3000}", "\u{2003}"] {
            assert_eq!(
                header(&format!("\"{s}\""), " "),
                Err(AuthError::ClaimNotForwardable),
                "{s:?}"
            );
            assert!(with(&format!("\"{s}\""), identity).is_err(), "{s:?}");
        }
    }

    #[test]
    fn rendered_values_are_bounded() {
        let at_limit = "x".repeat(MAX_CLAIM_HEADER_BYTES);
        assert_eq!(
            header(&format!("\"{at_limit}\""), " "),
            Ok(Some(at_limit.clone()))
        );
        let over = format!("\"{at_limit}x\"");
        assert_eq!(header(&over, " "), Err(AuthError::ClaimNotForwardable));
        // Entries that each fit but together do not.
        let half = "y".repeat(MAX_CLAIM_HEADER_BYTES / 2);
        let arr = format!("[\"{half}\",\"{half}\"]");
        assert_eq!(header(&arr, " "), Err(AuthError::ClaimNotForwardable));
        let arr = format!("[\"{half}\",\"{}\"]", &half[1..]);
        assert_eq!(
            header(&arr, " ").unwrap().unwrap().len(),
            MAX_CLAIM_HEADER_BYTES
        );
    }

    #[test]
    fn identity_values() {
        for (json, want) in [
            (r#""alice""#, Some("alice")),
            (r#""user 42""#, Some("user 42")),
            ("42", Some("42")),
            ("-1", Some("-1")),
            (r#""""#, None),
            (r#"" alice""#, None),
            (r#""alice ""#, None),
            (r#""alice\n""#, None),
            ("1.5", None),
            ("true", None),
            ("null", None),
            (r#"["a"]"#, None),
            ("{}", None),
        ] {
            assert_eq!(with(json, identity).ok().as_deref(), want, "{json}");
        }
        let max = "s".repeat(MAX_IDENTITY_BYTES);
        assert!(with(&format!("\"{max}\""), identity).is_ok());
        assert!(with(&format!("\"{max}s\""), identity).is_err());
    }

    /// Identity strings come from the thread's spares, whatever a spare held before (longer,
    /// shorter, refused values), read exactly as from a fresh string; the spares are bounded.
    #[test]
    fn identity_values_reuse_spare_strings() {
        let values = [
            (
                r#""a-much-longer-subject-than-the-next""#,
                Some("a-much-longer-subject-than-the-next"),
            ),
            (r#""b""#, Some("b")),
            ("-9223372036854775808", Some("-9223372036854775808")),
            ("18446744073709551615", Some("18446744073709551615")),
            (r#""bad\u0000""#, None),
            ("7", Some("7")),
            ("1.5", None),
            (r#""\u00e9t\u00e9""#, Some("été")),
        ];
        for _ in 0..3 {
            for (json, want) in values {
                let got = with(json, identity);
                assert_eq!(got.as_deref().ok(), want, "{json}");
                if let Ok(s) = got {
                    give_back(s);
                }
            }
        }
        let reused = with(r#""x""#, identity).unwrap();
        assert!(reused.capacity() > 1, "a spare string was not reused");
        for _ in 0..SPARE_KEEP + 10 {
            give_back(String::with_capacity(8));
        }
        give_back(String::with_capacity(MAX_IDENTITY_BYTES + 1));
        SPARE.with(|p| {
            let p = p.borrow();
            assert!(p.len() <= SPARE_KEEP);
            assert!(p
                .iter()
                .all(|s| s.is_empty() && s.capacity() <= MAX_IDENTITY_BYTES));
        });
    }

    /// A cached identity's mapped headers are copied into spare lists and strings, which come
    /// back when the identity is dropped; lists that grew large are not kept.
    #[test]
    fn header_lists_are_reused() {
        let src = vec![(0usize, "alice".to_string()), (2, "acme".to_string())];
        let first = copy_headers(&src);
        assert_eq!(first, src);
        let ptr = first.as_ptr();
        give_back_headers(first);
        let again = copy_headers(&src);
        assert_eq!(again, src);
        assert_eq!(again.as_ptr(), ptr, "the spare list was reused");
        give_back_headers(again);
        let big: Vec<(usize, String)> = (0..SPARE_HEADERS_MAX + 1)
            .map(|i| (i, "v".into()))
            .collect();
        give_back_headers(copy_headers(&big));
        let small = copy_headers(&[]);
        assert!(
            small.capacity() <= SPARE_HEADERS_MAX,
            "a large list is not kept"
        );
    }
}
