//! A config file rewritten in place (truncated, then written in pieces, as editors and
//! config-management tools do) must never lower the protection in force, not even for a
//! moment. Each case writes a prefix that is valid TOML but less protective (no `[auth]`, no
//! `[quota]`, fewer routes, an empty file, a mistaken edit), pauses either shorter than the
//! watch's settle interval or until the watcher has seen the prefix settle, then writes the
//! rest. Meanwhile clients send requests without a token (none may ever get 200) and with one
//! (each must carry the quota headers). The final file must be applied.
//!
//! The explicit path (`POST /reload`) applies a protection-lowering file, and says so.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use shardgate::admin::{Admin, AdminState};
use shardgate::config;
use shardgate::control::{lock_view, Control, Start, WatchSettings};
use shardgate::runtime::Engine;

/// Short intervals so a test pauses past the settle interval in well under a second.
const WATCH: WatchSettings = WatchSettings {
    interval: Duration::from_millis(40),
    settle: Duration::from_millis(300),
};
const ADMIN_TOKEN: &str = "reload-safety-admin-token";

/// The sections of the protected config, so each case can order them and cut the file
/// where it wants.
struct Sections {
    server: String,
    upstream: String,
    routes: Vec<String>,
    auth: String,
    quota: String,
    admin: String,
}

impl Sections {
    fn new(up: SocketAddr) -> Sections {
        Sections {
            server: "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n".into(),
            upstream: upstream("up", &[up], ""),
            routes: vec![
                route("/v1/*rest", "up", ""),
                route("/v2/*rest", "up", ""),
                route("/v3/*rest", "up", ""),
                route("/health", "up", "auth = false"),
            ],
            auth: auth_hs256(""),
            quota: "[quota]\n".to_string()
                + &quota_rule(
                    "per-user",
                    "subject",
                    "model = \"*\"\nrequests_per_minute = 1000000",
                ),
            admin: admin_listen("127.0.0.1:0".parse().unwrap(), ADMIN_TOKEN),
        }
    }

    /// The full file with sections in `order` (names: server, upstream, routes, auth, quota,
    /// admin); `extra_route` is appended to the routes (the "final" change of a case).
    fn text(&self, order: &[&str], extra_route: Option<&str>) -> String {
        let mut out = String::new();
        for part in order {
            match *part {
                "server" => out += &self.server,
                "upstream" => out += &self.upstream,
                "routes" => {
                    for r in &self.routes {
                        out += r;
                    }
                    if let Some(p) = extra_route {
                        out += &route(p, "up", "");
                    }
                }
                "auth" => out += &self.auth,
                "quota" => out += &self.quota,
                "admin" => out += &self.admin,
                other => panic!("no section {other}"),
            }
        }
        out
    }
}

/// What the clients saw that they must never see.
#[derive(Default)]
struct Watchdog {
    requests: AtomicU64,
    /// Requests without a token answered 200.
    unauthenticated_ok: AtomicU64,
    /// Requests with a token answered 200 without the quota's headers.
    unlimited_ok: AtomicU64,
}

/// Sends requests to the protected routes, with and without a token, until `stop`; returns
/// the first few violations it saw.
fn clients(
    gw: SocketAddr,
    stop: Arc<AtomicBool>,
    dog: Arc<Watchdog>,
) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut first = Vec::new();
        let mut violation = |counter: &AtomicU64, what: String| {
            counter.fetch_add(1, Ordering::Relaxed);
            if first.len() < 5 {
                first.push(what);
            }
        };
        let bearer = token("alice");
        let mut conn = Client::connect(gw);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let path = ["/v1/a", "/v2/b", "/v3/c"][(i % 3) as usize];
            let with_token = i % 2 == 0;
            let auth = if with_token {
                format!("Authorization: Bearer {bearer}\r\n")
            } else {
                String::new()
            };
            conn.send(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n").as_bytes());
            let Some(r) = conn.read_response() else {
                conn = Client::connect(gw);
                continue;
            };
            dog.requests.fetch_add(1, Ordering::Relaxed);
            if r.status == 200 && !with_token {
                violation(
                    &dog.unauthenticated_ok,
                    format!("GET {path} without a token: 200"),
                );
            }
            if r.status == 200 && with_token && r.header("x-ratelimit-limit").is_none() {
                violation(
                    &dog.unlimited_ok,
                    format!("GET {path}: 200 without quota headers"),
                );
            }
            if r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            {
                conn = Client::connect(gw);
            }
        }
        first
    })
}

/// A gateway with a control thread on a config file in a temp dir.
struct Rig {
    control: Control,
    engine: Engine,
    up: Upstream,
    dir: PathBuf,
    cfg: PathBuf,
}

