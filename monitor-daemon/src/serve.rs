//! The HTTP/1 server loop of the API socket and the metrics listener.
//!
//! Not `axum::serve`: it sets no timer on hyper's connections, so nothing bounds how long a
//! client may take over a request, and a client that sends half a request (`GET /v1/sta` and
//! then nothing, or a body promised and never sent) holds its connection and its task for
//! ever. Here each connection is hyper's own HTTP/1 connection with a tokio timer, and:
//!
//! - the head of a request must arrive within `read_timeout` (hyper's header read timeout; it
//!   also runs while a kept-alive connection waits for its next request, so an idle
//!   connection is closed after as long);
//! - a request body must not stall longer than that between two pieces (tower-http's request
//!   body timeout: a slow upload that keeps sending is not cut off);
//! - a reply must not stall longer than `write_timeout` ([`TimedIo`]): a client that stops
//!   reading (a findings stream nobody reads, a big report) is disconnected once the socket's
//!   buffer is full that long;
//! - connections are counted, in all and per user ([`Limits`]): one beyond is answered 503
//!   and closed at once, so a user who opens thousands holds their share and no more, and the
//!   daemon never runs out of descriptors. Root has no share of its own but may not take the
//!   last `max_per_user` connections either: those stay for the others, so that even root's
//!   own runaway client (thousands of streams it never reads) leaves the users served;
//! - `GET /healthz` is answered even beyond the limits (on a connection refused, a few at a
//!   time): the daemon is alive, whoever holds its connections, and a liveness check that
//!   said otherwise would have it restarted for a client's fault;
//! - on shutdown, open connections get `grace` to finish, then are dropped: a client that
//!   does not read cannot hold the daemon up.
//!
//! Each connection's peer (SO_PEERCRED) is put in every request's extensions as a
//! [`Peer`], for the API's authorization.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    sync::{Semaphore, watch},
};
use tower_http::timeout::RequestBodyTimeout;

use crate::auth::Peer;

/// What one server allows its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections one user other than root may hold at once.
    pub max_per_user: usize,
    /// How long open connections may finish after shutdown begins.
    pub grace: Duration,
}

/// The reply to a connection beyond the limits, written as the connection is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 100\r\n\r\n{\"error\":{\"code\":\"too_many_connections\",\
\"message\":\"too many connections are open; try again later\"}}";

/// The reply to `GET /healthz` on a connection beyond the limits: what the API answers.
const HEALTHY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
connection: close\r\ncontent-length: 3\r\n\r\nok\n";

/// Refused connections whose request is waited for (to answer /healthz) at once, each for
/// [`REFUSED_READ`] at most; beyond these, a refused connection's request is read only if it
/// is there already (a burst of thousands of refused clients must not crowd out the check).
const REFUSALS_READ: usize = 256;
const REFUSED_READ: Duration = Duration::from_millis(250);

