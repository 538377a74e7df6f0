//! The embedded SQLite store.
//!
//! One writer task owns the only write connection. Concurrent writes queue
//! on a channel; the task takes everything waiting (up to a bound), applies
//! it in one transaction and commits once, so many creates share one fsync
//! (group commit). Seqs and unread counts are updated in that same
//! transaction, so they can never drift from the rows. Reads go to a
//! separate pool, which WAL lets run beside the writer.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::create::{Holders, Numbered, Plan, replacements};
use crate::model::{
    ActionRefused, ActionTaken, ByCategory, Change, ChangePosition, ChangedPage, Channel, Created,
    ListQuery, MarkOutcome, NewNotification, Notification, OfflinePage, PageStart, RoomMember,
    Status, UnreadCounts, Update, User, UserState, check_action, now_millis,
};
use crate::object_id::new_object_id;
use crate::preferences::{self, PreferencesRefused, Rule};
use crate::reads::{
    ARCHIVED_SHELF, GONE_SHELF, INBOX_SHELF, ReadSql, Reads, ViewSql, columns, decode, decode_user,
    presence_entries, read_by_category, read_state, view_pages,
};
use crate::scheduled::{self, CancelRefused};
use crate::topics::{self, Fanout, Publish};
use crate::{ChangeSink, Store, StoreError};

const COLUMNS: &str = columns!();

// The statements that take user input, each planned on the index named
// beside it whatever the statistics say (the `plans` test checks them):
// where a table has several indexes a statement could use, `INDEXED BY`
// names the one meant (and makes the statement fail to prepare, rather
// than scan, if it could no longer use it).

/// The notifications primary key (SQLite names the index of a TEXT key).
macro_rules! by_id {
    () => {
        "notifications INDEXED BY sqlite_autoindex_notifications_1"
    };
}

/// The unread ones (not yet due) under a recipient's collapse key:
/// `notifications_collapse`.
const COLLAPSED: &str = "SELECT id, category FROM notifications \
     INDEXED BY notifications_collapse WHERE recipient_role = $1 AND recipient_id = $2 \
     AND collapse_key = $3 AND shelf = 1 AND (expires_at IS NULL OR expires_at > $4) \
     ORDER BY seq";
/// Takes replaced rows off every shelf, by `[old id, new id, version]`
/// triples: the primary key.
const REPLACE: &str = concat!(
    "UPDATE ",
    by_id!(),
    " SET shelf = 0, replaced_by = json_each.value ->> 1, version = json_each.value ->> 2, \
     updated_at = $2 FROM json_each($1) WHERE notifications.id = json_each.value ->> 0"
);
/// By id: the primary key.
const GET: &str = concat!("SELECT ", columns!(), " FROM ", by_id!(), " WHERE id = $1");
/// The views' pages: `notifications_shelf` (INBOX, ARCHIVED),
/// `notifications_category_shelf` (the same of one category),
/// `notifications_recipient_seq` (ALL) and `notifications_category` (ALL of
/// one category).
const PAGES: ViewSql = view_pages!(
    "notifications INDEXED BY notifications_shelf",
    "notifications INDEXED BY notifications_category_shelf",
    "notifications INDEXED BY notifications_recipient_seq",
    "notifications INDEXED BY notifications_category"
);
/// The views' totals: the inbox_counts primary key.
const VIEW_TOTALS: &str = "SELECT COALESCE(SUM(unread), 0), COALESCE(SUM(archived), 0), \
     COALESCE(SUM(listed), 0) FROM inbox_counts \
     WHERE role = $1 AND user_id = $2 AND ($3 IS NULL OR category = $3)";
/// A user's unread count by category: the inbox_counts primary key.
const BY_CATEGORY: &str = "SELECT category, unread FROM inbox_counts \
     WHERE role = $1 AND user_id = $2 AND unread > 0";
/// Several users' unread counts by category, by `[role, id]` pairs: the
/// inbox_counts primary key.
const USERS_BY_CATEGORY: &str = "SELECT role, user_id, category, unread FROM inbox_counts \
     WHERE (role, user_id) IN (SELECT value ->> 0, value ->> 1 FROM json_each($1)) \
     AND unread > 0";
/// Replay after a seq: `notifications_recipient_seq`.
const AFTER_SEQ: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM notifications INDEXED BY notifications_recipient_seq \
     WHERE recipient_role = $1 AND recipient_id = $2 AND seq > $3 \
     ORDER BY seq LIMIT $4"
);
/// The id at one seq: `notifications_recipient_seq`.
const ID_AT: &str = "SELECT id FROM notifications INDEXED BY notifications_recipient_seq \
     WHERE recipient_role = $1 AND recipient_id = $2 AND seq = $3";
/// Rows changed after a (version, seq): `notifications_changes`.
const CHANGED_AFTER: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM notifications INDEXED BY notifications_changes \
     WHERE recipient_role = $1 AND recipient_id = $2 \
     AND (version, seq) > ($3, $4) ORDER BY version, seq LIMIT $5"
);
/// An idempotency key: `notifications_idempotency`.
const BY_KEY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM notifications INDEXED BY notifications_idempotency \
     WHERE recipient_role = $1 AND recipient_id = $2 AND idempotency_key = $3"
);
/// A user's counters: the users primary key.
const USER_STATE: &str = "SELECT last_seq, unread, version FROM users WHERE role = $1 AND id = $2";
/// When a user was last seen: the users primary key.
const LAST_SEEN: &str = "SELECT last_seen_at FROM users WHERE role = $1 AND id = $2";
/// How many presence entries a user has: `presence_user`.
const PRESENCE_ENTRIES: &str =
    "SELECT COUNT(*) FROM presence INDEXED BY presence_user WHERE role = $1 AND user_id = $2";
/// A room's members: the room_members primary key.
const ROOM_MEMBERS: &str = "SELECT m.role, m.user_id, u.last_seen_at, \
     EXISTS (SELECT 1 FROM presence p WHERE p.role = m.role AND p.user_id = m.user_id) \
     FROM room_members m \
     LEFT JOIN users u ON u.role = m.role AND u.id = m.user_id \
     WHERE m.room = $1 ORDER BY m.role, m.user_id";
/// Who shares a room with a user: `room_members_user`, then the primary key.
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
/// Joins a room: the room_members primary key.
const JOIN_ROOM: &str = "INSERT INTO room_members (room, role, user_id, joined_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
/// Leaves a room: the room_members primary key.
const LEAVE_ROOM: &str = "DELETE FROM room_members WHERE room = $1 AND role = $2 AND user_id = $3";
/// A node's entry for a user: the presence primary key.
const SET_ENTRY: &str = "INSERT INTO presence (node, role, user_id, streams, expires_at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node, role, user_id) DO UPDATE \
     SET streams = excluded.streams, expires_at = excluded.expires_at";
/// Drops a node's entry for a user: the presence primary key.
const DROP_ENTRY: &str = "DELETE FROM presence WHERE node = $1 AND role = $2 AND user_id = $3";
/// A node's heartbeat: the presence primary key (its first column).
const REFRESH_ENTRIES: &str =
    "UPDATE presence SET expires_at = $1 WHERE node = $2 RETURNING role, user_id";
/// The users with an expired entry: `presence_expiry`.
const EXPIRED_USERS: &str =
    "SELECT DISTINCT role, user_id FROM presence INDEXED BY presence_expiry WHERE expires_at < $1";
/// Drops a user's expired entries: `presence_user`.
const DROP_EXPIRED: &str = "DELETE FROM presence INDEXED BY presence_user \
     WHERE role = $1 AND user_id = $2 AND expires_at < $3";
/// Records a user's offline moment: the users primary key.
const WENT_OFFLINE: &str = "INSERT INTO users (role, id, last_seen_at) VALUES ($1, $2, $3) \
     ON CONFLICT (role, id) DO UPDATE SET last_seen_at = excluded.last_seen_at";

/// SQLite's `synchronous` setting for the write connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged create survives a power cut.
    Full,
    /// fsync only at checkpoints: survives a process crash, not a power cut.
    Normal,
}

/// The read statements, for the read side both stores share.
const READS: ReadSql = ReadSql {
    begin_snapshot: "BEGIN",
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
         WHERE (role, user_id) IN (SELECT value ->> 0, value ->> 1 FROM json_each($3)) \
         AND category = $1 AND channel = $2",
};

/// Tuning for [`SqliteStore::open`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Durability of each commit.
    pub synchronous: Synchronous,
    /// Read connections in the pool.
    pub readers: u32,
    /// Most write requests applied in one transaction.
    pub max_batch: usize,
}

impl SqliteOptions {
    /// The defaults, stated once: the command line's and [`Default`]'s.
    pub const DEFAULT: SqliteOptions = SqliteOptions {
        synchronous: Synchronous::Full,
        readers: 4,
        max_batch: 512,
    };
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions::DEFAULT
    }
}

