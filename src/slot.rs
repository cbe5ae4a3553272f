//! What one request holds besides its connection: the parsed head and the buffers the stages
//! fill, on loan from the worker while the request is served (an idle keep-alive connection
//! holds none of it) and reused across requests, so a warm worker allocates none of them per
//! request. The connection loop (`server`) takes a [`RequestSlot`] from the worker's pool for
//! each request and the pipeline fills it; [`RequestBufs::reset`] frees what grew too large.

use crate::http::RequestHead;

/// What one request holds besides its connection, on loan from the worker while it is served
/// (an idle keep-alive connection holds none of it) and reused across requests: the parsed
/// head (~2 KB of offsets) and the buffers the stages fill.
#[derive(Default)]
pub struct RequestSlot {
    pub head: RequestHead,
    pub bufs: RequestBufs,
}

/// Per-request buffers (see [`RequestSlot`]); each is cleared before use.
#[derive(Debug, Default)]
pub struct RequestBufs {
    /// A copy of the head while the body is read into the connection buffer behind it.
    pub head: Vec<u8>,
    /// The request body as received, when a stage must read it whole.
    pub body: Vec<u8>,
    /// The body as sent upstream (with the chosen model spliced in).
    pub body_out: Vec<u8>,
    /// The body's `model`, decoded (see [`crate::model::JsonBody::parse`]).
    pub model: String,
    /// The body's parse, kept for the adapt stage (see [`crate::model::ParseHome`]).
    pub parse: crate::model::ParseHome,
    /// Extra request header lines for the upstream (e.g. identity headers), each ending CRLF.
    pub up_headers: Vec<u8>,
    /// Extra response header lines (e.g. `x-shardgate-model`, `x-ratelimit-*`,
    /// `www-authenticate`): on the relayed response, or on the gateway's own error.
    pub resp_headers: Vec<u8>,
    /// What the stages learned about the request, for the access log.
    pub facts: Facts,
    /// The provider adapter's and schema transform's buffers (`crate::adapt`).
    pub adapt: crate::adapt::Bufs,
}

/// What the stages learned about a request that the connection loop logs (reused buffers:
/// no allocation per request once warm).
#[derive(Debug, Default)]
pub struct Facts {
    /// The verified subject, empty for open routes.
    pub subject: String,
    /// The id of the API key the caller presented, empty for other credentials.
    pub api_key: String,
    /// The model quotas and token counts went by, empty when the body was not read.
    pub model: String,
    /// Tokens the response used, when known.
    pub tokens: Option<u64>,
    /// The caller's tenant, empty when none.
    pub tenant: String,
    /// Prompt, completion and cached tokens, when known.
    pub usage: Option<crate::quota::usage::Usage>,
    /// What the response cost in pico-units of `spend.currency`, when it has a price.
    pub cost_pico: Option<u64>,
    /// The request's trace (inactive when tracing is off).
    pub trace: crate::trace::TraceCtx,
    /// The model the body named, kept only for a sampled trace's span.
    pub request_model: String,
    /// The JSON path of the request field a rejection is about (`$.messages[0].role`), sent
    /// as the error's `param`; empty when the rejection is not about one field.
    pub error_param: String,
}

/// Request buffers that grew past this are freed when the request ends, not kept for reuse.
pub const REQUEST_BUF_KEEP: usize = 64 * 1024;

impl RequestBufs {
    /// Empties every buffer for the next request, freeing any that grew past
    /// [`REQUEST_BUF_KEEP`] (one large body must not pin its buffer in the pool).
    pub fn reset(&mut self) {
        for b in [
            &mut self.head,
            &mut self.body,
            &mut self.body_out,
            &mut self.up_headers,
            &mut self.resp_headers,
        ] {
            if b.capacity() > REQUEST_BUF_KEEP {
                *b = Vec::new();
            } else {
                b.clear();
            }
        }
        if self.model.capacity() > REQUEST_BUF_KEEP {
            self.model = String::new();
        }
        self.model.clear();
        self.parse.reset(REQUEST_BUF_KEEP);
        self.facts.subject.clear();
        self.facts.api_key.clear();
        self.facts.model.clear();
        self.facts.tokens = None;
        self.facts.tenant.clear();
        self.facts.usage = None;
        self.facts.cost_pico = None;
        self.facts.trace = crate::trace::TraceCtx::default();
        self.facts.request_model.clear();
        self.facts.error_param.clear();
        self.adapt.reset();
    }
}
