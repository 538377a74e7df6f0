//! What the core is asked to do, as typed commands: each built once from
//! its gRPC request by `TryFrom`, which validates every field and names the
//! first bad one. Past this point nothing is proto and nothing is unchecked.

use notify_store::{
    ListQuery, NewNotification, PageStart, Publish, Rule, Status, User, default_category,
};

use crate::contract::proto;
use crate::contract::validate::{self, FieldError};

/// Store notifications, all or none (one recipient or many).
#[derive(Clone, Debug)]
pub struct Create {
    /// In the order the reply lists them.
    pub notifications: Vec<NewNotification>,
    /// Sent whatever the recipients' preferences.
    pub critical: bool,
    /// When to send them (ms since the epoch); `None`: now.
    pub send_at: Option<i64>,
}

/// Subscribe users to a topic, or unsubscribe them.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// Distinct users.
    pub users: Vec<User>,
}

/// Change a user's preferences.
#[derive(Clone, Debug)]
pub struct SetPreferences {
    /// Whose.
    pub user: User,
    /// Applied in order.
    pub rules: Vec<Rule>,
}

/// A page of one of a user's lists (the unread inbox for ListOffline).
#[derive(Clone, Debug)]
pub struct List {
    /// Whose notifications.
    pub user: User,
    /// Which view, of which category.
    pub query: ListQuery,
    /// 1-based page number, reported back in the pagination.
    pub page: u32,
    /// Rows per page.
    pub limit: u32,
    /// Where the page starts: by number, or right after a seq (keyset).
    pub start: PageStart,
}

/// Move some of a user's notifications forward to a status.
#[derive(Clone, Debug)]
pub struct Mark {
    /// Whose notifications; others' ids are ignored.
    pub user: User,
    /// Canonical ids, each once.
    pub ids: Vec<String>,
    /// DELIVERED or READ.
    pub status: Status,
}

/// Move a user's whole unread inbox (of a category, up to a seq) forward.
#[derive(Clone, Debug)]
pub struct MarkAll {
    /// Whose inbox.
    pub user: User,
    /// DELIVERED or READ.
    pub status: Status,
    /// Only this category.
    pub category: Option<String>,
    /// Only seqs up to this one.
    pub up_to_seq: Option<i64>,
}

/// Archive some of a user's notifications, or bring them back.
#[derive(Clone, Debug)]
pub struct Archive {
    /// Whose notifications; others' ids are ignored.
    pub user: User,
    /// Canonical ids, each once.
    pub ids: Vec<String>,
    /// Archive (true) or bring back (false).
    pub archived: bool,
}

/// Take one of a notification's actions (press its button).
#[derive(Clone, Debug)]
pub struct CompleteAction {
    /// Whose notification.
    pub user: User,
    /// The notification's canonical id.
    pub id: String,
    /// One of its actions' ids.
    pub action_id: String,
}

/// Delivery receipts of many users, as a bridge batches them.
#[derive(Clone, Debug)]
pub struct RecordDeliveries {
    /// Each user once, with the ids delivered to them.
    pub receipts: Vec<(User, Vec<String>)>,
}

/// Open a `StreamUserEvents` stream.
#[derive(Clone, Debug)]
pub struct OpenStream {
    /// Whose events.
    pub user: User,
    /// Replay notifications after this seq; `None`: live only.
    pub after_seq: Option<i64>,
    /// The id the reader holds at `after_seq`.
    pub after_id: Option<String>,
    /// The reader has every change up to this version.
    pub after_version: Option<i64>,
    /// The epoch the reader's positions belong to.
    pub epoch: Option<String>,
    /// The stream counts as a connection of the user.
    pub presence: bool,
    /// Send `state` events.
    pub sync: bool,
}

/// Join or leave a room.
#[derive(Clone, Debug)]
pub struct Membership {
    /// The room's name.
    pub room: String,
    /// Who joins or leaves.
    pub user: User,
}

/// The fields every create shares, as the request spells them.
struct CreateFields<'a> {
    kind: &'a str,
    channel: i32,
    content: Option<&'a prost_types::Struct>,
    priority: i32,
    idempotency_key: &'a str,
    category: &'a str,
    expires_at: &'a str,
    collapse_key: &'a str,
    actions: &'a [proto::Action],
}

/// The [`CreateFields`] of either create request: both spell them alike.
macro_rules! create_fields {
    ($request:expr) => {
        CreateFields {
            kind: &$request.r#type,
            channel: $request.channel,
            content: $request.content.as_ref(),
            priority: $request.priority,
            idempotency_key: &$request.idempotency_key,
            category: &$request.category,
            expires_at: &$request.expires_at,
            collapse_key: &$request.collapse_key,
            actions: &$request.actions,
        }
    };
}

