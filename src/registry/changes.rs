//! The registry's changes, each written inside the transaction [`super::store::Store::change`]
//! opened: the request is checked, the rows written, and the audit entry described. The
//! caller then validates the resulting state as a whole config before committing
//! (`control::registry`), so a change the config would refuse writes nothing.
//!
//! # Error Handling
//!
//! A malformed body is [`ChangeError::Bad`] naming the field; an unknown model, version,
//! split or rollout [`ChangeError::NotFound`]; a change that contradicts the registry's state
//! (a version registered again with other settings, a rollout already running on the route,
//! a version a live rollout holds) [`ChangeError::Conflict`].

use rusqlite::{params, Transaction};
use serde_json::{json, Map, Value};

use super::store::{put_split, ChangeError, Changed};
use super::view;
use super::{RegistryState, RouteKey, SplitTarget, Status, Version};
use crate::config_types::Secret;
use crate::route::RawDeployment;

mod rollouts;
pub use rollouts::{move_rollout, start_rollout, RolloutMove};

/// Who changes, and when.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub who: &'a str,
    pub now: i64,
}

/// A model name the admin API can carry in a path: 1 to 128 of `A-Z a-z 0-9 . _ : -`.
pub fn check_model_name(name: &str) -> Result<(), ChangeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ChangeError::bad(
            "model",
            "must be 1 to 128 of A-Z a-z 0-9 . _ : -",
        ))
    }
}

/// `text` as a canonical semver version.
pub fn canonical_version(text: &str, field: &str) -> Result<String, ChangeError> {
    semver::Version::parse(text.trim())
        .map(|v| v.to_string())
        .map_err(|e| ChangeError::bad(field, format!("`{text}` is not a semver version: {e}")))
}

fn object(body: &Value) -> Result<&Map<String, Value>, ChangeError> {
    body.as_object()
        .ok_or_else(|| ChangeError::bad("(body)", "must be a JSON object"))
}

fn string_field(o: &Map<String, Value>, field: &str) -> Result<String, ChangeError> {
    match o.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ChangeError::bad(field, "must be a string")),
        None => Err(ChangeError::bad(field, "is required")),
    }
}

/// JSON with every object's keys sorted: the same settings always hash the same.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A version as `POST /models/{model}/versions` describes it: `version`, `endpoints`, and
/// optionally `status` (default `canary`) and any other `[[deployments]]` key.
pub fn parse_version(model: &str, body: &Value, ctx: Ctx<'_>) -> Result<Version, ChangeError> {
    check_model_name(model)?;
    let o = object(body)?;
    let version = canonical_version(&string_field(o, "version")?, "version")?;
    let status = match o.get("status") {
        None => Status::Canary,
        Some(Value::String(s)) => Status::parse(s).ok_or_else(|| {
            ChangeError::bad("status", "must be active, canary, draining or retired")
        })?,
        Some(_) => return Err(ChangeError::bad("status", "must be a string")),
    };
    if status == Status::Retired {
        return Err(ChangeError::bad(
            "status",
            "a new version cannot start retired",
        ));
    }
    if o.contains_key("model") {
        return Err(ChangeError::bad(
            "model",
            "is the path's; leave it out of the body",
        ));
    }
    let mut spec = o.clone();
    spec.remove("status");
    spec.insert("model".into(), model.into());
    spec.insert("version".into(), version.clone().into());
    // The same shape check as the config file's `[[deployments]]`.
    let d: RawDeployment = serde_json::from_value(Value::Object(spec.clone()))
        .map_err(|e| ChangeError::bad("(body)", e.to_string()))?;
    if matches!(d.api_key, Some(Secret::Value(_))) {
        return Err(ChangeError::bad(
            "api_key",
            "the registry keeps no secret values: give `{\"env\": VAR}` or `{\"file\": PATH}`",
        ));
    }
    for k in ["model", "version", "endpoints", "labels", "served_name"] {
        spec.remove(k);
    }
    let mut v = Version {
        model: model.into(),
        version,
        served_name: d.served_name,
        endpoints: d.endpoints.iter().map(|e| e.trim().to_owned()).collect(),
        labels: d.labels,
        settings: spec,
        status,
        content_hash: String::new(),
        created_at: ctx.now,
        created_by: ctx.who.into(),
        mark: None,
    };
    v.content_hash = content_hash(&v);
    Ok(v)
}