/// The SQLite implementation of [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    reads: Arc<Reads<Sqlite>>,
    writer: mpsc::Sender<WriteJob>,
    epoch: Arc<str>,
    /// The users with at least one pair of their preferences turned off,
    /// so a create to anybody else reads no preferences (that read cost a
    /// quarter of the creates/s). Exact, because every change of
    /// preferences goes through this store's one writer: it is read from
    /// the table at open and changed once each change has committed.
    muters: Arc<std::sync::RwLock<std::collections::HashSet<User>>>,
}

enum WriteOp {
    Create(Vec<NewNotification>),
    Preferences {
        user: User,
        rules: Vec<Rule>,
    },
    Schedule {
        batch: Vec<NewNotification>,
        send_at: i64,
    },
    SendDue {
        send: Vec<NewNotification>,
        drop: Vec<String>,
    },
    Cancel {
        id: String,
    },
    Subscribe {
        topic: String,
        users: Vec<User>,
        subscribe: bool,
    },
    Publish(Box<Publish>),
    FanoutStep {
        limit: u32,
    },
    Mark {
        user: User,
        ids: Vec<String>,
        status: Status,
    },
    Archive {
        user: User,
        ids: Vec<String>,
        archived: bool,
    },
    MarkAll {
        user: User,
        status: Status,
        category: Option<String>,
        up_to_seq: Option<i64>,
    },
    Join {
        room: String,
        user: User,
    },
    Leave {
        room: String,
        user: User,
    },
    Presence {
        node: String,
        streams: Vec<(User, u32)>,
        ttl_ms: i64,
    },
    RefreshPresence {
        node: String,
        ttl_ms: i64,
    },
    ExpirePresence,
    ExpireDue {
        limit: u32,
    },
    DeleteOld {
        before: i64,
        limit: u32,
    },
    Erase {
        user: User,
    },
    CompleteAction {
        user: User,
        id: String,
        action_id: String,
    },
}

