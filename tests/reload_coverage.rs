//! What a reload applies, through the running gateway and its admin API: the admin token and
//! the access log settings apply at once; settings only a restart applies are named in the
//! `/reload` answer and in `/config`, and everything else in the same reload still applies.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shardgate::admin::{self, Admin, AdminState};
use shardgate::config;
use shardgate::control::{Control, Start};
use shardgate::runtime::Engine;

const TOKEN_A: &str = "first-admin-token-0123";
const TOKEN_B: &str = "second-admin-token-4567";

/// The gateway's config: two workers, `/v1/*rest` and `/z/*rest` to `up`, an admin token,
/// and `extra` (more tables).
fn config_text(listen: &str, workers: usize, up: SocketAddr, token: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nworkers = {workers}\npin = false\n\
         [[upstreams]]\nname = \"up\"\nendpoints = [\"{up}\"]\n\
         [[routes]]\npath = \"/v1/*rest\"\nupstream = \"up\"\n\
         [[routes]]\npath = \"/z/*rest\"\nupstream = \"up\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = {{ value = \"{token}\" }}\n{extra}"
    )
}

/// Engine, control thread and admin listener on a config file in a temp dir, wired as
/// `shardgate` wires them.
struct Rig {
    // Field order is drop order.
    admin: Admin,
    _control: Control,
    engine: Engine,
    up: Upstream,
    dir: PathBuf,
    cfg: PathBuf,
}

