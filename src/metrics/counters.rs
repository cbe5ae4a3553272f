//! Labelled counters for the stages that report events: auth rejections by reason, quota
//! rejections by rule, breaker transitions, token usage by subject × model.
//!
//! # Contract
//!
//! [`LabelledCounters::add`] adds `n` to the counter of `family` at `values` (one value per
//! label name of the family). Each family keeps at most `cap` distinct label sets
//! ([`MAX_SERIES_PER_FAMILY`] unless `[metrics] label_series` says otherwise), so a caller that
//! labels by subject cannot grow memory or the exposition without bound. At a full family a
//! new label set is counted in [`OTHER`]; one such miss in [`ADMIT_EVERY`] instead folds the
//! smallest series into "other" and gives the new label set its place (the space-saving
//! scheme, admitting a newcomer on every `ADMIT_EVERY`-th miss rather than on each): series
//! with large counts stay, so the family shows its top-N by count, a label set that becomes
//! heavy later still gets its own series (it is most of the misses), and the family's total
//! stays exact (what left a series, or never had one, is in "other"). A control-plane
//! [`merge`](LabelledCounters::merge) admits on every miss.
//!
//! # Performance
//!
//! Adding to an existing series allocates nothing: the family is found by a short linear scan
//! and the label set by a `&str` hash lookup (multi-label sets are joined into a reused
//! scratch string). A miss at a full family is one more lookup (of "other", whose key is made
//! once per family); only an admission allocates (the new key) and scans the family for its
//! smallest series, so a long tail of callers (more subjects than the cap, each seen once in
//! a while) costs one admission in [`ADMIT_EVERY`] of its requests, not one each. The hash is foldhash with a per-process random seed: a label value a
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
    families: Vec<FamilySeries>,
    scratch: String,
    /// Most label sets per family (0: [`MAX_SERIES_PER_FAMILY`]).
    cap: usize,
}

/// At a full family, one miss in this many admits the new label set (module docs).
pub const ADMIT_EVERY: u32 = 64;

#[derive(Debug, Clone)]
struct FamilySeries {
    family: &'static Family,
    series: Series,
    /// The family's "other" key (every label value [`OTHER`]).
    other: Box<str>,
    /// Misses at the full family since the last admission.
    misses: u32,
}

impl LabelledCounters {
    /// Adds `n` to `family` at `values` (see the module docs). Missing values read as "".
    pub fn add(&mut self, family: &'static Family, values: &[&str], n: u64) {
        self.add_as(family, values, n, false);
    }

    /// [`add`](Self::add); `admit`: a miss at a full family always takes a series.
    fn add_as(&mut self, family: &'static Family, values: &[&str], n: u64, admit: bool) {
        self.scratch.clear();
        for i in 0..family.labels.len() {
            if i > 0 {
                self.scratch.push(SEP);
            }
            self.scratch.push_str(values.get(i).copied().unwrap_or(""));
        }
        let fi = match self.families.iter().position(|f| f.family == family) {
            Some(i) => i,
            None => {
                self.families.push(FamilySeries {
                    family,
                    series: Series::default(),
                    other: vec![OTHER; family.labels.len()]
                        .join(&SEP.to_string())
                        .into(),
                    misses: 0,
                });
                self.families.len() - 1
            }
        };
        let cap = if self.cap == 0 {
            MAX_SERIES_PER_FAMILY
        } else {
            self.cap
        };
        let f = &mut self.families[fi];
        if let Some(c) = f.series.get_mut(self.scratch.as_str()) {
            *c += n;
            return;
        }
        // The "other" series does not count against the cap.
        let has_other = f.series.contains_key(&*f.other);
        let named = f.series.len() - usize::from(has_other);
        if named >= cap {
            f.misses += 1;
            if !admit && f.misses < ADMIT_EVERY {
                match f.series.get_mut(&*f.other) {
                    Some(c) => *c += n,
                    None => {
                        f.series.insert(f.other.clone(), n);
                    }
                }
                return;
            }
            f.misses = 0;
            // Fold the smallest named series into "other" to make room (a scan of at most
            // `cap` entries, once per admission).
            let other = &f.other;
            let smallest = f
                .series
                .iter()
                .filter(|(k, _)| *k != other)
                .map(|(_, c)| *c)
                .min();
            if let Some(min) = smallest {
                // Removes one series at that count (no copy of its key).
                let mut removed = false;
                f.series.retain(|k, c| {
                    let fold = !removed && *c == min && k != other;
                    removed |= fold;
                    !fold
                });
                match f.series.get_mut(&*f.other) {
                    Some(c) => *c += min,
                    None => {
                        f.series.insert(f.other.clone(), min);
                    }
                }
            }
        }
        *f.series.entry(self.scratch.as_str().into()).or_insert(0) += n;
    }

