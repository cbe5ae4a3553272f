//! Labelled counters for the stages that report events: auth rejections by reason, quota
//! rejections by rule, breaker transitions, token usage by subject × model.
//!
//! # Contract
//!
//! [`LabelledCounters::add`] adds `n` to the counter of `family` at `values` (one value per
//! label name of the family). Each family keeps at most `cap` distinct label sets
//! ([`MAX_SERIES_PER_FAMILY`] unless `[metrics] label_series` says otherwise), so a caller that
//! labels by subject cannot grow memory or the exposition without bound. When a new label set
//! arrives at a full family, the smallest series is folded into [`OTHER`] and the new one takes
//! its place (the space-saving scheme): series with large counts stay, so the family shows its
//! top-N by count, and the family's total stays exact (what left a series is in "other").
//!
//! # Performance
//!
//! Adding to an existing series allocates nothing: the family is found by a short linear scan
//! and the label set by a `&str` hash lookup (multi-label sets are joined into a reused
//! scratch string). The hash is foldhash with a per-process random seed: a label value a
//! client chooses (a model name) cannot aim collisions, and the cap bounds a family anyway;
//! SipHash cost about 1 % of the full pipeline's worker time here.

use std::collections::HashMap;

/// One family's series: joined label values → count.
pub type Series = HashMap<Box<str>, u64, foldhash::fast::RandomState>;

/// Most distinct label sets per family; the rest go to [`OTHER`].
pub const MAX_SERIES_PER_FAMILY: usize = 64;
/// Label value that collects everything past the cap.
pub const OTHER: &str = "other";
/// Separator between label values in a joined key (cannot appear in a sane label value).
pub const SEP: char = '\u{1f}';

/// A counter family: its metric name (without `shardgate_` and `_total`), help text and
/// label names.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

/// Authentication rejections, by reason (`expired`, `bad_signature`, `revoked`, ...).
pub const AUTH_REJECTIONS: Family = Family {
    name: "auth_rejections",
    help: "Requests rejected by authentication, by reason.",
    labels: &["reason"],
};
/// Bearer tokens answered from the worker's verified-token cache (`hit`) or verified in full
/// (`miss`; refused tokens included). Filled in when the worker's metrics are collected.
pub const AUTH_TOKEN_CACHE: Family = Family {
    name: "auth_token_cache",
    help: "Bearer tokens answered from the verified-token cache (hit) or verified in full (miss).",
    labels: &["result"],
};
/// Quota rejections, by rule name.
pub const QUOTA_REJECTIONS: Family = Family {
    name: "quota_rejections",
    help: "Requests rejected by a quota, by rule.",
    labels: &["rule"],
};
/// Circuit breaker transitions, by endpoint and target state.
pub const BREAKER_TRANSITIONS: Family = Family {
    name: "breaker_transitions",
    help: "Circuit breaker state transitions, by endpoint and new state.",
    labels: &["endpoint", "state"],
};
/// TLS handshakes completed on the listener, by kind (`full`, `resumed`).
pub const TLS_HANDSHAKES: Family = Family {
    name: "tls_handshakes",
    help: "TLS handshakes completed with clients, by kind (full or resumed).",
    labels: &["kind"],
};
/// TLS handshakes with clients that failed, by reason (`timeout`, `protocol_version`, ...).
pub const TLS_HANDSHAKE_FAILURES: Family = Family {
    name: "tls_handshake_failures",
    help: "TLS handshakes with clients that failed, by reason.",
    labels: &["reason"],
};
/// Upstream TLS handshakes that failed, by upstream and reason (`cert_expired`, ...).
pub const UPSTREAM_TLS_ERRORS: Family = Family {
    name: "upstream_tls_errors",
    help: "TLS handshakes with upstreams that failed, by upstream and reason.",
    labels: &["upstream", "reason"],
};
/// Tokens used, by subject and model (subjects past the cap share "other").
pub const TOKENS: Family = Family {
    name: "tokens",
    help: "Model tokens accounted, by subject and model.",
    labels: &["subject", "model"],
};

/// Requests refused by an exhausted budget, by budget and unit.
pub const BUDGET_REJECTIONS: Family = Family {
    name: "budget_rejections",
    help: "Requests rejected by an exhausted budget, by budget and unit (tokens or spend).",
    labels: &["budget", "unit"],
};
/// Requests admitted past a budget's soft limit, by budget and unit.
pub const BUDGET_WARNINGS: Family = Family {
    name: "budget_warnings",
    help: "Requests admitted past a budget's soft limit, by budget and unit (tokens or spend).",
    labels: &["budget", "unit"],
};

/// A set of counter families; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct LabelledCounters {
    families: Vec<(&'static Family, Series)>,
    scratch: String,
    /// Most label sets per family (0: [`MAX_SERIES_PER_FAMILY`]).
    cap: usize,
}

