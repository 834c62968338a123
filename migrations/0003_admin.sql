-- The admin app's own state: login attempts for throttling, and owner-issued admin tokens for
-- the JSON API. Users, sessions and invites were created in 0001.

-- One row per failed sign-in, kept for the throttling window. Successful sign-ins clear the
-- rows of their email.
CREATE TABLE login_failures (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL,
    client_ip   text NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_email_idx ON login_failures (email, failed_at);
CREATE INDEX login_failures_client_ip_idx ON login_failures (client_ip, failed_at);

-- Tokens for automation against /api/, issued by an owner of one org and acting as that owner
-- in that org. Stored as a SHA-256 hash, like sub-keys.
CREATE TABLE admin_tokens (
    id           uuid PRIMARY KEY,
    org_id       uuid NOT NULL REFERENCES orgs (id),
    user_id      uuid NOT NULL REFERENCES users (id),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    prefix       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX admin_tokens_org_id_idx ON admin_tokens (org_id);
CREATE INDEX admin_tokens_user_id_idx ON admin_tokens (user_id);