enum Outcome {
    Created(Vec<Created>),
    Action(Box<Result<Notification, ActionRefused>>),
    Marked(MarkOutcome),
    Refreshed(Vec<User>),
    Preferences(Result<Vec<Rule>, PreferencesRefused>),
    Cancelled(Box<Result<Notification, CancelRefused>>),
    Fanout(Box<Fanout>),
    Counted(u64),
    Done,
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`),
    /// runs migrations and starts the writer task.
    pub async fn open(
        url: &str,
        options: SqliteOptions,
        sink: Arc<dyn ChangeSink>,
    ) -> Result<SqliteStore, StoreError> {
        let synchronous = match options.synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        };
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(5));
        let mut writer = connect.connect().await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut writer)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'epoch'")
            .fetch_one(&mut writer)
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .connect_with(connect)
            .await?;
        let (tx, rx) = mpsc::channel(8192);
        let muters = sqlx::query("SELECT DISTINCT role, user_id FROM muted")
            .fetch_all(&mut writer)
            .await?
            .iter()
            .map(decode_user)
            .collect::<Result<_, _>>()?;
        tokio::spawn(write_loop(writer, rx, sink, options.max_batch.max(1)));
        Ok(SqliteStore {
            reads: Arc::new(Reads::new(readers, &READS)),
            writer: tx,
            epoch: epoch.into(),
            muters: Arc::new(std::sync::RwLock::new(muters)),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriteJob { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Takes every waiting job and commits them as one group, then answers
/// each job and publishes the changes in commit order; background work (a
/// fan-out's batch, a retention batch) commits as a group of its own after
/// the calls that waited with it, so a call never waits for a batch it did
/// not arrive behind.
async fn write_loop(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteJob>,
    sink: Arc<dyn ChangeSink>,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let (mut background, mut calls): (Vec<WriteJob>, Vec<WriteJob>) =
            jobs.drain(..).partition(|job| {
                matches!(
                    job.op,
                    WriteOp::FanoutStep { .. } | WriteOp::DeleteOld { .. }
                )
            });
        for group in [&mut calls, &mut background] {
            if !group.is_empty() {
                commit_group(&mut conn, group, &sink).await;
            }
        }
    }
}

/// Applies `jobs` in one transaction and commits once. If the group fails,
/// each job is retried alone so one bad job cannot sink others.
async fn commit_group(
    conn: &mut SqliteConnection,
    jobs: &mut Vec<WriteJob>,
    sink: &Arc<dyn ChangeSink>,
) {
    let started = Instant::now();
    let ops: Vec<&WriteOp> = jobs.iter().map(|job| &job.op).collect();
    let notifications: usize = ops
        .iter()
        .map(|op| match op {
            WriteOp::Create(batch) => batch.len(),
            _ => 0,
        })
        .sum();
    match apply(conn, &ops).await {
        Ok((outcomes, changes)) => {
            metrics::histogram!("notify_commit_seconds").record(started.elapsed());
            metrics::histogram!("notify_commit_batch_requests").record(jobs.len() as f64);
            metrics::histogram!("notify_commit_batch_notifications").record(notifications as f64);
            for change in changes {
                sink.publish(change);
            }
            for (job, outcome) in jobs.drain(..).zip(outcomes) {
                let _ = job.reply.send(Ok(outcome));
            }
        }
        Err(error) if jobs.len() > 1 => {
            tracing::warn!(%error, jobs = jobs.len(), "group commit failed; retrying each request alone");
            for job in jobs.drain(..) {
                let result = apply(conn, &[&job.op]).await;
                let result = match result {
                    Ok((mut outcomes, changes)) => {
                        for change in changes {
                            sink.publish(change);
                        }
                        Ok(outcomes.remove(0))
                    }
                    Err(error) => Err(StoreError::from(error)),
                };
                let _ = job.reply.send(result);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "commit failed");
            let failure = StoreError::from(error);
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(failure.clone()));
            }
        }
    }
}

/// Applies the ops in one transaction; changes are returned, not published,
/// so nothing is announced that did not commit.
async fn apply(
    conn: &mut SqliteConnection,
    ops: &[&WriteOp],
) -> Result<(Vec<Outcome>, Vec<Change>), sqlx::Error> {
    let now = now_millis();
    let mut tx = conn.begin().await?;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut changes = Vec::new();
    let mut index = 0;
    while index < ops.len() {
        match ops[index] {
            WriteOp::Create(_) => {
                // Consecutive creates share one counter update per recipient
                // and one multi-row insert.
                let mut run = Vec::new();
                while let Some(WriteOp::Create(batch)) = ops.get(index) {
                    run.push(batch.as_slice());
                    index += 1;
                }
                for created in create_run(&mut tx, &run, now, &mut changes).await? {
                    outcomes.push(Outcome::Created(created));
                }
                continue;
            }
            WriteOp::Mark { user, ids, status } => {
                if *status == Status::Read {
                    // READ moves the unread count: one op at a time.
                    index += 1;
                    let outcome = mark(&mut tx, *user, ids, *status, now).await?;
                    changes.extend(updated(*user, &outcome, Update::status(*status)));
                    outcomes.push(Outcome::Marked(outcome));
                } else {
                    // Consecutive receipts (DELIVERED) share one UPDATE and
                    // one counter update, however many users they are for.
                    let mut run = Vec::new();
                    while let Some(WriteOp::Mark {
                        user,
                        ids,
                        status: next,
                    }) = ops.get(index)
                        && next == status
                    {
                        run.push((*user, ids.as_slice()));
                        index += 1;
                    }
                    let marked = mark_run(&mut tx, &run, *status, now).await?;
                    changes.extend(marked.changes);
                    outcomes.extend(marked.outcomes.into_iter().map(Outcome::Marked));
                }
                continue;
            }
            WriteOp::Archive {
                user,
                ids,
                archived,
            } => {
                let outcome = archive(&mut tx, *user, ids, *archived, now).await?;
                let update = Update {
                    archived: Some(*archived),
                    ..Update::default()
                };
                changes.extend(updated(*user, &outcome, update));
                outcomes.push(Outcome::Marked(outcome));
            }
            WriteOp::MarkAll {
                user,
                status,
                category,
                up_to_seq,
            } => {
                let outcome = mark_all(
                    &mut tx,
                    *user,
                    *status,
                    category.as_deref(),
                    *up_to_seq,
                    now,
                )
                .await?;
                changes.extend(updated(*user, &outcome, Update::status(*status)));
                outcomes.push(Outcome::Marked(outcome));
            }
            WriteOp::Join { room, user } => {
                sqlx::query(JOIN_ROOM)
                    .bind(room)
                    .bind(user.role.code())
                    .bind(user.id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                outcomes.push(Outcome::Done);
            }
            WriteOp::Leave { room, user } => {
                sqlx::query(LEAVE_ROOM)
                    .bind(room)
                    .bind(user.role.code())
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await?;
                outcomes.push(Outcome::Done);
            }
            WriteOp::Presence {
                node,
                streams,
                ttl_ms,
            } => {
                for (user, count) in streams {
                    set_presence(
                        &mut tx,
                        node,
                        *user,
                        *count,
                        now,
                        now + ttl_ms,
                        &mut changes,
                    )
                    .await?;
                }
                outcomes.push(Outcome::Done);
            }
            WriteOp::RefreshPresence { node, ttl_ms } => {
                let rows = sqlx::query(REFRESH_ENTRIES)
                    .bind(now + ttl_ms)
                    .bind(node)
                    .fetch_all(&mut *tx)
                    .await?;
                let users = rows.iter().map(decode_user).collect::<Result<_, _>>()?;
                outcomes.push(Outcome::Refreshed(users));
            }
            WriteOp::ExpirePresence => {
                expire_presence(&mut tx, now, &mut changes).await?;
                outcomes.push(Outcome::Done);
            }
            WriteOp::ExpireDue { limit } => {
                let expired = expire_due(&mut tx, *limit, now, &mut changes).await?;
                outcomes.push(Outcome::Counted(expired));
            }
            WriteOp::DeleteOld { before, limit } => {
                let deleted = sqlx::query(DELETE_OLD)
                    .bind(before)
                    .bind(i64::from(*limit))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                outcomes.push(Outcome::Counted(deleted));
            }
            WriteOp::Erase { user } => {
                outcomes.push(Outcome::Counted(erase(&mut tx, *user).await?));
            }
            WriteOp::Preferences { user, rules } => {
                let set = preferences::apply_in!(tx, user, rules);
                outcomes.push(Outcome::Preferences(set));
            }
            WriteOp::Schedule { batch, send_at } => {
                let answers = scheduled::schedule_in!(tx, batch, *send_at, now);
                outcomes.push(Outcome::Created(answers));
            }
            WriteOp::SendDue { send, drop } => {
                let ids: Vec<&str> = send
                    .iter()
                    .filter_map(|n| n.id.as_deref())
                    .chain(drop.iter().map(String::as_str))
                    .collect();
                let taken: std::collections::HashSet<String> = sqlx::query_scalar(TAKE_PENDING)
                    .bind(json_array(&ids))
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
                let batch: Vec<NewNotification> = send
                    .iter()
                    .filter(|n| n.id.as_ref().is_some_and(|id| taken.contains(id)))
                    .cloned()
                    .collect();
                let created = if batch.is_empty() {
                    Vec::new()
                } else {
                    create_run(&mut tx, &[batch.as_slice()], now, &mut changes)
                        .await?
                        .into_iter()
                        .flatten()
                        .collect()
                };
                outcomes.push(Outcome::Created(created));
            }
            WriteOp::Subscribe {
                topic,
                users,
                subscribe,
            } => {
                let sql = if *subscribe { SUBSCRIBE } else { UNSUBSCRIBE };
                let keys: Vec<[i64; 2]> = users.iter().map(|u| [u.role.code(), u.id]).collect();
                let changed = sqlx::query(sql)
                    .bind(topic)
                    .bind(json_array(&keys))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                outcomes.push(Outcome::Counted(changed));
            }
            WriteOp::Publish(publish) => {
                let fanout = publish_in(&mut tx, publish, now).await?;
                outcomes.push(Outcome::Fanout(Box::new(fanout)));
            }
            WriteOp::FanoutStep { limit } => {
                let worked = fanout_step(&mut tx, *limit, now, &mut changes).await?;
                outcomes.push(Outcome::Counted(u64::from(worked)));
            }
            WriteOp::Cancel { id } => {
                let cancelled = match sqlx::query(scheduled::CANCEL)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                {
                    Some(row) => Ok(scheduled::decode_pending(&row)?.0),
                    None => match sqlx::query(GET).bind(id).fetch_optional(&mut *tx).await? {
                        Some(_) => Err(CancelRefused::NotPending),
                        None => Err(CancelRefused::NotFound),
                    },
                };
                outcomes.push(Outcome::Cancelled(Box::new(cancelled)));
            }
            WriteOp::CompleteAction {
                user,
                id,
                action_id,
            } => {
                let done =
                    complete_action(&mut tx, *user, id, action_id, now, &mut changes).await?;
                outcomes.push(Outcome::Action(Box::new(done)));
            }
        }
        index += 1;
    }
    tx.commit().await?;
    Ok((outcomes, changes))
}

/// A run of creates through the shared stages (see `create`): keys, then
/// one upsert per recipient reserving a block of seqs, then the rows.
async fn create_run(
    tx: &mut Transaction<'_, Sqlite>,
    run: &[&[NewNotification]],
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<Vec<Vec<Created>>, sqlx::Error> {
    let stored = stored_keys(tx, run).await?;
    let plan = Plan::resolve(run, &stored);
    let per_recipient = plan.per_recipient();
    let mut counters = reserve_seqs(tx, &per_recipient).await?;
    let users: Vec<User> = per_recipient.iter().map(|(user, _)| *user).collect();
    let mut by_category = users_by_category(tx, &users).await?;
    let holders = collapsed(tx, &plan.collapse_keys(), now).await?;
    let rows = plan.number(&mut counters, &mut by_category, holders, now);
    insert_rows(tx, &rows, plan.fresh()).await?;
    replace(tx, &rows, now).await?;
    changes.extend(rows.iter().map(|row| Change::Created {
        notification: Box::new(row.notification.clone()),
        unread: row.unread,
        by_category: row.by_category.clone(),
        version: row.notification.version,
        replaced: row.replaced.clone(),
    }));
    Ok(plan.answers(&rows))
}

/// The stored notifications under the run's (recipient, key) pairs.
async fn stored_keys(
    tx: &mut Transaction<'_, Sqlite>,
    run: &[&[NewNotification]],
) -> Result<HashMap<(User, String), Notification>, sqlx::Error> {
    let mut stored = HashMap::new();
    let mut asked = std::collections::HashSet::new();
    for new in run.iter().flat_map(|batch| batch.iter()) {
        let Some(key) = new.idempotency_key.as_deref() else {
            continue;
        };
        if asked.insert((new.recipient, key))
            && let Some(found) = find_by_key(tx, new.recipient, key).await?
        {
            stored.insert((new.recipient, key.to_owned()), found);
        }
    }
    Ok(stored)
}

/// The unread notifications under each (recipient, collapse key).
async fn collapsed(
    tx: &mut Transaction<'_, Sqlite>,
    keys: &[(User, &str)],
    now: i64,
) -> Result<Holders, sqlx::Error> {
    let mut holders = Holders::new();
    for (user, key) in keys {
        let found: Vec<(String, String)> = sqlx::query_as(COLLAPSED)
            .bind(user.role.code())
            .bind(user.id)
            .bind(*key)
            .bind(now)
            .fetch_all(&mut **tx)
            .await?;
        if !found.is_empty() {
            holders.insert((*user, (*key).to_owned()), found);
        }
    }
    Ok(holders)
}

/// Takes the rows the fresh ones replace off every shelf (the triggers
/// take them out of the counts), in one statement.
async fn replace(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[Numbered],
    now: i64,
) -> Result<(), sqlx::Error> {
    let triples = replacements(rows);
    if triples.is_empty() {
        return Ok(());
    }
    sqlx::query(REPLACE)
        .bind(json_array(&triples))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Each user's unread count by category, in one statement per 1,000 users.
async fn users_by_category(
    tx: &mut Transaction<'_, Sqlite>,
    users: &[User],
) -> Result<HashMap<User, ByCategory>, sqlx::Error> {
    let mut by_user: HashMap<User, ByCategory> = HashMap::with_capacity(users.len());
    for chunk in users.chunks(1000) {
        let keys: Vec<(i64, i64)> = chunk.iter().map(|u| (u.role.code(), u.id)).collect();
        let rows = sqlx::query(USERS_BY_CATEGORY)
            .bind(json_array(&keys))
            .fetch_all(&mut **tx)
            .await?;
        for row in &rows {
            by_user
                .entry(decode_user(row)?)
                .or_default()
                .insert(row.try_get(2)?, row.try_get(3)?);
        }
    }
    Ok(by_user)
}

/// Adds each recipient's count to its seq and version, one statement per
/// 1,000 recipients, and answers the counters as they were before (the
/// unread count is the insert trigger's to move).
async fn reserve_seqs(
    tx: &mut Transaction<'_, Sqlite>,
    per_recipient: &[(User, i64)],
) -> Result<HashMap<User, UserState>, sqlx::Error> {
    let mut before = HashMap::with_capacity(per_recipient.len());
    for chunk in per_recipient.chunks(1000) {
        let mut upsert =
            QueryBuilder::<Sqlite>::new("INSERT INTO users (role, id, last_seq, version) ");
        upsert.push_values(chunk, |mut values, (user, count)| {
            values
                .push_bind(user.role.code())
                .push_bind(user.id)
                .push_bind(*count)
                .push_bind(*count);
        });
        upsert.push(
            " ON CONFLICT (role, id) DO UPDATE SET last_seq = last_seq + excluded.last_seq, \
             version = version + excluded.version \
             RETURNING role, id, last_seq, unread, version",
        );
        // RETURNING's order is not promised: rows are matched by key.
        let counts: HashMap<User, i64> = chunk.iter().copied().collect();
        for row in upsert.build().fetch_all(&mut **tx).await? {
            let user = decode_user(&row)?;
            if let Some(&count) = counts.get(&user) {
                let after: (i64, i64, i64) = (row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
                before.insert(
                    user,
                    UserState {
                        last_seq: after.0 - count,
                        unread: after.1,
                        version: after.2 - count,
                    },
                );
            }
        }
    }
    Ok(before)
}

/// Inserts the numbered rows, 1,000 per statement (22 parameters a row
/// stays under SQLite's 32,766).
async fn insert_rows(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[Numbered],
    fresh: &[&NewNotification],
) -> Result<(), sqlx::Error> {
    for (chunk, news) in rows.chunks(1000).zip(fresh.chunks(1000)) {
        let mut insert = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO notifications ({COLUMNS}, idempotency_key) "
        ));
        insert.push_values(chunk.iter().zip(news), |mut values, (row, new)| {
            let row = &row.notification;
            values
                .push_bind(row.id.clone())
                .push_bind(row.recipient.role.code())
                .push_bind(row.recipient.id)
                .push_bind(row.seq)
                .push_bind(row.kind.clone())
                .push_bind(row.channel.code())
                .push_bind(row.content.clone())
                .push_bind(row.status.code())
                .push_bind(row.priority)
                .push_bind(row.created_at)
                .push_bind(row.updated_at)
                .push_bind(row.version)
                .push_bind(row.category.clone())
                .push_bind(row.archived_at)
                .push_bind(row.expires_at)
                .push_bind(row.collapse_key.clone())
                .push_bind(row.replaces.clone())
                .push_bind(row.replaced_by.clone())
                .push_bind(actions_json(&row.actions))
                .push_bind(None::<String>)
                .push_bind(None::<i64>)
                .push_bind(new.idempotency_key.clone());
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn find_by_key(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    key: &str,
) -> Result<Option<Notification>, sqlx::Error> {
    let row = sqlx::query(BY_KEY)
        .bind(user.role.code())
        .bind(user.id)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|row| decode(&row)).transpose()
}

// Marks find their rows by id alone: the id's primary key is the only index
// these statements can use, whatever the statistics say, so a mark costs
// the ids it names, never the size of the user's inbox. (A statement that
// also filtered on the recipient could be planned on the recipient's
// index, which scans their whole inbox inside the single writer.) The
// owner and status checks are made on the rows found.

/// The owner, status and shelf of each named notification that exists.
const FIND_FOR_MARK: &str = concat!(
    "SELECT id, recipient_role, recipient_id, status, shelf FROM ",
    by_id!(),
    " WHERE id IN (SELECT value FROM json_each($1))"
);

/// Sets the status of rows already checked (READ ones leave the inbox
/// shelf); each takes its owner's next version (the counter itself moves
/// once per mark, after).
const SET_STATUS: &str = concat!(
    "UPDATE ",
    by_id!(),
    " SET status = $1, updated_at = $2, \
     shelf = CASE WHEN $1 = 4 AND shelf = 1 THEN 2 ELSE shelf END, \
     version = (SELECT u.version + 1 FROM users u \
                WHERE u.role = notifications.recipient_role AND u.id = notifications.recipient_id) \
     WHERE id IN (SELECT value FROM json_each($3))"
);

/// Archives (`$1` the time) or brings back (`$1` null) rows already
/// checked, each taking its owner's next version as in [`SET_STATUS`].
const SET_ARCHIVED: &str = concat!(
    "UPDATE ",
    by_id!(),
    " SET archived_at = $1, updated_at = $2, \
     shelf = CASE WHEN shelf = 0 THEN 0 WHEN $1 IS NOT NULL THEN 3 \
                  WHEN status = 4 THEN 2 ELSE 1 END, \
     version = (SELECT u.version + 1 FROM users u \
                WHERE u.role = notifications.recipient_role AND u.id = notifications.recipient_id) \
     WHERE id IN (SELECT value FROM json_each($3))"
);

/// Mark-all over the unread inbox: `notifications_shelf`, up to a seq.
const MARK_ALL: &str = "UPDATE notifications INDEXED BY notifications_shelf \
     SET status = $1, updated_at = $2, version = $3, \
     shelf = CASE WHEN $1 = 4 THEN 2 ELSE shelf END \
     WHERE recipient_role = $4 AND recipient_id = $5 AND shelf = $7 AND seq <= $6 \
     AND status < $1 RETURNING id";
/// The same of one category: `notifications_category_shelf`.
const MARK_ALL_CATEGORY: &str = "UPDATE notifications INDEXED BY notifications_category_shelf \
     SET status = $1, updated_at = $2, version = $3, \
     shelf = CASE WHEN $1 = 4 THEN 2 ELSE shelf END \
     WHERE recipient_role = $4 AND recipient_id = $5 AND category = $8 AND shelf = $7 \
     AND seq <= $6 AND status < $1 RETURNING id";

/// Records an action taken on a row already checked, which becomes READ
/// (leaving the inbox shelf) at its owner's next version as in
/// [`SET_STATUS`].
const SET_ACTION: &str = concat!(
    "UPDATE ",
    by_id!(),
    " SET action_id = $1, action_at = $2, updated_at = $2, status = MAX(status, 4), \
     shelf = CASE WHEN shelf = 1 THEN 2 ELSE shelf END, \
     version = (SELECT u.version + 1 FROM users u \
                WHERE u.role = notifications.recipient_role AND u.id = notifications.recipient_id) \
     WHERE id = $3"
);

/// Due notifications not yet gone, oldest due first: `notifications_expiry`.
const DUE: &str = "SELECT id, recipient_role, recipient_id FROM notifications \
     INDEXED BY notifications_expiry WHERE expires_at <= $1 AND shelf > 0 \
     ORDER BY expires_at LIMIT $2";

/// Takes rows already checked off every shelf (expired), each at its
/// owner's next version as in [`SET_STATUS`].
const SET_GONE: &str = concat!(
    "UPDATE ",
    by_id!(),
    " SET shelf = 0, updated_at = $1, \
     version = (SELECT u.version + 1 FROM users u \
                WHERE u.role = notifications.recipient_role AND u.id = notifications.recipient_id) \
     WHERE id IN (SELECT value FROM json_each($2))"
);

/// Old notifications that are not unread: `notifications_retention`.
const DELETE_OLD: &str = "DELETE FROM notifications WHERE id IN \
     (SELECT id FROM notifications INDEXED BY notifications_retention \
      WHERE shelf <> 1 AND created_at < $1 ORDER BY created_at LIMIT $2)";

/// Every notification of a user: `notifications_recipient_seq`.
const ERASE_NOTIFICATIONS: &str = "DELETE FROM notifications \
     INDEXED BY notifications_recipient_seq WHERE recipient_role = $1 AND recipient_id = $2";

/// One user's counters after a change of their notifications: the next
/// version, and the unread count the triggers left.
const SETTLE_MARK: &str = "UPDATE users SET version = version + 1 \
     WHERE role = $1 AND id = $2 RETURNING unread, version";

/// Several users' versions after a run of receipts, by `[role, id]` pairs.
const BUMP_VERSIONS: &str = "UPDATE users SET version = version + 1 \
     WHERE (role, id) IN (SELECT value ->> 0, value ->> 1 FROM json_each($1)) \
     RETURNING role, id, unread, version";

/// `$1` topic, `$2` users as `[[role, id], …]`.
const SUBSCRIBE: &str = "INSERT INTO topic_subscribers (topic, role, user_id) \
     SELECT $1, value ->> 0, value ->> 1 FROM json_each($2) WHERE true ON CONFLICT DO NOTHING";
/// `$1` topic, `$2` users as `[[role, id], …]`.
const UNSUBSCRIBE: &str = "DELETE FROM topic_subscribers WHERE topic = $1 \
     AND (role, user_id) IN (SELECT value ->> 0, value ->> 1 FROM json_each($2))";

/// Records a publish; see [`Store::publish`].
async fn publish_in(
    tx: &mut Transaction<'_, Sqlite>,
    publish: &Publish,
    now: i64,
) -> Result<Fanout, sqlx::Error> {
    let id = new_object_id();
    if !topics::insert_fanout!(*tx, &id, publish, now) {
        let row = sqlx::query(topics::FANOUT_BY_KEY)
            .bind(&publish.topic)
            .bind(publish.template.idempotency_key.as_deref())
            .fetch_one(&mut **tx)
            .await?;
        return topics::decode_state(&row);
    }
    let recipients = sqlx::query(topics::FIX_RECIPIENTS)
        .bind(&id)
        .bind(&publish.topic)
        .execute(&mut **tx)
        .await?
        .rows_affected() as i64;
    sqlx::query(topics::COUNT_RECIPIENTS)
        .bind(&id)
        .bind(recipients)
        .execute(&mut **tx)
        .await?;
    Ok(Fanout {
        id,
        topic: publish.topic.clone(),
        recipients,
        created: 0,
        suppressed: 0,
        done: recipients == 0,
    })
}

/// One batch of the oldest open fan-out; see [`Store::fanout_step`].
async fn fanout_step(
    tx: &mut Transaction<'_, Sqlite>,
    limit: u32,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<bool, sqlx::Error> {
    let Some((open, recipients, creates, skipped)) =
        topics::next_batch!(*tx, topics::OPEN_FANOUT, READS.muted_among, limit)
    else {
        return Ok(false);
    };
    let mut created = 0;
    if !creates.is_empty() {
        for batch in create_run(tx, &[creates.as_slice()], now, changes).await? {
            created += batch.iter().filter(|c| c.fresh).count() as i64;
        }
    }
    topics::settle_batch!(*tx, open, recipients, created, skipped, limit);
    Ok(true)
}

/// `$1` ids as a JSON array: those still pending leave the table; answers
/// their ids.
const TAKE_PENDING: &str =
    "DELETE FROM scheduled WHERE id IN (SELECT value FROM json_each($1)) RETURNING id";

/// The actions as stored: a JSON array, or null for none.
pub(crate) fn actions_json(actions: &[crate::model::Action]) -> Option<String> {
    (!actions.is_empty())
        .then(|| serde_json::to_string(actions).expect("actions are plain strings"))
}

/// A list as one JSON array parameter: one statement text whatever its
/// length (one cached plan, no limit on bound parameters).
fn json_array<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("lists of ids and numbers serialize")
}

/// Each of `ids` that exists: its id, owner (role, id), status and shelf.
async fn find_for_mark(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &[&str],
) -> Result<Vec<(String, i64, i64, i64, i64)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(FIND_FOR_MARK)
        .bind(json_array(ids))
        .fetch_all(&mut **tx)
        .await
}

/// Moves the checked rows `ids` to `status`.
async fn set_status(
    tx: &mut Transaction<'_, Sqlite>,
    ids: &[&str],
    status: Status,
    now: i64,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(SET_STATUS)
        .bind(status.code())
        .bind(now)
        .bind(json_array(ids))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What a run of marks did: an outcome per op, in order, and one change
/// per user whose notifications changed.
struct MarkedRun {
    outcomes: Vec<MarkOutcome>,
    changes: Vec<Change>,
}

/// Marks that leave the unread count alone (DELIVERED), for several users
/// at once: one lookup, one UPDATE and one counter update for the whole
/// run, where one [`mark`] each would take three statements per user. Each outcome is what
/// `mark` would have answered for that op, in order; an id listed by two
/// ops of one user counts for the first. Each user whose notifications
/// changed takes one version for all of them.
async fn mark_run(
    tx: &mut Transaction<'_, Sqlite>,
    run: &[(User, &[String])],
    status: Status,
    now: i64,
) -> Result<MarkedRun, sqlx::Error> {
    let mut owner: HashMap<(i64, i64, &str), usize> = HashMap::new();
    for (op, (user, ids)) in run.iter().enumerate() {
        for id in ids.iter() {
            owner
                .entry((user.role.code(), user.id, id.as_str()))
                .or_insert(op);
        }
    }
    let mut outcomes: Vec<MarkOutcome> = run.iter().map(|_| unchanged(now)).collect();
    let wanted: Vec<&str> = owner.keys().map(|(_, _, id)| *id).collect();
    let found = find_for_mark(tx, &wanted).await?;
    let mut claimed: Vec<&str> = Vec::new();
    for (id, role, user_id, current, _) in &found {
        if *current < status.code()
            && let Some(&op) = owner.get(&(*role, *user_id, id.as_str()))
        {
            outcomes[op].updated.push(id.clone());
            claimed.push(id);
        }
    }
    set_status(tx, &claimed, status, now).await?;
    let mut changed: Vec<User> = run
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| !outcome.updated.is_empty())
        .map(|((user, _), _)| *user)
        .collect();
    changed.sort_unstable();
    changed.dedup();
    let counters = bump_versions(tx, &changed).await?;
    let mut by_user: HashMap<User, Vec<String>> = HashMap::new();
    for ((user, _), outcome) in run.iter().zip(&mut outcomes) {
        if outcome.updated.is_empty() {
            continue;
        }
        let (unread, version) = counters.get(user).copied().unwrap_or((0, 0));
        outcome.unread = unread;
        outcome.version = version;
        by_user
            .entry(*user)
            .or_default()
            .extend(outcome.updated.iter().cloned());
    }
    let changes = changed
        .into_iter()
        .map(|user| {
            let (unread, version) = counters.get(&user).copied().unwrap_or((0, 0));
            Change::Updated {
                user,
                ids: by_user.remove(&user).unwrap_or_default(),
                update: Update::status(status),
                updated_at: now,
                unread,
                by_category: None,
                version,
            }
        })
        .collect();
    Ok(MarkedRun { outcomes, changes })
}

/// Each of `users` takes its next version, in one statement; answers each
/// one's unread count and version after it.
async fn bump_versions(
    tx: &mut Transaction<'_, Sqlite>,
    users: &[User],
) -> Result<HashMap<User, (i64, i64)>, sqlx::Error> {
    let mut counters = HashMap::with_capacity(users.len());
    if users.is_empty() {
        return Ok(counters);
    }
    let keys: Vec<(i64, i64)> = users.iter().map(|u| (u.role.code(), u.id)).collect();
    for row in sqlx::query(BUMP_VERSIONS)
        .bind(json_array(&keys))
        .fetch_all(&mut **tx)
        .await?
    {
        counters.insert(decode_user(&row)?, (row.try_get(2)?, row.try_get(3)?));
    }
    Ok(counters)
}

/// One user's mark (READ moves their unread count). The changed rows and
/// the counter take the user's next version together.
async fn mark(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    ids: &[String],
    status: Status,
    now: i64,
) -> Result<MarkOutcome, sqlx::Error> {
    let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let updated: Vec<String> = find_for_mark(tx, &wanted)
        .await?
        .into_iter()
        .filter(|(_, role, user_id, current, _)| {
            (*role, *user_id) == (user.role.code(), user.id) && *current < status.code()
        })
        .map(|(id, ..)| id)
        .collect();
    if updated.is_empty() {
        return Ok(unchanged(now));
    }
    let claimed: Vec<&str> = updated.iter().map(String::as_str).collect();
    set_status(tx, &claimed, status, now).await?;
    settle(tx, user, updated, now).await
}

/// One user's archive (or unarchive) of their own notifications among
/// `ids`: those not already so, and not gone (expired or replaced).
async fn archive(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    ids: &[String],
    archived: bool,
    now: i64,
) -> Result<MarkOutcome, sqlx::Error> {
    let wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    let updated: Vec<String> = find_for_mark(tx, &wanted)
        .await?
        .into_iter()
        .filter(|(_, role, user_id, _, shelf)| {
            (*role, *user_id) == (user.role.code(), user.id)
                && *shelf != GONE_SHELF
                && (*shelf == ARCHIVED_SHELF) != archived
        })
        .map(|(id, ..)| id)
        .collect();
    if updated.is_empty() {
        return Ok(unchanged(now));
    }
    sqlx::query(SET_ARCHIVED)
        .bind(archived.then_some(now))
        .bind(now)
        .bind(json_array(&updated))
        .execute(&mut **tx)
        .await?;
    settle(tx, user, updated, now).await
}

/// Every notification of the user's unread inbox (of a category, up to a
/// seq) moved forward to `status`, all in the user's next version.
async fn mark_all(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    status: Status,
    category: Option<&str>,
    up_to_seq: Option<i64>,
    now: i64,
) -> Result<MarkOutcome, sqlx::Error> {
    let version = read_state::<Sqlite>(&mut **tx, &READS, user).await?.version + 1;
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
    let updated: Vec<String> = query.fetch_all(&mut **tx).await?;
    if updated.is_empty() {
        return Ok(unchanged(now));
    }
    settle(tx, user, updated, now).await
}

/// Takes an action of one of the user's notifications, if
/// [`check_action`] allows it, as one change of the user.
async fn complete_action(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    id: &str,
    action_id: &str,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<Result<Notification, ActionRefused>, sqlx::Error> {
    let found = read_one(tx, id).await?;
    if let Err(refused) = check_action(found.as_ref(), user, action_id, now) {
        return Ok(Err(refused));
    }
    let was_read = found.is_some_and(|n| n.status == Status::Read);
    sqlx::query(SET_ACTION)
        .bind(action_id)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let outcome = settle(tx, user, vec![id.to_owned()], now).await?;
    let update = Update {
        status: (!was_read).then_some(Status::Read),
        action_taken: Some(ActionTaken {
            id: action_id.to_owned(),
            at: now,
        }),
        ..Update::default()
    };
    changes.extend(updated(user, &outcome, update));
    let done = read_one(tx, id).await?;
    Ok(done.ok_or(ActionRefused::NotFound))
}

/// One notification by id, inside the writer's transaction.
async fn read_one(
    tx: &mut Transaction<'_, Sqlite>,
    id: &str,
) -> Result<Option<Notification>, sqlx::Error> {
    let row = sqlx::query(GET).bind(id).fetch_optional(&mut **tx).await?;
    row.map(|row| decode(&row)).transpose()
}

/// Expires up to `limit` due notifications: per user, one change at the
/// user's next version. Three statements for the whole batch, however many
/// users it spans (one row each, when many come due at one moment), as for
/// a run of receipts: the rows, the owners' versions, their counts.
async fn expire_due(
    tx: &mut Transaction<'_, Sqlite>,
    limit: u32,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<u64, sqlx::Error> {
    let due: Vec<(String, i64, i64)> = sqlx::query_as(DUE)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut **tx)
        .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut by_user: HashMap<User, Vec<String>> = HashMap::new();
    for (id, role, user_id) in &due {
        let role = crate::model::Role::from_code(*role)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role}").into()))?;
        by_user
            .entry(User { role, id: *user_id })
            .or_default()
            .push(id.clone());
    }
    let ids: Vec<&str> = due.iter().map(|(id, ..)| id.as_str()).collect();
    sqlx::query(SET_GONE)
        .bind(now)
        .bind(json_array(&ids))
        .execute(&mut **tx)
        .await?;
    let mut users: Vec<User> = by_user.keys().copied().collect();
    users.sort_unstable();
    let counters = bump_versions(tx, &users).await?;
    let mut by_category = users_by_category(tx, &users).await?;
    let update = Update {
        expired: Some(true),
        ..Update::default()
    };
    for user in users {
        let (unread, version) = counters.get(&user).copied().unwrap_or((0, 0));
        changes.push(Change::Updated {
            user,
            ids: by_user.remove(&user).unwrap_or_default(),
            update: update.clone(),
            updated_at: now,
            unread,
            by_category: Some(by_category.remove(&user).unwrap_or_default()),
            version,
        });
    }
    Ok(due.len() as u64)
}

/// Deletes the user's notifications (the triggers take them out of the
/// counts), rooms and presence entries; the counters stay, so seqs go on.
async fn erase(tx: &mut Transaction<'_, Sqlite>, user: User) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(ERASE_NOTIFICATIONS)
        .bind(user.role.code())
        .bind(user.id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    for sql in [
        "DELETE FROM inbox_counts WHERE role = $1 AND user_id = $2",
        "DELETE FROM room_members INDEXED BY room_members_user WHERE role = $1 AND user_id = $2",
        "DELETE FROM presence INDEXED BY presence_user WHERE role = $1 AND user_id = $2",
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
            .execute(&mut **tx)
            .await?;
    }
    Ok(deleted)
}

/// What a change that changed nothing answers.
fn unchanged(now: i64) -> MarkOutcome {
    MarkOutcome {
        updated: Vec::new(),
        unread: 0,
        by_category: None,
        version: 0,
        updated_at: now,
    }
}

/// The user's counters after their rows `updated` changed: the next
/// version, and the counts the triggers left.
async fn settle(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    updated: Vec<String>,
    now: i64,
) -> Result<MarkOutcome, sqlx::Error> {
    let (unread, version): (i64, i64) = sqlx::query_as(SETTLE_MARK)
        .bind(user.role.code())
        .bind(user.id)
        .fetch_one(&mut **tx)
        .await?;
    let by_category = read_by_category::<Sqlite>(&mut **tx, &READS, user).await?;
    Ok(MarkOutcome {
        updated,
        unread,
        by_category: Some(by_category),
        version,
        updated_at: now,
    })
}

/// The change a mark or an archive publishes, if it changed anything.
fn updated(user: User, outcome: &MarkOutcome, update: Update) -> Option<Change> {
    (!outcome.updated.is_empty()).then(|| Change::Updated {
        user,
        ids: outcome.updated.clone(),
        update,
        updated_at: outcome.updated_at,
        unread: outcome.unread,
        by_category: outcome.by_category.clone(),
        version: outcome.version,
    })
}

/// Records the user's offline moment and announces it.
async fn went_offline(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<(), sqlx::Error> {
    sqlx::query(WENT_OFFLINE)
        .bind(user.role.code())
        .bind(user.id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    changes.push(Change::Presence {
        user,
        online: false,
        at: now,
    });
    Ok(())
}

async fn set_presence(
    tx: &mut Transaction<'_, Sqlite>,
    node: &str,
    user: User,
    streams: u32,
    now: i64,
    expires_at: i64,
    changes: &mut Vec<Change>,
) -> Result<(), sqlx::Error> {
    let before = presence_entries::<Sqlite>(&mut **tx, &READS, user).await?;
    if streams > 0 {
        sqlx::query(SET_ENTRY)
            .bind(node)
            .bind(user.role.code())
            .bind(user.id)
            .bind(i64::from(streams))
            .bind(expires_at)
            .execute(&mut **tx)
            .await?;
    } else {
        sqlx::query(DROP_ENTRY)
            .bind(node)
            .bind(user.role.code())
            .bind(user.id)
            .execute(&mut **tx)
            .await?;
    }
    let after = presence_entries::<Sqlite>(&mut **tx, &READS, user).await?;
    if before == 0 && after > 0 {
        changes.push(Change::Presence {
            user,
            online: true,
            at: now,
        });
    } else if before > 0 && after == 0 {
        went_offline(tx, user, now, changes).await?;
    }
    Ok(())
}

async fn expire_presence(
    tx: &mut Transaction<'_, Sqlite>,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<(), sqlx::Error> {
    let expired = sqlx::query(EXPIRED_USERS)
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
    for row in &expired {
        let user = decode_user(row)?;
        sqlx::query(DROP_EXPIRED)
            .bind(user.role.code())
            .bind(user.id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        if presence_entries::<Sqlite>(&mut **tx, &READS, user).await? == 0 {
            went_offline(tx, user, now, changes).await?;
        }
    }
    Ok(())
}

fn unexpected(outcome: Outcome) -> StoreError {
    let what = match outcome {
        Outcome::Created(_) => "created",
        Outcome::Action(_) => "action",
        Outcome::Marked(_) => "marked",
        Outcome::Refreshed(_) => "refreshed",
        Outcome::Preferences(_) => "preferences",
        Outcome::Cancelled(_) => "cancelled",
        Outcome::Fanout(_) => "fanout",
        Outcome::Counted(_) => "counted",
        Outcome::Done => "done",
    };
    StoreError::Corrupt(format!("writer answered `{what}` to another request"))
}

impl SqliteStore {
    fn muters_mut(&self) -> std::sync::RwLockWriteGuard<'_, std::collections::HashSet<User>> {
        self.muters.write().unwrap_or_else(|e| e.into_inner())
    }

    async fn subscription(
        &self,
        topic: &str,
        users: &[User],
        subscribe: bool,
    ) -> Result<u64, StoreError> {
        let op = WriteOp::Subscribe {
            topic: topic.to_owned(),
            users: users.to_vec(),
            subscribe,
        };
        match self.write(op).await? {
            Outcome::Counted(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create(&self, batch: Vec<NewNotification>) -> Result<Vec<Created>, StoreError> {
        match self.write(WriteOp::Create(batch)).await? {
            Outcome::Created(created) => Ok(created),
            other => Err(unexpected(other)),
        }
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
        match self.write(WriteOp::Mark { user, ids, status }).await? {
            Outcome::Marked(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn archive(
        &self,
        user: User,
        ids: Vec<String>,
        archived: bool,
    ) -> Result<MarkOutcome, StoreError> {
        match self
            .write(WriteOp::Archive {
                user,
                ids,
                archived,
            })
            .await?
        {
            Outcome::Marked(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn mark_all(
        &self,
        user: User,
        status: Status,
        category: Option<String>,
        up_to_seq: Option<i64>,
    ) -> Result<MarkOutcome, StoreError> {
        let op = WriteOp::MarkAll {
            user,
            status,
            category,
            up_to_seq,
        };
        match self.write(op).await? {
            Outcome::Marked(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn expire_due(&self, limit: u32) -> Result<usize, StoreError> {
        match self.write(WriteOp::ExpireDue { limit }).await? {
            Outcome::Counted(n) => Ok(n as usize),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_old(&self, before: i64, limit: u32) -> Result<usize, StoreError> {
        match self.write(WriteOp::DeleteOld { before, limit }).await? {
            Outcome::Counted(n) => Ok(n as usize),
            other => Err(unexpected(other)),
        }
    }

    async fn erase_user(&self, user: User) -> Result<u64, StoreError> {
        match self.write(WriteOp::Erase { user }).await? {
            Outcome::Counted(n) => {
                self.muters_mut().remove(&user);
                Ok(n)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn complete_action(
        &self,
        user: User,
        id: String,
        action_id: String,
    ) -> Result<Result<Notification, ActionRefused>, StoreError> {
        match self
            .write(WriteOp::CompleteAction {
                user,
                id,
                action_id,
            })
            .await?
        {
            Outcome::Action(done) => Ok(*done),
            other => Err(unexpected(other)),
        }
    }

    async fn join_room(&self, room: &str, user: User) -> Result<(), StoreError> {
        self.write(WriteOp::Join {
            room: room.to_owned(),
            user,
        })
        .await
        .map(drop)
    }

    async fn leave_room(&self, room: &str, user: User) -> Result<(), StoreError> {
        self.write(WriteOp::Leave {
            room: room.to_owned(),
            user,
        })
        .await
        .map(drop)
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
        self.write(WriteOp::Presence {
            node: node.to_owned(),
            streams,
            ttl_ms: ttl.as_millis() as i64,
        })
        .await
        .map(drop)
    }

    async fn refresh_presence(&self, node: &str, ttl: Duration) -> Result<Vec<User>, StoreError> {
        match self
            .write(WriteOp::RefreshPresence {
                node: node.to_owned(),
                ttl_ms: ttl.as_millis() as i64,
            })
            .await?
        {
            Outcome::Refreshed(users) => Ok(users),
            other => Err(unexpected(other)),
        }
    }

    async fn expire_presence(&self) -> Result<(), StoreError> {
        self.write(WriteOp::ExpirePresence).await.map(drop)
    }

    async fn subscribe(&self, topic: &str, users: &[User]) -> Result<u64, StoreError> {
        self.subscription(topic, users, true).await
    }

    async fn unsubscribe(&self, topic: &str, users: &[User]) -> Result<u64, StoreError> {
        self.subscription(topic, users, false).await
    }

    async fn subscribers(&self, topic: &str) -> Result<i64, StoreError> {
        self.reads.subscribers(topic).await
    }

    async fn publish(&self, publish: Publish) -> Result<Fanout, StoreError> {
        match self.write(WriteOp::Publish(Box::new(publish))).await? {
            Outcome::Fanout(fanout) => Ok(*fanout),
            other => Err(unexpected(other)),
        }
    }

    async fn fanout(&self, id: &str) -> Result<Option<Fanout>, StoreError> {
        self.reads.fanout(id).await
    }

    async fn fanout_step(&self, limit: u32) -> Result<bool, StoreError> {
        match self.write(WriteOp::FanoutStep { limit }).await? {
            Outcome::Counted(worked) => Ok(worked > 0),
            other => Err(unexpected(other)),
        }
    }

    async fn schedule(
        &self,
        batch: Vec<NewNotification>,
        send_at: i64,
    ) -> Result<Vec<Created>, StoreError> {
        match self.write(WriteOp::Schedule { batch, send_at }).await? {
            Outcome::Created(created) => Ok(created),
            other => Err(unexpected(other)),
        }
    }

    async fn due(&self, now: i64, limit: u32) -> Result<Vec<NewNotification>, StoreError> {
        self.reads.due(now, limit).await
    }

    async fn send_due(
        &self,
        send: Vec<NewNotification>,
        drop: Vec<String>,
    ) -> Result<Vec<Created>, StoreError> {
        match self.write(WriteOp::SendDue { send, drop }).await? {
            Outcome::Created(created) => Ok(created),
            other => Err(unexpected(other)),
        }
    }

    async fn cancel(&self, id: &str) -> Result<Result<Notification, CancelRefused>, StoreError> {
        match self.write(WriteOp::Cancel { id: id.to_owned() }).await? {
            Outcome::Cancelled(cancelled) => Ok(*cancelled),
            other => Err(unexpected(other)),
        }
    }

    async fn preferences(&self, user: User) -> Result<Vec<Rule>, StoreError> {
        self.reads.preferences(user).await
    }

    async fn set_preferences(
        &self,
        user: User,
        rules: Vec<Rule>,
    ) -> Result<Result<Vec<Rule>, PreferencesRefused>, StoreError> {
        match self.write(WriteOp::Preferences { user, rules }).await? {
            Outcome::Preferences(set) => {
                if let Ok(off) = &set {
                    let mut muters = self.muters_mut();
                    if off.is_empty() {
                        muters.remove(&user);
                    } else {
                        muters.insert(user);
                    }
                }
                Ok(set)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn muted(
        &self,
        users: &[User],
        category: &str,
        channel: Channel,
    ) -> Result<Vec<User>, StoreError> {
        let candidates: Vec<User> = {
            let muters = self.muters.read().unwrap_or_else(|e| e.into_inner());
            users
                .iter()
                .filter(|u| muters.contains(u))
                .copied()
                .collect()
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        self.reads.muted(&candidates, category, channel).await
    }
}

#[cfg(test)]
mod plans {
    //! Every statement that takes user input is planned on the index meant
    //! for it, on a database whose statistics favour the wrong one: one
    //! user with a large unread inbox, analysed.

    use super::*;
    use crate::model::{Channel, Role};
    use crate::object_id::new_object_id;

    struct Nowhere;
    impl ChangeSink for Nowhere {
        fn publish(&self, _: Change) {}
    }

    const ID: &str = "SEARCH notifications USING INDEX sqlite_autoindex_notifications_1 (id=?)";
    const USERS: &str = "SEARCH users USING PRIMARY KEY (role=? AND id=?)";

    /// Each statement and the lines its plan must hold; any other way into
    /// a table (a SCAN, or an index not listed) fails the test.
    const EXPECTED: &[(&str, &str, &[&str])] = &[
        ("GET", GET, &[ID]),
        (
            "GET_PENDING",
            scheduled::GET_PENDING,
            &["SEARCH scheduled USING INDEX sqlite_autoindex_scheduled_1 (id=?)"],
        ),
        (
            "PENDING_BY_KEY",
            scheduled::PENDING_BY_KEY,
            &[
                "SEARCH scheduled USING INDEX scheduled_keys (recipient_role=? AND recipient_id=? AND idempotency_key=?)",
            ],
        ),
        (
            "DUE",
            scheduled::DUE,
            &["SEARCH scheduled USING INDEX scheduled_due (send_at<?)"],
        ),
        ("FIND_FOR_MARK", FIND_FOR_MARK, &[ID]),
        (
            "SET_STATUS",
            SET_STATUS,
            &[
                "SEARCH notifications USING COVERING INDEX sqlite_autoindex_notifications_1 (id=?)",
                "SEARCH u USING PRIMARY KEY (role=? AND id=?)",
            ],
        ),
        ("SETTLE_MARK", SETTLE_MARK, &[USERS]),
        ("BUMP_VERSIONS", BUMP_VERSIONS, &[USERS]),
        (
            "SET_ARCHIVED",
            SET_ARCHIVED,
            &[
                "SEARCH notifications USING COVERING INDEX sqlite_autoindex_notifications_1 (id=?)",
                "SEARCH u USING PRIMARY KEY (role=? AND id=?)",
            ],
        ),
        (
            "MARK_ALL",
            MARK_ALL,
            &[
                "SEARCH notifications USING INDEX notifications_shelf (recipient_role=? AND recipient_id=? AND shelf=? AND seq<?)",
            ],
        ),
        (
            "MARK_ALL_CATEGORY",
            MARK_ALL_CATEGORY,
            &[
                "SEARCH notifications USING INDEX notifications_category_shelf (recipient_role=? AND recipient_id=? AND category=? AND shelf=? AND seq<?)",
            ],
        ),
        (
            "SHELF_PAGE",
            PAGES.shelf.offset,
            &[
                "SEARCH notifications USING INDEX notifications_shelf (recipient_role=? AND recipient_id=? AND shelf=?)",
            ],
        ),
        (
            "SHELF_BEFORE",
            PAGES.shelf.before,
            &[
                "SEARCH notifications USING INDEX notifications_shelf (recipient_role=? AND recipient_id=? AND shelf=? AND seq<?)",
            ],
        ),
        (
            "CATEGORY_SHELF_PAGE",
            PAGES.category_shelf.offset,
            &[
                "SEARCH notifications USING INDEX notifications_category_shelf (recipient_role=? AND recipient_id=? AND category=? AND shelf=?)",
            ],
        ),
        (
            "CATEGORY_SHELF_BEFORE",
            PAGES.category_shelf.before,
            &[
                "SEARCH notifications USING INDEX notifications_category_shelf (recipient_role=? AND recipient_id=? AND category=? AND shelf=? AND seq<?)",
            ],
        ),
        (
            "LISTED_PAGE",
            PAGES.listed.offset,
            &[
                "SEARCH notifications USING INDEX notifications_recipient_seq (recipient_role=? AND recipient_id=?)",
            ],
        ),
        (
            "LISTED_BEFORE",
            PAGES.listed.before,
            &[
                "SEARCH notifications USING INDEX notifications_recipient_seq (recipient_role=? AND recipient_id=? AND seq<?)",
            ],
        ),
        (
            "CATEGORY_LISTED_PAGE",
            PAGES.category_listed.offset,
            &[
                "SEARCH notifications USING INDEX notifications_category (recipient_role=? AND recipient_id=? AND category=?)",
            ],
        ),
        (
            "CATEGORY_LISTED_BEFORE",
            PAGES.category_listed.before,
            &[
                "SEARCH notifications USING INDEX notifications_category (recipient_role=? AND recipient_id=? AND category=? AND seq<?)",
            ],
        ),
        (
            "SET_ACTION",
            SET_ACTION,
            &[
                "SEARCH notifications USING INDEX sqlite_autoindex_notifications_1 (id=?)",
                "SEARCH u USING PRIMARY KEY (role=? AND id=?)",
            ],
        ),
        (
            "COLLAPSED",
            COLLAPSED,
            &[
                "SEARCH notifications USING INDEX notifications_collapse (recipient_role=? AND recipient_id=? AND collapse_key=?)",
            ],
        ),
        (
            "REPLACE",
            REPLACE,
            &["SEARCH notifications USING COVERING INDEX sqlite_autoindex_notifications_1 (id=?)"],
        ),
        (
            "DUE",
            DUE,
            &["SEARCH notifications USING INDEX notifications_expiry (expires_at<?)"],
        ),
        (
            "SET_GONE",
            SET_GONE,
            &[
                "SEARCH notifications USING COVERING INDEX sqlite_autoindex_notifications_1 (id=?)",
                "SEARCH u USING PRIMARY KEY (role=? AND id=?)",
            ],
        ),
        (
            "DELETE_OLD",
            DELETE_OLD,
            &[
                "SEARCH notifications USING COVERING INDEX sqlite_autoindex_notifications_1 (id=?)",
                "SEARCH notifications USING INDEX notifications_retention (created_at<?)",
            ],
        ),
        (
            "ERASE_NOTIFICATIONS",
            ERASE_NOTIFICATIONS,
            &[
                "SEARCH notifications USING COVERING INDEX notifications_recipient_seq (recipient_role=? AND recipient_id=?)",
            ],
        ),
        (
            "VIEW_TOTALS",
            VIEW_TOTALS,
            &["SEARCH inbox_counts USING PRIMARY KEY (role=? AND user_id=?)"],
        ),
        (
            "BY_CATEGORY",
            BY_CATEGORY,
            &["SEARCH inbox_counts USING PRIMARY KEY (role=? AND user_id=?)"],
        ),
        (
            "USERS_BY_CATEGORY",
            USERS_BY_CATEGORY,
            &["SEARCH inbox_counts USING PRIMARY KEY (role=? AND user_id=?)"],
        ),
        (
            "AFTER_SEQ",
            AFTER_SEQ,
            &[
                "SEARCH notifications USING INDEX notifications_recipient_seq (recipient_role=? AND recipient_id=? AND seq>?)",
            ],
        ),
        (
            "ID_AT",
            ID_AT,
            &[
                "SEARCH notifications USING INDEX notifications_recipient_seq (recipient_role=? AND recipient_id=? AND seq=?)",
            ],
        ),
        (
            "CHANGED_AFTER",
            CHANGED_AFTER,
            &[
                "SEARCH notifications USING INDEX notifications_changes (recipient_role=? AND recipient_id=? AND (version,seq)>(?,?))",
            ],
        ),
        (
            "BY_KEY",
            BY_KEY,
            &[
                "SEARCH notifications USING INDEX notifications_idempotency (recipient_role=? AND recipient_id=? AND idempotency_key=?)",
            ],
        ),
        ("USER_STATE", USER_STATE, &[USERS]),
        ("LAST_SEEN", LAST_SEEN, &[USERS]),
        ("WENT_OFFLINE", WENT_OFFLINE, &[]),
        (
            "PRESENCE_ENTRIES",
            PRESENCE_ENTRIES,
            &["SEARCH presence USING COVERING INDEX presence_user (role=? AND user_id=?)"],
        ),
        (
            "ROOM_MEMBERS",
            ROOM_MEMBERS,
            &[
                "SEARCH m USING PRIMARY KEY (room=?)",
                "SEARCH u USING PRIMARY KEY (role=? AND id=?) LEFT-JOIN",
                "SEARCH p USING COVERING INDEX presence_user (role=? AND user_id=?)",
            ],
        ),
        (
            "ROOM_PEERS",
            ROOM_PEERS,
            &[
                "SEARCH me USING COVERING INDEX room_members_user (role=? AND user_id=?)",
                "SEARCH peer USING PRIMARY KEY (room=?)",
            ],
        ),
        (
            "ONLINE_PEERS",
            ONLINE_PEERS,
            &[
                "SEARCH me USING COVERING INDEX room_members_user (role=? AND user_id=?)",
                "SEARCH peer USING PRIMARY KEY (room=?)",
                "SEARCH p EXISTS USING COVERING INDEX presence_user (role=? AND user_id=?)",
            ],
        ),
        ("JOIN_ROOM", JOIN_ROOM, &[]),
        (
            "LEAVE_ROOM",
            LEAVE_ROOM,
            &["SEARCH room_members USING PRIMARY KEY (room=? AND role=? AND user_id=?)"],
        ),
        ("SET_ENTRY", SET_ENTRY, &[]),
        (
            "DROP_ENTRY",
            DROP_ENTRY,
            &["SEARCH presence USING PRIMARY KEY (node=? AND role=? AND user_id=?)"],
        ),
        (
            "REFRESH_ENTRIES",
            REFRESH_ENTRIES,
            &["SEARCH presence USING PRIMARY KEY (node=?)"],
        ),
        (
            "EXPIRED_USERS",
            EXPIRED_USERS,
            &["SEARCH presence USING COVERING INDEX presence_expiry (expires_at<?)"],
        ),
        (
            "DROP_EXPIRED",
            DROP_EXPIRED,
            &["SEARCH presence USING INDEX presence_user (role=? AND user_id=?)"],
        ),
    ];

    /// How many `$n` parameters a statement has.
    fn parameters(sql: &str) -> usize {
        (1..=20)
            .take_while(|n| sql.contains(&format!("${n}")))
            .count()
    }

    #[tokio::test]
    async fn every_statement_taking_user_input_uses_the_index_meant_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plans.db").display());
        let store = SqliteStore::open(&url, SqliteOptions::default(), Arc::new(Nowhere))
            .await
            .unwrap();
        let big = User {
            role: Role::Vendor,
            id: 1,
        };
        for _ in 0..20 {
            let batch = (0..1000)
                .map(|n| NewNotification {
                    id: None,
                    recipient: big,
                    kind: "order:placed".into(),
                    channel: Channel::Push,
                    content: "{}".into(),
                    priority: 1,
                    idempotency_key: Some(new_object_id() + &n.to_string()),
                    category: "order".into(),
                    expires_at: None,
                    collapse_key: None,
                    actions: Vec::new(),
                })
                .collect();
            store.create(batch).await.unwrap();
        }
        store.join_room("order:1", big).await.unwrap();
        store
            .set_presence("node", vec![(big, 1)], Duration::from_secs(60))
            .await
            .unwrap();
        let mut connection = SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("ANALYZE")
            .execute(&mut connection)
            .await
            .unwrap();

        let mut wrong = Vec::new();
        for (name, sql, expected) in EXPECTED {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(explain));
            for _ in 0..parameters(sql) {
                query = query.bind(None::<i64>);
            }
            let plan: Vec<String> = query
                .fetch_all(&mut connection)
                .await
                .unwrap_or_else(|error| panic!("{name}: {error}"))
                .iter()
                .map(|row| row.get::<String, _>(3))
                .collect();
            let missing: Vec<&&str> = expected
                .iter()
                .filter(|line| !plan.iter().any(|step| step == **line))
                .collect();
            let unexpected: Vec<&String> = plan
                .iter()
                .filter(|step| step.starts_with("SCAN ") || step.starts_with("SEARCH "))
                .filter(|step| !step.contains("json_each"))
                .filter(|step| !expected.contains(&step.as_str()))
                .collect();
            if !missing.is_empty() || !unexpected.is_empty() {
                wrong.push(format!("{name}: planned as {plan:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
