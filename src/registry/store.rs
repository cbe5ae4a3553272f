//! The registry database: opening it, the one way to change it ([`Store::change`]), and
//! reading it back.
//!
//! # Opening
//!
//! [`Store::open`] creates a missing file; an existing one must be a SQLite database that
//! passes `PRAGMA quick_check` and whose schema is not newer than this build's. Then it sets
//! WAL mode, `synchronous = FULL` (a commit is on disk when acknowledged), foreign keys on
//! and a `busy_timeout` (another process holding the write lock is waited for, not failed),
//! and applies the missing migrations ([`super::schema`]).
//!
//! # Changing
//!
//! [`Store::change`] runs a closure in an immediate (write-locking) transaction and appends
//! the audit entry it describes in the same transaction: the change and its record commit
//! together or not at all. A closure that fails rolls everything back. This is the API any
//! later table set (API keys) uses as well.
// Control plane: the store lives on the control thread only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use serde_json::Value;

use super::rollout::Plan;
use super::schema;
use super::{
    Model, RegistryState, Rollout, RolloutState, RouteKey, Split, SplitTarget, Status, Version,
};
use crate::config::ConfigProblem;

/// How long a change waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The database cannot be opened or read.
#[derive(Debug, Clone)]
pub struct StoreError {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "registry {}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for StoreError {}

/// Why a change was not made (nothing was written).
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeError {
    /// No such model, version, split or rollout: 404.
    NotFound(String),
    /// The change contradicts the registry's state (a version registered again with other
    /// settings, a rollout already running): 409.
    Conflict(String),
    /// The request is malformed: 400 naming the field.
    Bad { field: String, message: String },
    /// The result would not be a valid config: 422 with every problem.
    Invalid(Vec<ConfigProblem>),
    /// The database failed: 500.
    Store(String),
}

impl ChangeError {
    pub fn bad(field: &str, message: impl Into<String>) -> ChangeError {
        ChangeError::Bad {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl From<rusqlite::Error> for ChangeError {
    fn from(e: rusqlite::Error) -> Self {
        ChangeError::Store(e.to_string())
    }
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::NotFound(m) | ChangeError::Conflict(m) | ChangeError::Store(m) => {
                write!(f, "{m}")
            }
            ChangeError::Bad { field, message } => write!(f, "{field}: {message}"),
            ChangeError::Invalid(p) => {
                let lines: Vec<String> = p.iter().map(ToString::to_string).collect();
                write!(f, "{}", lines.join("; "))
            }
        }
    }
}

/// What a change did, for its audit entry, and what it hands back.
pub struct Changed<T> {
    /// What was changed (`m@v`, a split's name, `rollout 3`).
    pub subject: String,
    /// The subject before (`None`: it did not exist) and after (`None`: it is gone).
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub value: T,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub who: String,
    pub action: String,
    pub subject: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Which audit entries to read: newest first, at most `limit`, older than `before_id`,
/// whose subject starts with `subject`.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub limit: usize,
    pub before_id: Option<i64>,
    pub subject: Option<String>,
}

/// The open registry database. Owned by the control thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database at `path`; see the module docs for what is checked.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, BUSY_TIMEOUT)
    }

