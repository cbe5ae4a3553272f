//! Configuration: raw TOML → validated → immutable snapshot, on the control thread.
//!
//! - [`raw`]: the file as written (serde, `deny_unknown_fields`); each stage's table is that
//!   stage's raw type.
//! - [`validate`]: [`RawConfig::validate`] builds a [`Snapshot`] or reports every problem.
//! - [`snapshot`]: the immutable [`Snapshot`] workers run on, and what a reload applies.
//!
//! The types every stage shares (problems, secrets, the validated upstream) are in the leaf
//! [`crate::config_types`]; stages import them from there, and only this module imports the
//! stages' raw configs. They are re-exported here for callers outside the stages.

pub mod raw;
pub mod snapshot;
pub mod validate;

use std::path::Path;

pub use crate::config_types::{ConfigError, ConfigProblem, Endpoint, Secret, Upstream};
pub use raw::{
    DriverChoice, RawAccessLog, RawAdmin, RawAdminToken, RawConfig, RawMetrics, RawRegistry,
    RawServer, RawUpstream, RawWorkers,
};
pub use snapshot::{
    AccessLogSettings, AccessLogTarget, AdminSettings, MetricsSettings, NamedToken,
    RegistrySettings, ServerSettings, Snapshot, ADMIN_TOKEN_NAME,
};
pub use validate::{
    admin_token_problem, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_POOL_MAX_IDLE, DEFAULT_POOL_MAX_REQUESTS, MIN_ADMIN_TOKEN_BYTES,
};

/// Reads, parses and validates `path`. `generation` is stamped on the snapshot.
pub fn load(path: &Path, generation: u64) -> Result<Snapshot, ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let text = std::fs::read(path).map_err(|e| {
        fail(vec![ConfigProblem::new(
            "(file)",
            format!("cannot read: {e}"),
        )])
    })?;
    load_bytes(path, &text, generation)
}

/// Parses and validates `bytes`, the content of `path` as read by the caller (the control
/// thread reads once, so the bytes it checked for stability are the bytes it loads).
pub fn load_bytes(path: &Path, bytes: &[u8], generation: u64) -> Result<Snapshot, ConfigError> {
    let raw = parse_bytes(path, bytes)?;
    raw.validate(base_dir(path), generation)
        .map_err(|problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        })
}

/// Parses `bytes`, the content of `path`, without validating them: what the control thread
/// combines with the model registry before validating the whole.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    let fail = |problems| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(vec![ConfigProblem::new(
            "(file)",
            format!("not UTF-8: {e}"),
        )])
    })?;
    parse_str(text).map_err(fail)
}

/// The directory relative paths in the config file at `path` resolve against.
pub fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// Parses and validates config text; relative paths resolve against `base_dir`.
pub fn from_str(
    text: &str,
    base_dir: &Path,
    generation: u64,
) -> Result<Snapshot, Vec<ConfigProblem>> {
    parse_str(text)?.validate(base_dir, generation)
}

/// Parses config text into the raw config, naming the key of a syntax or type error.
fn parse_str(text: &str) -> Result<RawConfig, Vec<ConfigProblem>> {
    toml::from_str(text).map_err(|e| {
        let key = e.span().map_or("(syntax)".to_string(), |s| {
            let line = text[..s.start].matches('\n').count() + 1;
            match key_path_at(text, s.start) {
                Some(path) => format!("{path} (line {line})"),
                None => format!("line {line}"),
            }
        });
        vec![ConfigProblem::new(key, e.message().to_string())]
    })
}

