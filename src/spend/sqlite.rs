//! Spend in the model registry's SQLite database (`[registry]` configured, no Redis quota
//! backend): the [`SpendStore`] the spend thread uses then, on its own connection.
//!
//! The tables are the registry's schema migration 3 (`registry::schema`): `spend`, one row per
//! (subject, tenant, model) with the counters and the cost as whole micro-units plus the
//! pico-units below one micro-unit (each fits an SQLite INTEGER however long it runs), and
//! `budget_use`, each budget key's use in its latest calendar period — what the file store
//! keeps, so a restart resets neither spend nor a budget's window.
//!
//! A persist adds the pending deltas (not the whole ledger) in one transaction: a crash
//! leaves every delta of a flush stored or none, a flush writes only the series that changed,
//! and several processes on one database add up rather than overwrite one another. A failed
//! persist (the database locked past the busy timeout, a full disk) writes nothing; the spend
//! thread keeps the deltas for its next try.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;

use super::price::PICO_PER_MICRO;
use super::{BudgetUse, Ledger, Names, SpendStore, Totals};
use crate::quota::QuotaKey;
use crate::registry::store::{Store, BUSY_TIMEOUT};

/// The spend tables of the registry database.
pub struct SqliteStore {
    store: Store,
}

impl SqliteStore {
    /// Opens the registry database at `path` (created and migrated like the registry; an
    /// unusable one is an error naming it).
    pub fn open(path: &Path) -> Result<SqliteStore, String> {
        Self::open_with(path, BUSY_TIMEOUT)
    }

