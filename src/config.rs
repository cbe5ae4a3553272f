//! Configuration: raw TOML → validated → immutable snapshot.
//!
//! This file currently holds the pieces every stage's config shares (problems, secrets,
//! durations); the full `RawConfig`/`Snapshot` is built on top of them.

use std::fmt;
use std::path::{Path, PathBuf};

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
}
