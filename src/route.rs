//! Routing: path trie → route; model catalog and version split.
//!
//! Owns the `[[routes]]` and `[[deployments]]` config ([`RawRoute`], [`RawDeployment`]) and
//! the immutable [`Router`] built from them on the control thread. Each worker holds its own
//! clone and calls, per request:
//!
//! 1. [`Router::lookup`] with the method and the path **without its query string** (the
//!    engine strips `?…` before lookup): the path's candidate routes and captures.
//! 2. [`Router::select_by_model`] with the body's `model`: the one route for this request.
//! 3. For a [`RouteTarget::Split`], [`Router::choose`]: the deployment to send it to.
//!
//! # Error Handling
//!
//! Lookup errors are the `Copy` enum [`RouteError`]; [`RouteError::status`] gives the HTTP
//! status (404, 405 with [`Router::allow`] as `Allow`, 400). All keep the connection alive.
//! [`Router::choose`] returning `None` means no healthy deployment: 503.
//! [`Router::build`] reports every config problem at once, with key paths.
//!
//! # Performance
//!
//! Lookup, model selection and target choice allocate nothing and take no locks; see
//! `benches/route.rs`.

mod build;
mod catalog;
mod hash;
mod raw;
mod rng;
mod split;
mod trie;
mod weights;

pub use crate::config_types::RouteAuth;
pub use catalog::{Deployment, DeploymentId, VersionStatus};
pub use raw::{RawDeployment, RawRoute, RawSticky, RawTarget, RawTimeouts, RouteTimeouts};
pub use rng::WorkerRng;
pub use split::{Chosen, Configured, SelectCtx, Split, Target, Weight, MAX_TARGETS};
pub use trie::{MethodSet, PatternId, MAX_PARAMS};
pub use weights::set_weights_in_toml;

use crate::config_types::ConfigProblem;
use build::{build_route, natural_cmp};
use catalog::Catalog;
use trie::{Captures, Pattern, RouteSpec, Trie};

/// Index of a route in config order (`routes[i]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub u32);

/// Why a request has no route. Each becomes a response; none closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No pattern matches the path: 404.
    #[error("no route for this path")]
    NotFound,
    /// The path matches but no route there allows the method: 405, with
    /// `Allow: {Router::allow(pattern)}`.
    #[error("method not allowed on this path")]
    MethodNotAllowed(PatternId),
    /// Only model-keyed routes serve this path and method, and the body has no `model`: 400.
    #[error("this path requires a `model` in the request body")]
    ModelRequired,
    /// The body's `model` is none of the path's aliases and there is no default route: 404.
    #[error("no route serves the requested model")]
    UnknownModel,
}

impl RouteError {
    /// The HTTP status the error becomes.
    pub fn status(self) -> u16 {
        match self {
            RouteError::NotFound | RouteError::UnknownModel => 404,
            RouteError::MethodNotAllowed(_) => 405,
            RouteError::ModelRequired => 400,
        }
    }
}

/// Where a route sends its requests.
#[derive(Debug, Clone)]
pub enum RouteTarget {
    /// A plain proxy to a named upstream: the index into the `upstream_names` given to
    /// [`Router::build`].
    Upstream(usize),
    /// A weighted model split over deployments.
    Split(Split),
}

/// Where a route's sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    /// The verified JWT subject.
    Subject,
    /// This request header (lowercased name).
    Header(Box<str>),
}

/// One validated route.
#[derive(Debug, Clone)]
pub struct Route {
    id: RouteId,
    pattern: Box<str>,
    methods: MethodSet,
    models: Box<[Box<str>]>,
    target: RouteTarget,
    label_header: Option<Box<str>>,
    sticky: Option<StickyKey>,
    auth: RouteAuth,
    scope: Option<Box<str>>,
    timeouts: RouteTimeouts,
    retryable: bool,
}

