//! The gRPC adapter: each method is validate (a typed command from the
//! request), call (a verb of [`Notifications`]), convert (store values to
//! proto). This is the one place a core error becomes a status code.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use notify_store::StoreError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::command::{
    Archive, CompleteAction, Create, List, Mark, MarkAll, Membership, OpenStream, RecordDeliveries,
    SetPreferences, Subscription,
};
use super::error::CoreError;
use super::follow::FollowCommand;
use super::notifications::{Notifications, Sent};
use super::stream::{Event, Followed, StreamEvent, StreamState};
use crate::contract::convert;
use crate::contract::proto::{self, notification_service_server::NotificationService};
use crate::contract::validate::{self, FieldError};

/// The `notify.v1.NotificationService` implementation.
pub struct Api {
    core: Arc<Notifications>,
}

impl Api {
    /// Serves `core` over gRPC.
    pub fn new(core: Arc<Notifications>) -> Api {
        Api { core }
    }
}

/// A bad field as INVALID_ARGUMENT naming it.
fn invalid(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The one mapping from core failures to gRPC codes.
fn status(error: CoreError) -> Status {
    match error {
        CoreError::Store(StoreError::Unavailable(reason)) => {
            Status::unavailable(format!("database unavailable, retry later: {reason}"))
        }
        CoreError::Store(StoreError::Closed) => {
            Status::unavailable("the core is shutting down, retry later")
        }
        CoreError::Store(StoreError::Corrupt(reason)) => Status::internal(reason),
        CoreError::NotFound(what) => Status::not_found(what),
        CoreError::Invalid(error) => invalid(error),
        CoreError::FailedPrecondition(why) => Status::failed_precondition(why),
        CoreError::Internal(reason) => Status::internal(reason),
    }
}

/// What became of one notification of a create, as the reply lists it.
fn reply_item(sent: &Sent) -> proto::Notification {
    match sent {
        Sent::Stored(created) => convert::notification(&created.notification),
        Sent::Suppressed(new) => convert::suppressed(new),
    }
}

/// Validates a request into its command.
fn command<'a, R, C>(request: &'a R) -> Result<C, Status>
where
    C: TryFrom<&'a R, Error = FieldError>,
{
    C::try_from(request).map_err(invalid)
}

/// Records a call's latency and outcome when dropped.
struct Timer {
    method: &'static str,
    started: Instant,
}

