//! The `[quota]` config table: raw serde types, validation, and the rules the data path uses.
//!
//! ```toml
//! [quota]
//! backend = "local"            # or "redis": one limit shared by several gateway processes
//! redis_url = "redis://127.0.0.1:6379/0"   # required with backend = "redis"
//! key_prefix = "shardgate"     # optional: prefix of the Redis keys
//! fail_mode = "fail_open"      # or "fail_closed": what to do while Redis is unreachable
//! [[quota.rules]]
//! name = "default"
//! key = "subject"              # "subject" | "tenant" | "api_key" | "client_ip"
//! model = "*"                  # a model name, or "*" for every model (one shared budget)
//! requests_per_minute = 1000
//! tokens_per_minute = 100000   # optional
//! burst = 50                   # optional: most requests one 600 ms slot may admit
//! reserve_max_tokens = false   # take `max_tokens` up front, refund the difference
//! ```

use serde::Deserialize;

use super::QuotaKey;
use crate::config_types::ConfigProblem;

/// Prefix of the Redis keys when `key_prefix` is not set.
pub const DEFAULT_KEY_PREFIX: &str = "shardgate";
/// `max_tokens` assumed for a reserving rule when the request sets none.
pub const DEFAULT_RESERVE_TOKENS: u32 = 4_096;
const ANY_MODEL: &str = "*";

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    #[serde(default)]
    pub backend: QuotaBackend,
    #[serde(default)]
    pub fail_mode: FailMode,
    pub redis_url: Option<String>,
    pub key_prefix: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QuotaBackend {
    #[default]
    Local,
    Redis,
}

/// What a remote backend outage does: admit (`fail_open`) or reject (`fail_closed`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    FailOpen,
    FailClosed,
}

/// Whose budget a request draws from. A caller without the value (no tenant claim, a JWT
/// under an `api_key` rule, an open route) is counted by its client address.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Subject,
    Tenant,
    /// The API key presented (its id, so a rotated key keeps its count).
    ApiKey,
    ClientIp,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub key: KeyKind,
    #[serde(default = "any_model")]
    pub model: String,
    pub requests_per_minute: u32,
    pub tokens_per_minute: Option<u32>,
    pub burst: Option<u32>,
    #[serde(default)]
    pub reserve_max_tokens: bool,
}

fn any_model() -> String {
    ANY_MODEL.to_owned()
}

/// Index of a rule in the validated config (a metrics label and part of every key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub u16);

/// A rule's limits, as sent with every lease request (so reloads take effect at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// [`UNLIMITED_REQUESTS`](super::UNLIMITED_REQUESTS): no request limit (a budget).
    pub requests: u32,
    pub tokens: Option<u64>,
    pub burst: Option<u32>,
    /// The window the token limit holds over (requests always use the minute).
    pub window: super::Window,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRule {
    pub id: RuleId,
    pub name: String,
    pub key: KeyKind,
    /// `None` matches every model.
    pub model: Option<String>,
    pub limits: Limits,
    pub reserve_max_tokens: bool,
}

impl QuotaRule {
    /// The budget `who` (the subject, tenant or client IP named by [`QuotaRule::key`]) draws
    /// from under this rule.
    #[inline]
    pub fn key_for(&self, who: &[u8]) -> QuotaKey {
        QuotaKey::new(self.id, who)
    }

    /// Tokens to take up front for a request with this `max_tokens`: 0 unless the rule
    /// reserves; never more than the rule's token limit (so a reservation can always fit).
    pub fn reservation(&self, max_tokens: Option<u32>) -> u64 {
        match (self.reserve_max_tokens, self.limits.tokens) {
            (true, Some(limit)) => {
                u64::from(max_tokens.unwrap_or(DEFAULT_RESERVE_TOKENS)).min(limit)
            }
            _ => 0,
        }
    }
}

/// Bound on one Redis connect, and on one command's write and read
/// ([`RedisSettings::io_timeout`]).
pub const REDIS_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// Where the Redis backend keeps its counts.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    /// Bound on one connect, and on one command's write and read: [`REDIS_IO_TIMEOUT`]
    /// (not a config key: a lease must be answered well within the wait of the request
    /// that asked for it; tests stretch it to hold a stalled Redis).
    pub io_timeout: std::time::Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisSettings")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// The validated `[quota]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSettings {
    pub backend: QuotaBackend,
    pub fail_mode: FailMode,
    /// Set exactly when `backend` is `Redis`.
    pub redis: Option<RedisSettings>,
    pub rules: Vec<QuotaRule>,
}

