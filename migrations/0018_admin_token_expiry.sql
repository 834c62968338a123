-- Admin tokens expire: their lifetime is chosen when they are made (30, 90 or 365 days; 90 by
-- default), and a user's admin tokens are revoked when that user changes their password. A
-- metrics token may be made without an end (it reads one org's usage and nothing else).
-- Admin tokens made before this expire 90 days after they were made, and not within 30 days
-- of this migration, so automation has time to move to new ones.

ALTER TABLE admin_tokens ADD COLUMN expires_at timestamptz;
UPDATE admin_tokens
   SET expires_at = greatest(created_at + interval '90 days', now() + interval '30 days')
 WHERE scope = 'admin' AND revoked_at IS NULL;
ALTER TABLE admin_tokens ADD CHECK (scope = 'metrics' OR expires_at IS NOT NULL OR revoked_at IS NOT NULL);