/// The key path (`routes[0].targets[1].weight`) of the key or value at byte `pos`, so a
/// type error names the key, not just the line.
fn key_path_at(text: &str, pos: usize) -> Option<String> {
    use toml_edit::{Item, Table, Value};
    fn hit(span: Option<std::ops::Range<usize>>, pos: usize) -> bool {
        span.is_some_and(|s| s.contains(&pos))
    }
    fn in_value(v: &Value, path: String, pos: usize) -> Option<String> {
        match v {
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, e)| in_value(e, format!("{path}[{i}]"), pos))
                .or_else(|| hit(a.span(), pos).then_some(path)),
            Value::InlineTable(t) => t
                .iter()
                .find_map(|(k, e)| {
                    let p = format!("{path}.{k}");
                    if t.key(k).is_some_and(|key| hit(key.span(), pos)) {
                        return Some(p);
                    }
                    in_value(e, p, pos)
                })
                .or_else(|| hit(t.span(), pos).then_some(path)),
            other => hit(other.span(), pos).then_some(path),
        }
    }
    fn in_table(t: &Table, prefix: &str, pos: usize) -> Option<String> {
        t.iter().find_map(|(k, item)| {
            let path = if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            };
            if t.key(k).is_some_and(|key| hit(key.span(), pos)) {
                return Some(path);
            }
            match item {
                Item::Value(v) => in_value(v, path, pos),
                Item::Table(sub) => in_table(sub, &path, pos),
                Item::ArrayOfTables(a) => a
                    .iter()
                    .enumerate()
                    .find_map(|(i, sub)| in_table(sub, &format!("{path}[{i}]"), pos)),
                Item::None => None,
            }
        })
    }
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    in_table(doc.as_table(), "", pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[upstreams]]
name = "mock"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/v1/*rest"
methods = ["POST"]
upstream = "mock"
"#;

    #[test]
    fn good_config_builds() {
        let s = from_str(GOOD, Path::new("."), 1).unwrap();
        assert_eq!(s.server.cores.len(), 1);
        assert_eq!(s.upstreams[0].endpoints[0].addr.port(), 9000);
        assert!(s.router.lookup("POST", "/v1/chat").is_ok());
        assert!(matches!(
            s.router.lookup("GET", "/v1/chat"),
            Err(crate::route::RouteError::MethodNotAllowed(_))
        ));
        assert!(s.router.lookup("POST", "/v2").is_err());
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[server]
listen = "nope"
workers = 0
[[upstreams]]
name = "a"
endpoints = []
connect_timeout_ms = 0
[[routes]]
path = "/x"
upstream = "missing"
methods = ["G(T"]
[[routes]]
path = "y"
upstream = "a"
"#;
        let problems = from_str(text, Path::new("."), 1).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "server.listen",
            "server.workers",
            "upstreams[0].endpoints",
            "upstreams[0].connect_timeout_ms",
            "routes[0].upstream",
            "routes[1].path",
            "routes[0].methods[0]",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn metrics_and_access_log_settings() {
        let s = from_str(GOOD, Path::new("/etc/sg"), 1).unwrap();
        assert!(s.metrics.per_route);
        assert!(s.access_log.is_none());
        let text = format!(
            "{GOOD}[metrics]\nper_route = false\n[access_log]\npath = \"access.jsonl\"\nsample_rate = 0.01\n"
        );
        let s = from_str(&text, Path::new("/etc/sg"), 1).unwrap();
        assert!(!s.metrics.per_route);
        let a = s.access_log.unwrap();
        assert_eq!(
            a.target,
            AccessLogTarget::File(PathBuf::from("/etc/sg/access.jsonl"))
        );
        assert_eq!(a.sample_rate, 0.01);
        let bad = format!("{GOOD}[access_log]\npath = \"\"\nsample_rate = 1.5\n");
        let keys: Vec<String> = from_str(&bad, Path::new("."), 1)
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["access_log.sample_rate", "access_log.path"]);
    }

    /// `GOOD` with an `[admin]` whose token is `token` (a TOML inline table).
    fn with_admin_token(token: &str) -> String {
        format!("{GOOD}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {token}\n")
    }

    /// `s` as a TOML basic string, every control character escaped.
    fn toml_str(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' | '\\' => out.extend(['\\', c]),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn admin_token_problems(text: &str, base: &Path) -> Vec<ConfigProblem> {
        match from_str(text, base, 1) {
            Ok(s) => panic!("accepted token {:?}", s.admin.and_then(|a| a.token)),
            Err(p) => p,
        }
    }

    #[test]
    fn weak_admin_tokens_are_config_errors_from_every_source() {
        let bad: &[(&str, &str)] = &[
            ("", "is empty"),
            ("short-token", "is 11 bytes; at least 16"),
            ("fifteen-bytes!!", "is 15 bytes"),
            ("                ", "only whitespace"),
            ("\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t", "only whitespace"),
            ("\n", "only whitespace"),
            ("a-long-enough-token\n", "control characters"),
            ("a-long-enough\0token", "control characters"),
            ("a-long-enough\x7ftoken", "control characters"),
            ("a-long-enough\ttoken", "control characters"),
            (" a-long-enough-token", "whitespace"),
            ("a-long-enough-token ", "whitespace"),
        ];
        let dir = std::env::temp_dir().join(format!("sg-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (token, want)) in bad.iter().enumerate() {
            // Inline value.
            let inline = toml_str(token);
            let text = with_admin_token(&format!("{{ value = {inline} }}"));
            let p = admin_token_problems(&text, &dir);
            assert_eq!(p.len(), 1, "{token:?}: {p:?}");
            assert_eq!(p[0].key, "admin.token", "{token:?}");
            assert!(p[0].message.contains(want), "{token:?}: {}", p[0].message);
            assert!(p[0].message.contains("inline value"), "{}", p[0].message);
            // Environment variable (set, but weak; an environment cannot hold NUL).
            if !token.contains('\0') {
                let var = format!("SG_TEST_WEAK_ADMIN_TOKEN_{i}");
                std::env::set_var(&var, token);
                let text = with_admin_token(&format!("{{ env = \"{var}\" }}"));
                let p = admin_token_problems(&text, &dir);
                assert_eq!(p[0].key, "admin.token", "{token:?}");
                assert!(
                    p[0].message.contains(want),
                    "env {token:?}: {}",
                    p[0].message
                );
                assert!(p[0].message.contains(&var), "{}", p[0].message);
            }
            // File: one trailing newline is stripped, so write it with one more.
            let file = format!("token-{i}");
            std::fs::write(dir.join(&file), format!("{token}\n")).unwrap();
            let p =
                admin_token_problems(&with_admin_token(&format!("{{ file = \"{file}\" }}")), &dir);
            assert_eq!(p[0].key, "admin.token", "{token:?}");
            assert!(
                p[0].message.contains(want),
                "file {token:?}: {}",
                p[0].message
            );
            assert!(p[0].message.contains(&file), "{}", p[0].message);
        }
        // A file holding only a newline is an empty token.
        std::fs::write(dir.join("newline"), "\n").unwrap();
        let p = admin_token_problems(&with_admin_token("{ file = \"newline\" }"), &dir);
        assert!(p[0].message.contains("is empty"), "{p:?}");
        // A weak token on a non-loopback address is reported once, as weak.
        let text = with_admin_token("{ value = \"x\" }").replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"0.0.0.0:0\"",
        );
        let p = admin_token_problems(&text, &dir);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "admin.token");

        for good in [
            "0123456789abcdef",
            "a token with inner spaces",
            "ünïcødé-tøken-ok",
        ] {
            let inline = toml_str(good);
            let s = from_str(
                &with_admin_token(&format!("{{ value = {inline} }}")),
                &dir,
                1,
            )
            .unwrap_or_else(|p| panic!("{good:?}: {p:?}"));
            assert_eq!(s.admin.unwrap().token.unwrap(), good.as_bytes());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn named_admin_tokens_are_checked_like_the_admin_token() {
        let tokens = |list: &str| {
            format!(
                "{GOOD}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {{ value = \"the-admin-token-0123\" }}\ntokens = [{list}]\n"
            )
        };
        let ok = from_str(
            &tokens(r#"{ name = "alice", token = { value = "alice-token-0123456" } }, { name = "ci.bot@x", token = { value = "ci-token-0123456789" } }"#),
            Path::new("."),
            1,
        )
        .unwrap();
        let admin = ok.admin.unwrap();
        let names: Vec<&str> = admin.named_tokens().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["admin", "alice", "ci.bot@x"]);
        assert!(admin.has_token());
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{ name = "", token = { value = "alice-token-0123456" } }"#,
                "admin.tokens[0].name",
                "must be",
            ),
            (
                r#"{ name = "a b", token = { value = "alice-token-0123456" } }"#,
                "admin.tokens[0].name",
                "must be",
            ),
            (
                r#"{ name = "admin", token = { value = "alice-token-0123456" } }"#,
                "admin.tokens[0].name",
                "taken",
            ),
            (
                r#"{ name = "a", token = { value = "alice-token-0123456" } }, { name = "a", token = { value = "other-token-0123456" } }"#,
                "admin.tokens[1].name",
                "taken",
            ),
            (
                r#"{ name = "a", token = { value = "short" } }"#,
                "admin.tokens[0].token",
                "at least 16",
            ),
            (
                r#"{ name = "a", token = { value = "the-admin-token-0123" } }"#,
                "admin.tokens[0].token",
                "same as another",
            ),
            (
                r#"{ name = "a", token = { value = "alice-token-0123456" } }, { name = "b", token = { value = "alice-token-0123456" } }"#,
                "admin.tokens[1].token",
                "same as another",
            ),
            (
                r#"{ name = "a", token = { env = "SG_TEST_UNSET_NAMED_TOKEN" } }"#,
                "admin.tokens[0].token",
                "not set",
            ),
        ];
        for (list, key, want) in cases {
            let p = from_str(&tokens(list), Path::new("."), 1).unwrap_err();
            assert_eq!(p.len(), 1, "{list}: {p:?}");
            assert_eq!(p[0].key, *key, "{list}");
            assert!(p[0].message.contains(want), "{list}: {}", p[0].message);
        }
        // Named tokens alone protect a non-loopback admin address.
        let text = format!(
            "{GOOD}[admin]\nlisten = \"0.0.0.0:0\"\ntokens = [{{ name = \"a\", token = {{ value = \"alice-token-0123456\" }} }}]\n"
        );
        assert!(from_str(&text, Path::new("."), 1).is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected_with_location() {
        let text = GOOD.replace("workers = 1", "workers = 1\nwokers = 2");
        let problems = from_str(&text, Path::new("."), 1).unwrap_err();
        assert!(problems[0].message.contains("wokers"), "{problems:?}");
        assert_eq!(problems[0].key, "server.wokers (line 5)");
        let text = GOOD.replace(
            "methods = [\"POST\"]",
            "methods = [\"POST\"]\ntargets = [{ model = \"m\", weight = \"ninety\" }]",
        );
        let problems = from_str(&text, Path::new("."), 1).unwrap_err();
        assert!(
            problems[0]
                .key
                .starts_with("routes[0].targets[0].weight (line "),
            "{problems:?}"
        );
    }
}
