//! Raw TOML for `breaker = {..}`, `health_check = {..}` and `retry = {..}`, and the validated
//! policies the data path and the coordination thread use.
//!
//! Every raw field is optional so that a per-upstream table can override single keys of
//! `[defaults.*]`: `upstream.overlay(&defaults).validate(key)` gives the effective policy, and
//! any key missing from both takes the built-in default documented on the field.

use std::time::Duration;

use serde::Deserialize;

use crate::config_types::ConfigProblem;

/// The most probe permits one HALF_OPEN episode may hand out.
const MAX_HALF_OPEN_PROBES: u32 = 1000;
/// The shortest sliding window; each of its buckets must span at least one millisecond.
const MIN_WINDOW_MS: u64 = 100;
/// The longest accepted health probe path.
const MAX_HEALTH_PATH_LEN: usize = 1024;

/// `breaker = { .. }` on `[defaults]`, a deployment or an upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Trip when failures / calls in the window reach this (default 0.5).
    pub failure_rate: Option<f64>,
    /// ... but only with at least this many calls in the window (default 20).
    pub min_calls: Option<u32>,
    /// The sliding window, in ms (default 10000).
    pub window_ms: Option<u64>,
    /// Or trip on this many failures in a row (default 5).
    pub consecutive_failures: Option<u32>,
    /// Upstream statuses that count as failures (default: every 5xx).
    pub failure_statuses: Option<Vec<u16>>,
    /// First open interval, in ms (default 1000).
    pub open_base_ms: Option<u64>,
    /// Growth per consecutive trip (default 2.0).
    pub open_factor: Option<f64>,
    /// Ceiling of the open interval, in ms (default 60000).
    pub open_max_ms: Option<u64>,
    /// Relative jitter of the open interval, ± (default 0.2).
    pub open_jitter: Option<f64>,
    /// Probes admitted in HALF_OPEN across all cores; that many successes close (default 3).
    pub half_open_probes: Option<u32>,
}

/// `health_check = { .. }` on `[defaults]`, a deployment or an upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path of the GET probe (default "/health").
    pub path: Option<String>,
    /// Time between probes of one endpoint, in ms (default 2000).
    pub interval_ms: Option<u64>,
    /// Connect + response deadline of one probe, in ms (default 1000).
    pub timeout_ms: Option<u64>,
    /// Successful probes in a row that bring an unhealthy endpoint back (default 2).
    pub healthy_threshold: Option<u32>,
    /// Failed probes in a row that take a healthy endpoint out (default 3).
    pub unhealthy_threshold: Option<u32>,
}

/// `retry = { .. }` on `[defaults]` or a route.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Retries may add at most this fraction of recent requests (default 0.2).
    pub budget_ratio: Option<f64>,
    /// Plus this many retries per second regardless of traffic (default 10).
    pub min_retries_per_sec: Option<u32>,
}

/// The set of upstream statuses (all within 500..=599) that count as failures, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureStatuses(u128);

impl FailureStatuses {
    /// Every 5xx status.
    pub const ALL_5XX: FailureStatuses = FailureStatuses((1u128 << 100) - 1);

    /// The set of the given codes; codes outside 500..=599 are left out (validation rejects
    /// them first).
    pub fn from_codes(codes: &[u16]) -> Self {
        let bits = codes
            .iter()
            .filter(|c| (500..600).contains(*c))
            .fold(0u128, |bits, c| bits | 1u128 << (c - 500));
        FailureStatuses(bits)
    }

    /// Whether `code` is in the set.
    pub fn contains(self, code: u16) -> bool {
        (500..600).contains(&code) && self.0 & (1u128 << (code - 500)) != 0
    }
}

