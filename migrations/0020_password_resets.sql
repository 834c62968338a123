-- Password-reset links: an owner makes one for a member of their org (the command line for
-- anyone), single-use and expiring. Only the SHA-256 hash of a link's token is stored. A newer
-- link for the same user cancels the older ones.
CREATE TABLE password_resets (
    id            uuid PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES orgs (id),
    user_id       uuid NOT NULL REFERENCES users (id),
    token_hash    bytea NOT NULL UNIQUE,
    created_by    uuid REFERENCES users (id),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    cancelled_at  timestamptz
);
CREATE INDEX password_resets_org_id_idx ON password_resets (org_id);
CREATE INDEX password_resets_user_id_idx ON password_resets (user_id);
CREATE INDEX password_resets_created_by_idx ON password_resets (created_by);
