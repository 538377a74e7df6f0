//! Notification storage for the notify core.
//!
//! - `create`: the stages of a create both stores share (keys, numbering,
//!   answers), around each one's SQL for counters and rows.
//! - `model`: users, notifications, statuses, pagination and the timestamp
//!   format shared by every interface.
//! - `object_id`: ids made in-process, sortable by creation.
//! - `peers`: what a reader was told about its room peers' presence.
//! - `reads`: the read side both stores share (queries and decoding,
//!   generic over the sqlx database; each store spells its own SQL).
//! - `sqlite`: the embedded default, one writer task that commits concurrent
//!   writes in groups, and a pool of readers.
//! - `postgres`: several cores on one database; row locks for seqs and
//!   presence, LISTEN/NOTIFY (ids, versions and counts, never payloads) for the cross-core fan-out.
//!
//! Callers hold an `Arc<dyn Store>` and never see which database is behind it.
//! After each commit a store hands what changed to a [`ChangeSink`] (the core's
//! live fan-out), in commit order.

mod create;
mod model;
mod object_id;
mod peers;
mod postgres;
mod preferences;
mod reads;
mod scheduled;
mod sqlite;
mod topics;

use std::time::Duration;

use async_trait::async_trait;

pub use model::{
    Action, ActionRefused, ActionTaken, ByCategory, Change, ChangePosition, ChangedPage, Channel,
    Created, ListQuery, MarkOutcome, NewNotification, Notification, OfflinePage, PageStart, Role,
    RoomMember, Status, UnreadCounts, Update, User, UserState, View, check_action,
    default_category, format_millis, is_category, now_millis,
};
pub use object_id::{new_object_id, parse_object_id};
pub use peers::PeerView;
pub use postgres::{PgOptions, PgStore, high_water_notice};
pub use preferences::{MAX_MUTED_PER_USER, PreferencesRefused, Rule};
pub use scheduled::CancelRefused;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};
pub use topics::{FANOUT_BATCH, Fanout, Publish};

/// Why a store call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not do the work now (unreachable, busy, disk full).
    /// Nothing was committed; the caller may retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The store is shutting down.
    #[error("the store is shutting down")]
    Closed,
    /// A stored row could not be read back; never caused by input.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether trying again later may succeed: the database or the store
    /// is briefly unable, as opposed to data that cannot be read.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Closed)
    }
}

impl From<sqlx::Error> for StoreError {
    /// Rows that cannot be read are corrupt (retrying reads them again);
    /// everything else (I/O, the pool, the server, a full disk, a
    /// conflict) is the database being unable to do the work now.
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(error.to_string()),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

/// Receives every committed change, in commit order, after it is durable.
/// Implementations must not block: they run on the commit path.
pub trait ChangeSink: Send + Sync + 'static {
    /// Called once per change.
    fn publish(&self, change: Change);
}

/// Where a PostgreSQL store hands its change notices when a message bus,
/// not LISTEN/NOTIFY, carries them between cores: each after its commit,
/// in commit order for this core. A notice is small (ids, versions and
/// counts, never a payload) and is read back with [`PgStore::deliver`] on
/// the cores that receive it. Implementations must not block.
pub trait Outbox: Send + Sync + 'static {
    /// Called once per notice: whose change it is, the user's version it
    /// took, and the notice itself.
    fn send(&self, user: User, version: i64, notice: String);
}

