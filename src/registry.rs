//! The model registry: model versions, route splits, rollouts and an audit log of every
//! change, in an embedded SQLite database (`[registry] path`), owned by the control thread.
//!
//! Workers never touch it: a committed change builds a new [`Snapshot`] on the control
//! thread, which every worker swaps in like a reload (the generation increases).
//!
//! - [`schema`]: the tables, compiled in, and their migrations (`user_version`).
//! - [`store`]: opening the database (WAL, foreign keys, `busy_timeout`, an integrity check)
//!   and [`store::Store::change`], the one way to change it: one transaction that also
//!   appends the audit entry (who, when, before, after).
//! - [`changes`]: the admin API's changes (register a version, change its status, set or
//!   remove a route's split, start, pause, resume and abort a rollout).
//! - [`merge`]: how the registry and the config file combine into one config.
//! - [`rollout`]: the progressive canary: step weights and the guards.
//! - [`view`]: what the admin API and `/metrics` show.
//!
//! # Statuses
//!
//! A version is `active`, `canary`, `draining` or `retired`. Registering one makes it
//! `canary` unless asked otherwise. Route targets written as a version range (`^3`) reach
//! only `active` versions; a target naming one exact version (`=3.3.0`, as registry splits
//! are written) reaches `canary` and `draining` ones too (see `route::VersionStatus`). A
//! `retired` version is left out of the config entirely (its record and history stay).
//!
//! # Combining with the config file
//!
//! - Deployments: the file's `[[deployments]]` plus every registry version that is not
//!   retired. A `model@version` in both is a config error naming both places.
//! - Routes stay in the file. A registry split, keyed by a route's `path` and `models` (as
//!   `PUT /routes/weights` names routes), replaces that route's `targets` with exact versions
//!   and weights; the route's other settings (methods, auth, sticky, fallbacks) stay the
//!   file's. A split naming no such route, or a retired or unknown version, is a config
//!   error; so the file cannot drop a route the registry still splits.
//! - `PUT /routes/weights` refuses a route whose targets the registry holds.
//!
//! Problems in registry data are named `registry.versions["m@v"]...` and
//! `registry.splits["path"]...`.
//!
//! # Durability
//!
//! Every change is one SQLite transaction in WAL mode with `synchronous = FULL`: a process
//! killed at any moment comes back with the state before or after the change, never half of
//! it, and an acknowledged change survives a crash. A database that cannot be opened, fails
//! its integrity check or was written by a newer schema stops the start with an error naming
//! the file; it is never replaced by an empty registry. A missing file is created.

pub mod changes;
pub mod merge;
pub mod rollout;
pub mod schema;
pub mod store;
pub mod view;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::config::{self, ConfigError, ConfigProblem, RawConfig, Snapshot};
use crate::route::{RawDeployment, VersionStatus};
pub use store::{Store, StoreError};

/// A version's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Canary,
    Draining,
    Retired,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Active,
        Status::Canary,
        Status::Draining,
        Status::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Canary => "canary",
            Status::Draining => "draining",
            Status::Retired => "retired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// How the router treats the version; `None`: retired, not in the config.
    pub fn routing(self) -> Option<VersionStatus> {
        match self {
            Status::Active => Some(VersionStatus::Active),
            Status::Canary => Some(VersionStatus::Canary),
            Status::Draining => Some(VersionStatus::Draining),
            Status::Retired => None,
        }
    }
}

/// A model: the family its versions belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub created_by: String,
}

/// One registered version of a model: a deployment, with its lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub model: String,
    /// Semver, in canonical form.
    pub version: String,
    pub served_name: Option<String>,
    pub endpoints: Vec<String>,
    pub labels: Vec<String>,
    /// The deployment's provider settings, as `[[deployments]]` keys (timeouts, `api_key`
    /// as an env or file reference, `breaker`, `health_check`).
    pub settings: Map<String, Value>,
    pub status: Status,
    /// SHA-256 (hex) of the canonical JSON of served name, endpoints, labels and settings.
    pub content_hash: String,
    pub created_at: i64,
    pub created_by: String,
    /// Why a rollout took the version out of traffic, if one did.
    pub mark: Option<String>,
}

