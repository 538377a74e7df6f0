//! `notify core`: the gRPC notification service.
//!
//! - `notifications`: the core's verbs ([`Notifications`]): create, list,
//!   mark, record deliveries, open a stream, rooms.
//! - `command`: the typed commands they take, each built from its gRPC
//!   request by `TryFrom` (validation naming the field).
//! - `error`: [`CoreError`], what a verb can fail with.
//! - `service`: the gRPC adapter: command → verb → proto, and the one
//!   mapping of core errors to status codes; the api token.
//! - `stream`: one user's event stream, catch-up then live, as domain events.
//! - `follow`: many users' streams on one FollowUsers call (a bridge's), one
//!   task and a map entry per user.
//! - `hub`: in-process fan-out of committed changes to open streams.
//! - `bus`: fan-out between cores over NATS, when `--bus` names one.
//! - `presence`: who is online here, and telling room peers.
//! - `sweeps`: expiry and retention in the background.

pub mod bus;
pub mod command;
pub mod error;
pub mod follow;
pub mod hub;
pub mod notifications;
pub mod presence;
pub mod service;
pub mod stream;
pub mod sweeps;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use notify_store::{PgOptions, PgStore, SqliteOptions, SqliteStore, Store, Synchronous};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::contract::proto::{self, notification_service_server::NotificationServiceServer};
pub use error::CoreError;
use hub::{Hub, Interest};
pub use notifications::Notifications;
use presence::Presence;
use service::{Api, ApiToken};

/// Concurrent calls one HTTP/2 connection may carry. A bridge holds one
/// stream per connected user, so hyper's default of 200 would cap it.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100_000;

/// How long open calls may take to finish after a shutdown signal.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// What `notify core` needs besides its listeners.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// `sqlite://path` (created if missing) or `postgres://…`.
    pub database_url: String,
    /// Required as `authorization: Bearer <token>` on every call when set.
    pub api_token: Option<String>,
    /// SQLite commit durability.
    pub synchronous: Synchronous,
    /// How long presence entries outlive a core that stopped refreshing them.
    pub presence_ttl: Duration,
    /// Pool settings when the database is PostgreSQL.
    pub postgres: PgOptions,
    /// READ, archived, replaced and expired notifications older than this
    /// are deleted.
    pub retention: Duration,
    /// `nats://host:port`: changes travel between cores over NATS instead
    /// of PostgreSQL's LISTEN/NOTIFY.
    pub bus: Option<String>,
}

/// The shortest `--presence-ttl`: entries are refreshed three times per TTL,
/// and a shorter one would turn the heartbeat into a write loop.
pub const MIN_PRESENCE_TTL: Duration = Duration::from_secs(1);

impl CoreConfig {
    /// Refuses settings the core cannot run with, naming the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.presence_ttl < MIN_PRESENCE_TTL {
            bail!(
                "--presence-ttl must be at least {}, got {}",
                humantime::format_duration(MIN_PRESENCE_TTL),
                humantime::format_duration(self.presence_ttl)
            );
        }
        if self.retention < Duration::from_secs(1) {
            bail!(
                "--retention must be at least 1s, got {}",
                humantime::format_duration(self.retention)
            );
        }
        if let Some(bus) = &self.bus {
            if !is_postgres(&self.database_url) {
                bail!(
                    "--bus needs a PostgreSQL --database-url (postgres://…): with SQLite one core \
                     holds every stream, and there is nothing to fan out between cores"
                );
            }
            let parsed = url::Url::parse(bus)
                .map_err(|error| anyhow::anyhow!("--bus {bus:?} is not a URL: {error}"))?;
            if parsed.scheme() != "nats" || parsed.host_str().is_none() {
                bail!("--bus must be nats://host:port, got {bus:?}");
            }
        }
        Ok(())
    }
}

/// Opens the store named by `url`, publishing its commits into `hub`.
pub async fn open_store(
    url: &str,
    synchronous: Synchronous,
    pg: PgOptions,
    hub: Arc<Hub>,
) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let options = SqliteOptions {
            synchronous,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(url, options, hub)
            .await
            .with_context(|| format!("cannot open {url}"))?;
        return Ok(Arc::new(store));
    }
    if is_postgres(url) {
        let store = PgStore::open(url, pg, hub)
            .await
            .context("cannot open the PostgreSQL database")?;
        return Ok(Arc::new(store));
    }
    bail!("unsupported --database-url {url:?}: expected sqlite://FILE or postgres://…")
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

