//! The admin endpoints of API keys (`/keys`), and what `/metrics` and `/config` show of the
//! keys and remote key sets. Every change goes through the control thread, which owns the
//! key store; this thread parses the request and answers once every worker has the change.
//!
//! | request | answer |
//! |---------|--------|
//! | `GET /keys` | 200 `{"keys": [key]}` |
//! | `GET /keys/{id}` | 200 `{"record": key}` |
//! | `POST /keys` | `{"name", "owner"?, "tenant"?, "label"?, "models"?, "scopes"?, "budgets"?, "claims"?, "expires_at"? \| "expires_in_secs"?}`: 201 `{"key": "sg-...", "record"}`; the key is shown this once |
//! | `POST /keys/{id}/disable`, `/enable` | 200 `{"record"}` |
//! | `POST /keys/{id}/rotate` | `{"grace_secs"?}` (default 3600): 200 `{"key", "record"}`; the old secret works until the grace ends |
//! | `DELETE /keys/{id}` | 200 `{"deleted": id}` |
//!
//! A key is shown as its record without digests: id, name, owner, tenant, label, models,
//! scopes, budgets, claims, expires_at, enabled, created_at, and each secret's display
//! prefix, created_at and not_after.
//!
//! # Error Handling
//!
//! 404 `not_found` for an unknown id, 404 `not_configured` without `[auth.api_keys]`, 400
//! `bad_request` with `problems: [{key, message}]` (or the `field` of a body that cannot be
//! read), 405 with `Allow`, 500 `store_failed` (nothing changed), 503 `not_confirmed` (stored
//! and sent, not confirmed by every worker in time) or `unavailable` (no control thread).

use serde_json::{json, Value};

use super::http::{Request, Response};
use super::AdminState;
use crate::auth::KeyRecord;
use crate::config::Snapshot;
use crate::control::jwks::SourceStatus;
use crate::control::key_command_via;
use crate::control::keys::{KeyCommand, KeyError, KeyReply, NewKey, DEFAULT_GRACE_SECS};

/// Whether `path` is one of these endpoints.
pub fn owns(path: &str) -> bool {
    path == "/keys" || path.starts_with("/keys/")
}

/// Answers a request to `path`, one of these endpoints, from `who` (the admin token's name,
/// which the audit records).
pub fn handle(state: &AdminState, req: &Request, path: &str, who: &str) -> Response {
    let rest = path.strip_prefix("/keys").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method.as_str();
    let cmd = match (segments.as_slice(), method) {
        ([], "GET" | "HEAD") | ([_], "GET" | "HEAD") => KeyCommand::List,
        ([], "POST") => match parse_new(&req.body) {
            Ok(new) => KeyCommand::Create(new),
            Err(r) => return r,
        },
        ([id], "DELETE") => KeyCommand::Delete((*id).to_owned()),
        ([id, "disable"], "POST") => KeyCommand::Disable((*id).to_owned()),
        ([id, "enable"], "POST") => KeyCommand::Enable((*id).to_owned()),
        ([id, "rotate"], "POST") => match parse_grace(&req.body) {
            Ok(grace_secs) => KeyCommand::Rotate {
                id: (*id).to_owned(),
                grace_secs,
            },
            Err(r) => return r,
        },
        ([], _) => return not_allowed("GET, POST"),
        ([_], _) => return not_allowed("GET, DELETE"),
        ([_, "disable" | "enable" | "rotate"], _) => return not_allowed("POST"),
        _ => return Response::error(404, "not_found", "no such admin endpoint"),
    };
    let Some(control) = &state.control else {
        return Response::error(503, "unavailable", "no control thread to manage keys with");
    };
    match (key_command_via(control, cmd, who), segments.as_slice()) {
        (Ok(KeyReply::List(records)), [id]) => match records.iter().find(|r| r.id == *id) {
            Some(r) => Response::json(200, &json!({"record": view(r)})),
            None => Response::error(404, "not_found", &format!("no key with id `{id}`")),
        },
        (Ok(KeyReply::List(records)), _) => {
            let keys: Vec<Value> = records.iter().map(view).collect();
            Response::json(200, &json!({"keys": keys}))
        }
        (Ok(KeyReply::Secret { record, key }), _) => Response::json(
            if method == "POST" && segments.is_empty() {
                201
            } else {
                200
            },
            &json!({
                "key": key,
                "record": view(&record),
                "note": "store this key now: it is not shown again",
            }),
        ),
        (Ok(KeyReply::Changed(record)), _) => {
            Response::json(200, &json!({"record": view(&record)}))
        }
        (Ok(KeyReply::Deleted(id)), _) => Response::json(200, &json!({"deleted": id})),
        (Err(e), _) => error(&e),
    }
}

fn not_allowed(allow: &'static str) -> Response {
    Response::error(405, "method_not_allowed", "method not allowed").header("allow", allow)
}

fn bad_body(field: &str, message: String) -> Response {
    Response::json(
        400,
        &json!({"error": "bad_request", "field": field, "message": message}),
    )
}

fn parse_new(body: &[u8]) -> Result<NewKey, Response> {
    serde_json::from_slice(body).map_err(|e| bad_body("(body)", e.to_string()))
}

