-- Presence entries: how many presence streams each node holds per user.
-- A user is online while any entry exists; entries of a node that stops
-- refreshing them expire.
CREATE TABLE presence (
    node       TEXT    NOT NULL,
    role       INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    streams    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (node, role, user_id)
) WITHOUT ROWID;

CREATE INDEX presence_user ON presence (role, user_id);
CREATE INDEX presence_expiry ON presence (expires_at);
