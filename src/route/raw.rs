//! The raw config types of the routing stage, exactly as they appear in TOML.
//!
//! ```toml
//! [[deployments]]
//! model = "llama3-70b"
//! version = "3.2.1"                      # semver version
//! endpoints = ["127.0.0.1:9001"]         # host:port
//! served_name = "meta-llama/Llama-3-70B" # optional; default = model
//! labels = ["canary"]                    # optional
//!
//! [[routes]]
//! path = "/v1/chat/completions"          # static, `:param` and a trailing `*rest` segment
//! methods = ["POST"]                     # optional; default: any method
//! models = ["chat-default"]              # optional alias keying on the body's `model`
//! upstream = "mock"                      # EITHER a named upstream ...
//! targets = [                            # ... OR a model split
//!   { model = "llama3-70b", version = ">=3.2.0, <3.3.0", weight = 80 },
//! ]
//! all_matching_versions = false          # optional
//! label_header = "x-canary"              # optional
//! sticky = "subject"                     # optional; or { header = "x-session-id" }
//! fallbacks = [{ model = "llama3-8b", version = "*", weight = 1 }] # optional
//! auth = true                            # optional; or false, "jwt", "key", "any" (see RouteAuth)
//! scope = "ai:inference"                 # optional; carried through
//! transform = "users"                    # optional; a [[transforms]] name (crate::adapt)
//! ```
//!
//! Validation lives in [`super::Router::build`]; these types only fix the shape.

use serde::Deserialize;

/// One `[[deployments]]` entry: a concrete version of a model and where it runs.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    /// Model family name that routes refer to.
    pub model: String,
    /// Semver version, e.g. `3.2.1`.
    pub version: String,
    /// Backend addresses, `host:port`, `http://host:port` or `https://host[:port]`.
    pub endpoints: Vec<String>,
    /// Name the backend expects in the request's `model` field; default: `model`.
    #[serde(default)]
    pub served_name: Option<String>,
    /// Labels (e.g. `canary`) that a request's label header can select.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Proxy settings, as on `[[upstreams]]` (defaults when absent).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    #[serde(default)]
    pub first_byte_timeout_ms: Option<u64>,
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub api_key: Option<crate::config_types::Secret>,
    #[serde(default)]
    pub breaker: Option<crate::breaker::config::RawBreaker>,
    #[serde(default)]
    pub health_check: Option<crate::breaker::config::RawHealthCheck>,
    /// TLS toward the endpoints, as on `[[upstreams]]` (`https://` endpoints use TLS anyway).
    #[serde(default)]
    pub tls: Option<crate::tls::RawUpstreamTls>,
    /// Not TOML: a `[[deployments]]` entry is always active. Set for the model registry's
    /// versions, whose status decides which version requirements reach them.
    #[serde(skip)]
    pub status: super::catalog::VersionStatus,
    /// Endpoint choice, as on `[[upstreams]]` (see `balance`).
    #[serde(default)]
    pub balance: Option<crate::balance::RawPolicy>,
    #[serde(default)]
    pub affinity: Option<crate::balance::RawAffinity>,
    #[serde(default)]
    pub load_metric: Option<crate::balance::RawLoadMetric>,
    /// The API the deployment speaks, as on `[[upstreams]]` (`crate::adapt`).
    #[serde(default)]
    pub provider: crate::config_types::RawProvider,
    #[serde(default)]
    pub anthropic_version: Option<String>,
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Path pattern: `/static`, `/:param`, and optionally a last `/*rest` segment.
    pub path: String,
    /// Allowed methods; `None` means any method.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Aliases of the body's `model` this route applies to; empty: the path's default route.
    #[serde(default)]
    pub models: Vec<String>,
    /// A named upstream (plain proxy). Exactly one of `upstream` and `targets`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// A weighted model split. Exactly one of `upstream` and `targets`.
    #[serde(default)]
    pub targets: Option<Vec<RawTarget>>,
    /// `false`: each constraint resolves to its highest matching version; `true`: every
    /// matching version shares the target's weight equally.
    #[serde(default)]
    pub all_matching_versions: bool,
    /// Request header carrying a canary/gray label.
    #[serde(default)]
    pub label_header: Option<String>,
    /// Where the sticky key comes from.
    #[serde(default)]
    pub sticky: Option<RawSticky>,
    /// Used only when every primary target is down.
    #[serde(default)]
    pub fallbacks: Vec<RawTarget>,
    /// Which credentials the route accepts; carried through for the auth stage.
    #[serde(default)]
    pub auth: crate::config_types::RouteAuth,
    /// Carried through for the auth stage.
    #[serde(default)]
    pub scope: Option<String>,
    /// Per-route timeouts, over the upstream's (`total_ms` bounds the whole exchange,
    /// retries included).
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    /// A failed attempt (no response, or 502/503/504) may be retried on another endpoint
    /// while no response byte reached the client, the body is held whole, and the retry
    /// budget allows. Off by default: model calls are not idempotent.
    #[serde(default)]
    pub retryable: bool,
    /// A `[[transforms]]` entry's name: request and response fields are mapped by its schema.
    #[serde(default)]
    pub transform: Option<String>,
}

