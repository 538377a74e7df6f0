-- The inbox lifecycle: categories, archive, and the shelf each notification
-- is listed on. Shelves: 0 gone (expired or replaced: listed nowhere),
-- 1 inbox (not READ, not archived: the unread count), 2 read (READ, not
-- archived), 3 archived (whatever its status). Every statement that moves a
-- notification sets its shelf; the triggers below keep the counts of each
-- shelf exact in the same transaction, whichever statement moved it. They
-- run once per statement over its transition tables, so a mark of 100,000
-- rows updates each counter row once.
ALTER TABLE notifications ADD COLUMN category TEXT NOT NULL DEFAULT '';
ALTER TABLE notifications ADD COLUMN archived_at BIGINT;
ALTER TABLE notifications ADD COLUMN shelf BIGINT NOT NULL DEFAULT 1;

-- Stored rows take the default category a create would give them: `type`
-- up to its first ':' when that is a category (1-64 of [a-z0-9_-]),
-- otherwise 'general'.
UPDATE notifications SET
    category = CASE WHEN split_part(type, ':', 1) ~ '^[a-z0-9_-]{1,64}$'
                    THEN split_part(type, ':', 1) ELSE 'general' END,
    shelf = CASE WHEN status = 4 THEN 2 ELSE 1 END;

-- How many of a user's notifications of one category are on each shelf
-- that has a view: unread (1, the INBOX view and the unread count),
-- archived (3, the ARCHIVED view), listed (1-3, the ALL view).
CREATE TABLE inbox_counts (
    role     BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    category TEXT   NOT NULL,
    unread   BIGINT NOT NULL DEFAULT 0,
    archived BIGINT NOT NULL DEFAULT 0,
    listed   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (role, user_id, category)
);

INSERT INTO inbox_counts (role, user_id, category, unread, archived, listed)
SELECT recipient_role, recipient_id, category,
       count(*) FILTER (WHERE shelf = 1), count(*) FILTER (WHERE shelf = 3),
       count(*) FILTER (WHERE shelf > 0)
FROM notifications GROUP BY recipient_role, recipient_id, category;

-- users.unread is the sum of the user's inbox_counts.unread, kept by the
-- same triggers (a user's row exists, and is locked, before any of their
-- notifications is written).
UPDATE users SET unread = COALESCE((SELECT SUM(unread) FROM inbox_counts c
    WHERE c.role = users.role AND c.user_id = users.id), 0);

CREATE FUNCTION notifications_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbox_counts AS c (role, user_id, category, unread, archived, listed)
    SELECT recipient_role, recipient_id, category,
           count(*) FILTER (WHERE shelf = 1), count(*) FILTER (WHERE shelf = 3),
           count(*) FILTER (WHERE shelf > 0)
    FROM new_rows GROUP BY recipient_role, recipient_id, category
    ORDER BY recipient_role, recipient_id, category
    ON CONFLICT (role, user_id, category) DO UPDATE SET
        unread = c.unread + excluded.unread,
        archived = c.archived + excluded.archived,
        listed = c.listed + excluded.listed;
    UPDATE users u SET unread = u.unread + d.n
    FROM (SELECT recipient_role, recipient_id, count(*) AS n FROM new_rows
          WHERE shelf = 1 GROUP BY recipient_role, recipient_id) d
    WHERE u.role = d.recipient_role AND u.id = d.recipient_id;
    RETURN NULL;
END $$;

CREATE FUNCTION notifications_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (
        SELECT o.recipient_role AS role, o.recipient_id AS user_id, o.category,
               (n.shelf = 1)::int - (o.shelf = 1)::int AS unread,
               (n.shelf = 3)::int - (o.shelf = 3)::int AS archived,
               (n.shelf > 0)::int - (o.shelf > 0)::int AS listed
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE n.shelf <> o.shelf
    ), counted AS (
        UPDATE inbox_counts c SET
            unread = c.unread + d.unread,
            archived = c.archived + d.archived,
            listed = c.listed + d.listed
        FROM (SELECT role, user_id, category, SUM(unread) AS unread,
                     SUM(archived) AS archived, SUM(listed) AS listed
              FROM moved GROUP BY role, user_id, category) d
        WHERE c.role = d.role AND c.user_id = d.user_id AND c.category = d.category
    )
    UPDATE users u SET unread = u.unread + d.unread
    FROM (SELECT role, user_id, SUM(unread) AS unread FROM moved
          GROUP BY role, user_id HAVING SUM(unread) <> 0) d
    WHERE u.role = d.role AND u.id = d.user_id;
    RETURN NULL;
END $$;

CREATE FUNCTION notifications_uncounted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH gone AS (
        SELECT recipient_role AS role, recipient_id AS user_id, category,
               count(*) FILTER (WHERE shelf = 1) AS unread,
               count(*) FILTER (WHERE shelf = 3) AS archived,
               count(*) FILTER (WHERE shelf > 0) AS listed
        FROM old_rows GROUP BY recipient_role, recipient_id, category
    ), counted AS (
        UPDATE inbox_counts c SET
            unread = c.unread - g.unread,
            archived = c.archived - g.archived,
            listed = c.listed - g.listed
        FROM gone g
        WHERE c.role = g.role AND c.user_id = g.user_id AND c.category = g.category
    )
    UPDATE users u SET unread = u.unread - d.unread
    FROM (SELECT role, user_id, SUM(unread) AS unread FROM gone
          GROUP BY role, user_id HAVING SUM(unread) <> 0) d
    WHERE u.role = d.role AND u.id = d.user_id;
    RETURN NULL;
END $$;

CREATE TRIGGER notifications_counted AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_counted();
CREATE TRIGGER notifications_moved AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_moved();
CREATE TRIGGER notifications_uncounted AFTER DELETE ON notifications
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notifications_uncounted();

-- The views, newest first (as on SQLite). notifications_category is
-- partial, so a statement naming its shelf by a parameter cannot be planned
-- on it (a generic plan cannot prove `shelf = $n` implies `shelf > 0`):
-- the views of one shelf stay on the index that holds only that shelf.
DROP INDEX notifications_unread;
CREATE INDEX notifications_shelf
    ON notifications (recipient_role, recipient_id, shelf, seq);
CREATE INDEX notifications_category_shelf
    ON notifications (recipient_role, recipient_id, category, shelf, seq);
CREATE INDEX notifications_category
    ON notifications (recipient_role, recipient_id, category, seq)
    WHERE shelf > 0;
