//! The auth stage: find the credential, verify it against this core's keys, key table and
//! revocation list, check the route's scope and an API key's model allow-list, render the
//! rejection (401 with an RFC 6750 challenge, or 403 for a missing scope or a model the key
//! may not use), counted by reason. A token naming a key id no key has asks the control plane
//! to fetch the remote key sets again (at most once per interval, the control plane's rule).
//!
//! # Client certificates
//!
//! A request with no credential (neither the credential header nor the API key header) on a
//! TLS connection with a verified client certificate is that certificate's subject when
//! `[auth] client_certificates` is on ([`crate::auth::Authenticator::certificate_identity`]),
//! on routes that accept every configured kind of credential (`auth` absent, `true` or
//! `"any"`); a route narrowed to `"jwt"` or `"key"` accepts only that kind.
//!
//! # Model allow-lists
//!
//! A key with a model allow-list is checked against the model the body names on routes that
//! read it (model routes, splits). A request without a body names no model and is not
//! restricted (`GET /v1/models`). A request with a body on a route that does not read it (a
//! plain proxy route) is refused for such a key: the gateway cannot tell which model it asks
//! for, and the allow-list fails closed.

use crate::auth::{AuthError, Authenticator, Credentials, Identity};
use crate::config::Snapshot;
use crate::error::{Fault, GatewayError};
use crate::http::RequestHead;
use crate::route::{Route, RouteAuth};
use crate::time::unix_now;
use crate::tls::PeerIdentity;
use crate::worker::Worker;

/// The model a request asks for, as far as the gateway read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestModel<'a> {
    /// The body's `model`.
    Named(&'a str),
    /// No body, or a body read whole that names none.
    Unnamed,
    /// A body the route does not read: it may name any model.
    Unread,
}

/// Whether `route` requires a credential.
pub fn required(auth: Option<&Authenticator>, route: &Route) -> bool {
    crate::auth::credential_required(auth, route.auth())
}

/// The one value of header `name` in the head; `Err` when it is repeated (two credentials
/// are one too many: which one would the upstream believe?).
fn single<'b>(
    head: &'b RequestHead,
    buf: &'b [u8],
    name: &str,
) -> Result<Option<&'b [u8]>, AuthError> {
    let mut values = head
        .headers(buf)
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()));
    let value = values.next().map(|(_, v)| v);
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    Ok(value)
}

/// Whether a route whose `auth` is `route_auth` admits a verified client certificate in place
/// of a credential (module docs): not when it is narrowed to one kind.
fn accepts_certificate(route_auth: RouteAuth) -> bool {
    !matches!(route_auth, RouteAuth::Jwt | RouteAuth::Key)
}

/// Verifies the request's credential for a route whose `auth` is `route_auth` (`buf` holds
/// the head's bytes); without one, the connection's verified client certificate (`peer`)
/// when `[auth] client_certificates` is on and the route accepts it.
pub fn verify<'s>(
    worker: &Worker,
    auth: &'s Authenticator,
    route_auth: RouteAuth,
    (head, buf): (&RequestHead, &[u8]),
    peer: Option<&PeerIdentity>,
) -> Result<Identity<'s>, AuthError> {
    let cred = Credentials {
        header: single(head, buf, auth.header_name())?,
        key_header: match auth.key_header_name() {
            Some(name) => single(head, buf, name)?,
            None => None,
        },
    };
    if let (None, None, Some(peer)) = (cred.header, cred.key_header, peer) {
        if accepts_certificate(route_auth) {
            if let Ok(id) =
                auth.certificate_identity(peer.subject(), unix_now(), &worker.revocations.borrow())
            {
                return Ok(id);
            }
        }
    }
    let accepts = crate::auth::accepts(Some(auth), route_auth);
    let verdict = auth.authenticate(
        cred,
        accepts,
        unix_now(),
        &worker.revocations.borrow(),
        &mut worker.auth_scratch.borrow_mut(),
    );
    if verdict == Err(AuthError::UnknownKey) && !auth.remote_sources().is_empty() {
        worker.ask_for_remote_keys();
    }
    verdict
}

/// The `auth` the early verification goes by: the path's default route's, or (the route
/// depends on the body) the default.
pub fn early_auth(early: Option<&Route>) -> RouteAuth {
    early.map_or(RouteAuth::Default, Route::auth)
}

