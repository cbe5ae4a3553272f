//! Engine lifecycle: graceful drain, drivers, config check and reload through the binary.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use shardgate::metrics::Driver;

#[test]
fn shutdown_lets_in_flight_requests_finish_and_closes_idle_connections() {
    let up = Upstream::start(|mut c| {
        while c.read_request().is_some() {
            thread::sleep(Duration::from_millis(500));
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
        }
    });
    let mut gw = gateway(&route_all(up.addr, ""));
    let addr = gw.local_addr();
    let mut idle = Client::connect(addr);
    let mut busy = Client::connect(addr);
    busy.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let stopper = thread::spawn(move || {
        gw.shutdown();
        started.elapsed()
    });
    let r = busy.read_response().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "done"));
    assert_eq!(
        r.header("connection"),
        Some("close"),
        "a draining gateway closes after the response"
    );
    assert!(
        idle.is_closed(),
        "idle keep-alive connection is closed on drain"
    );
    let took = stopper.join().unwrap();
    assert!(
        took >= Duration::from_millis(300),
        "shutdown waited for the in-flight request ({took:?})"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let up = Upstream::start(|mut c| {
        let _ = c.read_request();
        thread::sleep(Duration::from_secs(5));
    });
    let mut gw = gateway_with(
        "listen = \"127.0.0.1:0\"\nworkers = 1\npin = false\ndrain_timeout_ms = 300",
        &route_all(up.addr, ""),
    );
    let mut c = Client::connect(gw.local_addr());
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    gw.shutdown();
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn legacy_driver_serves_requests() {
    let up = Upstream::echo();
    let gw = gateway_with(
        "listen = \"127.0.0.1:0\"\nworkers = 2\npin = false\ndriver = \"legacy\"",
        &route_all(up.addr, ""),
    );
    let mut c = Client::connect(gw.local_addr());
    for _ in 0..3 {
        c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n");
        assert!(c
            .read_response()
            .unwrap()
            .text()
            .contains("\"body\":\"hi\""));
    }
    let m = gw.collect();
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|w| w.driver == Driver::Legacy));
    assert_eq!(m.iter().map(|w| w.requests()).sum::<u64>(), 3);
}

#[test]
fn auto_driver_reports_what_it_runs_on() {
    let up = Upstream::echo();
    let gw = gateway(&route_all(up.addr, ""));
    assert_eq!(get(gw.local_addr(), "/").status, 200);
    let m = gw.collect();
    assert_eq!(m.len(), 2);
    // On a kernel with io_uring every worker runs it; elsewhere every worker fell back.
    let uring = shardgate_io_uring_available();
    for w in &m {
        assert_eq!(
            w.driver,
            if uring {
                Driver::IoUring
            } else {
                Driver::Legacy
            }
        );
    }
    assert_eq!(m.iter().map(|w| w.by_class[2]).sum::<u64>(), 1);
    assert_eq!(m.iter().map(|w| w.total_us.len()).sum::<u64>(), 1);
    assert_eq!(m.iter().map(|w| w.upstream_us.len()).sum::<u64>(), 1);
}

/// Keep-alive connections that wait past the 100 ms after which an idle connection hibernates
/// (and some that do not), then send a request whole, in two pieces, or two pipelined at
/// once, or close: every request is answered in order on its connection, on both drivers, and
/// every connection is counted out exactly once when it closes.
#[test]
fn idle_connections_hibernate_and_wake_without_losing_requests() {
    let up = Upstream::echo();
    for driver in ["legacy", "auto"] {
        let gw = gateway_with(
            &format!("listen = \"127.0.0.1:0\"\nworkers = 1\npin = false\ndriver = \"{driver}\""),
            &route_all(up.addr, ""),
        );
        let addr = gw.local_addr();
        let clients: Vec<_> = (0..12u64)
            .map(|i| {
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let get = |n: u64| format!("GET /{i}/{n} HTTP/1.1\r\nHost: a\r\n\r\n");
                    for round in 0..4u64 {
                        // 0 to 330 ms: below, around and well past the hibernation point.
                        thread::sleep(Duration::from_millis((i * 37 + round * 71) % 330));
                        match (i + round) % 3 {
                            0 => c.send(get(round).as_bytes()),
                            1 => {
                                let req = get(round);
                                c.send(&req.as_bytes()[..5]);
                                thread::sleep(Duration::from_millis(30));
                                c.send(&req.as_bytes()[5..]);
                            }
                            _ => c.send(format!("{}{}", get(round), get(round + 100)).as_bytes()),
                        }
                        let r = c.read_response().unwrap();
                        assert!(
                            r.text().contains(&format!("\"/{i}/{round}\"")),
                            "{}",
                            r.text()
                        );
                        if (i + round) % 3 == 2 {
                            let r = c.read_response().unwrap();
                            assert!(r.text().contains(&format!("\"/{i}/{}\"", round + 100)));
                        }
                    }
                    c
                })
            })
            .collect();
        let held: Vec<Client> = clients.into_iter().map(|t| t.join().unwrap()).collect();
        // Idle (hibernating) connections are still open, and still counted.
        thread::sleep(Duration::from_millis(300));
        assert_eq!(gw.collect()[0].connections_open, 12, "{driver}");
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while gw.collect()[0].connections_open != 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            gw.collect()[0].connections_open,
            0,
            "{driver}: closed once each"
        );
        assert_eq!(gw.collect()[0].requests(), 12 * 4 + 4 * 4, "{driver}");
    }
}

fn shardgate_io_uring_available() -> bool {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .build()
        .is_ok()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardgate"))
}

