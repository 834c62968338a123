-- An owner can cancel a pending invite, and an owner's pending invites are cancelled when they
-- stop being an owner (demoted or removed): the link then stops working. Each cancellation has
-- an `invite_cancelled` ledger row.
ALTER TABLE invites ADD COLUMN cancelled_at timestamptz;