/// Serves `app` on `listener` until `shutdown` completes, then lets the open connections
/// finish for `limits.grace` at most. `peer_of` names a connection's peer (the Unix socket's
/// SO_PEERCRED; none over TCP).
pub async fn serve<L: Listener>(
    mut listener: L,
    app: axum::Router,
    limits: Limits,
    peer_of: impl Fn(&L::Io) -> Option<Peer>,
    shutdown: impl Future<Output = ()>,
) where
    L::Io: Unpin,
{
    let service = TowerToHyperService::new(RequestBodyTimeout::new(app, limits.read_timeout));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout);
    let graceful = GracefulShutdown::new();
    // Set when the grace has run out: each connection's task drops its connection then, so a
    // client that does not read is let go at once, not when its own timeouts end it (the
    // tasks would otherwise outlive `serve`, while the daemon's shutdown goes on).
    let (dropping, dropped) = watch::channel(false);
    let open = Arc::new(Mutex::new(Open::default()));
    let refusals = Arc::new(Semaphore::new(REFUSALS_READ));
    let (mut refused, mut last_logged) = (0u64, None::<std::time::Instant>);
    let mut shutdown = pin!(shutdown);
    loop {
        // Listener::accept retries failed accepts itself (EMFILE: it waits a moment).
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let peer = peer_of(&io);
        let Some(slot) = Slot::take(&open, &limits, peer.as_ref().map(|p| p.creds.uid)) else {
            // Once a second at most: a client refused thousands of times must not make the
            // daemon spend its time on the log.
            refused += 1;
            if last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(
                    uid = peer.as_ref().map(|p| p.creds.uid),
                    refused,
                    "connections refused: too many open"
                );
                (refused, last_logged) = (0, Some(std::time::Instant::now()));
            }
            tokio::spawn(refuse(io, refusals.clone().try_acquire_owned().ok()));
            continue;
        };
        let service = service.clone();
        let with_peer = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            if let Some(peer) = &peer {
                request.extensions_mut().insert(peer.clone());
            }
            hyper::service::Service::call(&service, request)
        });
        let io = TimedIo::new(io, limits.write_timeout);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), with_peer));
        let mut dropped = dropped.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A client that stalled or went away: its connection ends, nothing else does.
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended");
                    }
                }
                _ = dropped.wait_for(|dropped| *dropped) => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("connections still open at shutdown are dropped");
        let _ = dropping.send(true);
    }
}

/// Answers a connection beyond the limits and closes it: 503, or 200 to `GET /healthz`. With
/// `reading`, the request is waited for a moment; without, only what has arrived is read.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    mut io: IO,
    reading: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    // A timeout of zero still polls the read once: what has arrived is read.
    let wait = match &reading {
        Some(_) => REFUSED_READ,
        None => Duration::ZERO,
    };
    let healthz = tokio::time::timeout(wait, asks_for_health(&mut io))
        .await
        .unwrap_or(false);
    drop(reading);
    let reply = if healthz { HEALTHY } else { REFUSED };
    let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(reply)).await;
}

