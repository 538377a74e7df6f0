//! `notify bridge`: the core's streams, re-emitted to browsers over
//! Socket.IO on the `/notification` namespace.
//!
//! - `auth`: JWT checks and issuing (`notify token`).
//! - `payload`: the Socket.IO JSON of the seed, and the `appError` mapping.
//! - `core_client`: the connections to the core, and its health for `/readyz`.
//! - `feed`: one task per connected user: their core stream and their
//!   sockets, each socket's life an explicit state machine.
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
//! - this file: the namespace's handlers, HTTP routes and `run`.

pub mod auth;
pub mod core_client;
mod feed;
mod handshake;
pub mod limits;
mod origin;
mod page;
pub mod payload;
mod rate;
mod receipts;
mod server;
mod stall;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use notify_store::{Pagination, User};
use serde_json::Value;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::{ParserConfig, SocketIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proto;
use auth::{Jwt, TokenError};
use core_client::{CoreClient, unary};
use feed::{Admission, Feeds, emit};
use handshake::{Handshakes, PendingHandshake};
use limits::Limits;
use payload::{AppError, Envelope, NotificationJson, Page, Updated, mark_request, page_request};
use rate::{RateLimit, SharedRateLimit, Verdict};
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
    /// HS256 secret for client tokens.
    pub jwt_secret: String,
    /// Sent to the core as `authorization: Bearer` when set.
    pub api_token: Option<String>,
    /// HTTP/2 connections to the core.
    pub core_connections: usize,
    /// What users and sockets may do.
    pub limits: Limits,
}

/// Shared by every handler.
pub struct Bridge {
    jwt: Jwt,
    core: CoreClient,
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
        jwt: Jwt::new(config.jwt_secret.as_bytes()),
        core: core.clone(),
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
    io.ns(NAMESPACE, on_connect.with(authenticate));

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

/// Connect middleware: a valid token or no connection. The refusal's text
/// is the JSON envelope, which socket.io-client hands over as `err.message`.
async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(bridge): State<Arc<Bridge>>,
) -> Result<(), AppError> {
    let from_auth = auth
        .ok()
        .and_then(|auth| auth.get("token").and_then(Value::as_str).map(str::to_owned));
    let from_header = || {
        socket
            .req_parts()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| token.trim().to_owned())
    };
    let token = from_auth
        .filter(|t| !t.is_empty())
        .or_else(from_header)
        .ok_or(TokenError::Missing);
    let identity = token
        .and_then(|token| bridge.jwt.verify(&token))
        .map_err(|error| {
            metrics::counter!("notify_bridge_refused_total").increment(1);
            AppError::unauthenticated(error.to_string())
        })?;
    // Counted against the limit here, under one lock: handshakes racing
    // each other cannot pass it together.
    let limit = bridge.limits.sockets_per_user;
    let Some(admission) = bridge.feeds.admit(&bridge, identity, socket.id, limit) else {
        metrics::counter!("notify_bridge_refused_total").increment(1);
        return Err(AppError::too_many(format!(
            "too many connections: at most {limit} sockets per user"
        )));
    };
    socket.extensions.insert(identity.user);
    socket.extensions.insert(Arc::new(admission));
    if let Some(pending) = socket.req_parts().extensions.get::<PendingHandshake>() {
        pending.authenticated();
    }
    Ok(())
}

/// The socket is connected: its handlers, then its feed, which sends its
/// inbox and everything after (see `feed` for the socket's life).
async fn on_connect(socket: SocketRef, io: SocketIo, State(bridge): State<Arc<Bridge>>) {
    let Some(admission) = socket.extensions.get::<Arc<Admission>>() else {
        let _ = socket.disconnect();
        return;
    };
    socket
        .extensions
        .insert::<SharedRateLimit>(Arc::new(Mutex::new(RateLimit::new(
            bridge.limits.events_per_second,
        ))));
    socket.extensions.insert::<SharedPages>(Arc::default());
    socket.on("offlineNotifications", on_offline_page);
    socket.on("markAsRead", on_mark_as_read);
    socket.on_fallback(on_unknown_event);
    // Join before the disconnect handler exists, so its Leave cannot come
    // first. A client gone before this handler ran had no disconnect
    // handler to run: it leaves right after joining. Gone means marked
    // disconnected, or already removed from the namespace: socketioxide can
    // close a socket whose connection dropped mid-handshake and still mark
    // it connected afterwards, then run this handler.
    if !bridge.feeds.join(&admission, socket.clone()) {
        let _ = socket.disconnect();
        return;
    }
    let leaving = admission.clone();
    socket.on_disconnect(async move || leaving.leave());
    let present = io
        .of(NAMESPACE)
        .is_some_and(|namespace| namespace.get_socket(socket.id).is_some());
    if !socket.connected() || !present {
        tracing::debug!(sid = %socket.id, "socket gone before its connect handler ran");
        metrics::counter!("notify_bridge_gone_before_connect_total").increment(1);
        admission.leave();
    }
}

