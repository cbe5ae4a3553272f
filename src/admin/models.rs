//! The model registry's admin endpoints. Every request goes to the control thread, which
//! owns the database; this thread parses the path and body, and answers. A change is
//! answered once every worker runs it (or 503 `not_confirmed` if a worker did not confirm in
//! time: it is committed and applies when the worker catches up).
//!
//! | request | answer |
//! |---------|--------|
//! | `GET /models` | every model with its versions |
//! | `GET /models/{m}` | one model |
//! | `POST /models/{m}/versions` | register a version: `{"version", "endpoints", "status"?, …}` and any other key a `[[deployments]]` entry takes |
//! | `GET /models/{m}/versions/{v}` | the version and its latest rollout |
//! | `PUT /models/{m}/versions/{v}/status` | `{"status": "active"\|"canary"\|"draining"\|"retired"}` |
//! | `POST /models/{m}/versions/{v}/rollout` | start a rollout: `{"steps", "hold_ms", "guards", "route"?, "stable"?}` |
//! | `GET /models/{m}/versions/{v}/rollout` | the latest rollout, with the guards' last look |
//! | `POST /models/{m}/versions/{v}/rollout/{pause,resume,abort}` | |
//! | `GET /splits`, `PUT /splits`, `DELETE /splits` | the routes whose targets the registry holds: `{"path", "models", "targets": [{model, version, weight}]}` |
//! | `GET /rollouts` | every rollout |
//! | `GET /audit?limit=&before=&subject=` | the audit log, newest first |
//!
//! # Error Handling
//!
//! 400 `{"error": "bad_request", "field", "message"}` for a malformed body; 404 for an
//! unknown model, version, split or rollout (or no registry configured); 409 `conflict` for
//! a change the registry's state forbids; 422 `{"error": "invalid_config", "problems"}` for
//! a change whose result would not be a valid config (nothing written); 500 when the
//! database fails; 503 without a control thread.

use std::time::Duration;

use serde_json::{json, Value};

use super::http::{Request, Response};
use super::AdminState;
use crate::control::{self, RegistryRequest};
use crate::registry::changes::RolloutMove;
use crate::registry::store::{AuditQuery, ChangeError};

/// How long a registry change may wait for every worker to run it.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `path` is one of the registry's.
pub fn is_registry_path(path: &str) -> bool {
    ["/models", "/splits", "/rollouts", "/audit"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

/// What `method path` asks for; `Err` is the answer (404, or 405 with `Allow`).
fn request(req: &Request, path: &str, who: &str) -> Result<RegistryRequest, Response> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = req.method.as_str();
    let get = m == "GET" || m == "HEAD";
    let s = |x: &str| x.to_owned();
    let body = || -> Result<Value, Response> {
        serde_json::from_slice(&req.body).map_err(|e| {
            Response::json(400, &json!({"error": "bad_request", "field": "(body)", "message": format!("not JSON: {e}")}))
        })
    };
    let allow = |methods: &str| -> Response {
        Response::error(405, "method_not_allowed", "method not allowed").header("allow", methods)
    };
    let r = match (&segs[..], m) {
        (["models"], _) if get => RegistryRequest::Models,
        (["models"], _) => return Err(allow("GET")),
        (["models", model], _) if get => RegistryRequest::Model(s(model)),
        (["models", _], _) => return Err(allow("GET")),
        (["models", model, "versions"], "POST") => RegistryRequest::Register {
            who: s(who),
            model: s(model),
            body: body()?,
        },
        (["models", _, "versions"], _) => return Err(allow("POST")),
        (["models", model, "versions", v], _) if get => RegistryRequest::Version(s(model), s(v)),
        (["models", _, "versions", _], _) => return Err(allow("GET")),
        (["models", model, "versions", v, "status"], "PUT") => RegistryRequest::SetStatus {
            who: s(who),
            model: s(model),
            version: s(v),
            body: body()?,
        },
        (["models", _, "versions", _, "status"], _) => return Err(allow("PUT")),
        (["models", model, "versions", v, "rollout"], "POST") => RegistryRequest::StartRollout {
            who: s(who),
            model: s(model),
            version: s(v),
            body: body()?,
        },
        (["models", model, "versions", v, "rollout"], _) if get => {
            RegistryRequest::Rollout(s(model), s(v))
        }
        (["models", _, "versions", _, "rollout"], _) => return Err(allow("GET, POST")),
        (["models", model, "versions", v, "rollout", action], "POST") => {
            let step = match *action {
                "pause" => RolloutMove::Pause,
                "resume" => RolloutMove::Resume,
                "abort" => RolloutMove::Abort,
                _ => return Err(Response::error(404, "not_found", "no such rollout action")),
            };
            RegistryRequest::MoveRollout {
                who: s(who),
                model: s(model),
                version: s(v),
                step,
            }
        }
        (["models", _, "versions", _, "rollout", _], _) => return Err(allow("POST")),
        (["splits"], _) if get => RegistryRequest::Splits,
        (["splits"], "PUT") => RegistryRequest::PutSplit {
            who: s(who),
            body: body()?,
        },
        (["splits"], "DELETE") => RegistryRequest::DeleteSplit {
            who: s(who),
            body: body()?,
        },
        (["splits"], _) => return Err(allow("GET, PUT, DELETE")),
        (["rollouts"], _) if get => RegistryRequest::Rollouts,
        (["rollouts"], _) => return Err(allow("GET")),
        (["audit"], _) if get => RegistryRequest::Audit(audit_query(&req.query)?),
        (["audit"], _) => return Err(allow("GET")),
        _ => return Err(Response::error(404, "not_found", "no such admin endpoint")),
    };
    Ok(r)
}

/// `limit` (default 100), `before` (an entry id) and `subject` (a prefix).
fn audit_query(query: &str) -> Result<AuditQuery, Response> {
    let mut q = AuditQuery {
        limit: 100,
        ..Default::default()
    };
    let bad = |field: &str, message: &str| {
        Response::json(
            400,
            &json!({"error": "bad_request", "field": field, "message": message}),
        )
    };
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v).ok_or_else(|| bad(k, "bad percent-encoding"))?;
        match k {
            "limit" => q.limit = v.parse().map_err(|_| bad("limit", "must be a count"))?,
            "before" => {
                q.before_id = Some(
                    v.parse()
                        .map_err(|_| bad("before", "must be an entry id"))?,
                )
            }
            "subject" => q.subject = Some(v),
            _ => return Err(bad(k, "unknown parameter (limit, before, subject)")),
        }
    }
    Ok(q)
}

