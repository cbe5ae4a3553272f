//! Which header names a config may use, and which bytes may form a header value the gateway
//! writes itself. One place, so every config key that names a header applies the same rules.
//!
//! A config names headers in two ways: headers the gateway **sets** toward the upstream from
//! verified data (`[[auth.claim_headers]] header`), and headers it **reads** as identity or
//! routing input (`[auth] header`, a route's `label_header` and `sticky.header`).
//!
//! | class | examples | set | read |
//! |-------|----------|-----|------|
//! | framing and hop-by-hop (RFC 9110 §7.6.1, RFC 9112 §6–7) | `content-length`, `transfer-encoding`, `host`, `connection`, `keep-alive`, `te`, `trailer`, `upgrade`, `expect`, `http2-settings`, `proxy-*` | refused | refused |
//! | written by the gateway itself | `x-forwarded-*`, `forwarded`, `via`, `x-request-id`, `x-real-ip` | refused | refused |
//! | credentials | `authorization`, `cookie`, `set-cookie` | refused | allowed |
//! | body description (`content-*`) | `content-type`, `content-encoding` | refused | allowed |
//! | method/target overrides upstream frameworks honour | `x-http-method-override`, `x-http-method`, `x-method-override`, `x-original-url`, `x-rewrite-url` | refused | allowed |
//!
//! Framing headers are the smuggling class: a value there (or a second copy beside the
//! gateway's own) changes where the upstream thinks the request ends. Headers the gateway
//! writes are refused in both roles because the value read from the client is not the value
//! the upstream sees, and a claim copied into one would sit beside the gateway's own. The
//! last three classes only matter when the gateway writes them: a claim must never become a
//! credential, a body type or a different method or path at the upstream.
//!
//! Names are compared ASCII case-insensitively and must be RFC 9110 tokens (§5.1) first.

/// What a config does with a header it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderRole {
    /// The gateway writes it toward the upstream (claim headers).
    Set,
    /// The gateway reads it from the client as identity or routing input.
    Read,
}

/// Framing and hop-by-hop fields, exact names (`proxy-*` is matched as a prefix).
const FRAMING: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "http2-settings",
];

/// Fields the gateway writes on every forwarded request (`x-forwarded-*` as a prefix).
const GATEWAY_OWNED: &[&str] = &["forwarded", "via", "x-request-id", "x-real-ip"];

/// Credentials: allowed as the place a credential is read from, never as a claim target.
const CREDENTIALS: &[&str] = &["authorization", "cookie", "set-cookie"];

/// Headers common upstream frameworks honour as a replacement method or request target.
const OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// RFC 9110 §5.6.2 `token`: the syntax of a field name.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn listed(name: &str, list: &[&str]) -> bool {
    list.iter().any(|l| l.eq_ignore_ascii_case(name))
}

/// Why a config may not name `name` for `role`, or `None` when it may. The reason completes
/// a sentence that starts with the name.
pub fn forbidden_config_header(name: &str, role: HeaderRole) -> Option<&'static str> {
    if !is_token(name) {
        return Some("is not a valid header name (RFC 9110 token characters only)");
    }
    if listed(name, FRAMING) || has_prefix(name, "proxy-") {
        return Some(
            "is a framing or hop-by-hop header: a value there could end the request early or \
             smuggle a second one",
        );
    }
    if listed(name, GATEWAY_OWNED) || has_prefix(name, "x-forwarded-") {
        return Some("is written by the gateway itself on every forwarded request");
    }
    if role == HeaderRole::Read {
        return None;
    }
    if listed(name, CREDENTIALS) {
        return Some("is a credential header; a claim must never become a credential");
    }
    if has_prefix(name, "content-") {
        return Some("describes the request body; the upstream would misread the body");
    }
    if listed(name, OVERRIDES) {
        return Some("overrides the request method or target at common upstream frameworks");
    }
    None
}

/// RFC 9110 §5.5 `field-value` the gateway can write without changing its meaning: no
/// control byte (CR, LF, NUL, HTAB and the rest of C0, DEL), and no leading or trailing
/// space, which a parser would strip. Bytes ≥ 0x80 (obs-text) are allowed.
pub fn is_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b >= 0x20 && b != 0x7f)
        && v.first().is_none_or(|&b| b != b' ')
        && v.last().is_none_or(|&b| b != b' ')
}

