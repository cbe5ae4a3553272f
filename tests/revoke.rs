//! `POST /revoke` answers only once every worker applies the revocation: a token sent on any
//! worker's connection right after the 200 is refused, every time. Revocations in the
//! revocation file are in force on every worker from the first request.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;
use shardgate::admin::{Admin, AdminState};
use shardgate::config;
use shardgate::control::{self, Control, Start};
use shardgate::runtime::Engine;

const ADMIN_TOKEN: &str = "revoke-test-admin-token";
const ROUNDS: usize = 20;
/// Keep-alive connections wanted on each worker.
const PER_WORKER: usize = 2;

/// Sends `GET /v1/x` with `token` and returns the status and the worker that answered (the
/// middle field of `x-request-id`).
fn ask(c: &mut Client, token: &str) -> (u16, String) {
    c.send(
        format!("GET /v1/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    );
    let r = c.read_response().expect("a response");
    let worker = r
        .header("x-request-id")
        .and_then(|id| id.split('-').nth(1))
        .unwrap_or("?")
        .to_string();
    (r.status, worker)
}

/// Keep-alive connections, at least [`PER_WORKER`] on each of `workers` workers.
fn connections_on_every_worker(gw: SocketAddr, workers: usize, token: &str) -> Vec<Client> {
    let mut by_worker: BTreeMap<String, Vec<Client>> = BTreeMap::new();
    for _ in 0..200 {
        let mut c = Client::connect(gw);
        let (status, worker) = ask(&mut c, token);
        assert_eq!(status, 200);
        let list = by_worker.entry(worker).or_default();
        if list.len() < PER_WORKER {
            list.push(c);
        }
        if by_worker.len() == workers && by_worker.values().all(|l| l.len() == PER_WORKER) {
            return by_worker.into_values().flatten().collect();
        }
    }
    panic!(
        "connections did not spread over {workers} workers: {:?}",
        by_worker.keys()
    );
}

/// A two-worker gateway config in `dir` with JWT auth and a revocation file.
fn write_config(dir: &Path, up: SocketAddr) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\npin = false\n{}{}{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {{ value = \"{ADMIN_TOKEN}\" }}\n",
            upstream("up", &[up], ""),
            route("/v1/*rest", "up", ""),
            auth_hs256("revocation_file = \"revoked.txt\"\n"),
        ),
    )
    .unwrap();
    cfg
}

/// The engine as `shardgate` starts it: the revocation file is read first and its entries
/// are part of every worker's initial state.
fn start_engine(cfg: &Path) -> (Engine, Start) {
    let snap = config::load(cfg, 1).unwrap();
    let revocations = control::open_revocations(&snap).unwrap();
    let revoked = revocations.as_ref().map_or(&[][..], |r| r.entries());
    let engine = Engine::start_with_revocations(snap.clone(), revoked).unwrap();
    let start = Start {
        revocations,
        ..Start::new(cfg.to_path_buf(), snap, engine.inboxes())
    };
    (engine, start)
}

#[test]
fn a_revoked_token_is_refused_on_every_worker_as_soon_as_revoke_returns() {
    let up = Upstream::echo();
    let dir = std::env::temp_dir().join(format!("sg-revoke-now-{}", std::process::id()));
    let cfg = write_config(&dir, up.addr);
    let (engine, start) = start_engine(&cfg);
    let control = Control::spawn(start).unwrap();
    let admin = Admin::start(
        "127.0.0.1:0".parse().unwrap(),
        AdminState {
            workers: engine.inboxes(),
            control: Some(control.sender()),
            view: control.view(),
            breakers: None,
            spend: None,
        },
    )
    .unwrap();
    let exp = unix_now() + 600;
    let keeper = hs256(&format!(r#"{{"sub":"keeper","exp":{exp},"jti":"keep"}}"#));
    let mut conns = connections_on_every_worker(engine.local_addr(), 2, &keeper);

    let mut accepted_after_revoke = Vec::new();
    for round in 0..ROUNDS {
        // Alternate the two kinds of revocation: by token id and by subject.
        let (sub, jti) = (format!("user-{round}"), format!("tok-{round}"));
        let token = hs256(&format!(r#"{{"sub":"{sub}","exp":{exp},"jti":"{jti}"}}"#));
        for c in &mut conns {
            assert_eq!(ask(c, &token).0, 200, "round {round}: not revoked yet");
        }
        let body = if round % 2 == 0 {
            format!(r#"{{"jti":"{jti}","expires_at":{exp}}}"#)
        } else {
            format!(r#"{{"sub":"{sub}","expires_at":{exp}}}"#)
        };
        let (name, value) = bearer(ADMIN_TOKEN);
        let r = post_json(admin.local_addr(), "/revoke", &[(name, &value)], &body);
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice::<Value>(&r.body).unwrap();
        // No pause: the 200 means every worker already refuses it.
        for c in &mut conns {
            let (status, worker) = ask(c, &token);
            if status != 401 {
                accepted_after_revoke.push(format!("round {round}, worker {worker}: {status}"));
            }
        }
        for c in &mut conns {
            assert_eq!(
                ask(c, &keeper).0,
                200,
                "round {round}: another token revoked"
            );
        }
    }
    assert!(
        accepted_after_revoke.is_empty(),
        "revoked tokens accepted after /revoke returned: {accepted_after_revoke:?}"
    );
    drop(admin);
    drop(control);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Revocations in the revocation file are refused by every worker from its first request:
/// before the control thread even starts, on a connection to each worker, both kinds (token
/// id and subject), and no other token with them.
#[test]
fn revocations_from_the_file_are_in_force_from_the_first_request() {
    let up = Upstream::echo();
    let dir = std::env::temp_dir().join(format!("sg-revoke-start-{}", std::process::id()));
    let cfg = write_config(&dir, up.addr);
    let exp = unix_now() + 600;
    std::fs::write(
        dir.join("revoked.txt"),
        format!("jti {exp} tok-revoked\nsub {exp} mallory\n"),
    )
    .unwrap();
    let (engine, start) = start_engine(&cfg);
    let keeper = hs256(&format!(r#"{{"sub":"keeper","exp":{exp},"jti":"keep"}}"#));
    let by_jti = hs256(&format!(
        r#"{{"sub":"alice","exp":{exp},"jti":"tok-revoked"}}"#
    ));
    let by_sub = hs256(&format!(
        r#"{{"sub":"mallory","exp":{exp},"jti":"tok-fresh"}}"#
    ));
    let mut conns = connections_on_every_worker(engine.local_addr(), 2, &keeper);
    let check = |conns: &mut Vec<Client>, when: &str| {
        for c in conns.iter_mut() {
            for (name, token) in [("jti", &by_jti), ("sub", &by_sub)] {
                let (status, worker) = ask(c, token);
                assert_eq!(
                    status, 401,
                    "{when}: revoked {name} accepted on worker {worker}"
                );
            }
            assert_eq!(ask(c, &keeper).0, 200, "{when}: another token refused");
        }
    };
    check(&mut conns, "before the control thread");
    // The control thread takes the file over; nothing changes for the workers.
    let control = Control::spawn(start).unwrap();
    check(&mut conns, "with the control thread");
    drop(control);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}
