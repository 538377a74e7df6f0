//! The domain: users, notifications and the values stored with them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::macros::format_description;

/// Which kind of account a user id belongs to; vendor 12 and customer 12 are
/// different users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A shop selling on the platform.
    Vendor,
    /// A buyer.
    Customer,
}

impl Role {
    /// The number stored in the database.
    pub fn code(self) -> i64 {
        match self {
            Role::Vendor => 1,
            Role::Customer => 2,
        }
    }

    /// The inverse of [`Role::code`].
    pub fn from_code(code: i64) -> Option<Role> {
        match code {
            1 => Some(Role::Vendor),
            2 => Some(Role::Customer),
            _ => None,
        }
    }
}

/// A recipient of notifications, and the unit of presence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    /// Vendor or customer.
    pub role: Role,
    /// The numeric id within that role.
    pub id: i64,
}

impl User {
    /// A vendor.
    pub fn vendor(id: i64) -> User {
        User {
            role: Role::Vendor,
            id,
        }
    }

    /// A customer.
    pub fn customer(id: i64) -> User {
        User {
            role: Role::Customer,
            id,
        }
    }

    /// `vendorId` as it appears in the JSON of the contract (`None` is null).
    pub fn vendor_id(self) -> Option<i64> {
        (self.role == Role::Vendor).then_some(self.id)
    }

    /// `customerId` as it appears in the JSON of the contract.
    pub fn customer_id(self) -> Option<i64> {
        (self.role == Role::Customer).then_some(self.id)
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Vendor => write!(f, "vendor {}", self.id),
            Role::Customer => write!(f, "customer {}", self.id),
        }
    }
}

/// Where a notification is meant to be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A push to connected clients (the default).
    Push,
    /// Inside the application only.
    InApp,
    /// By e-mail, through a backend reading the core.
    Email,
    /// By text message, through a backend reading the core.
    Sms,
}

impl Channel {
    /// The number stored in the database, equal to the proto enum value.
    pub fn code(self) -> i64 {
        match self {
            Channel::Push => 1,
            Channel::InApp => 2,
            Channel::Email => 3,
            Channel::Sms => 4,
        }
    }

    /// The inverse of [`Channel::code`].
    pub fn from_code(code: i64) -> Option<Channel> {
        match code {
            1 => Some(Channel::Push),
            2 => Some(Channel::InApp),
            3 => Some(Channel::Email),
            4 => Some(Channel::Sms),
            _ => None,
        }
    }

    /// The name used in JSON (`"PUSH"`).
    pub fn name(self) -> &'static str {
        match self {
            Channel::Push => "PUSH",
            Channel::InApp => "IN_APP",
            Channel::Email => "EMAIL",
            Channel::Sms => "SMS",
        }
    }
}

/// Delivery state. It only moves forward, so a late DELIVERED receipt never
/// turns a READ notification back into an unread one.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Accepted but not yet handed out (reserved for scheduled sends).
    Pending,
    /// Stored and handed to the live fan-out: the state of a new notification.
    Sent,
    /// A client acknowledged receiving it.
    Delivered,
    /// The user read it; it leaves the unread inbox.
    Read,
}

impl Status {
    /// The number stored in the database, equal to the proto enum value.
    pub fn code(self) -> i64 {
        match self {
            Status::Pending => 1,
            Status::Sent => 2,
            Status::Delivered => 3,
            Status::Read => 4,
        }
    }

    /// The inverse of [`Status::code`].
    pub fn from_code(code: i64) -> Option<Status> {
        match code {
            1 => Some(Status::Pending),
            2 => Some(Status::Sent),
            3 => Some(Status::Delivered),
            4 => Some(Status::Read),
            _ => None,
        }
    }

    /// The name used in JSON (`"SENT"`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Sent => "SENT",
            Status::Delivered => "DELIVERED",
            Status::Read => "READ",
        }
    }
}

