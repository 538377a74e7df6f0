-- Scheduled sends: notifications waiting for their sendAt. They have no
-- seq yet and are listed and counted nowhere; when due, a sweep creates
-- each as an ordinary notification with the same id (taking its seq then)
-- and deletes it here, in one transaction. The due-time index is all the
-- sweep reads, so a hundred thousand waiting cost nothing.
CREATE TABLE scheduled (
    id              TEXT    PRIMARY KEY,
    recipient_role  BIGINT NOT NULL,
    recipient_id    BIGINT NOT NULL,
    send_at         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    type            TEXT    NOT NULL,
    channel         BIGINT NOT NULL,
    content         TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    idempotency_key TEXT,
    category        TEXT    NOT NULL,
    expires_at      BIGINT,
    collapse_key    TEXT,
    actions         TEXT
);

CREATE INDEX scheduled_due ON scheduled (send_at);
CREATE UNIQUE INDEX scheduled_keys ON scheduled (recipient_role, recipient_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