impl Route {
    pub fn id(&self) -> RouteId {
        self.id
    }
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
    pub fn methods(&self) -> MethodSet {
        self.methods
    }
    /// Model aliases this route is keyed by; empty for a path's default route.
    pub fn models(&self) -> &[Box<str>] {
        &self.models
    }
    pub fn target(&self) -> &RouteTarget {
        &self.target
    }
    /// Lowercased name of the header carrying the canary label, for [`SelectCtx::label`].
    pub fn label_header(&self) -> Option<&str> {
        self.label_header.as_deref()
    }
    /// Where to take [`SelectCtx::sticky_key`] from.
    pub fn sticky(&self) -> Option<&StickyKey> {
        self.sticky.as_ref()
    }
    /// `auth` as configured ([`RouteAuth::Default`]: the auth stage's default).
    pub fn auth(&self) -> RouteAuth {
        self.auth
    }
    /// Scope the caller's token must hold, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
    /// Timeouts that override the upstream's for this route.
    pub fn timeouts(&self) -> RouteTimeouts {
        self.timeouts
    }
    /// Failed attempts may be retried on another endpoint (see `RawRoute::retryable`).
    pub fn retryable(&self) -> bool {
        self.retryable
    }
}

/// The result of [`Router::lookup`]: the path pattern matched and its captures.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    pattern: &'a Pattern,
    method: MethodSet,
    captures: Captures,
}

impl<'a> RouteMatch<'a> {
    /// The matched pattern, e.g. `/v1/models/:id`.
    pub fn pattern(&self) -> &'a str {
        &self.pattern.pattern
    }

    /// Whether the route choice depends on the body's `model` (alias-keyed routes exist).
    pub fn needs_model(&self) -> bool {
        !self.pattern.keyed.is_empty()
    }

    /// The value of capture `name` within `path`, which must be the path given to `lookup`.
    pub fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let i = self.pattern.param_names.iter().position(|n| **n == *name)?;
        let &(a, b) = self.captures.spans().get(i)?;
        path.get(a as usize..b as usize)
    }

    /// All captures `(name, value)` in path order; `path` as given to `lookup`.
    pub fn params<'p>(&self, path: &'p str) -> impl Iterator<Item = (&'a str, &'p str)> + 'p
    where
        'a: 'p,
    {
        let names = self.pattern.param_names.iter();
        let spans = self.captures;
        names.enumerate().filter_map(move |(i, n)| {
            let &(a, b) = spans.spans().get(i)?;
            Some((&**n, path.get(a as usize..b as usize)?))
        })
    }
}

/// The immutable routing table: trie, routes, deployment catalog.
#[derive(Debug, Clone)]
pub struct Router {
    trie: Trie,
    routes: Box<[Route]>,
    catalog: Catalog,
}

impl Router {
    /// Validates the raw config and builds the router. `upstream_names` are the engine's
    /// `[[upstreams]]` names; [`RouteTarget::Upstream`] indexes into it.
    ///
    /// `Err` lists every problem found, with key paths like `routes[2].targets[0].version`.
    pub fn build(
        routes: &[RawRoute],
        deployments: &[RawDeployment],
        upstream_names: &[&str],
    ) -> Result<Router, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let catalog = Catalog::build(deployments, &mut problems);
        let built: Vec<Route> = routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| build_route(i, r, &catalog, upstream_names, &mut problems))
            .collect();
        let specs: Vec<RouteSpec<'_>> = built
            .iter()
            .map(|r| RouteSpec {
                id: r.id,
                pattern: &r.pattern,
                methods: r.methods,
                models: &r.models,
            })
            .collect();
        let trie = trie::build(&specs, &mut problems);
        if problems.is_empty() {
            Ok(Router {
                trie,
                routes: built.into(),
                catalog,
            })
        } else {
            problems.sort_by(|a, b| natural_cmp(&a.key, &b.key));
            Err(problems)
        }
    }

    /// Finds the routes for `method` and `path` (no query string).
    ///
    /// `Ok`: the pattern and captures; pass it to [`Router::select_by_model`].
    /// `Err(NotFound)`: no pattern matches (404). `Err(MethodNotAllowed(ep))`: patterns
    /// match but none allows `method` (405, `Allow: {self.allow(ep)}`).
    #[inline]
    pub fn lookup(&self, method: &str, path: &str) -> Result<RouteMatch<'_>, RouteError> {
        let method = MethodSet::of_request(method);
        match self.trie.find(method, path) {
            Ok((ep, captures)) => Ok(RouteMatch {
                pattern: self.trie.pattern(ep),
                method,
                captures,
            }),
            Err(Some(ep)) => Err(RouteError::MethodNotAllowed(ep)),
            Err(None) => Err(RouteError::NotFound),
        }
    }

    /// The `Allow` header value for a [`RouteError::MethodNotAllowed`].
    pub fn allow(&self, pattern: PatternId) -> &str {
        &self.trie.pattern(pattern).allow
    }

    /// Picks the route for the body's `model` among a lookup's candidates: the route keyed by
    /// that alias, else the path's default route.
    ///
    /// `Err(ModelRequired)` (400): no `model` and no default route.
    /// `Err(UnknownModel)` (404): `model` is no alias here and there is no default route.
    #[inline]
    pub fn select_by_model(
        &self,
        m: &RouteMatch<'_>,
        model: Option<&str>,
    ) -> Result<&Route, RouteError> {
        let ep = m.pattern;
        let keyed = model.and_then(|model| {
            ep.keyed
                .iter()
                .find(|(alias, methods, _)| **alias == *model && methods.intersects(m.method))
        });
        let id = match keyed {
            Some(&(_, _, id)) => id,
            None => match ep
                .defaults
                .iter()
                .find(|(methods, _)| methods.intersects(m.method))
            {
                Some(&(_, id)) => id,
                None if model.is_none() => return Err(RouteError::ModelRequired),
                None => return Err(RouteError::UnknownModel),
            },
        };
        Ok(&self.routes[id.0 as usize])
    }

    /// Chooses the deployment for one request of a split route (see the `split` module docs:
    /// label, then sticky, then weighted random; unhealthy targets skipped; fallbacks last).
    /// `None`: nothing healthy is left (503).
    #[inline]
    pub fn choose(
        &self,
        split: &Split,
        ctx: &SelectCtx<'_>,
        healthy: impl Fn(DeploymentId) -> bool,
        rng: &mut WorkerRng,
    ) -> Option<Chosen<'_>> {
        split::choose(split, &self.catalog, ctx, healthy, rng)
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0 as usize]
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every deployment, indexed by [`DeploymentId`]: what the engine builds pools for.
    pub fn deployments(&self) -> &[Deployment] {
        self.catalog.all()
    }

    pub fn deployment(&self, id: DeploymentId) -> &Deployment {
        self.catalog.get(id)
    }
}

