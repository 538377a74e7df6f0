//! The read side both stores share: the same queries and the same decoding
//! over either database, each store spelling the statements in its own SQL
//! ([`ReadSql`]: SQLite names the index each must use, PostgreSQL reads in
//! a read-only repeatable-read snapshot).

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::StoreError;
use crate::model::{
    ActionTaken, ByCategory, ChangePosition, ChangedPage, Channel, ListQuery, NewNotification,
    Notification, OfflinePage, PageStart, Role, RoomMember, Status, UnreadCounts, User, UserState,
    View, now_millis, page_offset,
};
use crate::preferences::{self, Rule};
use crate::scheduled;
use crate::topics::{self, Fanout};

/// A notification's columns, in the order [`decode`] reads them.
macro_rules! columns {
    () => {
        "id, recipient_role, recipient_id, seq, type, channel, content, status, \
         priority, created_at, updated_at, version, category, archived_at, expires_at, \
         collapse_key, replaces, replaced_by, actions, action_id, action_at"
    };
}
pub(crate) use columns;

/// The shelves of the views (see the inbox migration): gone (expired or
/// replaced), unread in the inbox, and archived. ALL is every shelf above 0.
pub(crate) const GONE_SHELF: i64 = 0;
pub(crate) const INBOX_SHELF: i64 = 1;
pub(crate) const ARCHIVED_SHELF: i64 = 3;

/// The page statements of the views, from the table expression each one
/// reads (where SQLite names its index): `$1, $2` the user, then the
/// category and the shelf where the statement has them, then `seq < before`
/// and the limit (keyset) or the limit and the offset.
macro_rules! view_pages {
    ($shelf:literal, $category_shelf:literal, $listed:literal, $category_listed:literal) => {
        $crate::reads::ViewSql {
            shelf: $crate::reads::PageSql {
                offset: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $shelf,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND shelf = $3 \
                     ORDER BY seq DESC LIMIT $4 OFFSET $5"
                ),
                before: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $shelf,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND shelf = $3 \
                     AND seq < $4 ORDER BY seq DESC LIMIT $5"
                ),
            },
            category_shelf: $crate::reads::PageSql {
                offset: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $category_shelf,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND category = $3 \
                     AND shelf = $4 ORDER BY seq DESC LIMIT $5 OFFSET $6"
                ),
                before: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $category_shelf,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND category = $3 \
                     AND shelf = $4 AND seq < $5 ORDER BY seq DESC LIMIT $6"
                ),
            },
            listed: $crate::reads::PageSql {
                offset: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $listed,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND shelf > 0 \
                     ORDER BY seq DESC LIMIT $3 OFFSET $4"
                ),
                before: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $listed,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND shelf > 0 \
                     AND seq < $3 ORDER BY seq DESC LIMIT $4"
                ),
            },
            category_listed: $crate::reads::PageSql {
                offset: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $category_listed,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND category = $3 \
                     AND shelf > 0 ORDER BY seq DESC LIMIT $4 OFFSET $5"
                ),
                before: concat!(
                    "SELECT ",
                    $crate::reads::columns!(),
                    " FROM ",
                    $category_listed,
                    " WHERE recipient_role = $1 AND recipient_id = $2 AND category = $3 \
                     AND shelf > 0 AND seq < $4 ORDER BY seq DESC LIMIT $5"
                ),
            },
        }
    };
}
pub(crate) use view_pages;

/// One page shape, by offset or after a seq (keyset).
pub(crate) struct PageSql {
    pub offset: &'static str,
    pub before: &'static str,
}

/// The pages of every view (see [`view_pages`]).
pub(crate) struct ViewSql {
    /// One shelf (INBOX, ARCHIVED) of every category.
    pub shelf: PageSql,
    /// One shelf of one category.
    pub category_shelf: PageSql,
    /// Every listed one (ALL).
    pub listed: PageSql,
    /// Every listed one of one category.
    pub category_listed: PageSql,
}

impl ViewSql {
    /// The statements of a query and the shelf it binds, if any.
    pub(crate) fn of(&self, query: &ListQuery) -> (&PageSql, Option<i64>) {
        let shelf = match query.view {
            View::Inbox => Some(INBOX_SHELF),
            View::Archived => Some(ARCHIVED_SHELF),
            View::All => None,
        };
        let pages = match (&query.category, shelf) {
            (None, Some(_)) => &self.shelf,
            (Some(_), Some(_)) => &self.category_shelf,
            (None, None) => &self.listed,
            (Some(_), None) => &self.category_listed,
        };
        (pages, shelf)
    }
}

