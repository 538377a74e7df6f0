//! One feed per connected user: a single StreamUserEvents call (with
//! presence) shared by all of that user's sockets on this bridge.
//!
//! The feed remembers the last seq it passed on. If the core goes away, its
//! sockets get `appError` 503 and stay connected; the feed reconnects with
//! backoff and resumes with `afterSeq` = that seq, so nothing committed in
//! between is lost (a notification may come twice; `id` tells).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_store::User;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Bridge;
use super::payload::{
    AppError, Envelope, NotificationJson, PresenceEnvelope, PresenceJson, UnreadCount,
};
use crate::proto::{self, user_event::Event};

/// A user's feed and the sockets it serves.
pub struct Feed {
    user: User,
    sockets: Mutex<Vec<SocketRef>>,
    connected: watch::Sender<bool>,
    stop: CancellationToken,
    last_unread: Mutex<Option<i64>>,
}

/// All feeds of this bridge.
#[derive(Default)]
pub struct Feeds {
    by_user: Mutex<HashMap<User, Arc<Feed>>>,
}

impl Feeds {
    /// Adds the socket to its user's feed, starting the feed if it is the
    /// user's first socket here.
    pub fn attach(&self, bridge: &Arc<Bridge>, socket: SocketRef, user: User) -> Arc<Feed> {
        let mut by_user = lock(&self.by_user);
        let feed = by_user.entry(user).or_insert_with(|| {
            let feed = Arc::new(Feed {
                user,
                sockets: Mutex::new(Vec::new()),
                connected: watch::Sender::new(false),
                stop: bridge.shutdown.child_token(),
                last_unread: Mutex::new(None),
            });
            tokio::spawn(run(bridge.clone(), feed.clone()));
            metrics::gauge!("notify_bridge_users").increment(1.0);
            feed
        });
        lock(&feed.sockets).push(socket);
        feed.clone()
    }

    /// The user's connected sockets on this bridge.
    pub fn sockets_of(&self, user: User) -> usize {
        lock(&self.by_user)
            .get(&user)
            .map_or(0, |feed| lock(&feed.sockets).len())
    }

    /// Removes the socket; the user's last socket stops the feed, which
    /// closes the stream and so tells the core the user went offline.
    pub fn detach(&self, user: User, socket: Sid) {
        let mut by_user = lock(&self.by_user);
        let Some(feed) = by_user.get(&user) else {
            return;
        };
        let empty = {
            let mut sockets = lock(&feed.sockets);
            sockets.retain(|s| s.id != socket);
            sockets.is_empty()
        };
        if empty {
            feed.stop.cancel();
            by_user.remove(&user);
            metrics::gauge!("notify_bridge_users").decrement(1.0);
        }
    }
}

impl Feed {
    /// Waits until the feed's stream to the core is open.
    pub async fn wait_connected(&self) {
        let mut connected = self.connected.subscribe();
        let _ = connected.wait_for(|c| *c).await;
    }

    /// Whether the stream to the core is open now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Sends `unreadCount` to every socket if the count changed.
    fn unread_changed(&self, count: i64) {
        {
            let mut last = lock(&self.last_unread);
            if *last == Some(count) {
                return;
            }
            *last = Some(count);
        }
        self.emit("unreadCount", &Envelope::ok(UnreadCount { count }));
    }

    fn emit<T: serde::Serialize + ?Sized>(&self, event: &'static str, data: &T) {
        for socket in lock(&self.sockets).iter().filter(|s| !is_stalled(s)) {
            emit(socket, event, data);
        }
    }
}

/// Emits and counts; a full or closed socket only costs that socket the
/// event (what it misses stays in its offline list).
pub fn emit<T: serde::Serialize + ?Sized>(socket: &SocketRef, event: &'static str, data: &T) {
    match socket.emit(event, data) {
        Ok(()) => metrics::counter!("notify_bridge_emits_total", "event" => event).increment(1),
        Err(error) => emit_failed(socket, event, &error),
    }
}

/// Marks a socket whose send buffer filled up: it reads nothing.
#[derive(Clone, Copy)]
struct Stalled;

fn is_stalled(socket: &SocketRef) -> bool {
    socket.extensions.get::<Stalled>().is_some()
}