impl CreateFields<'_> {
    /// Checked in the contract's order, for `recipient`.
    fn check(&self, recipient: User) -> Result<NewNotification, FieldError> {
        let kind = validate::kind(self.kind)?;
        Ok(NewNotification {
            id: None,
            recipient,
            channel: validate::channel(self.channel)?,
            content: validate::content(self.content)?,
            priority: validate::priority(self.priority)?,
            idempotency_key: validate::idempotency_key(self.idempotency_key)?,
            category: validate::category(self.category)?.unwrap_or_else(|| default_category(&kind)),
            expires_at: validate::expires_at(self.expires_at, notify_store::now_millis())?,
            collapse_key: validate::collapse_key(self.collapse_key)?,
            actions: validate::actions(self.actions)?,
            kind,
        })
    }
}

/// `sendAt`, checked; a notification must not expire before it is sent.
fn send_at(text: &str, notification: &NewNotification) -> Result<Option<i64>, FieldError> {
    let send_at = validate::send_at(text, notify_store::now_millis())?;
    if let (Some(send_at), Some(expires_at)) = (send_at, notification.expires_at)
        && expires_at <= send_at
    {
        return Err(FieldError::new("expiresAt", "must be after sendAt"));
    }
    Ok(send_at)
}

impl TryFrom<&proto::CreateNotificationRequest> for Create {
    type Error = FieldError;

    fn try_from(request: &proto::CreateNotificationRequest) -> Result<Create, FieldError> {
        let recipient = validate::recipient(request.vendor_id, request.customer_id)?;
        let fields = create_fields!(request);
        let notification = fields.check(recipient)?;
        Ok(Create {
            send_at: send_at(&request.send_at, &notification)?,
            notifications: vec![notification],
            critical: request.critical,
        })
    }
}

impl TryFrom<&proto::CreateNotificationsRequest> for Create {
    type Error = FieldError;

    fn try_from(request: &proto::CreateNotificationsRequest) -> Result<Create, FieldError> {
        let recipients = validate::users(
            "recipients",
            request
                .recipients
                .iter()
                .map(|r| (r.vendor_id, r.customer_id)),
        )?;
        let fields = create_fields!(request);
        // The recipient is filled in per entry below.
        let template = fields.check(User::vendor(1))?;
        Ok(Create {
            send_at: send_at(&request.send_at, &template)?,
            notifications: recipients
                .into_iter()
                .map(|recipient| NewNotification {
                    recipient,
                    ..template.clone()
                })
                .collect(),
            critical: request.critical,
        })
    }
}

impl TryFrom<&proto::SubscribeRequest> for Subscription {
    type Error = FieldError;

    fn try_from(request: &proto::SubscribeRequest) -> Result<Subscription, FieldError> {
        subscription(&request.topic, &request.recipients)
    }
}

impl TryFrom<&proto::UnsubscribeRequest> for Subscription {
    type Error = FieldError;

    fn try_from(request: &proto::UnsubscribeRequest) -> Result<Subscription, FieldError> {
        subscription(&request.topic, &request.recipients)
    }
}

fn subscription(topic: &str, recipients: &[proto::Recipient]) -> Result<Subscription, FieldError> {
    Ok(Subscription {
        topic: validate::topic(topic)?,
        users: validate::users(
            "recipients",
            recipients.iter().map(|r| (r.vendor_id, r.customer_id)),
        )?,
    })
}

impl TryFrom<&proto::PublishToTopicRequest> for Publish {
    type Error = FieldError;

    fn try_from(request: &proto::PublishToTopicRequest) -> Result<Publish, FieldError> {
        let topic = validate::topic(&request.topic)?;
        let fields = create_fields!(request);
        Ok(Publish {
            topic,
            // Each subscriber is a recipient in turn.
            template: fields.check(User::vendor(1))?,
            critical: request.critical,
        })
    }
}

impl TryFrom<&proto::SetPreferencesRequest> for SetPreferences {
    type Error = FieldError;

    fn try_from(request: &proto::SetPreferencesRequest) -> Result<SetPreferences, FieldError> {
        Ok(SetPreferences {
            user: validate::recipient(request.vendor_id, request.customer_id)?,
            rules: validate::rules(&request.rules)?,
        })
    }
}

impl TryFrom<&proto::GetPreferencesRequest> for User {
    type Error = FieldError;

    fn try_from(request: &proto::GetPreferencesRequest) -> Result<User, FieldError> {
        validate::recipient(request.vendor_id, request.customer_id)
    }
}

impl TryFrom<&proto::ListOfflineRequest> for List {
    type Error = FieldError;

    fn try_from(request: &proto::ListOfflineRequest) -> Result<List, FieldError> {
        let page = validate::page(request.page)?;
        Ok(List {
            user: validate::recipient(request.vendor_id, request.customer_id)?,
            query: ListQuery::inbox(),
            page,
            limit: validate::limit(request.limit)?,
            start: validate::page_start(page, request.before_seq)?,
        })
    }
}