/// One page of a user's unread inbox as sockets see it, with what the
/// bridge needs besides: its ids (for receipts) and the count's version.
pub struct OfflinePage {
    /// The `offlineNotifications` envelope.
    pub envelope: Envelope<Page>,
    /// The ids of its items.
    pub ids: Vec<String>,
    /// Where the next page starts: the seq of its last item.
    pub next: Option<PageCursor>,
    /// The unread count (`totalRecords`) …
    pub total: i64,
    /// … and the change version it is exact at.
    pub version: i64,
    /// The database's epoch.
    pub epoch: String,
}

/// Where a socket's next page starts, from the last page it was sent:
/// asked for next, that page is read by keyset (after this seq), so paging
/// through a deep inbox costs each page its own rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// The page that starts there …
    pub page: u32,
    /// … when pages have this many items …
    pub limit: u32,
    /// … right after this seq …
    pub after: i64,
    /// … as long as the socket has been sent no notification newer than
    /// this (the user's highest seq when the page was read): a new one on
    /// top moves every page down by one, and the next page is counted from
    /// the top again.
    pub read_at: i64,
}

/// What a socket was sent that its next page depends on; in its extensions.
#[derive(Default)]
struct PageMemory {
    next: Option<PageCursor>,
    /// The highest seq sent to it live.
    delivered: i64,
}

type SharedPages = Arc<Mutex<PageMemory>>;

fn with_pages<T>(socket: &SocketRef, f: impl FnOnce(&mut PageMemory) -> T) -> Option<T> {
    let pages = socket.extensions.get::<SharedPages>()?;
    let mut memory = pages
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some(f(&mut memory))
}

/// Remembers where the socket's next page starts.
fn remember_page(socket: &SocketRef, next: Option<PageCursor>) {
    with_pages(socket, |memory| memory.next = next);
}

/// The socket was sent notification `seq` live.
fn delivered_live(socket: &SocketRef, seq: i64) {
    with_pages(socket, |memory| {
        memory.delivered = memory.delivered.max(seq)
    });
}

/// Where the socket's next page starts, if nothing newer reached it since.
fn next_page_start(socket: &SocketRef) -> Option<PageCursor> {
    with_pages(socket, |memory| {
        memory
            .next
            .filter(|cursor| memory.delivered <= cursor.read_at)
    })
    .flatten()
}

/// Reads one page of the user's unread inbox; by keyset when `cursor` says
/// where this page starts.
async fn offline_page(
    mut client: core_client::CoreApi,
    user: User,
    page: u32,
    limit: u32,
    cursor: Option<PageCursor>,
) -> Result<OfflinePage, tonic::Status> {
    let before_seq = cursor
        .filter(|c| (c.page, c.limit) == (page, limit))
        .map(|c| c.after);
    let response = client
        .list_offline(unary(proto::ListOfflineRequest {
            vendor_id: user.vendor_id(),
            customer_id: user.customer_id(),
            page: Some(page as i32),
            limit: Some(limit as i32),
            before_seq,
        }))
        .await?
        .into_inner();
    let total = response
        .pagination
        .map(|p| p.total_records)
        .unwrap_or_default();
    let next = response.items.last().map(|last| PageCursor {
        page: page + 1,
        limit,
        after: last.seq,
        read_at: response.last_seq,
    });
    Ok(OfflinePage {
        ids: response.items.iter().map(|n| n.id.clone()).collect(),
        next,
        envelope: Envelope::ok(Page {
            items: response.items.iter().map(NotificationJson::from).collect(),
            pagination: Pagination::new(page, limit, total).into(),
        }),
        total,
        version: response.version,
        epoch: response.epoch,
    })
}

