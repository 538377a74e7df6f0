-- Preferences: the category × channel pairs each user turned off. Every
-- pair is on unless a row here says otherwise.
CREATE TABLE muted (
    role     INTEGER NOT NULL,
    user_id  INTEGER NOT NULL,
    category TEXT    NOT NULL,
    channel  INTEGER NOT NULL,
    PRIMARY KEY (role, user_id, category, channel)
) WITHOUT ROWID;
