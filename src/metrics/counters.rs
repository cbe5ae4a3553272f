//! Labelled counters for the stages that report events: auth rejections by reason, quota
//! rejections by rule, breaker transitions, token usage by subject × model.
//!
//! # Contract
//!
//! [`LabelledCounters::add`] adds `n` to the counter of `family` at `values` (one value per
//! label name of the family). Each family keeps at most [`MAX_SERIES_PER_FAMILY`] distinct
//! label sets; later new sets are counted under [`OTHER`] in every label, so a caller that
//! labels by subject cannot grow memory or the exposition without bound (the first subjects
//! seen get their own series, the rest share "other").
//!
//! # Performance
//!
//! Adding to an existing series allocates nothing: the family is found by a short linear scan
//! and the label set by a `&str` hash lookup (multi-label sets are joined into a reused
//! scratch string).

use std::collections::HashMap;

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
/// Tokens used, by subject and model (subjects past the cap share "other").
pub const TOKENS: Family = Family {
    name: "tokens",
    help: "Model tokens accounted, by subject and model.",
    labels: &["subject", "model"],
};

/// A set of counter families; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct LabelledCounters {
    families: Vec<(&'static Family, HashMap<Box<str>, u64>)>,
    scratch: String,
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
                self.families.push((family, HashMap::new()));
                self.families.len() - 1
            }
        };
        let series = &mut self.families[fi].1;
        if let Some(c) = series.get_mut(self.scratch.as_str()) {
            *c += n;
            return;
        }
        let key: Box<str> = if series.len() < MAX_SERIES_PER_FAMILY {
            self.scratch.as_str().into()
        } else {
            vec![OTHER; family.labels.len()]
                .join(&SEP.to_string())
                .into()
        };
        *series.entry(key).or_insert(0) += n;
    }

    /// Every family and its series (joined label values → count).
    pub fn families(&self) -> impl Iterator<Item = (&'static Family, &HashMap<Box<str>, u64>)> {
        self.families.iter().map(|(f, s)| (*f, s))
    }

    /// Adds every count of `other` (control plane merge; the cap applies again).
    pub fn merge(&mut self, other: &LabelledCounters) {
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
    fn cardinality_is_capped_with_other() {
        let mut c = LabelledCounters::default();
        for i in 0..MAX_SERIES_PER_FAMILY + 10 {
            c.add(&TOKENS, &[&format!("user{i}"), "m"], 1);
        }
        let (_, series) = c.families().next().unwrap();
        assert_eq!(series.len(), MAX_SERIES_PER_FAMILY + 1);
        assert_eq!(c.get(&TOKENS, &[OTHER, OTHER]), 10);
        // An existing series keeps counting after the cap.
        c.add(&TOKENS, &["user0", "m"], 5);
        assert_eq!(c.get(&TOKENS, &["user0", "m"]), 6);
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