impl Version {
    /// `model@version`: the deployment's metrics label.
    pub fn label(&self) -> String {
        format!("{}@{}", self.model, self.version)
    }

    /// The version as a `[[deployments]]` entry would be written: everything but its
    /// status, which `merge` sets.
    pub fn spec(&self) -> Map<String, Value> {
        let mut m = self.settings.clone();
        m.insert("model".into(), self.model.clone().into());
        m.insert("version".into(), self.version.clone().into());
        m.insert("endpoints".into(), self.endpoints.clone().into());
        m.insert("labels".into(), self.labels.clone().into());
        if let Some(s) = &self.served_name {
            m.insert("served_name".into(), s.clone().into());
        }
        m
    }

    /// The version as a `[[deployments]]` entry.
    pub fn raw_deployment(&self) -> Result<RawDeployment, String> {
        let mut d: RawDeployment =
            serde_json::from_value(Value::Object(self.spec())).map_err(|e| e.to_string())?;
        d.status = self.status.routing().unwrap_or_default();
        Ok(d)
    }
}

/// A route as a split names it: its `path` and its `models` (sorted; empty for the path's
/// default route).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub path: String,
    pub models: Vec<String>,
}

impl RouteKey {
    pub fn new(path: &str, models: &[String]) -> RouteKey {
        let mut models = models.to_vec();
        models.sort();
        models.dedup();
        RouteKey {
            path: path.to_owned(),
            models,
        }
    }

    /// `"/v1/chat"` or `"/v1/chat"|a,b`: the split's name in problem keys and audit subjects.
    pub fn name(&self) -> String {
        if self.models.is_empty() {
            format!("{:?}", self.path)
        } else {
            format!("{:?}|{}", self.path, self.models.join(","))
        }
    }

    /// Whether `route` is the route this key names.
    pub fn names(&self, path: &str, models: &[Box<str>]) -> bool {
        let mut theirs: Vec<&str> = models.iter().map(|m| &**m).collect();
        theirs.sort_unstable();
        theirs.dedup();
        self.path == path && theirs == self.models
    }
}

/// One weighted entry of a split: an exact version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitTarget {
    pub model: String,
    pub version: String,
    pub weight: u32,
}

/// A route's targets as the registry holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub route: RouteKey,
    pub targets: Vec<SplitTarget>,
    pub updated_at: i64,
    pub updated_by: String,
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Running,
    Paused,
    Completed,
    RolledBack,
    Aborted,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::RolledBack,
        RolloutState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        RolloutState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Running or paused: it holds its route's split.
    pub fn is_live(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// One rollout of a version on one route.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: i64,
    pub model: String,
    /// The version rolled out (the canary).
    pub version: String,
    /// The version it replaces.
    pub stable: String,
    pub route: RouteKey,
    pub plan: rollout::Plan,
    /// The route's targets before the rollout.
    pub original: Vec<SplitTarget>,
    /// Index of the step in force in `plan.steps`.
    pub step: usize,
    pub state: RolloutState,
    /// Why it ended (rolled back, aborted).
    pub reason: Option<String>,
    /// The guard that rolled it back.
    pub guard: Option<String>,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
}

impl Rollout {
    /// The canary's share of the model's traffic on the route now, in percent.
    pub fn percent(&self) -> u8 {
        match self.state {
            RolloutState::Completed => 100,
            RolloutState::RolledBack | RolloutState::Aborted => 0,
            _ => self.plan.steps.get(self.step).copied().unwrap_or(0),
        }
    }

    pub fn canary_label(&self) -> String {
        format!("{}@{}", self.model, self.version)
    }

    pub fn stable_label(&self) -> String {
        format!("{}@{}", self.model, self.stable)
    }
}

