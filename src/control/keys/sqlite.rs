//! API keys in the model registry's SQLite database (`[registry]` configured,
//! `[auth.api_keys]` without `file`): the [`KeyStore`] the control thread uses then.
//!
//! # Tables
//!
//! `api_keys` (one row per key) and `api_key_secrets` (one row per secret: its SHA-256
//! digest, display prefix, creation and grace end; the digest column takes 64 lowercase hex
//! digits only and is unique, so a key string can never be stored there by mistake), added
//! by the registry's schema migration 2 (`registry::schema`). Every change is one
//! transaction through [`crate::registry::store::Store::change`]: the rows of the key it
//! names and an entry in the registry's append-only audit log (`subject` = `key:<id>`, `who`
//! = the admin token's name, or `cli`; `before`/`after` = the record without digests) commit
//! together or not at all, so no change is stored without its audit entry.
//!
//! # Other processes
//!
//! `api_key_changes.generation` is increased by every change. The store remembers the
//! generation of the keys it last read or wrote: a change is refused (nothing written) when
//! another process (`shardgate keys --registry`) changed the keys since, and
//! [`KeyStore::changed_elsewhere`] tells the control thread to read them again (it looks at
//! SQLite's `data_version` first, which costs no read of the tables).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::Value;

use super::store::{AuditEntry, KeyStore, StoreError};
use crate::auth::apikey::record::SecretRecord;
use crate::auth::KeyRecord;
use crate::config::ConfigError;
use crate::registry::store::{ChangeError, Changed, Store, BUSY_TIMEOUT};

/// The key store in the registry database (module docs).
pub struct RegistryStore {
    store: Store,
    /// `api_key_changes.generation` of the keys last read or written.
    seen: i64,
    /// `PRAGMA data_version` when `seen` was read.
    data_version: i64,
}

impl RegistryStore {
    /// Opens the registry database at `path` (created and migrated like the registry).
    pub fn open(path: &Path) -> Result<RegistryStore, StoreError> {
        Self::open_with(path, BUSY_TIMEOUT)
    }

    /// [`RegistryStore::open`] waiting at most `busy_timeout` for another process's lock.
    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<RegistryStore, StoreError> {
        let store =
            Store::open_with(path, busy_timeout).map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(RegistryStore {
            store,
            seen: -1,
            data_version: -1,
        })
    }

    fn path(&self) -> PathBuf {
        self.store.path().to_path_buf()
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io(format!(
            "registry {}: {what}: {e}",
            self.store.path().display()
        ))
    }

    fn generation(&self) -> Result<(i64, i64), StoreError> {
        self.store
            .read(|c| {
                let g = c.query_row(
                    "SELECT generation FROM api_key_changes WHERE id = 1",
                    [],
                    |r| r.get(0),
                )?;
                let v = c.query_row("PRAGMA data_version", [], |r| r.get(0))?;
                Ok((g, v))
            })
            .map_err(|e| StoreError::Io(e.to_string()))
    }
}

/// What the audit log keeps of a record: everything but the digests.
fn audit_view(r: &KeyRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Some(secrets) = v.get_mut("secrets").and_then(Value::as_array_mut) {
        for s in secrets {
            if let Some(o) = s.as_object_mut() {
                o.remove("sha256");
            }
        }
    }
    v
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Writes `r` over the stored rows of its id (its row stays where it was: keys list in the
/// order they were created, as in the keys file).
fn put(tx: &Transaction<'_>, r: &KeyRecord) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO api_keys (id, name, owner, tenant, label, models, scopes, budgets, claims, \
         expires_at, enabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, owner = excluded.owner, \
         tenant = excluded.tenant, label = excluded.label, models = excluded.models, \
         scopes = excluded.scopes, budgets = excluded.budgets, claims = excluded.claims, \
         expires_at = excluded.expires_at, enabled = excluded.enabled, \
         created_at = excluded.created_at",
        params![
            r.id,
            r.name,
            r.owner,
            r.tenant,
            r.label,
            to_json(&r.models),
            to_json(&r.scopes),
            to_json(&r.budgets),
            to_json(&r.claims),
            r.expires_at.map(sat_i64),
            r.enabled,
            sat_i64(r.created_at),
        ],
    )?;
    tx.execute("DELETE FROM api_key_secrets WHERE key = ?1", [&r.id])?;
    for (i, s) in r.secrets.iter().enumerate() {
        tx.execute(
            "INSERT INTO api_key_secrets (key, position, sha256, prefix, created_at, not_after) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.id,
                i as i64,
                s.sha256,
                s.prefix,
                sat_i64(s.created_at),
                s.not_after.map(sat_i64)
            ],
        )?;
    }
    Ok(())
}

