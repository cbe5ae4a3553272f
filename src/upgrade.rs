//! Zero-downtime binary upgrade: the running gateway hands its listening sockets to a new
//! process, waits until it is ready, then stops accepting and drains.
//!
//! # Why nothing is reset
//!
//! A listening socket's accept queue belongs to the kernel socket, not to a process. The old
//! process passes its sockets (every worker's `SO_REUSEPORT` socket, the TLS ones, the admin
//! one) to the new process over a unix socket (`SCM_RIGHTS`, see [`fds`]): from then on both
//! processes hold the same sockets and either may accept. Once the new process is ready the
//! old one stops accepting (taking the connection an accept in flight got, see
//! `server::accept_loop`) and closes its descriptors; the sockets stay open in the new
//! process, so no queued connection and no SYN in flight meets a closed socket. The old
//! process then answers what it has with `Connection: close` and exits (see `worker::drain`).
//! No sysctl is needed (`net.ipv4.tcp_migrate_req` is the alternative for processes that
//! bind anew; this design never closes a socket that has a queue).
//!
//! # Protocol
//!
//! The old process listens on the abstract unix socket `@shardgate-upgrade.<pid>` and talks
//! only to processes of its own user (or root). A client (`shardgate upgrade`, or the old
//! process itself on `SIGUSR2`) sends `upgrade [BINARY]`; the old process:
//!
//! 1. runs `BINARY check --config CONFIG` (its own path by default; the new binary judges
//!    its config) and refuses the upgrade if that fails: nothing else happens;
//! 2. starts `BINARY --config CONFIG` with `SHARDGATE_TAKEOVER=<old pid>`;
//! 3. waits for the new process to connect with `take-over <its pid>`, sends it `sockets P T
//!    A` (counts) and the descriptors;
//! 4. waits for `ready` (the new process's workers accept, its admin API answers), then
//!    tells the client `ready <new pid> <drain ms>` and the engine to hand over.
//!
//! Each other answer line is `info ...`, `refused ...` (the config check failed) or `failed
//! ...` (the new process exited or was not ready within [`READY_TIMEOUT`]; it is stopped and
//! the old one, which never stopped accepting, keeps serving).

pub mod fds;

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::poll::{poll, PollFd, PollFlags};

use crate::runtime::Sockets;

/// The environment variable that makes a starting gateway take its sockets over from the
/// process whose pid it names.
pub const TAKEOVER_ENV: &str = "SHARDGATE_TAKEOVER";
/// How long the new process may take from its start to `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a peer may take to send one request line.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the upgrade thread looks at its stop flag and the new process.
const POLL: Duration = Duration::from_millis(100);
/// Longest request or answer line.
const MAX_LINE: usize = 4096;

/// The abstract unix socket name of the gateway with pid `pid`.
pub fn socket_name(pid: u32) -> String {
    format!("shardgate-upgrade.{pid}")
}

fn socket_addr(pid: u32) -> io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt;
    UnixAddr::from_abstract_name(socket_name(pid).as_bytes())
}

/// What the old process hands over: every listening socket.
pub struct Handover {
    pub sockets: Sockets,
    /// The admin API's socket (`None`: no `[admin]`).
    pub admin: Option<TcpListener>,
}

/// How the old process starts its successor.
pub struct Plan {
    /// The binary (this process's path, unless the request names another).
    pub exe: PathBuf,
    /// The config file (read again by the new process).
    pub config: PathBuf,
    /// `server.drain_timeout_ms`, for the answer.
    pub drain_timeout: Duration,
}

/// The old process's side: a thread answering upgrade requests on the abstract socket.
/// Dropping it stops the thread (within [`POLL`]).
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `@shardgate-upgrade.<pid>`; after a successful upgrade sends the new pid to
    /// `done` and stops.
    pub fn start(plan: Plan, handover: Handover, done: Sender<u32>) -> io::Result<Server> {
        let listener = UnixListener::bind_addr(&socket_addr(std::process::id())?)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shardgate-upgrade".into())
            .spawn(move || serve(&listener, &plan, &handover, &done, &stop2))?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: &UnixListener,
    plan: &Plan,
    handover: &Handover,
    done: &Sender<u32>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some(mut conn) = accept_peer(listener) else {
            continue;
        };
        let line = read_line(&mut conn).unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("upgrade") => {
                let exe = words.next().map_or_else(|| plan.exe.clone(), PathBuf::from);
                let mut say = |l: &str| {
                    let _ = conn.write_all(format!("{l}\n").as_bytes());
                    eprintln!("shardgate: upgrade: {l}");
                };
                if let Some(new) = upgrade(listener, plan, &exe, handover, stop, &mut say) {
                    let _ = done.send(new);
                    return;
                }
            }
            Some("take-over") => {
                let _ = conn.write_all(b"refused no upgrade is in progress\n");
            }
            _ => {
                let _ = conn.write_all(b"refused unknown request\n");
            }
        }
    }
}

