//! The `[budgets]` config table: token and currency budgets per caller and calendar period.
//!
//! ```toml
//! [budgets]
//! time_zone = "Europe/Berlin"   # where days and months begin (IANA name; default "UTC")
//! [[budgets.rules]]
//! name = "team-monthly"         # also the budget's identity: renaming it starts afresh
//! key = "tenant"                # "subject" | "tenant" | "api_key" | "client_ip": whose budget
//! model = "*"                   # a model name, or "*" (default): every model shares it
//! period = "month"              # "day" | "month" | "total"
//! tokens = 5_000_000            # a token budget (prompt + completion) ...
//! spend = 250.0                 # ... and/or a currency budget (`[spend]` prices)
//! soft_limit = 0.8              # warn from this share of the budget on (header + metric)
//! reserve_max_tokens = false    # take `max_tokens` (or its output price) up front
//! ```
//!
//! A budget is a quota rule whose token limit holds over a calendar window
//! ([`Window`](super::Window)) instead of the sliding minute, and which limits no requests: it
//! is enforced by the same leases, shards, recalls and backends (see the `quota` module docs),
//! so cores and hosts together never overrun it by more than the requests in flight when it
//! ran out. A rule with both `tokens` and `spend` is two budgets (one per unit) under one
//! name; a currency budget is counted in micro-units of `spend.currency`.
//!
//! A budget applies to a request when its model matches and the caller has the key: a
//! `subject` budget needs a verified caller, a `tenant` budget a caller with a tenant, an
//! `api_key` budget a caller who presented an API key (counted by the key's id); other
//! requests are not limited by it.

use serde::Deserialize;

use super::{KeyKind, Limits, QuotaKey, QuotaRule, RuleId, Window, UNLIMITED_REQUESTS};
use crate::config_types::ConfigProblem;

/// Most budgets (after splitting token and currency limits) in a config: every applicable one
/// is checked per request, and its ticket kept in a fixed array.
pub const MAX_BUDGETS: usize = 16;
const ANY_MODEL: &str = "*";

/// `[budgets]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    pub time_zone: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawBudget>,
}

/// One `[[budgets.rules]]` entry as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: String,
    pub key: KeyKind,
    pub model: Option<String>,
    pub period: Window,
    pub tokens: Option<u64>,
    pub spend: Option<f64>,
    pub soft_limit: Option<f64>,
    #[serde(default)]
    pub reserve_max_tokens: bool,
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetUnit {
    /// Prompt + completion tokens.
    Tokens,
    /// Micro-units of `spend.currency`.
    Spend,
}

impl BudgetUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetUnit::Tokens => "tokens",
            BudgetUnit::Spend => "spend",
        }
    }
}

/// One validated budget (one unit of one rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub name: String,
    pub key: KeyKind,
    /// `None`: every model.
    pub model: Option<String>,
    pub unit: BudgetUnit,
    /// The lease rule: no request limit, the budget as token limit over its calendar window.
    pub rule: QuotaRule,
    /// Warn once this much is used (the budget's unit).
    pub soft: Option<u64>,
}

impl Budget {
    /// The key of caller `who` (subject, tenant or client IP bytes): by name, so reloads and
    /// restarts keep it.
    #[inline]
    pub fn key_for(&self, who: &[u8]) -> QuotaKey {
        QuotaKey::named(&self.name, self.unit as u8, who)
    }

    /// The hard limit, in the budget's unit.
    pub fn limit(&self) -> u64 {
        self.rule.limits.tokens.unwrap_or(0)
    }

    pub fn applies_to(&self, model: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
    }
}

/// The validated `[budgets]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSettings {
    /// The IANA name as configured.
    pub time_zone: String,
    pub tz: jiff::tz::TimeZone,
    pub rules: Vec<Budget>,
}