/// Opens the store, and with `--bus` the bus: the store hands its notices
/// to the bus after commit, and the bus brings this core's users' changes
/// back to the hub through the store. With a bus, also the publisher's
/// task, which on `token` sends what it holds and ends.
async fn open_fanout(
    config: &CoreConfig,
    hub: Arc<Hub>,
    interest: Option<tokio::sync::mpsc::UnboundedReceiver<Interest>>,
    token: &CancellationToken,
) -> anyhow::Result<(Arc<dyn Store>, Option<tokio::task::JoinHandle<()>>)> {
    let (Some(url), Some(interest)) = (&config.bus, interest) else {
        let store = open_store(
            &config.database_url,
            config.synchronous,
            config.postgres.clone(),
            hub,
        )
        .await?;
        return Ok((store, None));
    };
    let bus = bus::Bus::connect(url, hub.clone()).await?;
    let (outbox, publisher) = bus.outbox(token.clone());
    let store = PgStore::open_with_outbox(
        &config.database_url,
        config.postgres.clone(),
        hub.clone(),
        Some(outbox),
    )
    .await
    .context("cannot open the PostgreSQL database")?;
    bus::watch(&bus, store.clone(), hub, interest, token.clone());
    tracing::info!(bus = %url, "changes travel between cores over NATS");
    Ok((Arc::new(store), Some(publisher)))
}

/// Serves the core on `listener` (and `/metrics` on `metrics_listener`)
/// until `shutdown` resolves, then drains open calls for at most
/// [`DRAIN_GRACE`].
pub async fn run(
    config: CoreConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (interest, interest_changes) = match config.bus {
        Some(_) => {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        }
        None => (None, None),
    };
    let (hub, presence_changes) = Hub::with_interest(interest);
    let hub = Arc::new(hub);
    let token = CancellationToken::new();
    let bus_token = CancellationToken::new();
    let (store, publisher) =
        open_fanout(&config, hub.clone(), interest_changes, &bus_token).await?;
    let presence = Presence::start(
        store.clone(),
        hub.clone(),
        presence_changes,
        config.presence_ttl,
        token.clone(),
    );
    sweeps::start(store.clone(), config.retention, token.clone());
    let core = Arc::new(Notifications::new(store, hub, presence, token.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<NotificationServiceServer<Api>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let api = InterceptedService::new(
        NotificationServiceServer::new(Api::new(core.clone())),
        ApiToken::new(config.api_token.as_deref()),
    );

    if let Some(metrics_listener) = metrics_listener {
        tokio::spawn(crate::telemetry::serve_metrics(
            metrics_listener,
            token.clone().cancelled_owned(),
        ));
    }

    let stop = token.clone();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        // Without TCP_NODELAY a small reply can wait 40 ms for a delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                shutdown.await;
                tracing::info!("shutting down: ending streams and draining calls");
                stop.cancel();
            },
        );
    tokio::select! {
        served = server => served.context("gRPC server failed")?,
        _ = async { token.cancelled().await; tokio::time::sleep(DRAIN_GRACE).await } => {
            tracing::warn!(grace = ?DRAIN_GRACE, "calls still open after the grace period; stopping anyway");
        }
    }
    // The last calls' notices, and their marks, go out before the process
    // ends: other cores' streams of those users hear of them now.
    bus_token.cancel();
    if let Some(publisher) = publisher
        && tokio::time::timeout(bus::FLUSH_GRACE, publisher)
            .await
            .is_err()
    {
        tracing::warn!(
            "the bus did not take the last notices in time; other cores' streams read them at their next change"
        );
    }
    // This core's presence entries stay behind and expire after the TTL:
    // users whose connections move elsewhere within it are announced to
    // nobody (see `presence`).
    tracing::info!("core stopped");
    Ok(())
}

/// Where gRPC listens when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Where `/metrics` listens when `--metrics-listen` is not given.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// Binds the gRPC and metrics listeners for `notify core` and prints the
/// line scripts wait for: `notify core ready grpc=ADDR metrics=ADDR`.
///
/// An explicit `metrics_listen` that cannot be bound is an error. When it is
/// not given, the default port is tried, and if another process (another
/// core on this machine, say) holds it, the core runs without `/metrics`
/// and says so (`metrics=off`) rather than refusing to start.
pub async fn bind(
    listen: &str,
    metrics_listen: Option<&str>,
) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let grpc = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let metrics = crate::telemetry::bind_metrics(metrics_listen, DEFAULT_METRICS_LISTEN).await?;
    let grpc_addr: SocketAddr = grpc.local_addr()?;
    let metrics_addr = crate::telemetry::metrics_addr(metrics.as_ref());
    tracing::info!(%grpc_addr, %metrics_addr, "notify core listening");
    crate::telemetry::say(&format!(
        "notify core ready grpc={grpc_addr} metrics={metrics_addr}"
    ));
    Ok((grpc, metrics))
}