impl QuotaSettings {
    /// The rule for `model`: the one naming it exactly, else the `*` rule, else none (the
    /// request is not limited and gets no `X-RateLimit-*` headers).
    pub fn select(&self, model: &str) -> Option<&QuotaRule> {
        let mut any = None;
        for rule in &self.rules {
            match &rule.model {
                Some(m) if m == model => return Some(rule),
                None if any.is_none() => any = Some(rule),
                _ => {}
            }
        }
        any
    }
}

impl RawQuota {
    /// Checks the table; every problem is reported, keyed `quota.rules[i].field`.
    pub fn validate(&self) -> Result<QuotaSettings, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let redis = self.validate_redis(&mut problems);
        if self.rules.len() > usize::from(u16::MAX) {
            problems.push(ConfigProblem::new(
                "quota.rules",
                "too many rules (at most 65535)",
            ));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, raw) in self.rules.iter().enumerate() {
            let at = |field: &str| format!("quota.rules[{i}].{field}");
            if raw.name.trim().is_empty() {
                problems.push(ConfigProblem::new(at("name"), "must not be empty"));
            }
            if self.rules[..i].iter().any(|r| r.name == raw.name) {
                problems.push(ConfigProblem::new(
                    at("name"),
                    format!("duplicate rule `{}`", raw.name),
                ));
            }
            if raw.model.is_empty() {
                problems.push(ConfigProblem::new(
                    at("model"),
                    "must be a model name or \"*\"",
                ));
            }
            if self.rules[..i].iter().any(|r| r.model == raw.model) {
                problems.push(ConfigProblem::new(
                    at("model"),
                    format!("another rule already covers model `{}`", raw.model),
                ));
            }
            if raw.requests_per_minute == 0 {
                problems.push(ConfigProblem::new(
                    at("requests_per_minute"),
                    "must be at least 1",
                ));
            }
            if raw.tokens_per_minute == Some(0) {
                problems.push(ConfigProblem::new(
                    at("tokens_per_minute"),
                    "must be at least 1",
                ));
            }
            match raw.burst {
                Some(0) => problems.push(ConfigProblem::new(at("burst"), "must be at least 1")),
                Some(b) if b > raw.requests_per_minute => problems.push(ConfigProblem::new(
                    at("burst"),
                    "must not exceed requests_per_minute",
                )),
                _ => {}
            }
            if raw.reserve_max_tokens && raw.tokens_per_minute.is_none() {
                problems.push(ConfigProblem::new(
                    at("reserve_max_tokens"),
                    "needs tokens_per_minute",
                ));
            }
            rules.push(QuotaRule {
                id: RuleId(i.min(usize::from(u16::MAX)) as u16),
                name: raw.name.clone(),
                key: raw.key,
                model: (raw.model != ANY_MODEL).then(|| raw.model.clone()),
                limits: Limits {
                    requests: raw.requests_per_minute,
                    tokens: raw.tokens_per_minute.map(u64::from),
                    burst: raw.burst,
                    window: super::Window::Minute,
                },
                reserve_max_tokens: raw.reserve_max_tokens,
            });
        }
        if problems.is_empty() {
            Ok(QuotaSettings {
                backend: self.backend,
                fail_mode: self.fail_mode,
                redis,
                rules,
            })
        } else {
            Err(problems)
        }
    }
}

