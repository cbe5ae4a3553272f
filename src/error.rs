//! The gateway error every stage folds into.
//!
//! Hot-path stages return small `Copy` enums ([`crate::http::ParseError`], [`UpstreamError`],
//! ...). Each folds into a [`GatewayError`], which knows its status, its OpenAI-style error
//! type, where the fault lies, whether a retry on another endpoint is allowed, and whether the
//! client connection must be closed after the response (framing errors) or can stay open.

use crate::http::ParseError;

/// Where the fault lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong.
    Downstream,
    /// The upstream failed or misbehaved.
    Upstream,
    /// The gateway itself (config, capacity).
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    /// OpenAI-style error `type`.
    pub kind: &'static str,
    pub message: &'static str,
    pub fault: Fault,
    /// The request provably did not reach an upstream, so it may be sent to another endpoint.
    pub retry: bool,
    /// The client connection cannot be reused after this error.
    pub close: bool,
}

/// Error kinds OpenAI sends as a `code` under `type` `invalid_request_error` (what its SDKs
/// and clients look for), rather than as the `type` itself.
const OPENAI_CODES: &[&str] = &["invalid_api_key"];

impl GatewayError {
    /// The body's `type` and `code` (empty: none): a kind OpenAI names as a code
    /// (`invalid_api_key`) is written as that code with type `invalid_request_error`; any
    /// other kind is the type. `kind` itself (the access log, metrics) stays as it is.
    pub fn wire_type_and_code(&self) -> (&'static str, &'static str) {
        if OPENAI_CODES.contains(&self.kind) {
            ("invalid_request_error", self.kind)
        } else {
            (self.kind, "")
        }
    }
    pub const fn downstream(status: u16, message: &'static str) -> Self {
        Self {
            status,
            kind: "invalid_request_error",
            message,
            fault: Fault::Downstream,
            retry: false,
            close: false,
        }
    }

    pub const fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl From<ParseError> for GatewayError {
    fn from(e: ParseError) -> Self {
        // A framing error leaves the byte stream in an unknown state: always close.
        GatewayError::downstream(e.status(), e.message()).closing()
    }
}

/// Failures talking to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Connection refused or reset during connect.
    ConnectFailed,
    ConnectTimeout,
    /// The TLS handshake with the upstream failed: its certificate did not verify (expired,
    /// wrong name, unknown issuer), it refused ours, or the protocol failed.
    TlsHandshake,
    /// No response head within the first-byte timeout.
    FirstByteTimeout,
    /// Silence between two response reads longer than the idle timeout.
    IdleTimeout,
    /// The connection closed or failed before a complete response head arrived.
    ClosedBeforeResponse,
    /// The response head was not valid HTTP/1.1 (or used framing we refuse to relay).
    BadResponse,
    /// The connection broke in the middle of the response body.
    ClosedMidBody,
    /// The client connection failed while the response was relayed (says nothing about the
    /// upstream).
    ClientGone,
}

impl UpstreamError {
    /// Whether the request provably never reached the upstream application.
    pub fn nothing_sent(self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectFailed
                | UpstreamError::ConnectTimeout
                | UpstreamError::TlsHandshake
        )
    }
}

impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> Self {
        let (status, message) = match e {
            UpstreamError::ConnectFailed => (502, "upstream connection failed"),
            UpstreamError::ConnectTimeout => (504, "upstream connect timed out"),
            UpstreamError::TlsHandshake => (502, "TLS handshake with the upstream failed"),
            UpstreamError::FirstByteTimeout => (504, "upstream did not respond in time"),
            UpstreamError::IdleTimeout => (504, "upstream stalled mid-response"),
            UpstreamError::ClosedBeforeResponse => {
                (502, "upstream closed the connection before responding")
            }
            UpstreamError::BadResponse => (502, "upstream sent an invalid response"),
            UpstreamError::ClosedMidBody => (502, "upstream closed the connection mid-response"),
            UpstreamError::ClientGone => (499, "client closed the connection"),
        };
        GatewayError {
            status,
            kind: match e {
                UpstreamError::TlsHandshake => "upstream_tls_error",
                _ => "upstream_error",
            },
            message,
            fault: Fault::Upstream,
            retry: e.nothing_sent(),
            close: false,
        }
    }
}

pub const NOT_FOUND: GatewayError = GatewayError::downstream(404, "no route matches this path");
pub const METHOD_NOT_ALLOWED: GatewayError =
    GatewayError::downstream(405, "method not allowed on this route");
pub const OVERLOADED: GatewayError = GatewayError {
    status: 503,
    kind: "overloaded_error",
    message: "gateway worker is at its connection limit",
    fault: Fault::Internal,
    retry: false,
    close: true,
};
pub const HEADER_TIMEOUT: GatewayError =
    GatewayError::downstream(408, "request head not received in time").closing();
pub const BODY_TIMEOUT: GatewayError =
    GatewayError::downstream(408, "request body stalled").closing();
/// The body missed its total deadline or minimum rate (see `proxy::inbound::BodyPace`).
pub const BODY_TOO_SLOW: GatewayError =
    GatewayError::downstream(408, "request body arrived too slowly").closing();
pub const CLIENT_BODY_ERROR: GatewayError =
    GatewayError::downstream(400, "request body ended early").closing();
