//! `shardgate demo` through the binary: every command it prints works as printed.
//!
//! The demo runs on moved ports (`SHARDGATE_DEMO_PORT_BASE`, so a busy 8080 on the test machine
//! does not matter); the commands are taken from its stdout and run with `sh -c`, the way a
//! newcomer pastes them into a shell.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Ports the demo takes from its base: gateway, admin, three mocks.
const DEMO_PORTS: u16 = 5;
/// The last line the demo prints after its commands.
const LAST_LINE: &str = "Stop the demo with Ctrl-C.";
/// Startup of a debug build on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running demo; killed when dropped (a failing test leaves nothing behind).
struct Demo {
    child: Child,
    stdout: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Starts the demo on free ports and waits for its last printed line. Retries on another
    /// base when a port was taken between the check and the demo's bind.
    fn start() -> Demo {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let base = free_base();
            match Demo::try_start(base) {
                Ok(d) => return d,
                Err(e) => failures.push(format!("base {base}: {e}")),
            }
        }
        panic!("the demo did not start:\n{}", failures.join("\n"));
    }

    fn try_start(base: u16) -> Result<Demo, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("demo")
            .env("SHARDGATE_DEMO_PORT_BASE", base.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut err = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let lines = lines_of(child.stdout.take().unwrap());
        let mut demo = Demo {
            child,
            stdout: Vec::new(),
            stderr: Some(stderr),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line == LAST_LINE => return Ok(demo),
                Ok(line) => demo.stdout.push(line),
                Err(e) => {
                    let _ = demo.child.kill();
                    let _ = demo.child.wait();
                    let stderr = demo.stderr.take().unwrap().join().unwrap();
                    return Err(format!(
                        "{e:?}; stdout: {:?}; stderr: {stderr}",
                        demo.stdout
                    ));
                }
            }
        }
    }

    /// The printed commands: indented lines, joined over trailing backslashes.
    fn commands(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur: Option<String> = None;
        for line in &self.stdout {
            if !line.starts_with("  ") {
                assert!(cur.is_none(), "a command ends with a backslash: {cur:?}");
                continue;
            }
            let part = line.trim();
            let joined = match cur.take() {
                Some(c) => format!("{c} {part}"),
                None => part.to_owned(),
            };
            match joined.strip_suffix('\\') {
                Some(open) => cur = Some(open.trim_end().to_owned()),
                None => out.push(joined),
            }
        }
        out
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        (status, self.stderr.take().unwrap().join().unwrap())
    }
}

/// A base port with `DEMO_PORTS` consecutive free ports from it.
fn free_base() -> u16 {
    loop {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(top) = base.checked_add(DEMO_PORTS) else {
            continue;
        };
        let held: Vec<_> = (base..top)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(DEMO_PORTS) {
            return base;
        }
    }
}

