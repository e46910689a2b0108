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
//!   daemon never runs out of descriptors;
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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tower_http::timeout::RequestBodyTimeout;

use crate::daemon::auth::Peer;

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
    let open = Arc::new(Mutex::new(Open::default()));
    let mut shutdown = pin!(shutdown);
    loop {
        // Listener::accept retries failed accepts itself (EMFILE: it waits a moment).
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let peer = peer_of(&io);
        let Some(slot) = Slot::take(&open, &limits, peer.as_ref().map(|p| p.creds.uid)) else {
            tracing::warn!(
                uid = peer.as_ref().map(|p| p.creds.uid),
                "connection refused: too many open"
            );
            tokio::spawn(refuse(io));
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
        tokio::spawn(async move {
            // A client that stalled or went away: its connection ends, nothing else does.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
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
    }
}

/// Answers a connection beyond the limits and closes it.
async fn refuse<IO: AsyncWrite + Unpin>(mut io: IO) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.write_all(REFUSED)).await;
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
            // Root is not limited per user: the operator's own checks must get through.
            if uid != 0 && *mine >= limits.max_per_user {
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
    fn connections_are_counted_in_all_and_per_user_and_root_is_not_limited_per_user() {
        let limits = Limits {
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            max_connections: 4,
            max_per_user: 2,
            grace: Duration::from_secs(1),
        };
        let open = Arc::new(Mutex::new(Open::default()));
        let a1 = Slot::take(&open, &limits, Some(1000)).unwrap();
        let _a2 = Slot::take(&open, &limits, Some(1000)).unwrap();
        assert!(Slot::take(&open, &limits, Some(1000)).is_none(), "per user");
        let _r1 = Slot::take(&open, &limits, Some(0)).unwrap();
        let _r2 = Slot::take(&open, &limits, Some(0)).unwrap();
        assert!(Slot::take(&open, &limits, Some(0)).is_none(), "in all");
        drop(a1);
        assert!(Slot::take(&open, &limits, Some(1000)).is_some());
        assert_eq!(
            REFUSED.len() - REFUSED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4,
            100,
            "content-length is the body's"
        );
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
