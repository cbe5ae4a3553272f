//! The protection diff: what a new config would take away from the protection the running
//! one gives.
//!
//! The control thread runs [`lowered`] on every reload. A change seen by the file watch that
//! lowers protection is refused (it is what a half-written file looks like: a prefix that
//! stops before `[auth]`, `[quota]` or the later routes); the same change asked for
//! explicitly (`SIGHUP`, `POST /reload`) is applied with a loud warning naming each loss.
//!
//! What counts as a loss:
//! - `[auth]` removed, or its claim checks relaxed (`issuer` dropped, `audience` dropped or
//!   widened, `require_exp` turned off);
//! - a request that needed a token (or a scope) no longer needing it, whatever the cause:
//!   a route's `auth = false`, a scope removed or changed, an authenticated route removed so
//!   that its requests fall through to an open one, a new open route shadowing protected
//!   paths. This is checked by replaying a sample request for every route of either config
//!   (each method it allows, each model alias it is keyed by) against both;
//! - a request that needed a credential accepting a kind it did not (API keys where only
//!   JWTs were accepted, or the reverse: a route's `auth = "jwt"` cut off, or
//!   `[auth.api_keys]` added under routes that accept whatever is configured);
//! - `[quota]` removed, or a quota rule (by name) removed;
//! - `[budgets]` removed, a budget rule (by name) removed, or one of its hard limits removed
//!   or raised, its period shortened (`total` → `month` → `day`: the use starts afresh more
//!   often), or what it applies to changed (its `key` kind, or its `model` narrowed from
//!   every model);
//! - the admin token removed;
//! - more than half of the routes dropped.

use std::fmt;

use crate::auth::accepts;
use crate::config::Snapshot;
use crate::route::{MethodSet, Route, Router};

/// One way a new config is less protective than the one in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// `[auth]` is gone: no request is authenticated.
    AuthRemoved,
    /// `[auth] issuer` was checked and no longer is.
    IssuerCheckDropped { was: String },
    /// `[auth] audience` accepts audiences it did not (or is no longer checked).
    AudienceWidened { was: Vec<String>, now: Vec<String> },
    /// `[auth] require_exp` turned off.
    ExpiryNoLongerRequired,
    /// `request` needed a token under `was_route` and does not under `now_route`.
    TokenNoLongerRequired {
        request: String,
        was_route: String,
        now_route: String,
    },
    /// `request` needed a credential and now also accepts `kind` (`API keys`, `JWTs`).
    CredentialWidened {
        request: String,
        route: String,
        kind: &'static str,
    },
    /// `request` needed scope `was` and now needs `now` (or none).
    ScopeChanged {
        request: String,
        was: String,
        now: Option<String>,
    },
    /// `[quota]` is gone: nothing is limited.
    QuotaRemoved,
    /// The quota rule of this name is gone.
    QuotaRuleRemoved(String),
    /// `[budgets]` is gone: no budget limits anyone.
    BudgetsRemoved,
    /// The budget rule of this name is gone.
    BudgetRuleRemoved(String),
    /// Budget `name`'s hard limit in `unit` is gone (`now` = None) or raised to `now`.
    BudgetLimitRaised {
        name: String,
        unit: &'static str,
        was: u64,
        now: Option<u64>,
    },
    /// Budget `name`'s period resets more often (`was` → `now`).
    BudgetPeriodShortened {
        name: String,
        was: &'static str,
        now: &'static str,
    },
    /// Budget `name` applies to other callers or fewer models (`what` says how).
    BudgetScopeChanged { name: String, what: String },
    /// Every admin token (`[admin] token` and `tokens`) is gone (or `[admin]` with them).
    AdminTokenRemoved,
    /// More than half of the routes are gone.
    RoutesDropped { before: usize, after: usize },
}