impl Timer {
    fn start(method: &'static str) -> Timer {
        Timer {
            method,
            started: Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        metrics::histogram!("notify_rpc_seconds", "method" => self.method)
            .record(self.started.elapsed());
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// A stream's events as the gRPC stream sends them.
type EventStream = Pin<Box<dyn Stream<Item = Result<proto::UserEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NotificationService for Api {
    async fn create_notification(
        &self,
        request: Request<proto::CreateNotificationRequest>,
    ) -> Reply<proto::Notification> {
        let _timer = Timer::start("CreateNotification");
        let create: Create = command(request.get_ref())?;
        let sent = self.core.create(create).await.map_err(status)?;
        let notification = sent
            .first()
            .map(reply_item)
            .ok_or_else(|| Status::internal("the store returned no notification"))?;
        Ok(Response::new(notification))
    }

    async fn create_notifications(
        &self,
        request: Request<proto::CreateNotificationsRequest>,
    ) -> Reply<proto::CreateNotificationsResponse> {
        let _timer = Timer::start("CreateNotifications");
        let create: Create = command(request.get_ref())?;
        let sent = self.core.create(create).await.map_err(status)?;
        let suppressed = sent
            .iter()
            .filter(|s| matches!(s, Sent::Suppressed(_)))
            .count();
        Ok(Response::new(proto::CreateNotificationsResponse {
            items: sent.iter().map(reply_item).collect(),
            suppressed: suppressed as i64,
        }))
    }

    async fn cancel_notification(
        &self,
        request: Request<proto::CancelNotificationRequest>,
    ) -> Reply<proto::Notification> {
        let _timer = Timer::start("CancelNotification");
        let id = validate::id("id", &request.get_ref().id).map_err(invalid)?;
        let cancelled = self.core.cancel(&id).await.map_err(status)?;
        Ok(Response::new(convert::notification(&cancelled)))
    }

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Reply<proto::SubscribeResponse> {
        let _timer = Timer::start("Subscribe");
        let command: Subscription = command(request.get_ref())?;
        let added = self.core.subscribe(command).await.map_err(status)?;
        Ok(Response::new(proto::SubscribeResponse {
            added: added as i32,
        }))
    }

    async fn unsubscribe(
        &self,
        request: Request<proto::UnsubscribeRequest>,
    ) -> Reply<proto::UnsubscribeResponse> {
        let _timer = Timer::start("Unsubscribe");
        let command: Subscription = command(request.get_ref())?;
        let removed = self.core.unsubscribe(command).await.map_err(status)?;
        Ok(Response::new(proto::UnsubscribeResponse {
            removed: removed as i32,
        }))
    }

    async fn get_topic(
        &self,
        request: Request<proto::GetTopicRequest>,
    ) -> Reply<proto::GetTopicResponse> {
        let _timer = Timer::start("GetTopic");
        let topic = validate::topic(&request.get_ref().topic).map_err(invalid)?;
        let subscribers = self.core.subscribers(&topic).await.map_err(status)?;
        Ok(Response::new(proto::GetTopicResponse { subscribers }))
    }

    async fn publish_to_topic(
        &self,
        request: Request<proto::PublishToTopicRequest>,
    ) -> Reply<proto::PublishToTopicResponse> {
        let _timer = Timer::start("PublishToTopic");
        let publish: notify_store::Publish = command(request.get_ref())?;
        let fanout = self.core.publish(publish).await.map_err(status)?;
        Ok(Response::new(proto::PublishToTopicResponse {
            fanout_id: fanout.id,
            recipients: fanout.recipients,
        }))
    }

    async fn get_fanout(
        &self,
        request: Request<proto::GetFanoutRequest>,
    ) -> Reply<proto::GetFanoutResponse> {
        let _timer = Timer::start("GetFanout");
        let id = validate::id("fanoutId", &request.get_ref().fanout_id).map_err(invalid)?;
        let fanout = self.core.fanout(&id).await.map_err(status)?;
        Ok(Response::new(proto::GetFanoutResponse {
            recipients: fanout.recipients,
            created: fanout.created,
            done: fanout.done,
            suppressed: fanout.suppressed,
            topic: fanout.topic,
        }))
    }

    async fn set_preferences(
        &self,
        request: Request<proto::SetPreferencesRequest>,
    ) -> Reply<proto::PreferencesResponse> {
        let _timer = Timer::start("SetPreferences");
        let set: SetPreferences = command(request.get_ref())?;
        let rules = self.core.set_preferences(set).await.map_err(status)?;
        Ok(Response::new(convert::preferences(&rules)))
    }

    async fn get_preferences(
        &self,
        request: Request<proto::GetPreferencesRequest>,
    ) -> Reply<proto::PreferencesResponse> {
        let _timer = Timer::start("GetPreferences");
        let user: notify_store::User = command(request.get_ref())?;
        let rules = self.core.preferences(user).await.map_err(status)?;
        Ok(Response::new(convert::preferences(&rules)))
    }

    async fn get_notification(
        &self,
        request: Request<proto::GetNotificationRequest>,
    ) -> Reply<proto::Notification> {
        let _timer = Timer::start("GetNotification");
        let id = validate::id("id", &request.get_ref().id).map_err(invalid)?;
        let notification = self.core.get(&id).await.map_err(status)?;
        Ok(Response::new(convert::notification(&notification)))
    }

    async fn list_offline(
        &self,
        request: Request<proto::ListOfflineRequest>,
    ) -> Reply<proto::ListOfflineResponse> {
        let _timer = Timer::start("ListOffline");
        let list: List = command(request.get_ref())?;
        let inbox = self.core.list(list).await.map_err(status)?;
        Ok(Response::new(list_response(inbox)))
    }

    async fn list_notifications(
        &self,
        request: Request<proto::ListNotificationsRequest>,
    ) -> Reply<proto::ListOfflineResponse> {
        let _timer = Timer::start("ListNotifications");
        let list: List = command(request.get_ref())?;
        let inbox = self.core.list(list).await.map_err(status)?;
        Ok(Response::new(list_response(inbox)))
    }

    async fn get_unread_counts(
        &self,
        request: Request<proto::GetUnreadCountsRequest>,
    ) -> Reply<proto::GetUnreadCountsResponse> {
        let _timer = Timer::start("GetUnreadCounts");
        let user: notify_store::User = command(request.get_ref())?;
        let counts = self.core.unread_counts(user).await.map_err(status)?;
        Ok(Response::new(proto::GetUnreadCountsResponse {
            count: counts.unread,
            by_category: counts.by_category.into_iter().collect(),
            version: counts.version,
        }))
    }

    async fn mark_all_notifications(
        &self,
        request: Request<proto::MarkAllNotificationsRequest>,
    ) -> Reply<proto::MarkNotificationsResponse> {
        let _timer = Timer::start("MarkAllNotifications");
        let mark: MarkAll = command(request.get_ref())?;
        let outcome = self.core.mark_all(mark).await.map_err(status)?;
        Ok(Response::new(proto::MarkNotificationsResponse {
            updated: outcome.updated.len() as i32,
        }))
    }

    async fn erase_user(
        &self,
        request: Request<proto::EraseUserRequest>,
    ) -> Reply<proto::EraseUserResponse> {
        let _timer = Timer::start("EraseUser");
        let user: notify_store::User = command(request.get_ref())?;
        let deleted = self.core.erase_user(user).await.map_err(status)?;
        Ok(Response::new(proto::EraseUserResponse {
            deleted: deleted as i64,
        }))
    }

    async fn complete_action(
        &self,
        request: Request<proto::CompleteActionRequest>,
    ) -> Reply<proto::Notification> {
        let _timer = Timer::start("CompleteAction");
        let action: CompleteAction = command(request.get_ref())?;
        let done = self.core.complete_action(action).await.map_err(status)?;
        Ok(Response::new(convert::notification(&done)))
    }

    async fn archive_notifications(
        &self,
        request: Request<proto::ArchiveNotificationsRequest>,
    ) -> Reply<proto::MarkNotificationsResponse> {
        let _timer = Timer::start("ArchiveNotifications");
        let archive: Archive = command(request.get_ref())?;
        let outcome = self.core.archive(archive).await.map_err(status)?;
        Ok(Response::new(proto::MarkNotificationsResponse {
            updated: outcome.updated.len() as i32,
        }))
    }

    async fn mark_notifications(
        &self,
        request: Request<proto::MarkNotificationsRequest>,
    ) -> Reply<proto::MarkNotificationsResponse> {
        let _timer = Timer::start("MarkNotifications");
        let mark: Mark = command(request.get_ref())?;
        let outcome = self.core.mark(mark).await.map_err(status)?;
        Ok(Response::new(proto::MarkNotificationsResponse {
            updated: outcome.updated.len() as i32,
        }))
    }

    async fn record_deliveries(
        &self,
        request: Request<proto::RecordDeliveriesRequest>,
    ) -> Reply<proto::RecordDeliveriesResponse> {
        let _timer = Timer::start("RecordDeliveries");
        let receipts: RecordDeliveries = command(request.get_ref())?;
        let updated = self
            .core
            .record_deliveries(receipts)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::RecordDeliveriesResponse {
            updated: updated as i32,
        }))
    }

    type StreamUserEventsStream = EventStream;

    async fn stream_user_events(
        &self,
        request: Request<proto::StreamUserEventsRequest>,
    ) -> Reply<Self::StreamUserEventsStream> {
        let open: OpenStream = command(request.get_ref())?;
        let events = self.core.open_stream(open).await.map_err(status)?;
        let events = ReceiverStream::new(events).map(|item| item.map(user_event).map_err(status));
        Ok(Response::new(Box::pin(events)))
    }

    type FollowUsersStream = FollowStream;

    async fn follow_users(
        &self,
        request: Request<tonic::Streaming<proto::FollowRequest>>,
    ) -> Reply<Self::FollowUsersStream> {
        let mut inbound = request.into_inner();
        let (commands, receiver) = tokio::sync::mpsc::channel(256);
        let events = self.core.follow_users(receiver).map_err(status)?;
        tokio::spawn(async move {
            // Ends when the caller closes its side (its follows go on) or
            // the call is gone.
            while let Ok(Some(request)) = inbound.message().await {
                let Some(command) = follow_command(request) else {
                    continue;
                };
                if commands.send(command).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(Batches { events })))
    }

    async fn join_room(&self, request: Request<proto::RoomRequest>) -> Reply<proto::RoomResponse> {
        let _timer = Timer::start("JoinRoom");
        let membership: Membership = command(request.get_ref())?;
        self.core.join_room(membership).await.map_err(status)?;
        Ok(Response::new(proto::RoomResponse {}))
    }

    async fn leave_room(&self, request: Request<proto::RoomRequest>) -> Reply<proto::RoomResponse> {
        let _timer = Timer::start("LeaveRoom");
        let membership: Membership = command(request.get_ref())?;
        self.core.leave_room(membership).await.map_err(status)?;
        Ok(Response::new(proto::RoomResponse {}))
    }

    async fn list_room_members(
        &self,
        request: Request<proto::ListRoomMembersRequest>,
    ) -> Reply<proto::ListRoomMembersResponse> {
        let _timer = Timer::start("ListRoomMembers");
        let room = validate::room(&request.get_ref().room).map_err(invalid)?;
        let members = self.core.room_members(&room).await.map_err(status)?;
        Ok(Response::new(proto::ListRoomMembersResponse {
            members: members
                .into_iter()
                .map(|member| proto::RoomMember {
                    vendor_id: member.user.vendor_id(),
                    customer_id: member.user.customer_id(),
                    online: member.online,
                    last_seen_at: member
                        .last_seen_at
                        .map(notify_store::format_millis)
                        .unwrap_or_default(),
                })
                .collect(),
        }))
    }
}

/// The FollowUsers reply stream.
pub type FollowStream = Pin<Box<dyn Stream<Item = Result<proto::FollowedEvents, Status>> + Send>>;

/// One FollowUsers request as the core's command; `None` for a message
/// that says nothing (no command set).
fn follow_command(request: proto::FollowRequest) -> Option<FollowCommand> {
    use proto::follow_request::Command;
    match request.command? {
        Command::Follow(follow) => {
            let open = match &follow.stream {
                Some(stream) => OpenStream::try_from(stream),
                None => Err(FieldError::new("stream", "is required")),
            };
            Some(FollowCommand::Follow(follow.id, open))
        }
        Command::Unfollow(id) => Some(FollowCommand::Unfollow(id)),
    }
}

/// Most events in one FollowedEvents message.
const EVENTS_PER_MESSAGE: usize = 256;
/// A message takes no more events once their estimated size passes this,
/// so it stays far under what a bridge decodes (16 MiB) whatever the
/// contents (each at most 64 KiB).
const BYTES_PER_MESSAGE: usize = 1024 * 1024;

/// Roughly what an event takes encoded, for [`BYTES_PER_MESSAGE`].
fn size_hint((_, item): &Followed) -> usize {
    match item {
        Ok(StreamEvent {
            event: Event::Notification(notification),
            ..
        }) => 512 + notification.content.len(),
        Ok(StreamEvent {
            event: Event::Updated { ids, .. },
            ..
        }) => 128 + 32 * ids.len(),
        _ => 256,
    }
}

/// The events of a FollowUsers call, as many to a message as are ready
/// (up to [`EVENTS_PER_MESSAGE`] or [`BYTES_PER_MESSAGE`]): one message,
/// one frame and one write for a burst instead of one per event.
struct Batches {
    events: tokio::sync::mpsc::Receiver<Followed>,
}

impl Stream for Batches {
    type Item = Result<proto::FollowedEvents, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let first = match self.events.poll_recv(cx) {
            std::task::Poll::Ready(Some(first)) => first,
            std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
            std::task::Poll::Pending => return std::task::Poll::Pending,
        };
        let mut bytes = size_hint(&first);
        let mut events = vec![followed_event(first)];
        while events.len() < EVENTS_PER_MESSAGE && bytes < BYTES_PER_MESSAGE {
            match self.events.try_recv() {
                Ok(next) => {
                    bytes += size_hint(&next);
                    events.push(followed_event(next));
                }
                Err(_) => break,
            }
        }
        std::task::Poll::Ready(Some(Ok(proto::FollowedEvents { events })))
    }
}

fn followed_event((id, item): Followed) -> proto::FollowedEvent {
    match item {
        Ok(event) => proto::FollowedEvent {
            id,
            event: Some(user_event(event)),
            ended: None,
        },
        Err(error) => {
            let status = status(error);
            proto::FollowedEvent {
                id,
                event: None,
                ended: Some(proto::FollowEnded {
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                }),
            }
        }
    }
}

/// A stream event as the proto message.
fn user_event(item: StreamEvent) -> proto::UserEvent {
    use proto::user_event::Event as Proto;
    let event = match item.event {
        Event::Notification(n) => Proto::Notification(convert::notification(&n)),
        Event::Updated {
            ids,
            update,
            updated_at,
        } => Proto::NotificationUpdated(proto::NotificationsUpdated {
            ids,
            status: update.status.map_or(0, |s| s.code() as i32),
            updated_at: notify_store::format_millis(updated_at),
            archived: update.archived,
            expired: update.expired,
            replaced_by: update.replaced_by.unwrap_or_default(),
            action_taken: update.action_taken.as_ref().map(convert::action_taken),
        }),
        Event::PeerOnline(user) => Proto::UserOnline(convert::presence_change(user, None)),
        Event::PeerOffline { user, last_seen_at } => {
            Proto::UserOffline(convert::presence_change(user, last_seen_at))
        }
        Event::State(state) => Proto::State(stream_state(state)),
    };
    let (unread_count, version, unread_by_category) = match item.count {
        Some(count) => (
            Some(count.unread),
            Some(count.version),
            count
                .by_category
                .iter()
                .map(|(category, n)| (category.clone(), *n))
                .collect(),
        ),
        None => (None, None, Default::default()),
    };
    proto::UserEvent {
        event: Some(event),
        unread_count,
        version,
        unread_by_category,
    }
}

/// A page of a list as ListOffline and ListNotifications answer it.
fn list_response(inbox: super::notifications::Inbox) -> proto::ListOfflineResponse {
    proto::ListOfflineResponse {
        items: inbox.page.items.iter().map(convert::notification).collect(),
        pagination: Some(inbox.pagination.into()),
        last_seq: inbox.page.last_seq,
        epoch: inbox.epoch,
        version: inbox.page.version,
    }
}

fn stream_state(state: StreamState) -> proto::StreamState {
    proto::StreamState {
        epoch: state.epoch,
        last_seq: state.last_seq,
        last_id: state.last_id.unwrap_or_default(),
        version: state.version,
        online_peers: state
            .online_peers
            .iter()
            .map(|peer| proto::Recipient {
                vendor_id: peer.vendor_id(),
                customer_id: peer.customer_id(),
            })
            .collect(),
        reset: state.reset,
    }
}
/// Checks `authorization: Bearer <token>` when a token is configured, by
/// comparing SHA-256 digests in constant time: both sides always 32 bytes,
/// so the time taken tells nothing of the token, not even its length. The
/// token never appears in logs or errors.
#[derive(Clone)]
pub struct ApiToken {
    expected: Option<[u8; 32]>,
}

impl ApiToken {
    /// `None` lets every call through.
    pub fn new(token: Option<&str>) -> ApiToken {
        ApiToken {
            expected: token.map(|t| digest(format!("Bearer {t}").as_bytes())),
        }
    }