/// A validated breaker policy for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    /// Failure-rate threshold in parts per million (integer so that 0.3 × 10 calls trips at
    /// exactly 3 failures).
    pub failure_rate_ppm: u32,
    pub min_calls: u32,
    pub window: Duration,
    pub consecutive_failures: u32,
    pub failure_statuses: FailureStatuses,
    pub open_base: Duration,
    pub open_factor: f64,
    pub open_max: Duration,
    pub open_jitter: f64,
    pub half_open_probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        RawBreaker::default()
            .validate("breaker")
            .expect("built-in breaker defaults are valid")
    }
}

impl BreakerPolicy {
    /// Whether `failures` out of `calls` reaches the failure-rate threshold.
    pub fn rate_tripped(&self, calls: u64, failures: u64) -> bool {
        calls >= u64::from(self.min_calls)
            && failures * 1_000_000 >= u64::from(self.failure_rate_ppm) * calls
    }
}

/// A validated health-check policy for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckPolicy {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckPolicy {
    fn default() -> Self {
        RawHealthCheck::default()
            .validate("health_check")
            .expect("built-in defaults are valid")
    }
}

/// A validated retry-budget policy for one route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub budget_ratio: f64,
    pub min_retries_per_sec: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RawRetry::default()
            .validate("retry")
            .expect("built-in retry defaults are valid")
    }
}

/// Field-wise `self` over `defaults`.
macro_rules! overlay {
    ($self:ident, $defaults:ident, $ty:ident { $($field:ident),* }) => {
        $ty { $($field: $self.$field.clone().or_else(|| $defaults.$field.clone())),* }
    };
}

impl RawBreaker {
    /// This table's keys over `defaults`' keys.
    pub fn overlay(&self, defaults: &RawBreaker) -> RawBreaker {
        overlay!(
            self,
            defaults,
            RawBreaker {
                failure_rate,
                min_calls,
                window_ms,
                consecutive_failures,
                failure_statuses,
                open_base_ms,
                open_factor,
                open_max_ms,
                open_jitter,
                half_open_probes
            }
        )
    }

    /// The effective policy, or every problem found; `key` is this table's key path
    /// (`upstreams[1].breaker`).
    pub fn validate(&self, key: &str) -> Result<BreakerPolicy, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, msg: String| {
            problems.push(ConfigProblem::new(format!("{key}.{field}"), msg));
        };
        let failure_rate = self.failure_rate.unwrap_or(0.5);
        if !(failure_rate > 0.0 && failure_rate <= 1.0) {
            problem(
                "failure_rate",
                format!("must be in (0, 1], got {failure_rate}"),
            );
        }
        let min_calls = self.min_calls.unwrap_or(20);
        if min_calls == 0 {
            problem("min_calls", "must be at least 1".into());
        }
        let window_ms = self.window_ms.unwrap_or(10_000);
        if window_ms < MIN_WINDOW_MS {
            problem(
                "window_ms",
                format!("must be at least {MIN_WINDOW_MS}, got {window_ms}"),
            );
        }
        let consecutive_failures = self.consecutive_failures.unwrap_or(5);
        if consecutive_failures == 0 {
            problem("consecutive_failures", "must be at least 1".into());
        }
        let failure_statuses = match &self.failure_statuses {
            None => FailureStatuses::ALL_5XX,
            Some(codes) => {
                for (i, code) in codes.iter().enumerate() {
                    if !(500..600).contains(code) {
                        // 4xx and 429 are the client's or the quota's business; counting them
                        // would let one bad caller eject a healthy model server.
                        problem(
                            &format!("failure_statuses[{i}]"),
                            format!("{code} is not 5xx"),
                        );
                    }
                }
                FailureStatuses::from_codes(codes)
            }
        };
        let open_base_ms = self.open_base_ms.unwrap_or(1000);
        if open_base_ms == 0 {
            problem("open_base_ms", "must be at least 1".into());
        }
        let open_factor = self.open_factor.unwrap_or(2.0);
        if !(open_factor.is_finite() && open_factor >= 1.0) {
            problem(
                "open_factor",
                format!("must be a finite number >= 1, got {open_factor}"),
            );
        }
        let open_max_ms = self.open_max_ms.unwrap_or(60_000);
        if open_max_ms < open_base_ms {
            problem(
                "open_max_ms",
                format!("must be >= open_base_ms ({open_base_ms})"),
            );
        }
        let open_jitter = self.open_jitter.unwrap_or(0.2);
        if !(0.0..1.0).contains(&open_jitter) {
            problem(
                "open_jitter",
                format!("must be in [0, 1), got {open_jitter}"),
            );
        }
        let half_open_probes = self.half_open_probes.unwrap_or(3);
        if !(1..=MAX_HALF_OPEN_PROBES).contains(&half_open_probes) {
            problem(
                "half_open_probes",
                format!("must be in 1..={MAX_HALF_OPEN_PROBES}"),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(BreakerPolicy {
            failure_rate_ppm: (failure_rate * 1_000_000.0).round() as u32,
            min_calls,
            window: Duration::from_millis(window_ms),
            consecutive_failures,
            failure_statuses,
            open_base: Duration::from_millis(open_base_ms),
            open_factor,
            open_max: Duration::from_millis(open_max_ms),
            open_jitter,
            half_open_probes,
        })
    }
}

impl RawHealthCheck {
    /// This table's keys over `defaults`' keys.
    pub fn overlay(&self, defaults: &RawHealthCheck) -> RawHealthCheck {
        overlay!(
            self,
            defaults,
            RawHealthCheck {
                path,
                interval_ms,
                timeout_ms,
                healthy_threshold,
                unhealthy_threshold
            }
        )
    }