/// Answers a client event: the envelope through the ack, and on failure
/// also an `appError` emit.
fn answer<T: serde::Serialize>(
    socket: &SocketRef,
    ack: AckSender,
    result: Result<Envelope<T>, AppError>,
) {
    let sent = match &result {
        Ok(envelope) => ack.send(envelope),
        Err(error) => {
            emit(socket, "appError", error);
            ack.send(error)
        }
    };
    if let Err(error) = sent {
        tracing::debug!(sid = %socket.id, %error, "ack not sent");
    }
}

/// Runs one client request's work, within its user's limit of requests in
/// flight (429 at once past it), and drops it if the socket leaves first:
/// `None` then, as nobody is left to answer.
async fn in_flight<T>(
    socket: &SocketRef,
    work: impl Future<Output = Result<Envelope<T>, AppError>>,
) -> Option<Result<Envelope<T>, AppError>> {
    let Some(admission) = socket.extensions.get::<Arc<Admission>>() else {
        return Some(Err(AppError::unauthenticated("not authenticated")));
    };
    let Ok(_permit) = admission.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("notify_bridge_in_flight_refused_total").increment(1);
        return Some(Err(AppError::too_many(
            "too many requests in flight for this user: wait for the answers",
        )));
    };
    tokio::select! {
        result = work => Some(result),
        () = admission.gone.cancelled() => {
            metrics::counter!("notify_bridge_requests_cancelled_total").increment(1);
            None
        }
    }
}

fn user_of(socket: &SocketRef) -> Result<User, AppError> {
    socket
        .extensions
        .get::<User>()
        .ok_or_else(|| AppError::unauthenticated("not authenticated"))
}

/// Applies the socket's rate limit to one client event. A dropped event
/// gets 429 at most once a second (an `appError`, and through its ack), so a
/// flood cannot make the bridge flood back; a socket that keeps flooding is
/// disconnected.
fn admit(socket: &SocketRef, ack: Option<AckSender>) -> Option<AckSender> {
    let Some(limit) = socket.extensions.get::<SharedRateLimit>() else {
        return ack;
    };
    let verdict = limit
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .check(Instant::now());
    let refusal = || AppError::too_many("too many events: slow down");
    match verdict {
        Verdict::Allow => return ack,
        Verdict::Drop { warn } => {
            metrics::counter!("notify_bridge_rate_limited_total").increment(1);
            if warn {
                emit(socket, "appError", &refusal());
                if let Some(ack) = ack {
                    let _ = ack.send(&refusal());
                }
            }
        }
        Verdict::Disconnect => {
            metrics::counter!("notify_bridge_rate_limit_disconnects_total").increment(1);
            tracing::info!(sid = %socket.id, "socket kept flooding past its rate limit; disconnecting it");
            emit(socket, "appError", &refusal());
            // A moment for the 429 to go out before the disconnect closes it.
            let socket = socket.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = socket.disconnect();
            });
        }
    }
    None
}

/// Any event the namespace does not know: 400, and it counts against the
/// rate limit like the others.
async fn on_unknown_event(socket: SocketRef, Event(event): Event, ack: AckSender) {
    if let Some(ack) = admit(&socket, Some(ack)) {
        let shown: String = event.chars().take(64).collect();
        answer::<()>(
            &socket,
            ack,
            Err(AppError::bad_input(format!(
                "unknown event {shown:?}: use offlineNotifications or markAsRead"
            ))),
        );
    }
}

async fn on_offline_page(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let Some(ack) = admit(&socket, Some(ack)) else {
        return;
    };
    let work = async {
        let user = user_of(&socket)?;
        let (page, limit) = page_request(payload)?;
        let cursor = next_page_start(&socket);
        let read = offline_page(bridge.core.for_user(user), user, page, limit, cursor).await?;
        remember_page(&socket, read.next);
        Ok(read.envelope)
    };
    if let Some(result) = in_flight(&socket, work).await {
        answer(&socket, ack, result);
    }
}

async fn on_mark_as_read(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let Some(ack) = admit(&socket, Some(ack)) else {
        return;
    };
    let work = async {
        let user = user_of(&socket)?;
        let ids = mark_request(payload)?;
        let updated = bridge
            .core
            .for_user(user)
            .mark_notifications(unary(proto::MarkNotificationsRequest {
                vendor_id: user.vendor_id(),
                customer_id: user.customer_id(),
                ids,
                status: proto::Status::Read as i32,
            }))
            .await?
            .into_inner()
            .updated;
        Ok(Envelope::ok(Updated { updated }))
    };
    if let Some(result) = in_flight(&socket, work).await {
        answer(&socket, ack, result);
    }
}
