//! `notify bridge`: the core's streams, re-emitted to browsers over
//! Socket.IO on the `/notification` namespace.
//!
//! - `connection`: a socket's arrival: the token, its place under the
//!   user's socket limit, its handlers, its feed.
//! - `admission`: which sockets each user has here (the per-user limit),
//!   and the mailbox of each user's feed.
//! - `events`: the client events, each answered through its ack.
//! - `emit`: emitting, and the one path by which an ack becomes a receipt
//!   (live notifications and inbox pages alike).
//! - `paging`: inbox pages as sockets get them (keyset for the next page).
//! - `auth`: JWT checks and issuing (`notify token`).
//! - `payload`: the Socket.IO JSON of the seed, and the `appError` mapping.
//! - `core_client`: the connections to the core, and its health for `/readyz`.
//! - `feed`: one task per connected user: their core stream and their
//!   sockets, each socket's life an explicit state machine.
//! - `link`: the few FollowUsers calls that carry every user's stream.
//! - `receipts`: acks become DELIVERED marks, batched; flushed at shutdown.
//! - `page`: the embedded inbox page served at `/`.
//! - `limits`: what a person can set (sockets and requests per user,
//!   events per second, sizes, timeouts, connections).
//! - `rate`: the token bucket behind events per second.
//! - `origin`: allowed browser origins and CORS.
//! - `stall`: the write deadline of every connection.
//! - `handshake`: what a session-opening request may keep, and the cap on
//!   sessions not yet authenticated.
//! - `server`: the HTTP/1 server: header-read timeout, header size and the
//!   connection cap.
//! - this file: the configuration, the HTTP routes, `bind` and `run`.

