//! Zero-downtime binary upgrade through the real binary (`shardgate upgrade`, see
//! `shardgate::upgrade`): under steady load from fresh and keep-alive connections, with a
//! streamed response in flight, no request fails and no connection is refused or reset; the
//! old process finishes what it has and exits, the new one serves. An upgrade the new binary
//! or process cannot complete changes nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::tls::{client_config, tls_server_section, Ca, TempDir};
use common::{route, upstream, Upstream};
use shardgate::http::blocking::{Conn, Response};

/// Longest any one step may take on a loaded machine (a failure, not a measurement).
const PATIENCE: Duration = Duration::from_secs(120);
const TOKEN: &str = "upgrade-test-admin-token";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shardgate"))
}

/// `GET /fast`: 200 "ok" (keep-alive). `GET /slow`: a chunked response whose second half
/// waits for `release`.
fn upstream_with_slow(release: Arc<AtomicBool>, slow_started: Arc<AtomicBool>) -> Upstream {
    Upstream::start(move |mut c| {
        while let Some(req) = c.read_request() {
            if req.target != "/slow" {
                c.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                continue;
            }
            c.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst;\r\n");
            slow_started.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + PATIENCE;
            while !release.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            c.write(b"6\r\nsecond\r\n0\r\n\r\n");
        }
    })
}

/// The config: listeners on port 0 (an upgrade keeps the port the first process got).
fn config(up: SocketAddr, workers: usize, admin: &str, extra_server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\npin = false\n\
         drain_timeout_ms = 120000\n{extra_server}\n\
         [admin]\nlisten = \"{admin}\"\ntoken = {{ value = \"{TOKEN}\" }}\n\n{}{}",
        upstream("up", &[up], "idle_timeout_ms = 300000"),
        route("/*rest", "up", "")
    )
}

/// Kills every gateway the test started or upgraded to, whatever happens.
#[derive(Default)]
struct Pids(Vec<u32>);

