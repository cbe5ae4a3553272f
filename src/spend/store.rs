//! Where the spend ledger lives between restarts: the [`SpendStore`] boundary, and its
//! implementations.
//!
//! - [`FileStore`] (`spend.file`): the whole ledger as JSON, written to a temporary file,
//!   synced and renamed over the old one, so a crash leaves the old or the new file, never a
//!   torn one.
//! - [`RedisStore`] (`quota.backend = "redis"`): every gateway host adds its deltas to shared
//!   counters (`HINCRBY`), so each host's view is the fleet's spend. Budget use needs no
//!   persisting there: the budgets' lease windows live in Redis already.
//! - [`MemoryStore`]: nothing persisted (no file configured).
//!
//! - [`super::sqlite::SqliteStore`] (`[registry]` configured): rows in the registry database,
//!   the pending deltas added in one transaction.
//!
//! Only the spend thread (`control::spend`) calls a store; it may block (a write, a Redis
//! round trip) without touching a worker.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Ledger, Names, Totals};

/// Reads and writes the ledger; see the module docs.
pub trait SpendStore: Send {
    /// What the store holds now (at start; the Redis store also to refresh its view).
    fn load(&mut self) -> Result<Ledger, String>;
    /// Persists: `ledger` is everything this process knows, `pending` what changed since the
    /// last successful persist (a store that adds, like Redis, sends only that). On `Ok`
    /// the caller clears `pending`; the store may replace totals in `ledger` with fresher
    /// shared ones.
    fn persist(&mut self, ledger: &mut Ledger, pending: &Ledger) -> Result<(), String>;
    /// Where it persists, for logs.
    fn describe(&self) -> String;
}

/// Nothing is kept between restarts.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl SpendStore for MemoryStore {
    fn load(&mut self) -> Result<Ledger, String> {
        Ok(Ledger::default())
    }
    fn persist(&mut self, _: &mut Ledger, _: &Ledger) -> Result<(), String> {
        Ok(())
    }
    fn describe(&self) -> String {
        "memory (not persisted)".into()
    }
}

/// The ledger as one JSON file, replaced atomically.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    currency: String,
}

impl FileStore {
    pub fn new(path: PathBuf, currency: &str) -> FileStore {
        FileStore {
            path,
            currency: currency.to_owned(),
        }
    }
}