/// Builds a router from a TOML document with `deployments` and `routes`, with upstreams
/// `mock` and `openai`.
#[cfg(test)]
pub(crate) fn router_from_toml(text: &str) -> Result<Router, Vec<ConfigProblem>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        deployments: Vec<RawDeployment>,
        #[serde(default)]
        routes: Vec<RawRoute>,
    }
    let doc: Doc = toml::from_str(text).expect("test TOML parses");
    Router::build(&doc.routes, &doc.deployments, &["mock", "openai"])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENTS: &str = r#"
        [[deployments]]
        model = "llama3-70b"
        version = "3.2.1"
        endpoints = ["127.0.0.1:9001"]
        served_name = "meta-llama/Llama-3-70B"
        [[deployments]]
        model = "llama3-70b"
        version = "3.2.4"
        endpoints = ["127.0.0.1:9002"]
        [[deployments]]
        model = "llama3-8b"
        version = "1.0.0"
        endpoints = ["127.0.0.1:9003"]
    "#;

    fn router(routes: &str) -> Router {
        router_from_toml(&format!("{DEPLOYMENTS}\n{routes}")).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn problems(routes: &str) -> Vec<String> {
        match router_from_toml(&format!("{DEPLOYMENTS}\n{routes}")) {
            Ok(_) => panic!("config accepted:\n{routes}"),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn methods_give_405_with_allow_list() {
        let r = router(
            r#"
            [[routes]]
            path = "/v1/chat/completions"
            methods = ["post"]
            upstream = "mock"
            [[routes]]
            path = "/v1/chat/completions"
            methods = ["GET", "DELETE"]
            models = ["m"]
            upstream = "mock"
            [[routes]]
            path = "/any"
            upstream = "openai"
            "#,
        );
        let status = |m: &str, p: &str| {
            r.lookup(m, p)
                .map(|m| m.pattern())
                .map_err(RouteError::status)
        };
        assert_eq!(
            status("POST", "/v1/chat/completions"),
            Ok("/v1/chat/completions")
        );
        assert_eq!(
            status("GET", "/v1/chat/completions"),
            Ok("/v1/chat/completions")
        );
        assert_eq!(status("PUT", "/v1/chat/completions"), Err(405));
        assert_eq!(status("post", "/v1/chat/completions"), Err(405));
        assert_eq!(status("PURGE", "/any"), Ok("/any"));
        assert_eq!(status("GET", "/v1/chat"), Err(404));
        match r.lookup("PATCH", "/v1/chat/completions") {
            Err(RouteError::MethodNotAllowed(ep)) => assert_eq!(r.allow(ep), "GET, POST, DELETE"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn method_mismatch_backtracks_to_a_less_specific_pattern() {
        let r = router(
            r#"
            [[routes]]
            path = "/files/meta"
            methods = ["POST"]
            upstream = "mock"
            [[routes]]
            path = "/files/:id"
            methods = ["GET"]
            upstream = "openai"
            "#,
        );
        assert_eq!(
            r.lookup("GET", "/files/meta").unwrap().pattern(),
            "/files/:id"
        );
        assert_eq!(
            r.lookup("POST", "/files/meta").unwrap().pattern(),
            "/files/meta"
        );
        match r.lookup("PUT", "/files/meta") {
            Err(RouteError::MethodNotAllowed(ep)) => assert_eq!(r.allow(ep), "POST"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn params_and_wildcard_are_captured_from_the_path() {
        let r = router(
            r#"
            [[routes]]
            path = "/v1/:org/models/:id"
            upstream = "mock"
            [[routes]]
            path = "/static/*rest"
            upstream = "mock"
            "#,
        );
        let path = "/v1/acme/models/llama";
        let m = r.lookup("GET", path).unwrap();
        assert_eq!(m.param(path, "org"), Some("acme"));
        assert_eq!(m.param(path, "id"), Some("llama"));
        assert_eq!(m.param(path, "nope"), None);
        assert_eq!(
            m.params(path).collect::<Vec<_>>(),
            [("org", "acme"), ("id", "llama")]
        );
        let path = "/static/css/site.css";
        let m = r.lookup("GET", path).unwrap();
        assert_eq!(
            m.params(path).collect::<Vec<_>>(),
            [("rest", "css/site.css")]
        );
    }

    #[test]
    fn alias_keying_picks_the_route_for_the_body_model() {
        let routes = r#"
            [[routes]]
            path = "/v1/chat/completions"
            models = ["chat-default", "chat"]
            targets = [{ model = "llama3-70b", version = "^3.2", weight = 1 }]
            [[routes]]
            path = "/v1/chat/completions"
            models = ["small"]
            targets = [{ model = "llama3-8b", weight = 1 }]
            [[routes]]
            path = "/v1/chat/completions"
            upstream = "openai"
            [[routes]]
            path = "/v1/embeddings"
            models = ["small"]
            targets = [{ model = "llama3-8b", weight = 1 }]
        "#;
        let r = router(routes);
        let pick = |path: &str, model: Option<&str>| {
            let m = r.lookup("POST", path).unwrap();
            r.select_by_model(&m, model).map(|route| route.id().0)
        };
        let cases = [
            ("/v1/chat/completions", Some("chat"), Ok(0)),
            ("/v1/chat/completions", Some("chat-default"), Ok(0)),
            ("/v1/chat/completions", Some("small"), Ok(1)),
            ("/v1/chat/completions", Some("gpt-4o"), Ok(2)),
            ("/v1/chat/completions", None, Ok(2)),
            ("/v1/embeddings", Some("small"), Ok(3)),
            ("/v1/embeddings", Some("big"), Err(RouteError::UnknownModel)),
            ("/v1/embeddings", None, Err(RouteError::ModelRequired)),
        ];
        for (path, model, want) in cases {
            assert_eq!(pick(path, model), want, "{path} {model:?}");
        }
        assert_eq!(RouteError::ModelRequired.status(), 400);
        assert!(r.lookup("POST", "/v1/embeddings").unwrap().needs_model());
        assert!(matches!(
            r.route(RouteId(2)).target(),
            RouteTarget::Upstream(1)
        ));
    }

    #[test]
    fn same_path_routes_that_overlap_are_config_errors() {
        let got = problems(
            r#"
            [[routes]]
            path = "/a"
            models = ["x", "y"]
            upstream = "mock"
            [[routes]]
            path = "/a"
            models = ["y"]
            upstream = "mock"
            [[routes]]
            path = "/a"
            methods = ["GET"]
            upstream = "mock"
            [[routes]]
            path = "/a"
            methods = ["POST"]
            upstream = "mock"
            [[routes]]
            path = "/a"
            methods = ["POST", "PUT"]
            upstream = "mock"
            "#,
        );
        assert_eq!(
            got,
            [
                "routes[1].path: `/a` conflicts with routes[0]: same path, overlapping methods and models",
                "routes[4].path: `/a` conflicts with routes[3]: same path, overlapping methods and models",
            ]
        );
    }

    #[test]
    fn every_config_problem_is_reported_at_once() {
        let got = problems(
            r#"
            [[routes]]
            path = "/both"
            upstream = "mock"
            targets = [{ model = "llama3-8b", weight = 1 }]
            [[routes]]
            path = "/neither"
            [[routes]]
            path = "/unknown-upstream"
            upstream = "nope"
            sticky = "subject"
            [[routes]]
            path = "/bad-targets"
            methods = ["FETCH"]
            label_header = "bad header"
            targets = [
              { model = "llama3-70b", version = "^4", weight = 1 },
              { model = "mistral", weight = 1 },
              { model = "llama3-8b", version = "one", weight = 1 },
            ]
            fallbacks = [{ model = "llama3-8b", weight = 0 }]
            [[routes]]
            path = "/zero"
            targets = [{ model = "llama3-8b", weight = 0 }]
            [[routes]]
            path = "no-slash"
            upstream = "mock"
            "#,
        );
        let keys: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "routes[0].upstream",
                "routes[1].targets",
                "routes[2].sticky",
                "routes[2].upstream",
                "routes[3].fallbacks",
                "routes[3].label_header",
                "routes[3].methods[0]",
                "routes[3].targets[0].version",
                "routes[3].targets[1].model",
                "routes[3].targets[2].version",
                "routes[4].targets",
                "routes[5].path",
            ],
            "{got:#?}"
        );
        assert!(
            got[7].contains("no deployment of `llama3-70b` matches `^4`"),
            "{}",
            got[7]
        );
        assert!(got[10].contains("total weight is zero"), "{}", got[10]);
    }

    /// CONNECT and TRACE are refused before routing, so a route cannot list them.
    #[test]
    fn connect_and_trace_cannot_be_route_methods() {
        let got = problems(
            r#"
            [[routes]]
            path = "/a"
            methods = ["GET", "CONNECT", "trace", " Trace "]
            upstream = "mock"
            "#,
        );
        let keys: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "routes[0].methods[1]",
                "routes[0].methods[2]",
                "routes[0].methods[3]"
            ],
            "{got:#?}"
        );
        assert!(got.iter().all(|p| p.contains("refused by the gateway")));
    }

    #[test]
    fn problems_are_ordered_by_key_with_numeric_indices() {
        let mut keys = [
            "routes[10].path",
            "routes[2].targets[11].model",
            "routes[2].targets[3].model",
            "deployments[1].version",
            "routes[2].path",
        ];
        keys.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            keys,
            [
                "deployments[1].version",
                "routes[2].path",
                "routes[2].targets[3].model",
                "routes[2].targets[11].model",
                "routes[10].path"
            ]
        );
    }

    #[test]
    fn router_is_send_and_clone_for_the_workers() {
        fn assert_send_clone<T: Send + Clone + 'static>() {}
        assert_send_clone::<Router>();
    }

    #[test]
    fn route_carries_auth_scope_label_and_sticky_settings() {
        let r = router(
            r#"
            [[routes]]
            path = "/v1/completions"
            targets = [{ model = "llama3-70b", version = "=3.2.1", weight = 1 }]
            label_header = "X-Canary"
            sticky = { header = "X-Session-Id" }
            auth = false
            scope = "ai:inference"
            "#,
        );
        let route = r.route(RouteId(0));
        assert_eq!(route.label_header(), Some("x-canary"));
        assert_eq!(
            route.sticky(),
            Some(&StickyKey::Header("x-session-id".into()))
        );
        assert_eq!(
            (route.auth(), route.scope()),
            (RouteAuth::Off, Some("ai:inference"))
        );
        let RouteTarget::Split(split) = route.target() else {
            panic!("not a split")
        };
        let d = r.deployment(split.targets()[0].deployment);
        assert_eq!(
            (d.version_str(), d.served_name()),
            ("3.2.1", "meta-llama/Llama-3-70B")
        );
        assert_eq!(r.deployments().len(), 3);
    }
}
