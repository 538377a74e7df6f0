//! A socket's arrival: the connect middleware (a valid token, a place
//! under the user's socket limit) and the connect handler (its event
//! handlers, then its feed, which owns the rest of its life).

use std::sync::{Arc, Mutex};

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};

use super::admission::Admission;
use super::auth::TokenError;
use super::events::{
    on_archive, on_complete_action, on_get_preferences, on_mark_all_as_read, on_mark_as_read,
    on_offline_page, on_set_preferences, on_unknown_event,
};
use super::handshake::PendingHandshake;
use super::paging;
use super::payload::AppError;
use super::rate::{RateLimit, SharedRateLimit};
use super::{Bridge, NAMESPACE};

/// Connect middleware: a valid token or no connection. The refusal's text
/// is the JSON envelope, which socket.io-client hands over as `err.message`.
pub(super) async fn authenticate(
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
    socket.extensions.insert(Arc::new(admission));
    if let Some(pending) = socket.req_parts().extensions.get::<PendingHandshake>() {
        pending.authenticated();
    }
    Ok(())
}

/// The socket is connected: its handlers, then its feed, which sends its
/// inbox and everything after (see `feed` for the socket's life).
pub(super) async fn on_connect(socket: SocketRef, io: SocketIo, State(bridge): State<Arc<Bridge>>) {
    let Some(admission) = socket.extensions.get::<Arc<Admission>>() else {
        let _ = socket.disconnect();
        return;
    };
    socket
        .extensions
        .insert::<SharedRateLimit>(Arc::new(Mutex::new(RateLimit::new(
            bridge.limits.events_per_second,
        ))));
    paging::track(&socket);
    socket.on("offlineNotifications", on_offline_page);
    socket.on("markAsRead", on_mark_as_read);
    socket.on("markAllAsRead", on_mark_all_as_read);
    socket.on("archive", on_archive);
    socket.on("completeAction", on_complete_action);
    socket.on("getPreferences", on_get_preferences);
    socket.on("setPreferences", on_set_preferences);
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