impl Drop for Pids {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A gateway process started by the test; its log (and its successors') goes to `log`.
struct Old {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
    /// The TLS listener, when the config has one.
    tls: Option<SocketAddr>,
}

fn start_gateway(dir: &Path, pids: &mut Pids) -> Old {
    start_gateway_with(dir, pids, &[])
}

fn start_gateway_with(dir: &Path, pids: &mut Pids, env: &[(&str, &Path)]) -> Old {
    let log = dir.join("gateway.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = bin()
        .envs(env.iter().copied())
        .arg("--config")
        .arg(dir.join("gateway.toml"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    pids.0.push(child.id());
    let with_tls = std::fs::read_to_string(dir.join("gateway.toml"))
        .unwrap()
        .contains("[server.tls]");
    let mut found = (None, None, None);
    wait_until("the gateway to listen", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let after = |marker: &str| -> Option<SocketAddr> {
            let rest = &text[text.find(marker)? + marker.len()..];
            rest.split_whitespace().next()?.parse().ok()
        };
        found = (
            after("listening on http://"),
            after("admin API on http://"),
            after("listening on https://"),
        );
        found.0.is_some() && found.1.is_some() && (found.2.is_some() || !with_tls)
    });
    Old {
        child,
        log,
        addr: found.0.unwrap(),
        admin: found.1.unwrap(),
        tls: found.2,
    }
}

/// `shardgate upgrade --pid PID` running, its output lines arriving on `lines`.
struct UpgradeRun {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn start_upgrade(pid: u32) -> UpgradeRun {
    let mut child = bin()
        .args(["upgrade", "--pid", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    UpgradeRun {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl UpgradeRun {
    /// The new pid, from "pid N is ready and serves".
    fn ready_pid(&mut self) -> u32 {
        loop {
            let line = self
                .lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no ready line; output: {:?}", self.seen));
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix("pid ") {
                if rest.contains("is ready and serves") {
                    return rest.split(' ').next().unwrap().parse().unwrap();
                }
            }
        }
    }

    /// Exit code and the whole output.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        // Both pipes are closed once the process is gone.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        (status.code(), self.seen.join("\n"))
    }
}

/// Steady load: threads making requests on fresh connections and on keep-alive ones (which
/// reconnect when a response says `Connection: close`), and over TLS on fresh connections.
/// Every failure is recorded.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: mpsc::Receiver<String>,
    threads: Vec<JoinHandle<()>>,
}

fn start_load(addr: SocketAddr, fresh: usize, keep_alive: usize, tls: Option<Tls>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let (tx, failures) = mpsc::channel();
    let mut threads = Vec::new();
    let tls_threads = tls.as_ref().map_or(0, |t| t.threads);
    for i in 0..fresh + keep_alive + tls_threads {
        let (stop, ok, tx, tls) = (stop.clone(), ok.clone(), tx.clone(), tls.clone());
        threads.push(thread::spawn(move || {
            let mut conn: Option<Conn> = None;
            while !stop.load(Ordering::Relaxed) {
                let result = match (i < fresh, i < fresh + keep_alive, &tls) {
                    (true, _, _) => exchange(&mut None, addr, false),
                    (false, true, _) => exchange(&mut conn, addr, true),
                    (false, false, Some(t)) => tls_exchange(t),
                    (false, false, None) => unreachable!(),
                };
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = tx.send(e);
                        // A failure is counted once, not a thousand times while it lasts.
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }));
    }
    Load {
        stop,
        ok,
        failures,
        threads,
    }
}

/// One `GET /fast` on `conn` (connecting when there is none); `conn` is kept for the next
/// one when `keep_alive` and the response allows it.
fn exchange(conn: &mut Option<Conn>, addr: SocketAddr, keep_alive: bool) -> Result<(), String> {
    let mut c = match conn.take() {
        Some(c) => c,
        None => {
            let s =
                TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(PATIENCE)).unwrap();
            Conn::new(s)
        }
    };
    let req: &[u8] = if keep_alive {
        b"GET /fast HTTP/1.1\r\nhost: t\r\n\r\n"
    } else {
        b"GET /fast HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    };
    c.stream
        .write_all(req)
        .map_err(|e| format!("write (keep-alive {keep_alive}): {e}"))?;
    let r: Response = c
        .read_response(false, 64 << 10, 1 << 20)
        .map_err(|e| format!("read (keep-alive {keep_alive}): {e:?}"))?;
    if r.status != 200 || r.body != b"ok" {
        return Err(format!("answer {} {:?}", r.status, r.text()));
    }
    let closing = r
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if keep_alive && !closing {
        *conn = Some(c);
    }
    Ok(())
}

/// TLS load: `threads` clients of the TLS listener at `addr`.
#[derive(Clone)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    threads: usize,
}

/// One `GET /fast` over TLS on a fresh connection (`Connection: close`: read to the end).
fn tls_exchange(t: &Tls) -> Result<(), String> {
    use std::io::Read;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(t.config.clone(), name).unwrap();
    let tcp =
        TcpStream::connect_timeout(&t.addr, PATIENCE).map_err(|e| format!("tls connect: {e}"))?;
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /fast HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("tls write: {e}"))?;
    let mut out = Vec::new();
    let read = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    match read {
        Ok(_) => {}
        // The gateway closes without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(format!("tls read: {e} after {text:?}")),
    }
    if !text.starts_with("HTTP/1.1 200") || !text.ends_with("\r\n\r\nok") {
        return Err(format!("tls answer {text:?}"));
    }
    Ok(())
}

impl Load {
    /// Waits for `n` more successful requests.
    fn wait_for(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_until("requests to succeed", || {
            self.ok.load(Ordering::Relaxed) >= target
        });
    }

    /// Stops the load; the successes and every failure.
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.try_iter().collect(),
        )
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-upgrade-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn get_ready(admin: SocketAddr) -> (u16, String) {
    let mut c = Conn::new(TcpStream::connect(admin).unwrap());
    c.stream
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .unwrap();
    let r = c.read_response(false, 64 << 10, 1 << 20).unwrap();
    (r.status, r.text())
}

#[test]
fn upgrade_under_load_fails_no_request_and_refuses_no_connection() {
    // io_uring where the kernel allows it (an accept in flight completes on its own there).
    upgrade_under_load("uring", "");
}

#[test]
fn upgrade_under_load_on_the_legacy_driver() {
    upgrade_under_load("legacy", "driver = \"legacy\"");
}

fn upgrade_under_load(name: &str, server: &str) {
    let temp = TempDir::new(&format!("upgrade-{name}"));
    let dir = temp.0.clone();
    // A TLS listener too: its sockets are handed over like the plain ones.
    let ca = Ca::new("upgrade-test-ca");
    let (cert, key) = ca.server(&["localhost"]).write(&temp, "gateway");
    let server = format!("{server}\n{}", tls_server_section(&cert, &key, ""));
    let server = server.as_str();
    let release = Arc::new(AtomicBool::new(false));
    let slow_started = Arc::new(AtomicBool::new(false));
    let up = upstream_with_slow(release.clone(), slow_started.clone());
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, config(up.addr, 2, "127.0.0.1:0", server)).unwrap();
    let mut pids = Pids::default();
    let mut old = start_gateway(&dir, &mut pids);
    let addr = old.addr;

    // A streamed response in flight on the old process when the upgrade starts.
    let slow = thread::spawn(move || {
        let mut c = Conn::new(TcpStream::connect(addr).unwrap());
        c.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        c.stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        c.read_response(false, 64 << 10, 1 << 20)
    });
    wait_until("the slow request to reach the upstream", || {
        slow_started.load(Ordering::SeqCst)
    });
    let tls = Tls {
        config: client_config(&ca, None),
        addr: old.tls.expect("a TLS listener"),
        threads: 2,
    };
    let load = start_load(addr, 4, 3, Some(tls));
    load.wait_for(100);

    // 2 workers -> 3: the new process adopts both sockets and binds a third into the group.
    std::fs::write(&cfg, config(up.addr, 3, "127.0.0.1:0", server)).unwrap();
    let mut run = start_upgrade(old.child.id());
    let first = run.ready_pid();
    pids.0.push(first);
    // Both serve now: the old one still streams the slow response, the new one takes the
    // connections.
    load.wait_for(200);
    assert!(
        alive(old.child.id()),
        "the old process waits for its stream"
    );
    release.store(true, Ordering::SeqCst);
    let streamed = slow
        .join()
        .unwrap()
        .expect("the streamed response completes");
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.text(), "first;second");
    let (code, out) = run.finish();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("drained and exited"), "{out}");
    old.child.wait().unwrap();
    load.wait_for(200);

    // 3 workers -> 1: one worker accepts from all three adopted sockets.
    std::fs::write(&cfg, config(up.addr, 1, "127.0.0.1:0", server)).unwrap();
    let mut run = start_upgrade(first);
    let second = run.ready_pid();
    pids.0.push(second);
    let (code, out) = run.finish();
    assert_eq!(code, Some(0), "{out}");
    load.wait_for(300);

    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}\nlog:\n{}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)],
        std::fs::read_to_string(&old.log).unwrap_or_default()
    );
    assert!(!alive(first), "the first successor drained and exited");
    assert!(alive(second));
    // The last process serves the data path and the admin API (same addresses).
    let (status, body) = get_ready(old.admin);
    assert_eq!(status, 200, "{body}");
    assert!(common::get(addr, "/fast").status == 200);
}

