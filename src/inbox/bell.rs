//! How a control-plane thread wakes a worker that sleeps: a message put in a worker's inbox
//! (or on its lease channel) is followed by a [`Bell::ring`], and the worker's inbox loop,
//! which otherwise sleeps a long tick, runs at once.
//!
//! A bell is one end of a Unix socket pair; the worker keeps a read pending on the other end
//! (one io_uring operation that costs nothing while it waits). A flag makes rings coalesce:
//! only the ring that finds it clear writes a byte, and the worker clears it, *before* it
//! looks at its channels, each time it hears one. So a burst of messages costs one `write`
//! and one wake-up, and no message is left unseen: a ring that found the flag set happened
//! before the clear, whose `swap` reads what that ring wrote, so the message sent before the
//! ring is visible to the look that follows the clear.
//!
//! A ring never blocks: the socket is non-blocking, and a full buffer means bytes are waiting
//! to be heard anyway. If the worker has stopped listening, the ring is lost and the worker's
//! tick still finds the message.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The ringing end, kept by whoever sends to the worker. Cloning it is cheap.
#[derive(Clone, Debug)]
pub struct Bell {
    shared: Arc<Shared>,
}

/// The worker's end: what it listens on ([`Chime::into_parts`]).
#[derive(Debug)]
pub struct Chime {
    shared: Arc<Shared>,
    socket: UnixStream,
}

#[derive(Debug)]
struct Shared {
    /// Set by the ring that wrote a byte; cleared by the worker when it hears one.
    rung: AtomicBool,
    socket: UnixStream,
}

/// A connected bell and chime.
pub fn pair() -> io::Result<(Bell, Chime)> {
    let (ring_end, hear_end) = UnixStream::pair()?;
    ring_end.set_nonblocking(true)?;
    hear_end.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        rung: AtomicBool::new(false),
        socket: ring_end,
    });
    Ok((
        Bell {
            shared: shared.clone(),
        },
        Chime {
            shared,
            socket: hear_end,
        },
    ))
}

impl Bell {
    /// Wakes the worker, unless a ring it has not heard yet already will. Call after the
    /// message is sent.
    pub fn ring(&self) {
        if !self.shared.rung.swap(true, Ordering::AcqRel) {
            // WouldBlock: the buffer is full of bytes not yet heard; anything else: the
            // worker is gone. Either way there is nothing to do.
            let _ = (&self.shared.socket).write(&[1]);
        }
    }
}

/// What the worker hears with: `heard` is called after each read, before the channels are
/// looked at.
pub struct Heard {
    shared: Arc<Shared>,
}

impl Heard {
    /// Clears the flag, so that the next ring writes again. Call before looking at the
    /// channels (see the module docs).
    pub fn clear(&self) {
        self.shared.rung.swap(false, Ordering::AcqRel);
    }
}

impl Chime {
    /// The socket to keep a read pending on, and the flag to clear after each read.
    pub fn into_parts(self) -> (UnixStream, Heard) {
        (
            self.socket,
            Heard {
                shared: self.shared,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn pending(socket: &UnixStream) -> usize {
        let mut buf = [0u8; 64];
        let mut socket = socket;
        match socket.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn rings_coalesce_until_heard() {
        let (bell, chime) = pair().unwrap();
        let (socket, heard) = chime.into_parts();
        assert_eq!(pending(&socket), 0, "nothing rung yet");
        bell.ring();
        bell.clone().ring();
        bell.ring();
        assert_eq!(pending(&socket), 1, "three rings, one byte");
        // Not cleared yet: a ring now is one the worker's next look covers.
        bell.ring();
        assert_eq!(pending(&socket), 0);
        heard.clear();
        bell.ring();
        assert_eq!(pending(&socket), 1, "cleared: the next ring writes");
    }

    #[test]
    fn a_ring_after_the_worker_left_is_harmless() {
        let (bell, chime) = pair().unwrap();
        drop(chime);
        bell.ring();
        bell.ring();
    }

    /// Many threads sending and ringing while a listener clears and drains: every message is
    /// seen by a look that follows a heard byte (none is left for the final sweep).
    #[test]
    fn no_message_waits_for_the_tick() {
        let (bell, chime) = pair().unwrap();
        let (socket, heard) = chime.into_parts();
        socket.set_nonblocking(false).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let (tx, rx) = crossbeam_channel::unbounded::<u32>();
        const SENDERS: u32 = 4;
        const EACH: u32 = 5_000;
        let senders: Vec<_> = (0..SENDERS)
            .map(|_| {
                let (bell, tx) = (bell.clone(), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        tx.send(i).unwrap();
                        bell.ring();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut seen = 0;
        let mut buf = [0u8; 64];
        let mut reader = &socket;
        while seen < SENDERS * EACH {
            let n = reader
                .read(&mut buf)
                .expect("a byte for every unseen message");
            assert!(n > 0);
            heard.clear();
            while rx.try_recv().is_ok() {
                seen += 1;
            }
        }
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(seen, SENDERS * EACH);
    }
}