impl RawQuota {
    fn validate_redis(&self, problems: &mut Vec<ConfigProblem>) -> Option<RedisSettings> {
        let prefix = self.key_prefix.as_deref().unwrap_or(DEFAULT_KEY_PREFIX);
        if prefix.is_empty() || prefix.contains(|c: char| c.is_whitespace() || "{}".contains(c)) {
            problems.push(ConfigProblem::new(
                "quota.key_prefix",
                "must be non-empty, without spaces or braces",
            ));
        }
        if self.backend != QuotaBackend::Redis {
            return None;
        }
        let Some(url) = &self.redis_url else {
            problems.push(ConfigProblem::new(
                "quota.redis_url",
                "required when backend = \"redis\"",
            ));
            return None;
        };
        if let Err(e) = redis::Client::open(url.as_str()) {
            problems.push(ConfigProblem::new(
                "quota.redis_url",
                format!("not a usable Redis URL: {e}"),
            ));
        }
        Some(RedisSettings {
            url: url.clone(),
            key_prefix: prefix.to_owned(),
            io_timeout: REDIS_IO_TIMEOUT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        quota: RawQuota,
    }

    fn parse(s: &str) -> RawQuota {
        toml::from_str::<Doc>(s).expect("toml").quota
    }

    const EXAMPLE: &str = r#"
        [quota]
        backend = "local"
        fail_mode = "fail_open"
        [[quota.rules]]
        name = "default"
        key = "subject"
        model = "*"
        requests_per_minute = 1000
        tokens_per_minute = 100000
        burst = 50
        reserve_max_tokens = false
        [[quota.rules]]
        name = "big"
        key = "tenant"
        model = "llama-70b"
        requests_per_minute = 10
        tokens_per_minute = 5000
        reserve_max_tokens = true
    "#;

    #[test]
    fn example_validates_and_selects_exact_model_first() {
        let s = parse(EXAMPLE).validate().expect("valid");
        assert_eq!(s.select("llama-70b").map(|r| r.name.as_str()), Some("big"));
        assert_eq!(s.select("gpt-x").map(|r| r.name.as_str()), Some("default"));
        let big = s.select("llama-70b").unwrap();
        assert_eq!(big.reservation(Some(100)), 100);
        assert_eq!(
            big.reservation(None),
            5000.min(u64::from(DEFAULT_RESERVE_TOKENS))
        );
        assert_eq!(big.reservation(Some(1_000_000)), 5000);
        assert_eq!(s.select("x").unwrap().reservation(Some(100)), 0);
        assert_ne!(big.key_for(b"acme"), s.rules[0].key_for(b"acme"));
        assert_eq!(big.key_for(b"acme"), big.key_for(b"acme"));
    }

    #[test]
    fn no_star_rule_means_unlimited_models() {
        let q = parse(
            r#"[quota]
            [[quota.rules]]
            name = "a"
            key = "client_ip"
            model = "m"
            requests_per_minute = 1"#,
        );
        let s = q.validate().unwrap();
        assert!(s.select("other").is_none());
        assert_eq!(s.backend, QuotaBackend::Local);
        assert_eq!(s.fail_mode, FailMode::FailOpen);
        assert_eq!(s.redis, None);
    }

    #[test]
    fn redis_backend_takes_url_prefix_and_fail_mode() {
        let s = parse(
            r#"[quota]
            backend = "redis"
            redis_url = "redis://:secret@10.0.0.5:6380/2"
            key_prefix = "gw-eu"
            fail_mode = "fail_closed""#,
        )
        .validate()
        .unwrap();
        assert_eq!(s.fail_mode, FailMode::FailClosed);
        let r = s.redis.unwrap();
        assert_eq!(
            (r.url.as_str(), r.key_prefix.as_str()),
            ("redis://:secret@10.0.0.5:6380/2", "gw-eu")
        );
        assert!(!format!("{r:?}").contains("secret"));
        let s = parse("[quota]\nbackend = 'redis'\nredis_url = 'redis://127.0.0.1'\n")
            .validate()
            .unwrap();
        assert_eq!(s.redis.unwrap().key_prefix, DEFAULT_KEY_PREFIX);
    }

    #[test]
    fn redis_problems_name_their_keys() {
        let keys = |s: &str| -> Vec<String> {
            parse(s)
                .validate()
                .unwrap_err()
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        assert_eq!(keys("[quota]\nbackend = 'redis'\n"), ["quota.redis_url"]);
        assert_eq!(
            keys("[quota]\nbackend = 'redis'\nredis_url = 'http://x'\nkey_prefix = 'a b'\n"),
            ["quota.key_prefix", "quota.redis_url"]
        );
    }

    #[test]
    fn unknown_fields_fail() {
        let r = toml::from_str::<Doc>(
            "[quota]\n[[quota.rules]]\nname='a'\nkey='subject'\nrequests_per_minut=1\n",
        );
        assert!(r.is_err());
        assert!(toml::from_str::<Doc>("[quota]\nbakend='local'\n").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let q = parse(
            r#"[quota]
            backend = "redis"
            key_prefix = ""
            [[quota.rules]]
            name = ""
            key = "subject"
            requests_per_minute = 0
            tokens_per_minute = 0
            burst = 0
            [[quota.rules]]
            name = "b"
            key = "subject"
            requests_per_minute = 5
            burst = 6
            reserve_max_tokens = true"#,
        );
        let keys: Vec<String> = q
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                "quota.key_prefix",
                "quota.redis_url",
                "quota.rules[0].name",
                "quota.rules[0].requests_per_minute",
                "quota.rules[0].tokens_per_minute",
                "quota.rules[0].burst",
                "quota.rules[1].model",
                "quota.rules[1].burst",
                "quota.rules[1].reserve_max_tokens",
            ]
        );
    }
}
