//! The receive an idle pooled connection keeps posted on the io_uring driver (see
//! [`super`] for why and for the ordering argument).
//!
//! The receive is an async call whose future type cannot be named, so it lives in a slot
//! boxed once per connection and re-armed in place for every idle period: posting,
//! checking and cancelling it allocate nothing except the fresh cancel handle monoio's
//! [`Canceller::cancel`] returns (one small `Rc` per reuse).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use monoio::io::{CancelHandle, CancelableAsyncReadRent, Canceller, OwnedReadHalf};
use monoio::net::TcpStream;

/// The read side of an upstream connection.
pub type ReadHalf = OwnedReadHalf<TcpStream>;

/// What a receive returned, with its buffer.
pub type Seen = (io::Result<usize>, Vec<u8>);

/// A connection's idle receive.
pub struct IdleRecv {
    slot: Box<dyn Slot>,
    /// `None` only while being replaced by [`Canceller::cancel`].
    canceller: Option<Canceller>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing posted.
    Off,
    /// Posted while the connection is idle.
    Posted,
    /// Cancelled when the connection left the pool; its outcome is still to be collected.
    Cancelled,
}

/// The outcome of a cancelled idle receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing arrived while idle: the connection is in step.
    Clean,
    /// Bytes or EOF arrived before the cancel took effect: the connection is unusable.
    Stale,
}

impl Default for IdleRecv {
    fn default() -> Self {
        Self {
            slot: Box::new(slot(receive)),
            canceller: Some(Canceller::new()),
            state: State::Off,
        }
    }
}

impl IdleRecv {
    /// Posts a receive into `buf` (which must be empty). The first poll creates the operation
    /// and queues its SQE; it is submitted with the ring's next enter. False: the receive
    /// finished at once (only possible if the driver performs it inline), and the connection
    /// is unusable.
    pub fn post(&mut self, half: ReadHalf, buf: Vec<u8>) -> bool {
        debug_assert_eq!(self.state, State::Off);
        let handle = self.canceller.get_or_insert_with(Canceller::new).handle();
        self.slot.arm(half, buf, handle);
        self.state = State::Posted;
        match self.slot.poll_seen(&mut noop_cx()) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                self.state = State::Off;
                false
            }
        }
    }

    /// Checks a posted receive without a syscall (it reads the completion slot). True:
    /// nothing has been reaped for it; it is then cancelled, and [`settle`](Self::settle)
    /// must collect its outcome before the connection is read. False: data or EOF arrived
    /// while idle.
    pub fn release(&mut self) -> bool {
        if self.state != State::Posted {
            return self.state == State::Off;
        }
        match self.slot.poll_seen(&mut noop_cx()) {
            Poll::Ready(_) => {
                self.state = State::Off;
                false
            }
            Poll::Pending => {
                if let Some(c) = self.canceller.take() {
                    self.canceller = Some(c.cancel());
                }
                self.state = State::Cancelled;
                true
            }
        }
    }

    /// Collects a cancelled receive. `None`: nothing was outstanding. The buffer comes back
    /// empty when the receive was clean.
    pub async fn settle(&mut self) -> Option<(Settled, Vec<u8>)> {
        if self.state != State::Cancelled {
            return None;
        }
        let slot = &mut self.slot;
        let (res, mut buf) = std::future::poll_fn(|cx| slot.poll_seen(cx)).await;
        self.state = State::Off;
        let settled = match res {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ECANCELED as i32) => {
                buf.clear();
                Settled::Clean
            }
            // Data, EOF or a socket error before the request was written.
            _ => Settled::Stale,
        };
        Some((settled, buf))
    }
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

async fn receive(mut half: ReadHalf, buf: Vec<u8>, cancel: CancelHandle) -> Seen {
    half.cancelable_read(buf, cancel).await
}

/// Type erasure for the receive's future.
trait Slot {
    fn arm(&mut self, half: ReadHalf, buf: Vec<u8>, cancel: CancelHandle);
    /// Polls the armed receive; once it is ready the slot is empty again.
    fn poll_seen(&mut self, cx: &mut Context<'_>) -> Poll<Seen>;
}

/// Holds one future made by `make`, pinned in a box that outlives it.
struct Armed<F, M> {
    fut: Pin<Box<Option<F>>>,
    make: M,
}

fn slot<F, M>(make: M) -> Armed<F, M>
where
    M: Fn(ReadHalf, Vec<u8>, CancelHandle) -> F,
{
    Armed {
        fut: Box::pin(None),
        make,
    }
}

impl<F, M> Slot for Armed<F, M>
where
    F: Future<Output = Seen>,
    M: Fn(ReadHalf, Vec<u8>, CancelHandle) -> F,
{
    fn arm(&mut self, half: ReadHalf, buf: Vec<u8>, cancel: CancelHandle) {
        let fut = (self.make)(half, buf, cancel);
        self.fut.as_mut().set(Some(fut));
    }

    fn poll_seen(&mut self, cx: &mut Context<'_>) -> Poll<Seen> {
        let seen = match self.fut.as_mut().as_pin_mut() {
            Some(f) => std::task::ready!(f.poll(cx)),
            None => {
                return Poll::Ready((Err(io::ErrorKind::NotConnected.into()), Vec::new()));
            }
        };
        self.fut.as_mut().set(None);
        Poll::Ready(seen)
    }
}