impl RawBudgets {
    /// Checks the table; every problem is reported, keyed `budgets.rules[i].field`.
    pub fn validate(&self, problems: &mut Vec<ConfigProblem>) -> BudgetSettings {
        let time_zone = self.time_zone.clone().unwrap_or_else(|| "UTC".into());
        let tz = jiff::tz::TimeZone::get(&time_zone).unwrap_or_else(|e| {
            problems.push(ConfigProblem::new(
                "budgets.time_zone",
                format!("not a known IANA time zone: {e}"),
            ));
            jiff::tz::TimeZone::UTC
        });
        let mut rules = Vec::new();
        for (i, raw) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("budgets.rules[{i}].{f}");
            if raw.name.trim().is_empty() {
                problems.push(ConfigProblem::new(at("name"), "must not be empty"));
            }
            if self.rules[..i].iter().any(|r| r.name == raw.name) {
                problems.push(ConfigProblem::new(
                    at("name"),
                    format!("duplicate budget `{}`", raw.name),
                ));
            }
            if raw.period == Window::Minute {
                problems.push(ConfigProblem::new(
                    at("period"),
                    "must be \"day\", \"month\" or \"total\" (per-minute limits are [quota] rules)",
                ));
            }
            if raw.model.as_deref() == Some("") {
                problems.push(ConfigProblem::new(
                    at("model"),
                    "must be a model name or \"*\"",
                ));
            }
            if raw.tokens.is_none() && raw.spend.is_none() {
                problems.push(ConfigProblem::new(
                    at("tokens"),
                    "set `tokens`, `spend` or both",
                ));
            }
            if raw.tokens == Some(0) {
                problems.push(ConfigProblem::new(at("tokens"), "must be at least 1"));
            }
            let spend = raw.spend.map(|s| micros(s, &at("spend"), problems));
            let soft = raw.soft_limit.filter(|f| {
                let ok = f.is_finite() && *f > 0.0 && *f <= 1.0;
                if !ok {
                    problems.push(ConfigProblem::new(
                        at("soft_limit"),
                        "must be a share of the budget, above 0 and at most 1",
                    ));
                }
                ok
            });
            let model = raw.model.clone().filter(|m| m != ANY_MODEL);
            let units = [(BudgetUnit::Tokens, raw.tokens), (BudgetUnit::Spend, spend)];
            for (unit, limit) in units {
                let Some(limit) = limit.filter(|&l| l > 0) else {
                    continue;
                };
                rules.push(Budget {
                    name: raw.name.clone(),
                    key: raw.key,
                    model: model.clone(),
                    unit,
                    rule: QuotaRule {
                        id: RuleId(rules.len().min(usize::from(u16::MAX)) as u16),
                        name: raw.name.clone(),
                        key: raw.key,
                        model: model.clone(),
                        limits: Limits {
                            requests: UNLIMITED_REQUESTS,
                            tokens: Some(limit),
                            burst: None,
                            window: raw.period,
                        },
                        reserve_max_tokens: raw.reserve_max_tokens,
                    },
                    soft: soft.map(|f| ((limit as f64) * f).ceil() as u64),
                });
            }
        }
        if rules.len() > MAX_BUDGETS {
            problems.push(ConfigProblem::new(
                "budgets.rules",
                format!(
                    "{} budgets (a rule with both tokens and spend counts twice); at most {MAX_BUDGETS}",
                    rules.len()
                ),
            ));
        }
        BudgetSettings {
            time_zone,
            tz,
            rules,
        }
    }
}

