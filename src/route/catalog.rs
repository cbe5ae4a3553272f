//! The model catalog: every `[[deployments]]` entry, validated, with a stable id, and the
//! build-time resolution of a route target's version constraint to deployments.

use semver::{Version, VersionReq};

use super::hash::hash_bytes;
use super::raw::RawDeployment;
use crate::config_types::ConfigProblem;

/// Index of a deployment in [`super::Router::deployments`]; stable for one router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentId(pub u32);

impl DeploymentId {
    /// The index into [`super::Router::deployments`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A validated deployment: one version of one model and the endpoints that serve it.
#[derive(Debug, Clone)]
pub struct Deployment {
    id: DeploymentId,
    model: Box<str>,
    version: Version,
    version_text: Box<str>,
    served_name: Box<str>,
    endpoints: Box<[Box<str>]>,
    labels: Box<[Box<str>]>,
    /// Hash of `model@version`: the target's identity for sticky hashing, so a key keeps its
    /// target across reloads that reorder or add deployments.
    seed: u64,
}

impl Deployment {
    pub fn id(&self) -> DeploymentId {
        self.id
    }
    pub fn model(&self) -> &str {
        &self.model
    }
    pub fn version(&self) -> &Version {
        &self.version
    }
    /// The version as text, for the `X-Shardgate-Version` header.
    pub fn version_str(&self) -> &str {
        &self.version_text
    }
    /// The name to put in the forwarded body's `model`.
    pub fn served_name(&self) -> &str {
        &self.served_name
    }
    /// `host:port` addresses, in config order.
    pub fn endpoints(&self) -> &[Box<str>] {
        &self.endpoints
    }
    pub fn labels(&self) -> &[Box<str>] {
        &self.labels
    }
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }
}

/// All deployments of one config.
#[derive(Debug, Clone, Default)]
pub(crate) struct Catalog {
    deployments: Box<[Deployment]>,
}

/// Why a target's constraint resolved to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolveError {
    UnknownModel,
    NoMatchingVersion,
}

impl Catalog {
    /// Validates every deployment, pushing each problem found. Entries with problems are left
    /// out of the catalog (the build fails anyway).
    pub(crate) fn build(raw: &[RawDeployment], problems: &mut Vec<ConfigProblem>) -> Catalog {
        let mut deployments: Vec<Deployment> = Vec::with_capacity(raw.len());
        for (i, d) in raw.iter().enumerate() {
            let key = |field: &str| format!("deployments[{i}].{field}");
            let before = problems.len();
            if d.model.trim().is_empty() {
                problems.push(ConfigProblem::new(key("model"), "must not be empty"));
            }
            let version = match Version::parse(d.version.trim()) {
                Ok(v) => Some(v),
                Err(e) => {
                    problems.push(ConfigProblem::new(
                        key("version"),
                        format!("`{}` is not a semver version: {e}", d.version),
                    ));
                    None
                }
            };
            if d.endpoints.is_empty() {
                problems.push(ConfigProblem::new(
                    key("endpoints"),
                    "needs at least one endpoint",
                ));
            }
            for (j, ep) in d.endpoints.iter().enumerate() {
                if let Err(msg) = check_endpoint(ep) {
                    problems.push(ConfigProblem::new(key(&format!("endpoints[{j}]")), msg));
                }
            }
            if d.served_name
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
            {
                problems.push(ConfigProblem::new(key("served_name"), "must not be empty"));
            }
            for (j, label) in d.labels.iter().enumerate() {
                if label.trim().is_empty() {
                    problems.push(ConfigProblem::new(
                        key(&format!("labels[{j}]")),
                        "must not be empty",
                    ));
                }
            }
            let Some(version) = version else { continue };
            if let Some(first) = deployments
                .iter()
                .position(|o| *o.model == *d.model && o.version == version)
            {
                problems.push(ConfigProblem::new(
                    key("version"),
                    format!(
                        "duplicate deployment `{}@{version}` (first declared as deployments[{}])",
                        d.model,
                        first_raw_index(raw, &deployments[first])
                    ),
                ));
                continue;
            }
            if problems.len() != before {
                continue;
            }
            let id = DeploymentId(deployments.len() as u32);
            let ident = format!("{}@{version}", d.model);
            deployments.push(Deployment {
                id,
                model: d.model.as_str().into(),
                version_text: version.to_string().into(),
                version,
                served_name: d.served_name.as_deref().unwrap_or(&d.model).into(),
                endpoints: d.endpoints.iter().map(|e| e.trim().into()).collect(),
                labels: d.labels.iter().map(|l| l.as_str().into()).collect(),
                seed: hash_bytes(ident.as_bytes()),
            });
        }
        Catalog {
            deployments: deployments.into(),
        }
    }

