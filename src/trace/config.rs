//! `[tracing]`: where spans go and how many requests start a trace.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;

use crate::config_types::ConfigProblem;

/// Default share of new traces sampled (a caller's sampled flag is always followed).
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// Default `service.name` of the spans.
pub const DEFAULT_SERVICE_NAME: &str = "shardgate";
/// Default time one export request to the collector may take.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default longest time a finished span waits before it is exported.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Default most spans waiting for export; past this, spans are dropped and counted.
pub const DEFAULT_MAX_QUEUE_SPANS: usize = 8192;
/// The OTLP/HTTP path of traces, used when the endpoint names no path.
pub const DEFAULT_TRACES_PATH: &str = "/v1/traces";

/// `[tracing]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The collector's OTLP/HTTP traces URL, `http://host:port[/path]`.
    pub endpoint: String,
    /// Share of requests without a caller's `traceparent` that start a sampled trace.
    pub sample_ratio: Option<f64>,
    pub service_name: Option<String>,
    pub export_timeout_ms: Option<u64>,
    pub export_interval_ms: Option<u64>,
    pub max_queue_spans: Option<usize>,
}

/// Where spans are exported: an OTLP/HTTP (protobuf) collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    pub addr: SocketAddr,
    /// The `Host` header (the authority as written).
    pub host: String,
    pub path: String,
}

impl std::fmt::Display for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.host, self.path)
    }
}

/// Validated `[tracing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    pub collector: Collector,
    pub sample_ratio: f64,
    pub service_name: String,
    pub export_timeout: Duration,
    pub export_interval: Duration,
    pub max_queue_spans: usize,
}

impl RawTracing {
    /// Validates the table; every problem goes to `problems` with its key path.
    pub fn build(&self, problems: &mut Vec<ConfigProblem>) -> Option<TracingSettings> {
        let before = problems.len();
        let collector = parse_endpoint(&self.endpoint)
            .map_err(|why| problems.push(ConfigProblem::new("tracing.endpoint", why)))
            .ok();
        let sample_ratio = self.sample_ratio.unwrap_or(DEFAULT_SAMPLE_RATIO);
        if !(0.0..=1.0).contains(&sample_ratio) {
            problems.push(ConfigProblem::new(
                "tracing.sample_ratio",
                format!("{sample_ratio} is not between 0.0 and 1.0"),
            ));
        }
        let service_name = self
            .service_name
            .clone()
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into());
        if service_name.trim().is_empty() || service_name.chars().any(char::is_control) {
            problems.push(ConfigProblem::new(
                "tracing.service_name",
                "must be a non-empty name without control characters",
            ));
        }
        let mut ms = |v: Option<u64>, d: Duration, key: &str, max: u64| match v {
            Some(0) => {
                problems.push(ConfigProblem::new(key, "must be greater than 0"));
                d
            }
            Some(n) if n > max => {
                problems.push(ConfigProblem::new(key, format!("must be at most {max}")));
                d
            }
            Some(n) => Duration::from_millis(n),
            None => d,
        };
        let export_timeout = ms(
            self.export_timeout_ms,
            DEFAULT_EXPORT_TIMEOUT,
            "tracing.export_timeout_ms",
            60_000,
        );
        let export_interval = ms(
            self.export_interval_ms,
            DEFAULT_EXPORT_INTERVAL,
            "tracing.export_interval_ms",
            60_000,
        );
        let max_queue_spans = self.max_queue_spans.unwrap_or(DEFAULT_MAX_QUEUE_SPANS);
        if !(64..=1_000_000).contains(&max_queue_spans) {
            problems.push(ConfigProblem::new(
                "tracing.max_queue_spans",
                "must be between 64 and 1000000",
            ));
        }
        if problems.len() > before {
            return None;
        }
        Some(TracingSettings {
            collector: collector?,
            sample_ratio,
            service_name,
            export_timeout,
            export_interval,
            max_queue_spans,
        })
    }
}

/// `http://host:port[/path]` → the collector (the path defaults to [`DEFAULT_TRACES_PATH`]).
fn parse_endpoint(url: &str) -> Result<Collector, String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            format!("`{url}`: https is not supported; export to a local collector over http")
        } else {
            format!("`{url}` is not an http://host:port[/path] URL")
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, DEFAULT_TRACES_PATH),
    };
    if !crate::http::fields::is_host_value(authority) || !authority.contains(':') {
        return Err(format!(
            "`{url}`: `{}` is not a host:port",
            authority.escape_debug()
        ));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains('#') {
        return Err(format!(
            "`{url}`: the path must be visible ASCII without a fragment"
        ));
    }
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("`{authority}` does not resolve ({e})"))?
        .next()
        .ok_or_else(|| format!("`{authority}` resolves to no address"))?;
    Ok(Collector {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(endpoint: &str) -> RawTracing {
        RawTracing {
            endpoint: endpoint.into(),
            sample_ratio: None,
            service_name: None,
            export_timeout_ms: None,
            export_interval_ms: None,
            max_queue_spans: None,
        }
    }

    #[test]
    fn endpoints() {
        let c = parse_endpoint("http://127.0.0.1:4318").unwrap();
        assert_eq!(
            (c.path.as_str(), c.host.as_str()),
            ("/v1/traces", "127.0.0.1:4318")
        );
        let c = parse_endpoint("http://localhost:4318/otlp/v1/traces").unwrap();
        assert_eq!(c.path, "/otlp/v1/traces");
        assert_eq!(c.to_string(), "http://localhost:4318/otlp/v1/traces");
        for bad in [
            "https://127.0.0.1:4318",
            "127.0.0.1:4318",
            "http://127.0.0.1",
            "http://",
            "http://a b:1/",
            "http://127.0.0.1:4318/v1 traces",
            "http://127.0.0.1:4318/#x",
            "http://127.0.0.1:99999/",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_names_its_key() {
        let r = RawTracing {
            endpoint: "https://x:1".into(),
            sample_ratio: Some(1.5),
            service_name: Some(" ".into()),
            export_timeout_ms: Some(0),
            export_interval_ms: Some(100_000),
            max_queue_spans: Some(1),
        };
        let mut problems = Vec::new();
        assert!(r.build(&mut problems).is_none());
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "tracing.endpoint",
                "tracing.sample_ratio",
                "tracing.service_name",
                "tracing.export_timeout_ms",
                "tracing.export_interval_ms",
                "tracing.max_queue_spans"
            ]
        );
        let mut problems = Vec::new();
        let s = raw("http://127.0.0.1:4318").build(&mut problems).unwrap();
        assert!(problems.is_empty());
        assert_eq!(s.sample_ratio, DEFAULT_SAMPLE_RATIO);
        assert_eq!(s.service_name, "shardgate");
    }
}
