//! Validation of `[[routes]]`: raw route → [`Route`], with every problem reported.

use semver::VersionReq;

use super::catalog::{Catalog, ResolveError};
use super::split::{Configured, WEIGHT_SCALE};
use super::{
    MethodSet, RawRoute, RawSticky, RawTarget, Route, RouteId, RouteTarget, Split, StickyKey,
    Target, Weight, MAX_TARGETS,
};
use crate::config_types::ConfigProblem;

/// Validates one route; `None` if it has problems (all of them pushed).
pub(super) fn build_route(
    i: usize,
    r: &RawRoute,
    catalog: &Catalog,
    upstream_names: &[&str],
    problems: &mut Vec<ConfigProblem>,
) -> Option<Route> {
    let before = problems.len();
    let key = |field: &str| format!("routes[{i}].{field}");
    let methods = methods(i, r, problems);
    check_models(i, r, problems);
    let label_header = header_name(r.label_header.as_deref(), &key("label_header"), problems);
    let sticky = match &r.sticky {
        None => None,
        Some(RawSticky::Subject) => Some(StickyKey::Subject),
        Some(RawSticky::Header(h)) => {
            header_name(Some(h), &key("sticky.header"), problems).map(StickyKey::Header)
        }
    };
    let target = target(i, r, catalog, upstream_names, problems)?;
    if problems.len() != before {
        return None;
    }
    Some(Route {
        id: RouteId(i as u32),
        pattern: r.path.as_str().into(),
        methods,
        models: r.models.iter().map(|m| m.as_str().into()).collect(),
        target,
        label_header,
        sticky,
        auth: r.auth,
        scope: r.scope.as_deref().map(Into::into),
        timeouts: timeouts(i, r, problems),
        retryable: r.retryable,
    })
}

/// The route's timeouts; a zero value is a problem.
fn timeouts(i: usize, r: &RawRoute, problems: &mut Vec<ConfigProblem>) -> super::RouteTimeouts {
    let Some(t) = r.timeouts else {
        return super::RouteTimeouts::default();
    };
    let mut ms = |name: &str, v: Option<u64>| {
        if v == Some(0) {
            problems.push(ConfigProblem::new(
                format!("routes[{i}].timeouts.{name}"),
                "must be greater than 0",
            ));
        }
        v.map(std::time::Duration::from_millis)
    };
    super::RouteTimeouts {
        connect: ms("connect_ms", t.connect_ms),
        first_byte: ms("first_byte_ms", t.first_byte_ms),
        idle: ms("idle_ms", t.idle_ms),
        total: ms("total_ms", t.total_ms),
    }
}

/// The route's method set; `ANY` when `methods` is absent.
fn methods(i: usize, r: &RawRoute, problems: &mut Vec<ConfigProblem>) -> MethodSet {
    let key = |field: &str| format!("routes[{i}].{field}");
    match &r.methods {
        None => MethodSet::ANY,
        Some(list) if list.is_empty() => {
            problems.push(ConfigProblem::new(
                key("methods"),
                "empty; omit it to allow any method",
            ));
            MethodSet::ANY
        }
        Some(list) => {
            list.iter().enumerate().fold(
                MethodSet::EMPTY,
                |set, (j, m)| match MethodSet::of_config(m) {
                    // Refused before routing (see `http::parse`), so never reaches a route.
                    Some(_)
                        if ["CONNECT", "TRACE"]
                            .iter()
                            .any(|c| c.eq_ignore_ascii_case(m.trim())) =>
                    {
                        let msg = format!("`{m}` is refused by the gateway for every route (501)");
                        problems.push(ConfigProblem::new(key(&format!("methods[{j}]")), msg));
                        set
                    }
                    Some(bit) => set.union(bit),
                    None => {
                        let msg = format!("`{m}` is not a standard HTTP method");
                        problems.push(ConfigProblem::new(key(&format!("methods[{j}]")), msg));
                        set
                    }
                },
            )
        }
    }
}

/// `models` entries must be non-empty and distinct.
fn check_models(i: usize, r: &RawRoute, problems: &mut Vec<ConfigProblem>) {
    let key = |field: &str| format!("routes[{i}].{field}");
    for (j, m) in r.models.iter().enumerate() {
        if m.trim().is_empty() {
            problems.push(ConfigProblem::new(
                key(&format!("models[{j}]")),
                "must not be empty",
            ));
        } else if r.models[..j].contains(m) {
            problems.push(ConfigProblem::new(
                key(&format!("models[{j}]")),
                format!("`{m}` repeated"),
            ));
        }
    }
}

