//! The PostgreSQL store: several cores on one database.
//!
//! - Seqs: a create locks its recipients' `users` rows (in a fixed order, so
//!   concurrent creates cannot deadlock), reads the counters, checks
//!   idempotency keys, inserts and updates the counters in one transaction.
//!   Rows locked across every core keep seqs gapless and unique.
//! - Group commit: the creates waiting on a core at once go in one
//!   transaction, and so do its marks, receipts and archives
//!   ([`write_in_groups`]): PostgreSQL serializes the commits of
//!   transactions that NOTIFY, and each commit waits for its WAL flush, so
//!   many calls per commit is what scales.
//! - Versions: every create and status change also takes the user's next
//!   version under that lock, so each user's changes are ordered across
//!   every core.
//! - Fan-out: the transaction also sends `NOTIFY notify_changes` with ids,
//!   versions and counts ([`Notice`]), never payloads. Every core (this one
//!   included) LISTENs, reads the rows and publishes them to its hub in
//!   commit order. If the listening connection drops, the core reconnects
//!   and asks every open stream to catch up from the table by version, so
//!   a lost NOTIFY never loses a notification.
//!   With a message bus ([`PgStore::open_with_outbox`]) the same notices go
//!   to the bus after commit instead, and the cores that receive them hand
//!   them to [`PgStore::deliver`], which reads the rows the same way.
//! - Presence: entries per core, changed under the user's row lock, so the
//!   first entry and the removal of the last are announced once; their
//!   leases are measured on the database's clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Row, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::create::{Holders, Numbered, Plan, replacements};
use crate::model::{
    ActionRefused, ByCategory, Change, ChangePosition, ChangedPage, Channel, Created, ListQuery,
    MarkOutcome, NewNotification, Notification, OfflinePage, PageStart, Role, RoomMember, Status,
    UnreadCounts, Update, User, UserState, check_action, now_millis,
};
use crate::object_id::new_object_id;
use crate::preferences::{self, PreferencesRefused, Rule};
use crate::reads::{
    ARCHIVED_SHELF, GONE_SHELF, INBOX_SHELF, ReadSql, Reads, ViewSql, columns, decode, decode_user,
    presence_entries, read_by_category, view_pages,
};
use crate::scheduled::{self, CancelRefused};
use crate::topics::{self, Fanout as TopicFanout, Publish};
use crate::{ChangeSink, Outbox, Store, StoreError};

const CHANNEL: &str = "notify_changes";

// The statements that take user input, each on the index named beside it
// (the `plans` test checks them with generic plans on an analysed
// database). Marks find their rows by id alone, so the primary key is the
// only index they can use: a mark costs the ids it names, never the size
// of the user's inbox; the owner and status checks are made on the rows
// found.

/// By id: `notifications_pkey`.
const GET: &str = concat!("SELECT ", columns!(), " FROM notifications WHERE id = $1");
/// Rows named by NOTIFY: `notifications_pkey`.
const BY_IDS: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM notifications WHERE id = ANY($1)"
);
/// The views' pages: `notifications_shelf` (INBOX, ARCHIVED),
/// `notifications_category_shelf` (the same of one category),
/// `notifications_recipient_seq` (ALL) and `notifications_category` (ALL of
/// one category).
const PAGES: ViewSql = view_pages!(
    "notifications",
    "notifications",
    "notifications",
    "notifications"
);
/// The views' totals: `inbox_counts_pkey`.
const VIEW_TOTALS: &str = "SELECT COALESCE(SUM(unread), 0)::bigint, \
     COALESCE(SUM(archived), 0)::bigint, COALESCE(SUM(listed), 0)::bigint FROM inbox_counts \
     WHERE role = $1 AND user_id = $2 AND ($3::text IS NULL OR category = $3)";
/// A user's unread count by category: `inbox_counts_pkey`.
const BY_CATEGORY: &str = "SELECT category, unread FROM inbox_counts \
     WHERE role = $1 AND user_id = $2 AND unread > 0";
/// Several users' unread counts by category: `inbox_counts_pkey`.
const USERS_BY_CATEGORY: &str = "SELECT role, user_id, category, unread FROM inbox_counts \
     WHERE (role, user_id) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[])) \
     AND unread > 0";
/// Replay after a seq: `notifications_recipient_seq`.
const AFTER_SEQ: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM notifications WHERE recipient_role = $1 AND recipient_id = $2 AND seq > $3 \
     ORDER BY seq LIMIT $4"
);
/// The id at one seq: `notifications_recipient_seq`.
const ID_AT: &str =
    "SELECT id FROM notifications WHERE recipient_role = $1 AND recipient_id = $2 AND seq = $3";
/// Rows changed after a (version, seq): `notifications_changes`.
const CHANGED_AFTER: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM notifications WHERE recipient_role = $1 AND recipient_id = $2 \
     AND (version, seq) > ($3, $4) ORDER BY version, seq LIMIT $5"
);
/// Rows of a status change too large for its notice: `notifications_changes`.
const AT_VERSIONS: &str = "SELECT recipient_role, recipient_id, version, id FROM notifications \
     WHERE (recipient_role, recipient_id, version) IN \
     (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])) \
     ORDER BY recipient_role, recipient_id, version, seq";
/// The unread ones (not yet due) under the recipients' collapse keys:
/// `notifications_collapse`.
const COLLAPSED: &str = "SELECT recipient_role, recipient_id, collapse_key, id, category \
     FROM notifications WHERE (recipient_role, recipient_id, collapse_key) IN \
     (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[])) \
     AND shelf = 1 AND (expires_at IS NULL OR expires_at > $4) ORDER BY seq";
/// Takes replaced rows off every shelf: `notifications_pkey`.
const REPLACE: &str = "UPDATE notifications SET shelf = 0, replaced_by = r.new_id, \
     version = r.version, updated_at = $4 \
     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS r(old_id, new_id, version) \
     WHERE notifications.id = r.old_id";
/// Idempotency keys: `notifications_idempotency`.
const BY_KEYS: &str = concat!(
    "SELECT ",
    columns!(),
    ", idempotency_key FROM notifications \
     WHERE (recipient_role, recipient_id, idempotency_key) IN \
     (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]))"
);
/// The owner, status and shelf of each named notification: `notifications_pkey`.
const FIND_FOR_MARK: &str = "SELECT id, recipient_role, recipient_id, status, shelf \
     FROM notifications WHERE id = ANY($1)";
/// Sets the status of rows already checked (READ ones leave the inbox
/// shelf): `notifications_pkey`.
const SET_STATUS: &str = "UPDATE notifications SET status = $1, updated_at = $2, version = $3, \
     shelf = CASE WHEN $1::bigint = 4 AND shelf = 1 THEN 2 ELSE shelf END WHERE id = ANY($4)";
/// Archives (`$1` the time) or brings back (`$1` null) rows already
/// checked: `notifications_pkey`.
const SET_ARCHIVED: &str = "UPDATE notifications SET archived_at = $1, updated_at = $2, \
     version = $3, shelf = CASE WHEN shelf = 0 THEN 0 WHEN $1::bigint IS NOT NULL THEN 3 \
     WHEN status = 4 THEN 2 ELSE 1 END WHERE id = ANY($4)";
/// Mark-all over the unread inbox, up to a seq: `notifications_shelf`.
const MARK_ALL: &str = "UPDATE notifications SET status = $1, updated_at = $2, version = $3, \
     shelf = CASE WHEN $1::bigint = 4 THEN 2 ELSE shelf END \
     WHERE recipient_role = $4 AND recipient_id = $5 AND shelf = $7 AND seq <= $6 \
     AND status < $1 RETURNING id";
/// The same of one category: `notifications_category_shelf`.
const MARK_ALL_CATEGORY: &str = "UPDATE notifications SET status = $1, updated_at = $2, \
     version = $3, shelf = CASE WHEN $1::bigint = 4 THEN 2 ELSE shelf END \
     WHERE recipient_role = $4 AND recipient_id = $5 AND category = $8 AND shelf = $7 \
     AND seq <= $6 AND status < $1 RETURNING id";
/// Records an action taken on a row already checked, which becomes READ
/// (leaving the inbox shelf): `notifications_pkey`.
const SET_ACTION: &str = "UPDATE notifications SET action_id = $1, action_at = $2, \
     updated_at = $2, version = $3, status = GREATEST(status, 4), \
     shelf = CASE WHEN shelf = 1 THEN 2 ELSE shelf END WHERE id = $4";
/// Due notifications not yet gone, oldest due first: `notifications_expiry`.
const DUE: &str = "SELECT recipient_role, recipient_id, id FROM notifications \
     WHERE expires_at <= $1 AND shelf > 0 ORDER BY expires_at LIMIT $2";
/// Takes the named rows off every shelf, each at its owner's next
/// version, unless another core's sweep did (they were due when found, and
/// time only moves on): `notifications_pkey`.
const EXPIRE: &str = "UPDATE notifications SET shelf = 0, updated_at = $1, version = v.version \
     FROM unnest($2::text[], $3::bigint[]) AS v(id, version) \
     WHERE notifications.id = v.id AND notifications.shelf > 0 \
     RETURNING notifications.recipient_role, notifications.recipient_id, notifications.id";
/// Several locked users' versions set after a change: `users_pkey`.
const SET_VERSIONS: &str = "UPDATE users SET version = v.version \
     FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(role, id, version) \
     WHERE users.role = v.role AND users.id = v.id RETURNING users.role, users.id, users.unread";
/// Old notifications that are not unread: `notifications_retention`.
const OLD: &str = "SELECT recipient_role, recipient_id, id FROM notifications \
     WHERE shelf <> 1 AND created_at < $1 ORDER BY created_at LIMIT $2";
