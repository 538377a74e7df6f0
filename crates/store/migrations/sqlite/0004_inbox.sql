-- The inbox lifecycle: categories, archive, and the shelf each notification
-- is listed on. Shelves: 0 gone (expired or replaced: listed nowhere),
-- 1 inbox (not READ, not archived: the unread count), 2 read (READ, not
-- archived), 3 archived (whatever its status). Every statement that moves a
-- notification sets its shelf; the triggers below keep the counts of each
-- shelf exact in the same transaction, whichever statement moved it.
ALTER TABLE notifications ADD COLUMN category TEXT NOT NULL DEFAULT '';
ALTER TABLE notifications ADD COLUMN archived_at INTEGER;
ALTER TABLE notifications ADD COLUMN shelf INTEGER NOT NULL DEFAULT 1;

-- Stored rows take the default category a create would give them: `type`
-- up to its first ':' when that is a category (1-64 of [a-z0-9_-]),
-- otherwise 'general'.
UPDATE notifications SET category = CASE
    WHEN length(prefix) BETWEEN 1 AND 64 AND prefix NOT GLOB '*[^a-z0-9_-]*' THEN prefix
    ELSE 'general' END,
  shelf = CASE WHEN status = 4 THEN 2 ELSE 1 END
FROM (SELECT id AS prefix_id,
             CASE WHEN instr(type, ':') > 0 THEN substr(type, 1, instr(type, ':') - 1)
                  ELSE type END AS prefix
      FROM notifications) AS prefixes
WHERE notifications.id = prefixes.prefix_id;

-- How many of a user's notifications of one category are on each shelf
-- that has a view: unread (1, the INBOX view and the unread count),
-- archived (3, the ARCHIVED view), listed (1-3, the ALL view).
CREATE TABLE inbox_counts (
    role     INTEGER NOT NULL,
    user_id  INTEGER NOT NULL,
    category TEXT    NOT NULL,
    unread   INTEGER NOT NULL DEFAULT 0,
    archived INTEGER NOT NULL DEFAULT 0,
    listed   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (role, user_id, category)
) WITHOUT ROWID;

INSERT INTO inbox_counts (role, user_id, category, unread, archived, listed)
SELECT recipient_role, recipient_id, category,
       SUM(shelf = 1), SUM(shelf = 3), SUM(shelf > 0)
FROM notifications GROUP BY recipient_role, recipient_id, category;

-- users.unread is the sum of the user's inbox_counts.unread, kept by the
-- same triggers (a user's row exists before any of their notifications).
UPDATE users SET unread = COALESCE((SELECT SUM(unread) FROM inbox_counts c
    WHERE c.role = users.role AND c.user_id = users.id), 0);

CREATE TRIGGER notifications_counted AFTER INSERT ON notifications
BEGIN
    INSERT INTO inbox_counts (role, user_id, category, unread, archived, listed)
    VALUES (NEW.recipient_role, NEW.recipient_id, NEW.category,
            NEW.shelf = 1, NEW.shelf = 3, NEW.shelf > 0)
    ON CONFLICT (role, user_id, category) DO UPDATE SET
        unread = unread + excluded.unread,
        archived = archived + excluded.archived,
        listed = listed + excluded.listed;
    UPDATE users SET unread = unread + 1
    WHERE NEW.shelf = 1 AND role = NEW.recipient_role AND id = NEW.recipient_id;
END;

CREATE TRIGGER notifications_moved AFTER UPDATE OF shelf ON notifications
WHEN OLD.shelf <> NEW.shelf
BEGIN
    UPDATE inbox_counts SET
        unread = unread + (NEW.shelf = 1) - (OLD.shelf = 1),
        archived = archived + (NEW.shelf = 3) - (OLD.shelf = 3),
        listed = listed + (NEW.shelf > 0) - (OLD.shelf > 0)
    WHERE role = NEW.recipient_role AND user_id = NEW.recipient_id
      AND category = NEW.category;
    UPDATE users SET unread = unread + (NEW.shelf = 1) - (OLD.shelf = 1)
    WHERE (NEW.shelf = 1) <> (OLD.shelf = 1)
      AND role = NEW.recipient_role AND id = NEW.recipient_id;
END;

CREATE TRIGGER notifications_uncounted AFTER DELETE ON notifications
BEGIN
    UPDATE inbox_counts SET
        unread = unread - (OLD.shelf = 1),
        archived = archived - (OLD.shelf = 3),
        listed = listed - (OLD.shelf > 0)
    WHERE role = OLD.recipient_role AND user_id = OLD.recipient_id
      AND category = OLD.category;
    UPDATE users SET unread = unread - 1
    WHERE OLD.shelf = 1 AND role = OLD.recipient_role AND id = OLD.recipient_id;
END;

-- The views, newest first. INBOX and ARCHIVED are one shelf each (the
-- unread inbox takes over from notifications_unread); ALL skips shelf 0 on
-- notifications_recipient_seq. By category: a shelf of one category, and
-- every listed one of a category. The last is partial, so a statement
-- naming its shelf by a parameter cannot be planned on it (a generic plan
-- cannot prove `shelf = $n` implies `shelf > 0`): the views of one shelf
-- stay on the index that holds only that shelf.
DROP INDEX notifications_unread;
CREATE INDEX notifications_shelf
    ON notifications (recipient_role, recipient_id, shelf, seq);
CREATE INDEX notifications_category_shelf
    ON notifications (recipient_role, recipient_id, category, shelf, seq);
CREATE INDEX notifications_category
    ON notifications (recipient_role, recipient_id, category, seq)
    WHERE shelf > 0;
