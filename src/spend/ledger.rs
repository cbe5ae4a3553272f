//! The control plane's spend ledger (the spend thread owns it): totals per (subject, tenant,
//! model) series, and each budget key's use in its latest calendar period; its JSON form
//! (the file store), and the views `/stats` and `/metrics` show.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BudgetUse, Names, SpendBatch, Totals};
use crate::quota::QuotaKey;

/// Version of the file format.
pub const FORMAT_VERSION: u32 = 1;

/// Totals and budget use; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub series: HashMap<u64, (Arc<Names>, Totals)>,
    /// Budget key → (period start, UNIX ms; use in that period).
    pub budgets: HashMap<QuotaKey, (u64, u64)>,
}

impl Ledger {
    /// Adds one worker batch.
    pub fn apply(&mut self, b: &SpendBatch) {
        for d in &b.spend {
            let e = self
                .series
                .entry(d.key)
                .or_insert_with(|| (d.names.clone(), Totals::default()));
            e.1.add(&d.totals);
        }
        for u in &b.budgets {
            self.add_budget(u);
        }
    }

    /// Adds budget use: a later period replaces an earlier one, use in an earlier period than
    /// the one kept is dropped (that period is over).
    pub fn add_budget(&mut self, u: &BudgetUse) {
        let e = self.budgets.entry(u.key).or_insert((u.period_unix_ms, 0));
        if u.period_unix_ms > e.0 {
            *e = (u.period_unix_ms, u.used);
        } else if u.period_unix_ms == e.0 {
            e.1 = e.1.saturating_add(u.used);
        }
    }

    /// Adds everything in `o` (a pending delta into the ledger, or two ledgers).
    pub fn merge(&mut self, o: &Ledger) {
        for (k, (names, t)) in &o.series {
            let e = self
                .series
                .entry(*k)
                .or_insert_with(|| (names.clone(), Totals::default()));
            e.1.add(t);
        }
        for (&key, &(period_unix_ms, used)) in &o.budgets {
            self.add_budget(&BudgetUse {
                key,
                period_unix_ms,
                used,
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.budgets.is_empty()
    }

    /// The sum of every series.
    pub fn total(&self) -> Totals {
        let mut t = Totals::default();
        for (_, s) in self.series.values() {
            t.add(s);
        }
        t
    }

    /// Totals grouped by one name of the series (`by(|n| &n.tenant)`), "" included.
    pub fn by<'a>(&'a self, name: impl Fn(&'a Names) -> &'a str) -> BTreeMap<&'a str, Totals> {
        let mut out: BTreeMap<&str, Totals> = BTreeMap::new();
        for (names, t) in self.series.values() {
            out.entry(name(names)).or_default().add(t);
        }
        out
    }

    /// The JSON the file store writes.
    pub fn to_json(&self, currency: &str) -> Vec<u8> {
        let mut series: Vec<FileSeries> = self
            .series
            .values()
            .map(|(n, t)| FileSeries {
                subject: n.subject.to_string(),
                tenant: n.tenant.to_string(),
                model: n.model.to_string(),
                requests: t.requests,
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
                cached_tokens: t.cached_tokens,
                pico: t.pico.to_string(),
            })
            .collect();
        series.sort_by(|a, b| {
            (&a.subject, &a.tenant, &a.model).cmp(&(&b.subject, &b.tenant, &b.model))
        });
        let mut budgets: Vec<FileBudget> = self
            .budgets
            .iter()
            .map(|(k, &(period_unix_ms, used))| FileBudget {
                key: format!("{:016x}", k.0),
                period_unix_ms,
                used,
            })
            .collect();
        budgets.sort_by(|a, b| a.key.cmp(&b.key));
        let file = File {
            version: FORMAT_VERSION,
            currency: currency.to_owned(),
            series,
            budgets,
        };
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }

    /// Reads the file store's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Ledger, String> {
        let f: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if f.version != FORMAT_VERSION {
            return Err(format!("unknown format version {}", f.version));
        }
        let mut l = Ledger::default();
        for s in f.series {
            let pico = s
                .pico
                .parse::<u128>()
                .map_err(|_| format!("bad pico amount `{}`", s.pico))?;
            let key = super::series_key(&s.subject, &s.tenant, &s.model);
            let names = Arc::new(Names {
                subject: s.subject.into(),
                tenant: s.tenant.into(),
                model: s.model.into(),
            });
            let t = Totals {
                requests: s.requests,
                prompt_tokens: s.prompt_tokens,
                completion_tokens: s.completion_tokens,
                cached_tokens: s.cached_tokens,
                pico,
            };
            let e = l.series.entry(key).or_insert((names, Totals::default()));
            e.1.add(&t);
        }
        for b in f.budgets {
            let key = u64::from_str_radix(&b.key, 16)
                .map_err(|_| format!("bad budget key `{}`", b.key))?;
            l.add_budget(&BudgetUse {
                key: QuotaKey(key),
                period_unix_ms: b.period_unix_ms,
                used: b.used,
            });
        }
        Ok(l)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    currency: String,
    series: Vec<FileSeries>,
    budgets: Vec<FileBudget>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSeries {
    subject: String,
    tenant: String,
    model: String,
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cached_tokens: u64,
    /// A decimal string: a `u128` does not fit every JSON reader's numbers.
    pico: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBudget {
    key: String,
    period_unix_ms: u64,
    used: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::SpendDelta;

    fn delta(subject: &str, tenant: &str, model: &str, pico: u128) -> SpendDelta {
        SpendDelta {
            key: crate::spend::series_key(subject, tenant, model),
            names: Arc::new(Names {
                subject: subject.into(),
                tenant: tenant.into(),
                model: model.into(),
            }),
            totals: Totals {
                requests: 1,
                prompt_tokens: 3,
                completion_tokens: 2,
                cached_tokens: 1,
                pico,
            },
        }
    }

    #[test]
    fn batches_add_up_and_survive_the_json_round_trip() {
        let mut l = Ledger::default();
        let big = u128::from(u64::MAX) * 3;
        l.apply(&SpendBatch {
            spend: vec![
                delta("a", "t", "m", big),
                delta("b", "t", "m", 5),
                delta("a", "t", "m", 1),
            ],
            budgets: vec![BudgetUse {
                key: QuotaKey(0xabc),
                period_unix_ms: 1_000,
                used: 9,
            }],
        });
        assert_eq!(l.total().pico, big + 6);
        assert_eq!(l.total().requests, 3);
        assert_eq!(l.by(|n| &n.tenant)["t"].pico, big + 6);
        assert_eq!(l.by(|n| &n.subject)["b"].pico, 5);
        let back = Ledger::from_json(&l.to_json("USD")).unwrap();
        assert_eq!(back, l);
        assert!(Ledger::from_json(b"{}").is_err());
        assert!(
            Ledger::from_json(br#"{"version":2,"currency":"USD","series":[],"budgets":[]}"#)
                .is_err()
        );
    }

    #[test]
    fn budget_use_keeps_the_latest_period_only() {
        let mut l = Ledger::default();
        let k = QuotaKey(1);
        let at = |p, used| BudgetUse {
            key: k,
            period_unix_ms: p,
            used,
        };
        l.add_budget(&at(100, 5));
        l.add_budget(&at(100, 5));
        assert_eq!(l.budgets[&k], (100, 10));
        l.add_budget(&at(50, 99));
        assert_eq!(
            l.budgets[&k],
            (100, 10),
            "an old period's late use is dropped"
        );
        l.add_budget(&at(200, 1));
        assert_eq!(l.budgets[&k], (200, 1));
    }
}
