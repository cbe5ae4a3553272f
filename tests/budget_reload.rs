//! Budgets are protection: a watched config edit that removes `[budgets]`, removes a budget
//! rule or raises a hard limit is refused (the budget keeps refusing, the generation stays),
//! and the same file asked for explicitly (`POST /reload`) is applied, answered with each
//! loss named, through the real gateway on loopback.

mod common;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shardgate::admin::{Admin, AdminState};
use shardgate::config;
use shardgate::control::{lock_view, Control, Start, WatchSettings};
use shardgate::runtime::Engine;
use shardgate_mock::{self as mock, MockConfig};

const WATCH: WatchSettings = WatchSettings {
    interval: Duration::from_millis(40),
    settle: Duration::from_millis(300),
};
const ADMIN_TOKEN: &str = "budget-reload-admin-token";

/// One tenant budget of 1 token a day (the first response uses it up) and a second rule.
const BUDGETS: &str = "[budgets]\n\
    [[budgets.rules]]\nname = \"team\"\nkey = \"tenant\"\nperiod = \"day\"\ntokens = 1\n\
    [[budgets.rules]]\nname = \"per-user\"\nkey = \"subject\"\nperiod = \"month\"\ntokens = 1000000000\n";

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn lowering_budgets_is_refused_when_watched_and_applied_when_asked() {
    let up = mock::spawn(
        MockConfig {
            model: "m".into(),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        1,
    )
    .unwrap();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = {{ value = \"{ADMIN_TOKEN}\" }}\n{}{}",
        chat_model(up.addr()),
        auth_hs256("tenant_claim = \"org\"\n"),
    );
    // Without the rule that refuses (`team`), the other one kept.
    let without_team = format!(
        "[budgets]\n[[budgets.rules]]{}",
        BUDGETS.split("[[budgets.rules]]").nth(2).unwrap()
    );
    // (what, the [budgets] after, the loss keys the explicit reload reports)
    let cases: [(&str, String, &[&str]); 3] = [
        ("section removed", String::new(), &["budgets"]),
        ("one rule removed", without_team, &["budgets.rules"]),
        (
            "hard limit raised",
            BUDGETS.replace("tokens = 1\n", "tokens = 1000000000\n"),
            &["budgets.rules"],
        ),
    ];
    for (what, after, keys) in cases {
        let dir = std::env::temp_dir().join(format!(
            "sg-budget-reload-{}-{}",
            what.replace(' ', "-"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gw.toml");
        std::fs::write(&cfg, format!("{base}{BUDGETS}")).unwrap();
        let snap = config::load(&cfg, 1).unwrap();
        let engine = Engine::start(snap.clone()).unwrap();
        let control = Control::spawn(Start {
            watch: WATCH,
            ..Start::new(cfg.clone(), snap, engine.inboxes())
        })
        .unwrap();
        let admin = Admin::start(
            "127.0.0.1:0".parse().unwrap(),
            AdminState {
                workers: engine.inboxes(),
                control: Some(control.sender()),
                view: control.view(),
                breakers: None,
                spend: engine.spend_sender(),
            },
        )
        .unwrap();
        let token = hs256(&format!(
            r#"{{"sub":"alice","org":"acme","exp":{}}}"#,
            unix_now() + 600
        ));
        let (h, v) = bearer(&token);
        let chat = || {
            post_json(
                engine.local_addr(),
                "/v1/chat/completions",
                &[(h, &v)],
                &chat_body("m"),
            )
        };
        assert_eq!(chat().status, 200, "{what}: the first response");
        // The budget's use arrives with the worker's next report; then it refuses.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = chat();
            if r.status == 429 {
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(body["error"]["type"], "budget_exceeded", "{what}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: never refused: {}",
                r.status
            );
            thread::sleep(Duration::from_millis(20));
        }

        // Watched: refused, the budget stays in force.
        write_atomic(&cfg, &format!("{base}{after}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let why = loop {
            let status = lock_view(&control.view()).status.clone();
            if status.refused >= 1 {
                break status.last_refused.unwrap_or_default();
            }
            assert!(Instant::now() < deadline, "{what}: not refused: {status:?}");
            thread::sleep(Duration::from_millis(10));
        };
        assert!(why.contains("budget"), "{what}: {why}");
        assert_eq!(lock_view(&control.view()).status.generation, 1, "{what}");
        assert_eq!(chat().status, 429, "{what}: the budget is still in force");

        // Explicit: applied, each loss named.
        let (n, t) = bearer(ADMIN_TOKEN);
        let r = send(admin.local_addr(), "POST", "/reload", &[(n, &t)], None);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["generation"], 2, "{what}: {v}");
        let got: Vec<&str> = v["lowered_protection"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["key"].as_str().unwrap())
            .collect();
        assert_eq!(got, keys, "{what}: {v}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while chat().status != 200 {
            assert!(
                Instant::now() < deadline,
                "{what}: the explicit reload did not apply"
            );
            thread::sleep(Duration::from_millis(10));
        }
        drop((admin, control, engine));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