#[test]
fn an_upgrade_that_cannot_complete_leaves_the_old_process_serving() {
    let dir = temp_dir("fail");
    let up = upstream_with_slow(Arc::new(AtomicBool::new(true)), Arc::default());
    let cfg = dir.join("gateway.toml");
    // A fixed admin port, so the successor must adopt it.
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap().to_string();
    drop(admin);
    std::fs::write(&cfg, config(up.addr, 2, &admin_addr, "")).unwrap();
    let mut pids = Pids::default();
    let mut old = start_gateway(&dir, &mut pids);
    let pid = old.child.id();
    let load = start_load(old.addr, 2, 2, None);
    load.wait_for(50);

    // No such process.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let out = bin()
        .args(["upgrade", "--pid", &gone.id().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process with pid"), "{err}");

    // A process that is no gateway.
    let out = bin()
        .args(["upgrade", "--pid", &std::process::id().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not take upgrade requests"), "{err}");

    // The new binary rejects the config: nothing starts.
    std::fs::write(&cfg, config(up.addr, 2, &admin_addr, "no_such_key = 1")).unwrap();
    let (code, out) = start_upgrade(pid).finish();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("server.no_such_key"), "{out}");
    assert!(out.contains(&format!("pid {pid} keeps serving")), "{out}");
    load.wait_for(50);

    // The config passes the check but the new process cannot start (its admin address is
    // taken): it had the sockets and exits; the old one never stopped accepting.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    std::fs::write(&cfg, config(up.addr, 2, &busy, "")).unwrap();
    let (code, out) = start_upgrade(pid).finish();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("exited"), "{out}");
    assert!(out.contains(&format!("pid {pid} keeps serving")), "{out}");
    load.wait_for(50);
    assert!(alive(pid));
    let (status, body) = get_ready(admin_addr.parse().unwrap());
    assert_eq!(status, 200, "the old admin API still answers: {body}");

    // Fixed, the upgrade goes through.
    std::fs::write(&cfg, config(up.addr, 2, &admin_addr, "")).unwrap();
    let mut run = start_upgrade(pid);
    pids.0.push(run.ready_pid());
    let (code, out) = run.finish();
    assert_eq!(code, Some(0), "{out}");
    old.child.wait().unwrap();
    load.wait_for(50);
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kill -USR2` upgrades too, with every step in the log; under systemd (`NOTIFY_SOCKET`)
/// each process says `READY=1` with its pid as `MAINPID`, so systemd follows the successor.
#[test]
fn sigusr2_upgrades_to_the_same_binary_and_systemd_follows() {
    let dir = temp_dir("usr2");
    let up = upstream_with_slow(Arc::new(AtomicBool::new(true)), Arc::default());
    std::fs::write(
        dir.join("gateway.toml"),
        config(up.addr, 1, "127.0.0.1:0", ""),
    )
    .unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let next_notice = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut pids = Pids::default();
    let mut old = start_gateway_with(&dir, &mut pids, &[("NOTIFY_SOCKET", &notify_path)]);
    let pid = old.child.id();
    assert_eq!(next_notice(), format!("READY=1\nMAINPID={pid}\n"));
    let load = start_load(old.addr, 1, 1, None);
    load.wait_for(20);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let mut successor = None;
    wait_until("the successor to be ready", || {
        let log = std::fs::read_to_string(&old.log).unwrap_or_default();
        successor = log
            .lines()
            .find_map(|l| l.strip_prefix("shardgate: upgrade: ready "))
            .and_then(|rest| rest.split(' ').next()?.parse::<u32>().ok());
        successor.is_some()
    });
    let successor = successor.unwrap();
    pids.0.push(successor);
    assert_eq!(next_notice(), format!("READY=1\nMAINPID={successor}\n"));
    old.child.wait().unwrap();
    load.wait_for(20);
    let (_, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    let log = std::fs::read_to_string(&old.log).unwrap();
    assert!(
        log.contains(&format!("pid {successor} serves now")),
        "{log}"
    );
    assert!(alive(successor));
    assert_eq!(get_ready(old.admin).0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
