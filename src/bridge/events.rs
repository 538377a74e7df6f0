//! The client events of the namespace (`offlineNotifications`,
//! `markAsRead`, `markAllAsRead`, `archive`, `completeAction`, anything
//! else), each answered through its ack, within the
//! socket's rate, its user's requests in flight, and dropped when the
//! socket goes.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify_store::User;
use serde_json::Value;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};

use super::Bridge;
use super::admission::Admission;
use super::core_client::unary;
use super::emit::emit;
use super::paging::{next_page_start, offline_page, remember_page};
use super::payload::{
    AppError, Envelope, NotificationJson, PreferencesJson, Updated, archive_request,
    complete_action_request, mark_all_request, mark_request, page_request, preferences_request,
};
use super::rate::{SharedRateLimit, Verdict};
use crate::contract::proto;

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

/// Serves one client request: within the socket's rate, then its work
/// within its user's requests in flight, answered through the ack (nothing
/// is answered if the socket left first).
async fn serve<T: serde::Serialize>(
    socket: &SocketRef,
    ack: AckSender,
    work: impl Future<Output = Result<Envelope<T>, AppError>>,
) {
    let Some(ack) = admit(socket, Some(ack)) else {
        return;
    };
    if let Some(result) = in_flight(socket, work).await {
        answer(socket, ack, result);
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
        .get::<Arc<Admission>>()
        .map(|admission| admission.identity.user)
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
pub(super) async fn on_unknown_event(socket: SocketRef, Event(event): Event, ack: AckSender) {
    if let Some(ack) = admit(&socket, Some(ack)) {
        let shown: String = event.chars().take(64).collect();
        answer::<()>(
            &socket,
            ack,
            Err(AppError::bad_input(format!(
                "unknown event {shown:?}: use offlineNotifications, markAsRead, \
                 markAllAsRead, archive, completeAction, getPreferences or setPreferences"
            ))),
        );
    }
}

pub(super) async fn on_offline_page(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let work = async {
        let user = user_of(&socket)?;
        let request = page_request(payload)?;
        let cursor = next_page_start(&socket);
        let client = bridge.core.for_user(user);
        let read = offline_page(
            client,
            user,
            request.query,
            request.page,
            request.limit,
            cursor,
        )
        .await?;
        remember_page(&socket, read.next);
        Ok(read.envelope)
    };
    serve(&socket, ack, work).await;
}

pub(super) async fn on_mark_as_read(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
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
    serve(&socket, ack, work).await;
}

pub(super) async fn on_mark_all_as_read(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let work = async {
        let user = user_of(&socket)?;
        let (category, up_to_seq) = mark_all_request(payload)?;
        let updated = bridge
            .core
            .for_user(user)
            .mark_all_notifications(unary(proto::MarkAllNotificationsRequest {
                vendor_id: user.vendor_id(),
                customer_id: user.customer_id(),
                status: proto::Status::Read as i32,
                category: category.unwrap_or_default(),
                up_to_seq,
            }))
            .await?
            .into_inner()
            .updated;
        Ok(Envelope::ok(Updated { updated }))
    };
    serve(&socket, ack, work).await;
}

pub(super) async fn on_archive(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let work = async {
        let user = user_of(&socket)?;
        let (ids, archived) = archive_request(payload)?;
        let updated = bridge
            .core
            .for_user(user)
            .archive_notifications(unary(proto::ArchiveNotificationsRequest {
                vendor_id: user.vendor_id(),
                customer_id: user.customer_id(),
                ids,
                archived: Some(archived),
            }))
            .await?
            .into_inner()
            .updated;
        Ok(Envelope::ok(Updated { updated }))
    };
    serve(&socket, ack, work).await;
}

pub(super) async fn on_complete_action(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let work = async {
        let user = user_of(&socket)?;
        let (id, action_id) = complete_action_request(payload)?;
        let done = bridge
            .core
            .for_user(user)
            .complete_action(unary(proto::CompleteActionRequest {
                vendor_id: user.vendor_id(),
                customer_id: user.customer_id(),
                id,
                action_id,
            }))
            .await?
            .into_inner();
        Ok(Envelope::ok(NotificationJson::from(&done)))
    };
    serve(&socket, ack, work).await;
}

pub(super) async fn on_get_preferences(
    socket: SocketRef,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let work = async {
        let user = user_of(&socket)?;
        let rules = bridge
            .core
            .for_user(user)
            .get_preferences(unary(proto::GetPreferencesRequest {
                vendor_id: user.vendor_id(),
                customer_id: user.customer_id(),
            }))
            .await?
            .into_inner();
        Ok(Envelope::ok(PreferencesJson::from(&rules)))
    };
    serve(&socket, ack, work).await;
}

pub(super) async fn on_set_preferences(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(bridge): State<Arc<Bridge>>,
) {
    let work = async {
        let user = user_of(&socket)?;
        let rules = preferences_request(payload)?;
        let rules = bridge
            .core
            .for_user(user)
            .set_preferences(unary(proto::SetPreferencesRequest {
                vendor_id: user.vendor_id(),
                customer_id: user.customer_id(),
                rules,
            }))
            .await?
            .into_inner();
        Ok(Envelope::ok(PreferencesJson::from(&rules)))
    };
    serve(&socket, ack, work).await;
}
