//! The workers' listening sockets: bound anew, or adopted from the process a binary upgrade
//! replaces (see `upgrade`).
//!
//! Every worker listens on its own `SO_REUSEPORT` socket, so the kernel spreads new connections
//! over the workers' accept queues. Sockets handed over by an older process keep their accept
//! queues (the same kernel sockets, now open in both processes): they are spread over this
//! process's workers round-robin, so none is left without an acceptor whatever the two worker
//! counts are, and a worker left without one binds a fresh socket, which joins the same
//! `SO_REUSEPORT` group. Nothing is closed, so no queued connection is reset.

use std::io;
use std::net::{SocketAddr, TcpListener};

use super::LISTEN_BACKLOG;

/// The listening sockets of one engine: what a binary upgrade hands over.
#[derive(Debug, Default)]
pub struct Sockets {
    /// The plain listener, one socket per worker of the process that bound them.
    pub plain: Vec<TcpListener>,
    /// The TLS listener's sockets (empty without `[server.tls]`).
    pub tls: Vec<TcpListener>,
}

impl Sockets {
    /// Duplicates of every socket (the same kernel sockets, new descriptors).
    pub fn try_clone(&self) -> io::Result<Sockets> {
        let dup = |v: &[TcpListener]| -> io::Result<Vec<TcpListener>> {
            v.iter().map(TcpListener::try_clone).collect()
        };
        Ok(Sockets {
            plain: dup(&self.plain)?,
            tls: dup(&self.tls)?,
        })
    }
}

/// The sockets of `n` workers listening on `addr`: the adopted ones that listen on it (see
/// [`adopts`]) spread round-robin, fresh ones for workers left without.
pub fn per_worker(
    addr: SocketAddr,
    n: usize,
    adopted: Vec<TcpListener>,
    what: &str,
) -> io::Result<Vec<Vec<TcpListener>>> {
    let n = n.max(1);
    let mut out: Vec<Vec<TcpListener>> = (0..n).map(|_| Vec::new()).collect();
    let mut bind_to = addr;
    for (i, l) in adopted.into_iter().enumerate() {
        let at = l.local_addr()?;
        if !adopts(addr, at) {
            eprintln!(
                "shardgate: {what} is {addr} now, was {at}: binding anew (the old address closes \
                 with the old process)"
            );
            continue;
        }
        bind_to = at;
        out[i % n].push(l);
    }
    for slot in out.iter_mut().filter(|s| s.is_empty()) {
        let l = bind(bind_to)?;
        // Port 0 resolves once: every other worker joins the same port.
        bind_to = l.local_addr()?;
        slot.push(l);
    }
    Ok(out)
}

/// Whether a socket listening on `at` serves the configured `addr` (port 0: any port).
pub fn adopts(addr: SocketAddr, at: SocketAddr) -> bool {
    addr.ip() == at.ip() && (addr.port() == 0 || addr.port() == at.port())
}

/// One non-blocking `SO_REUSEPORT` listener on `addr`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_of(v: &[Vec<TcpListener>]) -> Vec<Vec<u16>> {
        v.iter()
            .map(|w| w.iter().map(|l| l.local_addr().unwrap().port()).collect())
            .collect()
    }

    #[test]
    fn fresh_sockets_share_one_port() {
        let v = per_worker(
            "127.0.0.1:0".parse().unwrap(),
            3,
            Vec::new(),
            "server.listen",
        )
        .unwrap();
        let ports = port_of(&v);
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|w| w.len() == 1 && w[0] == ports[0][0]));
    }

    /// Whatever the old and new worker counts, every adopted socket gets an acceptor and
    /// every worker at least one socket, all on the old port.
    #[test]
    fn adopted_sockets_are_spread_over_any_worker_count() {
        for (old, new) in [(1, 1), (4, 2), (2, 4), (3, 3), (5, 1), (1, 5)] {
            let bound = per_worker("127.0.0.1:0".parse().unwrap(), old, Vec::new(), "l").unwrap();
            let port = bound[0][0].local_addr().unwrap().port();
            let adopted: Vec<TcpListener> = bound.into_iter().flatten().collect();
            let fds: Vec<i32> = adopted
                .iter()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .collect();
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            let v = per_worker(addr, new, adopted, "l").unwrap();
            assert_eq!(v.len(), new, "{old} -> {new}");
            assert!(v.iter().all(|w| !w.is_empty()), "{old} -> {new}");
            let kept: Vec<i32> = v
                .iter()
                .flatten()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .filter(|fd| fds.contains(fd))
                .collect();
            assert_eq!(kept.len(), old, "{old} -> {new}: every adopted socket kept");
            assert!(port_of(&v).iter().flatten().all(|&p| p == port));
        }
    }

    #[test]
    fn a_changed_address_binds_anew() {
        let bound = per_worker("127.0.0.1:0".parse().unwrap(), 1, Vec::new(), "l").unwrap();
        let old_port = bound[0][0].local_addr().unwrap().port();
        let adopted: Vec<TcpListener> = bound.into_iter().flatten().collect();
        let v = per_worker("127.0.0.2:0".parse().unwrap(), 1, adopted, "l").unwrap();
        let at = v[0][0].local_addr().unwrap();
        assert_eq!(at.ip().to_string(), "127.0.0.2");
        assert!(adopts(
            "127.0.0.1:0".parse().unwrap(),
            format!("127.0.0.1:{old_port}").parse().unwrap()
        ));
        assert!(!adopts(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap()
        ));
        assert!(!adopts(
            "[::1]:8080".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        ));
    }
}