/// A stored notification.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// 24 lowercase hex characters, an ObjectId.
    pub id: String,
    /// Who it is for.
    pub recipient: User,
    /// Per-recipient sequence number, 1, 2, 3 … with no gaps.
    pub seq: i64,
    /// What happened, e.g. `product:upload`.
    pub kind: String,
    /// Where it is meant to be shown.
    pub channel: Channel,
    /// A JSON object, kept as the exact text it was stored as.
    pub content: String,
    /// Delivery state.
    pub status: Status,
    /// Higher is more urgent.
    pub priority: i32,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// The recipient's change version at this notification's last change
    /// (its creation, or its last status change).
    pub version: i64,
    /// The inbox tab it belongs to, e.g. `order` (see [`default_category`]).
    pub category: String,
    /// When it was archived (ms since the epoch); archived ones leave the
    /// inbox and its counts, whatever their status.
    pub archived_at: Option<i64>,
    /// When it expires (ms since the epoch): from then on it is listed
    /// nowhere, counted nowhere and never delivered.
    pub expires_at: Option<i64>,
    /// A newer notification with this key replaces this one while unread.
    pub collapse_key: Option<String>,
    /// The id of the unread one this one replaced.
    pub replaces: Option<String>,
    /// The id of the one that replaced this one.
    pub replaced_by: Option<String>,
    /// Up to three buttons.
    pub actions: Vec<Action>,
    /// The action taken, once one was.
    pub action_taken: Option<ActionTaken>,
    /// When a PENDING one is due to be sent; `None` once sent.
    pub send_at: Option<i64>,
}

impl Notification {
    /// Whether it has expired by `now` (ms since the epoch).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Why an action of a notification cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionRefused {
    /// The user has no notification with that id.
    NotFound,
    /// The notification has no action with that id.
    UnknownAction,
    /// An action was taken already (this one).
    AlreadyTaken(ActionTaken),
    /// It expired or was replaced: it is listed nowhere.
    Gone,
}

/// Whether `user` may take action `action_id` of `found` at `now`. Every
/// refusal is final (a notification never loses an action, an action
/// taken stays taken, a gone one stays gone), so a refusal read after the
/// attempt is the refusal the attempt met.
pub fn check_action(
    found: Option<&Notification>,
    user: User,
    action_id: &str,
    now: i64,
) -> Result<(), ActionRefused> {
    let Some(notification) = found.filter(|n| n.recipient == user) else {
        return Err(ActionRefused::NotFound);
    };
    if !notification.actions.iter().any(|a| a.id == action_id) {
        return Err(ActionRefused::UnknownAction);
    }
    if let Some(taken) = &notification.action_taken {
        return Err(ActionRefused::AlreadyTaken(taken.clone()));
    }
    if notification.replaced_by.is_some() || notification.expired(now) {
        return Err(ActionRefused::Gone);
    }
    Ok(())
}

/// A button of a notification: `{"id":"accept","label":"Accept order","url":"…"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    /// 1-32 characters, unique within the notification.
    pub id: String,
    /// 1-64 characters.
    pub label: String,
    /// An absolute `https:` or `http:` URL to open, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Which action was taken, and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionTaken {
    /// The action's id.
    pub id: String,
    /// When (ms since the epoch).
    pub at: i64,
}

/// A notification to be created.
#[derive(Clone, Debug)]
pub struct NewNotification {
    /// The id it was given when scheduled ([`Store::schedule`]), kept when
    /// it is sent; `None` for a new one, which gets a fresh id.
    ///
    /// [`Store::schedule`]: crate::Store::schedule
    pub id: Option<String>,
    /// Who it is for.
    pub recipient: User,
    /// What happened, e.g. `product:upload`.
    pub kind: String,
    /// Where it is meant to be shown.
    pub channel: Channel,
    /// A JSON object as text.
    pub content: String,
    /// Higher is more urgent.
    pub priority: i32,
    /// The same key for the same recipient returns the first notification.
    pub idempotency_key: Option<String>,
    /// The inbox tab: 1-64 of `[a-z0-9_-]` (the caller's, or
    /// [`default_category`] of the kind).
    pub category: String,
    /// When it expires (ms since the epoch), if ever.
    pub expires_at: Option<i64>,
    /// Replaces the recipient's unread notification with this key.
    pub collapse_key: Option<String>,
    /// Up to three buttons.
    pub actions: Vec<Action>,
}

