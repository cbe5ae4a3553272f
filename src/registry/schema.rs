//! The registry's schema, compiled into the binary, and its migrations.
//!
//! The database's `user_version` is the number of migrations applied. Opening a database
//! applies the missing ones in order, each in its own transaction together with the new
//! `user_version`, so a process killed during a migration leaves the database at the version
//! before it. A database whose `user_version` is higher than this build knows was written by
//! a newer shardgate and is refused (its tables may mean something this build does not know).
//!
//! # Adding tables
//!
//! A later feature appends a [`Migration`] to [`MIGRATIONS`] with the next version and its
//! `CREATE TABLE`s; its changes go through [`super::store::Store::change`], so they land in
//! the same audit log. A migration that has shipped is never edited. Version 2 added the API
//! keys (`control::keys::sqlite`), version 3 spend and budget use (`spend::sqlite`).

use rusqlite::{Connection, TransactionBehavior};

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The `user_version` once applied: 1 for the first, then one more each.
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "models, versions, route splits, rollouts and the audit log",
        sql: V1,
    },
    Migration {
        version: 2,
        name: "API keys (digests only)",
        sql: V2,
    },
    Migration {
        version: 3,
        name: "spend totals and budget use",
        sql: V3,
    },
];

/// The schema version this build writes: the last migration's.
pub fn current() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

const V1: &str = r#"
CREATE TABLE models (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
) STRICT;

CREATE TABLE versions (
    model        TEXT NOT NULL REFERENCES models(name),
    version      TEXT NOT NULL,
    served_name  TEXT,
    endpoints    TEXT NOT NULL,  -- JSON array of host:port
    labels       TEXT NOT NULL,  -- JSON array
    settings     TEXT NOT NULL,  -- JSON object: the deployment's provider settings
    status       TEXT NOT NULL CHECK (status IN ('active', 'canary', 'draining', 'retired')),
    content_hash TEXT NOT NULL,  -- SHA-256 of the canonical JSON of the four above
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    mark         TEXT,           -- why a rollout took it out of traffic
    PRIMARY KEY (model, version)
) STRICT;

CREATE TABLE splits (
    id          INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,
    models      TEXT NOT NULL,   -- JSON array, sorted: the route's `models`
    updated_at  INTEGER NOT NULL,
    updated_by  TEXT NOT NULL,
    UNIQUE (path, models)
) STRICT;

CREATE TABLE split_targets (
    split     INTEGER NOT NULL REFERENCES splits(id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    model     TEXT NOT NULL,
    version   TEXT NOT NULL,
    weight    INTEGER NOT NULL CHECK (weight >= 0 AND weight <= 4294967295),
    -- A target may name a config-file deployment as well as a registry version: the config
    -- validation, not a foreign key, checks that it exists.
    PRIMARY KEY (split, position)
) STRICT;

CREATE TABLE rollouts (
    id          INTEGER PRIMARY KEY,
    model       TEXT NOT NULL,
    version     TEXT NOT NULL,
    stable      TEXT NOT NULL,   -- a registry version or a config-file deployment
    path        TEXT NOT NULL,
    models      TEXT NOT NULL,
    plan        TEXT NOT NULL,   -- JSON: steps, hold_ms, guards
    original    TEXT NOT NULL,   -- JSON: the split's targets before the rollout
    step        INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'rolled_back', 'aborted')),
    reason      TEXT,
    guard       TEXT,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
) STRICT;

-- At most one live rollout per route.
CREATE UNIQUE INDEX rollouts_live ON rollouts (path, models) WHERE state IN ('running', 'paused');

CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    who      TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    before   TEXT,               -- JSON, null when the subject did not exist
    after    TEXT                -- JSON, null when the subject is gone
) STRICT;

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#;