/// Verifies the credential before the body is read, whenever the route may need it: the
/// path's default route requires a credential, or the route depends on the body and is not
/// known yet (then for what every configured verifier accepts). `None`: not checked (no
/// `[auth]`, or the default route is open).
pub fn verify_early<'s>(
    worker: &Worker,
    snap: &'s Snapshot,
    head: (&RequestHead, &[u8]),
    peer: Option<&PeerIdentity>,
    early: Option<&Route>,
) -> Option<Result<Identity<'s>, AuthError>> {
    let auth = snap.auth.as_ref()?;
    let route_auth = early_auth(early);
    if !crate::auth::credential_required(Some(auth), route_auth) {
        return None;
    }
    Some(verify(worker, auth, route_auth, head, peer))
}

/// The identity for the final `route`: the early verdict (`early`: the `auth` it went by,
/// [`early_auth`]), or a verification now if none ran or it went by another `auth` (a route
/// chosen by model that accepts other kinds of credential). `model`: what the request asks
/// for, for an API key's allow-list. `Err`: the rejection to answer (counted, its
/// `WWW-Authenticate` line in `resp_headers`).
#[allow(clippy::too_many_arguments)]
pub fn admit_for<'s>(
    worker: &Worker,
    snap: &'s Snapshot,
    head: (&RequestHead, &[u8]),
    peer: Option<&PeerIdentity>,
    early: RouteAuth,
    route: &Route,
    verdict: Option<Result<Identity<'s>, AuthError>>,
    model: RequestModel<'_>,
    resp_headers: &mut Vec<u8>,
) -> Result<Option<Identity<'s>>, GatewayError> {
    let auth = snap.auth.as_ref();
    let verdict = match (verdict, auth) {
        (Some(v), _) if early == route.auth() => Some(v),
        (_, Some(a)) if required(auth, route) => Some(verify(worker, a, route.auth(), head, peer)),
        (v, _) => v,
    };
    admit(auth, route, verdict, model).map_err(|e| rejection(worker, e, resp_headers))
}

/// The identity for `route` from a verification result: `Ok(None)` for open routes.
pub fn admit<'s>(
    auth: Option<&Authenticator>,
    route: &Route,
    verdict: Option<Result<Identity<'s>, AuthError>>,
    model: RequestModel<'_>,
) -> Result<Option<Identity<'s>>, AuthError> {
    if !required(auth, route) {
        return Ok(None);
    }
    let id = verdict.unwrap_or(Err(AuthError::Missing))?;
    if let Some(scope) = route.scope() {
        if !id.has_scope(scope) {
            return Err(AuthError::InsufficientScope);
        }
    }
    if let Some(key) = id.api_key {
        let allowed = match model {
            RequestModel::Named(m) => key.allows_model(Some(m)),
            RequestModel::Unnamed => true,
            RequestModel::Unread => !key.restricts_models(),
        };
        if !allowed {
            return Err(AuthError::ModelNotAllowed);
        }
    }
    Ok(Some(id))
}

/// Whether a client header must not reach the upstream: identity headers the gateway sets
/// (a client could forge them) and, when the gateway verified it, the credential itself (in
/// either header it may come in).
pub fn is_gateway_header(auth: Option<&Authenticator>, verified: bool, name: &[u8]) -> bool {
    let Some(auth) = auth else { return false };
    let credential = name.eq_ignore_ascii_case(auth.header_name().as_bytes())
        || auth
            .key_header_name()
            .is_some_and(|h| name.eq_ignore_ascii_case(h.as_bytes()));
    (verified && credential)
        || auth
            .mapped_headers()
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Appends the identity headers for the upstream.
pub fn identity_headers(auth: &Authenticator, id: &Identity<'_>, out: &mut Vec<u8>) {
    auth.write_upstream_headers(id, out);
}

/// The response for a rejection (counted by reason), and its `WWW-Authenticate` line.
pub fn rejection(worker: &Worker, e: AuthError, extra: &mut Vec<u8>) -> GatewayError {
    worker.metrics.borrow_mut().counters.add(
        &crate::metrics::counters::AUTH_REJECTIONS,
        &[e.reason()],
        1,
    );
    let challenge = e.www_authenticate();
    if !challenge.is_empty() {
        extra.extend_from_slice(b"www-authenticate: ");
        extra.extend_from_slice(challenge.as_bytes());
        extra.extend_from_slice(b"\r\n");
    }
    GatewayError {
        status: e.status(),
        kind: e.kind(),
        message: e.description(),
        fault: Fault::Downstream,
        retry: false,
        close: false,
    }
}
