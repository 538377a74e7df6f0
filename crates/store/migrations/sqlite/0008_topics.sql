-- Topics: who follows what (a store's followers, a product's watchers).
CREATE TABLE topic_subscribers (
    topic   TEXT NOT NULL,
    role    INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    PRIMARY KEY (topic, role, user_id)
) WITHOUT ROWID;

-- A publish to a topic: the notification every subscriber gets, and how
-- far its fan-out has come. The recipients are fixed when it is published
-- (fanout_recipients: those still to do); each batch creates the
-- notifications of the first of them and deletes them in one transaction,
-- so a core killed at any point resumes where the last commit left it,
-- with no miss and no duplicate.
CREATE TABLE fanouts (
    id              TEXT    PRIMARY KEY,
    topic           TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    channel         INTEGER NOT NULL,
    content         TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    idempotency_key TEXT,
    category        TEXT    NOT NULL,
    expires_at      INTEGER,
    collapse_key    TEXT,
    actions         TEXT,
    critical        INTEGER NOT NULL,
    recipients      INTEGER NOT NULL,
    created         INTEGER NOT NULL DEFAULT 0,
    suppressed      INTEGER NOT NULL DEFAULT 0,
    done            INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX fanouts_open ON fanouts (done, created_at);
CREATE UNIQUE INDEX fanouts_keys ON fanouts (topic, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE fanout_recipients (
    fanout_id TEXT NOT NULL,
    role      INTEGER NOT NULL,
    user_id   INTEGER NOT NULL,
    PRIMARY KEY (fanout_id, role, user_id)
) WITHOUT ROWID;
