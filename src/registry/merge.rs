//! How the config file and the registry combine into one config (the rules are in the
//! [`super`] module docs), and the problem keys that name registry data.

use std::path::Path;

use super::{db_name, RegistryState, Status};
use crate::config::{ConfigProblem, RawConfig, Snapshot};
use crate::route::RawTarget;

/// The problem key of a registry version.
pub fn version_key(model: &str, version: &str) -> String {
    format!("registry.versions[\"{model}@{version}\"]")
}

/// Combines `raw` (the config file's content) with `state` and validates the whole at
/// `generation`. Problems name registry data by `registry.versions[..]` and
/// `registry.splits[..]` keys; `db` is the database's path, for the messages.
pub fn build(
    raw: &RawConfig,
    base_dir: &Path,
    state: &RegistryState,
    db: &Path,
    generation: u64,
) -> Result<Snapshot, Vec<ConfigProblem>> {
    let (combined, names, mut problems) = combine(raw, state, db);
    let validated = combined.validate(base_dir, generation);
    match validated {
        Ok(snap) if problems.is_empty() => Ok(snap),
        Ok(_) => Err(problems),
        Err(p) => {
            problems.extend(p.into_iter().map(|p| rename(p, &names)));
            Err(problems)
        }
    }
}

/// What `combine` renamed: config keys of the combined config that hold registry data, and
/// the registry key each stands for.
struct Names {
    /// `deployments[i]` → `registry.versions["m@v"]`.
    deployments: Vec<(String, String)>,
    /// `routes[i].targets` → `registry.splits[..].targets`.
    routes: Vec<(String, String)>,
}

fn rename(mut p: ConfigProblem, names: &Names) -> ConfigProblem {
    for (from, to) in names.deployments.iter().chain(&names.routes) {
        let Some(rest) = p.key.strip_prefix(from.as_str()) else {
            continue;
        };
        // `deployments[1]` must not match `deployments[12]`.
        if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
            p.key = format!("{to}{rest}");
            break;
        }
    }
    p
}

/// The file's config with the registry's versions appended to its deployments and its splits
/// in place of their routes' targets, and the problems of the combination itself.
fn combine(
    raw: &RawConfig,
    state: &RegistryState,
    db: &Path,
) -> (RawConfig, Names, Vec<ConfigProblem>) {
    let db = db_name(db);
    let mut out = raw.clone();
    let mut problems = Vec::new();
    let mut names = Names {
        deployments: Vec::new(),
        routes: Vec::new(),
    };
    let toml_version = |model: &str, version: &str| {
        raw.deployments.iter().position(|d| {
            d.model == model
                && semver::Version::parse(d.version.trim())
                    .ok()
                    .map(|v| v.to_string())
                    .as_deref()
                    == Some(version)
        })
    };
    for v in &state.versions {
        if v.status == Status::Retired {
            continue;
        }
        let key = version_key(&v.model, &v.version);
        if let Some(i) = toml_version(&v.model, &v.version) {
            problems.push(ConfigProblem::new(
                format!("deployments[{i}].version"),
                format!(
                    "`{}` is defined both in this file (deployments[{i}]) and in the registry {db} \
                     ({key}, registered by {}); remove one of them",
                    v.label(),
                    v.created_by
                ),
            ));
            continue;
        }
        match v.raw_deployment() {
            Ok(d) => {
                names
                    .deployments
                    .push((format!("deployments[{}]", out.deployments.len()), key));
                out.deployments.push(d);
            }
            Err(e) => problems.push(ConfigProblem::new(key, format!("unreadable settings: {e}"))),
        }
    }
    for split in &state.splits {
        let key = format!("registry.splits[{}]", split.route.name());
        let matching: Vec<usize> = raw
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let models: Vec<Box<str>> = r.models.iter().map(|m| m.as_str().into()).collect();
                split.route.names(&r.path, &models)
            })
            .map(|(i, _)| i)
            .collect();
        let i = match matching[..] {
            [i] => i,
            [] => {
                problems.push(ConfigProblem::new(
                    key,
                    format!(
                        "the registry {db} holds targets for a route with path `{}` and models {:?}, \
                         and the config file has no such [[routes]] entry",
                        split.route.path, split.route.models
                    ),
                ));
                continue;
            }
            _ => {
                problems.push(ConfigProblem::new(
                    key,
                    format!(
                        "{} [[routes]] entries have path `{}` and models {:?}; a registry split needs \
                         exactly one",
                        matching.len(),
                        split.route.path,
                        split.route.models
                    ),
                ));
                continue;
            }
        };
        if raw.routes[i].targets.is_none() {
            problems.push(ConfigProblem::new(
                key,
                format!(
                    "routes[{i}] proxies to an upstream; only a route with `targets` can take a \
                     registry split"
                ),
            ));
            continue;
        }
        for (j, t) in split.targets.iter().enumerate() {
            if state.version(&t.model, &t.version).map(|v| v.status) == Some(Status::Retired) {
                problems.push(ConfigProblem::new(
                    format!("{key}.targets[{j}]"),
                    format!("`{}@{}` is retired", t.model, t.version),
                ));
            }
        }
        names
            .routes
            .push((format!("routes[{i}].targets"), format!("{key}.targets")));
        out.routes[i].targets = Some(
            split
                .targets
                .iter()
                .map(|t| RawTarget {
                    model: t.model.clone(),
                    version: format!("={}", t.version),
                    weight: t.weight,
                })
                .collect(),
        );
    }
    (out, names, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RouteKey, Split, SplitTarget, Version};

    const FILE: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[[deployments]]