/// Everything in the registry: what a snapshot is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistryState {
    pub models: Vec<Model>,
    pub versions: Vec<Version>,
    pub splits: Vec<Split>,
    /// Oldest first.
    pub rollouts: Vec<Rollout>,
}

impl RegistryState {
    pub fn version(&self, model: &str, version: &str) -> Option<&Version> {
        self.versions
            .iter()
            .find(|v| v.model == model && v.version == version)
    }

    pub fn split(&self, route: &RouteKey) -> Option<&Split> {
        self.splits.iter().find(|s| s.route == *route)
    }

    /// The running or paused rollout on `route`.
    pub fn live_rollout_on(&self, route: &RouteKey) -> Option<&Rollout> {
        self.rollouts
            .iter()
            .find(|r| r.state.is_live() && r.route == *route)
    }

    /// The running or paused rollout that involves `model@version` (as canary or stable).
    pub fn live_rollout_of(&self, model: &str, version: &str) -> Option<&Rollout> {
        self.rollouts.iter().find(|r| {
            r.state.is_live() && r.model == model && (r.version == version || r.stable == version)
        })
    }

    /// The latest rollout of `model@version` (as canary).
    pub fn latest_rollout(&self, model: &str, version: &str) -> Option<&Rollout> {
        self.rollouts
            .iter()
            .rev()
            .find(|r| r.model == model && r.version == version)
    }
}

/// An opened registry and what it holds.
pub struct Opened {
    pub store: Store,
    pub state: RegistryState,
}

/// Opens the database at `path` (creating it when missing) and reads its state.
pub fn open(path: &Path) -> Result<Opened, StoreError> {
    let store = Store::open(path)?;
    let state = store.state()?;
    Ok(Opened { store, state })
}

/// The config file, and the registry it names, loaded and combined.
pub struct Loaded {
    pub snapshot: Snapshot,
    /// The file's config, before the registry was combined in.
    pub raw: RawConfig,
    pub registry: Option<Opened>,
}

/// Why the config could not be loaded at start.
#[derive(Debug)]
pub enum LoadError {
    /// The config (alone, or combined with the registry) has problems.
    Config(ConfigError),
    /// The registry database cannot be used.
    Registry(StoreError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Config(e) => write!(f, "{e}"),
            LoadError::Registry(e) => write!(f, "{e}"),
        }
    }
}

/// Reads the config file at `path` and, when it has `[registry]`, opens the database and
/// combines both (see the module docs): what the process starts on.
pub fn load(path: &Path, generation: u64) -> Result<Loaded, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LoadError::Config(ConfigError {
            file: path.to_path_buf(),
            problems: vec![ConfigProblem::new("(file)", format!("cannot read: {e}"))],
        })
    })?;
    let raw = config::parse_bytes(path, &bytes).map_err(LoadError::Config)?;
    let base = config::base_dir(path);
    let Some(db) = raw.registry.as_ref().map(|r| base.join(&r.path)) else {
        let snapshot = raw.validate(base, generation).map_err(|problems| {
            LoadError::Config(ConfigError {
                file: path.to_path_buf(),
                problems,
            })
        })?;
        return Ok(Loaded {
            snapshot,
            raw,
            registry: None,
        });
    };
    let opened = open(&db).map_err(LoadError::Registry)?;
    let snapshot =
        merge::build(&raw, base, &opened.state, &db, generation).map_err(|problems| {
            LoadError::Config(ConfigError {
                file: path.to_path_buf(),
                problems,
            })
        })?;
    Ok(Loaded {
        snapshot,
        raw,
        registry: Some(opened),
    })
}

/// The file name a problem message uses for the database.
pub(crate) fn db_name(db: &Path) -> String {
    db.file_name().map_or_else(
        || db.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The database path a config names, resolved against the config file's directory.
pub fn db_path(config_path: &Path, raw: &RawConfig) -> Option<PathBuf> {
    raw.registry
        .as_ref()
        .map(|r| config::base_dir(config_path).join(&r.path))
}
