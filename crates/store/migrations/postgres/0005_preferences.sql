-- Preferences: the category × channel pairs each user turned off. Every
-- pair is on unless a row here says otherwise.
CREATE TABLE muted (
    role     BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    category TEXT   NOT NULL,
    channel  BIGINT NOT NULL,
    PRIMARY KEY (role, user_id, category, channel)
);
