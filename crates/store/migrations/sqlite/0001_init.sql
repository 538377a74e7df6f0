-- Notifications, one row per recipient. Roles: 1 = vendor, 2 = customer.
-- Statuses: 1 PENDING, 2 SENT, 3 DELIVERED, 4 READ (only ever increase).
CREATE TABLE notifications (
    id              TEXT    PRIMARY KEY NOT NULL,
    recipient_role  INTEGER NOT NULL,
    recipient_id    INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    channel         INTEGER NOT NULL,
    content         TEXT    NOT NULL,
    status          INTEGER NOT NULL,
    priority        INTEGER NOT NULL,
    idempotency_key TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- Replay after a seq, and the guarantee that a seq is never given twice.
CREATE UNIQUE INDEX notifications_recipient_seq
    ON notifications (recipient_role, recipient_id, seq);

-- The unread inbox (ListOffline), newest first, without touching READ rows.
CREATE INDEX notifications_unread
    ON notifications (recipient_role, recipient_id, seq)
    WHERE status < 4;

CREATE UNIQUE INDEX notifications_idempotency
    ON notifications (recipient_role, recipient_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Per-user counters kept in the same transaction as the rows they count.
CREATE TABLE users (
    role         INTEGER NOT NULL,
    id           INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL DEFAULT 0,
    unread       INTEGER NOT NULL DEFAULT 0,
    last_seen_at INTEGER,
    PRIMARY KEY (role, id)
) WITHOUT ROWID;

CREATE TABLE room_members (
    room      TEXT    NOT NULL,
    role      INTEGER NOT NULL,
    user_id   INTEGER NOT NULL,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (room, role, user_id)
) WITHOUT ROWID;

CREATE INDEX room_members_user ON room_members (role, user_id, room);