/// API keys (`control::keys::sqlite`): one row per key, one per secret digest. A secret itself
/// is never stored. `api_key_changes` counts committed key changes, so a gateway sees a change
/// another process (`shardgate keys --registry`) made, and refuses to overwrite one it has not
/// read yet.
const V2: &str = r#"
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    owner       TEXT NOT NULL,
    tenant      TEXT,
    label       TEXT,
    models      TEXT NOT NULL,   -- JSON array of model patterns (empty: every model)
    scopes      TEXT NOT NULL,   -- JSON array
    budgets     TEXT NOT NULL,   -- JSON array of budget names
    claims      TEXT NOT NULL,   -- JSON object of string claims
    expires_at  INTEGER,         -- unix seconds
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE api_key_secrets (
    key         TEXT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    -- Lowercase hex SHA-256 of the whole key; one secret belongs to one key.
    sha256      TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    prefix      TEXT NOT NULL,   -- the key's first characters, for display
    created_at  INTEGER NOT NULL,
    not_after   INTEGER,         -- the end of a rotation's grace period
    PRIMARY KEY (key, position)
) STRICT;

CREATE TABLE api_key_changes (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL
) STRICT;
INSERT INTO api_key_changes (id, generation) VALUES (1, 0);
"#;

/// Spend (`spend::sqlite`): totals per (subject, tenant, model), cost as whole micro-units plus
/// the pico-units below one micro-unit (so each fits an INTEGER however long it runs); each
/// budget key's use in its latest calendar period.
const V3: &str = r#"
CREATE TABLE spend (
    subject            TEXT NOT NULL,
    tenant             TEXT NOT NULL,
    model              TEXT NOT NULL,
    requests           INTEGER NOT NULL CHECK (requests >= 0),
    prompt_tokens      INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens  INTEGER NOT NULL CHECK (completion_tokens >= 0),
    cached_tokens      INTEGER NOT NULL CHECK (cached_tokens >= 0),
    micro              INTEGER NOT NULL CHECK (micro >= 0),
    pico               INTEGER NOT NULL CHECK (pico >= 0 AND pico < 1000000),
    PRIMARY KEY (subject, tenant, model)
) STRICT;

CREATE TABLE budget_use (
    key             TEXT PRIMARY KEY,   -- the budget key, 16 hex digits
    period_unix_ms  INTEGER NOT NULL,   -- start of the period (0: a total budget)
    used            INTEGER NOT NULL CHECK (used >= 0)
) STRICT;
"#;

/// Why the schema could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateError {
    /// Written by a newer shardgate.
    TooNew {
        found: u32,
        known: u32,
    },
    Sql(String),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateError::TooNew { found, known } => write!(
                f,
                "schema version {found} was written by a newer shardgate (this one knows up to {known}); \
                 refusing to open it"
            ),
            MigrateError::Sql(e) => write!(f, "migrating the schema failed: {e}"),
        }
    }
}

/// Brings `conn`'s schema up to [`current`], one transaction per migration. Returns the
/// migrations applied.
pub fn migrate(conn: &mut Connection) -> Result<Vec<&'static Migration>, MigrateError> {
    migrate_with(conn, MIGRATIONS)
}