impl Loss {
    /// The config key the loss is about.
    pub fn key(&self) -> &'static str {
        match self {
            Loss::AuthRemoved => "auth",
            Loss::IssuerCheckDropped { .. } => "auth.issuer",
            Loss::AudienceWidened { .. } => "auth.audience",
            Loss::ExpiryNoLongerRequired => "auth.require_exp",
            Loss::TokenNoLongerRequired { .. } | Loss::CredentialWidened { .. } => "routes.auth",
            Loss::ScopeChanged { .. } => "routes.scope",
            Loss::QuotaRemoved => "quota",
            Loss::QuotaRuleRemoved(_) => "quota.rules",
            Loss::BudgetsRemoved => "budgets",
            Loss::BudgetRuleRemoved(_)
            | Loss::BudgetLimitRaised { .. }
            | Loss::BudgetPeriodShortened { .. }
            | Loss::BudgetScopeChanged { .. } => "budgets.rules",
            Loss::AdminTokenRemoved => "admin.token",
            Loss::RoutesDropped { .. } => "routes",
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::AuthRemoved => write!(f, "[auth] removed: no request would be authenticated"),
            Loss::IssuerCheckDropped { was } => {
                write!(f, "auth.issuer `{was}` would no longer be checked")
            }
            Loss::AudienceWidened { was, now } if now.is_empty() => {
                write!(f, "auth.audience {was:?} would no longer be checked")
            }
            Loss::AudienceWidened { was, now } => {
                write!(f, "auth.audience would widen from {was:?} to {now:?}")
            }
            Loss::ExpiryNoLongerRequired => {
                write!(
                    f,
                    "auth.require_exp turned off: tokens without exp accepted"
                )
            }
            Loss::TokenNoLongerRequired {
                request,
                was_route,
                now_route,
            } => write!(
                f,
                "`{request}` would be served without a token (route `{now_route}`; \
                 it needed one under route `{was_route}`)"
            ),
            Loss::CredentialWidened {
                request,
                route,
                kind,
            } => write!(
                f,
                "`{request}` would also be served with {kind} (route `{route}`)"
            ),
            Loss::ScopeChanged { request, was, now } => match now {
                Some(now) => write!(f, "`{request}` would need scope `{now}` instead of `{was}`"),
                None => write!(f, "`{request}` would no longer need scope `{was}`"),
            },
            Loss::QuotaRemoved => write!(f, "[quota] removed: nothing would be limited"),
            Loss::QuotaRuleRemoved(name) => write!(f, "quota rule `{name}` removed"),
            Loss::BudgetsRemoved => write!(f, "[budgets] removed: no budget would limit anyone"),
            Loss::BudgetRuleRemoved(name) => write!(f, "budget rule `{name}` removed"),
            Loss::BudgetLimitRaised {
                name,
                unit,
                was,
                now: None,
            } => write!(f, "budget `{name}`: the {unit} limit ({was}) removed"),
            Loss::BudgetLimitRaised {
                name,
                unit,
                was,
                now: Some(now),
            } => write!(
                f,
                "budget `{name}`: the {unit} limit raised from {was} to {now}"
            ),
            Loss::BudgetPeriodShortened { name, was, now } => write!(
                f,
                "budget `{name}`: period `{was}` → `{now}` (its use would start afresh more often)"
            ),
            Loss::BudgetScopeChanged { name, what } => write!(f, "budget `{name}`: {what}"),
            Loss::AdminTokenRemoved => {
                write!(f, "admin.token removed: the admin API would need no token")
            }
            Loss::RoutesDropped { before, after } => {
                write!(f, "{} of {before} routes dropped", before - after)
            }
        }
    }
}

/// Every way `new` is less protective than `old` (empty: nothing is lowered).
pub fn lowered(old: &Snapshot, new: &Snapshot) -> Vec<Loss> {
    let mut out = Vec::new();
    auth_losses(old, new, &mut out);
    quota_losses(old, new, &mut out);
    budget_losses(old, new, &mut out);
    let token = |s: &Snapshot| s.admin.as_ref().is_some_and(|a| a.has_token());
    if token(old) && !token(new) {
        out.push(Loss::AdminTokenRemoved);
    }
    let (before, after) = (old.router.routes().len(), new.router.routes().len());
    if after < before && (before - after) * 2 > before {
        out.push(Loss::RoutesDropped { before, after });
    }
    out
}