    /// The effective policy, or every problem found; `key` is this table's key path.
    pub fn validate(&self, key: &str) -> Result<HealthCheckPolicy, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, msg: String| {
            problems.push(ConfigProblem::new(format!("{key}.{field}"), msg));
        };
        let path = self.path.clone().unwrap_or_else(|| "/health".to_owned());
        // The path goes verbatim into a request line: anything that could split it is refused.
        if !path.starts_with('/')
            || path.len() > MAX_HEALTH_PATH_LEN
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            problem("path", format!("must start with '/' and have no spaces or controls, at most {MAX_HEALTH_PATH_LEN} bytes"));
        }
        let interval_ms = self.interval_ms.unwrap_or(2000);
        if interval_ms == 0 {
            problem("interval_ms", "must be at least 1".into());
        }
        let timeout_ms = self.timeout_ms.unwrap_or(1000);
        if timeout_ms == 0 || timeout_ms > interval_ms {
            problem(
                "timeout_ms",
                format!("must be in 1..=interval_ms ({interval_ms})"),
            );
        }
        let healthy_threshold = self.healthy_threshold.unwrap_or(2);
        if healthy_threshold == 0 {
            problem("healthy_threshold", "must be at least 1".into());
        }
        let unhealthy_threshold = self.unhealthy_threshold.unwrap_or(3);
        if unhealthy_threshold == 0 {
            problem("unhealthy_threshold", "must be at least 1".into());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(HealthCheckPolicy {
            path,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            healthy_threshold,
            unhealthy_threshold,
        })
    }
}

impl RawRetry {
    /// This table's keys over `defaults`' keys.
    pub fn overlay(&self, defaults: &RawRetry) -> RawRetry {
        overlay!(
            self,
            defaults,
            RawRetry {
                budget_ratio,
                min_retries_per_sec
            }
        )
    }

