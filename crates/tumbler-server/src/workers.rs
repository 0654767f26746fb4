//! The threads that serve connections: one single-threaded tokio runtime per worker, each
//! running `axum::serve` over the connections an acceptor deals out to the workers in turn
//! (the shape of actix-web's workers, and of thread-per-core servers generally).
//!
//! Why not one work-stealing runtime for everything: a lock server's busiest moments are
//! hand-offs, where a release on one connection wakes a long-poll on another and the
//! machine is otherwise idle between round trips. Under tokio's work-stealing scheduler
//! every such wake also woke an idle worker to look for work to steal, which found none
//! and parked again: on one hot key, 2.6 futex calls and 2.2 `epoll_wait`s per lock +
//! unlock pair, 70 µs of server CPU per pair against 24 µs on distinct keys. A worker
//! that owns its connections wakes only the worker whose connection was granted
//! (`docs/BENCHMARKS.md`, "Lock server", has the figures).
//!
//! Connections are dealt round-robin rather than left to whichever thread's `accept`
//! wins, so that each worker gets its share even when all clients connect at once.
//! Everything else (the engine, the store, the background tasks) is shared and runs on the
//! runtime that started the server.
//!
//! **Bounded spinning.** After bytes arrive on one of its connections, a worker keeps
//! polling its sockets without blocking for up to [`ServerConfig::spin`] (40 µs by default)
//! before it lets its thread sleep in `epoll_wait`. On a hot key the next request comes
//! within one round trip of the last answer; catching it while still running saves the
//! sleep and the wake-up, which on a virtual machine cost more than the request itself.
//! This is the spin-then-park of Go's scheduler and of adaptive mutexes: an idle server
//! spins once for the window after its last request and then sleeps, so a server taking
//! one request a millisecond spends at most 4% of one CPU on it. A window of zero turns
//! it off.
//!
//! [`ServerConfig::spin`]: crate::ServerConfig::spin

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};

use crate::state::stopped;

/// The running workers: join them with [`Workers::join`] once the server stops.
pub(crate) struct Workers {
    threads: Vec<JoinHandle<()>>,
}

/// Starts `count` workers serving `app` on the connections `listener` accepts, each
/// spinning for `spin` after its last arrival, until `stopping` turns true (or its sender
/// is dropped). The listener is closed as soon as that happens; each worker then answers
/// what is in flight, closes its connections and ends.
///
/// # Errors
/// When a worker's runtime or thread cannot be created.
pub(crate) fn start(
    count: NonZeroUsize,
    spin: Duration,
    listener: TcpListener,
    app: Router,
    stopping: &watch::Receiver<bool>,
) -> io::Result<Workers> {
    let addr = listener.local_addr()?;
    let mut inboxes = Vec::with_capacity(count.get());
    let mut threads = Vec::with_capacity(count.get());
    for index in 0..count.get() {
        let (deal, inbox) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (app, mut until) = (app.clone(), stopping.clone());
        let arrivals = Arc::new(Arrivals::default());
        let inbox = Inbox { connections: inbox, addr, arrivals: (!spin.is_zero()).then(|| arrivals.clone()) };
        let thread = std::thread::Builder::new().name(format!("tumbler-worker-{index}")).spawn(move || {
            runtime.block_on(async move {
                if !spin.is_zero() {
                    // Ends with the runtime, when the worker has served its last request.
                    tokio::spawn(spin_after_arrivals(arrivals, spin));
                }
                let serve = axum::serve(inbox, app).with_graceful_shutdown(async move { stopped(&mut until).await });
                if let Err(e) = serve.await {
                    tracing::error!(worker = index, error = %e, "a worker stopped with an error");
                }
            });
        })?;
        inboxes.push(deal);
        threads.push(thread);
    }
    tokio::spawn(deal(listener, inboxes, stopping.clone()));
    Ok(Workers { threads })
}