/// One database's spelling of the read statements (parameters as `$n`).
pub(crate) struct ReadSql {
    /// How a read that needs one snapshot of several tables begins.
    pub begin_snapshot: &'static str,
    /// `$1` id.
    pub get: &'static str,
    /// The views' pages, newest first.
    pub pages: ViewSql,
    /// `$1, $2` user, `$3` category or null: how many are unread,
    /// archived and listed (the views' totals).
    pub view_totals: &'static str,
    /// `$1, $2` user: each category with unread ones, and how many.
    pub by_category: &'static str,
    /// `$1, $2` user, `$3` after seq, `$4` limit; in seq order.
    pub after_seq: &'static str,
    /// `$1, $2` user, `$3` seq: the id.
    pub id_at: &'static str,
    /// `$1, $2` user, `$3, $4` after (version, seq), `$5` limit.
    pub changed_after: &'static str,
    /// `$1, $2` user: last_seq, unread, version.
    pub user_state: &'static str,
    /// `$1, $2` user: last_seen_at.
    pub last_seen: &'static str,
    /// `$1, $2` user: how many presence entries (nodes) the user has.
    pub presence_entries: &'static str,
    /// `$1` room: role, user id, last_seen_at, online.
    pub room_members: &'static str,
    /// `$1, $2` user: role, user id of each peer.
    pub room_peers: &'static str,
    /// `$1, $2` user: role, user id of each peer online.
    pub online_peers: &'static str,
    /// `$1` category, `$2` channel, `$3` users as JSON text (`[[role, id],
    /// …]`): role, user id of those who turned that pair off.
    pub muted_among: &'static str,
}

/// The reads of one store: its pool of readers and its statements.
pub(crate) struct Reads<DB: Database> {
    pool: Pool<DB>,
    sql: &'static ReadSql,
}

