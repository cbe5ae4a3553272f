//! The affinity key: for an upstream whose `balance` is `affinity`, what keeps one
//! conversation on one endpoint (see `balance::affinity`).
//!
//! # Contract
//!
//! [`key`] returns the hash of the configured key: the header's value, the verified
//! subject, or the conversation's opening read from the JSON body (`JsonBody::feed_opening`).
//! `None` (no such header, no subject, a body without messages or prompt, or an upstream on
//! another policy) is never an error: the request then goes to the least loaded endpoint.
//! Config validation guarantees that a prompt key is only configured where the body is read.

use crate::auth::Identity;
use crate::balance::key::{self, KeyHasher};
use crate::balance::AffinityKey;
use crate::model::JsonBody;

use super::Request;

/// The request's affinity key for upstream `up` (see the module docs).
#[inline]
pub(super) fn key(
    rq: &Request<'_>,
    up: usize,
    identity: Option<&Identity>,
    json: Option<&JsonBody>,
) -> Option<u64> {
    let a = rq.snap.balance.get(Some(up))?.affinity()?;
    match &a.key {
        AffinityKey::Header(h) => rq.head.header(rq.head_bytes, h).map(key::hash),
        AffinityKey::Subject => identity.map(|i| key::hash(i.subject.as_bytes())),
        AffinityKey::Prompt => {
            let mut h = KeyHasher::new();
            json?
                .feed_opening(a.prefix_bytes, |piece| h.piece(piece))
                .then(|| h.finish())
        }
    }
}