    /// Sets the most label sets per family (`[metrics] label_series`).
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Every family and its series (joined label values → count).
    pub fn families(&self) -> impl Iterator<Item = (&'static Family, &Series)> {
        self.families.iter().map(|f| (f.family, &f.series))
    }

    /// Adds every count of `other` (control plane merge; the cap applies again).
    pub fn merge(&mut self, other: &LabelledCounters) {
        self.cap = self.cap.max(other.cap);
        for (family, series) in other.families() {
            for (key, n) in series {
                let values: Vec<&str> = key.split(SEP).collect();
                self.add_as(family, &values, *n, true);
            }
        }
    }

    /// The count at `values` (tests and the admin API).
    pub fn get(&self, family: &'static Family, values: &[&str]) -> u64 {
        let key = values.join(&SEP.to_string());
        self.families
            .iter()
            .find(|f| f.family == family)
            .and_then(|f| f.series.get(key.as_str()))
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

    /// More callers than the cap, each seen now and then: they are counted in "other" and
    /// take a series only once in ADMIT_EVERY misses; the total stays exact.
    #[test]
    fn a_long_tail_is_counted_in_other_with_rare_admissions() {
        let mut c = LabelledCounters::default();
        c.set_cap(4);
        for i in 0..4 {
            c.add(&TOKENS, &[&format!("first{i}"), "m"], 1);
        }
        let tail = 10 * ADMIT_EVERY as usize;
        for i in 0..tail {
            c.add(&TOKENS, &[&format!("tail{i}"), "m"], 1);
        }
        let (_, series) = c.families().next().unwrap();
        assert_eq!(series.len(), 4 + 1);
        assert_eq!(series.values().sum::<u64>(), 4 + tail as u64);
        let admitted = series.keys().filter(|k| k.starts_with("tail")).count();
        assert!(admitted >= 1, "newcomers are still admitted");
        // 10 admissions over the tail: "other" holds the rest and the folded ones.
        assert_eq!(
            c.get(&TOKENS, &[OTHER, OTHER]),
            4 + tail as u64
                - series
                    .iter()
                    .filter(|(k, _)| !k.starts_with(OTHER))
                    .map(|(_, n)| n)
                    .sum::<u64>()
        );
    }

    /// A label set that becomes heavy after the family filled up gets its own series and
    /// keeps it; the series it displaced is in "other".
    #[test]
    fn a_late_heavy_caller_gets_a_series() {
        let mut c = LabelledCounters::default();
        c.set_cap(4);
        for i in 0..4 {
            c.add(&TOKENS, &[&format!("early{i}"), "m"], 5 + i as u64);
        }
        for _ in 0..2 * ADMIT_EVERY {
            c.add(&TOKENS, &["late", "m"], 10);
        }
        assert!(c.get(&TOKENS, &["late", "m"]) > 0, "admitted");
        assert_eq!(
            c.get(&TOKENS, &["early0", "m"]),
            0,
            "the smallest was folded"
        );
        let (_, series) = c.families().next().unwrap();
        assert_eq!(
            series.values().sum::<u64>(),
            5 + 6 + 7 + 8 + 20 * ADMIT_EVERY as u64
        );
        assert_eq!(
            c.get(&TOKENS, &["late", "m"]) + c.get(&TOKENS, &[OTHER, OTHER]),
            5 + 20 * ADMIT_EVERY as u64
        );
    }

    /// The control plane's merge admits on every miss (its sums are not a hot path).
    #[test]
    fn merge_admits_every_label_set_it_has_room_for() {
        let mut a = LabelledCounters::default();
        a.set_cap(4);
        for i in 0..4 {
            a.add(&TOKENS, &[&format!("a{i}"), "m"], 1);
        }
        let mut b = LabelledCounters::default();
        b.add(&TOKENS, &["big", "m"], 100);
        a.merge(&b);
        assert_eq!(a.get(&TOKENS, &["big", "m"]), 100);
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