model = "llama"
version = "1.0.0"
endpoints = ["127.0.0.1:9001"]
[[routes]]
path = "/v1/chat/completions"
targets = [{ model = "llama", version = "^1", weight = 1 }]
[[routes]]
path = "/v1/chat/completions"
models = ["b", "a"]
targets = [{ model = "llama", weight = 1 }]
[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:9000"]
[[routes]]
path = "/other"
upstream = "up"
"#;

    fn raw() -> RawConfig {
        toml::from_str(FILE).unwrap()
    }

    fn version(v: &str, status: Status, endpoint: &str) -> Version {
        Version {
            model: "llama".into(),
            version: v.into(),
            served_name: None,
            endpoints: vec![endpoint.into()],
            labels: vec![],
            settings: Default::default(),
            status,
            content_hash: String::new(),
            created_at: 0,
            created_by: "alice".into(),
            mark: None,
        }
    }

    fn split(path: &str, models: &[&str], targets: &[(&str, u32)]) -> Split {
        let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        Split {
            route: RouteKey::new(path, &models),
            targets: targets
                .iter()
                .map(|(v, w)| SplitTarget {
                    model: "llama".into(),
                    version: (*v).into(),
                    weight: *w,
                })
                .collect(),
            updated_at: 0,
            updated_by: "alice".into(),
        }
    }

    fn build_with(state: &RegistryState) -> Result<Snapshot, Vec<ConfigProblem>> {
        build(
            &raw(),
            Path::new("."),
            state,
            Path::new("/var/lib/sg/models.db"),
            3,
        )
    }

    fn shares(s: &Snapshot, route: usize) -> Vec<(String, u64)> {
        let crate::route::RouteTarget::Split(split) = s.router.routes()[route].target() else {
            panic!("not a split")
        };
        split
            .targets()
            .iter()
            .map(|t| {
                (
                    s.router.deployment(t.deployment).version_str().to_owned(),
                    t.weight.get(),
                )
            })
            .collect()
    }

    #[test]
    fn registry_versions_join_and_splits_replace_targets() {
        let mut st = RegistryState::default();
        st.versions
            .push(version("1.1.0", Status::Canary, "127.0.0.1:9002"));
        st.versions
            .push(version("0.9.0", Status::Retired, "127.0.0.1:9003"));
        // A canary joins the catalog but the `^1` route does not reach it.
        let s = build_with(&st).unwrap();
        assert_eq!(s.generation, 3);
        assert_eq!(s.router.deployments().len(), 2);
        assert_eq!(shares(&s, 0), [("1.0.0".into(), 720_720)]);
        // Made active, the range reaches it (the highest).
        st.versions[0].status = Status::Active;
        assert_eq!(shares(&build_with(&st).unwrap(), 0)[0].0, "1.1.0");
        // A split replaces the keyed route's targets (models matched as a set).
        st.versions[0].status = Status::Canary;
        st.splits.push(split(
            "/v1/chat/completions",
            &["a", "b"],
            &[("1.0.0", 3), ("1.1.0", 1)],
        ));
        let s = build_with(&st).unwrap();
        assert_eq!(
            shares(&s, 1),
            [("1.0.0".into(), 3 * 720_720), ("1.1.0".into(), 720_720)]
        );
        assert_eq!(
            shares(&s, 0),
            [("1.0.0".into(), 720_720)],
            "the default route keeps its own"
        );
    }

    #[test]
    fn conflicts_and_bad_registry_data_name_both_places() {
        let mut st = RegistryState::default();
        st.versions
            .push(version("1.0.0", Status::Canary, "127.0.0.1:9002"));
        st.versions.push(version("2.0.0", Status::Active, "nohost"));
        st.versions
            .push(version("0.9.0", Status::Retired, "127.0.0.1:9003"));
        st.splits.push(split("/nowhere", &[], &[("1.0.0", 1)]));
        st.splits.push(split("/other", &[], &[("1.0.0", 1)]));
        st.splits.push(split(
            "/v1/chat/completions",
            &[],
            &[("0.9.0", 1), ("3.0.0", 1)],
        ));
        let problems = build_with(&st).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "deployments[0].version",
                "registry.splits[\"/nowhere\"]",
                "registry.splits[\"/other\"]",
                "registry.splits[\"/v1/chat/completions\"].targets[0]",
                "registry.versions[\"llama@2.0.0\"].endpoints[0]",
                "registry.splits[\"/v1/chat/completions\"].targets[0].version",
                "registry.splits[\"/v1/chat/completions\"].targets[1].version",
            ],
            "{problems:#?}"
        );
        let both = &problems[0].message;
        assert!(
            both.contains("deployments[0]") && both.contains("models.db"),
            "{both}"
        );
        assert!(
            both.contains("registry.versions[\"llama@1.0.0\"]"),
            "{both}"
        );
        assert!(problems[3].message.contains("retired"), "{}", problems[3]);
    }

    #[test]
    fn renaming_does_not_confuse_indices_with_their_prefixes() {
        let names = Names {
            deployments: vec![(
                "deployments[1]".into(),
                "registry.versions[\"a@1.0.0\"]".into(),
            )],
            routes: vec![],
        };
        let p = |k: &str| rename(ConfigProblem::new(k, "x"), &names).key;
        assert_eq!(
            p("deployments[1].endpoints"),
            "registry.versions[\"a@1.0.0\"].endpoints"
        );
        assert_eq!(p("deployments[12].endpoints"), "deployments[12].endpoints");
        assert_eq!(p("deployments[1]"), "registry.versions[\"a@1.0.0\"]");
    }
}