/// `timeouts = { connect_ms, first_byte_ms, idle_ms, total_ms }` on a route; each optional.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<u64>,
    pub first_byte_ms: Option<u64>,
    pub idle_ms: Option<u64>,
    pub total_ms: Option<u64>,
}

/// A route's timeouts; `None` keeps the upstream's value (and no total deadline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub connect: Option<std::time::Duration>,
    pub first_byte: Option<std::time::Duration>,
    pub idle: Option<std::time::Duration>,
    pub total: Option<std::time::Duration>,
}

/// One weighted entry of `targets` or `fallbacks`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// A deployment's `model`.
    pub model: String,
    /// Semver requirement (`^2.0.0`, `>=3.2.0, <3.3.0`, `*`); default `*`.
    #[serde(default = "any_version")]
    pub version: String,
    /// Relative weight; `0` drains the target.
    pub weight: u32,
}

fn any_version() -> String {
    "*".to_owned()
}

/// `sticky = "subject"` or `sticky = { header = "x-session-id" }`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum RawSticky {
    /// The verified JWT subject.
    Subject,
    /// The value of this request header.
    Header(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        deployments: Vec<RawDeployment>,
        #[serde(default)]
        routes: Vec<RawRoute>,
    }

    #[test]
    fn parses_the_documented_shape() {
        let doc: Doc = toml::from_str(
            r#"
            [[deployments]]
            model = "llama3-70b"
            version = "3.2.1"
            endpoints = ["127.0.0.1:9001"]
            labels = ["canary"]

            [[routes]]
            path = "/v1/chat/completions"
            methods = ["POST"]
            targets = [{ model = "llama3-70b", version = "^3", weight = 80 }]
            sticky = { header = "x-session-id" }

            [[routes]]
            path = "/v1/models"
            upstream = "mock"
            sticky = "subject"
            fallbacks = [{ model = "llama3-8b", weight = 1 }]
            "#,
        )
        .unwrap();
        assert_eq!(doc.deployments[0].served_name, None);
        assert_eq!(
            doc.routes[0].sticky,
            Some(RawSticky::Header("x-session-id".into()))
        );
        assert_eq!(doc.routes[1].sticky, Some(RawSticky::Subject));
        assert_eq!(doc.routes[1].fallbacks[0].version, "*");
        assert_eq!(doc.routes[1].methods, None);
    }

    #[test]
    fn rejects_unknown_and_mistyped_keys() {
        for bad in [
            "[[routes]]\npath = \"/\"\nupstream = \"a\"\nweigth = 1\n",
            "[[routes]]\npath = \"/\"\ntargets = [{ model = \"m\", wieght = 1 }]\n",
            "[[routes]]\npath = \"/\"\ntargets = [{ model = \"m\", weight = -1 }]\n",
            "[[routes]]\npath = \"/\"\nsticky = \"cookie\"\n",
            "[[deployments]]\nmodel = \"m\"\nversion = \"1.0.0\"\nendpoints = []\nlabel = \"x\"\n",
        ] {
            assert!(toml::from_str::<Doc>(bad).is_err(), "accepted: {bad}");
        }
    }
}
