-- Notifications, one row per recipient. Roles: 1 = vendor, 2 = customer.
-- Statuses: 1 PENDING, 2 SENT, 3 DELIVERED, 4 READ (only ever increase).
-- Content is TEXT, not jsonb: it must come back exactly as it was stored.
CREATE TABLE notifications (
    id              TEXT    PRIMARY KEY,
    recipient_role  BIGINT  NOT NULL,
    recipient_id    BIGINT  NOT NULL,
    seq             BIGINT  NOT NULL,
    type            TEXT    NOT NULL,
    channel         BIGINT  NOT NULL,
    content         TEXT    NOT NULL,
    status          BIGINT  NOT NULL,
    priority        INTEGER NOT NULL,
    idempotency_key TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);

CREATE UNIQUE INDEX notifications_recipient_seq
    ON notifications (recipient_role, recipient_id, seq);

CREATE INDEX notifications_unread
    ON notifications (recipient_role, recipient_id, seq)
    WHERE status < 4;

CREATE UNIQUE INDEX notifications_idempotency
    ON notifications (recipient_role, recipient_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Per-user counters, updated in the transaction of the rows they count.
-- Locking a user's row serializes that user's creates, marks and presence
-- changes across every core.
CREATE TABLE users (
    role         BIGINT NOT NULL,
    id           BIGINT NOT NULL,
    last_seq     BIGINT NOT NULL DEFAULT 0,
    unread       BIGINT NOT NULL DEFAULT 0,
    last_seen_at BIGINT,
    PRIMARY KEY (role, id)
);

CREATE TABLE room_members (
    room      TEXT   NOT NULL,
    role      BIGINT NOT NULL,
    user_id   BIGINT NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (room, role, user_id)
);

CREATE INDEX room_members_user ON room_members (role, user_id, room);

-- Presence entries: how many presence streams each core holds per user.
CREATE TABLE presence (
    node       TEXT   NOT NULL,
    role       BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    streams    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (node, role, user_id)
);

CREATE INDEX presence_user ON presence (role, user_id);
CREATE INDEX presence_expiry ON presence (expires_at);
