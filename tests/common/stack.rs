//! The whole gateway as `shardgate` runs it, in-process: the config file in a directory of
//! its own, the API key store opened before the engine starts, the engine, the control
//! thread (fast file watches, the workers' unknown-kid hints) and the admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardgate::admin::{Admin, AdminState};
use shardgate::config;
use shardgate::control::{self, Control, Start, WatchSettings};
use shardgate::runtime::Engine;

/// The admin token of every [`Stack`].
pub const STACK_ADMIN_TOKEN: &str = "stack-admin-token-0123456789";

pub struct Stack {
    pub dir: PathBuf,
    pub config: PathBuf,
    admin: Option<Admin>,
    control: Option<Control>,
    engine: Option<Engine>,
}

impl Stack {
    /// Writes `[server]` (2 workers on 127.0.0.1:0), `rest` and an `[admin]` with
    /// [`STACK_ADMIN_TOKEN`] to `dir/gw.toml` and starts everything on it.
    pub fn start(dir: &Path, rest: &str) -> Stack {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("gw.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{rest}\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\ntoken = {{ value = \"{STACK_ADMIN_TOKEN}\" }}\n"
            ),
        )
        .unwrap();
        let mut snap = config::load(&config, 1).unwrap_or_else(|e| panic!("{e}"));
        let keys = control::open_api_keys(&mut snap).unwrap_or_else(|e| panic!("{e}"));
        let engine = Engine::start(snap.clone()).expect("engine starts");
        let start = Start {
            keys,
            key_hints: Some(engine.key_hints()),
            watch: WatchSettings {
                interval: Duration::from_millis(20),
                settle: Duration::from_millis(60),
            },
            ..Start::new(config.clone(), snap, engine.inboxes())
        };
        let control = Control::spawn(start).unwrap();
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
        Stack {
            dir: dir.to_path_buf(),
            config,
            admin: Some(admin),
            control: Some(control),
            engine: Some(engine),
        }
    }

    pub fn gw(&self) -> SocketAddr {
        self.engine.as_ref().unwrap().local_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.as_ref().unwrap().local_addr()
    }

    /// `method path` on the admin API with the token and `body` (JSON): status and JSON.
    pub fn admin_call(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, text) = shardgate::admin::http::call_with_body(
            self.admin(),
            method,
            path,
            Some(STACK_ADMIN_TOKEN),
            body.as_bytes(),
        )
        .unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }

    /// The value of a Prometheus series in `/metrics` (`name{labels}` exactly), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.admin_call("GET", "/metrics", "");
        assert_eq!(status, 200);
        let text = body.as_str().unwrap_or_default().to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.admin.take());
        drop(self.control.take());
        drop(self.engine.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh directory for test `name` under the system temp dir.
pub fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