/// Deletes the named rows if still old and not unread: `notifications_pkey`.
const DELETE_OLD: &str =
    "DELETE FROM notifications WHERE id = ANY($1) AND shelf <> 1 AND created_at < $2";
/// Every notification of a user: `notifications_recipient_seq`.
const ERASE_NOTIFICATIONS: &str =
    "DELETE FROM notifications WHERE recipient_role = $1 AND recipient_id = $2";
/// A user's counters, locked for a change of their notifications: `users_pkey`.
const LOCK_USER: &str = "SELECT unread, version FROM users WHERE role = $1 AND id = $2 FOR UPDATE";
/// Several users' counters, locked in order: `users_pkey`.
const LOCK_USERS: &str = "SELECT role, id, last_seq, unread, version FROM users \
     WHERE (role, id) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[])) \
     ORDER BY role, id FOR UPDATE";
/// Several users' versions: `users_pkey`.
const VERSIONS: &str = "SELECT role, id, version FROM users \
     WHERE (role, id) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))";
/// A user's counters: `users_pkey`.
const USER_STATE: &str = "SELECT last_seq, unread, version FROM users WHERE role = $1 AND id = $2";
/// When a user was last seen: `users_pkey`.
const LAST_SEEN: &str = "SELECT last_seen_at FROM users WHERE role = $1 AND id = $2";
/// How many presence entries a user has: `presence_user`.
const PRESENCE_ENTRIES: &str = "SELECT COUNT(*) FROM presence WHERE role = $1 AND user_id = $2";
/// A room's members: `room_members_pkey`, `users_pkey`, `presence_user`.
const ROOM_MEMBERS: &str = "SELECT m.role, m.user_id, u.last_seen_at, \
     EXISTS (SELECT 1 FROM presence p WHERE p.role = m.role AND p.user_id = m.user_id) \
     FROM room_members m \
     LEFT JOIN users u ON u.role = m.role AND u.id = m.user_id \
     WHERE m.room = $1 ORDER BY m.role, m.user_id";
/// Who shares a room with a user: `room_members_user`, `room_members_pkey`.
const ROOM_PEERS: &str = "SELECT DISTINCT peer.role, peer.user_id FROM room_members me \
     JOIN room_members peer ON peer.room = me.room \
     WHERE me.role = $1 AND me.user_id = $2 \
     AND NOT (peer.role = $1 AND peer.user_id = $2)";
/// The online ones among them: the same, and `presence_user`.
const ONLINE_PEERS: &str = "SELECT DISTINCT peer.role, peer.user_id FROM room_members me \
     JOIN room_members peer ON peer.room = me.room \
     WHERE me.role = $1 AND me.user_id = $2 \
     AND NOT (peer.role = $1 AND peer.user_id = $2) \
     AND EXISTS (SELECT 1 FROM presence p \
                 WHERE p.role = peer.role AND p.user_id = peer.user_id)";
/// Leaves a room: `room_members_pkey`.
const LEAVE_ROOM: &str = "DELETE FROM room_members WHERE room = $1 AND role = $2 AND user_id = $3";
/// Drops a node's entry for a user: `presence_pkey`.
const DROP_ENTRY: &str = "DELETE FROM presence WHERE node = $1 AND role = $2 AND user_id = $3";
/// The users with an expired entry: `presence_expiry`.
const EXPIRED_USERS: &str = "SELECT DISTINCT role, user_id FROM presence WHERE expires_at < $1";
/// Drops a user's expired entries: `presence_user`.
const DROP_EXPIRED: &str =
    "DELETE FROM presence WHERE role = $1 AND user_id = $2 AND expires_at < $3";
/// Records a user's offline moment: `users_pkey`.
const WENT_OFFLINE: &str = "UPDATE users SET last_seen_at = $1 WHERE role = $2 AND id = $3";

/// The read statements, for the read side both stores share. A read of
/// several statements sees one snapshot, and never waits on a writer.
const READS: ReadSql = ReadSql {
    begin_snapshot: "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    get: GET,
    pages: PAGES,
    view_totals: VIEW_TOTALS,
    by_category: BY_CATEGORY,
    after_seq: AFTER_SEQ,
    id_at: ID_AT,
    changed_after: CHANGED_AFTER,
    user_state: USER_STATE,
    last_seen: LAST_SEEN,
    presence_entries: PRESENCE_ENTRIES,
    room_members: ROOM_MEMBERS,
    room_peers: ROOM_PEERS,
    online_peers: ONLINE_PEERS,
    muted_among: "SELECT role, user_id FROM muted \
         WHERE (role, user_id) IN (SELECT (key ->> 0)::bigint, (key ->> 1)::bigint \
         FROM jsonb_array_elements($3::jsonb) AS key) \
         AND category = $1 AND channel = $2",
};

/// Ids a status-change notice carries itself; more would not fit NOTIFY's
/// 8,000 bytes, and listeners read them from the table instead.
const IDS_PER_NOTICE: usize = 200;

/// What one NOTIFY on [`CHANNEL`] says: whose notifications changed, how,
/// and the counters after it; never a payload. Listeners read the rows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Notice {
    /// A notification was stored; its row is read by id.
    Created {
        role: i64,
        user: i64,
        id: String,
        unread: i64,
        by_category: ByCategory,
        version: i64,
        /// The unread ones it replaced (its collapse key's).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replaced: Vec<String>,
    },
    /// Some of the user's notifications changed (moved to `status`,
    /// archived or brought back): `ids`, or when there were too many to
    /// list, the user's rows still at `version` (any changed again since
    /// come with that later change).
    Marked {
        role: i64,
        user: i64,
        update: Update,
        at: i64,
        unread: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by_category: Option<ByCategory>,
        version: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ids: Option<Vec<String>>,
    },
    /// The user came online on the first node or went offline on the last.
    Presence {
        role: i64,
        user: i64,
        online: bool,
        at: i64,
    },
    /// The user's changes went up to `version` (sent over a bus, which may
    /// lose messages, so a stream behind it catches up).
    HighWater { role: i64, user: i64, version: i64 },
}

impl Notice {
    fn user(&self) -> Option<User> {
        let (Notice::Created { role, user, .. }
        | Notice::Marked { role, user, .. }
        | Notice::Presence { role, user, .. }
        | Notice::HighWater { role, user, .. }) = self;
        Some(User {
            role: Role::from_code(*role)?,
            id: *user,
        })
    }

    fn payload(&self) -> String {
        serde_json::to_string(self).expect("a notice is plain data")
    }
}

/// The notice a bus carries to say the user's changes went up to `version`
/// ([`Change::HighWater`] where it is delivered).
pub fn high_water_notice(user: User, version: i64) -> String {
    Notice::HighWater {
        role: user.role.code(),
        user: user.id,
        version,
    }
    .payload()
}

/// How a committed change's notice reaches every core: `pg_notify` inside
/// the transaction (delivered only if it commits), or a bus's [`Outbox`]
/// right after the commit. Presence always goes by NOTIFY (see
/// [`PgStore::open_with_outbox`]).
#[derive(Clone)]
struct Fanout {
    outbox: Option<Arc<dyn Outbox>>,
}

impl Fanout {
    /// The in-transaction half: NOTIFY, unless a bus carries the notices.
    async fn before_commit(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        notices: &[Notice],
    ) -> Result<(), sqlx::Error> {
        if self.outbox.is_some() {
            return Ok(());
        }
        notify_all(tx, notices.iter().map(Notice::payload).collect()).await
    }

    /// The after-commit half: hands the notices to the bus, if there is one.
    fn after_commit(&self, notices: Vec<Notice>) {
        let Some(outbox) = &self.outbox else { return };
        for notice in notices {
            let version = match &notice {
                Notice::Created { version, .. }
                | Notice::Marked { version, .. }
                | Notice::HighWater { version, .. } => *version,
                Notice::Presence { .. } => continue,
            };
            if let Some(user) = notice.user() {
                outbox.send(user, version, notice.payload());
            }
        }
    }
}

/// Pool settings for [`PgStore::open`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Most connections this core opens.
    pub max_connections: u32,
    /// How long a call waits for a free connection (or a new one) before it
    /// fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl PgOptions {
    /// The defaults, stated once: the command line's and [`Default`]'s.
    pub const DEFAULT: PgOptions = PgOptions {
        max_connections: 16,
        acquire_timeout: Duration::from_secs(5),
    };
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions::DEFAULT
    }
}

/// The PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    reads: Arc<Reads<Postgres>>,
    epoch: Arc<str>,
    /// The group writers of this core's creates and of its status changes
    /// ([`write_in_groups`]).
    creates: mpsc::Sender<Waiting<Creates>>,
    changes: mpsc::Sender<Waiting<Changes>>,
    fanout: Fanout,
    /// Where changes read back from notices go ([`PgStore::deliver`]).
    sink: Arc<dyn ChangeSink>,
}

/// Calls one transaction takes at most (a create call up to 1,000
/// notifications).
const MAX_GROUP: usize = 64;

/// What commits a group of calls in one transaction, for [`write_in_groups`].
#[async_trait]
trait GroupWriter: Send + Sync + 'static {
    /// One call's work.
    type Job: Send + Sync;
    /// One call's answer.
    type Answer: Send;
    /// Commits the jobs in one transaction; answers each, in order.
    async fn commit(&self, jobs: &[&Self::Job]) -> Result<Vec<Self::Answer>, GroupFailure>;
}

/// A call waiting for a group writer, and where its answer goes.
type Waiting<W> = (
    <W as GroupWriter>::Job,
    oneshot::Sender<Result<<W as GroupWriter>::Answer, StoreError>>,
);