fn parse_grace(body: &[u8]) -> Result<u64, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_GRACE_SECS);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        grace_secs: Option<u64>,
    }
    let b: Body = serde_json::from_slice(body).map_err(|e| bad_body("(body)", e.to_string()))?;
    Ok(b.grace_secs.unwrap_or(DEFAULT_GRACE_SECS))
}

fn error(e: &KeyError) -> Response {
    let message = e.to_string();
    match e {
        KeyError::NotConfigured => Response::error(404, "not_configured", &message),
        KeyError::NotFound(_) => Response::error(404, "not_found", &message),
        KeyError::Invalid(problems) => {
            let problems: Vec<Value> = problems
                .iter()
                .map(|p| json!({"key": p.key, "message": p.message}))
                .collect();
            Response::json(400, &json!({"error": "bad_request", "problems": problems}))
        }
        KeyError::Store(_) => Response::error(500, "store_failed", &message),
        KeyError::Unconfirmed { .. } => Response::error(503, "not_confirmed", &message),
        KeyError::Stopped => Response::error(503, "unavailable", &message),
    }
}

/// A record as the API shows it: everything but the digests.
pub fn view(r: &KeyRecord) -> Value {
    let secrets: Vec<Value> = r
        .secrets
        .iter()
        .map(|s| json!({"prefix": s.prefix, "created_at": s.created_at, "not_after": s.not_after}))
        .collect();
    json!({
        "id": r.id,
        "name": r.name,
        "owner": r.owner,
        "tenant": r.tenant,
        "label": r.label,
        "models": r.models,
        "scopes": r.scopes,
        "budgets": r.budgets,
        "claims": r.claims,
        "expires_at": r.expires_at,
        "enabled": r.enabled,
        "created_at": r.created_at,
        "secrets": secrets,
    })
}

/// `/config`'s `auth` section: the remote key sets (with the kids in force) and the API key
/// settings (with how many keys are in force); never a secret or a digest.
pub fn auth_view(s: &Snapshot) -> Value {
    let Some(a) = &s.auth else {
        return Value::Null;
    };
    let jwks: Vec<Value> = a
        .remote_sources()
        .iter()
        .map(|r| {
            json!({
                "jwks_uri": r.settings.jwks_uri,
                "issuer": r.settings.issuer,
                "refresh_secs": r.settings.refresh.as_secs(),
                "min_refresh_secs": r.settings.min_refresh.as_secs(),
                "timeout_ms": r.settings.timeout.as_millis() as u64,
                "rsa_alg": r.settings.rsa_alg.map(|a| a.name()),
                "kids": r.kids().collect::<Vec<_>>(),
            })
        })
        .collect();
    let api_keys = a.api_key_settings().map(|k| {
        let (store, file, audit_file) = match &k.source {
            crate::auth::KeySource::File { file, audit_file } => (
                "file",
                file.display().to_string(),
                Some(audit_file.display().to_string()),
            ),
            crate::auth::KeySource::Registry(db) => ("registry", db.display().to_string(), None),
        };
        json!({
            "store": store,
            "file": file,
            "audit_file": audit_file,
            "header": k.header.as_deref(),
            "keys": a.api_key_table().map_or(0, |t| t.len()),
        })
    });
    json!({"jwks": jwks, "api_keys": api_keys})
}

/// One metric family of the remote key sets: name, type, help, and the value per source.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SourceStatus) -> u64,
);

/// The remote key sets' Prometheus series, appended to `out`.
pub fn prometheus(sources: &[SourceStatus], out: &mut String) {
    use std::fmt::Write as _;
    if sources.is_empty() {
        return;
    }
    let families: [Family; 4] = [
        (
            "shardgate_jwks_fetches_total",
            "counter",
            "Fetches of a remote key set (JWKS), successful or not.",
            |s| s.fetches,
        ),
        (
            "shardgate_jwks_fetch_failures_total",
            "counter",
            "Failed fetches of a remote key set; the last good keys stay in force.",
            |s| s.failures,
        ),
        (
            "shardgate_jwks_keys",
            "gauge",
            "Keys in force from a remote key set.",
            |s| s.keys as u64,
        ),
        (
            "shardgate_jwks_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful fetch of a remote key set (0: none yet).",
            |s| s.last_success.unwrap_or(0),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in sources {
            let _ = writeln!(
                out,
                "{name}{{source=\"{}\"}} {}",
                escape(&s.source),
                value(s)
            );
        }
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_series_render_per_source() {
        let mut out = String::new();
        prometheus(
            &[SourceStatus {
                source: "https://idp/\"keys\"".into(),
                keys: 2,
                skipped: 0,
                fetches: 5,
                failures: 1,
                last_success: Some(1_700_000_000),
                last_error: None,
            }],
            &mut out,
        );
        assert!(
            out.contains("shardgate_jwks_fetches_total{source=\"https://idp/\\\"keys\\\"\"} 5"),
            "{out}"
        );
        assert!(
            out.contains("shardgate_jwks_fetch_failures_total{source="),
            "{out}"
        );
        assert!(
            out.contains("shardgate_jwks_keys{source=\"https://idp/\\\"keys\\\"\"} 2"),
            "{out}"
        );
        assert!(out.contains("# TYPE shardgate_jwks_last_success_timestamp_seconds gauge"));
        let mut none = String::new();
        prometheus(&[], &mut none);
        assert!(none.is_empty());
    }
}