impl Rig {
    fn start(name: &str, text: impl FnOnce(SocketAddr, &Path) -> String) -> Rig {
        let up = Upstream::echo();
        let dir = std::env::temp_dir().join(format!("sg-coverage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gw.toml");
        std::fs::write(&cfg, text(up.addr, &dir)).unwrap();
        let snap = config::load(&cfg, 1).unwrap();
        let engine = Engine::start(snap.clone()).unwrap();
        let control = Control::spawn(Start {
            access_log: engine.access_log(),
            ..Start::new(cfg.clone(), snap, engine.inboxes())
        })
        .unwrap();
        let admin = Admin::start(
            "127.0.0.1:0".parse().unwrap(),
            AdminState {
                workers: engine.inboxes(),
                control: Some(control.sender()),
                view: control.view(),
                breakers: engine.coord_sender(),
                spend: engine.spend_sender(),
            },
        )
        .unwrap();
        Rig {
            admin,
            _control: control,
            engine,
            up,
            dir,
            cfg,
        }
    }

    fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        let (status, body) = admin::http::call(self.admin.local_addr(), method, path, token)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, v)
    }

    /// Writes `text` to the config file and reloads it with `token`: the answer.
    fn reload(&self, text: &str, token: &str) -> Value {
        std::fs::write(&self.cfg, text).unwrap();
        let (status, v) = self.call("POST", "/reload", Some(token));
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Waits until every worker runs on `generation`.
    fn wait_workers(&self, generation: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let gens: Vec<u64> = self
                .engine
                .collect()
                .iter()
                .map(|m| m.config_generation)
                .collect();
            if gens.len() == self.engine.worker_count() && gens.iter().all(|&g| g == generation) {
                return;
            }
            assert!(Instant::now() < deadline, "workers at {gens:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn a_reloaded_admin_token_replaces_the_old_one_at_once() {
    let rig = Rig::start("token", |up, _| {
        config_text("127.0.0.1:0", 2, up, TOKEN_A, "")
    });
    assert_eq!(rig.call("GET", "/config", Some(TOKEN_A)).0, 200);
    assert_eq!(rig.call("GET", "/config", Some(TOKEN_B)).0, 401);
    let text = config_text("127.0.0.1:0", 2, rig.up.addr, TOKEN_B, "");
    let v = rig.reload(&text, TOKEN_A);
    assert_eq!(strings(&v["needs_restart"]), Vec::<&str>::new(), "{v}");
    // The very next request is checked against the new token, on every endpoint.
    for path in ["/config", "/metrics", "/stats", "/breakers"] {
        assert_eq!(rig.call("GET", path, Some(TOKEN_A)).0, 401, "{path}");
    }
    let (status, conf) = rig.call("GET", "/config", Some(TOKEN_B));
    assert_eq!(status, 200);
    assert!(
        !conf.to_string().contains(TOKEN_B),
        "the token is never shown"
    );
    assert_eq!(rig.call("POST", "/reload", Some(TOKEN_A)).0, 401);
    // Probes never need one.
    assert_eq!(rig.call("GET", "/healthz", None).0, 200);
}

#[test]
fn restart_only_settings_are_named_and_the_rest_of_the_reload_applies() {
    let rig = Rig::start("restart", |up, _| {
        config_text("127.0.0.1:0", 2, up, TOKEN_A, "")
    });
    let gw = rig.engine.local_addr();
    let (_, conf) = rig.call("GET", "/config", Some(TOKEN_A));
    let reload = &conf["reload"];
    for key in [
        "routes",
        "upstreams",
        "auth",
        "quota.rules",
        "limits",
        "admin.token",
    ] {
        assert!(strings(&reload["applies"]).contains(&key), "{reload}");
    }
    for key in [
        "server.listen",
        "server.workers",
        "server.driver",
        "admin.listen",
    ] {
        assert!(strings(&reload["needs_restart"]).contains(&key), "{reload}");
    }
    assert_eq!(strings(&reload["pending_restart"]), Vec::<&str>::new());

    // A new listen address and worker count, a driver, and a new route in one reload.
    let moved = free_addr();
    let text = config_text(
        &moved.to_string(),
        1,
        rig.up.addr,
        TOKEN_A,
        "[[routes]]\npath = \"/v2/*rest\"\nupstream = \"up\"\n",
    )
    .replace("pin = false\n", "pin = false\ndriver = \"legacy\"\n");
    let v = rig.reload(&text, TOKEN_A);
    let want = ["server.listen", "server.workers", "server.driver"];
    assert_eq!(strings(&v["needs_restart"]), want, "{v}");
    let (_, conf) = rig.call("GET", "/config", Some(TOKEN_A));
    assert_eq!(strings(&conf["reload"]["pending_restart"]), want, "{conf}");
    // The route applied; the process still listens where and as it started.
    rig.wait_workers(v["generation"].as_u64().unwrap());
    assert_eq!(get(gw, "/v2/x").status, 200);
    assert_eq!(rig.engine.worker_count(), 2);
    assert!(
        std::net::TcpStream::connect(moved).is_err(),
        "nothing moved"
    );

    // Back to the start's values: nothing is pending any more.
    let text = config_text("127.0.0.1:0", 2, rig.up.addr, TOKEN_A, "");
    let v = rig.reload(&text, TOKEN_A);
    assert_eq!(strings(&v["needs_restart"]), Vec::<&str>::new(), "{v}");
    let (_, conf) = rig.call("GET", "/config", Some(TOKEN_A));
    assert_eq!(
        strings(&conf["reload"]["pending_restart"]),
        Vec::<&str>::new()
    );
}

#[test]
fn a_reloaded_access_log_path_and_sample_rate_apply() {
    let log = |dir: &Path, file: &str, rate: f64| {
        format!(
            "[access_log]\npath = \"{}\"\nsample_rate = {rate:?}\n",
            dir.join(file).display()
        )
    };
    let mut rig = Rig::start("access-log", |up, dir| {
        config_text("127.0.0.1:0", 2, up, TOKEN_A, &log(dir, "a.jsonl", 1.0))
    });
    let gw = rig.engine.local_addr();
    let lines = |file: &str| -> Vec<Value> {
        std::fs::read_to_string(rig.dir.join(file))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(get(gw, "/v1/a").status, 200);
    // Written on the worker's next flush.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines("a.jsonl").is_empty() {
        assert!(Instant::now() < deadline, "nothing logged to a.jsonl");
        thread::sleep(Duration::from_millis(20));
    }

    // A new file, and nothing sampled.
    let text = config_text(
        "127.0.0.1:0",
        2,
        rig.up.addr,
        TOKEN_A,
        &log(&rig.dir, "b.jsonl", 0.0),
    );
    let v = rig.reload(&text, TOKEN_A);
    assert_eq!(strings(&v["needs_restart"]), Vec::<&str>::new(), "{v}");
    rig.wait_workers(2);
    for i in 0..6 {
        assert_eq!(get(gw, &format!("/z/{i}")).status, 200);
    }
    // Everything sampled again, to the new file.
    let text = config_text(
        "127.0.0.1:0",
        2,
        rig.up.addr,
        TOKEN_A,
        &log(&rig.dir, "b.jsonl", 1.0),
    );
    rig.reload(&text, TOKEN_A);
    rig.wait_workers(3);
    for i in 0..4 {
        assert_eq!(get(gw, &format!("/v1/b{i}")).status, 200);
    }
    // Removing the table is not applied: it needs a restart.
    let text = config_text("127.0.0.1:0", 2, rig.up.addr, TOKEN_A, "");
    let v = rig.reload(&text, TOKEN_A);
    assert_eq!(strings(&v["needs_restart"]), ["access_log"], "{v}");

    // Flushes every worker's buffer and the writer.
    rig.engine.shutdown();
    let (a, b) = (lines("a.jsonl"), lines("b.jsonl"));
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(b.len(), 4, "{b:?}");
    assert!(b.iter().all(|l| l["route"] == "/v1/*rest"), "{b:?}");
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
