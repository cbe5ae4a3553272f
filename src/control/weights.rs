//! Route weight edits (`PUT /routes/weights`) on the control thread, which owns the config
//! file: the file is read, the weights rewritten in place (comments and formatting kept),
//! the result validated as a whole config, written atomically, and then reloaded like an
//! explicit reload. Nothing else writes the file while this runs, and the file watch never
//! sees the edit as a change of its own.
//!
//! # Error Handling
//!
//! A body naming no such route or target, or leaving the route's total weight zero, is
//! [`WeightsError::Bad`]; a result that would not be a valid config is
//! [`WeightsError::Invalid`] and writes nothing; a file that cannot be read or written is
//! [`WeightsError::Io`].

use std::path::Path;

use serde::Deserialize;

use crate::auth::revocation::persist_atomically;
use crate::config::{self, ConfigError, ConfigProblem};

/// The `PUT /routes/weights` body: a route by `path` and `models` (empty: the path's default
/// route) and new weights for some of its targets, by `model` and `version` requirement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    pub path: String,
    #[serde(default)]
    pub models: Vec<String>,
    pub targets: Vec<WeightTarget>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightTarget {
    pub model: String,
    /// A semver requirement; absent means `*`, as in the config.
    #[serde(default = "any_version")]
    pub version: String,
    pub weight: u32,
}

fn any_version() -> String {
    "*".into()
}

/// Why a weight change was not applied.
#[derive(Debug, Clone)]
pub enum WeightsError {
    /// The body names no such route or target, or zeroes the route; nothing was written.
    Bad(String),
    /// The new config fails validation (nothing was written), or the written file failed to
    /// reload.
    Invalid(ConfigError),
    /// The config file cannot be read or written.
    Io(String),
    /// The control thread is gone.
    Stopped,
}

/// The config text `current` with `body`'s weights, validated as a whole config (relative
/// paths against `base_dir`). Comments and formatting of `current` are kept.
fn reweighted(
    current: &str,
    body: &WeightsBody,
    base_dir: &Path,
    generation: u64,
) -> Result<String, Refused> {
    if body.targets.is_empty() {
        return Err(Refused::Bad("`targets` is empty".into()));
    }
    let models: Vec<&str> = body.models.iter().map(String::as_str).collect();
    let weights: Vec<(&str, &str, u32)> = body
        .targets
        .iter()
        .map(|t| (t.model.as_str(), t.version.as_str(), t.weight))
        .collect();
    let text = crate::route::set_weights_in_toml(current, &body.path, &models, &weights)
        .map_err(Refused::Bad)?;
    config::from_str(&text, base_dir, generation).map_err(Refused::Invalid)?;
    Ok(text)
}

/// Why [`reweighted`] refused an edit.
#[derive(Debug)]
enum Refused {
    Bad(String),
    Invalid(Vec<ConfigProblem>),
}

/// Rewrites the config file at `path` (through a symlink, to the file it names) with `body`'s
/// weights, validated at `generation` first and written atomically.
pub fn rewrite(path: &Path, body: &WeightsBody, generation: u64) -> Result<(), WeightsError> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let current = std::fs::read_to_string(&path)
        .map_err(|e| WeightsError::Io(format!("cannot read {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let text = reweighted(&current, body, base, generation).map_err(|r| match r {
        Refused::Bad(message) => WeightsError::Bad(message),
        Refused::Invalid(problems) => WeightsError::Invalid(ConfigError {
            file: path.clone(),
            problems,
        }),
    })?;
    persist_atomically(&path, text.as_bytes())
        .map_err(|e| WeightsError::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONFIG: &str = r#"# weights are tuned by the admin API
[server]
listen = "127.0.0.1:0"

[[deployments]]
model = "a"
version = "1.0.0"
endpoints = ["127.0.0.1:9001"]

[[deployments]]
model = "b"
version = "1.0.0"
endpoints = ["127.0.0.1:9002"]

[[routes]]
path = "/v1/chat/completions"
targets = [
  { model = "a", weight = 90 }, # mostly a
  { model = "b", weight = 10 },
]
"#;

    fn body(a: u32, b: u32) -> WeightsBody {
        serde_json::from_value(json!({
            "path": "/v1/chat/completions",
            "targets": [{"model": "a", "weight": a}, {"model": "b", "version": "*", "weight": b}],
        }))
        .unwrap()
    }

    #[test]
    fn reweighting_keeps_comments_and_validates() {
        let text = reweighted(CONFIG, &body(50, 50), Path::new("."), 2).unwrap();
        assert!(
            text.contains("{ model = \"a\", weight = 50 }, # mostly a"),
            "{text}"
        );
        assert!(text.starts_with("# weights are tuned by the admin API\n"));
        assert!(matches!(
            reweighted(CONFIG, &body(0, 0), Path::new("."), 2),
            Err(Refused::Bad(_))
        ));
        let mut missing = body(1, 1);
        missing.path = "/v2".into();
        assert!(matches!(
            reweighted(CONFIG, &missing, Path::new("."), 2),
            Err(Refused::Bad(_))
        ));
        // The edit applies, but the file was already broken by hand: validation refuses it.
        let broken = format!("{CONFIG}[[routes]]\npath = \"/x\"\nupstream = \"missing\"\n");
        assert!(matches!(
            reweighted(&broken, &body(1, 1), Path::new("."), 2),
            Err(Refused::Invalid(p)) if !p.is_empty()
        ));
    }

    #[test]
    fn a_refused_rewrite_leaves_the_file_as_it_was() {
        let dir = std::env::temp_dir().join(format!("sg-weights-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(&path, CONFIG).unwrap();
        assert!(matches!(
            rewrite(&path, &body(0, 0), 2),
            Err(WeightsError::Bad(_))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), CONFIG);
        rewrite(&path, &body(30, 70), 2).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("{ model = \"b\", weight = 70 }"));
        assert!(matches!(
            rewrite(&dir.join("missing.toml"), &body(1, 1), 2),
            Err(WeightsError::Io(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
