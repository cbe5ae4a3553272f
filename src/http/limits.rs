//! Every limit and timeout of the HTTP layer, in one place.

use std::time::Duration;

use serde::Deserialize;

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

/// The limits in force, built from `[limits]` (every key optional; defaults above).
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

/// The `[limits]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<usize>,
    pub max_request_line: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_idle_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub min_body_rate_bytes_per_s: Option<u64>,
    pub body_rate_grace_ms: Option<u64>,
    pub max_streaming_uploads: Option<u32>,
    pub keepalive_idle_timeout_ms: Option<u64>,
    pub max_connections_per_worker: Option<usize>,
    pub allow_underscores_in_headers: Option<bool>,
}

impl RawLimits {
    /// Applies overrides to the defaults; `problems` gets one entry per bad value.
    pub fn build(&self, problems: &mut Vec<crate::config_types::ConfigProblem>) -> Limits {
        let d = Limits::default();
        let ms = Duration::from_millis;
        let l = Limits {
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_request_line: self.max_request_line.unwrap_or(d.max_request_line),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            max_body_bytes: self.max_body_bytes.unwrap_or(d.max_body_bytes),
            header_read_timeout: self
                .header_read_timeout_ms
                .map_or(d.header_read_timeout, ms),
            body_idle_timeout: self.body_idle_timeout_ms.map_or(d.body_idle_timeout, ms),
            body_read_timeout: self.body_read_timeout_ms.map_or(d.body_read_timeout, ms),
            min_body_rate: self.min_body_rate_bytes_per_s.unwrap_or(d.min_body_rate),
            body_rate_grace: self.body_rate_grace_ms.map_or(d.body_rate_grace, ms),
            max_streaming_uploads: self
                .max_streaming_uploads
                .unwrap_or(d.max_streaming_uploads),
            keepalive_idle_timeout: self
                .keepalive_idle_timeout_ms
                .map_or(d.keepalive_idle_timeout, ms),
            max_connections_per_worker: self
                .max_connections_per_worker
                .unwrap_or(d.max_connections_per_worker),
            allow_underscores_in_headers: self
                .allow_underscores_in_headers
                .unwrap_or(d.allow_underscores_in_headers),
        };
        let mut bad = |key: &str, msg: String| {
            problems.push(crate::config_types::ConfigProblem::new(
                format!("limits.{key}"),
                msg,
            ))
        };
        if !(256..=1024 * 1024).contains(&l.max_header_bytes) {
            bad("max_header_bytes", "must be between 256 and 1048576".into());
        }
        if l.max_request_line < 64 || l.max_request_line > l.max_header_bytes {
            bad(
                "max_request_line",
                "must be at least 64 and at most max_header_bytes".into(),
            );
        }
        if l.max_headers == 0 || l.max_headers > MAX_HEADERS {
            bad(
                "max_headers",
                format!("must be between 1 and {MAX_HEADERS}"),
            );
        }
        if l.max_connections_per_worker == 0 {
            bad("max_connections_per_worker", "must be at least 1".into());
        }
        for (key, v) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_idle_timeout_ms", self.body_idle_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("body_rate_grace_ms", self.body_rate_grace_ms),
            ("keepalive_idle_timeout_ms", self.keepalive_idle_timeout_ms),
        ] {
            if v == Some(0) {
                bad(key, "must be greater than 0".into());
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> (Limits, Vec<String>) {
        let raw: RawLimits = toml::from_str(toml_text).unwrap();
        let mut problems = Vec::new();
        let l = raw.build(&mut problems);
        (l, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn body_pace_and_upload_keys_default_and_override() {
        let (d, problems) = build("");
        assert!(problems.is_empty());
        assert_eq!(
            (
                d.body_read_timeout,
                d.min_body_rate,
                d.body_rate_grace,
                d.max_streaming_uploads
            ),
            (
                BODY_READ_TIMEOUT,
                MIN_BODY_RATE_BYTES_PER_S,
                BODY_RATE_GRACE,
                MAX_STREAMING_UPLOADS
            )
        );
        let (l, problems) = build(
            "body_read_timeout_ms = 500\nmin_body_rate_bytes_per_s = 0\n\
             body_rate_grace_ms = 20\nmax_streaming_uploads = 0",
        );
        assert!(problems.is_empty());
        assert_eq!(l.body_read_timeout, Duration::from_millis(500));
        assert_eq!(l.body_rate_grace, Duration::from_millis(20));
        // 0 is meaningful for these two: no rate check, and every body read before forwarding.
        assert_eq!((l.min_body_rate, l.max_streaming_uploads), (0, 0));
    }

    #[test]
    fn zero_body_deadlines_are_refused_each_by_name() {
        let (_, problems) = build("body_read_timeout_ms = 0\nbody_rate_grace_ms = 0");
        assert_eq!(
            problems,
            [
                "limits.body_read_timeout_ms: must be greater than 0",
                "limits.body_rate_grace_ms: must be greater than 0"
            ]
        );
        let unknown = toml::from_str::<RawLimits>("body_timeout_ms = 5");
        assert!(unknown.is_err(), "a mistyped key fails loudly");
    }
}
