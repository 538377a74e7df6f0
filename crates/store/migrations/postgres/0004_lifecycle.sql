-- The rest of the inbox lifecycle: expiry, collapsing, actions, retention.
-- An expired or replaced notification moves to shelf 0 (gone), so the
-- counting triggers take it out of every count as for any other move.
ALTER TABLE notifications ADD COLUMN expires_at BIGINT;
ALTER TABLE notifications ADD COLUMN collapse_key TEXT;
ALTER TABLE notifications ADD COLUMN replaces TEXT;
ALTER TABLE notifications ADD COLUMN replaced_by TEXT;
-- The action buttons, as the JSON array the creator sent.
ALTER TABLE notifications ADD COLUMN actions TEXT;
ALTER TABLE notifications ADD COLUMN action_id TEXT;
ALTER TABLE notifications ADD COLUMN action_at BIGINT;

-- The expiry sweep: what is due, not yet gone, by due time (never a scan of
-- anybody's history).
CREATE INDEX notifications_expiry ON notifications (expires_at)
    WHERE expires_at IS NOT NULL AND shelf > 0;
-- The unread one a new notification with the same key replaces.
CREATE INDEX notifications_collapse
    ON notifications (recipient_role, recipient_id, collapse_key)
    WHERE collapse_key IS NOT NULL AND shelf = 1;
-- The retention sweep: every notification that is not unread, by age.
CREATE INDEX notifications_retention ON notifications (created_at)
    WHERE shelf <> 1;