/// A currency amount as micro-units (whole ones: `spend` budgets count micro-units).
fn micros(amount: f64, key: &str, problems: &mut Vec<ConfigProblem>) -> u64 {
    const MAX: f64 = 1e12;
    if !amount.is_finite() || amount <= 0.0 || amount > MAX {
        problems.push(ConfigProblem::new(
            key,
            format!("must be an amount above 0 and at most {MAX}"),
        ));
        return 0;
    }
    (amount * 1e6).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        budgets: RawBudgets,
    }

    fn parse(s: &str) -> RawBudgets {
        toml::from_str::<Doc>(s).expect("toml").budgets
    }

    #[test]
    fn a_rule_with_tokens_and_spend_is_two_budgets_under_one_name() {
        let mut problems = Vec::new();
        let s = parse(
            r#"[budgets]
            time_zone = "Europe/Berlin"
            [[budgets.rules]]
            name = "team"
            key = "tenant"
            period = "month"
            tokens = 1000
            spend = 2.5
            soft_limit = 0.8
            [[budgets.rules]]
            name = "alice-day"
            key = "subject"
            model = "llama"
            period = "day"
            tokens = 10
            reserve_max_tokens = true"#,
        )
        .validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.time_zone, "Europe/Berlin");
        let got: Vec<(&str, BudgetUnit, u64, Option<u64>)> = s
            .rules
            .iter()
            .map(|b| (b.name.as_str(), b.unit, b.limit(), b.soft))
            .collect();
        assert_eq!(
            got,
            [
                ("team", BudgetUnit::Tokens, 1000, Some(800)),
                ("team", BudgetUnit::Spend, 2_500_000, Some(2_000_000)),
                ("alice-day", BudgetUnit::Tokens, 10, None),
            ]
        );
        let (t, sp) = (&s.rules[0], &s.rules[1]);
        assert_ne!(t.key_for(b"acme"), sp.key_for(b"acme"));
        assert_eq!(t.rule.limits.window, Window::Month);
        assert_eq!(t.rule.limits.requests, UNLIMITED_REQUESTS);
        assert!(t.applies_to("anything"));
        assert!(s.rules[2].applies_to("llama") && !s.rules[2].applies_to("other"));
        assert_eq!(s.rules[2].rule.reservation(Some(50)), 10);
    }

    #[test]
    fn keys_are_by_name_not_position() {
        let mut problems: Vec<ConfigProblem> = Vec::new();
        let one = |order: &str| {
            let mut p = Vec::new();
            let s = parse(order).validate(&mut p);
            s.rules
                .iter()
                .find(|b| b.name == "b")
                .map(|b| b.key_for(b"x"))
                .unwrap()
        };
        let a = "[[budgets.rules]]\nname='a'\nkey='subject'\nperiod='day'\ntokens=1\n";
        let b = "[[budgets.rules]]\nname='b'\nkey='subject'\nperiod='day'\ntokens=1\n";
        assert_eq!(
            one(&format!("[budgets]\n{a}{b}")),
            one(&format!("[budgets]\n{b}{a}"))
        );
        assert_ne!(
            one(&format!("[budgets]\n{b}")),
            QuotaKey::new(RuleId(0), b"x"),
            "a named key never meets a positional one"
        );
        problems.clear();
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut problems = Vec::new();
        parse(
            r#"[budgets]
            time_zone = "Mars/Olympus"
            [[budgets.rules]]
            name = ""
            key = "subject"
            model = ""
            period = "minute"
            soft_limit = 1.5
            [[budgets.rules]]
            name = "b"
            key = "tenant"
            period = "day"
            tokens = 0
            spend = -1.0
            [[budgets.rules]]
            name = "b"
            key = "tenant"
            period = "total"
            spend = 1.0"#,
        )
        .validate(&mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "budgets.time_zone",
                "budgets.rules[0].name",
                "budgets.rules[0].period",
                "budgets.rules[0].model",
                "budgets.rules[0].tokens",
                "budgets.rules[0].soft_limit",
                "budgets.rules[1].tokens",
                "budgets.rules[1].spend",
                "budgets.rules[2].name",
            ]
        );
        assert!(toml::from_str::<Doc>(
            "[budgets]\n[[budgets.rules]]\nname='a'\nkey='subject'\nperiod='week'\n"
        )
        .is_err());
    }

    #[test]
    fn too_many_budgets_are_refused() {
        let mut text = String::from("[budgets]\n");
        for i in 0..9 {
            text.push_str(&format!(
                "[[budgets.rules]]\nname='b{i}'\nkey='subject'\nperiod='day'\ntokens=1\nspend=1.0\n"
            ));
        }
        let mut problems = Vec::new();
        parse(&text).validate(&mut problems);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "budgets.rules");
    }
}
