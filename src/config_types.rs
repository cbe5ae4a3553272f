//! The config types every stage shares: a [`ConfigProblem`] (and the [`ConfigError`] that
//! collects them), a [`Secret`], the validated [`Upstream`] the proxy, the pipeline and the
//! breakers all work with, and a route's [`RouteAuth`] (the routing stage carries it, the auth
//! stage reads it).
//!
//! A leaf: it imports nothing from the stages, so every stage's raw config can name these
//! types while the config assembly ([`crate::config`]) imports the stages' raw configs.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One thing wrong with a config: the file, the key path (`routes[2].targets[0].weight`) and
/// what is wrong. Validation collects every problem instead of stopping at the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A secret (HMAC key, upstream API key, admin token): from an environment variable, a file,
/// or inline (inline is for demos and tests only).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Secret {
    /// Read from this environment variable at load time.
    Env(String),
    /// Read from this file (relative paths are relative to the config file); one trailing
    /// newline is stripped.
    File(PathBuf),
    /// Written in the config itself.
    Value(String),
}

impl Secret {
    /// Resolves the secret's bytes. `key` names the config key for the error message.
    pub fn resolve(&self, base_dir: &Path, key: &str) -> Result<Vec<u8>, ConfigProblem> {
        match self {
            Secret::Env(var) => std::env::var(var).map(String::into_bytes).map_err(|_| {
                ConfigProblem::new(key, format!("environment variable `{var}` is not set"))
            }),
            Secret::File(path) => {
                let full = base_dir.join(path);
                let mut bytes = std::fs::read(&full).map_err(|e| {
                    ConfigProblem::new(key, format!("cannot read `{}`: {e}", full.display()))
                })?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                    if bytes.last() == Some(&b'\r') {
                        bytes.pop();
                    }
                }
                Ok(bytes)
            }
            Secret::Value(v) => Ok(v.clone().into_bytes()),
        }
    }

    /// Where the secret comes from, for an error message (never its value).
    pub fn source(&self) -> String {
        match self {
            Secret::Env(var) => format!("environment variable `{var}`"),
            Secret::File(path) => format!("file `{}`", path.display()),
            Secret::Value(_) => "inline value".into(),
        }
    }
}

/// A config that failed to load: every problem, each naming the file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file.display(), p)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One upstream endpoint, resolved.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `Host` header value to send.
    pub host: String,
    /// TLS: the name sent as SNI and verified in the certificate; `None`: plaintext.
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
    /// The endpoint's `host:port` when the host is a name, not an IP literal: the control
    /// thread resolves it again while the gateway runs (`control::dns`).
    pub name: Option<String>,
}

/// A validated upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    pub pool_max_requests: u32,
    /// Pre-rendered credential line, when a key is configured: `authorization: Bearer ...`,
    /// or `x-api-key: ...` for Anthropic.
    pub auth_line: Option<Vec<u8>>,
    /// The API the upstream speaks (`provider`).
    pub provider: Provider,
}

/// `provider` on an upstream or deployment, as written: the API it speaks.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum RawProvider {
    /// OpenAI-compatible (vLLM, TGI, llama.cpp, OpenAI itself): requests pass through.
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic's Messages API: requests and responses are translated (`crate::adapt`).
    #[serde(rename = "anthropic")]
    Anthropic,
}

/// The API a validated upstream speaks, with what its adapter needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Provider {
    #[default]
    OpenAi,
    Anthropic(AnthropicSettings),
}

/// Settings of an upstream with `provider = "anthropic"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicSettings {
    /// Sent as `anthropic-version` (`anthropic_version`).
    pub version: String,
    /// `max_tokens` when the client's request has none (`default_max_tokens`): the Messages
    /// API requires one.
    pub default_max_tokens: u64,
}

/// `anthropic-version` sent when the config names none.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` sent to Anthropic when neither the request nor the config sets one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// A route's `auth`: whether it needs a credential and which kinds it accepts. The auth stage
/// decides what [`RouteAuth::Default`] and [`RouteAuth::Required`] accept (every verifier
/// `[auth]` configures; nothing without `[auth]`, where `Required` is a config problem).
///
/// | TOML | variant |
/// |------|---------|
/// | absent | `Default` |
/// | `true` | `Required` |
/// | `false` | `Off` (open route) |
/// | `"jwt"` | `Jwt` (signed tokens only) |
/// | `"key"` | `Key` (API keys only) |
/// | `"any"` | `Any` (either) |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuth {
    #[default]
    Default,
    Required,
    Off,
    Jwt,
    Key,
    Any,
}

impl<'de> Deserialize<'de> for RouteAuth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RouteAuth;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#"true, false, "jwt", "key" or "any""#)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RouteAuth, E> {
                Ok(if v {
                    RouteAuth::Required
                } else {
                    RouteAuth::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RouteAuth, E> {
                match v {
                    "jwt" => Ok(RouteAuth::Jwt),
                    "key" => Ok(RouteAuth::Key),
                    "any" => Ok(RouteAuth::Any),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}