impl Rig {
    fn start(name: &str, text: impl FnOnce(SocketAddr) -> String) -> Rig {
        let up = Upstream::echo();
        let dir =
            std::env::temp_dir().join(format!("sg-reload-safety-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gw.toml");
        std::fs::write(&cfg, text(up.addr)).unwrap();
        let snap = config::load(&cfg, 1).unwrap();
        let engine = Engine::start(snap.clone()).unwrap();
        let control = Control::spawn(Start {
            watch: WATCH,
            ..Start::new(cfg.clone(), snap, engine.inboxes())
        })
        .unwrap();
        Rig {
            control,
            engine,
            up,
            dir,
            cfg,
        }
    }

    fn gw(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    fn generation(&self) -> u64 {
        lock_view(&self.control.view()).status.generation
    }

    fn refused(&self) -> u64 {
        lock_view(&self.control.view()).status.refused
    }

    /// Waits until `cond` holds on the reload status (bounded; the watcher polls every 40 ms).
    fn wait_for(&self, what: &str, cond: impl Fn(&shardgate::control::ReloadStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = lock_view(&self.control.view()).status.clone();
            if cond(&status) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {status:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until a request with a token to `path` is answered `status` (workers swap
    /// snapshots on their next inbox tick).
    fn wait_route(&self, path: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (name, value) = bearer(&token("bob"));
        loop {
            let got = get_with(self.gw(), path, &[(name, &value)]).status;
            if got == status {
                return;
            }
            assert!(Instant::now() < deadline, "{path}: {got}, want {status}");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How the writer pauses between the prefix and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// Shorter than the settle interval: the watcher must not apply the prefix.
    Short,
    /// Until the watcher has seen the prefix settle and refused it.
    UntilRefused,
    /// Long past the settle interval (for a prefix the watcher neither applies nor counts).
    Long,
}

/// Rewrites `path` in place: truncate, write `prefix`, pause, write `rest`.
fn write_in_place(rig: &Rig, prefix: &str, pause: Pause, rest: &str) {
    let refused = rig.refused();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&rig.cfg)
        .unwrap();
    f.write_all(prefix.as_bytes()).unwrap();
    f.flush().unwrap();
    match pause {
        Pause::Short => thread::sleep(WATCH.interval * 2),
        Pause::UntilRefused => rig.wait_for("the prefix is refused", |s| s.refused > refused),
        Pause::Long => thread::sleep(WATCH.max_apply_delay() * 2),
    }
    f.write_all(rest.as_bytes()).unwrap();
    f.flush().unwrap();
}

/// One case: the protected config in `order`, rewritten in place with the file cut at
/// `cut` (a byte offset of the final text), then checked.
fn run_case(name: &str, order: &[&str], cut: impl Fn(&str) -> usize, pause: Pause) {
    let rig = Rig::start(name, |up| Sections::new(up).text(order, None));
    let sections = Sections::new(rig.up.addr);
    // The final file adds an authenticated route, so applying it is visible.
    let final_text = sections.text(order, Some("/v9/*rest"));
    let at = cut(&final_text);
    let (prefix, rest) = final_text.split_at(at);

    let stop = Arc::new(AtomicBool::new(false));
    let dog = Arc::new(Watchdog::default());
    let traffic = clients(rig.gw(), stop.clone(), dog.clone());
    while dog.requests.load(Ordering::Relaxed) < 20 {
        thread::sleep(Duration::from_millis(5));
    }
    rig.wait_route("/v9/x", 404);

    write_in_place(&rig, prefix, pause, rest);
    rig.wait_for("the final file is applied", |s| s.generation >= 2);
    rig.wait_route("/v9/x", 200);
    // Traffic goes on a while under the final config.
    let seen = dog.requests.load(Ordering::Relaxed);
    while dog.requests.load(Ordering::Relaxed) < seen + 20 {
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let first = traffic.join().unwrap();

    assert_eq!(
        dog.unauthenticated_ok.load(Ordering::Relaxed),
        0,
        "{name}: served without a token: {first:?}"
    );
    assert_eq!(
        dog.unlimited_ok.load(Ordering::Relaxed),
        0,
        "{name}: served without the quota: {first:?}"
    );
    let status = lock_view(&rig.control.view()).status.clone();
    assert_eq!(
        status.generation, 2,
        "{name}: only the final file was applied: {status:?}"
    );
    if pause == Pause::UntilRefused {
        assert!(status.refused >= 1, "{name}: {status:?}");
        let why = status.last_refused.unwrap_or_default();
        assert!(!why.is_empty(), "{name}: the refusal says why");
    }
    let unauth = get(rig.gw(), "/v9/x");
    assert_eq!(unauth.status, 401, "{name}: the final route needs a token");
}

/// Byte offset of the first occurrence of `marker` in `text`.
fn before(marker: &'static str) -> impl Fn(&str) -> usize {
    move |text| text.find(marker).unwrap_or_else(|| panic!("no {marker}"))
}

const AUTH_LAST: &[&str] = &["server", "upstream", "routes", "quota", "admin", "auth"];
const QUOTA_LAST: &[&str] = &["server", "upstream", "auth", "admin", "routes", "quota"];
const ROUTES_LAST: &[&str] = &["server", "upstream", "auth", "quota", "admin", "routes"];

#[test]
fn a_prefix_without_auth_is_never_applied() {
    for pause in [Pause::Short, Pause::UntilRefused] {
        run_case(
            &format!("auth-{pause:?}"),
            AUTH_LAST,
            before("[auth]"),
            pause,
        );
    }
}

#[test]
fn a_prefix_without_quota_is_never_applied() {
    for pause in [Pause::Short, Pause::UntilRefused] {
        run_case(
            &format!("quota-{pause:?}"),
            QUOTA_LAST,
            before("[quota]"),
            pause,
        );
    }
}

#[test]
fn a_prefix_with_fewer_routes_is_never_applied() {
    // Cut after the first of five routes: the prefix keeps 1 of the 4 routes in force.
    let after_first_route = |text: &str| {
        let first = text.find("[[routes]]").unwrap();
        first + 1 + text[first + 1..].find("[[routes]]").unwrap()
    };
    for pause in [Pause::Short, Pause::UntilRefused] {
        run_case(
            &format!("routes-{pause:?}"),
            ROUTES_LAST,
            after_first_route,
            pause,
        );
    }
}

#[test]
fn an_empty_file_is_never_applied() {
    // Truncated and left empty past the settle interval, then written whole.
    run_case("empty", AUTH_LAST, |_| 0, Pause::Long);
}

#[test]
fn a_prefix_cut_mid_line_is_rejected_not_applied() {
    // `[au` does not parse: a validation failure at most, never a new generation.
    let mid = |text: &str| before("[auth]")(text) + 3;
    run_case("mid-line", AUTH_LAST, mid, Pause::Long);
}

#[test]
fn a_mistaken_edit_is_refused_then_the_fix_applies() {
    let rig = Rig::start("fixed", |up| Sections::new(up).text(AUTH_LAST, None));
    let s = Sections::new(rig.up.addr);
    // Saved without [auth] (a whole, valid, less protective file).
    let mistaken = s.text(&AUTH_LAST[..5], None);
    std::fs::write(&rig.cfg, &mistaken).unwrap();
    rig.wait_for("the mistaken edit is refused", |st| st.refused == 1);
    assert_eq!(rig.generation(), 1);
    assert_eq!(get(rig.gw(), "/v1/x").status, 401, "auth still in force");
    let status = lock_view(&rig.control.view()).status.clone();
    let why = status.last_refused.unwrap();
    assert!(why.contains("[auth] removed"), "{why}");
    // Seen once: the watcher does not count it again while it stays.
    thread::sleep(WATCH.max_apply_delay() * 2);
    assert_eq!(rig.refused(), 1);
    // The fix (with a new route) applies.
    std::fs::write(&rig.cfg, s.text(AUTH_LAST, Some("/v9/*rest"))).unwrap();
    rig.wait_for("the fix is applied", |st| st.generation == 2);
    rig.wait_route("/v9/x", 200);
    assert_eq!(get(rig.gw(), "/v9/x").status, 401);
    assert_eq!(get(rig.gw(), "/v1/x").status, 401);
}

#[test]
fn explicit_reload_applies_a_lowering_config_and_says_what_it_lowers() {
    let rig = Rig::start("explicit", |up| Sections::new(up).text(AUTH_LAST, None));
    let admin = Admin::start(
        "127.0.0.1:0".parse().unwrap(),
        AdminState {
            workers: rig.engine.inboxes(),
            control: Some(rig.control.sender()),
            view: rig.control.view(),
            breakers: None,
            spend: None,
        },
    )
    .unwrap();
    let s = Sections::new(rig.up.addr);
    // Without [auth] and [quota]; written atomically so only the explicit reload is in play
    // (the watcher would refuse it; it may do so before or after the reload below).
    let lowered = s.text(&["server", "upstream", "routes", "admin"], None);
    write_atomic(&rig.cfg, &lowered);
    let (name, value) = bearer(ADMIN_TOKEN);
    let r = send(
        admin.local_addr(),
        "POST",
        "/reload",
        &[(name, &value)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["generation"], 2, "{v}");
    let keys: Vec<&str> = v["lowered_protection"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["auth", "quota"], "{v}");
    assert!(
        v["lowered_protection"][0]["message"]
            .as_str()
            .unwrap()
            .contains("[auth] removed"),
        "{v}"
    );
    // Applied as asked: the routes are open now.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(rig.gw(), "/v1/x").status != 200 {
        assert!(
            Instant::now() < deadline,
            "the explicit reload did not apply"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let r = get_with(admin.local_addr(), "/metrics", &[(name, &value)]);
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.lines()
            .any(|l| l == "shardgate_config_reloads_lowering_total 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("shardgate_config_reloads_refused_total ")),
        "{text}"
    );
    // The watcher does not re-apply (or refuse) what the explicit reload already loaded.
    thread::sleep(WATCH.max_apply_delay() * 2);
    assert_eq!(rig.generation(), 2);
    // And restoring protection is no loss: the watcher applies it.
    write_atomic(&rig.cfg, &s.text(AUTH_LAST, None));
    rig.wait_for("protection restored", |st| st.generation == 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(rig.gw(), "/v1/x").status != 401 {
        assert!(Instant::now() < deadline, "auth did not come back");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Replaces the file atomically: a temp file renamed over it.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
