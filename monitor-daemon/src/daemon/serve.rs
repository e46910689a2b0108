//! The HTTP/1 server loop of the API socket and the metrics listener.
//!
//! Not `axum::serve`: it sets no timer on hyper's connections, so nothing bounds how long a
//! client may take over a request, and a client that sends half a request (`GET /v1/sta` and
//! then nothing, or a body promised and never sent) holds its connection and its task for
//! ever. Here each connection is hyper's own HTTP/1 connection with a tokio timer:
//!
//! - the head of a request must arrive within `read_timeout` (hyper's header read timeout; it
//!   also runs while a kept-alive connection waits for its next request, so an idle
//!   connection is closed after as long);
//! - a request body must not stall longer than that between two pieces (tower-http's request
//!   body timeout: a slow upload that keeps sending is not cut off).
//!
//! Responses are not bounded: the findings stream is a response that lasts as long as its
//! client wants it.

use std::{future::Future, pin::pin, time::Duration};

use axum::serve::Listener;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tower_http::timeout::RequestBodyTimeout;

/// Serves `app` on `listener` until `shutdown` completes, then lets the open connections
/// finish (each idle one is closed at once, a stalled one at its timeout).
pub async fn serve<L: Listener>(
    mut listener: L,
    app: axum::Router,
    read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let service = TowerToHyperService::new(RequestBodyTimeout::new(app, read_timeout));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // Listener::accept retries failed accepts itself (EMFILE: it waits a moment).
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(io), service.clone()));
        tokio::spawn(async move {
            // A client that stalled or went away: its connection ends, nothing else does.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
