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
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::model::{
    Change, ChangePosition, ChangedPage, Channel, Created, MarkOutcome, NewNotification,
    Notification, OfflinePage, Role, RoomMember, Status, User, UserState, now_millis,
};
use crate::object_id::new_object_id;
use crate::{ChangeSink, Store, StoreError};

const COLUMNS: &str = "id, recipient_role, recipient_id, seq, type, channel, content, status, \
                       priority, created_at, updated_at, version";

/// SQLite's `synchronous` setting for the write connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged create survives a power cut.
    Full,
    /// fsync only at checkpoints: survives a process crash, not a power cut.
    Normal,
}

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

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            readers: 4,
            max_batch: 512,
        }
    }
}

/// The SQLite implementation of [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    readers: SqlitePool,
    writer: mpsc::Sender<WriteJob>,
    epoch: Arc<str>,
}

enum WriteOp {
    Create(Vec<NewNotification>),
    Mark {
        user: User,
        ids: Vec<String>,
        status: Status,
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
}

enum Outcome {
    Created(Vec<Created>),
    Marked(MarkOutcome),
    Refreshed(Vec<User>),
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
        tokio::spawn(write_loop(writer, rx, sink, options.max_batch.max(1)));
        Ok(SqliteStore {
            readers,
            writer: tx,
            epoch: epoch.into(),
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

/// Takes every waiting job, applies them in one transaction, commits once,
/// then answers each job and publishes the changes in commit order. If the
/// group fails, each job is retried alone so one bad job cannot sink others.
async fn write_loop(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteJob>,
    sink: Arc<dyn ChangeSink>,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let started = Instant::now();
        let ops: Vec<&WriteOp> = jobs.iter().map(|job| &job.op).collect();
        let notifications: usize = ops
            .iter()
            .map(|op| match op {
                WriteOp::Create(batch) => batch.len(),
                _ => 0,
            })
            .sum();
        match apply(&mut conn, &ops).await {
            Ok((outcomes, changes)) => {
                metrics::histogram!("notify_commit_seconds").record(started.elapsed());
                metrics::histogram!("notify_commit_batch_requests").record(jobs.len() as f64);
                metrics::histogram!("notify_commit_batch_notifications")
                    .record(notifications as f64);
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
                    let result = apply(&mut conn, &[&job.op]).await;
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
                for job in jobs.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(StoreError::Unavailable(error.to_string())));
                }
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
                    if !outcome.updated.is_empty() {
                        changes.push(Change::Updated {
                            user: *user,
                            ids: outcome.updated.clone(),
                            status: *status,
                            updated_at: now,
                            unread: outcome.unread,
                            version: outcome.version,
                        });
                    }
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
            WriteOp::Join { room, user } => {
                sqlx::query(
                    "INSERT INTO room_members (room, role, user_id, joined_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(room)
                .bind(user.role.code())
                .bind(user.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                outcomes.push(Outcome::Done);
            }
            WriteOp::Leave { room, user } => {
                sqlx::query(
                    "DELETE FROM room_members WHERE room = $1 AND role = $2 AND user_id = $3",
                )
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
                let rows = sqlx::query(
                    "UPDATE presence SET expires_at = $1 WHERE node = $2 RETURNING role, user_id",
                )
                .bind(now + ttl_ms)
                .bind(node)
                .fetch_all(&mut *tx)
                .await?;
                let users = rows
                    .iter()
                    .map(decode_user)
                    .collect::<Result<_, _>>()
                    .map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
                outcomes.push(Outcome::Refreshed(users));
            }
            WriteOp::ExpirePresence => {
                expire_presence(&mut tx, now, &mut changes).await?;
                outcomes.push(Outcome::Done);
            }
        }
        index += 1;
    }
    tx.commit().await?;
    Ok((outcomes, changes))
}

/// The next seq, unread count and version of one recipient in a create run.
struct Counters {
    seq: i64,
    unread: i64,
    version: i64,
}

/// Where a create's result comes from once the run is resolved.
enum Slot {
    Existing(Notification),
    Fresh(usize),
    SameAs(usize),
}

async fn create_run(
    tx: &mut Transaction<'_, Sqlite>,
    run: &[&[NewNotification]],
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<Vec<Vec<Created>>, sqlx::Error> {
    // Idempotency first: a key seen earlier (in the database or this run)
    // resolves to that notification instead of a new row.
    let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(run.len());
    let mut fresh: Vec<&NewNotification> = Vec::new();
    let mut keys: HashMap<(User, &str), usize> = HashMap::new();
    for batch in run {
        let mut batch_slots = Vec::with_capacity(batch.len());
        for new in batch.iter() {
            let slot = match new.idempotency_key.as_deref() {
                Some(key) => {
                    if let Some(&index) = keys.get(&(new.recipient, key)) {
                        Slot::SameAs(index)
                    } else if let Some(existing) = find_by_key(tx, new.recipient, key).await? {
                        Slot::Existing(existing)
                    } else {
                        keys.insert((new.recipient, key), fresh.len());
                        fresh.push(new);
                        Slot::Fresh(fresh.len() - 1)
                    }
                }
                None => {
                    fresh.push(new);
                    Slot::Fresh(fresh.len() - 1)
                }
            };
            batch_slots.push(slot);
        }
        slots.push(batch_slots);
    }

    // One counter update per recipient reserves a contiguous block of seqs.
    let mut per_user: Vec<(User, i64)> = Vec::new();
    let mut position: HashMap<User, usize> = HashMap::new();
    for new in &fresh {
        let index = *position.entry(new.recipient).or_insert_with(|| {
            per_user.push((new.recipient, 0));
            per_user.len() - 1
        });
        per_user[index].1 += 1;
    }
    // Next seq, unread count and version to hand out, per recipient: one
    // statement for all recipients (per 1,000), not one each. Each
    // notification is one change of its recipient, so it takes a version
    // as it takes a seq.
    let mut next: HashMap<User, Counters> = HashMap::with_capacity(per_user.len());
    for chunk in per_user.chunks(1000) {
        let mut upsert =
            QueryBuilder::<Sqlite>::new("INSERT INTO users (role, id, last_seq, unread, version) ");
        upsert.push_values(chunk, |mut values, (user, count)| {
            values
                .push_bind(user.role.code())
                .push_bind(user.id)
                .push_bind(*count)
                .push_bind(*count)
                .push_bind(*count);
        });
        upsert.push(
            " ON CONFLICT (role, id) DO UPDATE SET last_seq = last_seq + excluded.last_seq, \
             unread = unread + excluded.unread, version = version + excluded.version \
             RETURNING role, id, last_seq, unread, version",
        );
        // RETURNING's order is not promised: rows are matched by key.
        let by_key: HashMap<(i64, i64), (User, i64)> = chunk
            .iter()
            .map(|&(user, count)| ((user.role.code(), user.id), (user, count)))
            .collect();
        for row in upsert.build().fetch_all(&mut **tx).await? {
            let key: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            let last_seq: i64 = row.try_get(2)?;
            let unread: i64 = row.try_get(3)?;
            let version: i64 = row.try_get(4)?;
            if let Some(&(user, count)) = by_key.get(&key) {
                next.insert(
                    user,
                    Counters {
                        seq: last_seq - count + 1,
                        unread: unread - count + 1,
                        version: version - count + 1,
                    },
                );
            }
        }
    }

    let mut rows = Vec::with_capacity(fresh.len());
    for new in &fresh {
        let next = next
            .get_mut(&new.recipient)
            .expect("every fresh recipient has a reserved block");
        rows.push(Notification {
            id: new_object_id(),
            recipient: new.recipient,
            seq: next.seq,
            kind: new.kind.clone(),
            channel: new.channel,
            content: new.content.clone(),
            status: Status::Sent,
            priority: new.priority,
            created_at: now,
            updated_at: now,
            version: next.version,
        });
        changes.push(Change::Created {
            notification: rows.last().cloned().expect("just pushed"),
            unread: next.unread,
            version: next.version,
        });
        next.seq += 1;
        next.unread += 1;
        next.version += 1;
    }

    // 13 parameters a row stays well under SQLite's 32,766.
    for (chunk, news) in rows.chunks(1000).zip(fresh.chunks(1000)) {
        let mut insert = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO notifications ({COLUMNS}, idempotency_key) "
        ));
        insert.push_values(chunk.iter().zip(news), |mut values, (row, new)| {
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
                .push_bind(new.idempotency_key.clone());
        });
        insert.build().execute(&mut **tx).await?;
    }

    Ok(slots
        .into_iter()
        .map(|batch| {
            batch
                .into_iter()
                .map(|slot| match slot {
                    Slot::Existing(notification) => Created {
                        notification,
                        fresh: false,
                    },
                    Slot::Fresh(index) => Created {
                        notification: rows[index].clone(),
                        fresh: true,
                    },
                    Slot::SameAs(index) => Created {
                        notification: rows[index].clone(),
                        fresh: false,
                    },
                })
                .collect()
        })
        .collect())
}

async fn find_by_key(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    key: &str,
) -> Result<Option<Notification>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications \
         WHERE recipient_role = $1 AND recipient_id = $2 AND idempotency_key = $3"
    )))
    .bind(user.role.code())
    .bind(user.id)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|row| decode(&row)).transpose()
}