impl LabelledCounters {
    /// Adds `n` to `family` at `values` (see the module docs). Missing values read as "".
    pub fn add(&mut self, family: &'static Family, values: &[&str], n: u64) {
        self.scratch.clear();
        for i in 0..family.labels.len() {
            if i > 0 {
                self.scratch.push(SEP);
            }
            self.scratch.push_str(values.get(i).copied().unwrap_or(""));
        }
        let fi = match self.families.iter().position(|(f, _)| *f == family) {
            Some(i) => i,
            None => {
                self.families.push((family, Series::default()));
                self.families.len() - 1
            }
        };
        let series = &mut self.families[fi].1;
        if let Some(c) = series.get_mut(self.scratch.as_str()) {
            *c += n;
            return;
        }
        let cap = if self.cap == 0 {
            MAX_SERIES_PER_FAMILY
        } else {
            self.cap
        };
        let other: Box<str> = vec![OTHER; family.labels.len()]
            .join(&SEP.to_string())
            .into();
        // The "other" series does not count against the cap.
        let named = series.len() - usize::from(series.contains_key(&other));
        if named >= cap {
            // Fold the smallest named series into "other" to make room (new label sets are
            // rare; this scan of at most `cap` entries happens only then).
            let smallest = series
                .iter()
                .filter(|(k, _)| **k != other)
                .min_by_key(|(_, c)| **c)
                .map(|(k, c)| (k.clone(), *c));
            if let Some((k, c)) = smallest {
                series.remove(&k);
                *series.entry(other).or_insert(0) += c;
            }
        }
        *series.entry(self.scratch.as_str().into()).or_insert(0) += n;
    }

    /// Sets the most label sets kept per family (`[metrics] label_series`).
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Every family and its series (joined label values → count).
    pub fn families(&self) -> impl Iterator<Item = (&'static Family, &Series)> {
        self.families.iter().map(|(f, s)| (*f, s))
    }

    /// Adds every count of `other` (control plane merge; the cap applies again).
    pub fn merge(&mut self, other: &LabelledCounters) {
        self.cap = self.cap.max(other.cap);
        for (family, series) in other.families() {
            for (key, n) in series {
                let values: Vec<&str> = key.split(SEP).collect();
                self.add(family, &values, *n);
            }
        }
    }

    /// The count at `values` (tests and the admin API).
    pub fn get(&self, family: &'static Family, values: &[&str]) -> u64 {
        let key = values.join(&SEP.to_string());
        self.families
            .iter()
            .find(|(f, _)| *f == family)
            .and_then(|(_, s)| s.get(key.as_str()))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_label_set() {
        let mut c = LabelledCounters::default();
        c.add(&AUTH_REJECTIONS, &["expired"], 1);
        c.add(&AUTH_REJECTIONS, &["expired"], 2);
        c.add(&TOKENS, &["alice", "llama3"], 100);
        assert_eq!(c.get(&AUTH_REJECTIONS, &["expired"]), 3);
        assert_eq!(c.get(&TOKENS, &["alice", "llama3"]), 100);
        assert_eq!(c.get(&TOKENS, &["bob", "llama3"]), 0);
    }

    #[test]
    fn cardinality_is_capped_and_keeps_the_largest() {
        let mut c = LabelledCounters::default();
        c.set_cap(4);
        c.add(&TOKENS, &["heavy", "m"], 1000);
        let mut total = 1000;
        for i in 0..100 {
            c.add(&TOKENS, &[&format!("user{i}"), "m"], 1);
            total += 1;
            c.add(&TOKENS, &["heavy", "m"], 10);
            total += 10;
        }
        let (_, series) = c.families().next().unwrap();
        assert_eq!(series.len(), 4 + 1, "cap named series plus other");
        assert_eq!(
            c.get(&TOKENS, &["heavy", "m"]),
            2000,
            "the top series is never folded"
        );
        assert_eq!(
            series.values().sum::<u64>(),
            total,
            "the family total stays exact"
        );
        assert!(c.get(&TOKENS, &[OTHER, OTHER]) > 0);
    }

    #[test]
    fn merge_sums() {
        let mut a = LabelledCounters::default();
        let mut b = LabelledCounters::default();
        a.add(&QUOTA_REJECTIONS, &["free-tier"], 2);
        b.add(&QUOTA_REJECTIONS, &["free-tier"], 3);
        b.add(&BREAKER_TRANSITIONS, &["10.0.0.1:80", "open"], 1);
        a.merge(&b);
        assert_eq!(a.get(&QUOTA_REJECTIONS, &["free-tier"]), 5);
        assert_eq!(a.get(&BREAKER_TRANSITIONS, &["10.0.0.1:80", "open"]), 1);
    }
}
