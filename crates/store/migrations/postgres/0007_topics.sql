-- Topics: who follows what (a store's followers, a product's watchers).
CREATE TABLE topic_subscribers (
    topic   TEXT NOT NULL,
    role    BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    PRIMARY KEY (topic, role, user_id)
);

-- A publish to a topic: the notification every subscriber gets, and how
-- far its fan-out has come. The recipients are fixed when it is published
-- (fanout_recipients: those still to do); each batch creates the
-- notifications of the first of them and deletes them in one transaction,
-- so a core killed at any point resumes where the last commit left it,
-- with no miss and no duplicate.
CREATE TABLE fanouts (
    id              TEXT    PRIMARY KEY,
    topic           TEXT    NOT NULL,
    created_at      BIGINT NOT NULL,
    type            TEXT    NOT NULL,
    channel         BIGINT NOT NULL,
    content         TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    idempotency_key TEXT,
    category        TEXT    NOT NULL,
    expires_at      BIGINT,
    collapse_key    TEXT,
    actions         TEXT,
    critical        BIGINT NOT NULL,
    recipients      BIGINT NOT NULL,
    created         BIGINT NOT NULL DEFAULT 0,
    suppressed      BIGINT NOT NULL DEFAULT 0,
    done            BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX fanouts_open ON fanouts (done, created_at);
CREATE UNIQUE INDEX fanouts_keys ON fanouts (topic, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE fanout_recipients (
    fanout_id TEXT NOT NULL,
    role      BIGINT NOT NULL,
    user_id   BIGINT NOT NULL,
    PRIMARY KEY (fanout_id, role, user_id)
);