/// One upgrade (see the module docs); the new pid once it is ready.
fn upgrade(
    listener: &UnixListener,
    plan: &Plan,
    exe: &Path,
    handover: &Handover,
    stop: &AtomicBool,
    say: &mut dyn FnMut(&str),
) -> Option<u32> {
    let me = std::process::id();
    let config = plan.config.display();
    say(&format!(
        "info checking: {} check --config {config}",
        exe.display()
    ));
    match Command::new(exe)
        .arg("check")
        .arg("--config")
        .arg(&plan.config)
        // (Only so it closes what it inherited, see `close_inherited`.)
        .env(TAKEOVER_ENV, me.to_string())
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => {
            say(&format!("refused cannot run {}: {e}", exe.display()));
            return None;
        }
        Ok(out) if !out.status.success() => {
            say(&format!(
                "refused the new binary rejects {config} ({}); pid {me} keeps serving:",
                out.status
            ));
            let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                say(&format!("refused   {l}"));
            }
            return None;
        }
        Ok(_) => {}
    }
    let mut child = match Command::new(exe)
        .arg("--config")
        .arg(&plan.config)
        .env(TAKEOVER_ENV, me.to_string())
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            say(&format!("refused cannot start {}: {e}", exe.display()));
            return None;
        }
    };
    say(&format!("info started pid {}", child.id()));
    match hand_to(listener, &mut child, handover, stop) {
        Ok(()) => {
            say(&format!(
                "ready {} {}",
                child.id(),
                plan.drain_timeout.as_millis()
            ));
            Some(child.id())
        }
        Err(why) => {
            // It may have started accepting: a drain (SIGTERM) answers what it took.
            let _ = stop_child(&mut child);
            say(&format!(
                "failed pid {}: {why}; pid {me} keeps serving",
                child.id()
            ));
            None
        }
    }
}

/// Waits for `child` to ask for the sockets, sends them, waits for its `ready`.
fn hand_to(
    listener: &UnixListener,
    child: &mut Child,
    handover: &Handover,
    stop: &AtomicBool,
) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let expected = format!("take-over {}", child.id());
    let mut conn = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited ({status}) before it was ready (its log says why)"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready within {} s", READY_TIMEOUT.as_secs()));
        }
        if stop.load(Ordering::Relaxed) {
            return Err("this process stops (SIGTERM) before the hand-over".into());
        }
        let Some(mut conn) = accept_peer(listener) else {
            continue;
        };
        match read_line(&mut conn) {
            Ok(l) if l == expected => break conn,
            _ => {
                let _ = conn.write_all(b"refused busy: an upgrade is in progress\n");
            }
        }
    };
    let s = &handover.sockets;
    let admin = handover.admin.iter();
    let all: Vec<&TcpListener> = s.plain.iter().chain(&s.tls).chain(admin).collect();
    let head = format!(
        "sockets {} {} {}\n",
        s.plain.len(),
        s.tls.len(),
        usize::from(handover.admin.is_some())
    );
    conn.write_all(head.as_bytes())
        .and_then(|()| fds::send(&conn, &all))
        .map_err(|e| format!("cannot hand the sockets over: {e}"))?;
    let _ = conn.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())));
    match read_line(&mut conn) {
        Ok(l) if l == "ready" => Ok(()),
        Ok(l) => Err(format!("said {l:?} instead of ready")),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(format!(
                "exited ({status}) before it was ready (its log says why)"
            ))
        }
        Err(e) => Err(format!(
            "not ready within {} s ({e})",
            READY_TIMEOUT.as_secs()
        )),
    }
}

/// SIGTERM (the gateway drains) unless it has exited, then reaped. (Never a signal to a
/// reaped child: its pid may be another process's by now.)
fn stop_child(child: &mut Child) -> io::Result<()> {
    use nix::sys::signal::{kill, Signal};
    if child.try_wait()?.is_none() {
        kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGTERM,
        )?;
    }
    child.wait().map(drop)
}

/// The next connection from a process of this user or root, within [`POLL`].
fn accept_peer(listener: &UnixListener) -> Option<UnixStream> {
    let mut fds = [PollFd::new(listener.as_raw_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut fds, POLL.as_millis() as i32), Ok(n) if n > 0) {
        return None;
    }
    let (conn, _) = listener.accept().ok()?;
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(LINE_TIMEOUT)).ok()?;
    conn.set_write_timeout(Some(LINE_TIMEOUT)).ok()?;
    let cred =
        nix::sys::socket::getsockopt(conn.as_raw_fd(), nix::sys::socket::sockopt::PeerCredentials)
            .ok()?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        return Some(conn);
    }
    let refusal = format!("refused only uid {me} (the gateway's user) or root may upgrade it\n");
    let _ = (&conn).write_all(refusal.as_bytes());
    None
}

