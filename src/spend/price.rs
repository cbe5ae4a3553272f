//! The price table: what a million tokens of each kind cost, per model or deployment, and the
//! cost of one response in integer pico-units.
//!
//! ```toml
//! [spend]
//! currency = "USD"                 # a label for /metrics, /stats and the access log
//! [[spend.prices]]
//! model = "llama-70b"              # a model name, "model@version" (one deployment), or "*"
//! input = 0.60                     # per million prompt tokens not served from the cache
//! output = 0.80                    # per million completion tokens
//! cached_input = 0.15              # per million cached prompt tokens (default: `input`)
//! ```
//!
//! # Units
//!
//! A price is kept as **micro-units per million tokens**, which is the same integer as
//! pico-units (10⁻¹² of the currency) per token, so a response's cost is an exact integer
//! product: `uncached × input + cached × cached_input + completion × output` pico-units. No
//! float is ever accumulated; a price is converted from the config's decimal once, at load,
//! and must be a whole number of micro-units per million tokens.
//!
//! # Lookup
//!
//! A response is priced by its deployment's `model@version` entry, else its model's entry,
//! else the `*` entry, else not at all (its tokens are still counted; its cost is unknown).
//! Deployment prices are resolved when the config is validated, so the data path does one
//! index for a split route or one hash probe on the model name.

use std::collections::HashMap;

use serde::Deserialize;

use crate::config_types::ConfigProblem;
use crate::quota::usage::Usage;

/// Pico-units (10⁻¹² currency) in one currency unit.
pub const PICO_PER_UNIT: u128 = 1_000_000_000_000;
/// Pico-units in one micro-unit (the unit budgets are enforced in).
pub const PICO_PER_MICRO: u64 = 1_000_000;
/// Highest price accepted per million tokens (a typo guard: a million currency units).
pub const MAX_PRICE_PER_MILLION: f64 = 1_000_000.0;
/// The entry every model without one of its own uses.
pub const ANY_MODEL: &str = "*";

/// One `[[spend.prices]]` entry as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub model: String,
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
}

/// Prices of one model or deployment, in micro-units per million tokens (= pico-units per
/// token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
}

impl Price {
    /// What `u` cost, in pico-units (saturating; a single response cannot reach it).
    #[inline]
    pub fn cost(&self, u: &Usage) -> u64 {
        let part = |tokens: u32, price: u64| u64::from(tokens).saturating_mul(price);
        part(u.uncached_prompt(), self.input)
            .saturating_add(part(
                u.cached_tokens.min(u.prompt_tokens),
                self.cached_input,
            ))
            .saturating_add(part(u.completion_tokens, self.output))
    }
}

type NameMap<V> = HashMap<Box<str>, V, foldhash::fast::FixedState>;

/// The validated price table (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    by_model: NameMap<Price>,
    /// By `DeploymentId` index: the `model@version` entry, else the model's, else `*`'s.
    by_deployment: Vec<Option<Price>>,
    any: Option<Price>,
    /// The entries as configured (for `/config`): name → price.
    pub entries: Vec<(String, Price)>,
}

impl PriceTable {
    /// Checks `raw` (keys `spend.prices[i].*`); `deployments` names each deployment, in
    /// `DeploymentId` order, as (model, version).
    pub fn build<'a>(
        raw: &[RawPrice],
        deployments: impl Iterator<Item = (&'a str, &'a str)>,
        problems: &mut Vec<ConfigProblem>,
    ) -> PriceTable {
        let mut t = PriceTable::default();
        let mut exact: NameMap<Price> = NameMap::default();
        for (i, p) in raw.iter().enumerate() {
            let at = |f: &str| format!("spend.prices[{i}].{f}");
            if p.model.trim().is_empty() {
                problems.push(ConfigProblem::new(at("model"), "must not be empty"));
            }
            if raw[..i].iter().any(|o| o.model == p.model) {
                problems.push(ConfigProblem::new(
                    at("model"),
                    format!("duplicate price for `{}`", p.model),
                ));
            }
            let input = micros(p.input, &at("input"), problems);
            let price = Price {
                input,
                output: micros(p.output, &at("output"), problems),
                cached_input: p
                    .cached_input
                    .map_or(input, |c| micros(c, &at("cached_input"), problems)),
            };
            t.entries.push((p.model.clone(), price));
            if p.model == ANY_MODEL {
                t.any = Some(price);
            } else if p.model.contains('@') {
                exact.insert(p.model.as_str().into(), price);
            } else {
                t.by_model.insert(p.model.as_str().into(), price);
            }
        }
        let mut named = String::new();
        for (model, version) in deployments {
            named.clear();
            named.push_str(model);
            named.push('@');
            named.push_str(version);
            let price = exact
                .remove(named.as_str())
                .or_else(|| t.by_model.get(model).copied())
                .or(t.any);
            t.by_deployment.push(price);
        }
        for (name, _) in &t.entries {
            if exact.contains_key(name.as_str()) {
                let i = t.entries.iter().position(|(n, _)| n == name).unwrap_or(0);
                problems.push(ConfigProblem::new(
                    format!("spend.prices[{i}].model"),
                    format!(
                        "no deployment `{name}` (write model@version of a [[deployments]] entry)"
                    ),
                ));
            }
        }
        t
    }

    /// The price of a response from deployment `deployment` (a split's choice) or for `model`.
    #[inline]
    pub fn lookup(&self, deployment: Option<u32>, model: &str) -> Option<Price> {
        if let Some(d) = deployment {
            if let Some(p) = self.by_deployment.get(d as usize) {
                return *p;
            }
        }
        self.by_model.get(model).copied().or(self.any)
    }
}

