//! Route stage micro-benchmarks: trie lookup among 1,000 routes, model selection, and target
//! choice (weighted random and sticky).
//!
//! `cargo bench --bench route -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::route::{
    RawDeployment, RawRoute, RawTarget, RouteTarget, Router, SelectCtx, WorkerRng,
};

fn raw_route(path: String, methods: Option<Vec<String>>) -> RawRoute {
    RawRoute {
        path,
        methods,
        models: vec![],
        upstream: Some("mock".into()),
        targets: None,
        all_matching_versions: false,
        label_header: None,
        sticky: None,
        fallbacks: vec![],
        auth: Default::default(),
        scope: None,
        timeouts: None,
        retryable: false,
        transform: None,
    }
}

/// 1,000 routes: static, parameterised and wildcard patterns under 250 prefixes.
fn thousand_routes() -> Router {
    let mut routes = Vec::new();
    for i in 0..250 {
        routes.push(raw_route(
            format!("/v1/svc{i}/items"),
            Some(vec!["GET".into()]),
        ));
        routes.push(raw_route(format!("/v1/svc{i}/items/:id"), None));
        routes.push(raw_route(
            format!("/v1/svc{i}/items/:id/versions/:ver"),
            None,
        ));
        routes.push(raw_route(format!("/static/svc{i}/*rest"), None));
    }
    Router::build(&routes, &[], &["mock"]).expect("bench routes are valid")
}

fn split_router() -> Router {
    let deployments: Vec<RawDeployment> = ["a", "b", "c", "d"]
        .iter()
        .map(|m| RawDeployment {
            model: (*m).into(),
            version: "1.0.0".into(),
            endpoints: vec!["127.0.0.1:9000".into()],
            ..RawDeployment::default()
        })
        .collect();
    let targets = [("a", 40), ("b", 30), ("c", 20), ("d", 10)]
        .iter()
        .map(|&(m, w)| RawTarget {
            model: m.into(),
            version: "*".into(),
            weight: w,
        })
        .collect();
    let mut route = raw_route("/v1/chat/completions".into(), None);
    route.upstream = None;
    route.targets = Some(targets);
    Router::build(&[route], &deployments, &[]).expect("bench split is valid")
}

fn lookup(c: &mut Criterion) {
    let router = thousand_routes();
    let paths = [
        "/v1/svc17/items",
        "/v1/svc123/items/abc",
        "/v1/svc249/items/abc/versions/7",
        "/static/svc200/css/site.css",
    ];
    for p in paths {
        assert!(router.lookup("GET", p).is_ok(), "{p}");
    }
    let mut i = 0;
    c.bench_function("lookup_1000_routes", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            let m = router
                .lookup(black_box("GET"), black_box(paths[i]))
                .unwrap();
            black_box(router.select_by_model(&m, None).unwrap().id())
        })
    });
    c.bench_function("lookup_1000_routes_not_found", |b| {
        b.iter(|| {
            black_box(router.lookup(black_box("GET"), black_box("/v1/svc99/nothing/here"))).is_err()
        })
    });
}

fn choose(c: &mut Criterion) {
    let router = split_router();
    let route = &router.routes()[0];
    let RouteTarget::Split(split) = route.target() else {
        unreachable!("split route")
    };
    let mut rng = WorkerRng::new(7);
    c.bench_function("choose_weighted_random_4", |b| {
        b.iter(|| {
            let c = router.choose(split, black_box(&SelectCtx::default()), |_| true, &mut rng);
            black_box(c.map(|c| c.deployment))
        })
    });
    let ctx = SelectCtx {
        label: None,
        sticky_key: Some(b"3f2a9c1e-5b7d-4e8f-a0c2-1d3e5f7a9b0c"),
    };
    c.bench_function("choose_sticky_4", |b| {
        b.iter(|| {
            let c = router.choose(split, black_box(&ctx), |_| true, &mut rng);
            black_box(c.map(|c| c.deployment))
        })
    });
}

criterion_group!(benches, lookup, choose);
criterion_main!(benches);
