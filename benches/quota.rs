//! Data-path cost of a quota check with a lease in hand.
//!
//! `cargo bench --bench quota -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::quota::{
    Decision, KeyKind, Limits, QuotaCoordinator, QuotaRule, QuotaShard, RuleId, ToCoordinator,
};

const NOW_MS: u64 = 100;
/// Keys a busy core holds at once; the probed key sits among them.
const RESIDENT_KEYS: u64 = 10_000;

fn rule() -> QuotaRule {
    QuotaRule {
        id: RuleId(0),
        name: "bench".into(),
        key: KeyKind::Subject,
        model: None,
        limits: Limits {
            requests: u32::MAX,
            tokens: Some(u64::from(u32::MAX)),
            burst: None,
            window: shardgate::quota::Window::Minute,
        },
        reserve_max_tokens: false,
    }
}

/// A shard holding a granted lease for every resident key.
fn warmed_shard(rule: &QuotaRule) -> QuotaShard {
    let mut shard = QuotaShard::new(0);
    let mut coord = QuotaCoordinator::new(1);
    let (mut msgs, mut replies) = (Vec::<ToCoordinator>::new(), Vec::new());
    for i in 0..RESIDENT_KEYS {
        let key = rule.key_for(format!("subject-{i}").as_bytes());
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
    let rule = rule();
    let mut shard = warmed_shard(&rule);
    let key = rule.key_for(b"subject-4242");
    assert!(matches!(
        shard.check(key, &rule, 0, NOW_MS),
        Decision::Admit(_)
    ));

    c.bench_function("quota/check_with_lease", |b| {
        b.iter(|| black_box(shard.check(black_box(key), &rule, 0, black_box(NOW_MS))))
    });
    c.bench_function("quota/key_and_check_with_lease", |b| {
        b.iter(|| {
            let key = rule.key_for(black_box(b"subject-4242"));
            black_box(shard.check(key, &rule, 0, black_box(NOW_MS)))
        })
    });
    c.bench_function("quota/key_digest", |b| {
        b.iter(|| rule.key_for(black_box(b"subject-4242")))
    });
    // What the quota stage does before each check since recalls exist: one look at the
    // worker's (usually empty) inbox.
    let (_tx, inbox) = crossbeam_channel::unbounded::<u64>();
    c.bench_function("quota/inbox_poll_empty", |b| {
        b.iter(|| black_box(inbox.try_recv().is_err()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
