//! Scheduled sends: what both stores share about notifications waiting for
//! their `sendAt` in the `scheduled` table.
//!
//! A pending row reads back as a [`Notification`] through the same
//! [`decode`] as a sent one: the statements here give the table's columns
//! in the order of [`columns`](crate::reads::columns), with what a pending
//! notification does not have yet (a seq, a version) as zero and its status
//! PENDING, then `send_at` and the idempotency key.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::model::{NewNotification, Notification};
use crate::object_id::new_object_id;
use crate::reads::decode;

/// The pending row's columns as [`decode`] reads them, then `send_at` (21)
/// and `idempotency_key` (22). The casts make each column's type the same
/// on both databases.
macro_rules! pending_columns {
    () => {
        "id, recipient_role, recipient_id, CAST(0 AS BIGINT), type, channel, content, \
         CAST(1 AS BIGINT), priority, created_at, created_at, CAST(0 AS BIGINT), category, \
         CAST(NULL AS BIGINT), expires_at, collapse_key, CAST(NULL AS TEXT), \
         CAST(NULL AS TEXT), actions, CAST(NULL AS TEXT), CAST(NULL AS BIGINT), send_at, \
         idempotency_key"
    };
}

/// `$1` id.
pub(crate) const GET_PENDING: &str = concat!(
    "SELECT ",
    pending_columns!(),
    " FROM scheduled WHERE id = $1"
);

/// `$1, $2` recipient, `$3` idempotency key.
pub(crate) const PENDING_BY_KEY: &str = concat!(
    "SELECT ",
    pending_columns!(),
    " FROM scheduled WHERE recipient_role = $1 AND recipient_id = $2 AND idempotency_key = $3"
);

/// `$1` now, `$2` limit: the due ones, the longest due first, on the
/// due-time index.
pub(crate) const DUE: &str = concat!(
    "SELECT ",
    pending_columns!(),
    " FROM scheduled WHERE send_at <= $1 ORDER BY send_at LIMIT $2"
);

/// `$1` id … `$14` actions. A key already pending for the recipient
/// inserts nothing (the unique index), and [`PENDING_BY_KEY`] answers it.
pub(crate) const INSERT_PENDING: &str = "INSERT INTO scheduled (id, recipient_role, \
     recipient_id, send_at, created_at, type, channel, content, priority, idempotency_key, \
     category, expires_at, collapse_key, actions) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING";

/// `$1` id: cancels a pending one.
pub(crate) const CANCEL: &str = concat!(
    "DELETE FROM scheduled WHERE id = $1 RETURNING ",
    pending_columns!()
);

/// `$1, $2` recipient: an erasure takes the pending ones too.
pub(crate) const ERASE_PENDING: &str =
    "DELETE FROM scheduled WHERE recipient_role = $1 AND recipient_id = $2";

/// A pending row: the notification as it reads (PENDING, with its
/// `send_at`) and its idempotency key.
pub(crate) fn decode_pending<R: Row>(row: &R) -> Result<(Notification, Option<String>), sqlx::Error>
where
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let mut notification = decode(row)?;
    notification.send_at = Some(row.try_get(21)?);
    Ok((notification, row.try_get(22)?))
}

/// What sending a pending one creates: the same id and fields.
pub(crate) fn to_send(pending: Notification, idempotency_key: Option<String>) -> NewNotification {
    NewNotification {
        id: Some(pending.id),
        recipient: pending.recipient,
        kind: pending.kind,
        channel: pending.channel,
        content: pending.content,
        priority: pending.priority,
        idempotency_key,
        category: pending.category,
        expires_at: pending.expires_at,
        collapse_key: pending.collapse_key,
        actions: pending.actions,
    }
}

/// How a notification scheduled now reads until it is sent.
pub(crate) fn pending(new: &NewNotification, id: String, now: i64, send_at: i64) -> Notification {
    Notification {
        id,
        recipient: new.recipient,
        seq: 0,
        kind: new.kind.clone(),
        channel: new.channel,
        content: new.content.clone(),
        status: crate::model::Status::Pending,
        priority: new.priority,
        created_at: now,
        updated_at: now,
        version: 0,
        category: new.category.clone(),
        archived_at: None,
        expires_at: new.expires_at,
        collapse_key: new.collapse_key.clone(),
        replaces: None,
        replaced_by: None,
        actions: new.actions.clone(),
        action_taken: None,
        send_at: Some(send_at),
    }
}

/// Why a pending notification could not be cancelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelRefused {
    /// No notification has that id.
    NotFound,
    /// It was sent already (or was never scheduled).
    NotPending,
}

/// Inserts each of `batch` as pending at `send_at` through `executor`, and
/// answers each as it reads: a key already pending for its recipient
/// answers that one, not fresh.
macro_rules! schedule_in {
    ($tx:expr, $batch:expr, $send_at:expr, $now:expr) => {{
        let mut answers = Vec::with_capacity($batch.len());
        for new in $batch {
            let id = $crate::scheduled::fresh_id();
            let inserted = sqlx::query($crate::scheduled::INSERT_PENDING)
                .bind(&id)
                .bind(new.recipient.role.code())
                .bind(new.recipient.id)
                .bind($send_at)
                .bind($now)
                .bind(&new.kind)
                .bind(new.channel.code())
                .bind(&new.content)
                .bind(new.priority)
                .bind(new.idempotency_key.as_deref())
                .bind(&new.category)
                .bind(new.expires_at)
                .bind(new.collapse_key.as_deref())
                .bind($crate::sqlite::actions_json(&new.actions))
                .execute(&mut *$tx)
                .await?
                .rows_affected();
            if inserted == 1 {
                answers.push($crate::model::Created {
                    notification: $crate::scheduled::pending(new, id, $now, $send_at),
                    fresh: true,
                });
                continue;
            }
            let row = sqlx::query($crate::scheduled::PENDING_BY_KEY)
                .bind(new.recipient.role.code())
                .bind(new.recipient.id)
                .bind(new.idempotency_key.as_deref())
                .fetch_one(&mut *$tx)
                .await?;
            let (notification, _) = $crate::scheduled::decode_pending(&row)?;
            answers.push($crate::model::Created {
                notification,
                fresh: false,
            });
        }
        answers
    }};
}
pub(crate) use schedule_in;

/// A new pending notification's id: an ObjectId like any other, so it
/// sorts by creation and keeps its id when sent.
pub(crate) fn fresh_id() -> String {
    new_object_id()
}