impl TryFrom<&proto::ListNotificationsRequest> for List {
    type Error = FieldError;

    fn try_from(request: &proto::ListNotificationsRequest) -> Result<List, FieldError> {
        let user = validate::recipient(request.vendor_id, request.customer_id)?;
        let query = ListQuery {
            view: validate::view(request.view)?,
            category: validate::category(&request.category)?,
        };
        let page = validate::page(request.page)?;
        Ok(List {
            user,
            query,
            page,
            limit: validate::limit(request.limit)?,
            start: validate::page_start(page, request.before_seq)?,
        })
    }
}

impl TryFrom<&proto::MarkAllNotificationsRequest> for MarkAll {
    type Error = FieldError;

    fn try_from(request: &proto::MarkAllNotificationsRequest) -> Result<MarkAll, FieldError> {
        Ok(MarkAll {
            user: validate::recipient(request.vendor_id, request.customer_id)?,
            status: validate::mark_status(request.status)?,
            category: validate::category(&request.category)?,
            up_to_seq: validate::up_to_seq(request.up_to_seq)?,
        })
    }
}

impl TryFrom<&proto::ArchiveNotificationsRequest> for Archive {
    type Error = FieldError;

    fn try_from(request: &proto::ArchiveNotificationsRequest) -> Result<Archive, FieldError> {
        Ok(Archive {
            user: validate::recipient(request.vendor_id, request.customer_id)?,
            ids: validate::ids(&request.ids)?,
            archived: request.archived.unwrap_or(true),
        })
    }
}

impl TryFrom<&proto::CompleteActionRequest> for CompleteAction {
    type Error = FieldError;

    fn try_from(request: &proto::CompleteActionRequest) -> Result<CompleteAction, FieldError> {
        Ok(CompleteAction {
            user: validate::recipient(request.vendor_id, request.customer_id)?,
            id: validate::id("id", &request.id)?,
            action_id: validate::action_id("actionId", &request.action_id)?,
        })
    }
}

impl TryFrom<&proto::EraseUserRequest> for User {
    type Error = FieldError;

    fn try_from(request: &proto::EraseUserRequest) -> Result<User, FieldError> {
        validate::recipient(request.vendor_id, request.customer_id)
    }
}

impl TryFrom<&proto::GetUnreadCountsRequest> for User {
    type Error = FieldError;

    fn try_from(request: &proto::GetUnreadCountsRequest) -> Result<User, FieldError> {
        validate::recipient(request.vendor_id, request.customer_id)
    }
}

impl TryFrom<&proto::MarkNotificationsRequest> for Mark {
    type Error = FieldError;

    fn try_from(request: &proto::MarkNotificationsRequest) -> Result<Mark, FieldError> {
        Ok(Mark {
            user: validate::recipient(request.vendor_id, request.customer_id)?,
            ids: validate::ids(&request.ids)?,
            status: validate::mark_status(request.status)?,
        })
    }
}

impl TryFrom<&proto::RecordDeliveriesRequest> for RecordDeliveries {
    type Error = FieldError;

    fn try_from(request: &proto::RecordDeliveriesRequest) -> Result<RecordDeliveries, FieldError> {
        let users = validate::users(
            "receipts",
            request
                .receipts
                .iter()
                .map(|r| (r.vendor_id, r.customer_id)),
        )?;
        let receipts = users
            .into_iter()
            .zip(&request.receipts)
            .enumerate()
            .map(|(index, (user, receipts))| {
                let ids = validate::ids(&receipts.ids)
                    .map_err(|e| e.within(&format!("receipts[{index}]")))?;
                Ok((user, ids))
            })
            .collect::<Result<_, FieldError>>()?;
        Ok(RecordDeliveries { receipts })
    }
}

impl TryFrom<&proto::StreamUserEventsRequest> for OpenStream {
    type Error = FieldError;

    fn try_from(request: &proto::StreamUserEventsRequest) -> Result<OpenStream, FieldError> {
        let after_seq = validate::after_seq(request.after_seq)?;
        Ok(OpenStream {
            user: validate::recipient(request.vendor_id, request.customer_id)?,
            after_seq,
            after_id: validate::after_id(&request.after_id, after_seq)?,
            after_version: validate::after_version(request.after_version, after_seq)?,
            epoch: validate::epoch(&request.epoch)?,
            presence: request.presence,
            sync: request.sync,
        })
    }
}

impl TryFrom<&proto::RoomRequest> for Membership {
    type Error = FieldError;

    fn try_from(request: &proto::RoomRequest) -> Result<Membership, FieldError> {
        Ok(Membership {
            room: validate::room(&request.room)?,
            user: validate::recipient(request.vendor_id, request.customer_id)?,
        })
    }
}