fn auth_losses(old: &Snapshot, new: &Snapshot, out: &mut Vec<Loss>) {
    let Some(was) = &old.auth else { return };
    let Some(now) = &new.auth else {
        // Every route check below would report the same thing once per request.
        out.push(Loss::AuthRemoved);
        return;
    };
    let (was_iss, was_aud, was_exp) = was.claim_checks();
    let (now_iss, now_aud, now_exp) = now.claim_checks();
    if let (Some(w), None) = (was_iss, now_iss) {
        out.push(Loss::IssuerCheckDropped { was: w.into() });
    }
    if !was_aud.is_empty() && (now_aud.is_empty() || now_aud.iter().any(|a| !was_aud.contains(a))) {
        let names = |a: &[Box<str>]| a.iter().map(|s| s.to_string()).collect();
        out.push(Loss::AudienceWidened {
            was: names(was_aud),
            now: names(now_aud),
        });
    }
    if was_exp && !now_exp {
        out.push(Loss::ExpiryNoLongerRequired);
    }
    // Replay a sample of every route's requests, from both configs, against both.
    for snap in [old, new] {
        for r in snap.router.routes() {
            for req in samples(r) {
                if let Some(loss) = compare(old, new, &req) {
                    if !out.contains(&loss) {
                        out.push(loss);
                    }
                }
            }
        }
    }
}

fn quota_losses(old: &Snapshot, new: &Snapshot, out: &mut Vec<Loss>) {
    let Some(was) = &old.quota else { return };
    let Some(now) = &new.quota else {
        out.push(Loss::QuotaRemoved);
        return;
    };
    for rule in &was.rules {
        if !now.rules.iter().any(|r| r.name == rule.name) {
            out.push(Loss::QuotaRuleRemoved(rule.name.clone()));
        }
    }
}

fn budget_losses(old: &Snapshot, new: &Snapshot, out: &mut Vec<Loss>) {
    use crate::quota::Window;
    let Some(was) = &old.budgets else { return };
    let Some(now) = &new.budgets else {
        out.push(Loss::BudgetsRemoved);
        return;
    };
    // How long a period's use lasts: a shorter one lets more through over time.
    let lasts = |w: Window| match w {
        Window::Minute => 0,
        Window::Day => 1,
        Window::Month => 2,
        Window::Total => 3,
    };
    let period = |w: Window| match w {
        Window::Minute => "minute",
        Window::Day => "day",
        Window::Month => "month",
        Window::Total => "total",
    };
    let mut seen: Vec<&str> = Vec::new();
    for b in &was.rules {
        let name = b.name.as_str();
        let same_name: Vec<_> = now.rules.iter().filter(|n| n.name == name).collect();
        if same_name.is_empty() {
            if !seen.contains(&name) {
                out.push(Loss::BudgetRuleRemoved(name.to_owned()));
                seen.push(name);
            }
            continue;
        }
        let first_of_rule = !seen.contains(&name);
        seen.push(name);
        match same_name.iter().find(|n| n.unit == b.unit) {
            None => out.push(Loss::BudgetLimitRaised {
                name: name.to_owned(),
                unit: b.unit.as_str(),
                was: b.limit(),
                now: None,
            }),
            Some(n) if n.limit() > b.limit() => out.push(Loss::BudgetLimitRaised {
                name: name.to_owned(),
                unit: b.unit.as_str(),
                was: b.limit(),
                now: Some(n.limit()),
            }),
            Some(_) => {}
        }
        // One rule's units share these: report them once per rule.
        let n = same_name[0];
        if !first_of_rule {
            continue;
        }
        let (w, nw) = (b.rule.limits.window, n.rule.limits.window);
        if lasts(nw) < lasts(w) {
            out.push(Loss::BudgetPeriodShortened {
                name: name.to_owned(),
                was: period(w),
                now: period(nw),
            });
        }
        if n.key != b.key {
            out.push(Loss::BudgetScopeChanged {
                name: name.to_owned(),
                what: format!("key `{}` → `{}`", key_name(b.key), key_name(n.key)),
            });
        }
        if n.model != b.model && n.model.is_some() {
            out.push(Loss::BudgetScopeChanged {
                name: name.to_owned(),
                what: format!(
                    "model `{}` → `{}`: other models would not count",
                    b.model.as_deref().unwrap_or("*"),
                    n.model.as_deref().unwrap_or("*")
                ),
            });
        }
    }
}

fn key_name(k: crate::quota::KeyKind) -> &'static str {
    use crate::quota::KeyKind;
    match k {
        KeyKind::Subject => "subject",
        KeyKind::Tenant => "tenant",
        KeyKind::ApiKey => "api_key",
        KeyKind::ClientIp => "client_ip",
    }
}

/// The standard methods a sample request may use.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// One request replayed against both configs.
struct Sample {
    method: &'static str,
    path: String,
    model: Option<String>,
}

