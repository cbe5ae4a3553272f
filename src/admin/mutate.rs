//! The admin endpoints that change the gateway beyond `/reload`: token revocation and route
//! weights. Both go through the control thread, which owns every durable file (the
//! revocation file and the config file): this thread only parses the body and answers.
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

use serde_json::{json, Value};

use super::http::{Request, Response};
use super::AdminState;
use crate::auth::{Revoked, RevokedKind};
use crate::control::{self, RevokeError, WeightsBody, WeightsError};
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
    match control::revoke_via(tx, r.clone()) {
        Ok(()) => {
            let kind = match r.kind {
                RevokedKind::Jti => "jti",
                RevokedKind::Sub => "sub",
            };
            Response::json(
                200,
                &json!({"revoked": {"kind": kind, "id": r.id, "expires_at": r.expires_at}}),
            )
        }
        Err(e @ RevokeError::Persist(_)) => Response::error(500, "persist_failed", &e.to_string()),
        Err(RevokeError::Stopped) => {
            Response::error(503, "unavailable", "the control thread has stopped")
        }
        // Persisted and queued, but not known to be in force everywhere: not a success.
        Err(e) => Response::error(503, "not_confirmed", &e.to_string()),
    }
}

/// `PUT /routes/weights`: the control thread rewrites the config file (atomically, validated
/// first) and reloads it; answers like `/reload`.
pub fn set_weights(state: &AdminState, req: &Request) -> Response {
    let Some(tx) = &state.control else {
        return Response::error(503, "unavailable", "no control thread to reload with");
    };
    let body: WeightsBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return BadField::new("(body)", e.to_string()).response(),
    };
    match control::set_weights_via(tx, body, super::RELOAD_TIMEOUT) {
        Ok(r) => super::reloaded(&r),
        Err(WeightsError::Bad(message)) => Response::json(
            400,
            &json!({"error": "bad_request", "problems": [{"key": "targets", "message": message}]}),
        ),
        Err(WeightsError::Invalid(e)) => super::invalid_config(&e.file, &e.problems),
        Err(WeightsError::Io(message)) => Response::error(500, "config_io", &message),
        Err(WeightsError::Stopped) => Response::error(
            503,
            "unavailable",
            "the control thread has stopped or did not answer",
        ),
    }
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
}