    /// Whether `given` (the metadata's bytes) is the expected header.
    fn accepts(&self, given: &[u8]) -> bool {
        self.expected
            .is_none_or(|expected| bool::from(digest(given).ct_eq(&expected)))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl tonic::service::Interceptor for ApiToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if self.accepts(given) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong api token: send metadata `authorization: Bearer <token>`",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiToken;

    /// A burst of the largest notifications leaves in several messages,
    /// each far under what a bridge decodes, none lost or reordered.
    #[tokio::test]
    async fn a_follow_call_s_messages_stay_small_whatever_the_burst() {
        use prost::Message;
        use tokio_stream::StreamExt;

        let f = crate::core::stream::tests::fixture().await;
        let mut large = (*f.create().await).clone();
        large.content = format!("{{\"text\":\"{}\"}}", "a".repeat(60_000));
        let large = std::sync::Arc::new(large);
        let (queue, events) = tokio::sync::mpsc::channel(300);
        for n in 0..300 {
            let event = super::StreamEvent {
                event: super::Event::Notification(large.clone()),
                count: None,
            };
            queue.send((n, Ok(event))).await.unwrap();
        }
        drop(queue);
        let mut batches = super::Batches { events };
        let mut ids = Vec::new();
        while let Some(message) = batches.next().await {
            let message = message.unwrap();
            assert!(
                message.encoded_len() < 2 * 1024 * 1024,
                "{} bytes",
                message.encoded_len()
            );
            ids.extend(message.events.iter().map(|event| event.id));
        }
        assert_eq!(ids, (0..300).collect::<Vec<u64>>());
    }

    #[test]
    fn only_the_exact_header_passes_the_api_token_check() {
        let token = ApiToken::new(Some("s3cret-token"));
        assert!(token.accepts(b"Bearer s3cret-token"));
        for wrong in [
            &b""[..],
            b"Bearer ",
            b"Bearer s3cret-toke",
            b"Bearer s3cret-token ",
            b"Bearer s3cret-tokenx",
            b"bearer s3cret-token",
        ] {
            assert!(
                !token.accepts(wrong),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(ApiToken::new(None).accepts(b""));
    }
}