mod admission;
pub mod auth;
mod connection;
pub mod core_client;
mod emit;
mod events;
mod feed;
mod handshake;
pub mod limits;
mod link;
mod origin;
mod page;
mod paging;
pub mod payload;
mod rate;
mod receipts;
mod server;
mod stall;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use socketioxide::handler::ConnectHandler;
use socketioxide::{ParserConfig, SocketIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use admission::Feeds;
use auth::Verifier;
use core_client::CoreClient;
use handshake::Handshakes;
use limits::Limits;
use link::Links;
use receipts::Receipts;

/// The Socket.IO namespace of the contract.
pub const NAMESPACE: &str = "/notification";

/// Packets queued for one socket before it counts as stalled and is
/// disconnected (it gets its backlog from `offlineNotifications` when it
/// reconnects). Bounds the memory a socket that reads nothing can hold.
pub const SOCKET_BUFFER: usize = 1024;

/// Engine.IO heartbeat: a connection that answers no ping for
/// `PING_INTERVAL + PING_TIMEOUT` is closed (this is also what ends a
/// stalled socket whose buffer is too full for a polite disconnect).
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// See [`PING_INTERVAL`].
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the work left at shutdown (delivery receipts of acks already
/// received) may take before the bridge exits anyway.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// What `notify bridge` needs besides its listener.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `http://host:port` of the core.
    pub core_url: String,
    /// Who signs client tokens: the bridge's secret, the platform's
    /// identity provider, or both.
    pub jwt: Arc<Verifier>,
    /// Sent to the core as `authorization: Bearer` when set.
    pub api_token: Option<String>,
    /// HTTP/2 connections to the core.
    pub core_connections: usize,
    /// What users and sockets may do.
    pub limits: Limits,
}

/// Shared by every handler.
pub struct Bridge {
    jwt: Arc<Verifier>,
    core: CoreClient,
    links: Links,
    feeds: Arc<Feeds>,
    receipts: Receipts,
    shutdown: CancellationToken,
    limits: Limits,
}

/// Serves the bridge on `listener` (and `/metrics` on `metrics_listener`)
/// until `shutdown`, then closes sockets politely and stops.
pub async fn run(
    config: BridgeConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let core = CoreClient::new(
        &config.core_url,
        config.api_token.as_deref(),
        config.core_connections,
    )?;
    let token = CancellationToken::new();
    let bridge = Arc::new(Bridge {
        jwt: config.jwt.clone(),
        core: core.clone(),
        links: Links::start(&core, &token),
        feeds: Arc::default(),
        receipts: Receipts::start(core.clone()),
        shutdown: token.clone(),
        limits: config.limits.clone(),
    });
    tokio::spawn(core.clone().watch_health(token.clone()));
    if let Some(metrics_listener) = metrics_listener {
        tokio::spawn(crate::telemetry::serve_metrics(
            metrics_listener,
            token.clone().cancelled_owned(),
        ));
    }

    let (layer, io) = SocketIo::builder()
        .with_state(bridge.clone())
        .max_buffer_size(SOCKET_BUFFER)
        .max_payload(config.limits.max_payload)
        .ws_max_message_size(config.limits.max_payload as usize)
        .ws_max_frame_size(config.limits.max_payload as usize)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .ack_timeout(Duration::from_secs(10))
        // A session that has not sent its token by then is closed.
        .connect_timeout(config.limits.handshake_timeout)
        // The API uses no binary attachments: a packet announcing any is
        // refused and its connection closed, before a byte of them is held.
        .with_parser(
            ParserConfig::common()
                .max_incoming_binaries(0)
                .max_incoming_binary_buf_size(0),
        )
        // Client events are small; a 4 KiB read buffer per idle socket is
        // memory it holds for nothing (larger frames still arrive whole).
        .ws_read_buffer_size(1024)
        .build_layer();
    io.ns(
        NAMESPACE,
        connection::on_connect.with(connection::authenticate),
    );

    let ready = core.clone();
    let app = page::routes()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "core unreachable")
                    }
                }
            }),
        )
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Handshakes::new(config.limits.max_pending_handshakes)),
            handshake::open_session,
        ))
        .layer(origin::cors(&config.limits.allowed_origins))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(config.limits.allowed_origins.clone()),
            origin::check_origin,
        ));

    let stopping = token.clone();
    let closing_io = io.clone();
    server::serve(listener, app, &config.limits, async move {
        shutdown.await;
        tracing::info!("shutting down: closing sockets");
        closing_io.close().await;
        stopping.cancel();
    })
    .await;
    token.cancel();
    bridge
        .receipts
        .flush(tokio::time::Instant::now() + DRAIN_GRACE)
        .await;
    tracing::info!("bridge stopped");
    Ok(())
}

/// Where the bridge's `/metrics` listens when `--metrics-listen` is not given.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9465";

/// Where HTTP and Socket.IO listen when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3000";

/// The core a bridge reaches when `--core-url` is not given: a core on its
/// own default address ([`crate::core::DEFAULT_LISTEN`]).
pub const DEFAULT_CORE_URL: &str = "http://127.0.0.1:50051";

/// Binds the bridge's listener, and its metrics listener unless
/// `metrics_listen` is `None` (`notify dev`, whose core serves the
/// process's metrics), then prints the line scripts wait for:
/// `notify bridge ready http=ADDR metrics=ADDR`.
pub async fn bind(
    listen: &str,
    metrics_listen: Option<Option<&str>>,
) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let metrics = match metrics_listen {
        Some(explicit) => crate::telemetry::bind_metrics(explicit, DEFAULT_METRICS_LISTEN).await?,
        None => None,
    };
    let addr: SocketAddr = listener.local_addr()?;
    let metrics_addr = crate::telemetry::metrics_addr(metrics.as_ref());
    tracing::info!(%addr, %metrics_addr, "notify bridge listening");
    crate::telemetry::say(&format!(
        "notify bridge ready http={addr} metrics={metrics_addr}"
    ));
    Ok((listener, metrics))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_core_url_is_the_cores_default_address() {
        assert_eq!(
            super::DEFAULT_CORE_URL,
            format!("http://{}", crate::core::DEFAULT_LISTEN)
        );
    }
}