fn sat_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A JSON column.
fn json<T: serde::de::DeserializeOwned>(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Every stored record, in the order they were stored.
fn read_all(c: &rusqlite::Connection) -> rusqlite::Result<Vec<KeyRecord>> {
    let mut keys = c.prepare(
        "SELECT id, name, owner, tenant, label, models, scopes, budgets, claims, expires_at, \
         enabled, created_at FROM api_keys ORDER BY rowid",
    )?;
    let mut secrets = c.prepare(
        "SELECT sha256, prefix, created_at, not_after FROM api_key_secrets WHERE key = ?1 \
         ORDER BY position",
    )?;
    let rows = keys.query_map([], |r| {
        Ok(KeyRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            owner: r.get(2)?,
            tenant: r.get(3)?,
            label: r.get(4)?,
            models: json(r, 5)?,
            scopes: json(r, 6)?,
            budgets: json(r, 7)?,
            claims: json(r, 8)?,
            expires_at: r.get::<_, Option<i64>>(9)?.map(unsigned),
            enabled: r.get(10)?,
            created_at: unsigned(r.get(11)?),
            secrets: Vec::new(),
        })
    })?;
    let mut out: Vec<KeyRecord> = rows.collect::<rusqlite::Result<_>>()?;
    for k in &mut out {
        k.secrets = secrets
            .query_map([&k.id], |r| {
                Ok(SecretRecord {
                    sha256: r.get(0)?,
                    prefix: r.get(1)?,
                    created_at: unsigned(r.get(2)?),
                    not_after: r.get::<_, Option<i64>>(3)?.map(unsigned),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(out)
}

impl KeyStore for RegistryStore {
    /// Reads and checks every key (a problem names the database and `keys["<id>"].field`).
    fn load(&mut self) -> Result<Vec<KeyRecord>, StoreError> {
        let (generation, data_version) = self.generation()?;
        let records = self
            .store
            .read(read_all)
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let mut problems = Vec::new();
        for r in &records {
            r.check(
                &|field| format!("keys[\"{}\"].{field}", r.id),
                &mut problems,
            );
        }
        if !problems.is_empty() {
            return Err(StoreError::Invalid(ConfigError {
                file: self.path(),
                problems,
            }));
        }
        self.seen = generation;
        self.data_version = data_version;
        Ok(records)
    }

    /// One transaction: the rows of the key `entry` names (written, or removed when it is not
    /// in `records`), the generation, and the audit entry.
    fn commit(
        &mut self,
        before: &[KeyRecord],
        records: &[KeyRecord],
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        let old = before.iter().find(|r| r.id == entry.id);
        let new = records.iter().find(|r| r.id == entry.id);
        let seen = self.seen;
        let subject = format!("key:{}", entry.id);
        let who = entry.by.as_deref().unwrap_or(entry.actor);
        let result = self.store.change(who, entry.action, |tx| {
            let generation: i64 = tx
                .query_row(
                    "SELECT generation FROM api_key_changes WHERE id = 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if generation != seen {
                return Err(ChangeError::Conflict(
                    "the keys were changed by another process since they were read; \
                     they are read again: try once more"
                        .into(),
                ));
            }
            match new {
                Some(r) => put(tx, r)?,
                None => {
                    tx.execute("DELETE FROM api_keys WHERE id = ?1", [&entry.id])?;
                }
            }
            tx.execute(
                "UPDATE api_key_changes SET generation = generation + 1 WHERE id = 1",
                [],
            )?;
            Ok(Changed {
                subject,
                before: old.map(audit_view),
                after: new.map(audit_view),
                value: generation + 1,
            })
        });
        match result {
            Ok((generation, _)) => {
                self.seen = generation;
                // Our own commit changes no `data_version` of this connection.
                Ok(())
            }
            Err(ChangeError::Conflict(m)) => {
                // Make the control thread read them again on its next look.
                self.data_version = -1;
                Err(self.io("not stored", m))
            }
            Err(e) => Err(self.io("cannot store the change", e)),
        }
    }

    /// An entry with no row change (nothing calls it for this store but a reload, which it
    /// never needs: other processes audit their own changes).
    fn audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        let subject = format!("key:{}", entry.id);
        self.store
            .change(entry.actor, entry.action, |_| {
                Ok(Changed {
                    subject,
                    before: None,
                    after: entry.detail.as_ref().map(|d| Value::String(d.clone())),
                    value: (),
                })
            })
            .map(|_| ())
            .map_err(|e| self.io("cannot audit", e))
    }

    fn watched(&self) -> Option<&Path> {
        None
    }

    fn changed_elsewhere(&mut self) -> Result<bool, StoreError> {
        let v: i64 = self
            .store
            .read(|c| c.query_row("PRAGMA data_version", [], |r| r.get(0)))
            .map_err(|e| StoreError::Io(e.to_string()))?;
        if v == self.data_version {
            return Ok(false);
        }
        let (generation, v) = self.generation()?;
        self.data_version = v;
        Ok(generation != self.seen)
    }

    fn describe(&self) -> String {
        format!("registry {}", self.store.path().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-keys-sqlite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn record(id: &str, now: u64) -> (KeyRecord, String) {
        let rng = ring::rand::SystemRandom::new();
        let secret = crate::auth::apikey::record::generate_secret(&rng, now).unwrap();
        let mut claims = std::collections::BTreeMap::new();
        claims.insert("team".to_owned(), "ml".to_owned());
        let r = KeyRecord {
            id: id.into(),
            name: "ci".into(),
            owner: "alice".into(),
            tenant: Some("acme".into()),
            label: None,
            models: vec!["gpt-4o*".into(), "llama".into()],
            scopes: vec!["chat".into()],
            budgets: vec!["monthly".into()],
            claims,
            expires_at: Some(now + 10),
            enabled: true,
            created_at: now,
            secrets: vec![secret.record],
        };
        (r, secret.key)
    }

    fn entry(action: &'static str, id: &str) -> AuditEntry {
        AuditEntry {
            at: 1,
            action,
            id: id.into(),
            name: None,
            prefix: None,
            actor: "cli",
            by: None,
            detail: None,
        }
    }

    fn audit_rows(path: &Path) -> Vec<(String, String, String, Option<String>)> {
        let c = rusqlite::Connection::open(path).unwrap();
        let mut s = c
            .prepare("SELECT who, action, subject, after FROM audit ORDER BY id")
            .unwrap();
        let rows = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn records_round_trip_with_their_audit_and_no_secret_is_stored() {
        let d = dir("roundtrip");
        let db = d.join("models.db");
        let mut s = RegistryStore::open(&db).unwrap();
        assert_eq!(s.load().unwrap(), vec![]);
        let (a, key_a) = record("key_a", 5);
        let (mut b, key_b) = record("key_b", 6);
        b.tenant = None;
        b.models.clear();
        b.claims.clear();
        b.expires_at = None;
        s.commit(&[], std::slice::from_ref(&a), &entry("create", "key_a"))
            .unwrap();
        let both = vec![a.clone(), b.clone()];
        s.commit(std::slice::from_ref(&a), &both, &entry("create", "key_b"))
            .unwrap();
        let mut rotated = b.clone();
        rotated.secrets[0].not_after = Some(99);
        rotated.secrets.push(record("x", 7).0.secrets[0].clone());
        rotated.enabled = false;
        let after = vec![a.clone(), rotated.clone()];
        s.commit(&both, &after, &entry("rotate", "key_b")).unwrap();
        // A fresh store (a restart) reads exactly what was written.
        let mut again = RegistryStore::open(&db).unwrap();
        assert_eq!(again.load().unwrap(), after);
        s.commit(
            &after,
            std::slice::from_ref(&rotated),
            &entry("delete", "key_a"),
        )
        .unwrap();
        assert_eq!(
            RegistryStore::open(&db).unwrap().load().unwrap(),
            vec![rotated]
        );
        let audit = audit_rows(&db);
        let actions: Vec<(&str, &str)> = audit
            .iter()
            .map(|(_, a, s, _)| (a.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("create", "key:key_a"),
                ("create", "key:key_b"),
                ("rotate", "key:key_b"),
                ("delete", "key:key_a"),
            ]
        );
        assert_eq!(audit[3].3, None, "a deleted key has no `after`");
        // Neither a key nor a digest is in the audit log; no key anywhere in the file.
        let bytes = std::fs::read(&db).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for key in [&key_a, &key_b] {
            assert!(!text.contains(key.as_str()), "a key was stored");
        }
        for (_, _, _, after) in &audit {
            assert!(
                !after.as_deref().unwrap_or("").contains("sha256"),
                "{after:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A registry written before keys and spend existed (schema version 1, with a model) is
    /// migrated on open: its rows stay, and keys and spend work on it.
    #[test]
    fn a_registry_from_before_keys_is_migrated_and_keeps_its_rows() {
        use crate::registry::schema::{self, Migration, MIGRATIONS};
        static V1_ONLY: &[Migration] = &[MIGRATIONS[0]];
        let d = dir("migrate");
        let db = d.join("models.db");
        {
            let mut c = rusqlite::Connection::open(&db).unwrap();
            schema::migrate_with(&mut c, V1_ONLY).unwrap();
            c.execute(
                "INSERT INTO models (name, created_at, created_by) VALUES ('llama', 1, 'alice')",
                [],
            )
            .unwrap();
        }
        let mut keys = RegistryStore::open(&db).unwrap();
        assert_eq!(keys.load().unwrap(), vec![]);
        let (a, _) = record("key_a", 5);
        keys.commit(&[], std::slice::from_ref(&a), &entry("create", "key_a"))
            .unwrap();
        let mut spend = crate::spend::sqlite::SqliteStore::open(&db).unwrap();
        use crate::spend::SpendStore;
        assert!(spend.load().unwrap().is_empty());
        let c = rusqlite::Connection::open(&db).unwrap();
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema::current());
        let who: String = c
            .query_row(
                "SELECT created_by FROM models WHERE name = 'llama'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(who, "alice");
        assert_eq!(RegistryStore::open(&db).unwrap().load().unwrap(), vec![a]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_change_made_elsewhere_is_seen_and_a_stale_write_is_refused() {
        let d = dir("elsewhere");
        let db = d.join("models.db");
        let mut gw = RegistryStore::open(&db).unwrap();
        assert_eq!(gw.load().unwrap(), vec![]);
        assert!(!gw.changed_elsewhere().unwrap());
        let mut cli = RegistryStore::open(&db).unwrap();
        cli.load().unwrap();
        let (a, _) = record("key_a", 5);
        cli.commit(&[], std::slice::from_ref(&a), &entry("create", "key_a"))
            .unwrap();
        assert!(!cli.changed_elsewhere().unwrap(), "its own change");
        // The gateway has not read it yet: its write would lose the CLI's key.
        let (b, _) = record("key_b", 6);
        let e = gw
            .commit(&[], std::slice::from_ref(&b), &entry("create", "key_b"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another process") && e.contains("models.db"),
            "{e}"
        );
        assert!(gw.changed_elsewhere().unwrap());
        assert_eq!(gw.load().unwrap(), vec![a.clone()]);
        assert!(!gw.changed_elsewhere().unwrap());
        let both = vec![a.clone(), b];
        gw.commit(std::slice::from_ref(&a), &both, &entry("create", "key_b"))
            .unwrap();
        assert_eq!(RegistryStore::open(&db).unwrap().load().unwrap(), both);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_rows_corrupt_and_locked_databases_are_errors_naming_the_file() {
        let d = dir("bad");
        let db = d.join("models.db");
        let mut s = RegistryStore::open(&db).unwrap();
        s.load().unwrap();
        let (a, _) = record("key_a", 5);
        s.commit(&[], std::slice::from_ref(&a), &entry("create", "key_a"))
            .unwrap();
        // A row edited by hand into an invalid record: refused whole, naming the key.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute("UPDATE api_keys SET owner = ' x' WHERE id = 'key_a'", [])
            .unwrap();
        let Err(StoreError::Invalid(e)) = s.load() else {
            panic!("an invalid row was accepted")
        };
        assert_eq!(e.file, db);
        assert_eq!(e.problems[0].key, "keys[\"key_a\"].owner");
        // Locked by another writer longer than the busy timeout.
        c.execute("UPDATE api_keys SET owner = 'x' WHERE id = 'key_a'", [])
            .unwrap();
        let mut quick = RegistryStore::open_with(&db, Duration::from_millis(50)).unwrap();
        quick.load().unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        let e = quick
            .commit(std::slice::from_ref(&a), &[], &entry("delete", "key_a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("models.db") && e.contains("locked"), "{e}");
        c.execute_batch("ROLLBACK").unwrap();
        drop((c, s, quick));
        // Not a database at all.
        let junk = d.join("junk.db");
        std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
        let e = RegistryStore::open(&junk).err().unwrap().to_string();
        assert!(
            e.contains("junk.db") && e.contains("not a usable SQLite database"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