    pub(crate) fn all(&self) -> &[Deployment] {
        &self.deployments
    }

    pub(crate) fn get(&self, id: DeploymentId) -> &Deployment {
        &self.deployments[id.index()]
    }

    /// The deployments of `model` matching `req`, highest version first; only the highest
    /// unless `all` is set.
    pub(crate) fn resolve(
        &self,
        model: &str,
        req: &VersionReq,
        all: bool,
    ) -> Result<Vec<DeploymentId>, ResolveError> {
        let mut of_model = self
            .deployments
            .iter()
            .filter(|d| *d.model == *model)
            .peekable();
        if of_model.peek().is_none() {
            return Err(ResolveError::UnknownModel);
        }
        let mut matching: Vec<&Deployment> = of_model.filter(|d| req.matches(&d.version)).collect();
        if matching.is_empty() {
            return Err(ResolveError::NoMatchingVersion);
        }
        matching.sort_by(|a, b| b.version.cmp(&a.version));
        if !all {
            matching.truncate(1);
        }
        Ok(matching.into_iter().map(|d| d.id).collect())
    }
}

/// The raw index of an accepted deployment (ids skip rejected entries).
fn first_raw_index(raw: &[RawDeployment], d: &Deployment) -> usize {
    raw.iter()
        .position(|r| {
            *r.model == *d.model
                && Version::parse(r.version.trim()).ok().as_ref() == Some(&d.version)
        })
        .unwrap_or(0)
}

/// `host:port` with a non-empty host and a numeric port.
fn check_endpoint(ep: &str) -> Result<(), String> {
    let ep = ep.trim();
    match ep.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(())
        }
        _ => Err(format!("`{ep}` is not `host:port`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(model: &str, version: &str) -> RawDeployment {
        RawDeployment {
            model: model.into(),
            version: version.into(),
            endpoints: vec!["127.0.0.1:9000".into()],
            served_name: None,
            labels: vec![],
            connect_timeout_ms: None,
            first_byte_timeout_ms: None,
            idle_timeout_ms: None,
            api_key: None,
            breaker: None,
            health_check: None,
            ..RawDeployment::default()
        }
    }

    fn catalog(raw: &[RawDeployment]) -> Catalog {
        let mut problems = Vec::new();
        let c = Catalog::build(raw, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        c
    }

    #[test]
    fn resolves_highest_or_all_matching_versions() {
        let c = catalog(&[
            dep("llama", "3.1.9"),
            dep("llama", "3.2.0"),
            dep("llama", "3.2.7"),
            dep("llama", "3.3.0"),
            dep("qwen", "2.0.0"),
        ]);
        let ver = |ids: Vec<DeploymentId>| -> Vec<String> {
            ids.into_iter()
                .map(|id| c.get(id).version_str().to_owned())
                .collect()
        };
        type Case<'a> = (&'a str, bool, Result<Vec<&'a str>, ResolveError>);
        let cases: [Case<'_>; 6] = [
            (">=3.2.0, <3.3.0", false, Ok(vec!["3.2.7"])),
            (">=3.2.0, <3.3.0", true, Ok(vec!["3.2.7", "3.2.0"])),
            ("*", false, Ok(vec!["3.3.0"])),
            ("^3", true, Ok(vec!["3.3.0", "3.2.7", "3.2.0", "3.1.9"])),
            ("^4", false, Err(ResolveError::NoMatchingVersion)),
            ("=3.1.9", false, Ok(vec!["3.1.9"])),
        ];
        for (req, all, want) in cases {
            let got = c
                .resolve("llama", &VersionReq::parse(req).unwrap(), all)
                .map(ver);
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{req} all={all}");
        }
        assert_eq!(
            c.resolve("mistral", &VersionReq::STAR, false),
            Err(ResolveError::UnknownModel)
        );
    }

    #[test]
    fn reports_every_deployment_problem() {
        let mut bad = dep("llama", "3.x");
        bad.endpoints = vec!["nohost".into(), ":80".into(), "h:0".into()];
        let mut empty = dep("", "1.0.0");
        empty.endpoints.clear();
        empty.labels = vec![" ".into()];
        let raw = [dep("llama", "1.0.0"), bad, empty, dep("llama", "1.0.0")];
        let mut problems = Vec::new();
        let c = Catalog::build(&raw, &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "deployments[1].version",
                "deployments[1].endpoints[0]",
                "deployments[1].endpoints[1]",
                "deployments[1].endpoints[2]",
                "deployments[2].model",
                "deployments[2].endpoints",
                "deployments[2].labels[0]",
                "deployments[3].version",
            ]
        );
        assert!(
            problems[7].message.contains("deployments[0]"),
            "{}",
            problems[7]
        );
        assert_eq!(c.all().len(), 1);
        assert_eq!(c.all()[0].served_name(), "llama");
    }
}