/// Exactly one of `upstream` (a known name, no split-only keys) and `targets` (resolved).
fn target(
    i: usize,
    r: &RawRoute,
    catalog: &Catalog,
    upstream_names: &[&str],
    problems: &mut Vec<ConfigProblem>,
) -> Option<RouteTarget> {
    let key = |field: &str| format!("routes[{i}].{field}");
    match (&r.upstream, &r.targets) {
        (Some(_), Some(_)) => {
            problems.push(ConfigProblem::new(
                key("upstream"),
                "set either `upstream` or `targets`, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(ConfigProblem::new(
                key("targets"),
                "set either `upstream` or `targets`",
            ));
            None
        }
        (Some(name), None) => {
            let split_only = [
                ("fallbacks", !r.fallbacks.is_empty()),
                ("label_header", r.label_header.is_some()),
                ("sticky", r.sticky.is_some()),
                ("all_matching_versions", r.all_matching_versions),
            ];
            for (field, set) in split_only {
                if set {
                    problems.push(ConfigProblem::new(
                        key(field),
                        "only applies to routes with `targets`",
                    ));
                }
            }
            match upstream_names.iter().position(|u| *u == name) {
                Some(idx) => Some(RouteTarget::Upstream(idx)),
                None => {
                    problems.push(ConfigProblem::new(
                        key("upstream"),
                        format!("unknown upstream `{name}`"),
                    ));
                    None
                }
            }
        }
        (None, Some(targets)) => {
            let primary = resolve_targets(
                &key("targets"),
                targets,
                r.all_matching_versions,
                catalog,
                problems,
            );
            let fallbacks = if r.fallbacks.is_empty() {
                Some(Vec::new())
            } else {
                resolve_targets(
                    &key("fallbacks"),
                    &r.fallbacks,
                    r.all_matching_versions,
                    catalog,
                    problems,
                )
            };
            match (primary, fallbacks) {
                (Some(p), Some(f)) => {
                    let configured = Configured {
                        targets: targets.clone(),
                        fallbacks: r.fallbacks.clone(),
                    };
                    Some(RouteTarget::Split(Split::new(p, f, configured, catalog)))
                }
                _ => None,
            }
        }
    }
}

/// Resolves `targets`/`fallbacks` (at key path `key`) to weighted deployments; the same
/// deployment reached by several entries gets the sum of their shares.
fn resolve_targets(
    key: &str,
    raw: &[RawTarget],
    all_matching: bool,
    catalog: &Catalog,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Vec<Target>> {
    let before = problems.len();
    if raw.is_empty() {
        problems.push(ConfigProblem::new(key, "needs at least one target"));
        return None;
    }
    let mut out: Vec<Target> = Vec::new();
    for (j, t) in raw.iter().enumerate() {
        let req = match VersionReq::parse(t.version.trim()) {
            Ok(req) => req,
            Err(e) => {
                let msg = format!("`{}` is not a semver requirement: {e}", t.version);
                problems.push(ConfigProblem::new(format!("{key}[{j}].version"), msg));
                continue;
            }
        };
        let ids = match catalog.resolve(&t.model, &req, all_matching) {
            Ok(ids) => ids,
            Err(ResolveError::UnknownModel) => {
                let msg = format!("no deployment of model `{}`", t.model);
                problems.push(ConfigProblem::new(format!("{key}[{j}].model"), msg));
                continue;
            }
            Err(ResolveError::NoMatchingVersion) => {
                let msg = format!("no deployment of `{}` matches `{}`", t.model, t.version);
                problems.push(ConfigProblem::new(format!("{key}[{j}].version"), msg));
                continue;
            }
        };
        let share = u64::from(t.weight) * WEIGHT_SCALE / ids.len() as u64;
        for id in ids {
            match out.iter_mut().find(|o| o.deployment == id) {
                Some(o) => o.weight.0 += share,
                None => out.push(Target::new(id, Weight(share), catalog.get(id).seed())),
            }
        }
    }
    if problems.len() != before {
        return None;
    }
    if out.len() > MAX_TARGETS {
        let msg = format!(
            "resolves to {} deployments; at most {MAX_TARGETS}",
            out.len()
        );
        problems.push(ConfigProblem::new(key, msg));
        return None;
    }
    if out.iter().all(|t| t.weight.0 == 0) {
        problems.push(ConfigProblem::new(key, "total weight is zero"));
        return None;
    }
    Some(out)
}

/// Orders key paths with their indices compared as numbers (`routes[2]` before
/// `routes[10]`), so problems read in config order.
pub(super) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        let (x, y) = match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => (x, y),
        };
        let (na, nb) = if x.is_ascii_digit() && y.is_ascii_digit() {
            let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
            (digits(a), digits(b))
        } else {
            (1, 1)
        };
        let ord = if na == 1 && nb == 1 {
            x.cmp(y)
        } else {
            na.cmp(&nb).then_with(|| a[..na].cmp(&b[..nb]))
        };
        if ord != Ordering::Equal {
            return ord;
        }
        (a, b) = (&a[na..], &b[nb..]);
    }
}

/// A header name the route reads (label, sticky key), lowercased; framing, hop-by-hop and
/// gateway-written names are refused ([`crate::http::fields`]).
fn header_name(
    name: Option<&str>,
    key: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Box<str>> {
    crate::http_config::config_header(name?, crate::http::fields::HeaderRole::Read, key, problems)
}