    /// [`Store::open`] waiting at most `busy_timeout` for another process's lock. The key
    /// and spend stores open their own connection this way (each on its own thread).
    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        let fail = |message: String| StoreError {
            path: path.to_path_buf(),
            message,
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                return Err(fail("exists but is not a regular file".into()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("cannot be read: {e}"))),
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| fail(format!("cannot be opened: {e}")))?;
        let unusable = |e: rusqlite::Error| {
            fail(format!(
                "is not a usable SQLite database ({e}); refusing to start with an empty \
                 registry in its place: restore it from a backup, or move it away to start anew"
            ))
        };
        conn.busy_timeout(busy_timeout).map_err(unusable)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(unusable)?;
        if check != "ok" {
            return Err(fail(format!(
                "failed its integrity check ({check}); refusing to start with an empty \
                 registry in its place: restore it from a backup"
            )));
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(unusable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail(format!(
                "cannot use WAL mode (journal mode is {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(unusable)?;
        schema::migrate(&mut conn).map_err(|e| fail(e.to_string()))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction and appends the audit entry it returns (`who` did
    /// `action` to its subject); commits both, or neither when `f` fails. Returns `f`'s
    /// value and the audit entry's id.
    pub fn change<T>(
        &mut self,
        who: &str,
        action: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<Changed<T>, ChangeError>,
    ) -> Result<(T, i64), ChangeError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let changed = f(&tx)?;
        let id = append_audit(
            &tx,
            &NewAudit {
                at_ms: super::now_ms(),
                who,
                action,
                subject: &changed.subject,
                before: changed.before.as_ref(),
                after: changed.after.as_ref(),
            },
        )?;
        tx.commit()?;
        Ok((changed.value, id))
    }

    /// Runs `f` in one write transaction that the audit log does not record (spend totals);
    /// commits, or rolls back when `f` fails. The error names the file.
    pub fn write<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        let fail = |e: rusqlite::Error| StoreError {
            path: path.clone(),
            message: format!("cannot be written: {e}"),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        let v = f(&tx).map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(v)
    }

    /// Runs a read on the connection.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        f(&self.conn).map_err(|e| StoreError {
            path: self.path.clone(),
            message: format!("cannot be read: {e}"),
        })
    }

    /// Everything the registry holds.
    pub fn state(&self) -> Result<RegistryState, StoreError> {
        self.read(load_state)
    }

    /// Audit entries, newest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at_ms, who, action, subject, before, after FROM audit \
                 WHERE id < ?1 AND substr(subject, 1, length(?2)) = ?2 \
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    q.before_id.unwrap_or(i64::MAX),
                    q.subject.as_deref().unwrap_or(""),
                    q.limit as i64
                ],
                |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        who: r.get(2)?,
                        action: r.get(3)?,
                        subject: r.get(4)?,
                        before: json_opt(r, 5)?,
                        after: json_opt(r, 6)?,
                    })
                },
            )?;
            rows.collect()
        })
    }
}

/// An audit entry to append.
pub struct NewAudit<'a> {
    pub at_ms: i64,
    pub who: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
}

/// Appends an audit entry inside `tx`; [`Store::change`] calls it for every change.
pub fn append_audit(tx: &Transaction<'_>, e: &NewAudit<'_>) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO audit (at_ms, who, action, subject, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            e.at_ms,
            e.who,
            e.action,
            e.subject,
            e.before.map(Value::to_string),
            e.after.map(Value::to_string),
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// A JSON column.
fn json<T: serde::de::DeserializeOwned>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn json_opt(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<Value>> {
    match r.get::<_, Option<String>>(i)? {
        None => Ok(None),
        Some(_) => json(r, i).map(Some),
    }
}

/// A text column holding one of a fixed set of words.
fn word<T>(
    r: &rusqlite::Row<'_>,
    i: usize,
    parse: impl Fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value `{text}`").into(),
        )
    })
}

