//! The admin endpoints that change the gateway beyond `/reload`: token revocation and route
//! weights. Both go through the control thread, which owns every durable file.
//!
//! # Error Handling
//!
//! A body that cannot be understood is 400 JSON naming the offending field
//! (`{"error": "bad_request", "field", "message"}`). A weight change that names no such
//! route or target, or leaves the route's total weight zero, is 400
//! `{"error": "bad_request", "problems": [{key, message}]}`; one whose result would not be a
//! valid config is 422 `{"error": "invalid_config", "problems": [{key, message}]}` and
//! writes nothing. A revocation the control thread cannot persist, or a config file that
//! cannot be read or written, is 500. A revocation persisted but not confirmed by every
//! worker in time is 503 `not_confirmed` (it still applies once the worker catches up). No
//! control thread is 503.

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{Request, Response};
use super::AdminState;
use crate::auth::revocation::persist_atomically;
use crate::auth::{Revoked, RevokedKind};
use crate::config::{self, ConfigProblem};
use crate::control::{self, RevokeError, ToControl};
use crate::time::unix_now;

/// How far ahead a revocation may expire. A jti entry only needs to outlive its token, and
/// the file is read on every start, so an unbounded entry would be kept forever.
pub const MAX_REVOKE_AHEAD_SECS: u64 = 366 * 24 * 3600;

/// A request body field that is missing or wrong: 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadField {
    pub field: String,
    pub message: String,
}