impl Sample {
    fn describe(&self) -> String {
        match &self.model {
            Some(m) => format!("{} {} (model {m})", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// Requests `route` serves: its pattern with every capture filled in, once per method it
/// allows and per model alias it is keyed by.
fn samples(route: &Route) -> Vec<Sample> {
    let path: String = route
        .pattern()
        .split('/')
        .map(|seg| match seg.as_bytes().first() {
            Some(b':') | Some(b'*') => "x",
            _ => seg,
        })
        .collect::<Vec<_>>()
        .join("/");
    let models: Vec<Option<String>> = if route.models().is_empty() {
        vec![None]
    } else {
        route.models().iter().map(|m| Some(m.to_string())).collect()
    };
    let mut out = Vec::new();
    for method in METHODS {
        if !route.methods().intersects(MethodSet::of_request(method)) {
            continue;
        }
        for model in &models {
            out.push(Sample {
                method,
                path: path.clone(),
                model: model.clone(),
            });
        }
    }
    out
}

/// The route `snap` would serve `req` on, if any.
fn serve<'a>(router: &'a Router, req: &Sample) -> Option<&'a Route> {
    let m = router.lookup(req.method, &req.path).ok()?;
    router.select_by_model(&m, req.model.as_deref()).ok()
}

/// How `new` treats `req` compared with `old`, when it protects it less.
fn compare(old: &Snapshot, new: &Snapshot, req: &Sample) -> Option<Loss> {
    let was = serve(&old.router, req)?;
    let was_accepts = accepts(old.auth.as_ref(), was.auth());
    if !was_accepts.any() {
        return None;
    }
    // Not served at all (404/405/400) is not less protected.
    let now = serve(&new.router, req)?;
    let now_accepts = accepts(new.auth.as_ref(), now.auth());
    if !now_accepts.any() {
        return Some(Loss::TokenNoLongerRequired {
            request: req.describe(),
            was_route: was.pattern().into(),
            now_route: now.pattern().into(),
        });
    }
    let widened = match (was_accepts, now_accepts) {
        (w, n) if n.key && !w.key => Some("API keys"),
        (w, n) if n.jwt && !w.jwt => Some("JWTs"),
        _ => None,
    };
    if let Some(kind) = widened {
        return Some(Loss::CredentialWidened {
            request: req.describe(),
            route: now.pattern().into(),
            kind,
        });
    }
    match (was.scope(), now.scope()) {
        (Some(w), n) if n != Some(w) => Some(Loss::ScopeChanged {
            request: req.describe(),
            was: w.into(),
            now: n.map(Into::into),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

    /// The protected config every case starts from: `[auth]` with claim checks, two
    /// authenticated routes (one scoped, one keyed by model), an open health route, a
    /// two-rule `[quota]` and an admin token.
    struct Parts {
        auth: String,
        routes: String,
        quota: String,
        admin: String,
    }

    impl Parts {
        fn full() -> Parts {
            Parts {
                auth: format!(
                    "[auth]\nissuer = \"https://idp\"\naudience = [\"gw\"]\n\
                     [[auth.keys]]\nkid = \"k\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}\" }}\n"
                ),
                routes: "[[routes]]\npath = \"/v1/*rest\"\nupstream = \"up\"\n\
                         [[routes]]\npath = \"/v1/admin/:op\"\nmethods = [\"POST\"]\nscope = \"admin\"\nupstream = \"up\"\n\
                         [[routes]]\npath = \"/v1/chat\"\nmodels = [\"gpt\"]\nupstream = \"up\"\n\
                         [[routes]]\npath = \"/health\"\nauth = false\nupstream = \"up\"\n"
                    .into(),
                quota: "[quota]\n[[quota.rules]]\nname = \"per-user\"\nkey = \"subject\"\nrequests_per_minute = 60\n\
                        [[quota.rules]]\nname = \"per-ip\"\nkey = \"client_ip\"\nmodel = \"gpt\"\nrequests_per_minute = 600\n"
                    .into(),
                admin: "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = { value = \"0123456789abcdef\" }\n"
                    .into(),
            }
        }

        fn text(&self) -> String {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\
                 [[upstreams]]\nname = \"up\"\nendpoints = [\"127.0.0.1:9\"]\n{}{}{}{}",
                self.routes, self.auth, self.quota, self.admin
            )
        }

        fn snapshot(&self) -> Snapshot {
            let text = self.text();
            crate::config::from_str(&text, Path::new("."), 1)
                .unwrap_or_else(|p| panic!("{p:?}\n{text}"))
        }
    }

    fn losses(change: impl FnOnce(&mut Parts)) -> Vec<Loss> {
        let mut p = Parts::full();
        change(&mut p);
        lowered(&Parts::full().snapshot(), &p.snapshot())
    }

    fn keys(l: &[Loss]) -> Vec<&'static str> {
        l.iter().map(Loss::key).collect()
    }

    #[test]
    fn the_quota_rule_names_in_the_fixture_are_valid() {
        // Guards the fixture: every case below starts from a config that loads.
        let s = Parts::full().snapshot();
        assert_eq!(s.quota.as_ref().unwrap().rules.len(), 2);
        assert!(s.auth.is_some() && s.admin.unwrap().token.is_some());
    }

    #[test]
    fn changes_that_keep_protection_pass() {
        let same = losses(|_| {});
        assert!(same.is_empty(), "{same:?}");
        // More routes, a renamed authenticated route, a new authenticated route, a tighter
        // quota, a new key, a new audience list that is a subset: nothing lowered.
        let fine = losses(|p| {
            p.routes = p.routes.replace("/v1/chat", "/v1/chat/completions");
            p.routes += "[[routes]]\npath = \"/v2/*rest\"\nupstream = \"up\"\n";
            p.quota = p.quota.replace("= 60", "= 30");
            p.auth += &format!(
                "[[auth.keys]]\nkid = \"k2\"\nalg = \"HS256\"\nsecret = {{ value = \"{SECRET}-2\" }}\n"
            );
        });
        assert!(fine.is_empty(), "{fine:?}");
        // A route that was open can close; dropping exactly half of the routes is allowed.
        let fine = losses(|p| {
            p.routes = p.routes.replace("auth = false\n", "");
        });
        assert!(fine.is_empty(), "{fine:?}");
        let fine = losses(|p| {
            p.routes = p.routes.replace(
                "[[routes]]\npath = \"/v1/chat\"\nmodels = [\"gpt\"]\nupstream = \"up\"\n",
                "",
            );
            p.routes = p.routes.replace(
                "[[routes]]\npath = \"/health\"\nauth = false\nupstream = \"up\"\n",
                "",
            );
        });
        assert!(fine.is_empty(), "{fine:?}");
    }

    #[test]
    fn removing_auth_is_one_loss() {
        let l = losses(|p| p.auth.clear());
        assert_eq!(l, [Loss::AuthRemoved]);
        assert!(l[0].to_string().contains("[auth] removed"));
    }

    #[test]
    fn relaxed_claim_checks_are_losses() {
        let l = losses(|p| p.auth = p.auth.replace("issuer = \"https://idp\"\n", ""));
        assert_eq!(
            l,
            [Loss::IssuerCheckDropped {
                was: "https://idp".into()
            }]
        );
        let l = losses(|p| p.auth = p.auth.replace("audience = [\"gw\"]\n", ""));
        assert_eq!(keys(&l), ["auth.audience"]);
        assert!(
            l[0].to_string().contains("no longer be checked"),
            "{}",
            l[0]
        );
        let l = losses(|p| p.auth = p.auth.replace("[\"gw\"]", "[\"gw\", \"other\"]"));
        assert_eq!(keys(&l), ["auth.audience"]);
        assert!(l[0].to_string().contains("widen"), "{}", l[0]);
        let l = losses(|p| p.auth = p.auth.replace("[auth]\n", "[auth]\nrequire_exp = false\n"));
        assert_eq!(l, [Loss::ExpiryNoLongerRequired]);
    }

    #[test]
    fn every_way_a_request_loses_its_token_requirement_is_found() {
        // (change, a request that must be reported, the route now serving it)
        type Change = Box<dyn Fn(&mut Parts)>;
        let cases: Vec<(&str, Change, &str, &str)> = vec![
            (
                "route auth off",
                Box::new(|p: &mut Parts| {
                    p.routes = p.routes.replacen(
                        "path = \"/v1/*rest\"\n",
                        "path = \"/v1/*rest\"\nauth = false\n",
                        1,
                    )
                }),
                "GET /v1/x",
                "/v1/*rest",
            ),
            (
                "keyed route auth off",
                Box::new(|p: &mut Parts| {
                    p.routes = p
                        .routes
                        .replace("models = [\"gpt\"]\n", "models = [\"gpt\"]\nauth = false\n")
                }),
                "POST /v1/chat (model gpt)",
                "/v1/chat",
            ),
            (
                "authenticated route removed, falls through to an open catch-all",
                Box::new(|p: &mut Parts| {
                    p.routes = p.routes.replace(
                        "path = \"/v1/*rest\"\n",
                        "path = \"/*rest\"\nauth = false\n",
                    )
                }),
                "GET /v1/x",
                "/*rest",
            ),
            (
                "new open route shadows protected paths",
                Box::new(|p: &mut Parts| {
                    p.routes +=
                        "[[routes]]\npath = \"/v1/public/*rest\"\nauth = false\nupstream = \"up\"\n"
                }),
                "GET /v1/public/x",
                "/v1/public/*rest",
            ),
        ];
        for (what, change, request, now_route) in cases {
            let l = losses(change);
            let hit = l.iter().any(|loss| {
                matches!(loss, Loss::TokenNoLongerRequired { request: r, now_route: n, .. }
                    if r == request && n == now_route)
            });
            assert!(hit, "{what}: want `{request}` via `{now_route}` in {l:#?}");
            assert!(
                l.iter().all(|x| x.key() == "routes.auth"),
                "{what}: only route losses: {l:#?}"
            );
        }
    }

    #[test]
    fn a_scope_removed_or_changed_is_a_loss() {
        let l = losses(|p| p.routes = p.routes.replace("scope = \"admin\"\n", ""));
        assert_eq!(
            l,
            [Loss::ScopeChanged {
                request: "POST /v1/admin/x".into(),
                was: "admin".into(),
                now: None
            }]
        );
        let l = losses(|p| p.routes = p.routes.replace("scope = \"admin\"", "scope = \"read\""));
        assert_eq!(keys(&l), ["routes.scope"]);
        assert!(
            l[0].to_string().contains("`read` instead of `admin`"),
            "{}",
            l[0]
        );
    }

    #[test]
    fn quota_losses() {
        assert_eq!(losses(|p| p.quota.clear()), [Loss::QuotaRemoved]);
        let l = losses(|p| {
            p.quota = p
                .quota
                .split("[[quota.rules]]")
                .take(2)
                .collect::<Vec<_>>()
                .join("[[quota.rules]]")
        });
        assert_eq!(l, [Loss::QuotaRuleRemoved("per-ip".into())]);
        let l = losses(|p| p.quota = p.quota.replace("\"per-user\"", "\"renamed\""));
        assert_eq!(l, [Loss::QuotaRuleRemoved("per-user".into())]);
    }

    /// Budget changes, table-driven: (what, the `[budgets]` text after, the loss keys and a
    /// phrase each loss must say). The starting point has two rules: `team` (tokens and
    /// spend, monthly, per tenant, every model) and `ip` (tokens, daily, per client IP).
    #[test]
    fn budget_losses_are_found() {
        const BUDGETS: &str = "[budgets]\n\
            [[budgets.rules]]\nname = \"team\"\nkey = \"tenant\"\nperiod = \"month\"\ntokens = 1000\nspend = 5.0\n\
            [[budgets.rules]]\nname = \"ip\"\nkey = \"client_ip\"\nperiod = \"day\"\ntokens = 100\n";
        const PRICES: &str =
            "[spend]\n[[spend.prices]]\nmodel = \"*\"\ninput = 1.0\noutput = 1.0\n";
        let with = |budgets: &str| {
            let mut p = Parts::full();
            p.admin = format!("{}{PRICES}{budgets}", p.admin);
            p.snapshot()
        };
        let base = with(BUDGETS);
        type Case = (&'static str, String, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            ("unchanged", BUDGETS.into(), vec![]),
            (
                "tighter: lower limits, a longer period, a rule added",
                BUDGETS.replace("tokens = 1000", "tokens = 900").replace("\"day\"", "\"month\"")
                    + "[[budgets.rules]]\nname = \"new\"\nkey = \"subject\"\nperiod = \"total\"\ntokens = 5\n",
                vec![],
            ),
            ("section removed", String::new(), vec![("budgets", "[budgets] removed")]),
            (
                "section emptied",
                "[budgets]\n".into(),
                vec![
                    ("budgets.rules", "`team` removed"),
                    ("budgets.rules", "`ip` removed"),
                ],
            ),
            (
                "one rule removed",
                BUDGETS.split("[[budgets.rules]]").take(2).collect::<Vec<_>>().join("[[budgets.rules]]"),
                vec![("budgets.rules", "`ip` removed")],
            ),
            (
                "one rule renamed (its use starts afresh)",
                BUDGETS.replace("\"ip\"", "\"ip2\""),
                vec![("budgets.rules", "`ip` removed")],
            ),
            (
                "a hard limit raised",
                BUDGETS.replace("tokens = 1000", "tokens = 1001"),
                vec![("budgets.rules", "tokens limit raised from 1000 to 1001")],
            ),
            (
                "a currency limit raised",
                BUDGETS.replace("spend = 5.0", "spend = 5.5"),
                vec![("budgets.rules", "spend limit raised from 5000000 to 5500000")],
            ),
            (
                "one unit's limit removed",
                BUDGETS.replace("spend = 5.0\n", ""),
                vec![("budgets.rules", "spend limit (5000000) removed")],
            ),
            (
                "period shortened",
                BUDGETS.replace("\"month\"", "\"day\""),
                vec![("budgets.rules", "`month` → `day`")],
            ),
            (
                "key changed",
                BUDGETS.replace("\"tenant\"", "\"subject\""),
                vec![("budgets.rules", "key `tenant` → `subject`")],
            ),
            (
                "model narrowed",
                BUDGETS.replace("key = \"tenant\"\n", "key = \"tenant\"\nmodel = \"gpt\"\n"),
                vec![("budgets.rules", "model `*` → `gpt`")],
            ),
        ];
        for (what, budgets, want) in cases {
            let l = lowered(&base, &with(&budgets));
            let got: Vec<(&str, String)> = l.iter().map(|x| (x.key(), x.to_string())).collect();
            assert_eq!(got.len(), want.len(), "{what}: {got:#?}");
            for ((key, text), (want_key, phrase)) in got.iter().zip(&want) {
                assert_eq!(key, want_key, "{what}: {got:#?}");
                assert!(text.contains(phrase), "{what}: `{text}` lacks `{phrase}`");
            }
        }
        // Widening the model to every model is not a loss.
        let narrow = BUDGETS.replace("key = \"tenant\"\n", "key = \"tenant\"\nmodel = \"gpt\"\n");
        assert!(lowered(&with(&narrow), &base).is_empty());
    }

    #[test]
    fn admin_token_losses() {
        assert_eq!(losses(|p| p.admin.clear()), [Loss::AdminTokenRemoved]);
        let l = losses(|p| {
            p.admin = p
                .admin
                .replace("token = { value = \"0123456789abcdef\" }\n", "")
        });
        assert_eq!(l, [Loss::AdminTokenRemoved]);
        // Named tokens count as tokens: swapping `token` for them loses nothing; dropping
        // every one of them does.
        let named =
            "tokens = [{ name = \"alice\", token = { value = \"alice-token-0123456\" } }]\n";
        let l = losses(|p| {
            p.admin = p
                .admin
                .replace("token = { value = \"0123456789abcdef\" }\n", named)
        });
        assert!(l.is_empty(), "{l:?}");
        let mut with_named = Parts::full();
        with_named.admin = with_named
            .admin
            .replace("token = { value = \"0123456789abcdef\" }\n", named);
        let mut without = Parts::full();
        without.admin = "[admin]\nlisten = \"127.0.0.1:0\"\n".into();
        assert_eq!(
            lowered(&with_named.snapshot(), &without.snapshot()),
            [Loss::AdminTokenRemoved]
        );
    }

    #[test]
    fn dropping_most_routes_is_a_loss() {
        // Keep only the open route: 3 of 4 dropped. The protected requests now get 404,
        // which is not itself a route loss.
        let l = losses(|p| {
            p.routes = "[[routes]]\npath = \"/health\"\nauth = false\nupstream = \"up\"\n".into();
        });
        assert_eq!(
            l,
            [Loss::RoutesDropped {
                before: 4,
                after: 1
            }]
        );
        assert!(l[0].to_string().contains("3 of 4 routes dropped"));
    }

    #[test]
    fn a_prefix_cut_before_auth_quota_and_admin_reports_each() {
        // What a file truncated right after its routes parses to.
        let l = losses(|p| {
            p.auth.clear();
            p.quota.clear();
            p.admin.clear();
        });
        assert_eq!(keys(&l), ["auth", "quota", "admin.token"], "{l:#?}");
    }
}
