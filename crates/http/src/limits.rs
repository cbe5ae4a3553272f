//! Every limit and timeout of the HTTP layer, in one place.

use std::time::Duration;

/// Largest request head (request line + headers) accepted; over it → 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest request line accepted; over it → 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Most header fields accepted; over it → 431. Also the size of the stack header array.
pub const MAX_HEADERS: usize = 100;
/// Largest request body accepted; over it → 413.
pub const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Time allowed from a request's first byte to its complete head (slowloris guard) → 408.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence allowed while a request body is arriving → 408.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a whole request body, from when the gateway starts reading it → 408.
/// 10 MiB at 1 Mbit/s takes ~84 s.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Least average rate of a request body once [`BODY_RATE_GRACE`] has passed → 408. A body
/// trickling slower than this is an attack or a dead link, not a client worth an upstream
/// connection.
pub const MIN_BODY_RATE_BYTES_PER_S: u64 = 1024;
/// How long a body may take before its average rate is checked.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(10);
/// Request bodies one worker streams to one upstream at once while they arrive (each holds
/// an upstream connection); over it, a body is read whole before an upstream connection is
/// taken.
pub const MAX_STREAMING_UPLOADS: u32 = 32;
/// How long an idle keep-alive connection is kept open waiting for the next request.
pub const KEEPALIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections one worker serves at once; over it new connections get 503 and are closed.
pub const MAX_CONNECTIONS_PER_WORKER: usize = 20_000;
/// Initial size of a connection's read buffer; it grows up to `MAX_HEADER_BYTES` for heads.
pub const INIT_READ_BUF: usize = 4 * 1024;

/// The limits in force: the defaults above, or the main crate's `[limits]` table
/// (`shardgate::http_config::RawLimits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_request_line: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Bytes per second; 0 turns the rate check off.
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    pub max_streaming_uploads: u32,
    pub keepalive_idle_timeout: Duration,
    pub max_connections_per_worker: usize,
    /// Forward request headers whose names contain `_` (dropped by default; see
    /// [`underscore_dropped`]).
    pub allow_underscores_in_headers: bool,
}

/// Whether a request header is dropped rather than forwarded because its name has an `_`.
///
/// CGI-style upstreams (and frameworks that copy their conventions: WSGI, Rack, PHP) map
/// both `X-User-Id` and `X_User_Id` to `HTTP_X_USER_ID`, so a client could send a second
/// spelling of a header the gateway sets itself (an identity claim header) or of a framing
/// header (`Content_Length`) and have the upstream read it. nginx drops these by default
/// (`underscores_in_headers off`) for the same reason; `[limits]
/// allow_underscores_in_headers = true` forwards them.
#[inline]
pub fn underscore_dropped(limits: &Limits, name: &[u8]) -> bool {
    !limits.allow_underscores_in_headers && name.contains(&b'_')
}

impl Limits {
    /// The limits of a server off the data path (the admin API, the mock, a test upstream): a
    /// head of at most `max_head` bytes (its request line included) with at most `max_headers`
    /// fields (up to [`MAX_HEADERS`]), and a body of at most `max_body` bytes.
    pub fn bounded(max_head: usize, max_headers: usize, max_body: u64) -> Limits {
        Limits {
            max_header_bytes: max_head,
            max_request_line: max_head,
            max_headers: max_headers.min(MAX_HEADERS),
            max_body_bytes: max_body,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: MAX_HEADER_BYTES,
            max_request_line: MAX_REQUEST_LINE,
            max_headers: MAX_HEADERS,
            max_body_bytes: MAX_BODY_BYTES,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_idle_timeout: BODY_IDLE_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            min_body_rate: MIN_BODY_RATE_BYTES_PER_S,
            body_rate_grace: BODY_RATE_GRACE,
            max_streaming_uploads: MAX_STREAMING_UPLOADS,
            keepalive_idle_timeout: KEEPALIVE_IDLE_TIMEOUT,
            max_connections_per_worker: MAX_CONNECTIONS_PER_WORKER,
            allow_underscores_in_headers: false,
        }
    }
}