/// The category a notification of `kind` gets when its creator names
/// none: `kind` up to its first `:` (`order:shipped` is `order`) when that
/// is a category, otherwise `general`. The migrations give stored rows the
/// same.
pub fn default_category(kind: &str) -> String {
    let prefix = kind.split(':').next().unwrap_or_default();
    if is_category(prefix) {
        prefix.to_owned()
    } else {
        "general".to_owned()
    }
}

/// Whether `name` is a category: 1-64 of `[a-z0-9_-]`.
pub fn is_category(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A user's unread notifications per category; categories with none are
/// left out.
pub type ByCategory = BTreeMap<String, i64>;

/// Which of a user's notifications a list shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// Not READ and not archived: the unread inbox (ListOffline).
    #[default]
    Inbox,
    /// Archived, whatever their status.
    Archived,
    /// Every one still listed (not expired, not replaced).
    All,
}

/// What a list shows: a view, of one category or of all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Which view.
    pub view: View,
    /// Only this category, if set.
    pub category: Option<String>,
}

impl ListQuery {
    /// The unread inbox of every category, as ListOffline lists it.
    pub fn inbox() -> ListQuery {
        ListQuery::default()
    }
}

/// A user's unread counts, in all and by category, at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnreadCounts {
    /// Every unread notification in the inbox.
    pub unread: i64,
    /// The same by category.
    pub by_category: ByCategory,
    /// The change version they are exact at.
    pub version: i64,
}

/// What a change did to the notifications it names: the fields set are
/// the ones that changed (a catch-up, which reads rows as they are now,
/// sets every field).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Update {
    /// The status they moved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Archived (true) or brought back (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<bool>,
    /// Replaced by this notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// This action was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_taken: Option<ActionTaken>,
}

impl Update {
    /// A status change alone.
    pub fn status(status: Status) -> Update {
        Update {
            status: Some(status),
            ..Update::default()
        }
    }
}

/// The result of one create.
#[derive(Clone, Debug)]
pub struct Created {
    /// The stored notification (the earlier one on an idempotent repeat).
    pub notification: Notification,
    /// False when the idempotency key matched an earlier create.
    pub fresh: bool,
}

/// Where a page of the unread inbox starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageStart {
    /// The n-th page (1-based). The rows before it are skipped on the
    /// index: a deep page costs its depth.
    Page(u32),
    /// Right after the row with this seq, the last of the page before
    /// (keyset): a page costs its own rows, however deep.
    BeforeSeq(i64),
}

/// How many rows come before page `page` (1-based) of `limit` rows.
pub fn page_offset(page: u32, limit: u32) -> i64 {
    i64::from(page.saturating_sub(1)) * i64::from(limit)
}

/// One page of a list, with the counters it was read at.
#[derive(Clone, Debug)]
pub struct OfflinePage {
    /// Newest first.
    pub items: Vec<Notification>,
    /// Every notification the list holds, not only this page.
    pub total: i64,
    /// The user's highest seq when the page was read.
    pub last_seq: i64,
    /// The user's change version when the page was read: `total` is
    /// exact at that version.
    pub version: i64,
}

/// A user's counters, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserState {
    /// The highest seq given (0 before the first notification).
    pub last_seq: i64,
    /// Notifications not yet READ.
    pub unread: i64,
    /// How many changes the user's notifications have had: every committed
    /// create and status change takes the next version, so readers can
    /// order what they hear and catch up on what they missed.
    pub version: i64,
}

