//! The bridge's connections to the core.
//!
//! Every connected user is one follow on the FollowUsers call of its
//! connection (`link`); users are spread over a few HTTP/2 connections,
//! chosen by user, so no single connection's window caps the bridge, and
//! unary calls about a user go on the same one. Channels connect lazily
//! and reconnect by themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use notify_store::User;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::contract::proto::notification_service_client::NotificationServiceClient;

/// A client for one call; cheap to make.
pub type CoreApi = NotificationServiceClient<InterceptedService<Channel, BearerToken>>;

/// How long a call to the core may take, or a stream take to open, before
/// it fails with UNAVAILABLE (the client hears 503): a hung core must not
/// hold a socket's answer, or its feed, for as long as TCP would.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A unary request that the core (and the client side) give up on after
/// [`CALL_TIMEOUT`]. Not for streams: the deadline would end them.
pub fn unary<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Adds `authorization: Bearer <api token>` when one is configured.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A small pool of lazily connected channels to one core.
#[derive(Clone)]
pub struct CoreClient {
    channels: Arc<[Channel]>,
    token: BearerToken,
    ready: Arc<AtomicBool>,
    next: Arc<AtomicUsize>,
}

impl CoreClient {
    /// `connections` channels to `url`; nothing connects until first use.
    pub fn new(
        url: &str,
        api_token: Option<&str>,
        connections: usize,
    ) -> anyhow::Result<CoreClient> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("invalid --core-url {url:?}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .initial_stream_window_size(Some(1024 * 1024));
        let channels = (0..connections.max(1))
            .map(|_| endpoint.connect_lazy())
            .collect();
        let token = match api_token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .context("--api-token must be printable ASCII")?,
            ),
            None => None,
        };
        Ok(CoreClient {
            channels,
            token: BearerToken(token),
            ready: Arc::new(AtomicBool::new(false)),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A client on the user's channel.
    pub fn for_user(&self, user: User) -> CoreApi {
        self.on_channel(self.channel_of(user))
    }

    /// The index of the user's channel (modulo their number).
    pub fn channel_of(&self, user: User) -> usize {
        user.id.unsigned_abs() as usize ^ user.role.code() as usize
    }

    /// How many channels there are.
    pub fn connections(&self) -> usize {
        self.channels.len()
    }

    /// A client on the next channel in turn, for calls about many users.
    pub fn any(&self) -> CoreApi {
        self.on_channel(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// A client on channel `index` (modulo their number).
    pub fn on_channel(&self, index: usize) -> CoreApi {
        NotificationServiceClient::with_interceptor(
            self.channels[index % self.channels.len()].clone(),
            self.token.clone(),
        )
        .max_decoding_message_size(16 * 1024 * 1024)
    }

    /// Whether the last health check reached the core.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Checks the core's health every second until `stop`, for `/readyz`.
    pub async fn watch_health(self, stop: tokio_util::sync::CancellationToken) {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let mut health = HealthClient::new(self.channels[0].clone());
        loop {
            let check = health.check(HealthCheckRequest {
                service: "notify.v1.NotificationService".into(),
            });
            let serving = matches!(
                tokio::time::timeout(Duration::from_secs(2), check).await,
                Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32
            );
            if serving != self.ready.swap(serving, Ordering::Relaxed) {
                if serving {
                    tracing::info!("core reachable");
                } else {
                    tracing::warn!("core unreachable");
                }
            }
            metrics::gauge!("notify_bridge_core_ready").set(if serving { 1.0 } else { 0.0 });
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
