//! Listening sockets passed between processes over a unix socket (`SCM_RIGHTS`): the one
//! place the crate turns a raw descriptor into an owned one.
//!
//! The payload of every descriptor message is one byte, so a reader that takes one byte per
//! `recvmsg` never mixes two messages' descriptors, and a plain `read` can never swallow them.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{
    getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockType,
};

/// Most descriptors in one message (Linux accepts up to 253, `SCM_MAX_FD`).
const CHUNK: usize = 200;

/// Sends `socks` over `conn`, in messages of at most [`CHUNK`] descriptors.
pub fn send(conn: &UnixStream, socks: &[&TcpListener]) -> io::Result<()> {
    let fds: Vec<RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    for chunk in fds.chunks(CHUNK) {
        let iov = [IoSlice::new(b"F")];
        let cmsg = [ControlMessage::ScmRights(chunk)];
        sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    }
    Ok(())
}

/// Receives `n` listening TCP sockets sent by [`send`]. Anything else (a closed connection,
/// a truncated message, a descriptor that is not a listening TCP socket) is an error, and
/// every descriptor received so far is closed.
pub fn recv(conn: &UnixStream, n: usize) -> io::Result<Vec<TcpListener>> {
    let mut out: Vec<OwnedFd> = Vec::with_capacity(n);
    let mut space = nix::cmsg_space!([RawFd; CHUNK]);
    while out.len() < n {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: SCM_RIGHTS with MSG_CMSG_CLOEXEC just installed `fd` in this
                    // process's descriptor table for us; nothing else knows it, so this is
                    // its only owner (and closes it on every error path below).
                    out.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::other("descriptors were truncated in transit"));
        }
        if msg.bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    if out.len() != n {
        return Err(io::Error::other(format!(
            "expected {n} sockets, received {}",
            out.len()
        )));
    }
    out.into_iter().map(listening_tcp).collect()
}

/// `fd` as a TCP listener, if it is a listening stream socket.
fn listening_tcp(fd: OwnedFd) -> io::Result<TcpListener> {
    let stream = getsockopt(fd.as_raw_fd(), sockopt::SockType)? == SockType::Stream;
    if !stream || !getsockopt(fd.as_raw_fd(), sockopt::AcceptConn)? {
        return Err(io::Error::other(
            "a handed-over descriptor is not a listening socket",
        ));
    }
    let l = TcpListener::from(fd);
    // An inet address, not a unix one.
    l.local_addr()?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cross_and_keep_their_queue() {
        let (a, b) = UnixStream::pair().unwrap();
        let listeners: Vec<TcpListener> = (0..(CHUNK + 3))
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        // A connection queued before the hand-over is accepted from the received socket.
        let queued = std::net::TcpStream::connect(listeners[0].local_addr().unwrap()).unwrap();
        send(&a, &listeners.iter().collect::<Vec<_>>()).unwrap();
        let got = recv(&b, listeners.len()).unwrap();
        for (l, g) in listeners.iter().zip(&got) {
            assert_eq!(l.local_addr().unwrap(), g.local_addr().unwrap());
        }
        drop(listeners);
        let (s, _) = got[0].accept().unwrap();
        assert_eq!(s.peer_addr().unwrap(), queued.local_addr().unwrap());
    }

    #[test]
    fn anything_but_listening_sockets_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let iov = [IoSlice::new(b"F")];
        let fds = [c.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        assert!(recv(&b, 1).is_err());
        // A connection closed before all arrived.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        send(&a, &[&l]).unwrap();
        drop(a);
        assert!(recv(&b, 2).is_err());
    }
}