/// `per_million` currency units per million tokens as micro-units per million tokens.
fn micros(per_million: f64, key: &str, problems: &mut Vec<ConfigProblem>) -> u64 {
    if !per_million.is_finite() || !(0.0..=MAX_PRICE_PER_MILLION).contains(&per_million) {
        problems.push(ConfigProblem::new(
            key,
            format!("must be a price between 0 and {MAX_PRICE_PER_MILLION} per million tokens"),
        ));
        return 0;
    }
    let scaled = per_million * 1e6;
    let whole = scaled.round();
    // The decimal the config wrote, read as a double, is within a few ulps of a whole number
    // of micro-units when it has at most six decimals.
    if (scaled - whole).abs() > 1e-6 * whole.max(1.0) {
        problems.push(ConfigProblem::new(
            key,
            "has more than 6 decimals (prices are kept in millionths of the currency per million tokens)",
        ));
    }
    whole as u64
}

/// Writes `pico` pico-units as a decimal of the currency with `decimals` (≤ 12) digits, rounded
/// down (no allocation: `out` is a reused buffer).
pub fn write_decimal(out: &mut impl std::fmt::Write, pico: u128, decimals: u32) {
    let decimals = decimals.min(12);
    let whole = pico / PICO_PER_UNIT;
    let frac = (pico % PICO_PER_UNIT) / 10u128.pow(12 - decimals);
    if decimals == 0 {
        let _ = write!(out, "{whole}");
    } else {
        let _ = write!(out, "{whole}.{frac:0width$}", width = decimals as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(model: &str, input: f64, output: f64, cached: Option<f64>) -> RawPrice {
        RawPrice {
            model: model.into(),
            input,
            output,
            cached_input: cached,
        }
    }

    #[test]
    fn cost_is_exact_in_pico_units() {
        // $2.50 / $10.00 / $1.25 per million: GPT-4o's list prices.
        let p = Price {
            input: 2_500_000,
            output: 10_000_000,
            cached_input: 1_250_000,
        };
        let u = Usage::from_parts(2_006, 300, 1_920);
        // 86 uncached × 2.5e-6 + 1920 × 1.25e-6 + 300 × 1e-5 = 0.000215 + 0.0024 + 0.003
        assert_eq!(p.cost(&u), 5_615_000_000);
        assert_eq!(p.cost(&Usage::default()), 0);
        let mut s = String::new();
        write_decimal(&mut s, u128::from(p.cost(&u)), 6);
        assert_eq!(s, "0.005615");
    }

    #[test]
    fn lookup_prefers_the_deployment_then_the_model_then_star() {
        let mut problems = Vec::new();
        let t = PriceTable::build(
            &[
                raw("*", 1.0, 2.0, None),
                raw("llama", 0.5, 0.6, Some(0.25)),
                raw("llama@v2", 0.4, 0.4, None),
            ],
            [("llama", "v1"), ("llama", "v2"), ("mistral", "v1")].into_iter(),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let price = |i: u64, o: u64, c: u64| Price {
            input: i,
            output: o,
            cached_input: c,
        };
        assert_eq!(
            t.lookup(Some(0), "llama"),
            Some(price(500_000, 600_000, 250_000))
        );
        assert_eq!(
            t.lookup(Some(1), "llama"),
            Some(price(400_000, 400_000, 400_000))
        );
        assert_eq!(
            t.lookup(Some(2), "mistral"),
            Some(price(1_000_000, 2_000_000, 1_000_000))
        );
        assert_eq!(
            t.lookup(None, "llama"),
            Some(price(500_000, 600_000, 250_000))
        );
        assert_eq!(
            t.lookup(None, "other"),
            Some(price(1_000_000, 2_000_000, 1_000_000))
        );
        let t = PriceTable::build(
            &[raw("a", 1.0, 1.0, None)],
            std::iter::empty(),
            &mut problems,
        );
        assert_eq!(t.lookup(None, "b"), None);
        assert_eq!(t.lookup(Some(7), "a").map(|p| p.output), Some(1_000_000));
    }

    #[test]
    fn every_bad_price_is_reported_with_its_key() {
        let mut problems = Vec::new();
        PriceTable::build(
            &[
                raw("", -1.0, f64::NAN, Some(2e6)),
                raw("m", 0.0000001, 1.0, None),
                raw("m", 1.0, 1.0, None),
                raw("x@v9", 1.0, 1.0, None),
            ],
            [("x", "v1")].into_iter(),
            &mut problems,
        );
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "spend.prices[0].model",
                "spend.prices[0].input",
                "spend.prices[0].output",
                "spend.prices[0].cached_input",
                "spend.prices[1].input",
                "spend.prices[2].model",
                "spend.prices[3].model",
            ]
        );
    }

    #[test]
    fn decimal_prices_with_six_places_are_exact() {
        let mut problems = Vec::new();
        for (v, want) in [
            (0.15, 150_000),
            (0.075, 75_000),
            (0.01875, 18_750),
            (0.000001, 1),
            (3.0, 3_000_000),
            (123456.789012, 123_456_789_012),
        ] {
            assert_eq!(micros(v, "k", &mut problems), want, "{v}");
        }
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn decimals_are_written_without_floats() {
        let cases: [(u128, u32, &str); 5] = [
            (0, 6, "0.000000"),
            (1, 12, "0.000000000001"),
            (1_999_999_999_999, 6, "1.999999"),
            (u128::from(u64::MAX), 2, "18446744.07"),
            (5 * PICO_PER_UNIT, 0, "5"),
        ];
        for (pico, d, want) in cases {
            let mut s = String::new();
            write_decimal(&mut s, pico, d);
            assert_eq!(s, want);
        }
    }
}