    /// [`SqliteStore::open`] waiting at most `busy_timeout` for another process's lock.
    pub fn open_with(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, String> {
        let store = Store::open_with(path, busy_timeout).map_err(|e| e.to_string())?;
        Ok(SqliteStore { store })
    }
}

fn sat_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SpendStore for SqliteStore {
    fn load(&mut self) -> Result<Ledger, String> {
        self.store
            .read(|c| {
                let mut l = Ledger::default();
                let mut s = c.prepare(
                    "SELECT subject, tenant, model, requests, prompt_tokens, completion_tokens, \
                     cached_tokens, micro, pico FROM spend",
                )?;
                let rows = s.query_map([], |r| {
                    let names = Names {
                        subject: r.get::<_, String>(0)?.into(),
                        tenant: r.get::<_, String>(1)?.into(),
                        model: r.get::<_, String>(2)?.into(),
                    };
                    let totals = Totals {
                        requests: unsigned(r.get(3)?),
                        prompt_tokens: unsigned(r.get(4)?),
                        completion_tokens: unsigned(r.get(5)?),
                        cached_tokens: unsigned(r.get(6)?),
                        pico: u128::from(unsigned(r.get(7)?)) * u128::from(PICO_PER_MICRO)
                            + u128::from(unsigned(r.get(8)?)),
                    };
                    Ok((names, totals))
                })?;
                for row in rows {
                    let (n, t) = row?;
                    let key = super::series_key(&n.subject, &n.tenant, &n.model);
                    let e = l
                        .series
                        .entry(key)
                        .or_insert_with(|| (Arc::new(n), Totals::default()));
                    e.1.add(&t);
                }
                let mut s = c.prepare("SELECT key, period_unix_ms, used FROM budget_use")?;
                let rows = s.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        unsigned(r.get(1)?),
                        unsigned(r.get(2)?),
                    ))
                })?;
                for row in rows {
                    let (key, period_unix_ms, used) = row?;
                    let key = u64::from_str_radix(&key, 16).map_err(|_| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            format!("bad budget key `{key}`").into(),
                        )
                    })?;
                    l.add_budget(&BudgetUse {
                        key: QuotaKey(key),
                        period_unix_ms,
                        used,
                    });
                }
                Ok(l)
            })
            .map_err(|e| e.to_string())
    }

    /// Adds `pending` in one transaction (module docs).
    fn persist(&mut self, _: &mut Ledger, pending: &Ledger) -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        self.store
            .write(|tx| {
                let mut add = tx.prepare_cached(
                    "INSERT INTO spend (subject, tenant, model, requests, prompt_tokens, \
                     completion_tokens, cached_tokens, micro, pico) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                     ON CONFLICT (subject, tenant, model) DO UPDATE SET \
                       requests = requests + excluded.requests, \
                       prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
                       completion_tokens = completion_tokens + excluded.completion_tokens, \
                       cached_tokens = cached_tokens + excluded.cached_tokens, \
                       micro = micro + excluded.micro + (pico + excluded.pico) / 1000000, \
                       pico = (pico + excluded.pico) % 1000000",
                )?;
                for (names, t) in pending.series.values() {
                    let micro = t.pico / u128::from(PICO_PER_MICRO);
                    let pico = t.pico % u128::from(PICO_PER_MICRO);
                    add.execute(params![
                        &*names.subject,
                        &*names.tenant,
                        &*names.model,
                        sat_i64(t.requests),
                        sat_i64(t.prompt_tokens),
                        sat_i64(t.completion_tokens),
                        sat_i64(t.cached_tokens),
                        i64::try_from(micro).unwrap_or(i64::MAX),
                        pico as i64,
                    ])?;
                }
                // The ledger's rule (`Ledger::add_budget`): a later period replaces the one
                // kept, use in an earlier one is dropped.
                let mut budget = tx.prepare_cached(
                    "INSERT INTO budget_use (key, period_unix_ms, used) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET \
                       used = CASE \
                         WHEN excluded.period_unix_ms > period_unix_ms THEN excluded.used \
                         WHEN excluded.period_unix_ms = period_unix_ms THEN used + excluded.used \
                         ELSE used END, \
                       period_unix_ms = max(period_unix_ms, excluded.period_unix_ms)",
                )?;
                for (key, &(period, used)) in &pending.budgets {
                    budget.execute(params![
                        format!("{:016x}", key.0),
                        sat_i64(period),
                        sat_i64(used)
                    ])?;
                }
                Ok(())
            })
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("registry {}", self.store.path().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::{SpendBatch, SpendDelta};

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sg-spend-sqlite-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn batch(subject: &str, pico: u128, budget: (u64, u64, u64)) -> SpendBatch {
        SpendBatch {
            spend: vec![SpendDelta {
                key: crate::spend::series_key(subject, "t", "m"),
                names: Arc::new(Names {
                    subject: subject.into(),
                    tenant: "t".into(),
                    model: "m".into(),
                }),
                totals: Totals {
                    requests: 1,
                    prompt_tokens: 10,
                    completion_tokens: 5,
                    cached_tokens: 2,
                    pico,
                },
            }],
            budgets: vec![BudgetUse {
                key: QuotaKey(budget.0),
                period_unix_ms: budget.1,
                used: budget.2,
            }],
        }
    }

    /// Persists `batches` one flush each, as the spend thread does: the ledger, and the store.
    fn run(store: &mut SqliteStore, batches: &[SpendBatch]) -> Ledger {
        let mut ledger = store.load().unwrap();
        for b in batches {
            let mut pending = Ledger::default();
            pending.apply(b);
            ledger.apply(b);
            store.persist(&mut ledger, &pending).unwrap();
        }
        ledger
    }

    #[test]
    fn deltas_add_up_to_what_the_ledger_holds_across_a_restart() {
        let d = dir("roundtrip");
        let db = d.join("models.db");
        let mut s = SqliteStore::open(&db).unwrap();
        assert_eq!(s.load().unwrap(), Ledger::default());
        let big = u128::from(u64::MAX) * 5 + 999_999;
        let ledger = run(
            &mut s,
            &[
                batch("a", 999_999, (1, 100, 4)),
                batch("a", 2, (1, 100, 6)),
                batch("b", big, (2, 0, 7)),
                // A new period replaces the old one's use; a late one is dropped.
                batch("b", 0, (1, 200, 3)),
                batch("a", 0, (1, 100, 50)),
            ],
        );
        assert_eq!(ledger.budgets[&QuotaKey(1)], (200, 3));
        drop(s);
        let back = SqliteStore::open(&db).unwrap().load().unwrap();
        assert_eq!(back, ledger, "a restart reads what the ledger held");
        assert_eq!(back.by(|n| &n.subject)["a"].pico, 1_000_001);
        assert_eq!(back.by(|n| &n.subject)["b"].pico, big);
        assert_eq!(back.total().requests, 5);
        // A second process adds to the same rows rather than overwriting them.
        let mut other = SqliteStore::open(&db).unwrap();
        let again = run(&mut other, &[batch("a", 5, (1, 200, 1))]);
        assert_eq!(again.by(|n| &n.subject)["a"].pico, 1_000_006);
        assert_eq!(again.budgets[&QuotaKey(1)], (200, 4));
        assert_eq!(SqliteStore::open(&db).unwrap().load().unwrap(), again);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_locked_or_corrupt_database_is_an_error_naming_the_file_and_writes_nothing() {
        let d = dir("locked");
        let db = d.join("models.db");
        let mut s = SqliteStore::open_with(&db, Duration::from_millis(50)).unwrap();
        run(&mut s, &[batch("a", 1, (1, 1, 1))]);
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut ledger = s.load().unwrap();
        let mut pending = Ledger::default();
        pending.apply(&batch("a", 1, (1, 1, 1)));
        let e = s.persist(&mut ledger, &pending).unwrap_err();
        assert!(e.contains("models.db") && e.contains("locked"), "{e}");
        c.execute_batch("ROLLBACK").unwrap();
        assert_eq!(s.load().unwrap().total().requests, 1, "nothing written");
        s.persist(&mut ledger, &pending).unwrap();
        assert_eq!(s.load().unwrap().total().requests, 2, "the retry stores it");
        drop((c, s));
        // A database that is not one: refused at open, naming it.
        let junk = d.join("junk.db");
        std::fs::write(&junk, b"not a database, not even close; ".repeat(300)).unwrap();
        let e = SqliteStore::open(&junk).err().unwrap();
        assert!(
            e.contains("junk.db") && e.contains("not a usable SQLite database"),
            "{e}"
        );
        // A row edited by hand into a bad budget key: the load names the file.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute("INSERT INTO budget_use VALUES ('zz', 1, 1)", [])
            .unwrap();
        let e = SqliteStore::open(&db).unwrap().load().unwrap_err();
        assert!(e.contains("models.db") && e.contains("zz"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
