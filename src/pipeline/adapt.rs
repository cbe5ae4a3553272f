//! The adapt stage: the request body (and path, and provider headers) the upstream gets, and
//! what the relay must do with its response.
//!
//! # Contract
//!
//! [`prepare`] runs once the upstream is chosen (after the split, so a split may mix providers
//! and a fallback may cross them) and writes the body sent upstream into `body_out`:
//!
//! - an OpenAI upstream on a route without a transform: the body re-encoded as it is;
//! - `provider = "anthropic"`: the Chat Completions request translated to a Messages request
//!   ([`crate::adapt::anthropic`]), sent to `/v1/messages` with `anthropic-version` (the
//!   credential goes as `x-api-key`, see `config`); only chat completion paths can be
//!   translated — any other path is 404;
//! - a route with a `transform`: the body's fields renamed and checked by its request schema
//!   ([`crate::adapt::schema`]).
//!
//! `Ok` carries the path to send instead of the routed one and the response-side plan for the
//! relay; `Err` is a 400 (the JSON path of the refused field is in `param`, e.g.
//! `$.messages[1].content[0].image_url.url`) or the 404 above. Adapted requests go upstream
//! without `Accept-Encoding` (the gateway must read the response).
//!
//! # Performance
//!
//! Without adapters the cost is one lookup and the body's usual re-encoding. An adapted
//! request is written straight from the tape the body stage's parse left in the request's
//! slot ([`JsonBody::with_value`], the gateway's edits made in it as nodes) into the reused
//! outgoing buffer: the body is parsed once, no tree is built, nothing allocated once warm.

use crate::adapt::{self, anthropic, path};
use crate::config::{Snapshot, Upstream};
use crate::config_types::Provider;
use crate::error::GatewayError;
use crate::model::JsonBody;
use crate::route::Route;

/// A request to an Anthropic upstream on a path that is not a chat completion.
pub const NOT_CHAT: GatewayError = GatewayError::downstream(
    404,
    "this model's provider serves only /chat/completions through the gateway",
);
/// An adapted request without a JSON body.
pub const BODY_REQUIRED: GatewayError =
    GatewayError::downstream(400, "this route needs a JSON request body");

/// What the adapt stage decided.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Adapted<'s> {
    /// The path to send upstream instead of the routed one (the query is dropped).
    pub path: Option<&'static [u8]>,
    /// What the relay does with the response.
    pub response: Option<adapt::Response<'s>>,
    /// The request goes to an adapter: headers the gateway owns for it are not forwarded.
    pub adapted: bool,
    /// Forwarded client headers are not enough for Anthropic: its own are set.
    pub anthropic: bool,
}

impl Adapted<'_> {
    /// Whether the client header `name` is left out of the upstream request.
    pub fn drops(&self, name: &[u8]) -> bool {
        (self.adapted && name.eq_ignore_ascii_case(b"accept-encoding"))
            || (self.anthropic
                && anthropic::OWNED_HEADERS
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h)))
    }
}

/// Whether the body must be read for the route's adapter before the route is chosen by model
/// (a plain upstream route normally streams its body through).
pub(super) fn needs_body(snap: &Snapshot, route: &Route, path: &[u8], has_body: bool) -> bool {
    if let crate::route::RouteTarget::Upstream(i) = route.target() {
        if matches!(snap.upstreams[*i].provider, Provider::Anthropic(_)) {
            return is_chat(path);
        }
    }
    has_body
        && snap
            .transforms
            .for_route(route.id().0 as usize)
            .is_some_and(|t| t.schema.request.is_some())
}

fn is_chat(path: &[u8]) -> bool {
    path.ends_with(b"/chat/completions")
}

/// Where [`prepare`] writes: the request's reused buffers.
pub(super) struct Out<'b> {
    /// The body sent upstream.
    pub body: &'b mut Vec<u8>,
    /// Header lines added to the upstream request.
    pub headers: &'b mut Vec<u8>,
    /// The JSON path of a refused field (`error.param`).
    pub param: &'b mut String,
}

/// See the module docs.
pub(super) fn prepare<'s>(
    snap: &'s Snapshot,
    route: &Route,
    upstream: &'s Upstream,
    routed_path: &[u8],
    json: Option<&mut JsonBody>,
    out: Out<'_>,
) -> Result<Adapted<'s>, GatewayError> {
    let Out {
        body: body_out,
        headers: up_headers,
        param,
    } = out;
    let refused = |e: path::Invalid, param: &mut String| {
        path::root(param);
        GatewayError::downstream(400, e.message)
    };
    if let Provider::Anthropic(a) = &upstream.provider {
        if !is_chat(routed_path) {
            return Err(NOT_CHAT);
        }
        let j = json.ok_or(BODY_REQUIRED)?;
        j.with_value(|v| anthropic::chat_request(v, a, body_out, param))
            .map_err(|e| refused(e, param))?;
        up_headers.extend_from_slice(b"anthropic-version: ");
        up_headers.extend_from_slice(a.version.as_bytes());
        up_headers.extend_from_slice(b"\r\n");
        return Ok(Adapted {
            path: Some(anthropic::MESSAGES_PATH),
            response: Some(adapt::Response::Anthropic),
            adapted: true,
            anthropic: true,
        });
    }
    let Some(t) = snap.transforms.for_route(route.id().0 as usize) else {
        if let Some(j) = json {
            j.encode_into(body_out);
        }
        return Ok(Adapted::default());
    };
    match (json, t.schema.request) {
        (Some(j), Some(root)) => j
            .with_value(|v| adapt::schema::map::request(&t.schema, root, v, body_out, param))
            .map_err(|e| refused(e, param))?,
        (Some(j), None) => j.encode_into(body_out),
        (None, _) => {}
    }
    Ok(Adapted {
        path: None,
        response: t.schema.response.map(|root| adapt::Response::Schema {
            schema: &t.schema,
            root,
        }),
        adapted: true,
        anthropic: false,
    })
}
