//! Spend accounting: what each response cost, by caller and model, counted on the worker and
//! kept (and persisted) by one control-plane thread.
//!
//! - [`price`]: the price table (`[[spend.prices]]`) and the cost of one response, in integer
//!   pico-units.
//! - [`shard`]: a worker's [`SpendShard`]: per-request accounting into per-caller deltas, sent
//!   to the spend thread in batches.
//! - [`ledger`]: the control plane's [`Ledger`]: totals per (subject, tenant, model), budget
//!   use per period, and their JSON form.
//! - [`store`]: the [`SpendStore`] boundary (load at start, persist periodically) and its
//!   file and Redis implementations; [`sqlite`]: the one in the model registry's database.
//!
//! # Contract
//!
//! Per request the pipeline prices the response's [`Usage`](crate::quota::usage::Usage)
//! ([`PriceTable::lookup`], [`Price::cost`]) and records usage and cost with
//! [`SpendShard::record`]; budget use goes to [`SpendShard::record_budget`]. Nothing on the
//! worker blocks or writes a file: on its inbox tick the worker sends what accumulated since
//! the last batch to the spend thread (`control::spend`), which adds it to the [`Ledger`] and
//! hands the ledger to the store every `spend.flush_interval_ms` and at shutdown.
//!
//! # Units
//!
//! Costs are integer pico-units (10⁻¹² of `spend.currency`, see [`price`]); totals are `u128`
//! on the control plane, so nothing overflows or rounds while it accumulates. Budgets are
//! enforced in micro-units (a request's cost rounded up, erring strict).
//!
//! # Performance
//!
//! [`SpendShard::record`] hashes the caller's three names once and adds to the series found: no
//! allocation once a caller × model has been seen on the core (`cargo bench --bench spend`).

pub mod ledger;
pub mod price;
pub mod shard;
pub mod sqlite;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config_types::ConfigProblem;
use crate::quota::QuotaKey;

pub use ledger::Ledger;
pub use price::{Price, PriceTable, RawPrice};
pub use shard::SpendShard;
pub use store::SpendStore;

/// Default of `spend.flush_interval_ms`: how often the ledger is persisted.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often a worker sends its accumulated spend to the spend thread.
pub const WORKER_FLUSH: Duration = Duration::from_millis(100);

/// `[spend]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSpend {
    /// A label: `USD`, `EUR`, `credits`.
    pub currency: Option<String>,
    /// Where spend and budget use are kept between restarts (relative to the config file).
    pub file: Option<PathBuf>,
    pub flush_interval_ms: Option<u64>,
    #[serde(default)]
    pub prices: Vec<RawPrice>,
}

/// The validated `[spend]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendSettings {
    pub currency: String,
    /// The file store's path (`None`: the file store is off).
    pub file: Option<PathBuf>,
    pub flush_interval: Duration,
    pub prices: PriceTable,
}

impl RawSpend {
    /// Checks the table (keys `spend.*`); `deployments` names each deployment as (model,
    /// version) in `DeploymentId` order.
    pub fn validate<'a>(
        &self,
        base_dir: &std::path::Path,
        deployments: impl Iterator<Item = (&'a str, &'a str)>,
        problems: &mut Vec<ConfigProblem>,
    ) -> SpendSettings {
        let currency = self.currency.clone().unwrap_or_else(|| "USD".into());
        if currency.is_empty()
            || currency.len() > 16
            || !currency
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            problems.push(ConfigProblem::new(
                "spend.currency",
                "must be 1-16 letters, digits or `_` (a label such as USD)",
            ));
        }
        let flush_ms = self
            .flush_interval_ms
            .unwrap_or(DEFAULT_FLUSH_INTERVAL.as_millis() as u64);
        if !(10..=3_600_000).contains(&flush_ms) {
            problems.push(ConfigProblem::new(
                "spend.flush_interval_ms",
                "must be between 10 and 3600000",
            ));
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            problems.push(ConfigProblem::new("spend.file", "must not be empty"));
        }
        SpendSettings {
            currency,
            file: self.file.as_ref().map(|f| base_dir.join(f)),
            flush_interval: Duration::from_millis(flush_ms),
            prices: PriceTable::build(&self.prices, deployments, problems),
        }
    }
}

/// Whose spend a series is: the caller's names, shared by every batch that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Names {
    /// The verified subject ("" for open routes).
    pub subject: Box<str>,
    /// The caller's tenant ("" when none).
    pub tenant: Box<str>,
    /// The model the request went by ("" when the body was not read).
    pub model: Box<str>,
}

/// Usage and cost added up over some requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// Cost in pico-units of the priced requests.
    pub pico: u128,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cached_tokens += o.cached_tokens;
        self.pico += o.pico;
    }

    pub fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// One series' change since the last batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendDelta {
    /// Digest of the names (see [`series_key`]).
    pub key: u64,
    pub names: Arc<Names>,
    pub totals: Totals,
}

/// Use of one budget key in one calendar period since the last batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUse {
    pub key: QuotaKey,
    /// Start of the period, UNIX milliseconds (0 for a `total` budget).
    pub period_unix_ms: u64,
    /// In the budget's unit (tokens or micro-units).
    pub used: u64,
}

/// What one worker sends the spend thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendBatch {
    pub spend: Vec<SpendDelta>,
    pub budgets: Vec<BudgetUse>,
}

impl SpendBatch {
    pub fn is_empty(&self) -> bool {
        self.spend.is_empty() && self.budgets.is_empty()
    }
}

/// Seed of the series digest; fixed so it is the same in every process sharing a store.
const SERIES_SEED: u64 = 0x7e3a_51c9_0d42_b86f;

/// The digest of a series' names; `0xff` separates them (it cannot occur in UTF-8).
#[inline]
pub fn series_key(subject: &str, tenant: &str, model: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::quality::FixedState::with_seed(SERIES_SEED).build_hasher();
    h.write(subject.as_bytes());
    h.write_u8(0xff);
    h.write(tenant.as_bytes());
    h.write_u8(0xff);
    h.write(model.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_keys_separate_every_name() {
        let k = series_key("a", "b", "c");
        assert_eq!(k, series_key("a", "b", "c"));
        for other in [
            series_key("ab", "", "c"),
            series_key("a", "bc", ""),
            series_key("", "ab", "c"),
            series_key("a", "b", "d"),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn settings_validate_and_report_every_problem() {
        let base = std::path::Path::new("/etc/sg");
        let raw = RawSpend {
            currency: None,
            file: Some("spend.json".into()),
            flush_interval_ms: None,
            prices: Vec::new(),
        };
        let mut problems = Vec::new();
        let s = raw.validate(base, std::iter::empty(), &mut problems);
        assert!(problems.is_empty());
        assert_eq!(s.currency, "USD");
        assert_eq!(
            s.file.as_deref(),
            Some(std::path::Path::new("/etc/sg/spend.json"))
        );
        assert_eq!(s.flush_interval, DEFAULT_FLUSH_INTERVAL);
        let bad = RawSpend {
            currency: Some("US D".into()),
            file: Some("".into()),
            flush_interval_ms: Some(1),
            prices: Vec::new(),
        };
        bad.validate(base, std::iter::empty(), &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["spend.currency", "spend.flush_interval_ms", "spend.file"]
        );
    }
}
