//! The HTTP settings a config writes: the `[limits]` table and the header names config keys
//! give. The codec itself ([`crate::http`], the `shardgate-http` crate) knows nothing of
//! config files; this module turns what a config says into its types and reports each bad
//! value as a [`ConfigProblem`] naming its key.

use std::time::Duration;

use serde::Deserialize;

use crate::config_types::ConfigProblem;
use crate::http::fields::{forbidden_config_header, HeaderRole};
use crate::http::limits::{Limits, MAX_HEADERS};

/// The `[limits]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<usize>,
    pub max_request_line: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_idle_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub min_body_rate_bytes_per_s: Option<u64>,
    pub body_rate_grace_ms: Option<u64>,
    pub max_streaming_uploads: Option<u32>,
    pub keepalive_idle_timeout_ms: Option<u64>,
    pub max_connections_per_worker: Option<usize>,
    pub allow_underscores_in_headers: Option<bool>,
}

impl RawLimits {
    /// Applies overrides to the defaults; `problems` gets one entry per bad value.
    pub fn build(&self, problems: &mut Vec<ConfigProblem>) -> Limits {
        let d = Limits::default();
        let ms = Duration::from_millis;
        let l = Limits {
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_request_line: self.max_request_line.unwrap_or(d.max_request_line),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            max_body_bytes: self.max_body_bytes.unwrap_or(d.max_body_bytes),
            header_read_timeout: self
                .header_read_timeout_ms
                .map_or(d.header_read_timeout, ms),
            body_idle_timeout: self.body_idle_timeout_ms.map_or(d.body_idle_timeout, ms),
            body_read_timeout: self.body_read_timeout_ms.map_or(d.body_read_timeout, ms),
            min_body_rate: self.min_body_rate_bytes_per_s.unwrap_or(d.min_body_rate),
            body_rate_grace: self.body_rate_grace_ms.map_or(d.body_rate_grace, ms),
            max_streaming_uploads: self
                .max_streaming_uploads
                .unwrap_or(d.max_streaming_uploads),
            keepalive_idle_timeout: self
                .keepalive_idle_timeout_ms
                .map_or(d.keepalive_idle_timeout, ms),
            max_connections_per_worker: self
                .max_connections_per_worker
                .unwrap_or(d.max_connections_per_worker),
            allow_underscores_in_headers: self
                .allow_underscores_in_headers
                .unwrap_or(d.allow_underscores_in_headers),
        };
        let mut bad = |key: &str, msg: String| {
            problems.push(ConfigProblem::new(format!("limits.{key}"), msg))
        };
        if !(256..=1024 * 1024).contains(&l.max_header_bytes) {
            bad("max_header_bytes", "must be between 256 and 1048576".into());
        }
        if l.max_request_line < 64 || l.max_request_line > l.max_header_bytes {
            bad(
                "max_request_line",
                "must be at least 64 and at most max_header_bytes".into(),
            );
        }
        if l.max_headers == 0 || l.max_headers > MAX_HEADERS {
            bad(
                "max_headers",
                format!("must be between 1 and {MAX_HEADERS}"),
            );
        }
        if l.max_connections_per_worker == 0 {
            bad("max_connections_per_worker", "must be at least 1".into());
        }
        for (key, v) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_idle_timeout_ms", self.body_idle_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("body_rate_grace_ms", self.body_rate_grace_ms),
            ("keepalive_idle_timeout_ms", self.keepalive_idle_timeout_ms),
        ] {
            if v == Some(0) {
                bad(key, "must be greater than 0".into());
            }
        }
        l
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fields::vectors::{cases, REFUSED};
    use crate::http::limits::{
        BODY_RATE_GRACE, BODY_READ_TIMEOUT, MAX_STREAMING_UPLOADS, MIN_BODY_RATE_BYTES_PER_S,
    };

    fn build(toml_text: &str) -> (Limits, Vec<String>) {
        let raw: RawLimits = toml::from_str(toml_text).unwrap();
        let mut problems = Vec::new();
        let l = raw.build(&mut problems);
        (l, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn body_pace_and_upload_keys_default_and_override() {
        let (d, problems) = build("");
        assert!(problems.is_empty());
        assert_eq!(
            (
                d.body_read_timeout,
                d.min_body_rate,
                d.body_rate_grace,
                d.max_streaming_uploads
            ),
            (
                BODY_READ_TIMEOUT,
                MIN_BODY_RATE_BYTES_PER_S,
                BODY_RATE_GRACE,
                MAX_STREAMING_UPLOADS
            )
        );
        let (l, problems) = build(
            "body_read_timeout_ms = 500\nmin_body_rate_bytes_per_s = 0\n\
             body_rate_grace_ms = 20\nmax_streaming_uploads = 0",
        );
        assert!(problems.is_empty());
        assert_eq!(l.body_read_timeout, Duration::from_millis(500));
        assert_eq!(l.body_rate_grace, Duration::from_millis(20));
        // 0 is meaningful for these two: no rate check, and every body read before forwarding.
        assert_eq!((l.min_body_rate, l.max_streaming_uploads), (0, 0));
    }

    #[test]
    fn zero_body_deadlines_are_refused_each_by_name() {
        let (_, problems) = build("body_read_timeout_ms = 0\nbody_rate_grace_ms = 0");
        assert_eq!(
            problems,
            [
                "limits.body_read_timeout_ms: must be greater than 0",
                "limits.body_rate_grace_ms: must be greater than 0"
            ]
        );
        let unknown = toml::from_str::<RawLimits>("body_timeout_ms = 5");
        assert!(unknown.is_err(), "a mistyped key fails loudly");
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