/// A query value with `%XX` and `+` decoded; `None` if malformed or not UTF-8.
fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Serves a registry request from `who` (the admin token's name).
pub fn handle(state: &AdminState, req: &Request, path: &str, who: &str) -> Response {
    let Some(tx) = &state.control else {
        return Response::error(
            503,
            "unavailable",
            "no control thread to reach the registry",
        );
    };
    let r = match request(req, path, who) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let reply = match control::registry_via(tx, r, super::RELOAD_TIMEOUT) {
        None => {
            return Response::error(
                503,
                "unavailable",
                "the control thread has stopped or did not answer",
            )
        }
        Some(Err(e)) => return error(&e),
        Some(Ok(reply)) => reply,
    };
    let mut body = reply.body;
    if let Some(a) = reply.applied {
        let confirmed = a.barrier.wait(APPLY_TIMEOUT);
        let ms = a.committed.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "shardgate: registry change (generation {}) in force on every worker {ms:.1} ms after its commit",
            a.generation
        );
        if let Err(e) = confirmed {
            return Response::json(
                503,
                &json!({"error": "not_confirmed", "message": format!("committed as generation {}, but {e} in time", a.generation)}),
            );
        }
        if let Value::Object(o) = &mut body {
            o.insert("in_force_ms".into(), json!((ms * 1000.0).round() / 1000.0));
        }
    }
    Response::json(200, &body)
}

/// The answer to a refused change.
fn error(e: &ChangeError) -> Response {
    match e {
        ChangeError::NotFound(m) => Response::error(404, "not_found", m),
        ChangeError::Conflict(m) => Response::error(409, "conflict", m),
        ChangeError::Bad { field, message } => Response::json(
            400,
            &json!({"error": "bad_request", "field": field, "message": message}),
        ),
        ChangeError::Invalid(problems) => {
            let problems: Vec<Value> = problems
                .iter()
                .map(|p| json!({"key": p.key, "message": p.message}))
                .collect();
            Response::json(
                422,
                &json!({"error": "invalid_config", "problems": problems}),
            )
        }
        ChangeError::Store(m) => Response::error(500, "registry_failed", m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn paths_and_methods_map_to_requests() {
        let ok =
            |m: &str, p: &str, b: &str| request(&req(m, p, b), p, "alice").map_err(|r| r.status);
        assert!(matches!(
            ok("GET", "/models", ""),
            Ok(RegistryRequest::Models)
        ));
        assert!(
            matches!(ok("HEAD", "/models/llama", ""), Ok(RegistryRequest::Model(m)) if m == "llama")
        );
        assert!(matches!(
            ok("POST", "/models/llama/versions", "{}"),
            Ok(RegistryRequest::Register { who, .. }) if who == "alice"
        ));
        assert!(matches!(
            ok("PUT", "/models/l/versions/1.0.0/status", "{}"),
            Ok(RegistryRequest::SetStatus { .. })
        ));
        assert!(matches!(
            ok("POST", "/models/l/versions/1.0.0/rollout/abort", ""),
            Ok(RegistryRequest::MoveRollout {
                step: RolloutMove::Abort,
                ..
            })
        ));
        assert!(matches!(
            ok("DELETE", "/splits", "{}"),
            Ok(RegistryRequest::DeleteSplit { .. })
        ));
        for (m, p, want) in [
            ("DELETE", "/models", 405),
            ("PUT", "/models/l/versions", 405),
            ("GET", "/models/l/versions/1.0.0/status", 405),
            ("PUT", "/models/l/versions/1.0.0/rollout", 405),
            ("POST", "/models/l/versions/1.0.0/rollout/explode", 404),
            ("GET", "/models/l/versions/1.0.0/extra/x/y", 404),
            ("POST", "/audit", 405),
            ("POST", "/models/l/versions", 400),
        ] {
            assert_eq!(ok(m, p, "not json").err(), Some(want), "{m} {p}");
        }
        assert!(
            is_registry_path("/models")
                && is_registry_path("/models/x")
                && is_registry_path("/audit")
        );
        assert!(!is_registry_path("/modelsx") && !is_registry_path("/metrics"));
    }

    #[test]
    fn audit_queries_decode_and_name_bad_parameters() {
        let q = audit_query("limit=5&before=9&subject=%22%2Fv1%22%7Cllama%40")
            .unwrap_or_else(|r| panic!("{}", r.status));
        assert_eq!((q.limit, q.before_id), (5, Some(9)));
        assert_eq!(q.subject.as_deref(), Some("\"/v1\"|llama@"));
        for bad in [
            "limit=x",
            "before=-",
            "subject=%zz",
            "who=me",
            "subject=%ff",
        ] {
            assert_eq!(audit_query(bad).err().map(|r| r.status), Some(400), "{bad}");
        }
    }
}
