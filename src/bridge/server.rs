//! The bridge's HTTP/1 server, in place of `axum::serve`, which sets no
//! timer: a connection may take at most the header-read timeout to send
//! its request headers (and may sit idle between requests no longer), its
//! headers may hold at most [`MAX_HEADER_BYTES`], and at most
//! `--max-connections` connections are open at once. A connection over
//! the cap is closed as soon as it is accepted, so the process never runs
//! out of descriptors; the ones it has keep working.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::limits::Limits;
use super::stall::StallLimited;

/// Most bytes of a request's start line and headers; more get 431. Browsers
/// send a few KiB, cookies included.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Serves `app` on `listener` until `shutdown`, then lets each connection
/// finish its request in flight (upgraded WebSockets are closed by
/// Socket.IO itself) and returns once all have.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Dropping `stopped` tells every connection to finish; each holds a
    // clone of `connections` until it has, and `done` sees the last go.
    let (stop, stopped) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stopped);
    });
    let (done, connections) = watch::channel(());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or memory: wait rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.closed() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("notify_bridge_connections_refused_total").increment(1);
            tracing::debug!(
                max = limits.max_connections,
                "connection refused: at the connection cap"
            );
            drop(stream);
            continue;
        };
        // Small events go out at once rather than waiting for an ACK.
        let _ = stream.set_nodelay(true);
        // The slot goes with the connection, also once it is a WebSocket.
        let io = TokioIo::new(StallLimited::new(stream, limits.write_stall_timeout).holding(slot));
        let service = TowerToHyperService::new(app.clone());
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_header_size(MAX_HEADER_BYTES);
        let stop = stop.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let mut connection = pin!(builder.serve_connection(io, service).with_upgrades());
            let mut stopping = pin!(stop.closed());
            // Polled once only: a finished future must not be polled again.
            let mut told = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        break;
                    }
                    () = &mut stopping, if !told => {
                        told = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(connections);
        });
    }
    drop(listener);
    drop(connections);
    done.closed().await;
}