/// [`migrate`] over a given list (tests add migrations of their own).
pub fn migrate_with(
    conn: &mut Connection,
    migrations: &'static [Migration],
) -> Result<Vec<&'static Migration>, MigrateError> {
    let sql = |e: rusqlite::Error| MigrateError::Sql(e.to_string());
    let known = migrations.last().map_or(0, |m| m.version);
    let mut applied = Vec::new();
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        // Read inside the write transaction: a second process migrating at the same time
        // waits for this one and then sees its version.
        let found: u32 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if found > known {
            return Err(MigrateError::TooNew { found, known });
        }
        let Some(m) = migrations.iter().find(|m| m.version == found + 1) else {
            tx.commit().map_err(sql)?;
            return Ok(applied);
        };
        tx.execute_batch(m.sql).map_err(sql)?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        applied.push(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
    }

    #[test]
    fn a_fresh_database_gets_every_migration_once() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut c).unwrap().len(), MIGRATIONS.len());
        assert!(migrate(&mut c).unwrap().is_empty());
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, current());
    }

    #[test]
    fn a_later_migration_adds_tables_and_a_newer_database_is_refused() {
        static LATER: &[Migration] = &[
            MIGRATIONS[0],
            MIGRATIONS[1],
            MIGRATIONS[2],
            Migration {
                version: 4,
                name: "later things",
                sql: "CREATE TABLE later_things (id TEXT PRIMARY KEY, x TEXT NOT NULL) STRICT;",
            },
        ];
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        let applied = migrate_with(&mut c, LATER).unwrap();
        assert_eq!(applied.iter().map(|m| m.version).collect::<Vec<_>>(), [4]);
        c.execute("INSERT INTO later_things VALUES ('k', 'h')", [])
            .unwrap();
        // This build must not open what the later one wrote.
        assert_eq!(
            migrate(&mut c).unwrap_err(),
            MigrateError::TooNew {
                found: 4,
                known: current()
            }
        );
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        static BROKEN: &[Migration] = &[
            MIGRATIONS[0],
            Migration {
                version: 2,
                name: "broken",
                sql: "CREATE TABLE t2 (a INTEGER) STRICT; CREATE TABLE versions (x);",
            },
        ];
        let mut c = Connection::open_in_memory().unwrap();
        assert!(matches!(
            migrate_with(&mut c, BROKEN),
            Err(MigrateError::Sql(_))
        ));
        let v: u32 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        let t2: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 't2'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(t2, 0, "the half-applied migration was rolled back");
    }

    #[test]
    fn a_version_1_database_keeps_its_rows_and_gains_keys_and_spend() {
        static V1_ONLY: &[Migration] = &[MIGRATIONS[0]];
        let mut c = Connection::open_in_memory().unwrap();
        migrate_with(&mut c, V1_ONLY).unwrap();
        c.execute(
            "INSERT INTO models (name, created_at, created_by) VALUES ('llama', 1, 'alice')",
            [],
        )
        .unwrap();
        let applied = migrate(&mut c).unwrap();
        assert_eq!(
            applied.iter().map(|m| m.version).collect::<Vec<_>>(),
            [2, 3]
        );
        let who: String = c
            .query_row(
                "SELECT created_by FROM models WHERE name = 'llama'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(who, "alice");
        for table in [
            "api_keys",
            "api_key_secrets",
            "api_key_changes",
            "spend",
            "budget_use",
        ] {
            let n: i64 = c
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table}");
        }
        // A digest column takes 64 lowercase hex digits and nothing else (never a key).
        c.execute(
            "INSERT INTO api_keys VALUES ('key_1', 'n', 'o', NULL, NULL, '[]', '[]', '[]', '{}', NULL, 1, 1)",
            [],
        )
        .unwrap();
        let hex = "0123456789abcdef".repeat(4);
        for (digest, ok) in [
            (hex.clone(), true),
            (hex.to_uppercase(), false),
            (format!("sg-{}", &hex[3..]), false),
            (hex[..63].to_owned(), false),
            (format!("{hex}0"), false),
        ] {
            let r = c.execute(
                "INSERT INTO api_key_secrets VALUES ('key_1', ?2, ?1, 'sg-x', 1, NULL)",
                rusqlite::params![digest, digest.len() as i64 + i64::from(ok)],
            );
            assert_eq!(r.is_ok(), ok, "{digest}: {r:?}");
        }
    }

    #[test]
    fn the_audit_log_is_append_only() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        c.execute(
            "INSERT INTO audit (at_ms, who, action, subject) VALUES (1, 'a', 'x', 's')",
            [],
        )
        .unwrap();
        for sql in ["UPDATE audit SET who = 'b'", "DELETE FROM audit"] {
            let e = c.execute(sql, []).unwrap_err().to_string();
            assert!(e.contains("append-only"), "{sql}: {e}");
        }
    }
}