/// SHA-256 (hex) of the canonical JSON of what the version serves with.
pub fn content_hash(v: &Version) -> String {
    let doc = json!({
        "served_name": v.served_name,
        "endpoints": v.endpoints,
        "labels": v.labels,
        "settings": v.settings,
    });
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical(&doc).as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Registers `v` (its model created on first use).
pub fn register(tx: &Transaction<'_>, v: &Version) -> Result<Changed<()>, ChangeError> {
    tx.execute(
        "INSERT INTO models (name, created_at, created_by) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        params![v.model, v.created_at, v.created_by],
    )?;
    tx.execute(
        "INSERT INTO versions (model, version, served_name, endpoints, labels, settings, status, \
         content_hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            v.model,
            v.version,
            v.served_name,
            text(&v.endpoints),
            text(&v.labels),
            text(&v.settings),
            v.status.as_str(),
            v.content_hash,
            v.created_at,
            v.created_by
        ],
    )?;
    Ok(Changed {
        subject: v.label(),
        before: None,
        after: Some(view::version(v)),
        value: (),
    })
}

/// A column's JSON text.
fn text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// `PUT /models/{m}/versions/{v}/status` `{"status"}`: refused while a live rollout holds the
/// version. Clears the version's rollout mark.
pub fn set_status(
    tx: &Transaction<'_>,
    state: &RegistryState,
    model: &str,
    version: &str,
    body: &Value,
) -> Result<Changed<()>, ChangeError> {
    let o = object(body)?;
    let status = Status::parse(&string_field(o, "status")?)
        .ok_or_else(|| ChangeError::bad("status", "must be active, canary, draining or retired"))?;
    let old = find_version(state, model, version)?;
    if let Some(r) = state.live_rollout_of(model, &old.version) {
        return Err(ChangeError::Conflict(format!(
            "rollout {} of {} holds this version; pause or abort it first",
            r.id,
            r.canary_label()
        )));
    }
    tx.execute(
        "UPDATE versions SET status = ?3, mark = NULL WHERE model = ?1 AND version = ?2",
        params![model, old.version, status.as_str()],
    )?;
    let mut new = old.clone();
    new.status = status;
    new.mark = None;
    Ok(Changed {
        subject: old.label(),
        before: Some(view::version(old)),
        after: Some(view::version(&new)),
        value: (),
    })
}

fn find_version<'a>(
    state: &'a RegistryState,
    model: &str,
    version: &str,
) -> Result<&'a Version, ChangeError> {
    let canonical = canonical_version(version, "version")
        .map_err(|_| ChangeError::NotFound(format!("no version `{model}@{version}`")))?;
    state.version(model, &canonical).ok_or_else(|| {
        ChangeError::NotFound(format!("no version `{model}@{canonical}` in the registry"))
    })
}

/// A route named by `{"path", "models"}` in `o` (or under `field` of it).
fn route_key(o: &Map<String, Value>, field: &str) -> Result<RouteKey, ChangeError> {
    let path = match o.get("path") {
        Some(Value::String(p)) if p.starts_with('/') => p.clone(),
        _ => {
            return Err(ChangeError::bad(
                &format!("{field}path"),
                "must be the route's path (starting with /)",
            ))
        }
    };
    let models: Vec<String> = match o.get("models") {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            ChangeError::bad(&format!("{field}models"), "must be an array of strings")
        })?,
    };
    Ok(RouteKey::new(&path, &models))
}

/// `PUT /splits` `{"path", "models", "targets": [{model, version, weight}]}`: the route's
/// targets from now on (exact versions). Refused while a live rollout holds the route.
pub fn put(
    tx: &Transaction<'_>,
    state: &RegistryState,
    body: &Value,
    ctx: Ctx<'_>,
) -> Result<Changed<()>, ChangeError> {
    let o = object(body)?;
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "path" | "models" | "targets"))
    {
        return Err(ChangeError::bad(k, "unknown field"));
    }
    let route = route_key(o, "")?;
    let raw = o.get("targets").cloned().unwrap_or(Value::Null);
    let targets: Vec<SplitTarget> = serde_json::from_value(raw).map_err(|e| {
        ChangeError::bad(
            "targets",
            format!("must be [{{model, version, weight}}]: {e}"),
        )
    })?;
    if targets.is_empty() {
        return Err(ChangeError::bad("targets", "needs at least one target"));
    }
    let mut clean = Vec::with_capacity(targets.len());
    for (j, t) in targets.into_iter().enumerate() {
        let version = canonical_version(&t.version, &format!("targets[{j}].version"))?;
        if clean
            .iter()
            .any(|c: &SplitTarget| c.model == t.model && c.version == version)
        {
            return Err(ChangeError::bad(
                &format!("targets[{j}]"),
                "names a version twice",
            ));
        }
        clean.push(SplitTarget { version, ..t });
    }
    refuse_if_rollout(state, &route)?;
    let before = state.split(&route).map(view::split);
    put_split(tx, &route, &clean, ctx.who, ctx.now)?;
    Ok(Changed {
        subject: route.name(),
        before,
        after: Some(view::split_parts(&route, &clean, ctx.now, ctx.who)),
        value: (),
    })
}