/// Where a reader of a user's changes stands: changes are ordered by
/// version, and the notifications of one change (a mark of many ids) by seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangePosition {
    /// Changes up to this version were read …
    pub version: i64,
    /// … and, of this version's notifications, those up to this seq.
    pub seq: i64,
}

impl ChangePosition {
    /// Right after every change up to and including `version`.
    pub fn after(version: i64) -> ChangePosition {
        ChangePosition {
            version,
            seq: i64::MAX,
        }
    }
}

/// A batch of a user's changed notifications, in [`ChangePosition`] order,
/// with the user's counters from the same snapshot.
#[derive(Clone, Debug)]
pub struct ChangedPage {
    /// Each notification as it is now (once, at its latest version).
    pub items: Vec<Notification>,
    /// Counters as of the same read: when `items` is shorter than asked for,
    /// every change up to `state.version` is in the pages read so far.
    pub state: UserState,
    /// The unread count by category, from the same read.
    pub by_category: ByCategory,
}

/// What a change of existing notifications (a mark, an archive) did.
#[derive(Clone, Debug, Default)]
pub struct MarkOutcome {
    /// Ids that actually changed.
    pub updated: Vec<String>,
    /// The user's unread count afterwards.
    pub unread: i64,
    /// The same by category, when the change could move it (not receipts).
    pub by_category: Option<ByCategory>,
    /// The user's change version afterwards.
    pub version: i64,
    /// When the change was made (ms since the epoch).
    pub updated_at: i64,
}

/// A member of a room.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomMember {
    /// Who.
    pub user: User,
    /// Whether any node holds a presence stream of the user.
    pub online: bool,
    /// When the user's last connection closed, if ever (ms since the epoch).
    pub last_seen_at: Option<i64>,
}

/// Something committed that open streams should hear about.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new notification, with its recipient's unread count after it.
    Created {
        /// The stored notification.
        notification: Box<Notification>,
        /// The recipient's unread count right after this insert.
        unread: i64,
        /// The same by category.
        by_category: ByCategory,
        /// The recipient's change version this insert took.
        version: i64,
        /// The unread ones with its collapse key it replaced, in the same
        /// version: each left every shelf, with `replaced_by` naming it.
        replaced: Vec<String>,
    },
    /// Changes to some of a user's notifications (status, archive).
    Updated {
        /// Whose notifications.
        user: User,
        /// Which ones changed.
        ids: Vec<String>,
        /// What changed.
        update: Update,
        /// When (ms since the epoch).
        updated_at: i64,
        /// The user's unread count afterwards.
        unread: i64,
        /// The same by category; `None` when the change cannot move counts
        /// (delivery receipts).
        by_category: Option<ByCategory>,
        /// The user's change version this change took.
        version: i64,
    },
    /// A user came online on the first node or went offline on the last,
    /// counted across every node sharing the database.
    Presence {
        /// Who.
        user: User,
        /// Online now (first connection) or offline (last one closed).
        online: bool,
        /// When (ms since the epoch); the `lastSeenAt` of an offline change.
        at: i64,
    },
    /// The user's changes went up to `version` by now: a stream behind it
    /// missed one (the bus lost a message) and catches up from the store.
    HighWater {
        /// Whose changes.
        user: User,
        /// The user's latest version the sender knew of.
        version: i64,
    },
    /// Changes may have been missed (the database feed reconnected): every
    /// stream should catch up from the store.
    Resync,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// ISO 8601 UTC with milliseconds (`2025-06-20T10:27:34.307Z`), the one
/// timestamp format of the contract.
pub fn format_millis(ms: i64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds_even_when_zero() {
        assert_eq!(format_millis(1_750_415_254_307), "2025-06-20T10:27:34.307Z");
        assert_eq!(format_millis(1_750_415_254_000), "2025-06-20T10:27:34.000Z");
    }
}