/// Hands `job` to the group writer behind `writer` and waits for its answer.
async fn in_group<W: GroupWriter>(
    writer: &mpsc::Sender<Waiting<W>>,
    job: W::Job,
) -> Result<W::Answer, StoreError> {
    let (reply, answer) = oneshot::channel();
    writer
        .send((job, reply))
        .await
        .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

/// Creates: each job one call's notifications ([`create_group`]).
struct Creates {
    pool: PgPool,
    fanout: Fanout,
}

#[async_trait]
impl GroupWriter for Creates {
    type Job = Vec<NewNotification>;
    type Answer = Vec<Created>;
    async fn commit(&self, jobs: &[&Self::Job]) -> Result<Vec<Self::Answer>, GroupFailure> {
        let batches: Vec<&[NewNotification]> = jobs.iter().map(|job| job.as_slice()).collect();
        create_group(&self.pool, &self.fanout, &batches).await
    }
}

/// Marks, receipts and archives: each job one user's change
/// ([`change_in`]), the group's users locked in order first.
struct Changes {
    pool: PgPool,
    fanout: Fanout,
}

#[async_trait]
impl GroupWriter for Changes {
    type Job = (User, OwnedChange);
    type Answer = MarkOutcome;
    async fn commit(&self, jobs: &[&Self::Job]) -> Result<Vec<Self::Answer>, GroupFailure> {
        let before = |error| GroupFailure {
            error,
            committing: false,
        };
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(before)?;
        let staged = async {
            // Every user's row first, in order, as creates take them: two
            // cores' groups never wait for each other in a circle. A user
            // without a row has nothing to change, and gets none.
            let users: Vec<User> = jobs.iter().map(|(user, _)| *user).collect();
            lock_existing_users(&mut tx, &users).await?;
            let mut outcomes = Vec::with_capacity(jobs.len());
            let mut notices = Vec::new();
            for (user, change) in jobs {
                let (outcome, notice) = change_in(&mut tx, *user, change.borrowed(), now).await?;
                outcomes.push(outcome);
                notices.extend(notice);
            }
            self.fanout.before_commit(&mut tx, &notices).await?;
            Ok::<_, sqlx::Error>((outcomes, notices))
        }
        .await;
        let (outcomes, notices) = staged.map_err(before)?;
        tx.commit().await.map_err(|error| GroupFailure {
            error,
            committing: true,
        })?;
        self.fanout.after_commit(notices);
        Ok(outcomes)
    }
}

/// Why a group of writes failed, and whether it got as far as COMMIT:
/// after a failed COMMIT nobody knows whether it committed, so the calls
/// are not retried (a retry could store them twice).
struct GroupFailure {
    error: sqlx::Error,
    committing: bool,
}

impl PgStore {
    /// Connects, runs the migrations (an advisory lock makes that safe with
    /// several cores starting at once) and starts listening for changes.
    pub async fn open(
        url: &str,
        options: PgOptions,
        sink: Arc<dyn ChangeSink>,
    ) -> Result<PgStore, StoreError> {
        PgStore::open_with_outbox(url, options, sink, None).await
    }

    /// [`PgStore::open`], with the notices of creates and status changes
    /// handed to `outbox` after commit instead of NOTIFY, when a bus
    /// carries them; the bus hands what it receives to [`PgStore::deliver`].
    /// Presence changes still go by NOTIFY: they are rare, and NOTIFY
    /// delivers them in commit order, which keeps a user's online and
    /// offline from arriving swapped.
    pub async fn open_with_outbox(
        url: &str,
        options: PgOptions,
        sink: Arc<dyn ChangeSink>,
        outbox: Option<Arc<dyn Outbox>>,
    ) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.acquire_timeout)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&pool)
            .await?;
        // Listening before `open` returns: no commit made through this store
        // can be notified before this core hears notifications.
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        tokio::spawn(listen(pool.clone(), sink.clone(), listener));
        let fanout = Fanout { outbox };
        let (creates, waiting) = mpsc::channel(4 * MAX_GROUP);
        let writer = Creates {
            pool: pool.clone(),
            fanout: fanout.clone(),
        };
        tokio::spawn(write_in_groups(writer, waiting));
        let (changes, waiting) = mpsc::channel(4 * MAX_GROUP);
        let writer = Changes {
            pool: pool.clone(),
            fanout: fanout.clone(),
        };
        tokio::spawn(write_in_groups(writer, waiting));
        Ok(PgStore {
            reads: Arc::new(Reads::new(pool.clone(), &READS)),
            pool,
            epoch: epoch.into(),
            creates,
            changes,
            fanout,
            sink,
        })
    }

    /// The users' latest versions (users without a row have none).
    pub async fn versions(&self, users: &[User]) -> Result<Vec<(User, i64)>, StoreError> {
        let rows = sqlx::query(VERSIONS)
            .bind(users.iter().map(|u| u.role.code()).collect::<Vec<_>>())
            .bind(users.iter().map(|u| u.id).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await?;
        let mut versions = Vec::with_capacity(rows.len());
        for row in &rows {
            versions.push((decode_user(row)?, row.try_get(2)?));
        }
        Ok(versions)
    }

    /// Reads back the rows that notices received from a bus name and
    /// publishes them to the sink, in order, as the LISTEN side does.
    pub async fn deliver(&self, notices: &[String]) -> Result<(), StoreError> {
        publish_batch(&self.pool, &self.sink, notices, "nats").await?;
        Ok(())
    }
}

impl PgStore {
    /// One change of a user's existing notifications in a transaction of
    /// its own ([`change_in`]); the notice goes out with the commit.
    async fn change_rows(
        &self,
        user: User,
        change: RowChange<'_>,
    ) -> Result<MarkOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (outcome, notice) = change_in(&mut tx, user, change, now_millis()).await?;
        let notices: Vec<Notice> = notice.into_iter().collect();
        self.fanout.before_commit(&mut tx, &notices).await?;
        tx.commit().await?;
        self.fanout.after_commit(notices);
        Ok(outcome)
    }
}