impl<DB> Reads<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> i32: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(crate) fn new(pool: Pool<DB>, sql: &'static ReadSql) -> Reads<DB> {
        Reads { pool, sql }
    }

    /// One notification by canonical id, sent or pending.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        let rows = sqlx::query(self.sql.get)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        if let Some(sent) = decode_all(&rows)?.pop() {
            return Ok(Some(sent));
        }
        // A pending one leaves its table in the transaction that creates
        // it: read sent, then pending, then sent again, one sent between
        // the first two reads is found by the third.
        let rows = sqlx::query(scheduled::GET_PENDING)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        match rows.first() {
            Some(row) => Ok(Some(
                scheduled::decode_pending(row)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?
                    .0,
            )),
            None => {
                let rows = sqlx::query(self.sql.get)
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(decode_all(&rows)?.pop())
            }
        }
    }

    /// How many users follow the topic.
    pub(crate) async fn subscribers(&self, topic: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(topics::COUNT_SUBSCRIBERS)
            .bind(topic)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Where a fan-out stands.
    pub(crate) async fn fanout(&self, id: &str) -> Result<Option<Fanout>, StoreError> {
        let rows = sqlx::query(topics::GET_FANOUT)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.first()
            .map(|row| topics::decode_state(row).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Pending notifications due by `now`, as they are to be created.
    pub(crate) async fn due(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<NewNotification>, StoreError> {
        let rows = sqlx::query(scheduled::DUE)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let (pending, key) = scheduled::decode_pending(row)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(scheduled::to_send(pending, key))
            })
            .collect()
    }

    /// A page of a view with its total and last_seq, all from one
    /// snapshot. The unread inbox of every category takes its total from
    /// the user's counters; the other lists from the per-category counts.
    pub(crate) async fn list(
        &self,
        user: User,
        query: &ListQuery,
        start: PageStart,
        limit: u32,
    ) -> Result<OfflinePage, StoreError> {
        let mut tx = self.pool.begin_with(self.sql.begin_snapshot).await?;
        let state = read_state(&mut *tx, self.sql, user).await?;
        let total = if *query == ListQuery::inbox() {
            state.unread
        } else {
            let (unread, archived, listed): (i64, i64, i64) = sqlx::query_as(self.sql.view_totals)
                .bind(user.role.code())
                .bind(user.id)
                .bind(query.category.as_deref())
                .fetch_one(&mut *tx)
                .await?;
            match query.view {
                View::Inbox => unread,
                View::Archived => archived,
                View::All => listed,
            }
        };
        let (pages, shelf) = self.sql.pages.of(query);
        let (sql, after) = match start {
            PageStart::Page(_) => (pages.offset, None),
            PageStart::BeforeSeq(before) => (pages.before, Some(before)),
        };
        let rows = match start {
            PageStart::Page(page) if page_offset(page, limit) >= total => Vec::new(),
            _ => {
                let mut select = sqlx::query(sql).bind(user.role.code()).bind(user.id);
                if let Some(category) = query.category.as_deref() {
                    select = select.bind(category);
                }
                if let Some(shelf) = shelf {
                    select = select.bind(shelf);
                }
                if let Some(before) = after {
                    select = select.bind(before);
                }
                select = select.bind(i64::from(limit));
                if let PageStart::Page(page) = start {
                    select = select.bind(page_offset(page, limit));
                }
                select.fetch_all(&mut *tx).await?
            }
        };
        tx.commit().await?;
        // One past its expiry that the sweep has not reached yet (it runs
        // a few times a second) is listed nowhere already.
        let now = now_millis();
        let mut items = decode_all(&rows)?;
        items.retain(|n| !n.expired(now));
        Ok(OfflinePage {
            items,
            total,
            last_seq: state.last_seq,
            version: state.version,
        })
    }

    /// The unread counts, in all and by category, from one snapshot.
    pub(crate) async fn unread_counts(&self, user: User) -> Result<UnreadCounts, StoreError> {
        let mut tx = self.pool.begin_with(self.sql.begin_snapshot).await?;
        let state = read_state(&mut *tx, self.sql, user).await?;
        let by_category = read_by_category(&mut *tx, self.sql, user).await?;
        tx.commit().await?;
        Ok(UnreadCounts {
            unread: state.unread,
            by_category,
            version: state.version,
        })
    }

    /// Up to `limit` of the user's notifications after a seq, in seq order.
    pub(crate) async fn after_seq(
        &self,
        user: User,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = sqlx::query(self.sql.after_seq)
            .bind(user.role.code())
            .bind(user.id)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        decode_all(&rows)
    }

    /// The user's counters.
    pub(crate) async fn user_state(&self, user: User) -> Result<UserState, StoreError> {
        let mut connection = self.pool.acquire().await?;
        Ok(read_state(&mut *connection, self.sql, user).await?)
    }

    /// The id at one of the user's seqs.
    pub(crate) async fn id_at(&self, user: User, seq: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(self.sql.id_at)
            .bind(user.role.code())
            .bind(user.id)
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The rows changed after a position and the counters, from one snapshot.
    pub(crate) async fn changed_after(
        &self,
        user: User,
        after: ChangePosition,
        limit: u32,
    ) -> Result<ChangedPage, StoreError> {
        let mut tx = self.pool.begin_with(self.sql.begin_snapshot).await?;
        let rows = sqlx::query(self.sql.changed_after)
            .bind(user.role.code())
            .bind(user.id)
            .bind(after.version)
            .bind(after.seq)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
        let state = read_state(&mut *tx, self.sql, user).await?;
        let by_category = read_by_category(&mut *tx, self.sql, user).await?;
        tx.commit().await?;
        Ok(ChangedPage {
            items: decode_all(&rows)?,
            state,
            by_category,
        })
    }

    /// A room's members with their presence.
    pub(crate) async fn room_members(&self, room: &str) -> Result<Vec<RoomMember>, StoreError> {
        let rows = sqlx::query(self.sql.room_members)
            .bind(room)
            .fetch_all(&self.pool)
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

    /// Everyone sharing a room with the user.
    pub(crate) async fn room_peers(&self, user: User) -> Result<Vec<User>, StoreError> {
        self.users(self.sql.room_peers, user).await
    }

    /// The online ones among them.
    pub(crate) async fn online_peers(&self, user: User) -> Result<Vec<User>, StoreError> {
        self.users(self.sql.online_peers, user).await
    }

    async fn users(&self, sql: &'static str, user: User) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(sql)
            .bind(user.role.code())
            .bind(user.id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(decode_user)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// The pairs the user turned off, as rules.
    pub(crate) async fn preferences(&self, user: User) -> Result<Vec<Rule>, StoreError> {
        let rows = sqlx::query(preferences::LIST_MUTED)
            .bind(user.role.code())
            .bind(user.id)
            .fetch_all(&self.pool)
            .await?;
        let muted = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(preferences::rules(muted))
    }

    /// Those of `users` who turned `category` off on `channel`: one read
    /// for a whole batch of recipients, on the table's primary key.
    pub(crate) async fn muted(
        &self,
        users: &[User],
        category: &str,
        channel: Channel,
    ) -> Result<Vec<User>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<[i64; 2]> = users.iter().map(|u| [u.role.code(), u.id]).collect();
        let keys = serde_json::to_string(&keys).expect("integers serialize");
        let rows = sqlx::query(self.sql.muted_among)
            .bind(category)
            .bind(channel.code())
            .bind(keys.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(decode_user)
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// When the user's last connection closed, if it ever did.
    pub(crate) async fn last_seen(&self, user: User) -> Result<Option<i64>, StoreError> {
        let seen: Option<Option<i64>> = sqlx::query_scalar(self.sql.last_seen)
            .bind(user.role.code())
            .bind(user.id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(seen.flatten())
    }
}

/// The user's counters (all 0 before their first notification), on a
/// connection or in a transaction the caller holds.
pub(crate) async fn read_state<'c, DB>(
    connection: &'c mut DB::Connection,
    sql: &ReadSql,
    user: User,
) -> Result<UserState, sqlx::Error>
where
    DB: Database,
    &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
    let counters: Option<(i64, i64, i64)> = sqlx::query_as(sql.user_state)
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

/// The user's unread count by category, on a connection or in a
/// transaction the caller holds.
pub(crate) async fn read_by_category<'c, DB>(
    connection: &'c mut DB::Connection,
    sql: &ReadSql,
    user: User,
) -> Result<ByCategory, sqlx::Error>
where
    DB: Database,
    &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let rows: Vec<(String, i64)> = sqlx::query_as(sql.by_category)
        .bind(user.role.code())
        .bind(user.id)
        .fetch_all(connection)
        .await?;
    Ok(rows.into_iter().collect())
}

/// How many nodes hold a presence entry for the user, in the caller's
/// transaction (presence writes compare it before and after).
pub(crate) async fn presence_entries<'c, DB>(
    connection: &'c mut DB::Connection,
    sql: &ReadSql,
    user: User,
) -> Result<i64, sqlx::Error>
where
    DB: Database,
    &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
    sqlx::query_scalar(sql.presence_entries)
        .bind(user.role.code())
        .bind(user.id)
        .fetch_one(connection)
        .await
}

/// A row of [`columns`] as a notification.
pub(crate) fn decode<R: Row>(row: &R) -> Result<Notification, sqlx::Error>
where
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let corrupt =
        |what: &str| sqlx::Error::Decode(format!("unknown {what} in a stored row").into());
    let role: i64 = row.try_get(1)?;
    let channel: i64 = row.try_get(5)?;
    let status: i64 = row.try_get(7)?;
    Ok(Notification {
        send_at: None,
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
        category: row.try_get(12)?,
        archived_at: row.try_get(13)?,
        expires_at: row.try_get(14)?,
        collapse_key: row.try_get(15)?,
        replaces: row.try_get(16)?,
        replaced_by: row.try_get(17)?,
        actions: match row.try_get::<Option<String>, _>(18)? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| sqlx::Error::Decode(format!("stored actions: {e}").into()))?,
            None => Vec::new(),
        },
        action_taken: match (row.try_get::<Option<String>, _>(19)?, row.try_get(20)?) {
            (Some(id), Some(at)) => Some(ActionTaken { id, at }),
            _ => None,
        },
    })
}

/// Rows as notifications; one that cannot be read is corrupt.
pub(crate) fn decode_all<R: Row>(rows: &[R]) -> Result<Vec<Notification>, StoreError>
where
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    rows.iter()
        .map(|row| decode(row).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

/// A row whose first two columns are a role and a user id.
pub(crate) fn decode_user<R: Row>(row: &R) -> Result<User, sqlx::Error>
where
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let role: i64 = row.try_get(0)?;
    Ok(User {
        role: Role::from_code(role)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role}").into()))?,
        id: row.try_get(1)?,
    })
}
