//! API key management on the control thread: the key records ([`KeyService`], over a
//! [`store::KeyStore`]), the operations the admin API and `shardgate keys` ask for
//! ([`KeyCommand`]), and putting a change in force on every worker.
//!
//! # A change
//!
//! A command is first planned ([`KeyService::plan`]: the records after it, the reply, the
//! audit entry), then checked by building the key table the new snapshot would carry (so a
//! key whose claims cannot be sent as headers is refused before anything is stored), then
//! committed (stored, then audited; if the audit cannot be written the old records are stored
//! back and the change fails), and only then sent to every worker as a new snapshot. The
//! caller gets a [`Barrier`] and answers once every worker has applied it, so a key disabled
//! through the admin API is refused everywhere before the API says so.
//!
//! # Outside edits
//!
//! The keys file is watched like the config file (settled versions only). A new version is
//! checked as a whole and put in force, or refused with every problem logged (the keys in
//! force stay); either way it is audited as a `reload`.
//!
//! # Error Handling
//!
//! [`KeyError`] says which status the admin API answers: 404 for an unknown id or when API
//! keys are not configured, 400 with every problem for an invalid request, 500 when the store
//! fails (nothing changed), 503 when a stored change was not confirmed by every worker.

pub mod sqlite;
mod state;
pub mod store;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::auth::apikey::record::{generate_id, generate_secret, MAX_SECRETS};
use crate::auth::{ApiKeySettings, KeyRecord, KeySource};
use crate::config::{ConfigError, ConfigProblem, Snapshot};
use crate::time::unix_now;
pub(super) use state::KeysState;
pub use store::{AuditEntry, FileStore, KeyStore, StoreError};

/// Default grace period of a rotated key's old secret.
pub const DEFAULT_GRACE_SECS: u64 = 3600;
/// Longest grace period a rotation may give.
pub const MAX_GRACE_SECS: u64 = 30 * 24 * 3600;

/// What the admin API or the CLI asks of the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCommand {
    List,
    Create(NewKey),
    Disable(String),
    Enable(String),
    /// A new secret; the old ones stay valid for `grace_secs` (0: refused at once).
    Rotate {
        id: String,
        grace_secs: u64,
    },
    Delete(String),
}

/// `POST /keys`: the new key's settings. Only `name` is required; `owner` defaults to it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub budgets: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Unix seconds; or `expires_in_secs` from now.
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReply {
    List(Vec<KeyRecord>),
    /// A key with a new secret (create, rotate): `key` is shown this once.
    Secret {
        record: KeyRecord,
        key: String,
    },
    Changed(KeyRecord),
    Deleted(String),
}

/// Why a command was not carried out (module docs, "Error Handling").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    NotConfigured,
    NotFound(String),
    Invalid(Vec<ConfigProblem>),
    Store(String),
    /// Stored and sent, but only `confirmed` of `workers` answered in time.
    Unconfirmed {
        confirmed: usize,
        workers: usize,
    },
    Stopped,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::NotConfigured => f.write_str("API keys are not configured ([auth.api_keys])"),
            KeyError::NotFound(id) => write!(f, "no key with id `{id}`"),
            KeyError::Invalid(p) => {
                let lines: Vec<String> = p
                    .iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect();
                write!(f, "invalid: {}", lines.join("; "))
            }
            KeyError::Store(e) => write!(f, "the key store failed: {e}"),
            KeyError::Unconfirmed { confirmed, workers } => write!(
                f,
                "stored, but only {confirmed} of {workers} workers confirmed the change in time"
            ),
            KeyError::Stopped => f.write_str("the control thread stopped"),
        }
    }
}

impl From<StoreError> for KeyError {
    fn from(e: StoreError) -> Self {
        KeyError::Store(e.to_string())
    }
}

/// The records after a command, what to answer, and what to audit (`None`: nothing changed).
#[derive(Debug, Clone)]
pub struct Plan {
    pub records: Vec<KeyRecord>,
    pub reply: KeyReply,
    pub entry: Option<AuditEntry>,
}

