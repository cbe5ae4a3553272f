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

use crate::config_types::ConfigProblem;

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

/// Validates a header name a config gives at `key`: on success its lowercase form, otherwise
/// a problem naming the key is pushed.
pub fn config_header(
    name: &str,
    role: HeaderRole,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Box<str>> {
    match forbidden_config_header(name, role) {
        None => Some(name.to_ascii_lowercase().into()),
        Some(why) => {
            problems.push(ConfigProblem::new(key, format!("`{name}` {why}")));
            None
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refused name, and the roles it is refused in.
    const REFUSED: &[(&str, bool)] = &[
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

    fn cases(name: &str) -> [String; 3] {
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
            let mut problems = Vec::new();
            assert_eq!(
                config_header(name, HeaderRole::Set, "k", &mut problems).as_deref(),
                Some(name.to_ascii_lowercase().as_str())
            );
            assert!(problems.is_empty());
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
    fn problems_name_the_key_and_the_header() {
        let mut problems = Vec::new();
        assert_eq!(
            config_header(
                "Content-Length",
                HeaderRole::Set,
                "auth.claim_headers[2].header",
                &mut problems
            ),
            None
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "auth.claim_headers[2].header");
        assert!(
            problems[0]
                .message
                .starts_with("`Content-Length` is a framing"),
            "{}",
            problems[0].message
        );
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

    /// A whole config with `name` in each place a config names a header: the problem names
    /// that key path, and nothing else is wrong.
    fn place_problems(place: &str, name: &str) -> Vec<ConfigProblem> {
        let name = toml::Value::String(name.to_owned()).to_string();
        let (auth_header, claim_header, label, sticky) = match place {
            "auth.header" => (
                name.as_str(),
                "\"x-user-id\"",
                "\"x-canary\"",
                "\"x-session\"",
            ),
            "auth.claim_headers[0].header" => (
                "\"authorization\"",
                name.as_str(),
                "\"x-canary\"",
                "\"x-session\"",
            ),
            "routes[0].label_header" => (
                "\"authorization\"",
                "\"x-user-id\"",
                name.as_str(),
                "\"x-session\"",
            ),
            "routes[0].sticky.header" => (
                "\"authorization\"",
                "\"x-user-id\"",
                "\"x-canary\"",
                name.as_str(),
            ),
            _ => unreachable!(),
        };
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[[deployments]]
model = "m"
version = "1.0.0"
endpoints = ["127.0.0.1:9001"]
[[routes]]
path = "/v1/*rest"
targets = [{{ model = "m", weight = 1 }}]
label_header = {label}
sticky = {{ header = {sticky} }}
[auth]
header = {auth_header}
[[auth.claim_headers]]
claim = "sub"
header = {claim_header}
[[auth.keys]]
kid = "hs"
alg = "HS256"
secret = {{ value = "0123456789abcdef0123456789abcdef" }}
"#
        );
        crate::config::from_str(&text, std::path::Path::new("."), 1)
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn every_config_place_refuses_forbidden_names_in_any_case() {
        let places = [
            ("auth.header", HeaderRole::Read),
            ("auth.claim_headers[0].header", HeaderRole::Set),
            ("routes[0].label_header", HeaderRole::Read),
            ("routes[0].sticky.header", HeaderRole::Read),
        ];
        assert!(
            place_problems("auth.header", "authorization").is_empty(),
            "the control config is valid"
        );
        for &(name, in_read) in REFUSED {
            for n in cases(name) {
                for (place, role) in places {
                    let p = place_problems(place, &n);
                    if role == HeaderRole::Read && !in_read {
                        assert!(p.is_empty(), "{place} = {n}: {p:?}");
                        continue;
                    }
                    assert_eq!(p.len(), 1, "{place} = {n}: {p:?}");
                    assert_eq!(p[0].key, place, "{n}");
                    assert!(p[0].message.contains(&format!("`{n}`")), "{}", p[0].message);
                }
            }
        }
    }

    #[test]
    fn upstream_host_header_is_a_host_value() {
        let text = |host: &str| {
            let host = toml::Value::String(host.to_owned()).to_string();
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"up\"\nendpoints = [\"127.0.0.1:9001\"]\nhost_header = {host}\n[[routes]]\npath = \"/x\"\nupstream = \"up\"\n"
            )
        };
        for ok in ["api.example.com", "api.example.com:443"] {
            assert!(
                crate::config::from_str(&text(ok), std::path::Path::new("."), 1).is_ok(),
                "{ok}"
            );
        }
        for bad in ["a\r\nx-evil: 1", "a\nb", "a\0", "a b", "user@a", ""] {
            let p = crate::config::from_str(&text(bad), std::path::Path::new("."), 1).unwrap_err();
            assert_eq!(p.len(), 1, "{bad:?}: {p:?}");
            assert_eq!(p[0].key, "upstreams[0].host_header", "{bad:?}");
        }
    }
}