/// The storage behind the core. Implementations commit before they return.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores every notification in one transaction: all or none. Seqs are
    /// assigned in that transaction. Results are in input order.
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<Created>, StoreError>;

    /// One notification by canonical id.
    async fn get(&self, id: &str) -> Result<Option<Notification>, StoreError>;

    /// A page of the user's notifications in `query`'s view, newest first.
    async fn list(
        &self,
        user: User,
        query: &ListQuery,
        start: PageStart,
        limit: u32,
    ) -> Result<OfflinePage, StoreError>;

    /// The user's unread counts, in all and by category, from one snapshot.
    async fn unread_counts(&self, user: User) -> Result<UnreadCounts, StoreError>;

    /// Up to `limit` of the user's notifications with seq > `after`, in seq order.
    async fn after_seq(
        &self,
        user: User,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError>;

    /// The user's counters.
    async fn user_state(&self, user: User) -> Result<UserState, StoreError>;

    /// The id of the user's notification with that seq, if there is one.
    async fn id_at(&self, user: User, seq: i64) -> Result<Option<String>, StoreError>;

    /// Up to `limit` of the user's notifications whose last change comes
    /// after `after`, in change order, and the user's counters, all from
    /// one snapshot.
    async fn changed_after(
        &self,
        user: User,
        after: ChangePosition,
        limit: u32,
    ) -> Result<ChangedPage, StoreError>;

    /// This database's epoch: a random id made when it was created, so a
    /// reader can tell a database from another (or from a restored copy of
    /// an earlier one) and resync instead of trusting its seqs.
    fn epoch(&self) -> &str;

    /// Moves the user's own notifications among `ids` forward to `status`.
    async fn mark(
        &self,
        user: User,
        ids: Vec<String>,
        status: Status,
    ) -> Result<MarkOutcome, StoreError>;

    /// Archives (or, with `archived` false, brings back) the user's own
    /// notifications among `ids`; ones already so, or expired or replaced,
    /// are left alone.
    async fn archive(
        &self,
        user: User,
        ids: Vec<String>,
        archived: bool,
    ) -> Result<MarkOutcome, StoreError>;

    /// Moves every notification of the user's unread inbox (of `category`,
    /// up to seq `up_to_seq`, when given) forward to `status`, in one
    /// transaction and one version.
    async fn mark_all(
        &self,
        user: User,
        status: Status,
        category: Option<String>,
        up_to_seq: Option<i64>,
    ) -> Result<MarkOutcome, StoreError>;

    /// Expires up to `limit` notifications whose `expires_at` has passed
    /// (by the due-time index, oldest due first): each leaves every list
    /// and count, as one change of its user. Answers how many expired.
    async fn expire_due(&self, limit: u32) -> Result<usize, StoreError>;

    /// Deletes up to `limit` notifications created before `before` (ms
    /// since the epoch) that are not unread in an inbox: READ, archived,
    /// replaced or expired. Answers how many were deleted.
    async fn delete_old(&self, before: i64, limit: u32) -> Result<usize, StoreError>;

    /// Takes action `action_id` of the user's notification `id`: it
    /// becomes READ (leaving the inbox if it was there) and records the
    /// action, once, as one change of the user. Answers the notification
    /// as it is then, or why not ([`check_action`]).
    async fn complete_action(
        &self,
        user: User,
        id: String,
        action_id: String,
    ) -> Result<Result<Notification, ActionRefused>, StoreError>;

    /// Deletes every notification, room membership and presence entry of
    /// the user (a data-protection erasure). The user's counters stay, so
    /// later notifications continue the seq and never reuse one. Answers
    /// how many notifications were deleted.
    async fn erase_user(&self, user: User) -> Result<u64, StoreError>;

    /// Adds the user to the room (no-op if already there).
    async fn join_room(&self, room: &str, user: User) -> Result<(), StoreError>;

    /// Removes the user from the room (no-op if not there).
    async fn leave_room(&self, room: &str, user: User) -> Result<(), StoreError>;

    /// The room's members, ordered by role and id, with their presence.
    async fn room_members(&self, room: &str) -> Result<Vec<RoomMember>, StoreError>;

    /// Every other user sharing at least one room with `user`, each once.
    async fn room_peers(&self, user: User) -> Result<Vec<User>, StoreError>;

    /// The room peers of `user` that are online now, on any node.
    async fn online_peers(&self, user: User) -> Result<Vec<User>, StoreError>;

    /// When the user's last connection closed, if it ever did.
    async fn last_seen(&self, user: User) -> Result<Option<i64>, StoreError>;

    /// Records how many presence streams `node` now holds for each user (0
    /// removes the node's entry). A user is online while any node has an
    /// entry; the first entry and the removal of the last are published as
    /// [`Change::Presence`], once, whichever node caused them. Entries expire
    /// `ttl` after their last refresh, so a node that dies without a goodbye
    /// does not keep its users online. Lease times are the database's
    /// clock, so nodes whose clocks disagree still agree on them.
    async fn set_presence(
        &self,
        node: &str,
        streams: Vec<(User, u32)>,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Extends every entry of `node` by `ttl` from now (a heartbeat), and
    /// says whose entries it found: one missing was expired by another
    /// node (this one stalled past the TTL) and must be written again.
    async fn refresh_presence(&self, node: &str, ttl: Duration) -> Result<Vec<User>, StoreError>;

    /// Removes expired entries of any node; users left with none go offline.
    async fn expire_presence(&self) -> Result<(), StoreError>;

    /// Stores `batch` to be sent at `send_at` (ms since the epoch): each
    /// is PENDING, has no seq, is in no list or count and reaches no stream
    /// until then. An idempotency key already pending for the recipient
    /// answers that one, not fresh.
    async fn schedule(
        &self,
        batch: Vec<NewNotification>,
        send_at: i64,
    ) -> Result<Vec<Created>, StoreError>;

    /// Pending notifications due by `now`, at most `limit`, the longest due
    /// first, each as it is to be created (its id kept), read on the
    /// due-time index.
    async fn due(&self, now: i64, limit: u32) -> Result<Vec<NewNotification>, StoreError>;

    /// In one transaction: each of `send` and `drop` (by id) that is still
    /// pending leaves the pending table, and those of `send` are created as
    /// ordinary notifications with their ids, taking their seqs now. One
    /// that is no longer pending (cancelled, or sent by another core) is
    /// neither. Answers what was created.
    async fn send_due(
        &self,
        send: Vec<NewNotification>,
        drop: Vec<String>,
    ) -> Result<Vec<Created>, StoreError>;

    /// Cancels a pending notification: it is deleted and never sent.
    /// Answers it as it was.
    async fn cancel(&self, id: &str) -> Result<Result<Notification, CancelRefused>, StoreError>;

    /// Subscribes the users to the topic; answers how many were not yet.
    async fn subscribe(&self, topic: &str, users: &[User]) -> Result<u64, StoreError>;

    /// Unsubscribes the users; answers how many were subscribed.
    async fn unsubscribe(&self, topic: &str, users: &[User]) -> Result<u64, StoreError>;

    /// How many users the topic has.
    async fn subscribers(&self, topic: &str) -> Result<i64, StoreError>;

    /// Records a publish: its recipients are the topic's subscribers now.
    /// Once this answers the fan-out is durable, and [`Store::fanout_step`]
    /// (on any core) carries it out. A key already published to the topic
    /// answers that fan-out.
    async fn publish(&self, publish: Publish) -> Result<Fanout, StoreError>;

    /// Where a fan-out stands.
    async fn fanout(&self, id: &str) -> Result<Option<Fanout>, StoreError>;

    /// One batch of the oldest open fan-out, in one transaction (see
    /// `topics`): up to `limit` recipients get their notification, or are
    /// skipped for their preferences. Answers whether there was work.
    async fn fanout_step(&self, limit: u32) -> Result<bool, StoreError>;

    /// The category × channel pairs the user turned off (every other pair
    /// is on), ordered by category and channel.
    async fn preferences(&self, user: User) -> Result<Vec<Rule>, StoreError>;

    /// Applies `rules` in order (a later one for the same pair wins) in one
    /// transaction, and answers the pairs off after; a result past
    /// [`MAX_MUTED_PER_USER`] is refused and nothing changes.
    async fn set_preferences(
        &self,
        user: User,
        rules: Vec<Rule>,
    ) -> Result<Result<Vec<Rule>, PreferencesRefused>, StoreError>;

    /// Those of `users` who turned `category` off on `channel`.
    async fn muted(
        &self,
        users: &[User],
        category: &str,
        channel: Channel,
    ) -> Result<Vec<User>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[test]
    fn unreadable_rows_are_corrupt_and_the_rest_unavailable() {
        let corrupt =
            |error: sqlx::Error| matches!(StoreError::from(error), StoreError::Corrupt(_));
        assert!(corrupt(sqlx::Error::Decode("bad role".into())));
        assert!(corrupt(sqlx::Error::ColumnNotFound("seq".into())));
        assert!(!corrupt(sqlx::Error::PoolTimedOut));
        assert!(!corrupt(sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(!corrupt(sqlx::Error::WorkerCrashed));
    }
}