/// One `\n`-terminated line, read a byte at a time (so nothing after it, such as a message
/// carrying descriptors, is consumed).
fn read_line(conn: &mut UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if conn.read(&mut b)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match b[0] {
            b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            c if line.len() < MAX_LINE => line.push(c),
            _ => return Err(io::Error::other("line too long")),
        }
    }
}

/// The new process's side: the sockets taken over, and the connection that says `ready`.
pub struct Taken {
    pub sockets: Sockets,
    pub admin: Option<TcpListener>,
    conn: UnixStream,
}

/// Asks the gateway with pid `old` for its sockets (see the module docs).
pub fn take_over(old: u32) -> io::Result<Taken> {
    let mut conn = UnixStream::connect_addr(&socket_addr(old)?).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reach pid {old}'s upgrade socket: {e}"),
        )
    })?;
    conn.set_read_timeout(Some(READY_TIMEOUT))?;
    // The socket name could be squatted: only the process it names may hand sockets over.
    let cred =
        nix::sys::socket::getsockopt(conn.as_raw_fd(), nix::sys::socket::sockopt::PeerCredentials)?;
    if cred.pid() as u32 != old {
        return Err(io::Error::other(format!(
            "the upgrade socket of pid {old} belongs to pid {}",
            cred.pid()
        )));
    }
    conn.write_all(format!("take-over {}\n", std::process::id()).as_bytes())?;
    let head = read_line(&mut conn)?;
    let counts: Vec<usize> = match head.strip_prefix("sockets ") {
        Some(rest) => rest.split(' ').filter_map(|n| n.parse().ok()).collect(),
        None => return Err(io::Error::other(format!("pid {old} answered {head:?}"))),
    };
    let &[plain, tls, admin] = counts.as_slice() else {
        return Err(io::Error::other(format!("pid {old} answered {head:?}")));
    };
    let mut got = fds::recv(&conn, plain + tls + admin)?.into_iter();
    Ok(Taken {
        sockets: Sockets {
            plain: got.by_ref().take(plain).collect(),
            tls: got.by_ref().take(tls).collect(),
        },
        admin: got.next(),
        conn,
    })
}

impl Taken {
    /// Tells the old process this one serves: it stops accepting and drains.
    pub fn ready(mut self) -> io::Result<()> {
        self.conn.write_all(b"ready\n")
    }
}

/// Closes every descriptor above stderr that this process inherited. Call it first thing in
/// a process an upgrade started: io_uring accepts do not set `SOCK_CLOEXEC` (monoio 0.2), so a
/// process forked by the old gateway inherits the client connections the old one had open,
/// and such a connection would stay open (no FIN after the old process's response with
/// `Connection: close`) for as long as the new process runs. The new process needs none of
/// them: its sockets come over the upgrade socket.
pub fn close_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // (The directory's own descriptor is in the list; it is closed once the list is made.)
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
}

/// How an upgrade request ended (see [`request`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new process serves; the old one drains for up to this long.
    Ready { pid: u32, drain: Duration },
    /// The config check failed: nothing changed.
    Refused,
    /// The new process did not become ready; the old one keeps serving.
    Failed,
}

/// Asks the gateway with pid `pid` to upgrade to `binary` (its own path by default); every
/// answer line goes to `each` as it arrives.
pub fn request(pid: u32, binary: Option<&Path>, each: &mut dyn FnMut(&str)) -> io::Result<Outcome> {
    let mut conn = UnixStream::connect_addr(&socket_addr(pid)?)?;
    conn.set_read_timeout(Some(READY_TIMEOUT + LINE_TIMEOUT * 2))?;
    let line = match binary {
        Some(b) => format!("upgrade {}\n", b.display()),
        None => "upgrade\n".to_string(),
    };
    // A refusal may come (and the socket close) before the request is written: read it.
    let _ = conn.write_all(line.as_bytes());
    let mut outcome = Outcome::Failed;
    while let Ok(l) = read_line(&mut conn) {
        each(&l);
        let mut w = l.split(' ');
        match (w.next(), w.next(), w.next()) {
            (Some("ready"), Some(p), Some(ms)) => {
                if let (Ok(pid), Ok(ms)) = (p.parse(), ms.parse()) {
                    outcome = Outcome::Ready {
                        pid,
                        drain: Duration::from_millis(ms),
                    };
                }
            }
            (Some("refused"), _, _) => outcome = Outcome::Refused,
            _ => {}
        }
    }
    Ok(outcome)
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is ready and is the
/// service's main process now; nothing without `NOTIFY_SOCKET`.
pub fn notify_systemd() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name)
        }
        None => UnixAddr::from_pathname(&path),
    };
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = addr.and_then(|a| {
        std::os::unix::net::UnixDatagram::unbound()?.send_to_addr(msg.as_bytes(), &a)
    });
    if let Err(e) = sent {
        eprintln!(
            "shardgate: cannot notify systemd ({}): {e}",
            path.to_string_lossy()
        );
    }
}