impl SpendStore for FileStore {
    fn load(&mut self) -> Result<Ledger, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                Ledger::from_json(&bytes).map_err(|e| format!("{}: {e}", self.path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    fn persist(&mut self, ledger: &mut Ledger, _: &Ledger) -> Result<(), String> {
        let json = ledger.to_json(&self.currency);
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            // The rename is durable once the directory is synced.
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// Spend counters shared through Redis (see the module docs).
///
/// Keys: `{prefix}:spend:{<series key>}` is a hash of the series' names and counters (cost
/// as whole micro-units `micro` plus pico-units `pico`, each below `i64::MAX` however long
/// it runs); `{prefix}:spend:index` is the set of series keys.
pub struct RedisStore {
    client: redis::Client,
    conn: Option<redis::Connection>,
    prefix: String,
    io_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const FIELDS: [&str; 6] = [
    "requests",
    "prompt",
    "completion",
    "cached",
    "micro",
    "pico",
];

impl RedisStore {
    pub fn new(settings: &crate::quota::RedisSettings) -> Result<RedisStore, String> {
        Ok(RedisStore {
            client: redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?,
            conn: None,
            prefix: settings.key_prefix.clone(),
            io_timeout: settings.io_timeout,
        })
    }

    fn conn(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.conn.is_none() {
            let c = self.client.get_connection_with_timeout(self.io_timeout)?;
            c.set_read_timeout(Some(self.io_timeout))?;
            c.set_write_timeout(Some(self.io_timeout))?;
            self.conn = Some(c);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    fn key(&self, series: u64) -> String {
        format!("{}:spend:{{{series:016x}}}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}:spend:index", self.prefix)
    }

    /// Runs `op`, dropping the connection when it fails (it may be out of step).
    fn with<T>(
        &mut self,
        op: impl FnOnce(&mut redis::Connection, &Self) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let mut conn = match self.conn() {
            Ok(_) => self.conn.take().expect("connected"),
            Err(e) => return Err(e.to_string()),
        };
        let r = op(&mut conn, self);
        match r {
            Ok(v) => {
                self.conn = Some(conn);
                Ok(v)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A series' counters as `HMGET` (or the `HINCRBY`s) answered them.
fn totals_of(v: &[i64]) -> Totals {
    let n = |i: usize| u64::try_from(v.get(i).copied().unwrap_or(0)).unwrap_or(0);
    Totals {
        requests: n(0),
        prompt_tokens: n(1),
        completion_tokens: n(2),
        cached_tokens: n(3),
        pico: u128::from(n(4)) * u128::from(super::price::PICO_PER_MICRO) + u128::from(n(5)),
    }
}

impl SpendStore for RedisStore {
    fn load(&mut self) -> Result<Ledger, String> {
        self.with(|c, s| {
            let keys: Vec<String> = redis::cmd("SMEMBERS").arg(s.index()).query(c)?;
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("HMGET")
                    .arg(s.key(u64::from_str_radix(k, 16).unwrap_or(0)))
                    .arg(&FIELDS)
                    .arg(&["subject", "tenant", "model"]);
            }
            let rows: Vec<Vec<Option<String>>> = pipe.query(c)?;
            let mut l = Ledger::default();
            for (k, row) in keys.iter().zip(rows) {
                let Ok(key) = u64::from_str_radix(k, 16) else {
                    continue;
                };
                let num = |i: usize| {
                    row.get(i)
                        .cloned()
                        .flatten()
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                let counts: Vec<i64> = (0..FIELDS.len()).map(num).collect();
                let names = Arc::new(Names {
                    subject: text(6).into(),
                    tenant: text(7).into(),
                    model: text(8).into(),
                });
                l.series.insert(key, (names, totals_of(&counts)));
            }
            Ok(l)
        })
    }

    fn persist(&mut self, ledger: &mut Ledger, pending: &Ledger) -> Result<(), String> {
        if pending.series.is_empty() {
            return Ok(());
        }
        let rows: Vec<(u64, Vec<i64>)> = self.with(|c, s| {
            let mut pipe = redis::pipe();
            let mut order = Vec::with_capacity(pending.series.len());
            for (&key, (names, t)) in &pending.series {
                let k = s.key(key);
                let micro = t.pico / u128::from(super::price::PICO_PER_MICRO);
                let pico = t.pico % u128::from(super::price::PICO_PER_MICRO);
                let add = [
                    t.requests as i64,
                    t.prompt_tokens as i64,
                    t.completion_tokens as i64,
                    t.cached_tokens as i64,
                    i64::try_from(micro).unwrap_or(i64::MAX),
                    pico as i64,
                ];
                for (f, n) in FIELDS.iter().zip(add) {
                    pipe.cmd("HINCRBY").arg(&k).arg(*f).arg(n);
                }
                pipe.cmd("HSETNX")
                    .arg(&k)
                    .arg("subject")
                    .arg(&*names.subject)
                    .ignore();
                pipe.cmd("HSETNX")
                    .arg(&k)
                    .arg("tenant")
                    .arg(&*names.tenant)
                    .ignore();
                pipe.cmd("HSETNX")
                    .arg(&k)
                    .arg("model")
                    .arg(&*names.model)
                    .ignore();
                pipe.cmd("SADD")
                    .arg(s.index())
                    .arg(format!("{key:016x}"))
                    .ignore();
                order.push(key);
            }
            let flat: Vec<i64> = pipe.query(c)?;
            Ok(order
                .into_iter()
                .zip(flat.chunks(FIELDS.len()).map(<[i64]>::to_vec))
                .collect())
        })?;
        // The counters now hold every host's spend of these series.
        for (key, counts) in rows {
            if let Some(e) = ledger.series.get_mut(&key) {
                e.1 = totals_of(&counts);
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("redis (prefix {})", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::QuotaKey;
    use crate::spend::{BudgetUse, SpendBatch, SpendDelta};

    #[test]
    fn the_file_store_round_trips_and_replaces_atomically() {
        let dir = std::env::temp_dir().join(format!("sg-spend-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spend.json");
        let _ = std::fs::remove_file(&path);
        let mut store = FileStore::new(path.clone(), "EUR");
        assert_eq!(
            store.load().unwrap(),
            Ledger::default(),
            "no file yet: empty"
        );
        let mut l = Ledger::default();
        l.apply(&SpendBatch {
            spend: vec![SpendDelta {
                key: crate::spend::series_key("s", "t", "m"),
                names: Arc::new(Names {
                    subject: "s".into(),
                    tenant: "t".into(),
                    model: "m".into(),
                }),
                totals: Totals {
                    requests: 2,
                    pico: 7,
                    ..Totals::default()
                },
            }],
            budgets: vec![BudgetUse {
                key: QuotaKey(3),
                period_unix_ms: 9,
                used: 4,
            }],
        });
        store.persist(&mut l, &Ledger::default()).unwrap();
        assert_eq!(store.load().unwrap(), l);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"currency\": \"EUR\""), "{text}");
        assert!(!dir.join("spend.json.tmp").exists());
        std::fs::write(&path, b"{ torn").unwrap();
        assert!(store.load().unwrap_err().contains("spend.json"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redis_counters_read_back_as_totals() {
        let t = totals_of(&[1, 2, 3, 4, 5, 999_999]);
        assert_eq!(t.pico, 5 * 1_000_000 + 999_999);
        assert_eq!((t.requests, t.cached_tokens), (1, 4));
        assert_eq!(totals_of(&[-1]).requests, 0);
    }
}