#[test]
fn check_reports_every_problem_with_file_and_key() {
    let dir = std::env::temp_dir().join(format!("sg-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 0\n{}{}",
        upstream("u", &[], ""),
        route("/", "missing", "")
    );
    std::fs::write(&bad, text).unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.workers",
        "upstreams[0].endpoints",
        "routes[0].upstream",
    ] {
        assert!(
            err.contains(&format!("bad.toml: {key}:")),
            "{key} not in: {err}"
        );
    }
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml");
    let out = bin()
        .args(["check", "--config", example])
        .env_remove("SHARDGATE_HOSTED_API_KEY")
        .env("SHARDGATE_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "the example's secret comes from the environment"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "upstreams[1].api_key: environment variable `SHARDGATE_HOSTED_API_KEY` is not set"
    ));
    let out = bin()
        .args(["check", "--config", example])
        .env("SHARDGATE_HOSTED_API_KEY", "sk-test")
        .env("SHARDGATE_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn invalid_fixtures_are_rejected() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/invalid");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = bin()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{} was accepted",
            path.display()
        );
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains(path.file_name().unwrap().to_str().unwrap()));
        n += 1;
    }
    assert!(n >= 3);
}

/// Kills a spawned gateway if the test fails before it stopped it (a failed assertion must not
/// leave a process holding the test's ports and pipes).
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.0.to_string())
                .status();
        }
    }
}

#[test]
fn binary_drains_on_sigterm_and_reloads_on_change() {
    // Set when the slow request reached the upstream: it is then in flight at the gateway.
    let slow_arrived = Arc::new(AtomicBool::new(false));
    let arrived = slow_arrived.clone();
    let up = Upstream::start(move |mut c| {
        while let Some(r) = c.read_request() {
            if r.target.ends_with("/slow") {
                arrived.store(true, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(400));
            }
            c.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("sg-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gw.toml");
    let text = |path: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nworkers = 2\npin = false\n{}{}",
            upstream("up", &[up.addr], ""),
            route(path, "up", "")
        )
    };
    std::fs::write(&cfg, text("/old/*rest")).unwrap();
    let mut child = bin()
        .arg("--config")
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reap = KillOnPanic(child.id());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(addr, "/old/x").status, 200);
    // A broken file changes nothing; a good one applies within the watch interval.
    std::fs::write(&cfg, "[server]\nlisten = ").unwrap();
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(addr, "/old/x").status, 200);
    std::fs::write(&cfg, text("/new/*rest")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(addr, "/new/x").status != 200 {
        assert!(Instant::now() < deadline, "reload did not apply");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(addr, "/old/x").status, 404);

    let mut c = Client::connect(addr);
    c.send(b"GET /new/slow HTTP/1.1\r\nHost: a\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !slow_arrived.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("config reload rejected"), "{err}");
    assert!(err.contains("applied config generation 2"), "{err}");
    let _ = std::io::stdout().flush();
}

#[test]
fn check_refuses_empty_and_short_admin_tokens_from_every_source() {
    let dir = std::env::temp_dir().join(format!("sg-check-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("newline.token"), "\n").unwrap();
    std::fs::write(dir.join("short.token"), "short\n").unwrap();
    std::fs::write(dir.join("good.token"), "0123456789abcdef0123\n").unwrap();
    let config = |token: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = {token}\n",
            route_all("127.0.0.1:9".parse().unwrap(), "")
        )
    };
    // (token, environment, what stderr must say)
    let cases: &[(&str, Option<&str>, &str)] = &[
        (r#"{ value = "" }"#, None, "is empty"),
        (r#"{ value = "   " }"#, None, "only whitespace"),
        (r#"{ value = "short" }"#, None, "is 5 bytes"),
        (
            r#"{ value = "tab\tinside-a-long-token" }"#,
            None,
            "control characters",
        ),
        (r#"{ env = "SG_CHECK_ADMIN_TOKEN" }"#, Some(""), "is empty"),
        (
            r#"{ env = "SG_CHECK_ADMIN_TOKEN" }"#,
            Some(" \t "),
            "only whitespace",
        ),
        (
            r#"{ env = "SG_CHECK_ADMIN_TOKEN" }"#,
            Some("0123456789"),
            "is 10 bytes",
        ),
        (r#"{ file = "newline.token" }"#, None, "is empty"),
        (r#"{ file = "short.token" }"#, None, "is 5 bytes"),
    ];
    for (i, (token, env, want)) in cases.iter().enumerate() {
        let cfg = dir.join(format!("weak-{i}.toml"));
        std::fs::write(&cfg, config(token)).unwrap();
        let mut cmd = bin();
        cmd.args(["check", "--config"]).arg(&cfg);
        match env {
            Some(v) => cmd.env("SG_CHECK_ADMIN_TOKEN", v),
            None => cmd.env_remove("SG_CHECK_ADMIN_TOKEN"),
        };
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{token} {env:?} accepted: {err}"
        );
        assert!(
            err.contains(&format!("weak-{i}.toml: admin.token: ")) && err.contains(want),
            "{token} {env:?}: {err}"
        );
    }
    for (token, env) in [
        (r#"{ value = "0123456789abcdef" }"#, None),
        (
            r#"{ env = "SG_CHECK_ADMIN_TOKEN" }"#,
            Some("a-strong-admin-token"),
        ),
        (r#"{ file = "good.token" }"#, None),
    ] {
        let cfg = dir.join("good.toml");
        std::fs::write(&cfg, config(token)).unwrap();
        let mut cmd = bin();
        cmd.args(["check", "--config"]).arg(&cfg);
        if let Some(v) = env {
            cmd.env("SG_CHECK_ADMIN_TOKEN", v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{token}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
