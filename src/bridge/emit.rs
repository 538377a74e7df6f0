//! Emitting to sockets: one path for every event, and one for the events
//! whose ack is a delivery receipt (a live `notification` and the
//! connect-time `offlineNotifications` page alike). A socket whose send
//! buffer fills up is stalled: it gets nothing more and is disconnected.

use notify_store::User;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};

use super::Bridge;
use super::payload::{Envelope, NotificationJson, Page};

/// Emits and counts; a full or closed socket only costs that socket the
/// event (what it misses stays in its offline list), and a stalled one gets
/// nothing more.
pub fn emit<T: serde::Serialize + ?Sized>(socket: &SocketRef, event: &'static str, data: &T) {
    if is_stalled(socket) {
        return;
    }
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
/// [`super::stall::StallLimited`]). It gets its backlog from
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

/// Emits a live notification with an ack request; the ack marks it
/// DELIVERED.
pub(super) fn deliver(bridge: &Bridge, socket: &SocketRef, user: User, json: &NotificationJson) {
    emit_for_receipt(
        bridge,
        socket,
        user,
        "notification",
        json,
        vec![json.id.clone()],
    );
}

/// Emits the connect-time page with an ack request; the ack marks its
/// items DELIVERED.
pub(super) fn send_page(
    bridge: &Bridge,
    socket: &SocketRef,
    user: User,
    page: &Envelope<Page>,
    ids: &[String],
) {
    emit_for_receipt(
        bridge,
        socket,
        user,
        "offlineNotifications",
        page,
        ids.to_vec(),
    );
}

/// The one way an ack becomes a receipt: `event` goes out with an ack
/// request, and the ack, when it comes, marks `ids` DELIVERED.
fn emit_for_receipt<T: serde::Serialize>(
    bridge: &Bridge,
    socket: &SocketRef,
    user: User,
    event: &'static str,
    data: &T,
    ids: Vec<String>,
) {
    if is_stalled(socket) {
        return;
    }
    match socket.emit_with_ack::<_, Value>(event, data) {
        Ok(ack) => {
            metrics::counter!("notify_bridge_emits_total", "event" => event).increment(1);
            bridge.receipts.on_ack(user, ids, ack);
        }
        Err(error) => emit_failed(socket, event, &error),
    }
}
