//! The gRPC adapter: each method validates its request, delegates to the
//! store or the stream machinery, and maps errors to status codes here and
//! nowhere else.

use std::sync::Arc;
use std::time::Instant;

use notify_store::{NewNotification, StoreError, User};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Core, stream};
use crate::contract::convert;
use crate::contract::proto::{self, notification_service_server::NotificationService};
use crate::contract::validate::{self, FieldError};

/// The `notify.v1.NotificationService` implementation.
pub struct Api {
    core: Arc<Core>,
}

impl Api {
    /// Serves `core` over gRPC.
    pub fn new(core: Arc<Core>) -> Api {
        Api { core }
    }
}

/// A bad field as INVALID_ARGUMENT naming it.
pub fn invalid(error: FieldError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The one mapping from store failures to gRPC codes.
pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(reason) => {
            Status::unavailable(format!("database unavailable, retry later: {reason}"))
        }
        StoreError::Closed => Status::unavailable("the core is shutting down, retry later"),
        StoreError::Corrupt(reason) => Status::internal(reason),
    }
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

fn new_notification(
    recipient: User,
    kind: &str,
    channel: i32,
    content: Option<&prost_types::Struct>,
    priority: i32,
    idempotency_key: &str,
) -> Result<NewNotification, FieldError> {
    Ok(NewNotification {
        recipient,
        kind: validate::kind(kind)?,
        channel: validate::channel(channel)?,
        content: validate::content(content)?,
        priority: validate::priority(priority)?,
        idempotency_key: validate::idempotency_key(idempotency_key)?,
    })
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl NotificationService for Api {
    async fn create_notification(
        &self,
        request: Request<proto::CreateNotificationRequest>,
    ) -> Reply<proto::Notification> {
        let _timer = Timer::start("CreateNotification");
        let request = request.into_inner();
        let new = (|| -> Result<_, FieldError> {
            let recipient = validate::recipient(request.vendor_id, request.customer_id)?;
            new_notification(
                recipient,
                &request.r#type,
                request.channel,
                request.content.as_ref(),
                request.priority,
                &request.idempotency_key,
            )
        })()
        .map_err(invalid)?;
        let created = self
            .core
            .store
            .create(vec![new])
            .await
            .map_err(store_status)?;
        let created = created
            .into_iter()
            .next()
            .ok_or_else(|| Status::internal("the store returned no notification"))?;
        if created.fresh {
            metrics::counter!("notify_notifications_created_total").increment(1);
        }
        Ok(Response::new(convert::notification(&created.notification)))
    }

    async fn create_notifications(
        &self,
        request: Request<proto::CreateNotificationsRequest>,
    ) -> Reply<proto::CreateNotificationsResponse> {
        let _timer = Timer::start("CreateNotifications");
        let request = request.into_inner();
        let batch = (|| -> Result<_, FieldError> {
            let users = validate::users(
                "recipients",
                request
                    .recipients
                    .iter()
                    .map(|r| (r.vendor_id, r.customer_id)),
            )?;
            let template = new_notification(
                User::vendor(1),
                &request.r#type,
                request.channel,
                request.content.as_ref(),
                request.priority,
                &request.idempotency_key,
            )?;
            Ok(users
                .into_iter()
                .map(|recipient| NewNotification {
                    recipient,
                    ..template.clone()
                })
                .collect::<Vec<_>>())
        })()
        .map_err(invalid)?;
        let created = self.core.store.create(batch).await.map_err(store_status)?;
        let fresh = created.iter().filter(|c| c.fresh).count();
        metrics::counter!("notify_notifications_created_total").increment(fresh as u64);
        Ok(Response::new(proto::CreateNotificationsResponse {
            items: created
                .iter()
                .map(|c| convert::notification(&c.notification))
                .collect(),
        }))
    }

    async fn get_notification(
        &self,
        request: Request<proto::GetNotificationRequest>,
    ) -> Reply<proto::Notification> {
        let _timer = Timer::start("GetNotification");
        let id = validate::id("id", &request.get_ref().id).map_err(invalid)?;
        match self.core.store.get(&id).await.map_err(store_status)? {
            Some(notification) => Ok(Response::new(convert::notification(&notification))),
            None => Err(Status::not_found(format!("no notification with id {id}"))),
        }
    }

    async fn list_offline(
        &self,
        request: Request<proto::ListOfflineRequest>,
    ) -> Reply<proto::ListOfflineResponse> {
        let _timer = Timer::start("ListOffline");
        let request = request.into_inner();
        let (user, page, limit, start) = (|| -> Result<_, FieldError> {
            let page = validate::page(request.page)?;
            Ok((
                validate::recipient(request.vendor_id, request.customer_id)?,
                page,
                validate::limit(request.limit)?,
                validate::page_start(page, request.before_seq)?,
            ))
        })()
        .map_err(invalid)?;
        let offline = self
            .core
            .store
            .list_unread(user, start, limit)
            .await
            .map_err(store_status)?;
        let pagination = crate::contract::paging::Pagination::new(page, limit, offline.total);
        let epoch = self.core.store.epoch().to_owned();
        Ok(Response::new(proto::ListOfflineResponse {
            items: offline.items.iter().map(convert::notification).collect(),
            pagination: Some(pagination.into()),
            last_seq: offline.last_seq,
            epoch,
            version: offline.version,
        }))
    }

    async fn mark_notifications(
        &self,
        request: Request<proto::MarkNotificationsRequest>,
    ) -> Reply<proto::MarkNotificationsResponse> {
        let _timer = Timer::start("MarkNotifications");
        let request = request.into_inner();
        let (user, ids, status) = (|| -> Result<_, FieldError> {
            Ok((
                validate::recipient(request.vendor_id, request.customer_id)?,
                validate::ids(&request.ids)?,
                validate::mark_status(request.status)?,
            ))
        })()
        .map_err(invalid)?;
        let outcome = self
            .core
            .store
            .mark(user, ids, status)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::MarkNotificationsResponse {
            updated: outcome.updated.len() as i32,
        }))
    }

    async fn record_deliveries(
        &self,
        request: Request<proto::RecordDeliveriesRequest>,
    ) -> Reply<proto::RecordDeliveriesResponse> {
        let _timer = Timer::start("RecordDeliveries");
        let request = request.into_inner();
        let marks = (|| -> Result<_, FieldError> {
            let users = validate::users(
                "receipts",
                request
                    .receipts
                    .iter()
                    .map(|r| (r.vendor_id, r.customer_id)),
            )?;
            users
                .into_iter()
                .zip(&request.receipts)
                .enumerate()
                .map(|(index, (user, receipts))| {
                    let ids = validate::ids(&receipts.ids)
                        .map_err(|e| e.within(&format!("receipts[{index}]")))?;
                    Ok((user, ids))
                })
                .collect::<Result<Vec<_>, FieldError>>()
        })()
        .map_err(invalid)?;
        // Side by side: the store's group commit folds them into one
        // transaction.
        let mut pending = tokio::task::JoinSet::new();
        for (user, ids) in marks {
            let store = self.core.store.clone();
            pending
                .spawn(async move { store.mark(user, ids, notify_store::Status::Delivered).await });
        }
        let mut updated = 0;
        let mut failure = None;
        while let Some(joined) = pending.join_next().await {
            match joined {
                Ok(Ok(outcome)) => updated += outcome.updated.len() as i32,
                Ok(Err(error)) => failure = Some(store_status(error)),
                Err(error) => failure = Some(Status::internal(error.to_string())),
            }
        }
        match failure {
            Some(status) => Err(status),
            None => Ok(Response::new(proto::RecordDeliveriesResponse { updated })),
        }
    }

    type StreamUserEventsStream = ReceiverStream<Result<proto::UserEvent, Status>>;

    async fn stream_user_events(
        &self,
        request: Request<proto::StreamUserEventsRequest>,
    ) -> Reply<Self::StreamUserEventsStream> {
        let request = request.into_inner();
        let request = (|| -> Result<_, FieldError> {
            let after_seq = validate::after_seq(request.after_seq)?;
            Ok(stream::Request {
                user: validate::recipient(request.vendor_id, request.customer_id)?,
                after_seq,
                after_id: validate::after_id(&request.after_id, after_seq)?,
                after_version: validate::after_version(request.after_version, after_seq)?,
                epoch: validate::epoch(&request.epoch)?,
                presence: request.presence,
                sync: request.sync,
            })
        })()
        .map_err(invalid)?;
        if self.core.shutdown.is_cancelled() {
            return Err(store_status(StoreError::Closed));
        }
        let events = stream::open(self.core.clone(), request).await?;
        Ok(Response::new(ReceiverStream::new(events)))
    }

    async fn join_room(&self, request: Request<proto::RoomRequest>) -> Reply<proto::RoomResponse> {
        let _timer = Timer::start("JoinRoom");
        let (room, user) = room_request(request.get_ref()).map_err(invalid)?;
        self.core
            .store
            .join_room(&room, user)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::RoomResponse {}))
    }

    async fn leave_room(&self, request: Request<proto::RoomRequest>) -> Reply<proto::RoomResponse> {
        let _timer = Timer::start("LeaveRoom");
        let (room, user) = room_request(request.get_ref()).map_err(invalid)?;
        self.core
            .store
            .leave_room(&room, user)
            .await
            .map_err(store_status)?;
        Ok(Response::new(proto::RoomResponse {}))
    }

    async fn list_room_members(
        &self,
        request: Request<proto::ListRoomMembersRequest>,
    ) -> Reply<proto::ListRoomMembersResponse> {
        let _timer = Timer::start("ListRoomMembers");
        let room = validate::room(&request.get_ref().room).map_err(invalid)?;
        let members = self
            .core
            .store
            .room_members(&room)
            .await
            .map_err(store_status)?;
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

fn room_request(request: &proto::RoomRequest) -> Result<(String, User), FieldError> {
    Ok((
        validate::room(&request.room)?,
        validate::recipient(request.vendor_id, request.customer_id)?,
    ))
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
