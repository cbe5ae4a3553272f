//! The auth stage: find the credential, verify it against this core's keys and revocation
//! list, check the route's scope, render the rejection (401 with an RFC 6750 challenge, or
//! 403 for a missing scope), counted by reason. A request without a credential header on a
//! TLS connection with a verified client certificate is that certificate's subject when
//! `[auth] client_certificates` is on ([`crate::auth::Authenticator::certificate_identity`]).

use crate::auth::{AuthError, Authenticator, Identity};
use crate::config::Snapshot;
use crate::error::{Fault, GatewayError};
use crate::http::RequestHead;
use crate::route::Route;
use crate::time::unix_now;
use crate::tls::PeerIdentity;
use crate::worker::Worker;

/// Whether `route` requires a verified token.
pub fn required(auth: Option<&Authenticator>, route: &Route) -> bool {
    crate::auth::token_required(auth, route.auth())
}

/// Verifies the request's credential (`buf` holds the head's bytes); without one, the
/// connection's verified client certificate (`peer`) when `[auth] client_certificates` is on.
pub fn verify(
    worker: &Worker,
    auth: &Authenticator,
    (head, buf): (&RequestHead, &[u8]),
    peer: Option<&PeerIdentity>,
) -> Result<Identity, AuthError> {
    let name = auth.header_name();
    let mut values = head
        .headers(buf)
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()));
    let value = values.next().map(|(_, v)| v);
    // Two credentials are one too many: which one would the upstream believe?
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    if let (None, Some(peer)) = (value, peer) {
        if let Ok(id) =
            auth.certificate_identity(peer.subject(), unix_now(), &worker.revocations.borrow())
        {
            return Ok(id);
        }
    }
    auth.verify(
        value,
        unix_now(),
        &worker.revocations.borrow(),
        &mut worker.auth_scratch.borrow_mut(),
    )
}

/// Verifies the credential before the body is read, whenever the route may need it: the
/// path's default route requires a token, or the route depends on the body and is not known
/// yet. `None`: not checked (no `[auth]`, or the default route is open).
pub fn verify_early(
    worker: &Worker,
    snap: &Snapshot,
    head: (&RequestHead, &[u8]),
    peer: Option<&PeerIdentity>,
    early: Option<&Route>,
) -> Option<Result<Identity, AuthError>> {
    let auth = snap.auth.as_ref()?;
    if early.is_some_and(|r| !required(Some(auth), r)) {
        return None;
    }
    Some(verify(worker, auth, head, peer))
}

/// The identity for the final `route`: the early verdict, or a verification now if none ran.
/// `Err`: the rejection to answer (counted, its `WWW-Authenticate` line in `resp_headers`).
pub fn admit_for(
    worker: &Worker,
    snap: &Snapshot,
    head: (&RequestHead, &[u8]),
    peer: Option<&PeerIdentity>,
    route: &Route,
    verdict: Option<Result<Identity, AuthError>>,
    resp_headers: &mut Vec<u8>,
) -> Result<Option<Identity>, GatewayError> {
    let auth = snap.auth.as_ref();
    let verdict = match (verdict, auth) {
        (None, Some(a)) if required(auth, route) => Some(verify(worker, a, head, peer)),
        (v, _) => v,
    };
    admit(auth, route, verdict).map_err(|e| rejection(worker, e, resp_headers))
}

/// The identity for `route` from a verification result: `Ok(None)` for open routes.
pub fn admit(
    auth: Option<&Authenticator>,
    route: &Route,
    verdict: Option<Result<Identity, AuthError>>,
) -> Result<Option<Identity>, AuthError> {
    if !required(auth, route) {
        return Ok(None);
    }
    let id = verdict.unwrap_or(Err(AuthError::Missing))?;
    if let Some(scope) = route.scope() {
        if !id.has_scope(scope) {
            return Err(AuthError::InsufficientScope);
        }
    }
    Ok(Some(id))
}

/// Whether a client header must not reach the upstream: identity headers the gateway sets
/// (a client could forge them) and, when the gateway verified it, the credential itself.
pub fn is_gateway_header(auth: Option<&Authenticator>, verified: bool, name: &[u8]) -> bool {
    let Some(auth) = auth else { return false };
    (verified && name.eq_ignore_ascii_case(auth.header_name().as_bytes()))
        || auth
            .mapped_headers()
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Appends the identity headers for the upstream.
pub fn identity_headers(auth: &Authenticator, id: &Identity, out: &mut Vec<u8>) {
    auth.write_upstream_headers(id, out);
}

/// The response for a rejection (counted by reason), and its `WWW-Authenticate` line.
pub fn rejection(worker: &Worker, e: AuthError, extra: &mut Vec<u8>) -> GatewayError {
    worker.metrics.borrow_mut().counters.add(
        &crate::metrics::counters::AUTH_REJECTIONS,
        &[e.reason()],
        1,
    );
    extra.extend_from_slice(b"www-authenticate: ");
    extra.extend_from_slice(e.www_authenticate().as_bytes());
    extra.extend_from_slice(b"\r\n");
    GatewayError {
        status: e.status(),
        kind: if e == AuthError::InsufficientScope {
            "permission_error"
        } else {
            "authentication_error"
        },
        message: e.description(),
        fault: Fault::Downstream,
        retry: false,
        close: false,
    }
}