/// `DELETE /splits` `{"path", "models"}`: the route's targets are the config file's again.
pub fn delete(
    tx: &Transaction<'_>,
    state: &RegistryState,
    body: &Value,
) -> Result<Changed<()>, ChangeError> {
    let route = route_key(object(body)?, "")?;
    let Some(old) = state.split(&route) else {
        return Err(ChangeError::NotFound(format!(
            "no registry split for {}",
            route.name()
        )));
    };
    refuse_if_rollout(state, &route)?;
    super::store::delete_split(tx, &route)?;
    Ok(Changed {
        subject: route.name(),
        before: Some(view::split(old)),
        after: None,
        value: (),
    })
}

fn refuse_if_rollout(state: &RegistryState, route: &RouteKey) -> Result<(), ChangeError> {
    match state.live_rollout_on(route) {
        Some(r) => Err(ChangeError::Conflict(format!(
            "rollout {} of {} holds this route's split; pause or abort it first",
            r.id,
            r.canary_label()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            who: "alice",
            now: 1000,
        }
    }

    #[test]
    fn versions_are_checked_like_deployments() {
        let ok = parse_version(
            "llama",
            &json!({"version": "1.2.0", "endpoints": ["127.0.0.1:9000"], "first_byte_timeout_ms": 500,
                    "api_key": {"env": "LLAMA_KEY"}}),
            ctx(),
        )
        .unwrap();
        assert_eq!((ok.status, ok.version.as_str()), (Status::Canary, "1.2.0"));
        assert_eq!(ok.settings["first_byte_timeout_ms"], 500);
        assert!(!ok.settings.contains_key("endpoints"));
        assert_eq!(ok.content_hash.len(), 64);
        let cases: &[(&str, Value, &str)] = &[
            ("llama", json!([]), "(body)"),
            ("llama", json!({"endpoints": ["a:1"]}), "version"),
            (
                "llama",
                json!({"version": "1.x", "endpoints": ["a:1"]}),
                "version",
            ),
            (
                "llama",
                json!({"version": "1.0.0", "endpoints": ["a:1"], "wieght": 1}),
                "(body)",
            ),
            (
                "llama",
                json!({"version": "1.0.0", "endpoints": "a:1"}),
                "(body)",
            ),
            (
                "llama",
                json!({"version": "1.0.0", "endpoints": ["a:1"], "status": "gone"}),
                "status",
            ),
            (
                "llama",
                json!({"version": "1.0.0", "endpoints": ["a:1"], "status": "retired"}),
                "status",
            ),
            (
                "llama",
                json!({"version": "1.0.0", "endpoints": ["a:1"], "model": "x"}),
                "model",
            ),
            (
                "llama",
                json!({"version": "1.0.0", "endpoints": ["a:1"], "api_key": {"value": "sk-1"}}),
                "api_key",
            ),
            (
                "",
                json!({"version": "1.0.0", "endpoints": ["a:1"]}),
                "model",
            ),
            (
                "ll/ama",
                json!({"version": "1.0.0", "endpoints": ["a:1"]}),
                "model",
            ),
            (
                "ll ama",
                json!({"version": "1.0.0", "endpoints": ["a:1"]}),
                "model",
            ),
        ];
        for (model, body, field) in cases {
            match parse_version(model, body, ctx()) {
                Err(ChangeError::Bad { field: f, .. }) => assert_eq!(f, *field, "{model} {body}"),
                other => panic!("{model} {body}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_content_hash_ignores_key_order_and_follows_settings() {
        let a = parse_version("m", &json!({"version": "1.0.0", "endpoints": ["a:1"], "idle_timeout_ms": 5, "connect_timeout_ms": 7}), ctx()).unwrap();
        let b = parse_version("m", &json!({"connect_timeout_ms": 7, "idle_timeout_ms": 5, "endpoints": ["a:1"], "version": "1.0.0", "status": "active"}), ctx()).unwrap();
        let c = parse_version("m", &json!({"version": "1.0.0", "endpoints": ["a:1"], "idle_timeout_ms": 6, "connect_timeout_ms": 7}), ctx()).unwrap();
        assert_eq!(
            a.content_hash, b.content_hash,
            "status and key order are not settings"
        );
        assert_ne!(a.content_hash, c.content_hash);
    }
}