/// Whether the request that `io` begins with is `GET /healthz`.
async fn asks_for_health<IO: AsyncRead + Unpin>(io: &mut IO) -> bool {
    const ASK: &[u8] = b"GET /healthz ";
    let mut head = [0u8; ASK.len()];
    let mut got = 0;
    while got < ASK.len() {
        match io.read(&mut head[got..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
        if !ASK.starts_with(&head[..got]) {
            return false;
        }
    }
    true
}

/// Connections open now, in all and by user.
#[derive(Default)]
struct Open {
    all: usize,
    by_uid: HashMap<u32, usize>,
}

/// One open connection, counted until dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    uid: Option<u32>,
}

impl Slot {
    fn take(open: &Arc<Mutex<Open>>, limits: &Limits, uid: Option<u32>) -> Option<Slot> {
        let mut counts = open.lock().unwrap_or_else(|p| p.into_inner());
        if counts.all >= limits.max_connections {
            return None;
        }
        if let Some(uid) = uid {
            let mine = counts.by_uid.entry(uid).or_default();
            // Root has no share, but leaves one share to the others.
            let share = match uid {
                0 => limits.max_connections.saturating_sub(limits.max_per_user),
                _ => limits.max_per_user,
            };
            if *mine >= share {
                return None;
            }
            *mine += 1;
        }
        counts.all += 1;
        Some(Slot {
            open: open.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|p| p.into_inner());
        counts.all -= 1;
        if let Some(uid) = self.uid
            && let Some(mine) = counts.by_uid.get_mut(&uid)
        {
            *mine -= 1;
            if *mine == 0 {
                counts.by_uid.remove(&uid);
            }
        }
    }
}

/// A connection whose writes fail once they have been stuck for `timeout`: the peer stopped
/// reading, and its reply would otherwise hold the connection (and its task) for ever.
struct TimedIo<IO> {
    io: IO,
    timeout: Duration,
    /// Set while a write waits for room.
    stuck_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> TimedIo<IO> {
    fn new(io: IO, timeout: Duration) -> Self {
        TimedIo {
            io,
            timeout,
            stuck_since: None,
        }
    }

    /// `Pending` from a write: starts (or checks) the clock; an error once it has run out.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let deadline = self
            .stuck_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of its reply for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.waiting(cx),
            ready => {
                self.stuck_since = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for TimedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for TimedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(polled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_in_all_and_per_user_and_root_leaves_a_share_to_the_others() {
        let limits = Limits {
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_connections: 5,
            max_per_user: 2,
            grace: Duration::from_secs(1),
        };
        let open = Arc::new(Mutex::new(Open::default()));
        let roots: Vec<_> = (0..3)
            .map(|_| Slot::take(&open, &limits, Some(0)).unwrap())
            .collect();
        assert!(Slot::take(&open, &limits, Some(0)).is_none(), "root's part");
        let a1 = Slot::take(&open, &limits, Some(1000)).unwrap();
        let _a2 = Slot::take(&open, &limits, Some(1000)).unwrap();
        assert!(Slot::take(&open, &limits, Some(1001)).is_none(), "in all");
        drop(roots);
        assert!(Slot::take(&open, &limits, Some(1000)).is_none(), "per user");
        drop(a1);
        assert!(Slot::take(&open, &limits, Some(1000)).is_some());
        assert_eq!(
            REFUSED.len() - REFUSED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4,
            100,
            "content-length is the body's"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_is_told_healthy_only_when_it_asks_for_health() {
        for (request, reply) in [
            (&b"GET /healthz HTTP/1.1\r\n\r\n"[..], HEALTHY),
            (b"GET /v1/findings/stream HTTP/1.1\r\n\r\n", REFUSED),
            (b"GET /healthzz HTTP/1.1\r\n\r\n", REFUSED),
            (b"", REFUSED),
        ] {
            let (mut client, daemon) = tokio::net::UnixStream::pair().unwrap();
            client.write_all(request).await.unwrap();
            let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().ok();
            refuse(daemon, permit).await;
            // A request left unread makes the close a reset, after the reply.
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            assert_eq!(got, reply, "{}", String::from_utf8_lossy(request));
        }
        // Without a permit only what has arrived is read: half a request, a 503.
        let (mut client, daemon) = tokio::net::UnixStream::pair().unwrap();
        client.write_all(b"GET /heal").await.unwrap();
        refuse(daemon, None).await;
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        assert_eq!(got, REFUSED);
        let (mut client, daemon) = tokio::net::UnixStream::pair().unwrap();
        client
            .write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        refuse(daemon, None).await;
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got).await;
        assert_eq!(got, HEALTHY);
    }

    /// A stream that never ends (a findings stream nobody reads) keeps its connection busy,
    /// and the timeouts are far longer than the grace: once the grace has run out the
    /// connection is dropped all the same (before, its task outlived `serve` and held the
    /// client until a timeout or the daemon's exit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_still_open_when_the_grace_runs_out_is_dropped() {
        use axum::response::sse::{Event, Sse};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let limits = Limits {
            read_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(600),
            max_connections: 5,
            max_per_user: 5,
            grace: Duration::from_millis(100),
        };
        let endless = || async {
            Sse::new(tokio_stream::pending::<
                Result<Event, std::convert::Infallible>,
            >())
        };
        let app = axum::Router::new().route("/endless", axum::routing::get(endless));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, limits, |_| None, async move {
            let _ = stopped.await;
        }));
        let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
        client
            .write_all(b"GET /endless HTTP/1.1\r\nHost: m\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 64];
        let n = client.read(&mut head).await.unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{head:?}");
        stop.send(()).unwrap();
        server.await.unwrap();
        // Not the timeouts' 600 s: the test's own bound stands in for "never".
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection outlived the grace");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_stuck_longer_than_the_timeout_fails() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let mut io = TimedIo::new(a, Duration::from_millis(200));
        let chunk = vec![0u8; 1 << 16];
        let started = std::time::Instant::now();
        let err = loop {
            if let Err(e) = io.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
