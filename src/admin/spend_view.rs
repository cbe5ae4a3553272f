//! Spend in `/stats` (JSON) and `/metrics` (Prometheus), from the spend thread's ledger: the
//! totals since the spend store began (they survive restarts), by subject, tenant and model.
//!
//! Both views show at most `cap` series (`metrics.label_series`): the most expensive ones;
//! the rest add up under `other`, so every total stays exact.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use super::prom::escape;
use crate::spend::price::{write_decimal, PICO_PER_MICRO};
use crate::spend::{Ledger, Names, Totals};

/// The label value of the series past the cap.
pub const OTHER: &str = "other";

fn totals_json(t: &Totals) -> Value {
    let mut spend = String::new();
    write_decimal(&mut spend, t.pico, 6);
    let micros = t.pico / u128::from(PICO_PER_MICRO);
    json!({
        "requests": t.requests,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "cached_tokens": t.cached_tokens,
        "spend": spend,
        "spend_micros": u64::try_from(micros).unwrap_or(u64::MAX),
    })
}

/// The `spend` object of `/stats`: the total, and totals by subject, tenant, model and by
/// all three (`series`, capped).
pub fn json(l: &Ledger, currency: &str, cap: usize) -> Value {
    let group = |name: fn(&Names) -> &str| -> Map<String, Value> {
        l.by(name)
            .into_iter()
            .map(|(k, t)| (k.to_owned(), totals_json(&t)))
            .collect()
    };
    let series: Vec<Value> = top(l, cap)
        .into_iter()
        .map(|(n, t)| {
            let mut v = totals_json(&t);
            v["subject"] = n.subject.as_ref().into();
            v["tenant"] = n.tenant.as_ref().into();
            v["model"] = n.model.as_ref().into();
            v
        })
        .collect();
    json!({
        "currency": currency,
        "total": totals_json(&l.total()),
        "by_subject": group(|n| &n.subject),
        "by_tenant": group(|n| &n.tenant),
        "by_model": group(|n| &n.model),
        "series": series,
    })
}

/// The `cap` most expensive series, then `other` with the rest (when there is a rest).
fn top(l: &Ledger, cap: usize) -> Vec<(Names, Totals)> {
    let mut all: Vec<(&Names, &Totals)> = l.series.values().map(|(n, t)| (&**n, t)).collect();
    all.sort_by(|a, b| {
        (b.1.pico, b.1.prompt_tokens + b.1.completion_tokens, b.0).cmp(&(
            a.1.pico,
            a.1.prompt_tokens + a.1.completion_tokens,
            a.0,
        ))
    });
    let mut out: Vec<(Names, Totals)> = all
        .iter()
        .take(cap)
        .map(|(n, t)| ((*n).clone(), **t))
        .collect();
    if all.len() > cap {
        let mut rest = Totals::default();
        for (_, t) in &all[cap..] {
            rest.add(t);
        }
        let other = Names {
            subject: OTHER.into(),
            tenant: OTHER.into(),
            model: OTHER.into(),
        };
        out.push((other, rest));
    }
    out
}

/// Appends `shardgate_spend_total{currency,subject,tenant,model}` (currency units) and
/// `shardgate_usage_tokens_total{subject,tenant,model,kind}` (prompt, completion, cached).
pub fn prometheus(l: &Ledger, currency: &str, cap: usize, o: &mut String) {
    let rows = top(l, cap);
    let labels = |n: &Names| {
        format!(
            "subject=\"{}\",tenant=\"{}\",model=\"{}\"",
            escape(&n.subject),
            escape(&n.tenant),
            escape(&n.model)
        )
    };
    let _ = writeln!(
        o,
        "# HELP shardgate_spend_total Cost of responses in the currency, by subject, tenant and model (kept across restarts)."
    );
    let _ = writeln!(o, "# TYPE shardgate_spend_total counter");
    for (n, t) in &rows {
        let _ = write!(
            o,
            "shardgate_spend_total{{currency=\"{}\",{}}} ",
            escape(currency),
            labels(n)
        );
        write_decimal(o, t.pico, 12);
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "# HELP shardgate_usage_tokens_total Tokens of responses by kind (prompt, completion, cached: the part of prompt read from the cache), by subject, tenant and model."
    );
    let _ = writeln!(o, "# TYPE shardgate_usage_tokens_total counter");
    for (n, t) in &rows {
        let l = labels(n);
        for (kind, v) in [
            ("prompt", t.prompt_tokens),
            ("completion", t.completion_tokens),
            ("cached", t.cached_tokens),
        ] {
            let _ = writeln!(o, "shardgate_usage_tokens_total{{{l},kind=\"{kind}\"}} {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spend::{SpendBatch, SpendDelta};
    use std::sync::Arc;

    fn ledger(n: u64) -> Ledger {
        let mut l = Ledger::default();
        let spend = (0..n)
            .map(|i| {
                let subject = format!("user{i}");
                SpendDelta {
                    key: crate::spend::series_key(&subject, "t", "m"),
                    names: Arc::new(Names {
                        subject: subject.into(),
                        tenant: "t".into(),
                        model: "m".into(),
                    }),
                    totals: Totals {
                        requests: 1,
                        prompt_tokens: i,
                        completion_tokens: 1,
                        cached_tokens: 0,
                        pico: u128::from(i) * 1_000_000,
                    },
                }
            })
            .collect();
        l.apply(&SpendBatch {
            spend,
            budgets: Vec::new(),
        });
        l
    }

    #[test]
    fn the_most_expensive_series_show_and_the_rest_add_up_under_other() {
        let l = ledger(10);
        let v = json(&l, "USD", 3);
        let series = v["series"].as_array().unwrap();
        let names: Vec<&str> = series
            .iter()
            .map(|s| s["subject"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["user9", "user8", "user7", OTHER]);
        assert_eq!(series[3]["spend_micros"], 21); // 0 + 1 + ... + 6
        assert_eq!(v["total"]["spend_micros"], 45);
        assert_eq!(v["total"]["spend"], "0.000045");
        assert_eq!(v["by_tenant"]["t"]["requests"], 10);
        assert_eq!(v["by_subject"].as_object().unwrap().len(), 10);
    }

    #[test]
    fn prometheus_rows_are_counters_with_escaped_labels() {
        let mut l = ledger(2);
        l.apply(&SpendBatch {
            spend: vec![SpendDelta {
                key: 99,
                names: Arc::new(Names {
                    subject: "q\"uote".into(),
                    tenant: "".into(),
                    model: "m".into(),
                }),
                totals: Totals {
                    requests: 1,
                    pico: 1,
                    ..Totals::default()
                },
            }],
            budgets: Vec::new(),
        });
        let mut o = String::new();
        prometheus(&l, "USD", 64, &mut o);
        assert!(o.contains(
            "shardgate_spend_total{currency=\"USD\",subject=\"user1\",tenant=\"t\",model=\"m\"} 0.000001000000\n"
        ), "{o}");
        assert!(
            o.contains("subject=\"q\\\"uote\",tenant=\"\",model=\"m\"} 0.000000000001"),
            "{o}"
        );
        assert!(o.contains("shardgate_usage_tokens_total{subject=\"user1\",tenant=\"t\",model=\"m\",kind=\"prompt\"} 1\n"));
    }
}