impl Workers {
    /// Waits until every worker has answered its last request and ended.
    pub(crate) async fn join(self) {
        for thread in self.threads {
            let name = thread.thread().name().unwrap_or("a worker").to_owned();
            match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => tracing::error!(worker = %name, "a worker panicked"),
            }
        }
    }
}

/// Accepts connections and hands them to the workers in turn, until the server stops;
/// dropping the listener then refuses new connections at once.
async fn deal(
    listener: TcpListener,
    inboxes: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stopped(&mut stopping) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of file descriptors and the like: retrying at once would spin.
                    tracing::error!(error = %e, "cannot accept a connection; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        // Answers are small and each is written whole: send them at once rather than let
        // Nagle's algorithm hold one back behind an unacknowledged segment.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        // Unregistered from this runtime's reactor, to be registered with the worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                continue;
            }
        };
        if inboxes[next].send(stream).is_err() {
            // A worker has ended: the server is stopping.
            return;
        }
        next = (next + 1) % inboxes.len();
    }
}

/// An error of one connection (the client gave up before it was accepted), not of the
/// listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A worker's side of the deal: `axum::serve` accepts from it as from a listener.
struct Inbox {
    connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    addr: SocketAddr,
    /// Told of every arrival on the worker's connections, when the worker spins.
    arrivals: Option<Arc<Arrivals>>,
}

impl axum::serve::Listener for Inbox {
    type Io = Watched;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Watched, SocketAddr) {
        loop {
            // Closed only when the acceptor has stopped, and then the server is stopping:
            // wait for the shutdown signal `axum::serve` is also waiting on.
            let Some(stream) = self.connections.recv().await else { return std::future::pending().await };
            let registered = TcpStream::from_std(stream).and_then(|s| Ok((s.peer_addr()?, s)));
            match registered {
                Ok((peer, stream)) => return (Watched { stream, arrivals: self.arrivals.clone() }, peer),
                // The client may already be gone; nothing to answer.
                Err(e) => tracing::debug!(error = %e, "a dealt connection could not be served"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// What a worker's connections tell its spinner: how many reads have brought bytes, and
/// whether the spinner is asleep waiting for the next one.
#[derive(Default)]
struct Arrivals {
    reads: AtomicU64,
    asleep: AtomicBool,
    wake: Notify,
}

impl Arrivals {
    /// Bytes arrived: the spinner starts (or keeps) spinning.
    fn arrived(&self) {
        // One thread touches these (the worker's), so the atomics are uncontended; the
        // spinner is told only when it sleeps, not on every read.
        self.reads.fetch_add(1, Ordering::Relaxed);
        if self.asleep.swap(false, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }
}

/// Keeps its worker polling its sockets (by yielding: with nothing else to run, the
/// runtime then polls the reactor without blocking) until `window` passes with no
/// arrival, then sleeps until the next arrival.
async fn spin_after_arrivals(arrivals: Arc<Arrivals>, window: Duration) {
    loop {
        let mut seen = arrivals.reads.load(Ordering::Relaxed);
        let mut last = Instant::now();
        loop {
            tokio::task::yield_now().await;
            let reads = arrivals.reads.load(Ordering::Relaxed);
            if reads != seen {
                (seen, last) = (reads, Instant::now());
            } else if last.elapsed() >= window {
                break;
            }
        }
        let woken = arrivals.wake.notified();
        arrivals.asleep.store(true, Ordering::Relaxed);
        // An arrival between the last check and `asleep` is caught by the next one; a
        // missed spin costs a wake-up, nothing more.
        woken.await;
    }
}

pin_project_lite::pin_project! {
    /// A worker's connection, telling the worker's spinner when bytes arrive.
    struct Watched {
        #[pin]
        stream: TcpStream,
        arrivals: Option<Arc<Arrivals>>,
    }
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.stream.poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(arrivals)) = (&poll, this.arrivals) {
            if buf.filled().len() > before {
                arrivals.arrived();
            }
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}
