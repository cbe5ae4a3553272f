//! One worker's spend accounting (data path; no locks): per-request usage and cost added to
//! the caller × model series on this core, and budget use per key and period, until the
//! worker's next batch ([`SpendShard::take_batch`]) hands the deltas to the spend thread.

use std::collections::HashMap;
use std::sync::Arc;

use super::{series_key, BudgetUse, Names, SpendBatch, SpendDelta, Totals};
use crate::quota::usage::Usage;
use crate::quota::{KeyMap, QuotaKey};

/// Past this many series, those with nothing to send are forgotten at the next batch.
pub const MAX_IDLE_SERIES: usize = 10_000;

#[derive(Debug)]
struct Series {
    names: Arc<Names>,
    delta: Totals,
}

/// A core's spend since its last batch; see the module docs.
#[derive(Debug, Default)]
pub struct SpendShard {
    series: HashMap<u64, Series, crate::quota::DigestBuild>,
    budgets: KeyMap<BudgetUse>,
}

impl SpendShard {
    /// Adds one finished request of `subject` × `tenant` × `model`: its usage (`None`:
    /// unknown) and cost in pico-units (`None`: no price).
    #[inline]
    pub fn record(
        &mut self,
        subject: &str,
        tenant: &str,
        model: &str,
        usage: Option<&Usage>,
        cost_pico: Option<u64>,
    ) {
        let key = series_key(subject, tenant, model);
        let s = self.series.entry(key).or_insert_with(|| Series {
            names: Arc::new(Names {
                subject: subject.into(),
                tenant: tenant.into(),
                model: model.into(),
            }),
            delta: Totals::default(),
        });
        let d = &mut s.delta;
        d.requests += 1;
        if let Some(u) = usage {
            d.prompt_tokens += u64::from(u.prompt_tokens);
            d.completion_tokens += u64::from(u.completion_tokens);
            d.cached_tokens += u64::from(u.cached_tokens);
        }
        d.pico += u128::from(cost_pico.unwrap_or(0));
    }

    /// Adds `used` (the budget's unit) to budget key `key` in the period starting at
    /// `period_unix_ms`.
    #[inline]
    pub fn record_budget(&mut self, key: QuotaKey, period_unix_ms: u64, used: u64) {
        if used == 0 {
            return;
        }
        // One entry per key and period: a request in a new period gets its own entry.
        let slot = QuotaKey(key.0 ^ period_unix_ms.rotate_left(29));
        let e = self.budgets.entry(slot).or_insert(BudgetUse {
            key,
            period_unix_ms,
            used: 0,
        });
        e.used += used;
    }

    /// Moves everything accumulated since the last batch into `out` (left empty when there
    /// was nothing).
    pub fn take_batch(&mut self, out: &mut SpendBatch) {
        for (&key, s) in &mut self.series {
            if !s.delta.is_zero() {
                out.spend.push(SpendDelta {
                    key,
                    names: s.names.clone(),
                    totals: std::mem::take(&mut s.delta),
                });
            }
        }
        out.budgets.extend(self.budgets.drain().map(|(_, u)| u));
        if self.series.len() > MAX_IDLE_SERIES {
            self.series.retain(|_, s| !s.delta.is_zero());
        }
    }

    /// Series this core remembers.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_add_up_per_series_and_a_batch_empties_the_shard() {
        let mut s = SpendShard::default();
        let u = Usage::from_parts(10, 5, 4);
        s.record("alice", "acme", "m", Some(&u), Some(100));
        s.record("alice", "acme", "m", Some(&u), Some(100));
        s.record("alice", "acme", "n", None, None);
        s.record_budget(QuotaKey(1), 0, 7);
        s.record_budget(QuotaKey(1), 0, 3);
        s.record_budget(QuotaKey(1), 86_400_000, 2);
        s.record_budget(QuotaKey(2), 0, 0);
        let mut b = SpendBatch::default();
        s.take_batch(&mut b);
        b.spend.sort_by(|x, y| x.names.model.cmp(&y.names.model));
        assert_eq!(b.spend.len(), 2);
        assert_eq!(
            b.spend[0].totals,
            Totals {
                requests: 2,
                prompt_tokens: 20,
                completion_tokens: 10,
                cached_tokens: 8,
                pico: 200,
            }
        );
        assert_eq!(b.spend[0].key, series_key("alice", "acme", "m"));
        assert_eq!(b.spend[1].totals.requests, 1);
        b.budgets.sort_by_key(|u| u.period_unix_ms);
        let used: Vec<(u64, u64)> = b
            .budgets
            .iter()
            .map(|u| (u.period_unix_ms, u.used))
            .collect();
        assert_eq!(used, [(0, 10), (86_400_000, 2)]);
        let mut again = SpendBatch::default();
        s.take_batch(&mut again);
        assert!(again.is_empty());
        assert_eq!(s.len(), 2, "series stay for reuse");
    }
}
