//! The read side both stores share: the same queries and the same decoding
//! over either database, each store spelling the statements in its own SQL
//! ([`ReadSql`]: SQLite names the index each must use, PostgreSQL reads in
//! a read-only repeatable-read snapshot).

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::StoreError;
use crate::model::{
    ChangePosition, ChangedPage, Channel, Notification, OfflinePage, PageStart, Role, RoomMember,
    Status, User, UserState, page_offset,
};

/// A notification's columns, in the order [`decode`] reads them.
macro_rules! columns {
    () => {
        "id, recipient_role, recipient_id, seq, type, channel, content, status, \
         priority, created_at, updated_at, version"
    };
}
pub(crate) use columns;

/// One database's spelling of the read statements (parameters as `$n`).
pub(crate) struct ReadSql {
    /// How a read that needs one snapshot of several tables begins.
    pub begin_snapshot: &'static str,
    /// `$1` id.
    pub get: &'static str,
    /// `$1, $2` user, `$3` limit, `$4` offset; newest first.
    pub unread_page: &'static str,
    /// `$1, $2` user, `$3` before seq, `$4` limit; newest first.
    pub unread_before: &'static str,
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
    for<'r> i64: Decode<'r, DB>,
    for<'r> i32: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(crate) fn new(pool: Pool<DB>, sql: &'static ReadSql) -> Reads<DB> {
        Reads { pool, sql }
    }

    /// One notification by canonical id.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        let rows = sqlx::query(self.sql.get)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(decode_all(&rows)?.pop())
    }

    /// A page of the unread inbox with its count and last_seq, all from
    /// one snapshot.
    pub(crate) async fn list_unread(
        &self,
        user: User,
        start: PageStart,
        limit: u32,
    ) -> Result<OfflinePage, StoreError> {
        let mut tx = self.pool.begin_with(self.sql.begin_snapshot).await?;
        let state = read_state(&mut *tx, self.sql, user).await?;
        let rows = match start {
            PageStart::Page(page) if page_offset(page, limit) >= state.unread => Vec::new(),
            PageStart::Page(page) => {
                sqlx::query(self.sql.unread_page)
                    .bind(user.role.code())
                    .bind(user.id)
                    .bind(i64::from(limit))
                    .bind(page_offset(page, limit))
                    .fetch_all(&mut *tx)
                    .await?
            }
            PageStart::BeforeSeq(before) => {
                sqlx::query(self.sql.unread_before)
                    .bind(user.role.code())
                    .bind(user.id)
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        tx.commit().await?;
        Ok(OfflinePage {
            items: decode_all(&rows)?,
            total: state.unread,
            last_seq: state.last_seq,
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
        tx.commit().await?;
        Ok(ChangedPage {
            items: decode_all(&rows)?,
            state,
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
