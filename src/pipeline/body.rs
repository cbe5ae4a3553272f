//! The body stage: a route keyed by model, and every split, reads the JSON body whole before
//! it can choose where the request goes.
//!
//! # Contract
//!
//! [`read_json`] sends `100 Continue` when the client waits for it, reads the body off the
//! connection (bounded by `limits.max_body_bytes` (413), the body deadlines (408) and chunked
//! framing (400); each of these closes the connection, since the rest of the body is still in
//! flight) and parses it: a body that is not a JSON object, has duplicate top-level keys, or a
//! `model`/`stream` of the wrong type gets 400 and the connection stays usable.

use crate::conn::ClientConn;
use crate::http::parse::BodyFraming;
use crate::http::Limits;
use crate::model::{JsonBody, ParseHome};
use crate::proxy::{inbound, ReqInfo};

use super::Stop;

/// Reads and parses the request body (see the module docs). `raw` receives the bytes, `model`
/// the decoded `model`, `home` the parse (its tape is kept for the adapt stage; all reused
/// buffers of the request); with `opening`, the parse also
/// locates the conversation's opening (an upstream's affinity key may be the prompt).
pub(super) async fn read_json<'b>(
    c: &mut ClientConn,
    req: &ReqInfo,
    framing: BodyFraming,
    limits: &Limits,
    (raw, model, home): (&'b mut Vec<u8>, &'b mut String, &'b mut ParseHome),
    opening: bool,
) -> Result<JsonBody<'b>, Stop> {
    if inbound::send_continue(c, req).await.is_err() {
        // The client is gone.
        return Err(Stop::Close(0));
    }
    inbound::collect_body(c, framing, limits, raw).await?;
    let raw: &'b Vec<u8> = raw;
    Ok(
        JsonBody::parse_kept(raw, model, opening, home)
            .map_err(crate::error::GatewayError::from)?,
    )
}