/// A socket whose buffer is full reads nothing. It gets nothing more, so
/// it holds no more than its full buffer ([`super::SOCKET_BUFFER`]
/// packets), and it is disconnected: at once if the disconnect packet still
/// fits, otherwise by the heartbeat it cannot answer; its connection is
/// closed once writes have waited `--write-stall-timeout` (see
/// [`super::limits::StallLimited`]). It gets its backlog from
/// `offlineNotifications` when it reconnects.
fn emit_failed(socket: &SocketRef, event: &'static str, error: &SendError) {
    metrics::counter!("notify_bridge_emit_failures_total", "event" => event).increment(1);
    tracing::debug!(sid = %socket.id, event, %error, "emit failed");
    if matches!(error, SendError::Socket(SocketError::InternalChannelFull)) && !is_stalled(socket) {
        socket.extensions.insert(Stalled);
        metrics::counter!("notify_bridge_stalled_disconnects_total").increment(1);
        tracing::info!(sid = %socket.id, "socket stalled (send buffer full); disconnecting it");
        let _ = socket.clone().disconnect();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn run(bridge: Arc<Bridge>, feed: Arc<Feed>) {
    let mut last_seq: Option<i64> = None;
    let mut backoff = BACKOFF_START;
    let mut outage = false;
    while !feed.stop.is_cancelled() {
        let result = follow(&bridge, &feed, &mut last_seq, &mut outage).await;
        match result {
            Ok(()) => break,
            Err(status) => {
                feed.connected.send_replace(false);
                if !outage {
                    outage = true;
                    metrics::counter!("notify_bridge_core_reconnects_total").increment(1);
                    tracing::warn!(user = %feed.user, error = %status.message(), "stream to the core lost; reconnecting");
                    feed.emit("appError", &AppError::from(status));
                }
                tokio::select! {
                    _ = feed.stop.cancelled() => break,
                    _ = tokio::time::sleep(jitter(backoff)) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Opens the stream (resuming after `last_seq`) and passes events on until
/// the feed stops (`Ok`) or the stream fails (`Err`).
async fn follow(
    bridge: &Bridge,
    feed: &Feed,
    last_seq: &mut Option<i64>,
    outage: &mut bool,
) -> Result<(), tonic::Status> {
    let mut client = bridge.core.for_user(feed.user);
    let head = client
        .list_offline(proto::ListOfflineRequest {
            vendor_id: feed.user.vendor_id(),
            customer_id: feed.user.customer_id(),
            page: Some(1),
            limit: Some(1),
        })
        .await?
        .into_inner();
    // First time: start after the newest existing notification, since
    // sockets get older ones from their offline list, fetched after this.
    // After an outage: resume where the feed stopped.
    let after = last_seq.unwrap_or(head.last_seq);
    *last_seq = Some(after);
    let mut stream = client
        .stream_user_events(proto::StreamUserEventsRequest {
            vendor_id: feed.user.vendor_id(),
            customer_id: feed.user.customer_id(),
            after_seq: Some(after),
            presence: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    feed.connected.send_replace(true);
    if std::mem::take(outage) {
        tracing::info!(user = %feed.user, after, "stream to the core resumed");
        // Tells the sockets the service is back, with the count as it is now.
        let unread = head.pagination.map(|p| p.total_records).unwrap_or_default();
        *lock(&feed.last_unread) = None;
        feed.unread_changed(unread);
    }
    loop {
        let message = tokio::select! {
            _ = feed.stop.cancelled() => return Ok(()),
            message = stream.message() => message?,
        };
        let Some(event) = message else {
            return Err(tonic::Status::unavailable("the core ended the stream"));
        };
        pass_on(bridge, feed, event, last_seq);
    }
}

fn pass_on(bridge: &Bridge, feed: &Feed, event: proto::UserEvent, last_seq: &mut Option<i64>) {
    match event.event {
        Some(Event::Notification(notification)) => {
            *last_seq = Some(last_seq.unwrap_or(0).max(notification.seq));
            let json = NotificationJson::from(&notification);
            for socket in lock(&feed.sockets).iter().filter(|s| !is_stalled(s)) {
                deliver(bridge, socket, feed.user, &json);
            }
        }
        Some(Event::UserOffline(peer)) => feed.emit(
            "userIsOffline",
            &PresenceEnvelope {
                error: false,
                message: "User has gone offline",
                data: PresenceJson {
                    vendor_id: peer.vendor_id,
                    customer_id: peer.customer_id,
                    last_seen_at: Some(peer.last_seen_at),
                },
                status_code: 200,
            },
        ),
        Some(Event::UserOnline(peer)) => feed.emit(
            "userIsOnline",
            &PresenceEnvelope {
                error: false,
                message: "User is online",
                data: PresenceJson {
                    vendor_id: peer.vendor_id,
                    customer_id: peer.customer_id,
                    last_seen_at: None,
                },
                status_code: 200,
            },
        ),
        Some(Event::NotificationUpdated(_) | Event::State(_)) | None => {}
    }
    if let Some(count) = event.unread_count {
        feed.unread_changed(count);
    }
}

/// Emits `notification` with an ack request; the ack becomes a DELIVERED
/// receipt.
fn deliver(bridge: &Bridge, socket: &SocketRef, user: User, json: &NotificationJson) {
    match socket.emit_with_ack::<_, Value>("notification", json) {
        Ok(ack) => {
            metrics::counter!("notify_bridge_emits_total", "event" => "notification").increment(1);
            bridge.receipts.on_ack(user, vec![json.id.clone()], ack);
        }
        Err(error) => emit_failed(socket, "notification", &error),
    }
}

/// Up to ±25 % so reconnecting feeds do not move in lockstep.
fn jitter(base: Duration) -> Duration {
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    base.mul_f64(factor)
}