/// Lines of `r` as they arrive, on a channel that closes at end of file.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Runs `cmd` with `sh -c`; it must succeed. Its stdout.
fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `curl -i` answer: status, headers (names lowercased), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn parse(text: &str) -> Answer {
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        let headers = lines
            .map(|l| l.split_once(':').expect("a header field"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status: status.parse().unwrap(),
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
    }
}

/// The five printed commands, by what they show.
struct Commands {
    chat: String,
    stream: String,
    canary: String,
    stats: String,
    metrics: String,
}

impl Commands {
    fn of(demo: &Demo) -> Commands {
        let all = demo.commands();
        let one = |what: &str, pick: &dyn Fn(&str) -> bool| {
            let found: Vec<&String> = all.iter().filter(|c| pick(c)).collect();
            assert_eq!(found.len(), 1, "one {what} command in {all:#?}");
            found[0].clone()
        };
        let c = Commands {
            chat: one("chat", &|c| {
                c.starts_with("curl -i") && !c.contains("x-canary")
            }),
            stream: one("stream", &|c| {
                c.starts_with("curl -N") && c.contains(r#""stream":true"#)
            }),
            canary: one("canary", &|c| c.contains("-H 'x-canary: canary'")),
            stats: one("stats", &|c| {
                c.contains(" stats --admin ") && c.ends_with(" --watch")
            }),
            metrics: one("metrics", &|c| {
                c.starts_with("curl -s http://") && c.contains("/metrics")
            }),
        };
        assert_eq!(all.len(), 5, "{all:#?}");
        c
    }
}

#[test]
fn every_command_the_demo_prints_works_as_printed() {
    let demo = Demo::start();
    let cmds = Commands::of(&demo);

    // The split: 50 requests, 80/20 over two versions, the quota counting down by one.
    let mut versions: HashMap<String, u32> = HashMap::new();
    let mut remaining = Vec::new();
    for _ in 0..50 {
        let a = Answer::parse(&sh(&cmds.chat));
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-shardgate-model"), "llama3-70b");
        *versions
            .entry(a.header("x-shardgate-version").to_owned())
            .or_default() += 1;
        assert_eq!(a.header("x-ratelimit-limit"), "100");
        remaining.push(a.header("x-ratelimit-remaining").parse::<u32>().unwrap());
        assert!(
            a.body.contains(r#""object":"chat.completion""#),
            "{}",
            a.body
        );
    }
    let expected: Vec<u32> = (50..100).rev().collect();
    assert_eq!(
        remaining, expected,
        "X-RateLimit-Remaining counts down by one"
    );
    let v31 = versions.remove("3.1.0").unwrap_or(0);
    let v32 = versions.remove("3.2.0").unwrap_or(0);
    assert!(
        versions.is_empty(),
        "only the split's versions: {versions:?}"
    );
    // Binomial(50, 0.2): no 3.2.0 at all has probability 1.4e-5, 3.2.0 in the majority 2e-6.
    assert!(v32 > 0 && v31 > v32, "3.1.0: {v31}, 3.2.0: {v32}");

    // The stream: server-sent chunks, ended by the terminator, without the usage event the
    // gateway asked the backend for on the client's behalf.
    let s = sh(&cmds.stream);
    let events: Vec<&str> = s.lines().filter(|l| l.starts_with("data: ")).collect();
    assert!(events.len() > 2, "{s}");
    assert!(
        events[0].contains(r#""object":"chat.completion.chunk""#),
        "{s}"
    );
    assert_eq!(s.trim_end().lines().last(), Some("data: [DONE]"), "{s}");
    assert!(!s.contains(r#""usage":{"#), "{s}");

    // The canary: only with the label.
    for _ in 0..3 {
        let a = Answer::parse(&sh(&cmds.canary));
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-shardgate-model"), "llama3-70b");
        assert_eq!(a.header("x-shardgate-version"), "3.3.0-rc.1");
    }

    // Metrics: requests per deployment, every deployment that answered.
    let m = sh(&cmds.metrics);
    for v in ["3.1.0", "3.2.0", "3.3.0-rc.1"] {
        let label = format!(r#"deployment="llama3-70b@{v}",status="200"}}"#);
        assert!(m.contains(&label), "{label} not in:\n{m}");
    }

    // The latency table: runs until stopped; its first screen names the split route.
    let mut stats = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {}", cmds.stats))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(stats.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    while !(seen.contains("/v1/chat/completions") && seen.contains("(all)")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                seen.push_str(&l);
                seen.push('\n');
            }
            Err(e) => {
                let _ = stats.kill();
                let mut err = String::new();
                let _ = stats.stderr.take().unwrap().read_to_string(&mut err);
                panic!("`{}`: {e:?}; stdout: {seen}; stderr: {err}", cmds.stats);
            }
        }
    }
    let _ = stats.kill();
    let _ = stats.wait();

    // `shardgate health` (the container's HEALTHCHECK) against the same admin address.
    let admin = cmds
        .stats
        .split("--admin ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_owned();
    let probe = |ready: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_shardgate"));
        c.args(["health", "--admin", &admin]);
        if ready {
            c.arg("--ready");
        }
        c.output().unwrap()
    };
    for ready in [false, true] {
        let out = probe(ready);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }

    // Ctrl-C's sibling: SIGTERM drains and exits 0, and the moved config is removed.
    let (status, stderr) = demo.stop();
    assert!(status.success(), "{status}: {stderr}");
    let config = stderr
        .split("config ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap_or_else(|| panic!("no config path in: {stderr}"));
    assert!(
        !std::path::Path::new(config).exists(),
        "{config} left behind"
    );
    let out = probe(false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{out:?}"
    );
}