impl BadField {
    fn new(field: &str, message: impl Into<String>) -> BadField {
        BadField {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub fn response(&self) -> Response {
        Response::json(
            400,
            &json!({"error": "bad_request", "field": self.field, "message": self.message}),
        )
    }
}

/// Parses `{"jti"|"sub": id, "expires_at": unix_s}`: exactly one of `jti` and `sub`, and an
/// `expires_at` after `now` and at most [`MAX_REVOKE_AHEAD_SECS`] later.
pub fn parse_revoke(body: &[u8], now: u64) -> Result<Revoked, BadField> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| BadField::new("(body)", format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| BadField::new("(body)", "must be a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "jti" | "sub" | "expires_at"))
    {
        return Err(BadField::new(k, "unknown field"));
    }
    let (kind, field, id) = match (obj.get("jti"), obj.get("sub")) {
        (Some(id), None) => (RevokedKind::Jti, "jti", id),
        (None, Some(id)) => (RevokedKind::Sub, "sub", id),
        _ => {
            return Err(BadField::new(
                "jti",
                "exactly one of `jti` and `sub` is required",
            ))
        }
    };
    let id = id
        .as_str()
        .ok_or_else(|| BadField::new(field, "must be a string"))?;
    let expires_at = obj
        .get("expires_at")
        .ok_or_else(|| BadField::new("expires_at", "is required (unix seconds)"))?
        .as_u64()
        .ok_or_else(|| BadField::new("expires_at", "must be unix seconds (an integer)"))?;
    if expires_at <= now {
        return Err(BadField::new("expires_at", "must be in the future"));
    }
    if expires_at - now > MAX_REVOKE_AHEAD_SECS {
        return Err(BadField::new(
            "expires_at",
            format!("must be at most {MAX_REVOKE_AHEAD_SECS} s ahead"),
        ));
    }
    Revoked::new(kind, id, expires_at).map_err(|e| BadField::new(field, e))
}

/// `POST /revoke`: persisted by the control thread, then applied on every worker; answers
/// 200 only once every worker has confirmed it (503 `not_confirmed` otherwise).
pub fn revoke(state: &AdminState, req: &Request) -> Response {
    let Some(tx) = &state.control else {
        return Response::error(503, "unavailable", "no control thread to revoke with");
    };
    let r = match parse_revoke(&req.body, unix_now()) {
        Ok(r) => r,
        Err(e) => return e.response(),
    };
    let (reply, rx) = crossbeam_channel::bounded(1);
    if tx.send(ToControl::Revoke(r.clone(), reply)).is_err() {
        return Response::error(503, "unavailable", "the control thread has stopped");
    }
    match rx.recv_timeout(super::RELOAD_TIMEOUT) {
        Ok(Ok(())) => {
            let kind = match r.kind {
                RevokedKind::Jti => "jti",
                RevokedKind::Sub => "sub",
            };
            Response::json(
                200,
                &json!({"revoked": {"kind": kind, "id": r.id, "expires_at": r.expires_at}}),
            )
        }
        Ok(Err(e @ RevokeError::Persist(_))) => {
            Response::error(500, "persist_failed", &e.to_string())
        }
        // Persisted and queued, but not known to be in force everywhere: not a success.
        Ok(Err(e)) => Response::error(503, "not_confirmed", &e.to_string()),
        Err(_) => Response::error(503, "unavailable", "the control thread did not answer"),
    }
}

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

/// Why a weight change was refused; nothing was written.
#[derive(Debug)]
pub enum WeightsError {
    /// The body names no such route or target, or zeroes the route: 400.
    Bad(String),
    /// The new config fails validation: 422.
    Invalid(Vec<ConfigProblem>),
}

/// The config text `current` with `body`'s weights, validated as a whole config (relative
/// paths against `base_dir`). Comments and formatting of `current` are kept.
pub fn reweighted(
    current: &str,
    body: &WeightsBody,
    base_dir: &Path,
    generation: u64,
) -> Result<String, WeightsError> {
    if body.targets.is_empty() {
        return Err(WeightsError::Bad("`targets` is empty".into()));
    }
    let models: Vec<&str> = body.models.iter().map(String::as_str).collect();
    let weights: Vec<(&str, &str, u32)> = body
        .targets
        .iter()
        .map(|t| (t.model.as_str(), t.version.as_str(), t.weight))
        .collect();
    let text = crate::route::set_weights_in_toml(current, &body.path, &models, &weights)
        .map_err(WeightsError::Bad)?;
    config::from_str(&text, base_dir, generation).map_err(WeightsError::Invalid)?;
    Ok(text)
}

/// `PUT /routes/weights`: rewrites the config file (atomically, validated first), then
/// reloads it; answers like `/reload`.
pub fn set_weights(state: &AdminState, req: &Request) -> Response {
    let Some(tx) = &state.control else {
        return Response::error(503, "unavailable", "no control thread to reload with");
    };
    let body: WeightsBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return BadField::new("(body)", e.to_string()).response(),
    };
    let (path, generation) = {
        let v = control::lock_view(&state.view);
        (v.config_path.clone(), v.status.generation)
    };
    let Some(path) = path else {
        return Response::error(503, "unavailable", "the config file is not known");
    };
    // Write through a symlink to the file it names, rather than replacing the link.
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    match rewrite(&path, &body, generation + 1) {
        Ok(()) => super::reload_with(tx),
        Err(Rewrite::Refused(WeightsError::Bad(message))) => Response::json(
            400,
            &json!({"error": "bad_request", "problems": [{"key": "targets", "message": message}]}),
        ),
        Err(Rewrite::Refused(WeightsError::Invalid(problems))) => {
            super::invalid_config(&path, &problems)
        }
        Err(Rewrite::Io(message)) => Response::error(500, "config_io", &message),
    }
}

enum Rewrite {
    Refused(WeightsError),
    Io(String),
}

fn rewrite(path: &Path, body: &WeightsBody, generation: u64) -> Result<(), Rewrite> {
    let current = std::fs::read_to_string(path)
        .map_err(|e| Rewrite::Io(format!("cannot read {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let text = reweighted(&current, body, base, generation).map_err(Rewrite::Refused)?;
    persist_atomically(path, text.as_bytes())
        .map_err(|e| Rewrite::Io(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_bodies() {
        let now = 1_800_000_000;
        let ok = parse_revoke(br#"{"jti":"t-1","expires_at":1800000600}"#, now).unwrap();
        assert_eq!((ok.kind, ok.id.as_str()), (RevokedKind::Jti, "t-1"));
        let ok = parse_revoke(br#"{"sub":"user 42","expires_at":1800000600}"#, now).unwrap();
        assert_eq!(ok.kind, RevokedKind::Sub);
        let far = now + MAX_REVOKE_AHEAD_SECS + 1;
        let cases: &[(&str, &str)] = &[
            ("nope", "(body)"),
            ("[1]", "(body)"),
            (r#"{"expires_at":1800000600}"#, "jti"),
            (r#"{"jti":"a","sub":"b","expires_at":1800000600}"#, "jti"),
            (r#"{"jti":7,"expires_at":1800000600}"#, "jti"),
            (r#"{"jti":"","expires_at":1800000600}"#, "jti"),
            (r#"{"sub":" x","expires_at":1800000600}"#, "sub"),
            (r#"{"jti":"a"}"#, "expires_at"),
            (r#"{"jti":"a","expires_at":"soon"}"#, "expires_at"),
            (r#"{"jti":"a","expires_at":-5}"#, "expires_at"),
            (r#"{"jti":"a","expires_at":1800000000}"#, "expires_at"),
            (r#"{"jti":"a","expires_at":1700000000}"#, "expires_at"),
            (r#"{"jti":"a","expires_at":1800000600,"why":1}"#, "why"),
        ];
        for (body, field) in cases {
            let e = parse_revoke(body.as_bytes(), now).unwrap_err();
            assert_eq!(e.field, *field, "{body}: {e:?}");
        }
        let body = format!(r#"{{"jti":"a","expires_at":{far}}}"#);
        assert_eq!(
            parse_revoke(body.as_bytes(), now).unwrap_err().field,
            "expires_at"
        );
    }

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
            Err(WeightsError::Bad(_))
        ));
        let mut missing = body(1, 1);
        missing.path = "/v2".into();
        assert!(matches!(
            reweighted(CONFIG, &missing, Path::new("."), 2),
            Err(WeightsError::Bad(_))
        ));
        // The edit applies, but the file was already broken by hand: validation refuses it.
        let broken = format!("{CONFIG}[[routes]]\npath = \"/x\"\nupstream = \"missing\"\n");
        assert!(matches!(
            reweighted(&broken, &body(1, 1), Path::new("."), 2),
            Err(WeightsError::Invalid(p)) if !p.is_empty()
        ));
    }
}