    /// The effective policy, or every problem found; `key` is this table's key path.
    pub fn validate(&self, key: &str) -> Result<RetryPolicy, Vec<ConfigProblem>> {
        let budget_ratio = self.budget_ratio.unwrap_or(0.2);
        // Above 1 a retry storm could more than double the load on a failing upstream.
        if !(0.0..=1.0).contains(&budget_ratio) {
            return Err(vec![ConfigProblem::new(
                format!("{key}.budget_ratio"),
                format!("must be in [0, 1], got {budget_ratio}"),
            )]);
        }
        Ok(RetryPolicy {
            budget_ratio,
            min_retries_per_sec: self.min_retries_per_sec.unwrap_or(10),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Defaults {
            breaker: RawBreaker,
            health_check: RawHealthCheck,
            retry: RawRetry,
        }
        let toml = r#"
            [breaker]
            failure_rate = 0.5
            min_calls = 20
            window_ms = 10000
            consecutive_failures = 5
            failure_statuses = [500, 502, 503, 504]
            open_base_ms = 1000
            open_factor = 2.0
            open_max_ms = 60000
            open_jitter = 0.2
            half_open_probes = 3
            [health_check]
            path = "/health"
            interval_ms = 2000
            timeout_ms = 1000
            healthy_threshold = 2
            unhealthy_threshold = 3
            [retry]
            budget_ratio = 0.2
            min_retries_per_sec = 10
        "#;
        let d: Defaults = toml::from_str(toml).unwrap();
        let b = d.breaker.validate("defaults.breaker").unwrap();
        assert_eq!(b.failure_rate_ppm, 500_000);
        assert!(b.failure_statuses.contains(502));
        assert!(!b.failure_statuses.contains(501));
        assert_eq!(b.open_max, Duration::from_secs(60));
        assert_eq!(
            d.health_check.validate("h").unwrap(),
            HealthCheckPolicy::default()
        );
        assert_eq!(d.retry.validate("r").unwrap(), RetryPolicy::default());
    }

    #[test]
    fn unknown_key_is_refused() {
        assert!(toml::from_str::<RawBreaker>("failure_ratio = 0.5").is_err());
        assert!(toml::from_str::<RawHealthCheck>("intervall_ms = 5").is_err());
        assert!(toml::from_str::<RawRetry>("ratio = 0.5").is_err());
    }

    #[test]
    fn overlay_takes_upstream_keys_over_defaults() {
        let defaults: RawBreaker = toml::from_str("min_calls = 50\nopen_base_ms = 200").unwrap();
        let upstream: RawBreaker = toml::from_str("min_calls = 7").unwrap();
        let p = upstream.overlay(&defaults).validate("u").unwrap();
        assert_eq!(p.min_calls, 7);
        assert_eq!(p.open_base, Duration::from_millis(200));
        assert_eq!(p.consecutive_failures, 5);
    }

    #[test]
    fn reports_every_breaker_problem_with_its_key() {
        let raw: RawBreaker = toml::from_str(
            "failure_rate = 1.5\nmin_calls = 0\nfailure_statuses = [503, 429]\n\
             open_base_ms = 500\nopen_max_ms = 100\nopen_jitter = 1.0\nhalf_open_probes = 0",
        )
        .unwrap();
        let keys: Vec<String> = raw
            .validate("u[1].breaker")
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            keys,
            [
                "u[1].breaker.failure_rate",
                "u[1].breaker.min_calls",
                "u[1].breaker.failure_statuses[1]",
                "u[1].breaker.open_max_ms",
                "u[1].breaker.open_jitter",
                "u[1].breaker.half_open_probes",
            ]
        );
    }

    #[test]
    fn reports_health_and_retry_problems() {
        let raw: RawHealthCheck = toml::from_str(
            "path = \"/h x\"\ninterval_ms = 100\ntimeout_ms = 200\nhealthy_threshold = 0",
        )
        .unwrap();
        let keys: Vec<String> = raw
            .validate("h")
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["h.path", "h.timeout_ms", "h.healthy_threshold"]);
        let raw: RawRetry = toml::from_str("budget_ratio = 2.0").unwrap();
        assert_eq!(raw.validate("r").unwrap_err()[0].key, "r.budget_ratio");
    }

    #[test]
    fn fractional_rate_is_exact() {
        let raw: RawBreaker = toml::from_str("failure_rate = 0.3\nmin_calls = 10").unwrap();
        let p = raw.validate("b").unwrap();
        assert!(p.rate_tripped(10, 3));
        assert!(!p.rate_tripped(10, 2));
        assert!(!p.rate_tripped(9, 9));
    }
}