/// What a run of marks did: an outcome per op, in order, and one change
/// per user whose notifications changed.
struct MarkedRun {
    outcomes: Vec<MarkOutcome>,
    changes: Vec<Change>,
}

/// Marks that leave the unread count alone (DELIVERED), for several users
/// at once: one UPDATE per 2,000 ids and one counter update, where one
/// [`mark`] each would take two statements per user. Each outcome is what
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
    let mut outcomes: Vec<MarkOutcome> = run
        .iter()
        .map(|_| MarkOutcome {
            updated: Vec::new(),
            unread: 0,
            version: 0,
            updated_at: now,
        })
        .collect();
    let wanted: Vec<(i64, i64, &str)> = owner.keys().copied().collect();
    // 4 parameters an id stays well under SQLite's 32,766.
    for chunk in wanted.chunks(2000) {
        // Every row of one user takes the user's next version; the counter
        // itself moves once, below, after every chunk.
        let mut update = QueryBuilder::<Sqlite>::new("UPDATE notifications SET status = ");
        update
            .push_bind(status.code())
            .push(", updated_at = ")
            .push_bind(now)
            .push(
                ", version = (SELECT u.version + 1 FROM users u \
                 WHERE u.role = notifications.recipient_role \
                 AND u.id = notifications.recipient_id)",
            )
            .push(" WHERE status < ")
            .push_bind(status.code())
            .push(" AND id IN (");
        let mut ids = update.separated(", ");
        for (_, _, id) in chunk {
            ids.push_bind(*id);
        }
        // The id finds the row; the recipient check keeps a user from
        // marking another's notification.
        update.push(") AND (recipient_role, recipient_id, id) IN (VALUES ");
        let mut rows = update.separated(", ");
        for (role, user_id, id) in chunk {
            rows.push("(")
                .push_bind_unseparated(*role)
                .push_unseparated(", ")
                .push_bind_unseparated(*user_id)
                .push_unseparated(", ")
                .push_bind_unseparated(*id)
                .push_unseparated(")");
        }
        update.push(") RETURNING recipient_role, recipient_id, id");
        for row in update.build().fetch_all(&mut **tx).await? {
            let role: i64 = row.try_get(0)?;
            let user_id: i64 = row.try_get(1)?;
            let id: String = row.try_get(2)?;
            if let Some(&op) = owner.get(&(role, user_id, id.as_str())) {
                outcomes[op].updated.push(id);
            }
        }
    }
    let mut changed: Vec<User> = run
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| !outcome.updated.is_empty())
        .map(|((user, _), _)| *user)
        .collect();
    changed.sort_unstable();
    changed.dedup();
    let mut counters: HashMap<User, (i64, i64)> = HashMap::with_capacity(changed.len());
    for chunk in changed.chunks(10_000) {
        let mut bump = QueryBuilder::<Sqlite>::new(
            "UPDATE users SET version = version + 1 WHERE (role, id) IN (VALUES ",
        );
        let mut rows = bump.separated(", ");
        for user in chunk {
            rows.push("(")
                .push_bind_unseparated(user.role.code())
                .push_unseparated(", ")
                .push_bind_unseparated(user.id)
                .push_unseparated(")");
        }
        bump.push(") RETURNING role, id, unread, version");
        for row in bump.build().fetch_all(&mut **tx).await? {
            let user = decode_user(&row).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
            counters.insert(user, (row.try_get(2)?, row.try_get(3)?));
        }
    }
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
                status,
                updated_at: now,
                unread,
                version,
            }
        })
        .collect();
    Ok(MarkedRun { outcomes, changes })
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
    let mut update = QueryBuilder::<Sqlite>::new("UPDATE notifications SET status = ");
    update
        .push_bind(status.code())
        .push(", updated_at = ")
        .push_bind(now)
        .push(", version = (SELECT version + 1 FROM users WHERE role = ")
        .push_bind(user.role.code())
        .push(" AND id = ")
        .push_bind(user.id)
        .push(") WHERE recipient_role = ")
        .push_bind(user.role.code())
        .push(" AND recipient_id = ")
        .push_bind(user.id)
        .push(" AND status < ")
        .push_bind(status.code())
        .push(" AND id IN (");
    let mut list = update.separated(", ");
    for id in ids {
        list.push_bind(id.clone());
    }
    update.push(") RETURNING id");
    let updated: Vec<String> = update
        .build()
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    if updated.is_empty() {
        return Ok(MarkOutcome {
            updated,
            unread: 0,
            version: 0,
            updated_at: now,
        });
    }
    let left = if status == Status::Read {
        updated.len() as i64
    } else {
        0
    };
    let (unread, version): (i64, i64) = sqlx::query_as(
        "UPDATE users SET unread = unread - $1, version = version + 1 \
         WHERE role = $2 AND id = $3 RETURNING unread, version",
    )
    .bind(left)
    .bind(user.role.code())
    .bind(user.id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(MarkOutcome {
        updated,
        unread,
        version,
        updated_at: now,
    })
}

