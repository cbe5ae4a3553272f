//! Data-path cost of spend accounting and budgets, against the quota check measured in the
//! same run (the baseline: the same lease machinery with a sliding-minute rule).
//!
//! `cargo bench --bench spend -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::quota::budget::{Budget, RawBudgets};
use shardgate::quota::usage::Usage;
use shardgate::quota::{
    Decision, KeyKind, Limits, QuotaCoordinator, QuotaKey, QuotaRule, QuotaShard, RuleId,
    ToCoordinator, Window,
};
use shardgate::spend::{PriceTable, RawPrice, SpendShard};

const NOW_MS: u64 = 100;
/// Callers a busy core has seen since its last batch; the probed one sits among them.
const RESIDENT: u64 = 10_000;

fn minute_rule() -> QuotaRule {
    QuotaRule {
        id: RuleId(0),
        name: "bench".into(),
        key: KeyKind::Subject,
        model: None,
        limits: Limits {
            requests: u32::MAX,
            tokens: Some(u64::from(u32::MAX)),
            burst: None,
            window: Window::Minute,
        },
        reserve_max_tokens: false,
    }
}

fn daily_budget() -> Budget {
    let raw: RawBudgets = toml::from_str(
        "[[rules]]\nname = \"daily\"\nkey = \"subject\"\nperiod = \"day\"\ntokens = 1000000000000\n",
    )
    .unwrap();
    let mut problems = Vec::new();
    let s = raw.validate(&mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    s.rules.into_iter().next().unwrap()
}

/// A shard holding a granted lease of `rule` for every resident key (`key_of(i)`).
fn warmed_shard(rule: &QuotaRule, key_of: impl Fn(u64) -> QuotaKey) -> QuotaShard {
    let mut shard = QuotaShard::new(0);
    let mut coord = QuotaCoordinator::new(1);
    let (mut msgs, mut replies) = (Vec::<ToCoordinator>::new(), Vec::new());
    for i in 0..RESIDENT {
        let key = key_of(i);
        assert_eq!(shard.check(key, rule, 0, NOW_MS), Decision::NeedLease);
        shard.drain_requests(&mut msgs);
        for m in msgs.drain(..) {
            coord.handle(m, NOW_MS, &mut replies);
        }
        for (_, r) in replies.drain(..) {
            shard.apply(r, NOW_MS);
        }
    }
    shard
}

fn bench(c: &mut Criterion) {
    // Baseline: the quota stage's check (key digest + lease decision).
    let rule = minute_rule();
    let mut quota = warmed_shard(&rule, |i| rule.key_for(format!("subject-{i}").as_bytes()));
    c.bench_function("baseline/quota_key_and_check", |b| {
        b.iter(|| {
            let key = rule.key_for(black_box(b"subject-4242"));
            black_box(quota.check(key, &rule, 0, black_box(NOW_MS)))
        })
    });

    // A budget: the same check on a calendar window, keyed by name.
    let budget = daily_budget();
    let mut budgets = warmed_shard(&budget.rule, |i| {
        budget.key_for(format!("subject-{i}").as_bytes())
    });
    assert!(matches!(
        budgets.check(budget.key_for(b"subject-4242"), &budget.rule, 0, NOW_MS),
        Decision::Admit(_)
    ));
    c.bench_function("budget/key_and_check", |b| {
        b.iter(|| {
            let key = budget.key_for(black_box(b"subject-4242"));
            black_box(budgets.check(key, &budget.rule, 0, black_box(NOW_MS)))
        })
    });

    // Pricing: the deployment's price (one index) or the model's (one hash probe), and the
    // exact integer cost.
    let raw = [
        RawPrice {
            model: "*".into(),
            input: 0.5,
            output: 1.5,
            cached_input: None,
        },
        RawPrice {
            model: "llama3-70b".into(),
            input: 0.6,
            output: 0.8,
            cached_input: Some(0.15),
        },
    ];
    let mut problems = Vec::new();
    let deployments = [("llama3-70b", "3.2.1"), ("qwen2-72b", "2.1.0")];
    let prices = PriceTable::build(&raw, deployments.into_iter(), &mut problems);
    assert!(problems.is_empty());
    let usage = Usage::from_parts(812, 233, 512);
    c.bench_function("spend/price_by_deployment_and_cost", |b| {
        b.iter(|| {
            let p = prices.lookup(black_box(Some(0)), black_box("llama3-70b"));
            black_box(p.map(|p| p.cost(black_box(&usage))))
        })
    });
    c.bench_function("spend/price_by_model_and_cost", |b| {
        b.iter(|| {
            let p = prices.lookup(black_box(None), black_box("llama3-70b"));
            black_box(p.map(|p| p.cost(black_box(&usage))))
        })
    });

    // Recording: one series among RESIDENT seen ones (no allocation).
    let mut shard = SpendShard::default();
    for i in 0..RESIDENT {
        shard.record(&format!("subject-{i}"), "acme", "llama3-70b", None, None);
    }
    c.bench_function("spend/record_seen_series", |b| {
        b.iter(|| {
            shard.record(
                black_box("subject-4242"),
                black_box("acme"),
                black_box("llama3-70b"),
                Some(black_box(&usage)),
                Some(black_box(1_000_000)),
            )
        })
    });
    let key = budget.key_for(b"subject-4242");
    c.bench_function("budget/record_use", |b| {
        b.iter(|| shard.record_budget(black_box(key), black_box(0), black_box(1_045)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
