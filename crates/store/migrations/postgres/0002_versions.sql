-- Every committed change to a user's notifications (a create, a status
-- change) takes the user's next version, under the user's row lock, and each
-- row keeps the version of its last change: readers order unread counts by
-- version, and catch up on what they missed by reading the rows changed
-- after the last version they saw, in (version, seq) order.
ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX notifications_changes
    ON notifications (recipient_role, recipient_id, version, seq);

-- The database's epoch, made once: a reader holding seqs of another
-- database (or of a restored copy of an earlier one) resyncs instead of
-- skipping.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value)
    VALUES ('epoch', substr(md5(random()::text || clock_timestamp()::text), 1, 24));