async fn presence_entries(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM presence WHERE role = $1 AND user_id = $2")
        .bind(user.role.code())
        .bind(user.id)
        .fetch_one(&mut **tx)
        .await
}

/// Records the user's offline moment and announces it.
async fn went_offline(
    tx: &mut Transaction<'_, Sqlite>,
    user: User,
    now: i64,
    changes: &mut Vec<Change>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (role, id, last_seen_at) VALUES ($1, $2, $3) \
         ON CONFLICT (role, id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
    )
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
    let before = presence_entries(tx, user).await?;
    if streams > 0 {
        sqlx::query(
            "INSERT INTO presence (node, role, user_id, streams, expires_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (node, role, user_id) DO UPDATE SET streams = excluded.streams, \
             expires_at = excluded.expires_at",
        )
        .bind(node)
        .bind(user.role.code())
        .bind(user.id)
        .bind(i64::from(streams))
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
    } else {
        sqlx::query("DELETE FROM presence WHERE node = $1 AND role = $2 AND user_id = $3")
            .bind(node)
            .bind(user.role.code())
            .bind(user.id)
            .execute(&mut **tx)
            .await?;
    }
    let after = presence_entries(tx, user).await?;
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
    let expired = sqlx::query("SELECT DISTINCT role, user_id FROM presence WHERE expires_at < $1")
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
    for row in &expired {
        let user = decode_user(row).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
        sqlx::query("DELETE FROM presence WHERE role = $1 AND user_id = $2 AND expires_at < $3")
            .bind(user.role.code())
            .bind(user.id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        if presence_entries(tx, user).await? == 0 {
            went_offline(tx, user, now, changes).await?;
        }
    }
    Ok(())
}

fn decode(row: &SqliteRow) -> Result<Notification, sqlx::Error> {
    let corrupt =
        |what: &str| sqlx::Error::Decode(format!("unknown {what} in a stored row").into());
    let role: i64 = row.try_get(1)?;
    let channel: i64 = row.try_get(5)?;
    let status: i64 = row.try_get(7)?;
    Ok(Notification {
        id: row.try_get(0)?,
        recipient: User {
            role: Role::from_code(role).ok_or_else(|| corrupt("role"))?,
            id: row.try_get(2)?,
        },
        seq: row.try_get(3)?,
        kind: row.try_get(4)?,
        channel: Channel::from_code(channel).ok_or_else(|| corrupt("channel"))?,
        content: row.try_get(6)?,
        status: Status::from_code(status).ok_or_else(|| corrupt("status"))?,
        priority: row.try_get(8)?,
        created_at: row.try_get(9)?,
        updated_at: row.try_get(10)?,
        version: row.try_get(11)?,
    })
}

fn decode_all(rows: &[SqliteRow]) -> Result<Vec<Notification>, StoreError> {
    rows.iter()
        .map(|row| decode(row).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

fn unexpected(outcome: Outcome) -> StoreError {
    let what = match outcome {
        Outcome::Created(_) => "created",
        Outcome::Marked(_) => "marked",
        Outcome::Refreshed(_) => "refreshed",
        Outcome::Done => "done",
    };
    StoreError::Corrupt(format!("writer answered `{what}` to another request"))
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM notifications WHERE id = $1"
        )))
        .bind(id)
        .fetch_all(&self.readers)
        .await?;
        Ok(decode_all(&rows)?.pop())
    }

    async fn list_unread(
        &self,
        user: User,
        page: u32,
        limit: u32,
    ) -> Result<OfflinePage, StoreError> {
        // One read transaction: the count, the page and last_seq come from
        // the same snapshot.
        let mut tx = self.readers.begin().await?;
        let state = read_state(&mut tx, user).await?;
        let (total, last_seq) = (state.unread, state.last_seq);
        let offset = i64::from(page.saturating_sub(1)) * i64::from(limit);
        let rows = if offset < total {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM notifications \
                 WHERE recipient_role = $1 AND recipient_id = $2 AND status < 4 \
                 ORDER BY seq DESC LIMIT $3 OFFSET $4"
            )))
            .bind(user.role.code())
            .bind(user.id)
            .bind(i64::from(limit))
            .bind(offset)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok(OfflinePage {
            items: decode_all(&rows)?,
            total,
            last_seq,
            version: state.version,
        })
    }

    async fn after_seq(
        &self,
        user: User,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM notifications \
             WHERE recipient_role = $1 AND recipient_id = $2 AND seq > $3 \
             ORDER BY seq LIMIT $4"
        )))
        .bind(user.role.code())
        .bind(user.id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await?;
        decode_all(&rows)
    }

    async fn user_state(&self, user: User) -> Result<UserState, StoreError> {
        let mut connection = self.readers.acquire().await?;
        Ok(read_state(&mut connection, user).await?)
    }

    async fn id_at(&self, user: User, seq: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM notifications WHERE recipient_role = $1 AND recipient_id = $2 AND seq = $3",
        )
        .bind(user.role.code())
        .bind(user.id)
        .bind(seq)
        .fetch_optional(&self.readers)
        .await?)
    }

    async fn changed_after(
        &self,
        user: User,
        after: ChangePosition,
        limit: u32,
    ) -> Result<ChangedPage, StoreError> {
        // One read transaction: the rows and the counters from one snapshot.
        let mut tx = self.readers.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM notifications \
             WHERE recipient_role = $1 AND recipient_id = $2 AND (version, seq) > ($3, $4) \
             ORDER BY version, seq LIMIT $5"
        )))
        .bind(user.role.code())
        .bind(user.id)
        .bind(after.version)
        .bind(after.seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let state = read_state(&mut tx, user).await?;
        tx.commit().await?;
        Ok(ChangedPage {
            items: decode_all(&rows)?,
            state,
        })
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
        let rows = sqlx::query(
            "SELECT m.role, m.user_id, u.last_seen_at, \
             EXISTS (SELECT 1 FROM presence p WHERE p.role = m.role AND p.user_id = m.user_id) \
             FROM room_members m \
             LEFT JOIN users u ON u.role = m.role AND u.id = m.user_id \
             WHERE m.room = $1 ORDER BY m.role, m.user_id",
        )
        .bind(room)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RoomMember {
                    user: decode_user(row)?,
                    last_seen_at: row.try_get(2)?,
                    online: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn room_peers(&self, user: User) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT peer.role, peer.user_id FROM room_members me \
             JOIN room_members peer ON peer.room = me.room \
             WHERE me.role = $1 AND me.user_id = $2 \
             AND NOT (peer.role = $1 AND peer.user_id = $2)",
        )
        .bind(user.role.code())
        .bind(user.id)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(decode_user).collect()
    }

    async fn online_peers(&self, user: User) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT peer.role, peer.user_id FROM room_members me \
             JOIN room_members peer ON peer.room = me.room \
             WHERE me.role = $1 AND me.user_id = $2 \
             AND NOT (peer.role = $1 AND peer.user_id = $2) \
             AND EXISTS (SELECT 1 FROM presence p \
                         WHERE p.role = peer.role AND p.user_id = peer.user_id)",
        )
        .bind(user.role.code())
        .bind(user.id)
        .fetch_all(&self.readers)
        .await?;
        rows.iter().map(decode_user).collect()
    }

    async fn last_seen(&self, user: User) -> Result<Option<i64>, StoreError> {
        let seen: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_seen_at FROM users WHERE role = $1 AND id = $2")
                .bind(user.role.code())
                .bind(user.id)
                .fetch_optional(&self.readers)
                .await?;
        Ok(seen.flatten())
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
}

/// The user's counters (all 0 before their first notification).
async fn read_state(
    connection: &mut SqliteConnection,
    user: User,
) -> Result<UserState, sqlx::Error> {
    let counters: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT last_seq, unread, version FROM users WHERE role = $1 AND id = $2")
            .bind(user.role.code())
            .bind(user.id)
            .fetch_optional(connection)
            .await?;
    Ok(counters
        .map(|(last_seq, unread, version)| UserState {
            last_seq,
            unread,
            version,
        })
        .unwrap_or_default())
}

fn decode_user(row: &SqliteRow) -> Result<User, StoreError> {
    let role: i64 = row.try_get(0)?;
    Ok(User {
        role: Role::from_code(role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role}")))?,
        id: row.try_get(1)?,
    })
}