/// A `Host` value the gateway may send (RFC 9110 §7.2: `uri-host [ ":" port ]`): an
/// authority without userinfo, so no space, control byte, `@`, `/`, `?` or `#`.
pub fn is_host_value(v: &str) -> bool {
    !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_graphic())
        && !v.contains(['@', '/', '?', '#'])
        && v.parse::<http::uri::Authority>().is_ok_and(|a| {
            let port = &v[a.host().len()..];
            port.is_empty()
                || port.strip_prefix(':').is_some_and(|p| {
                    p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
                })
        })
}

/// Names every config key that names a header must refuse, for this crate's tests and the
/// main crate's tests of each such key (built with the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod vectors {
    /// Every refused name, and whether it is refused as a header the gateway reads too.
    pub const REFUSED: &[(&str, bool)] = &[
        ("content-length", true),
        ("transfer-encoding", true),
        ("host", true),
        ("connection", true),
        ("keep-alive", true),
        ("te", true),
        ("trailer", true),
        ("upgrade", true),
        ("expect", true),
        ("http2-settings", true),
        ("proxy-connection", true),
        ("proxy-authorization", true),
        ("proxy-authenticate", true),
        ("proxy-anything", true),
        ("x-forwarded-for", true),
        ("x-forwarded-proto", true),
        ("x-forwarded-host", true),
        ("x-forwarded-prefix", true),
        ("forwarded", true),
        ("via", true),
        ("x-request-id", true),
        ("x-real-ip", true),
        ("authorization", false),
        ("cookie", false),
        ("set-cookie", false),
        ("content-type", false),
        ("content-encoding", false),
        ("x-http-method-override", false),
        ("x-http-method", false),
        ("x-method-override", false),
        ("x-original-url", false),
        ("x-rewrite-url", false),
    ];

    /// `name` as written, upper-cased, and in alternating case.
    pub fn cases(name: &str) -> [String; 3] {
        let mixed: String = name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        [name.to_owned(), name.to_ascii_uppercase(), mixed]
    }
}

#[cfg(test)]
mod tests {
    use super::vectors::{cases, REFUSED};
    use super::*;

    #[test]
    fn refused_names_in_every_case() {
        for &(name, in_read) in REFUSED {
            for n in cases(name) {
                assert!(
                    forbidden_config_header(&n, HeaderRole::Set).is_some(),
                    "set {n}"
                );
                assert_eq!(
                    forbidden_config_header(&n, HeaderRole::Read).is_some(),
                    in_read,
                    "read {n}"
                );
            }
        }
    }

    #[test]
    fn ordinary_names_are_allowed_and_lowercased() {
        for name in [
            "x-user-id",
            "X-Tenant-Id",
            "x-scopes",
            "x-canary",
            "x-session-id",
            "x_user",
            "tee",
            "hosts",
            "x-proxy-user",
            "x-forwarded",
            "contentlength",
            "a!#$%&'*+-.^_`|~9",
        ] {
            for role in [HeaderRole::Set, HeaderRole::Read] {
                assert_eq!(forbidden_config_header(name, role), None, "{name}");
            }
        }
    }

    #[test]
    fn names_must_be_tokens() {
        for bad in [
            "",
            " x-user",
            "x-user ",
            "x user",
            "x-user:",
            "x-user\r\nx-evil",
            "x\0",
            "x\t",
            "(x)",
            "x/y",
            "x\"y",
            "ü",
            ":authority",
        ] {
            for role in [HeaderRole::Set, HeaderRole::Read] {
                let why = forbidden_config_header(bad, role).unwrap_or_else(|| panic!("{bad:?}"));
                assert!(why.contains("token"), "{bad:?}: {why}");
            }
        }
    }

    #[test]
    fn host_values() {
        for ok in [
            "api.example.com",
            "api.example.com:8443",
            "127.0.0.1:9001",
            "[::1]:80",
            "[::1]",
            "x",
        ] {
            assert!(is_host_value(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a\r\nx-evil: 1",
            "a\n",
            "a\0",
            " a",
            "user@host",
            "host/path",
            "host?q",
            "host#f",
            "host:port",
            "host:",
            "host:65536",
            "host:+1",
            "h\u{e9}",
        ] {
            assert!(!is_host_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn field_values() {
        for ok in [
            &b""[..],
            b"alice",
            b"a b",
            b"a,b",
            b"\xc3\xa9",
            b"\xe2\x80\xa8",
            b"!~",
        ] {
            assert!(is_field_value(ok), "{ok:?}");
        }
        for bad in [
            &b"a\r\nx: y"[..],
            b"a\nb",
            b"a\rb",
            b"a\0b",
            b"a\tb",
            b"\x7f",
            b"\x1b[31m",
            b" a",
            b"a ",
            b" ",
        ] {
            assert!(!is_field_value(bad), "{bad:?}");
        }
    }
}