/// The key records and the store they live in.
pub struct KeyService {
    store: Box<dyn KeyStore>,
    records: Vec<KeyRecord>,
    rng: ring::rand::SystemRandom,
}

impl KeyService {
    /// Loads every record from `store`.
    pub fn open(mut store: Box<dyn KeyStore>) -> Result<KeyService, StoreError> {
        let records = store.load()?;
        Ok(KeyService {
            store,
            records,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The store `[auth.api_keys]` names: its file, or the model registry's database.
    pub fn for_settings(settings: &ApiKeySettings) -> Result<KeyService, StoreError> {
        match &settings.source {
            KeySource::File { file, audit_file } => {
                Self::open(Box::new(FileStore::new(file.clone(), audit_file.clone())))
            }
            KeySource::Registry(db) => Self::open(Box::new(sqlite::RegistryStore::open(db)?)),
        }
    }

    pub fn records(&self) -> &[KeyRecord] {
        &self.records
    }

    /// The file outside edits change, if the store has one.
    pub fn watched(&self) -> Option<&std::path::Path> {
        self.store.watched()
    }

    /// The records after `cmd` at `now`, by `actor`, without storing anything.
    pub fn plan(&self, cmd: KeyCommand, actor: &'static str, now: u64) -> Result<Plan, KeyError> {
        let mut records = self.records.clone();
        let entry = |action, r: &KeyRecord, prefix: Option<String>, detail: Option<String>| {
            Some(AuditEntry {
                at: now,
                action,
                id: r.id.clone(),
                name: Some(r.name.clone()),
                prefix,
                actor,
                by: None,
                detail,
            })
        };
        let find = |records: &mut Vec<KeyRecord>, id: &str| {
            records
                .iter()
                .position(|r| r.id == id)
                .ok_or_else(|| KeyError::NotFound(id.to_owned()))
        };
        let (reply, entry) = match cmd {
            KeyCommand::List => (KeyReply::List(records.clone()), None),
            KeyCommand::Create(new) => {
                let (record, key) = self.create(new, now)?;
                let e = entry(
                    "create",
                    &record,
                    Some(record.secrets[0].prefix.clone()),
                    None,
                );
                records.push(record.clone());
                (KeyReply::Secret { record, key }, e)
            }
            KeyCommand::Disable(id) => {
                let i = find(&mut records, &id)?;
                records[i].enabled = false;
                let e = entry("disable", &records[i], None, None);
                (KeyReply::Changed(records[i].clone()), e)
            }
            KeyCommand::Enable(id) => {
                let i = find(&mut records, &id)?;
                records[i].enabled = true;
                let e = entry("enable", &records[i], None, None);
                (KeyReply::Changed(records[i].clone()), e)
            }
            KeyCommand::Rotate { id, grace_secs } => {
                let i = find(&mut records, &id)?;
                let (key, detail) = self.rotate(&mut records[i], grace_secs, now)?;
                let prefix = records[i].secrets.last().map(|s| s.prefix.clone());
                let e = entry("rotate", &records[i], prefix, Some(detail));
                (
                    KeyReply::Secret {
                        record: records[i].clone(),
                        key,
                    },
                    e,
                )
            }
            KeyCommand::Delete(id) => {
                let i = find(&mut records, &id)?;
                let r = records.remove(i);
                let e = entry("delete", &r, None, None);
                (KeyReply::Deleted(r.id), e)
            }
        };
        Ok(Plan {
            records,
            reply,
            entry,
        })
    }

    /// A new record and its key.
    fn create(&self, new: NewKey, now: u64) -> Result<(KeyRecord, String), KeyError> {
        let rng_failed = || KeyError::Store("the system random generator failed".into());
        let secret = generate_secret(&self.rng, now).map_err(|_| rng_failed())?;
        let id = loop {
            let id = generate_id(&self.rng).map_err(|_| rng_failed())?;
            if !self.records.iter().any(|r| r.id == id) {
                break id;
            }
        };
        let mut problems = Vec::new();
        let expires_at = match (new.expires_at, new.expires_in_secs) {
            (Some(_), Some(_)) => {
                problems.push(ConfigProblem::new(
                    "expires_in_secs",
                    "set expires_at or expires_in_secs, not both",
                ));
                None
            }
            (Some(t), None) => Some(t),
            (None, Some(s)) => Some(now.saturating_add(s)),
            (None, None) => None,
        };
        if expires_at.is_some_and(|t| t <= now) {
            problems.push(ConfigProblem::new("expires_at", "must be in the future"));
        }
        let record = KeyRecord {
            id,
            owner: new.owner.unwrap_or_else(|| new.name.clone()),
            name: new.name,
            tenant: new.tenant,
            label: new.label,
            models: new.models,
            scopes: new.scopes,
            budgets: new.budgets,
            claims: new.claims,
            expires_at,
            enabled: true,
            created_at: now,
            secrets: vec![secret.record],
        };
        record.check(&|field| field.to_owned(), &mut problems);
        if problems.is_empty() {
            Ok((record, secret.key))
        } else {
            Err(KeyError::Invalid(problems))
        }
    }

    /// Gives `r` a new secret; its other secrets end `grace_secs` from now (or earlier, if
    /// they already would). Returns the key and the audit detail.
    fn rotate(
        &self,
        r: &mut KeyRecord,
        grace_secs: u64,
        now: u64,
    ) -> Result<(String, String), KeyError> {
        if grace_secs > MAX_GRACE_SECS {
            return Err(KeyError::Invalid(vec![ConfigProblem::new(
                "grace_secs",
                format!("must be at most {MAX_GRACE_SECS}"),
            )]));
        }
        let end = now.saturating_add(grace_secs);
        for s in &mut r.secrets {
            s.not_after = Some(s.not_after.map_or(end, |t| t.min(end)));
        }
        let secret = generate_secret(&self.rng, now)
            .map_err(|_| KeyError::Store("the system random generator failed".into()))?;
        r.secrets.push(secret.record);
        r.prune_secrets(now);
        if r.secrets.len() > MAX_SECRETS {
            return Err(KeyError::Invalid(vec![ConfigProblem::new(
                "grace_secs",
                format!(
                    "the key already has {} secrets in their grace period; rotate with a shorter grace",
                    MAX_SECRETS - 1
                ),
            )]));
        }
        Ok((secret.key, format!("old secrets accepted until {end}")))
    }

    /// Stores `plan` with its audit entry ([`KeyStore::commit`]: both or neither), so no
    /// change is in the store without its audit entry.
    pub fn commit(&mut self, plan: &Plan) -> Result<(), KeyError> {
        let Some(entry) = &plan.entry else {
            return Ok(());
        };
        self.store.commit(&self.records, &plan.records, entry)?;
        self.records = plan.records.clone();
        Ok(())
    }

    /// Reads the store again when another process changed it (a registry changed by
    /// `shardgate keys --registry`): `Ok(true)` when the records did.
    pub fn refresh(&mut self) -> Result<bool, StoreError> {
        if !self.store.changed_elsewhere()? {
            return Ok(false);
        }
        let records = self.store.load()?;
        let changed = records != self.records;
        self.records = records;
        Ok(changed)
    }

    /// Plans, checks and commits `cmd` with no gateway running (`shardgate keys --file`):
    /// the gateway's file watch puts the change in force.
    pub fn apply(&mut self, cmd: KeyCommand, actor: &'static str) -> Result<KeyReply, KeyError> {
        let plan = self.plan(cmd, actor, unix_now())?;
        let file = crate::auth::apikey::KeysFile {
            version: crate::auth::apikey::record::FILE_VERSION,
            keys: plan.records.clone(),
        };
        let problems = file.problems();
        if !problems.is_empty() {
            return Err(KeyError::Invalid(problems));
        }
        self.commit(&plan)?;
        Ok(plan.reply)
    }

    /// Adds `records` (a keys file's) to the store, each as an audited `import`, with no
    /// gateway running (`shardgate keys --registry DB import FILE`). Refused whole, before
    /// anything is stored, when an id or a secret is already there or a record is invalid.
    /// Returns the ids imported.
    pub fn import(
        &mut self,
        records: Vec<KeyRecord>,
        actor: &'static str,
    ) -> Result<Vec<String>, KeyError> {
        let mut all = self.records.clone();
        all.extend(records.iter().cloned());
        let file = crate::auth::apikey::KeysFile {
            version: crate::auth::apikey::record::FILE_VERSION,
            keys: all,
        };
        let problems = file.problems();
        if !problems.is_empty() {
            return Err(KeyError::Invalid(problems));
        }
        let mut ids = Vec::with_capacity(records.len());
        for r in records {
            let mut after = self.records.clone();
            let entry = AuditEntry {
                at: unix_now(),
                action: "import",
                id: r.id.clone(),
                name: Some(r.name.clone()),
                prefix: r.secrets.last().map(|s| s.prefix.clone()),
                actor,
                by: None,
                detail: None,
            };
            ids.push(r.id.clone());
            after.push(r);
            self.commit(&Plan {
                records: after,
                reply: KeyReply::List(Vec::new()),
                entry: Some(entry),
            })?;
        }
        Ok(ids)
    }

    /// Re-reads the store after an outside edit, and audits it as a `reload`.
    pub fn reload(&mut self, records: Vec<KeyRecord>) -> Result<(), StoreError> {
        let entry = AuditEntry {
            at: unix_now(),
            action: "reload",
            id: "-".into(),
            name: None,
            prefix: None,
            actor: "file-watch",
            by: None,
            detail: Some(format!("{} keys", records.len())),
        };
        self.store.audit(&entry)?;
        self.records = records;
        Ok(())
    }
}

/// Opens the key store `snapshot` configures (`[auth.api_keys]`) and puts its keys in the
/// snapshot's table, before the engine starts (as [`super::open_revocations`] does for
/// revocations), so a key works from the first request. `Ok(None)`: no API keys configured.
pub fn open_api_keys(snapshot: &mut Snapshot) -> Result<Option<KeyService>, ConfigError> {
    let Some(auth) = snapshot.auth.as_mut() else {
        return Ok(None);
    };
    let Some(settings) = auth.api_key_settings().cloned() else {
        return Ok(None);
    };
    let service = KeyService::for_settings(&settings).map_err(|e| store_error(&settings, e))?;
    auth.set_api_keys(service.records())
        .map_err(|problems| ConfigError {
            file: settings.source.path().to_path_buf(),
            problems,
        })?;
    Ok(Some(service))
}

/// A store failure as a config error naming the keys file (or the registry database).
pub(super) fn store_error(settings: &ApiKeySettings, e: StoreError) -> ConfigError {
    match e {
        StoreError::Invalid(e) => e,
        StoreError::Io(m) => ConfigError {
            file: settings.source.path().to_path_buf(),
            problems: vec![ConfigProblem::new("(file)", m)],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in memory that can be told to fail.
    #[derive(Default)]
    struct Memory {
        records: Vec<KeyRecord>,
        audit: Vec<AuditEntry>,
        fail_audit: bool,
    }

    impl KeyStore for std::sync::Arc<std::sync::Mutex<Memory>> {
        fn load(&mut self) -> Result<Vec<KeyRecord>, StoreError> {
            Ok(self.lock().unwrap().records.clone())
        }
        fn commit(
            &mut self,
            _: &[KeyRecord],
            records: &[KeyRecord],
            entry: &AuditEntry,
        ) -> Result<(), StoreError> {
            self.audit(entry)?;
            self.lock().unwrap().records = records.to_vec();
            Ok(())
        }
        fn audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
            let mut m = self.lock().unwrap();
            if m.fail_audit {
                return Err(StoreError::Io("disk full".into()));
            }
            m.audit.push(entry.clone());
            Ok(())
        }
        fn watched(&self) -> Option<&std::path::Path> {
            None
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    #[allow(clippy::disallowed_types)]
    fn service() -> (KeyService, std::sync::Arc<std::sync::Mutex<Memory>>) {
        let mem = std::sync::Arc::new(std::sync::Mutex::new(Memory::default()));
        (KeyService::open(Box::new(mem.clone())).unwrap(), mem)
    }

    fn create(s: &mut KeyService, name: &str) -> (KeyRecord, String) {
        let new = NewKey {
            name: name.into(),
            ..NewKey::default()
        };
        match s.apply(KeyCommand::Create(new), "cli").unwrap() {
            KeyReply::Secret { record, key } => (record, key),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lifecycle_is_stored_and_audited() {
        let (mut s, mem) = service();
        let (rec, key) = create(&mut s, "ci");
        assert_eq!(rec.owner, "ci", "owner defaults to the name");
        assert!(key.starts_with("sg-"));
        s.apply(KeyCommand::Disable(rec.id.clone()), "cli").unwrap();
        assert!(!mem.lock().unwrap().records[0].enabled);
        s.apply(KeyCommand::Enable(rec.id.clone()), "cli").unwrap();
        let KeyReply::Secret {
            record,
            key: new_key,
        } = s
            .apply(
                KeyCommand::Rotate {
                    id: rec.id.clone(),
                    grace_secs: 60,
                },
                "cli",
            )
            .unwrap()
        else {
            panic!("rotate gives a secret")
        };
        assert_ne!(new_key, key);
        assert_eq!(record.secrets.len(), 2);
        assert!(record.secrets[0].not_after.is_some());
        assert!(record.secrets[1].not_after.is_none());
        // Rotating with no grace drops the old secrets at once.
        let KeyReply::Secret { record, .. } = s
            .apply(
                KeyCommand::Rotate {
                    id: rec.id.clone(),
                    grace_secs: 0,
                },
                "cli",
            )
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(record.secrets.len(), 1);
        s.apply(KeyCommand::Delete(rec.id.clone()), "cli").unwrap();
        assert!(mem.lock().unwrap().records.is_empty());
        let actions: Vec<&str> = mem.lock().unwrap().audit.iter().map(|e| e.action).collect();
        assert_eq!(
            actions,
            ["create", "disable", "enable", "rotate", "rotate", "delete"]
        );
        assert_eq!(
            s.apply(KeyCommand::Disable(rec.id.clone()), "cli"),
            Err(KeyError::NotFound(rec.id))
        );
    }

    #[test]
    fn a_change_that_cannot_be_audited_is_not_stored() {
        let (mut s, mem) = service();
        let (rec, _) = create(&mut s, "ci");
        mem.lock().unwrap().fail_audit = true;
        let e = s
            .apply(KeyCommand::Disable(rec.id.clone()), "cli")
            .unwrap_err();
        assert!(matches!(e, KeyError::Store(_)), "{e:?}");
        assert!(mem.lock().unwrap().records[0].enabled, "rolled back");
        assert!(s.records()[0].enabled);
    }

    #[test]
    fn invalid_requests_name_every_problem() {
        let (mut s, _) = service();
        let new = NewKey {
            name: " bad".into(),
            models: vec![String::new()],
            expires_at: Some(1),
            ..NewKey::default()
        };
        let Err(KeyError::Invalid(p)) = s.apply(KeyCommand::Create(new), "cli") else {
            panic!("accepted")
        };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["expires_at", "name", "owner", "models[0]"]);
        let (rec, _) = create(&mut s, "ok");
        let e = s
            .apply(
                KeyCommand::Rotate {
                    id: rec.id,
                    grace_secs: MAX_GRACE_SECS + 1,
                },
                "cli",
            )
            .unwrap_err();
        assert!(matches!(e, KeyError::Invalid(_)), "{e:?}");
    }

    #[test]
    fn rotations_in_grace_are_bounded() {
        let (mut s, _) = service();
        let (rec, _) = create(&mut s, "ci");
        for _ in 0..MAX_SECRETS - 1 {
            let r = KeyCommand::Rotate {
                id: rec.id.clone(),
                grace_secs: 600,
            };
            s.apply(r, "cli").unwrap();
        }
        let r = KeyCommand::Rotate {
            id: rec.id.clone(),
            grace_secs: 600,
        };
        assert!(matches!(s.apply(r, "cli"), Err(KeyError::Invalid(_))));
        assert_eq!(s.records()[0].secrets.len(), MAX_SECRETS);
    }
}
