//! A gateway with a model registry, in process: the engine, the control thread (which owns
//! the registry) and the admin listener, started the way `shardgate` starts them
//! (`registry::load`, `Start::loaded`), on a config file and database in a directory that
//! outlives the rig, so a test can stop it and start it again on the same state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use shardgate::admin::{Admin, AdminState};
use shardgate::control::{Control, Start};
use shardgate::registry;
use shardgate::runtime::Engine;

use super::{bearer, send};

/// The `admin.token` (named `admin`).
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// `admin.tokens`: alice's and bob's.
pub const ALICE_TOKEN: &str = "alice-token-0123456789";
pub const BOB_TOKEN: &str = "bob-token-0123456789ab";

/// `[server]`, `[admin]` with the three tokens, and `[registry]` on `models.db`.
pub fn base_config() -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken = {{ value = \"{ADMIN_TOKEN}\" }}\n\
         tokens = [{{ name = \"alice\", token = {{ value = \"{ALICE_TOKEN}\" }} }}, \
                   {{ name = \"bob\", token = {{ value = \"{BOB_TOKEN}\" }} }}]\n\
         [registry]\npath = \"models.db\"\n"
    )
}

/// A fresh directory for one test's config and database.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-reg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct RegistryRig {
    // Field order is drop order: admin, control, engine.
    pub admin: Admin,
    pub control: Control,
    pub engine: Engine,
    pub dir: PathBuf,
    pub cfg: PathBuf,
}

impl RegistryRig {
    /// Starts on `dir/gw.toml` (written with `text` when given) and `dir/models.db`.
    pub fn start(dir: &Path, text: Option<&str>) -> RegistryRig {
        Self::try_start(dir, text).unwrap_or_else(|e| panic!("rig did not start: {e}"))
    }

    pub fn try_start(dir: &Path, text: Option<&str>) -> Result<RegistryRig, String> {
        let cfg = dir.join("gw.toml");
        if let Some(t) = text {
            std::fs::write(&cfg, t).unwrap();
        }
        let mut loaded = registry::load(&cfg, 1).map_err(|e| e.to_string())?;
        // As `shardgate` does: API keys in force from the first request.
        let keys =
            shardgate::control::open_api_keys(&mut loaded.snapshot).map_err(|e| e.to_string())?;
        let engine = Engine::start(loaded.snapshot.clone()).map_err(|e| e.to_string())?;
        let control = Control::spawn(Start {
            keys,
            ..Start::loaded(cfg.clone(), loaded, engine.inboxes())
        })
        .map_err(|e| e.to_string())?;
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
        .map_err(|e| e.to_string())?;
        Ok(RegistryRig {
            admin,
            control,
            engine,
            dir: dir.to_path_buf(),
            cfg,
        })
    }

    pub fn gw(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// `method path` with `token` and an optional JSON body: status and JSON answer.
    pub fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (name, value) = bearer(token);
        let mut headers = vec![(name, value.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let r = send(
            self.admin_addr(),
            method,
            path,
            &headers,
            body.map(str::as_bytes),
        );
        let text = r.text();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (r.status, v)
    }

    /// As alice.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call_as(ALICE_TOKEN, method, path, body)
    }

    /// A GET that must answer 200.
    pub fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// The audit log, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        let mut v = self.get("/audit?limit=1000")["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        v.reverse();
        v
    }

    pub fn generation(&self) -> u64 {
        self.get("/config")["generation"].as_u64().unwrap()
    }

    /// Polls `path` until `done` holds for its answer (or panics after `within`).
    pub fn wait_for(&self, path: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(path);
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{path} never got there: {v:#}");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `[[deployments]]` + a sticky chat route on `model` with `targets`.
pub fn chat_route(targets: &str) -> String {
    format!(
        "[[routes]]\npath = \"/v1/chat/completions\"\nmethods = [\"POST\"]\n\
         sticky = {{ header = \"x-session\" }}\ntargets = [{targets}]\n"
    )
}

/// A registration body for `version` on `addr`.
pub fn version_body(version: &str, addr: SocketAddr) -> String {
    format!(r#"{{"version": "{version}", "endpoints": ["{addr}"]}}"#)
}