/// Reads every table of the registry (inside a transaction, a consistent view).
pub fn load_state(c: &Connection) -> rusqlite::Result<RegistryState> {
    let models = c
        .prepare("SELECT name, created_at, created_by FROM models ORDER BY name")?
        .query_map([], |r| {
            Ok(Model {
                name: r.get(0)?,
                created_at: r.get(1)?,
                created_by: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut versions = c
        .prepare(
            "SELECT model, version, served_name, endpoints, labels, settings, status, \
             content_hash, created_at, created_by, mark FROM versions",
        )?
        .query_map([], |r| {
            Ok(Version {
                model: r.get(0)?,
                version: r.get(1)?,
                served_name: r.get(2)?,
                endpoints: json(r, 3)?,
                labels: json(r, 4)?,
                settings: json(r, 5)?,
                status: word(r, 6, Status::parse)?,
                content_hash: r.get(7)?,
                created_at: r.get(8)?,
                created_by: r.get(9)?,
                mark: r.get(10)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Model by name, then version by semver order.
    versions.sort_by(|a, b| {
        let v = |x: &Version| semver::Version::parse(&x.version).ok();
        (&a.model, v(a), &a.version).cmp(&(&b.model, v(b), &b.version))
    });
    let mut splits = c
        .prepare(
            "SELECT id, path, models, updated_at, updated_by FROM splits ORDER BY path, models",
        )?
        .query_map([], |r| {
            let models: Vec<String> = json(r, 2)?;
            Ok((
                r.get::<_, i64>(0)?,
                Split {
                    route: RouteKey::new(&r.get::<_, String>(1)?, &models),
                    targets: Vec::new(),
                    updated_at: r.get(3)?,
                    updated_by: r.get(4)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut targets = c.prepare(
        "SELECT model, version, weight FROM split_targets WHERE split = ?1 ORDER BY position",
    )?;
    for (id, split) in &mut splits {
        split.targets = targets
            .query_map([*id], |r| {
                Ok(SplitTarget {
                    model: r.get(0)?,
                    version: r.get(1)?,
                    weight: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }
    let rollouts = c
        .prepare(
            "SELECT id, model, version, stable, path, models, plan, original, step, state, \
             reason, guard, created_at, created_by, updated_at FROM rollouts ORDER BY id",
        )?
        .query_map([], |r| {
            let models: Vec<String> = json(r, 5)?;
            let plan: Plan = json(r, 6)?;
            Ok(Rollout {
                id: r.get(0)?,
                model: r.get(1)?,
                version: r.get(2)?,
                stable: r.get(3)?,
                route: RouteKey::new(&r.get::<_, String>(4)?, &models),
                plan,
                original: json(r, 7)?,
                step: r.get::<_, i64>(8)? as usize,
                state: word(r, 9, RolloutState::parse)?,
                reason: r.get(10)?,
                guard: r.get(11)?,
                created_at: r.get(12)?,
                created_by: r.get(13)?,
                updated_at: r.get(14)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(RegistryState {
        models,
        versions,
        splits: splits.into_iter().map(|(_, s)| s).collect(),
        rollouts,
    })
}

/// Writes `targets` as the split of `route` (replacing any), `by` at `at_ms`.
pub fn put_split(
    tx: &Transaction<'_>,
    route: &RouteKey,
    targets: &[SplitTarget],
    by: &str,
    at_ms: i64,
) -> rusqlite::Result<()> {
    let models = serde_json::to_string(&route.models).unwrap_or_else(|_| "[]".into());
    tx.execute(
        "INSERT INTO splits (path, models, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (path, models) DO UPDATE SET updated_at = ?3, updated_by = ?4",
        params![route.path, models, at_ms, by],
    )?;
    let id: i64 = tx.query_row(
        "SELECT id FROM splits WHERE path = ?1 AND models = ?2",
        params![route.path, models],
        |r| r.get(0),
    )?;
    tx.execute("DELETE FROM split_targets WHERE split = ?1", [id])?;
    for (i, t) in targets.iter().enumerate() {
        tx.execute(
            "INSERT INTO split_targets (split, position, model, version, weight) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, i as i64, t.model, t.version, t.weight],
        )?;
    }
    Ok(())
}

/// Removes the split of `route`; false if there was none.
pub fn delete_split(tx: &Transaction<'_>, route: &RouteKey) -> rusqlite::Result<bool> {
    let models = serde_json::to_string(&route.models).unwrap_or_else(|_| "[]".into());
    let id: Option<i64> = tx
        .query_row(
            "SELECT id FROM splits WHERE path = ?1 AND models = ?2",
            params![route.path, models],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = id else { return Ok(false) };
    tx.execute("DELETE FROM split_targets WHERE split = ?1", [id])?;
    tx.execute("DELETE FROM splits WHERE id = ?1", [id])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("models.db")
    }

    fn add_model(s: &mut Store, name: &str) -> Result<((), i64), ChangeError> {
        s.change("alice", "model.create", |tx| {
            tx.execute(
                "INSERT INTO models (name, created_at, created_by) VALUES (?1, 1, 'alice')",
                [name],
            )?;
            Ok(Changed {
                subject: name.into(),
                before: None,
                after: Some(serde_json::json!({"name": name})),
                value: (),
            })
        })
    }

    #[test]
    fn a_change_and_its_audit_entry_commit_together_or_not_at_all() {
        let path = temp_db("change");
        let mut s = Store::open(&path).unwrap();
        let (_, id) = add_model(&mut s, "llama").unwrap();
        // A failing change (duplicate key) writes neither the row nor an audit entry.
        assert!(matches!(
            add_model(&mut s, "llama"),
            Err(ChangeError::Store(_))
        ));
        // A closure refusing after writing rolls its write back.
        let refused: Result<((), i64), ChangeError> = s.change("bob", "model.create", |tx| {
            tx.execute(
                "INSERT INTO models (name, created_at, created_by) VALUES ('qwen', 1, 'bob')",
                [],
            )?;
            Err(ChangeError::Conflict("no".into()))
        });
        assert!(refused.is_err());
        let st = s.state().unwrap();
        assert_eq!(st.models.len(), 1);
        let audit = s
            .audit(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (audit[0].id, audit[0].who.as_str(), audit[0].action.as_str()),
            (id, "alice", "model.create")
        );
        assert_eq!(audit[0].before, None);
        assert_eq!(audit[0].after.as_ref().unwrap()["name"], "llama");
        // Reopened: the same state, the schema not migrated again.
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.state().unwrap(), st);
        let mode: String = s
            .read(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = s
            .read(|c| c.query_row("PRAGMA foreign_keys", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(fk, 1);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn audit_queries_page_and_filter() {
        let path = temp_db("audit");
        let mut s = Store::open(&path).unwrap();
        for name in ["a1", "a2", "b1", "a3"] {
            add_model(&mut s, name).unwrap();
        }
        let q = |limit, before_id, subject: Option<&str>| {
            s.audit(&AuditQuery {
                limit,
                before_id,
                subject: subject.map(Into::into),
            })
            .unwrap()
            .into_iter()
            .map(|e| e.subject)
            .collect::<Vec<_>>()
        };
        assert_eq!(q(10, None, None), ["a3", "b1", "a2", "a1"]);
        assert_eq!(q(2, None, None), ["a3", "b1"]);
        assert_eq!(q(10, Some(3), None), ["a2", "a1"]);
        assert_eq!(q(10, None, Some("a")), ["a3", "a2", "a1"]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn unusable_files_are_refused_with_the_path_named() {
        let path = temp_db("unusable");
        let dir = path.parent().unwrap().to_path_buf();
        // Not a database.
        std::fs::write(&path, b"this is not a database, just some text that is long enough to fill a header page........................").unwrap();
        let e = Store::open(&path).err().expect("garbage refused");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.message.contains("not a usable SQLite database"), "{e}");
        // A directory.
        let sub = dir.join("adir.db");
        std::fs::create_dir_all(&sub).unwrap();
        let e = Store::open(&sub).err().expect("directory refused");
        assert!(e.message.contains("not a regular file"), "{e}");
        // A missing parent directory.
        let e = Store::open(&dir.join("no/such/dir/models.db"))
            .err()
            .expect("missing dir refused");
        assert!(e.message.contains("cannot be opened"), "{e}");
        // Written by a newer schema.
        let newer = dir.join("newer.db");
        drop(Store::open(&newer).unwrap());
        let c = Connection::open(&newer).unwrap();
        c.pragma_update(None, "user_version", schema::current() + 1)
            .unwrap();
        drop(c);
        let e = Store::open(&newer).err().expect("newer schema refused");
        assert!(e.message.contains("newer shardgate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_page_overwritten_with_garbage_fails_the_check() {
        let path = temp_db("corrupt");
        let mut s = Store::open(&path).unwrap();
        for i in 0..200 {
            add_model(&mut s, &format!("model-{i:04}-{}", "x".repeat(64))).unwrap();
        }
        s.read(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
            .unwrap();
        drop(s);
        // Scribble over the middle of the file (past the header page).
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8192, "{}", bytes.len());
        for b in &mut bytes[4096..8192] {
            *b = 0xA5;
        }
        std::fs::write(&path, &bytes).unwrap();
        let e = Store::open(&path).err().expect("corruption detected");
        assert!(
            e.message.contains("integrity") || e.message.contains("not a usable"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