/// One change of a user's existing notifications inside `tx`: under the
/// user's row lock, the changed rows and the counter take the user's next
/// version together. Answers what changed and the notice to send, if any.
async fn change_in(
    tx: &mut Transaction<'_, Postgres>,
    user: User,
    change: RowChange<'_>,
    now: i64,
) -> Result<(MarkOutcome, Option<Notice>), sqlx::Error> {
    let nothing = MarkOutcome {
        updated: Vec::new(),
        unread: 0,
        by_category: None,
        version: 0,
        updated_at: now,
    };
    // Lock the user's row only if it exists: a user without one has no
    // notifications to change, and a change must not create rows (any id a
    // caller names would otherwise leave one behind).
    let locked: Option<(i64, i64)> = sqlx::query_as(LOCK_USER)
        .bind(user.role.code())
        .bind(user.id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((_, version)) = locked else {
        return Ok((nothing, None));
    };
    let version = version + 1;
    // Under the user's lock: none of these rows can change meanwhile.
    let updated = change.apply(tx, user, version, now).await?;
    if updated.is_empty() {
        return Ok((nothing, None));
    }
    let unread: i64 = sqlx::query_scalar(
        "UPDATE users SET version = $1 WHERE role = $2 AND id = $3 RETURNING unread",
    )
    .bind(version)
    .bind(user.role.code())
    .bind(user.id)
    .fetch_one(&mut **tx)
    .await?;
    let by_category = if change.counts() {
        Some(read_by_category::<Postgres>(&mut **tx, &READS, user).await?)
    } else {
        None
    };
    let notice = Notice::Marked {
        role: user.role.code(),
        user: user.id,
        update: change.update(now),
        at: now,
        unread,
        by_category: by_category.clone(),
        version,
        ids: (updated.len() <= IDS_PER_NOTICE).then(|| updated.clone()),
    };
    let outcome = MarkOutcome {
        updated,
        unread,
        by_category,
        version,
        updated_at: now,
    };
    Ok((outcome, Some(notice)))
}

/// Follows `notify_changes` for as long as the pool lives, starting with
/// an established `first` listener.
async fn listen(pool: PgPool, sink: Arc<dyn ChangeSink>, first: PgListener) {
    follow_changes(&pool, &sink, first).await;
    while !pool.is_closed() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for changes; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::warn!(%error, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        // Whatever was notified while we were not listening is in the
        // tables: streams catch up by version.
        tracing::info!("listening for changes again; resyncing open streams");
        metrics::counter!("notify_change_feed_resyncs_total").increment(1);
        sink.publish(Change::Resync);
        follow_changes(&pool, &sink, listener).await;
    }
}

/// Publishes notifications until the listening connection is lost.
async fn follow_changes(pool: &PgPool, sink: &Arc<dyn ChangeSink>, mut listener: PgListener) {
    loop {
        let first = match listener.try_recv().await {
            Ok(Some(notification)) => notification,
            Ok(None) | Err(_) => {
                tracing::warn!("change feed connection lost");
                return;
            }
        };
        let mut batch = vec![first.payload().to_owned()];
        let mut lost = false;
        while batch.len() < 1000 {
            if let Some(more) = listener.next_buffered() {
                batch.push(more.payload().to_owned());
                continue;
            }
            // And what the socket already holds, parsed without waiting
            // (sqlx reads a message cancel-safely): a flood of notices, as
            // a topic's fan-out sends, is read a thousand rows a query, not
            // one.
            match tokio::time::timeout(Duration::ZERO, listener.try_recv()).await {
                Ok(Ok(Some(more))) => batch.push(more.payload().to_owned()),
                Ok(Ok(None) | Err(_)) => {
                    lost = true;
                    break;
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("notify_change_feed_batch_notices").record(batch.len() as f64);
        if let Err(error) = publish_batch(pool, sink, &batch, "listen").await {
            tracing::warn!(%error, "could not read notified rows; resyncing");
            sink.publish(Change::Resync);
        }
        if lost {
            tracing::warn!("change feed connection lost");
            return;
        }
    }
}

/// Turns NOTIFY payloads into changes, reading the rows they name (one
/// query for the created ones, one for the marked ones), and publishes them
/// in order. A notice whose rows are gone (erased, or changed again since)
/// is skipped: streams see the gap in versions and catch up from the table.
/// Counts what arrived `via` each way, by kind: the share of all changes a
/// core receives is what fan-out costs it.
async fn publish_batch(
    pool: &PgPool,
    sink: &Arc<dyn ChangeSink>,
    payloads: &[String],
    via: &'static str,
) -> Result<(), sqlx::Error> {
    let notices: Vec<Notice> = payloads
        .iter()
        .filter_map(|payload| match serde_json::from_str(payload) {
            Ok(notice) => Some(notice),
            Err(error) => {
                tracing::warn!(%error, payload, "unreadable change notice");
                None
            }
        })
        .collect();
    for notice in &notices {
        let kind = match notice {
            Notice::Created { .. } => "created",
            Notice::Marked { .. } => "marked",
            Notice::Presence { .. } => "presence",
            Notice::HighWater { .. } => "high_water",
        };
        metrics::counter!("notify_fanout_notices_received_total", "via" => via, "kind" => kind)
            .increment(1);
    }
    let created: Vec<&str> = notices
        .iter()
        .filter_map(|notice| match notice {
            Notice::Created { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let mut rows: HashMap<String, Notification> = HashMap::new();
    if !created.is_empty() {
        let fetched = sqlx::query(BY_IDS).bind(&created).fetch_all(pool).await?;
        for row in &fetched {
            let notification = decode(row)?;
            rows.insert(notification.id.clone(), notification);
        }
    }
    let marked: Vec<(i64, i64, i64)> = notices
        .iter()
        .filter_map(|notice| match notice {
            Notice::Marked {
                role,
                user,
                version,
                ids: None,
                ..
            } => Some((*role, *user, *version)),
            _ => None,
        })
        .collect();
    let mut marked_ids: HashMap<(i64, i64, i64), Vec<String>> = HashMap::new();
    if !marked.is_empty() {
        let fetched = sqlx::query(AT_VERSIONS)
            .bind(marked.iter().map(|m| m.0).collect::<Vec<_>>())
            .bind(marked.iter().map(|m| m.1).collect::<Vec<_>>())
            .bind(marked.iter().map(|m| m.2).collect::<Vec<_>>())
            .fetch_all(pool)
            .await?;
        for row in &fetched {
            marked_ids
                .entry((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                .or_default()
                .push(row.try_get(3)?);
        }
    }
    for notice in notices {
        let Some(user) = notice.user() else { continue };
        match notice {
            Notice::Created {
                id,
                unread,
                by_category,
                version,
                replaced,
                ..
            } => {
                if let Some(notification) = rows.remove(&id) {
                    sink.publish(Change::Created {
                        notification: Box::new(notification),
                        unread,
                        by_category,
                        version,
                        replaced,
                    });
                }
            }
            Notice::Marked {
                role,
                user: id,
                update,
                at,
                unread,
                by_category,
                version,
                ids,
            } => {
                let Some(ids) = ids.or_else(|| marked_ids.remove(&(role, id, version))) else {
                    continue;
                };
                sink.publish(Change::Updated {
                    user,
                    ids,
                    update,
                    updated_at: at,
                    unread,
                    by_category,
                    version,
                });
            }
            Notice::Presence { online, at, .. } => {
                sink.publish(Change::Presence { user, online, at })
            }
            Notice::HighWater { version, .. } => sink.publish(Change::HighWater { user, version }),
        }
    }
    Ok(())
}

/// Sends the changes with the transaction: PostgreSQL delivers them only
/// if it commits.
async fn notify_all(
    tx: &mut Transaction<'_, Postgres>,
    payloads: Vec<String>,
) -> Result<(), sqlx::Error> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes every call waiting (up to [`MAX_GROUP`]), commits them in one
/// transaction, and answers each: PostgreSQL serializes the commits of
/// transactions that NOTIFY, and every commit waits for its WAL flush, so
/// one commit for many calls is what lets writes scale. If the server
/// refuses a statement of the group before its COMMIT, each call is tried
/// alone, so one bad call cannot sink the others; an outage fails the
/// group's calls at once.
async fn write_in_groups<W: GroupWriter>(writer: W, mut waiting: mpsc::Receiver<Waiting<W>>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while waiting.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let started = std::time::Instant::now();
        let group: Vec<&W::Job> = jobs.iter().map(|(job, _)| job).collect();
        let result = writer.commit(&group).await;
        metrics::histogram!("notify_commit_seconds").record(started.elapsed());
        metrics::histogram!("notify_commit_batch_requests").record(jobs.len() as f64);
        match result {
            Ok(answers) => {
                for ((_, reply), answer) in jobs.drain(..).zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            // Only the server refusing a statement can be one call's
            // fault; a connection or pool failure is everyone's, and
            // retrying 64 calls one by one would make each wait its turn
            // through the same outage.
            Err(failure)
                if !failure.committing
                    && jobs.len() > 1
                    && matches!(failure.error, sqlx::Error::Database(_)) =>
            {
                tracing::warn!(error = %failure.error, calls = jobs.len(), "group of writes failed; trying each alone");
                for (job, reply) in jobs.drain(..) {
                    let alone = writer.commit(&[&job]).await;
                    let answer = match alone {
                        Ok(answers) => answers.into_iter().next().ok_or_else(|| {
                            StoreError::Corrupt("a group of one answered nothing".into())
                        }),
                        Err(failure) => Err(StoreError::from(failure.error)),
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(failure) => {
                let error = StoreError::from(failure.error);
                for (_, reply) in jobs.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The shared stages (see `create`) for several calls in one transaction,
/// under the recipients' row locks (taken in order, so two cores' groups
/// cannot deadlock): two cores can neither both miss a key nor take the
/// same seq. Answers each call's notifications, in call order.
async fn create_group(
    pool: &PgPool,
    fanout: &Fanout,
    batches: &[&[NewNotification]],
) -> Result<Vec<Vec<Created>>, GroupFailure> {
    let before = |error| GroupFailure {
        error,
        committing: false,
    };
    let now = now_millis();
    let mut tx = pool.begin().await.map_err(before)?;
    let staged = stage_creates(&mut tx, fanout, batches, now).await;
    let (plan, rows, notices) = staged.map_err(before)?;
    tx.commit().await.map_err(|error| GroupFailure {
        error,
        committing: true,
    })?;
    fanout.after_commit(notices);
    Ok(plan.answers(&rows))
}

/// A group's creates staged in `tx`, with the notices to hand the bus once
/// it commits (the LISTEN/NOTIFY ones are sent in it).
async fn stage_creates<'a>(
    tx: &mut Transaction<'_, Postgres>,
    fanout: &Fanout,
    batches: &[&'a [NewNotification]],
    now: i64,
) -> Result<(Plan<'a>, Vec<Numbered>, Vec<Notice>), sqlx::Error> {
    let recipients: Vec<User> = batches
        .iter()
        .flat_map(|batch| batch.iter().map(|n| n.recipient))
        .collect();
    let mut counters = lock_users(tx, &recipients).await?;
    let stored = stored_keys(tx, batches).await?;
    let plan = Plan::resolve(batches, &stored);
    let users: Vec<User> = counters.keys().copied().collect();
    let mut by_category = users_by_category(tx, &users).await?;
    let holders = collapsed(tx, &plan.collapse_keys(), now).await?;
    let rows = plan.number(&mut counters, &mut by_category, holders, now);
    if !rows.is_empty() {
        insert_rows(tx, &rows, plan.fresh()).await?;
        replace(tx, &rows, now).await?;
        save_counters(tx, &counters).await?;
    }
    let notices: Vec<Notice> = rows
        .iter()
        .map(|row| {
            let n = &row.notification;
            Notice::Created {
                role: n.recipient.role.code(),
                user: n.recipient.id,
                id: n.id.clone(),
                unread: row.unread,
                by_category: row.by_category.clone(),
                version: n.version,
                replaced: row.replaced.clone(),
            }
        })
        .collect();
    fanout.before_commit(tx, &notices).await?;
    Ok((plan, rows, notices))
}

/// Locks the users' rows, creating missing ones, in (role, id) order.
/// Returns each user's counters.
async fn lock_users(
    tx: &mut Transaction<'_, Postgres>,
    users: &[User],
) -> Result<HashMap<User, UserState>, sqlx::Error> {
    let (roles, ids) = in_lock_order(users);
    sqlx::query(
        "INSERT INTO users (role, id) SELECT * FROM unnest($1::bigint[], $2::bigint[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&roles)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    lock_rows(tx, &roles, &ids).await
}

/// [`lock_users`] for the users that have a row; creates none.
async fn lock_existing_users(
    tx: &mut Transaction<'_, Postgres>,
    users: &[User],
) -> Result<HashMap<User, UserState>, sqlx::Error> {
    let (roles, ids) = in_lock_order(users);
    lock_rows(tx, &roles, &ids).await
}

/// The users' roles and ids, sorted and without repeats: the order every
/// transaction locks them in.
fn in_lock_order(users: &[User]) -> (Vec<i64>, Vec<i64>) {
    let mut sorted = users.to_vec();
    sorted.sort();
    sorted.dedup();
    (
        sorted.iter().map(|u| u.role.code()).collect(),
        sorted.iter().map(|u| u.id).collect(),
    )
}

/// Locks the existing rows of users given in lock order; their counters.
async fn lock_rows(
    tx: &mut Transaction<'_, Postgres>,
    roles: &[i64],
    ids: &[i64],
) -> Result<HashMap<User, UserState>, sqlx::Error> {
    let rows = sqlx::query(LOCK_USERS)
        .bind(roles)
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
    let mut counters = HashMap::with_capacity(rows.len());
    for row in &rows {
        counters.insert(
            decode_user(row)?,
            UserState {
                last_seq: row.try_get(2)?,
                unread: row.try_get(3)?,
                version: row.try_get(4)?,
            },
        );
    }
    Ok(counters)
}

/// The stored notifications under the batches' (recipient, key) pairs.
async fn stored_keys(
    tx: &mut Transaction<'_, Postgres>,
    batches: &[&[NewNotification]],
) -> Result<HashMap<(User, String), Notification>, sqlx::Error> {
    let mut keyed: Vec<(User, &str)> = batches
        .iter()
        .flat_map(|batch| batch.iter())
        .filter_map(|n| n.idempotency_key.as_deref().map(|k| (n.recipient, k)))
        .collect();
    keyed.sort_unstable();
    keyed.dedup();
    let mut stored = HashMap::new();
    if keyed.is_empty() {
        return Ok(stored);
    }
    let rows = sqlx::query(BY_KEYS)
        .bind(keyed.iter().map(|(u, _)| u.role.code()).collect::<Vec<_>>())
        .bind(keyed.iter().map(|(u, _)| u.id).collect::<Vec<_>>())
        .bind(keyed.iter().map(|(_, k)| k.to_string()).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    for row in &rows {
        let notification = decode(row)?;
        let key: String = row.try_get(21)?;
        stored.insert((notification.recipient, key), notification);
    }
    Ok(stored)
}

/// The (locked) recipients' unread notifications under the collapse keys.
async fn collapsed(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[(User, &str)],
    now: i64,
) -> Result<Holders, sqlx::Error> {
    let mut holders = Holders::new();
    if keys.is_empty() {
        return Ok(holders);
    }
    let rows = sqlx::query(COLLAPSED)
        .bind(keys.iter().map(|(u, _)| u.role.code()).collect::<Vec<_>>())
        .bind(keys.iter().map(|(u, _)| u.id).collect::<Vec<_>>())
        .bind(keys.iter().map(|(_, k)| k.to_string()).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
    for row in &rows {
        holders
            .entry((decode_user(row)?, row.try_get(2)?))
            .or_default()
            .push((row.try_get(3)?, row.try_get(4)?));
    }
    Ok(holders)
}

/// Takes the rows the fresh ones replace off every shelf (the triggers
/// take them out of the counts), in one statement.
async fn replace(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Numbered],
    now: i64,
) -> Result<(), sqlx::Error> {
    let triples = replacements(rows);
    if triples.is_empty() {
        return Ok(());
    }
    let old: Vec<&str> = triples.iter().map(|t| t.0).collect();
    let new: Vec<&str> = triples.iter().map(|t| t.1).collect();
    let versions: Vec<i64> = triples.iter().map(|t| t.2).collect();
    sqlx::query(REPLACE)
        .bind(old)
        .bind(new)
        .bind(versions)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts the numbered rows in one statement, a column per array.
async fn insert_rows(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Numbered],
    fresh: &[&NewNotification],
) -> Result<(), sqlx::Error> {
    let column = |f: fn(&Notification) -> i64| -> Vec<i64> {
        rows.iter().map(|r| f(&r.notification)).collect()
    };
    let text = |f: fn(&Notification) -> &String| -> Vec<String> {
        rows.iter().map(|r| f(&r.notification).clone()).collect()
    };
    sqlx::query(
        "INSERT INTO notifications (id, recipient_role, recipient_id, seq, type, channel, \
         content, status, priority, created_at, updated_at, version, idempotency_key, \
         category, expires_at, collapse_key, replaces, actions) \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], \
         $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::int[], $10::bigint[], \
         $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::bigint[], $16::text[], \
         $17::text[], $18::text[])",
    )
    .bind(text(|n| &n.id))
    .bind(column(|n| n.recipient.role.code()))
    .bind(column(|n| n.recipient.id))
    .bind(column(|n| n.seq))
    .bind(text(|n| &n.kind))
    .bind(column(|n| n.channel.code()))
    .bind(text(|n| &n.content))
    .bind(column(|n| n.status.code()))
    .bind(
        rows.iter()
            .map(|r| r.notification.priority)
            .collect::<Vec<_>>(),
    )
    .bind(column(|n| n.created_at))
    .bind(column(|n| n.updated_at))
    .bind(column(|n| n.version))
    .bind(
        fresh
            .iter()
            .map(|n| n.idempotency_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind(text(|n| &n.category))
    .bind(
        rows.iter()
            .map(|r| r.notification.expires_at)
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.notification.collapse_key.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.notification.replaces.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| crate::sqlite::actions_json(&r.notification.actions))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the locked users' seqs and versions back (the unread count is
/// the insert trigger's to move).
async fn save_counters(
    tx: &mut Transaction<'_, Postgres>,
    counters: &HashMap<User, UserState>,
) -> Result<(), sqlx::Error> {
    let users: Vec<(&User, &UserState)> = counters.iter().collect();
    sqlx::query(
        "UPDATE users SET last_seq = v.last_seq, version = v.version \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
         AS v(role, id, last_seq, version) \
         WHERE users.role = v.role AND users.id = v.id",
    )
    .bind(users.iter().map(|(u, _)| u.role.code()).collect::<Vec<_>>())
    .bind(users.iter().map(|(u, _)| u.id).collect::<Vec<_>>())
    .bind(users.iter().map(|(_, c)| c.last_seq).collect::<Vec<_>>())
    .bind(users.iter().map(|(_, c)| c.version).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Rows of (role, user id, notification id), grouped by user.
fn by_user(rows: &[sqlx::postgres::PgRow]) -> Result<HashMap<User, Vec<String>>, sqlx::Error> {
    let mut grouped: HashMap<User, Vec<String>> = HashMap::new();
    for row in rows {
        grouped
            .entry(decode_user(row)?)
            .or_default()
            .push(row.try_get(2)?);
    }
    Ok(grouped)
}

/// Each (locked) user's unread count by category.
async fn users_by_category(
    tx: &mut Transaction<'_, Postgres>,
    users: &[User],
) -> Result<HashMap<User, ByCategory>, sqlx::Error> {
    let rows = sqlx::query(USERS_BY_CATEGORY)
        .bind(users.iter().map(|u| u.role.code()).collect::<Vec<_>>())
        .bind(users.iter().map(|u| u.id).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    let mut by_user: HashMap<User, ByCategory> = HashMap::with_capacity(users.len());
    for row in &rows {
        by_user
            .entry(decode_user(row)?)
            .or_default()
            .insert(row.try_get(2)?, row.try_get(3)?);
    }
    Ok(by_user)
}

/// A change of one user's existing notifications, under the user's row
/// lock: which rows, how, and what the notice says.
enum RowChange<'a> {
    /// Named rows moved forward to a status.
    Mark(&'a [String], Status),
    /// Named rows archived or brought back.
    Archive(&'a [String], bool),
    /// The unread inbox (of a category, up to a seq) moved to a status.
    MarkAll(Status, Option<&'a str>, Option<i64>),
    /// An action of one row taken, if [`check_action`] allows it (the row
    /// then becomes READ; it was READ already when the flag says so).
    Action {
        id: &'a str,
        action_id: &'a str,
        was_read: bool,
    },
}

/// A [`RowChange`] of named rows (at most 1,000: bounded work, unlike a
/// mark-all) that a group writer holds until its turn.
enum OwnedChange {
    Mark(Vec<String>, Status),
    Archive(Vec<String>, bool),
}

impl OwnedChange {
    fn borrowed(&self) -> RowChange<'_> {
        match self {
            OwnedChange::Mark(ids, status) => RowChange::Mark(ids, *status),
            OwnedChange::Archive(ids, archived) => RowChange::Archive(ids, *archived),
        }
    }
}

impl RowChange<'_> {
    /// What the change did, made at `now`.
    fn update(&self, now: i64) -> Update {
        match self {
            RowChange::Mark(_, status) | RowChange::MarkAll(status, ..) => Update::status(*status),
            RowChange::Archive(_, archived) => Update {
                archived: Some(*archived),
                ..Update::default()
            },
            RowChange::Action {
                action_id,
                was_read,
                ..
            } => Update {
                status: (!was_read).then_some(Status::Read),
                action_taken: Some(crate::model::ActionTaken {
                    id: (*action_id).to_owned(),
                    at: now,
                }),
                ..Update::default()
            },
        }
    }

    /// Whether the unread counts can move (receipts cannot).
    fn counts(&self) -> bool {
        !matches!(
            self,
            RowChange::Mark(_, Status::Delivered) | RowChange::MarkAll(Status::Delivered, ..)
        )
    }

    /// Applies the change to the user's rows at `version`; answers the
    /// ids it changed.
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        user: User,
        version: i64,
        now: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        let owned = |role: i64, id: i64| (role, id) == (user.role.code(), user.id);
        match *self {
            RowChange::Mark(ids, status) => {
                let found: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(FIND_FOR_MARK)
                    .bind(ids)
                    .fetch_all(&mut **tx)
                    .await?;
                let updated: Vec<String> = found
                    .into_iter()
                    .filter(|(_, role, id, current, _)| {
                        owned(*role, *id) && *current < status.code()
                    })
                    .map(|(id, ..)| id)
                    .collect();
                if !updated.is_empty() {
                    sqlx::query(SET_STATUS)
                        .bind(status.code())
                        .bind(now)
                        .bind(version)
                        .bind(&updated)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(updated)
            }
            RowChange::Archive(ids, archived) => {
                let found: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(FIND_FOR_MARK)
                    .bind(ids)
                    .fetch_all(&mut **tx)
                    .await?;
                let updated: Vec<String> = found
                    .into_iter()
                    .filter(|(_, role, id, _, shelf)| {
                        owned(*role, *id)
                            && *shelf != GONE_SHELF
                            && (*shelf == ARCHIVED_SHELF) != archived
                    })
                    .map(|(id, ..)| id)
                    .collect();
                if !updated.is_empty() {
                    sqlx::query(SET_ARCHIVED)
                        .bind(archived.then_some(now))
                        .bind(now)
                        .bind(version)
                        .bind(&updated)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(updated)
            }
            RowChange::MarkAll(status, category, up_to_seq) => {
                let query = sqlx::query_scalar(match category {
                    Some(_) => MARK_ALL_CATEGORY,
                    None => MARK_ALL,
                })
                .bind(status.code())
                .bind(now)
                .bind(version)
                .bind(user.role.code())
                .bind(user.id)
                .bind(up_to_seq.unwrap_or(i64::MAX))
                .bind(INBOX_SHELF);
                let query = match category {
                    Some(category) => query.bind(category),
                    None => query,
                };
                query.fetch_all(&mut **tx).await
            }
            RowChange::Action { id, action_id, .. } => {
                let row = sqlx::query(GET).bind(id).fetch_optional(&mut **tx).await?;
                let found = row.map(|row| decode(&row)).transpose()?;
                if check_action(found.as_ref(), user, action_id, now).is_err() {
                    return Ok(Vec::new());
                }
                sqlx::query(SET_ACTION)
                    .bind(action_id)
                    .bind(now)
                    .bind(version)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
                Ok(vec![id.to_owned()])
            }
        }
    }
}

fn presence_payload(user: User, online: bool, at: i64) -> String {
    Notice::Presence {
        role: user.role.code(),
        user: user.id,
        online,
        at,
    }
    .payload()
}

/// The database's clock in milliseconds since the Unix epoch, as SQL.
/// Presence leases are measured on it, so cores whose clocks disagree
/// (one a minute ahead) still agree on when an entry expires.
const DATABASE_MILLIS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

async fn database_millis(connection: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {DATABASE_MILLIS}")))
        .fetch_one(connection)
        .await
}

async fn went_offline(
    tx: &mut Transaction<'_, Postgres>,
    user: User,
    now: i64,
    payloads: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    sqlx::query(WENT_OFFLINE)
        .bind(now)
        .bind(user.role.code())
        .bind(user.id)
        .execute(&mut **tx)
        .await?;
    payloads.push(presence_payload(user, false, now));
    Ok(())
}

/// `$1` topic, `$2` users as `[[role, id], …]`.
const SUBSCRIBE: &str = "INSERT INTO topic_subscribers (topic, role, user_id) \
     SELECT $1, (key ->> 0)::bigint, (key ->> 1)::bigint FROM jsonb_array_elements($2::jsonb) AS key \
     ON CONFLICT DO NOTHING";
/// `$1` topic, `$2` users as `[[role, id], …]`.
const UNSUBSCRIBE: &str = "DELETE FROM topic_subscribers WHERE topic = $1 \
     AND (role, user_id) IN (SELECT (key ->> 0)::bigint, (key ->> 1)::bigint \
     FROM jsonb_array_elements($2::jsonb) AS key)";

impl PgStore {
    async fn subscription(
        &self,
        sql: &'static str,
        topic: &str,
        users: &[User],
    ) -> Result<u64, StoreError> {
        let keys: Vec<[i64; 2]> = users.iter().map(|u| [u.role.code(), u.id]).collect();
        let keys = serde_json::to_string(&keys).expect("integers serialize");
        Ok(sqlx::query(sql)
            .bind(topic)
            .bind(keys)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

#[async_trait]
impl Store for PgStore {
    /// Handed to this core's group writer, which commits the creates
    /// waiting together in one transaction ([`write_in_groups`]).
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<Created>, StoreError> {
        in_group::<Creates>(&self.creates, batch).await
    }

    async fn get(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        self.reads.get(id).await
    }

    async fn list(
        &self,
        user: User,
        query: &ListQuery,
        start: PageStart,
        limit: u32,
    ) -> Result<OfflinePage, StoreError> {
        self.reads.list(user, query, start, limit).await
    }

    async fn unread_counts(&self, user: User) -> Result<UnreadCounts, StoreError> {
        self.reads.unread_counts(user).await
    }

    async fn after_seq(
        &self,
        user: User,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        self.reads.after_seq(user, after, limit).await
    }

    async fn user_state(&self, user: User) -> Result<UserState, StoreError> {
        self.reads.user_state(user).await
    }

    async fn id_at(&self, user: User, seq: i64) -> Result<Option<String>, StoreError> {
        self.reads.id_at(user, seq).await
    }

    async fn changed_after(
        &self,
        user: User,
        after: ChangePosition,
        limit: u32,
    ) -> Result<ChangedPage, StoreError> {
        self.reads.changed_after(user, after, limit).await
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn mark(
        &self,
        user: User,
        ids: Vec<String>,
        status: Status,
    ) -> Result<MarkOutcome, StoreError> {
        in_group::<Changes>(&self.changes, (user, OwnedChange::Mark(ids, status))).await
    }

    async fn archive(
        &self,
        user: User,
        ids: Vec<String>,
        archived: bool,
    ) -> Result<MarkOutcome, StoreError> {
        in_group::<Changes>(&self.changes, (user, OwnedChange::Archive(ids, archived))).await
    }

    async fn mark_all(
        &self,
        user: User,
        status: Status,
        category: Option<String>,
        up_to_seq: Option<i64>,
    ) -> Result<MarkOutcome, StoreError> {
        // A transaction of its own: one may change a whole inbox, and the
        // marks and receipts of other users should not wait behind it.
        let change = RowChange::MarkAll(status, category.as_deref(), up_to_seq);
        self.change_rows(user, change).await
    }

    /// Per user, under the user's lock (several cores may sweep at once:
    /// the rows are checked again there, so each expires once).
    /// One transaction for the batch, however many users it spans (one row
    /// each, when many come due at one moment): the owners locked in order
    /// like a create's, the rows and versions set in one statement each,
    /// and a notice per user.
    async fn expire_due(&self, limit: u32) -> Result<usize, StoreError> {
        let due = sqlx::query(DUE)
            .bind(now_millis())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let now = now_millis();
        let owners = by_user(&due)?;
        let mut tx = self.pool.begin().await?;
        let users: Vec<User> = owners.keys().copied().collect();
        let locked = lock_users(&mut tx, &users).await?;
        let mut ids = Vec::with_capacity(due.len());
        let mut versions = Vec::with_capacity(due.len());
        for (user, owned) in &owners {
            let next = locked.get(user).map_or(1, |state| state.version + 1);
            for id in owned {
                ids.push(id.clone());
                versions.push(next);
            }
        }
        let expired = sqlx::query(EXPIRE)
            .bind(now)
            .bind(&ids)
            .bind(&versions)
            .fetch_all(&mut *tx)
            .await?;
        let mut changed = by_user(&expired)?;
        if changed.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let users: Vec<User> = changed.keys().copied().collect();
        let next = |user: &User| locked.get(user).map_or(1, |state| state.version + 1);
        let counters = sqlx::query(SET_VERSIONS)
            .bind(users.iter().map(|u| u.role.code()).collect::<Vec<_>>())
            .bind(users.iter().map(|u| u.id).collect::<Vec<_>>())
            .bind(users.iter().map(next).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        let mut by_category = users_by_category(&mut tx, &users).await?;
        let update = Update {
            expired: Some(true),
            ..Update::default()
        };
        let mut notices = Vec::with_capacity(counters.len());
        for row in &counters {
            let user = decode_user(row)?;
            let ids = changed.remove(&user).unwrap_or_default();
            notices.push(Notice::Marked {
                role: user.role.code(),
                user: user.id,
                update: update.clone(),
                at: now,
                unread: row.try_get(2)?,
                by_category: Some(by_category.remove(&user).unwrap_or_default()),
                version: next(&user),
                ids: (ids.len() <= IDS_PER_NOTICE).then_some(ids),
            });
        }
        self.fanout.before_commit(&mut tx, &notices).await?;
        tx.commit().await?;
        self.fanout.after_commit(notices);
        Ok(expired.len())
    }

    /// Under the owners' locks, taken in order like a create's, so a sweep
    /// and a create never wait for each other in a circle.
    async fn delete_old(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        let old = sqlx::query(OLD)
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        if old.is_empty() {
            return Ok(0);
        }
        let owners: Vec<User> = by_user(&old)?.into_keys().collect();
        let ids: Vec<String> = old
            .iter()
            .map(|row| row.try_get(2))
            .collect::<Result<_, _>>()?;
        let mut tx = self.pool.begin().await?;
        lock_users(&mut tx, &owners).await?;
        let deleted = sqlx::query(DELETE_OLD)
            .bind(&ids)
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted as usize)
    }

    async fn erase_user(&self, user: User) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_users(&mut tx, &[user]).await?;
        let deleted = sqlx::query(ERASE_NOTIFICATIONS)
            .bind(user.role.code())
            .bind(user.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for sql in [
            "DELETE FROM inbox_counts WHERE role = $1 AND user_id = $2",
            "DELETE FROM room_members WHERE role = $1 AND user_id = $2",
            "DELETE FROM presence WHERE role = $1 AND user_id = $2",
            preferences::ERASE_MUTED,
            scheduled::ERASE_PENDING,
            topics::ERASE_SUBSCRIPTIONS,
            topics::ERASE_FANOUT_RECIPIENT,
            // A change of the user's notifications: streams that hear of a
            // later one read back what is left.
            "UPDATE users SET version = version + 1 WHERE role = $1 AND id = $2",
        ] {
            sqlx::query(sql)
                .bind(user.role.code())
                .bind(user.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Checked once before (a refusal is final, so one seen early stands)
    /// and again under the user's lock, where the change is made.
    async fn complete_action(
        &self,
        user: User,
        id: String,
        action_id: String,
    ) -> Result<Result<Notification, ActionRefused>, StoreError> {
        let found = self.reads.get(&id).await?;
        if let Err(refused) = check_action(found.as_ref(), user, &action_id, now_millis()) {
            return Ok(Err(refused));
        }
        let was_read = found.is_some_and(|n| n.status == Status::Read);
        let change = RowChange::Action {
            id: &id,
            action_id: &action_id,
            was_read,
        };
        let outcome = self.change_rows(user, change).await?;
        let now = self.reads.get(&id).await?;
        if outcome.updated.is_empty() {
            let refused = check_action(now.as_ref(), user, &action_id, now_millis())
                .err()
                .unwrap_or(ActionRefused::NotFound);
            return Ok(Err(refused));
        }
        Ok(now.ok_or(ActionRefused::NotFound))
    }

    async fn join_room(&self, room: &str, user: User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO room_members (room, role, user_id, joined_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(room)
        .bind(user.role.code())
        .bind(user.id)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn leave_room(&self, room: &str, user: User) -> Result<(), StoreError> {
        sqlx::query(LEAVE_ROOM)
            .bind(room)
            .bind(user.role.code())
            .bind(user.id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn room_members(&self, room: &str) -> Result<Vec<RoomMember>, StoreError> {
        self.reads.room_members(room).await
    }

    async fn room_peers(&self, user: User) -> Result<Vec<User>, StoreError> {
        self.reads.room_peers(user).await
    }

    async fn online_peers(&self, user: User) -> Result<Vec<User>, StoreError> {
        self.reads.online_peers(user).await
    }

    async fn last_seen(&self, user: User) -> Result<Option<i64>, StoreError> {
        self.reads.last_seen(user).await
    }

    async fn set_presence(
        &self,
        node: &str,
        streams: Vec<(User, u32)>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = database_millis(&mut tx).await?;
        let expires_at = now + ttl.as_millis() as i64;
        let users: Vec<User> = streams.iter().map(|(u, _)| *u).collect();
        lock_users(&mut tx, &users).await?;
        let mut payloads = Vec::new();
        for (user, count) in streams {
            let before = presence_entries::<Postgres>(&mut *tx, &READS, user).await?;
            if count > 0 {
                sqlx::query(
                    "INSERT INTO presence (node, role, user_id, streams, expires_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node, role, user_id) \
                     DO UPDATE SET streams = excluded.streams, expires_at = excluded.expires_at",
                )
                .bind(node)
                .bind(user.role.code())
                .bind(user.id)
                .bind(i64::from(count))
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(DROP_ENTRY)
                    .bind(node)
                    .bind(user.role.code())
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await?;
            }
            let after = presence_entries::<Postgres>(&mut *tx, &READS, user).await?;
            if before == 0 && after > 0 {
                payloads.push(presence_payload(user, true, now));
            } else if before > 0 && after == 0 {
                went_offline(&mut tx, user, now, &mut payloads).await?;
            }
        }
        notify_all(&mut tx, payloads).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn refresh_presence(&self, node: &str, ttl: Duration) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE presence SET expires_at = {DATABASE_MILLIS} + $1 WHERE node = $2 \
             RETURNING role, user_id"
        )))
        .bind(ttl.as_millis() as i64)
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(decode_user).collect::<Result<_, _>>()?)
    }

    async fn subscribe(&self, topic: &str, users: &[User]) -> Result<u64, StoreError> {
        self.subscription(SUBSCRIBE, topic, users).await
    }

    async fn unsubscribe(&self, topic: &str, users: &[User]) -> Result<u64, StoreError> {
        self.subscription(UNSUBSCRIBE, topic, users).await
    }

    async fn subscribers(&self, topic: &str) -> Result<i64, StoreError> {
        self.reads.subscribers(topic).await
    }

    async fn publish(&self, publish: Publish) -> Result<TopicFanout, StoreError> {
        let now = now_millis();
        let id = new_object_id();
        let mut tx = self.pool.begin().await?;
        if !topics::insert_fanout!(tx, &id, &publish, now) {
            let row = sqlx::query(topics::FANOUT_BY_KEY)
                .bind(&publish.topic)
                .bind(publish.template.idempotency_key.as_deref())
                .fetch_one(&mut *tx)
                .await?;
            return Ok(topics::decode_state(&row)?);
        }
        let recipients = sqlx::query(topics::FIX_RECIPIENTS)
            .bind(&id)
            .bind(&publish.topic)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
        sqlx::query(topics::COUNT_RECIPIENTS)
            .bind(&id)
            .bind(recipients)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(TopicFanout {
            id,
            topic: publish.topic,
            recipients,
            created: 0,
            suppressed: 0,
            done: recipients == 0,
        })
    }

    async fn fanout(&self, id: &str) -> Result<Option<TopicFanout>, StoreError> {
        self.reads.fanout(id).await
    }

    /// The fan-out's row is locked for the batch, skipped by other cores'
    /// batches meanwhile: each core works on another open fan-out, or on
    /// this one's next batch once this one commits.
    async fn fanout_step(&self, limit: u32) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let Some((open, recipients, creates, skipped)) =
            topics::next_batch!(tx, topics::OPEN_FANOUT_LOCKED, READS.muted_among, limit)
        else {
            return Ok(false);
        };
        let mut created = 0;
        let mut notices = Vec::new();
        if !creates.is_empty() {
            let (plan, rows, staged) =
                stage_creates(&mut tx, &self.fanout, &[creates.as_slice()], now).await?;
            created = plan
                .answers(&rows)
                .iter()
                .flatten()
                .filter(|c| c.fresh)
                .count() as i64;
            notices = staged;
        }
        topics::settle_batch!(tx, open, recipients, created, skipped, limit);
        tx.commit().await?;
        self.fanout.after_commit(notices);
        Ok(true)
    }

    async fn schedule(
        &self,
        batch: Vec<NewNotification>,
        send_at: i64,
    ) -> Result<Vec<Created>, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let answers = scheduled::schedule_in!(tx, &batch, send_at, now);
        tx.commit().await?;
        Ok(answers)
    }

    async fn due(&self, now: i64, limit: u32) -> Result<Vec<NewNotification>, StoreError> {
        self.reads.due(now, limit).await
    }

    /// The pending rows are taken (deleted) first, in the transaction that
    /// creates them: a core racing this one for the same rows waits on
    /// their locks, then finds them gone and creates nothing.
    async fn send_due(
        &self,
        send: Vec<NewNotification>,
        drop: Vec<String>,
    ) -> Result<Vec<Created>, StoreError> {
        let ids: Vec<String> = send
            .iter()
            .filter_map(|n| n.id.clone())
            .chain(drop)
            .collect();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let taken: std::collections::HashSet<String> =
            sqlx::query_scalar("DELETE FROM scheduled WHERE id = ANY($1) RETURNING id")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let batch: Vec<NewNotification> = send
            .into_iter()
            .filter(|n| n.id.as_ref().is_some_and(|id| taken.contains(id)))
            .collect();
        if batch.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let (plan, rows, notices) =
            stage_creates(&mut tx, &self.fanout, &[batch.as_slice()], now).await?;
        tx.commit().await?;
        self.fanout.after_commit(notices);
        Ok(plan.answers(&rows).into_iter().flatten().collect())
    }

    async fn cancel(&self, id: &str) -> Result<Result<Notification, CancelRefused>, StoreError> {
        let row = sqlx::query(scheduled::CANCEL)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            let (cancelled, _) = scheduled::decode_pending(&row)?;
            return Ok(Ok(cancelled));
        }
        Ok(Err(match self.reads.get(id).await? {
            Some(_) => CancelRefused::NotPending,
            None => CancelRefused::NotFound,
        }))
    }

    async fn preferences(&self, user: User) -> Result<Vec<Rule>, StoreError> {
        self.reads.preferences(user).await
    }

    /// Under the user's row lock: two changes of one user's preferences
    /// apply one after the other.
    async fn set_preferences(
        &self,
        user: User,
        rules: Vec<Rule>,
    ) -> Result<Result<Vec<Rule>, PreferencesRefused>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_users(&mut tx, &[user]).await?;
        let set = preferences::apply_in!(tx, user, &rules);
        if set.is_ok() {
            tx.commit().await?;
        }
        Ok(set)
    }

    async fn muted(
        &self,
        users: &[User],
        category: &str,
        channel: Channel,
    ) -> Result<Vec<User>, StoreError> {
        self.reads.muted(users, category, channel).await
    }

    async fn expire_presence(&self) -> Result<(), StoreError> {
        let now = {
            let mut connection = self.pool.acquire().await?;
            database_millis(&mut connection).await?
        };
        let rows = sqlx::query(EXPIRED_USERS)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        for row in &rows {
            let user = decode_user(row)?;
            // Per user, under the user's lock: of several cores expiring the
            // same entries, only the one that removes the last announces it.
            let mut tx = self.pool.begin().await?;
            lock_users(&mut tx, &[user]).await?;
            let removed = sqlx::query(DROP_EXPIRED)
                .bind(user.role.code())
                .bind(user.id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let mut payloads = Vec::new();
            if removed > 0 && presence_entries::<Postgres>(&mut *tx, &READS, user).await? == 0 {
                went_offline(&mut tx, user, now, &mut payloads).await?;
            }
            notify_all(&mut tx, payloads).await?;
            tx.commit().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod plans {
    //! Every statement that takes user input is planned on the index meant
    //! for it: generic plans (what a prepared statement runs after a few
    //! executions, whatever the values) on an analysed database where one
    //! user has a large unread inbox. Needs `NOTIFY_TEST_POSTGRES_URL`.

    use super::*;
    use crate::model::Channel;
    use crate::object_id::new_object_id;
    use sqlx::Connection;

    struct Nowhere;
    impl ChangeSink for Nowhere {
        fn publish(&self, _: Change) {}
    }

    /// Each statement and the indexes its plan uses, all of them (`a|b`:
    /// either, both being a full match of the key): a sequential scan, or
    /// any other index, fails the test.
    const EXPECTED: &[(&str, &str, &[&str])] = &[
        ("GET", GET, &["notifications_pkey"]),
        ("BY_IDS", BY_IDS, &["notifications_pkey"]),
        ("FIND_FOR_MARK", FIND_FOR_MARK, &["notifications_pkey"]),
        ("SET_STATUS", SET_STATUS, &["notifications_pkey"]),
        ("SET_ARCHIVED", SET_ARCHIVED, &["notifications_pkey"]),
        ("MARK_ALL", MARK_ALL, &["notifications_shelf"]),
        (
            "MARK_ALL_CATEGORY",
            MARK_ALL_CATEGORY,
            &["notifications_category_shelf"],
        ),
        ("SHELF_PAGE", PAGES.shelf.offset, &["notifications_shelf"]),
        ("SHELF_BEFORE", PAGES.shelf.before, &["notifications_shelf"]),
        (
            "CATEGORY_SHELF_PAGE",
            PAGES.category_shelf.offset,
            &["notifications_category_shelf"],
        ),
        (
            "CATEGORY_SHELF_BEFORE",
            PAGES.category_shelf.before,
            &["notifications_category_shelf"],
        ),
        (
            "LISTED_PAGE",
            PAGES.listed.offset,
            &["notifications_recipient_seq"],
        ),
        (
            "LISTED_BEFORE",
            PAGES.listed.before,
            &["notifications_recipient_seq"],
        ),
        (
            "CATEGORY_LISTED_PAGE",
            PAGES.category_listed.offset,
            &["notifications_category"],
        ),
        (
            "CATEGORY_LISTED_BEFORE",
            PAGES.category_listed.before,
            &["notifications_category"],
        ),
        ("VIEW_TOTALS", VIEW_TOTALS, &["inbox_counts_pkey"]),
        ("DUE", DUE, &["notifications_expiry"]),
        ("EXPIRE", EXPIRE, &["notifications_pkey"]),
        ("SET_VERSIONS", SET_VERSIONS, &["users_pkey"]),
        ("SET_ACTION", SET_ACTION, &["notifications_pkey"]),
        ("COLLAPSED", COLLAPSED, &["notifications_collapse"]),
        ("REPLACE", REPLACE, &["notifications_pkey"]),
        ("OLD", OLD, &["notifications_retention"]),
        ("DELETE_OLD", DELETE_OLD, &["notifications_pkey"]),
        (
            "ERASE_NOTIFICATIONS",
            ERASE_NOTIFICATIONS,
            &["notifications_recipient_seq|notifications_shelf|notifications_changes"],
        ),
        ("BY_CATEGORY", BY_CATEGORY, &["inbox_counts_pkey"]),
        (
            "USERS_BY_CATEGORY",
            USERS_BY_CATEGORY,
            &["inbox_counts_pkey"],
        ),
        ("AFTER_SEQ", AFTER_SEQ, &["notifications_recipient_seq"]),
        ("ID_AT", ID_AT, &["notifications_recipient_seq"]),
        ("CHANGED_AFTER", CHANGED_AFTER, &["notifications_changes"]),
        ("AT_VERSIONS", AT_VERSIONS, &["notifications_changes"]),
        ("BY_KEYS", BY_KEYS, &["notifications_idempotency"]),
        ("LOCK_USER", LOCK_USER, &["users_pkey"]),
        ("LOCK_USERS", LOCK_USERS, &["users_pkey"]),
        ("USER_STATE", USER_STATE, &["users_pkey"]),
        ("VERSIONS", VERSIONS, &["users_pkey"]),
        ("LAST_SEEN", LAST_SEEN, &["users_pkey"]),
        ("WENT_OFFLINE", WENT_OFFLINE, &["users_pkey"]),
        ("PRESENCE_ENTRIES", PRESENCE_ENTRIES, &["presence_user"]),
        (
            "ROOM_MEMBERS",
            ROOM_MEMBERS,
            &["room_members_pkey", "users_pkey", "presence_user"],
        ),
        (
            "ROOM_PEERS",
            ROOM_PEERS,
            &["room_members_user", "room_members_pkey"],
        ),
        (
            "ONLINE_PEERS",
            ONLINE_PEERS,
            &["room_members_user", "room_members_pkey", "presence_user"],
        ),
        (
            "LEAVE_ROOM",
            LEAVE_ROOM,
            &["room_members_pkey|room_members_user"],
        ),
        ("DROP_ENTRY", DROP_ENTRY, &["presence_pkey|presence_user"]),
        ("EXPIRED_USERS", EXPIRED_USERS, &["presence_expiry"]),
        ("DROP_EXPIRED", DROP_EXPIRED, &["presence_user"]),
    ];

    /// How many `$n` parameters a statement has.
    fn parameters(sql: &str) -> usize {
        (1..=20)
            .take_while(|n| sql.contains(&format!("${n}")))
            .count()
    }

    /// The index names a plan line reads (`… using NAME on …`,
    /// `Bitmap Index Scan on NAME`).
    fn indexes(line: &str) -> Vec<String> {
        let mut names = Vec::new();
        for marker in [" using ", "Bitmap Index Scan on "] {
            if let Some((_, rest)) = line.split_once(marker) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        }
        names
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_statement_taking_user_input_uses_the_index_meant_for_it() {
        let Ok(admin) = std::env::var("NOTIFY_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("NOTIFY_REQUIRE_POSTGRES").is_none(),
                "NOTIFY_REQUIRE_POSTGRES is set but NOTIFY_TEST_POSTGRES_URL is not"
            );
            eprintln!("PostgreSQL plans not checked: set NOTIFY_TEST_POSTGRES_URL");
            return;
        };
        let name = format!("t_{}", new_object_id());
        let mut connection = PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        let store = PgStore::open(&url, PgOptions::default(), Arc::new(Nowhere))
            .await
            .unwrap();
        let big = User {
            role: Role::Vendor,
            id: 1,
        };
        let others = (2..2002).map(|id| User {
            role: Role::Customer,
            id,
        });
        let recipients: Vec<User> = std::iter::repeat_n(big, 20_000).chain(others).collect();
        // Several categories, as a shop's inbox has.
        let categories = ["order", "product", "payment", "review"];
        for (n, chunk) in recipients.chunks(1000).enumerate() {
            let category = categories[n % categories.len()];
            let batch = chunk
                .iter()
                .map(|&recipient| NewNotification {
                    id: None,
                    recipient,
                    kind: format!("{category}:placed"),
                    channel: Channel::Push,
                    content: "{}".into(),
                    priority: 1,
                    idempotency_key: Some(new_object_id()),
                    category: category.into(),
                    expires_at: None,
                    collapse_key: None,
                    actions: Vec::new(),
                })
                .collect();
            store.create(batch).await.unwrap();
        }
        let mut connection = PgConnection::connect(&url).await.unwrap();
        // As many users as a modest platform has: the planner's choice for
        // the users table depends on its size, which no one user controls.
        for setup in [
            "INSERT INTO users (role, id) SELECT 2, g FROM generate_series(3000, 50000) g",
            "INSERT INTO inbox_counts SELECT 2, g, 'order', 1, 0, 1 FROM generate_series(3000, 50000) g",
            // Most of a long history is read: the inbox is a small part of it.
            "UPDATE notifications SET status = 4, shelf = 2 WHERE recipient_role = 1 AND seq <= 15000",
            "INSERT INTO presence SELECT 'node-' || (g % 3), 2, g, 1, g FROM generate_series(1, 6000) g",
            "INSERT INTO room_members SELECT 'order:' || g, 2, g, 0 FROM generate_series(1, 6000) g",
            "ANALYZE",
            "SET plan_cache_mode = force_generic_plan",
        ] {
            sqlx::query(setup).execute(&mut connection).await.unwrap();
        }

        let mut wrong = Vec::new();
        for (index, (name, sql, expected)) in EXPECTED.iter().enumerate() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE p{index} AS {sql}")))
                .execute(&mut connection)
                .await
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            let nulls = vec!["NULL"; parameters(sql)].join(", ");
            let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "EXPLAIN EXECUTE p{index}({nulls})"
            )))
            .fetch_all(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("{name}: {error}"));
            let used: Vec<String> = plan.iter().flat_map(|line| indexes(line)).collect();
            let seq_scan = plan.iter().any(|line| line.contains("Seq Scan"));
            let allowed = |index: &str, used: &str| index.split('|').any(|name| name == used);
            let missing = expected
                .iter()
                .any(|index| !used.iter().any(|u| allowed(index, u)));
            let other = used
                .iter()
                .any(|u| !expected.iter().any(|index| allowed(index, u)));
            if seq_scan || missing || other {
                wrong.push(format!("{name}: planned as\n  {}", plan.join("\n  ")));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
