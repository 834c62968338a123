-- keycap schema, version 1. Money is BIGINT nano-dollars (1e-9 USD) in *_nanousd columns.

CREATE TABLE orgs (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             uuid PRIMARY KEY,
    email          text NOT NULL UNIQUE CHECK (email = lower(email) AND position('@' IN email) > 1),
    password_hash  text,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE memberships (
    id                      uuid PRIMARY KEY,
    org_id                  uuid NOT NULL REFERENCES orgs (id),
    user_id                 uuid NOT NULL REFERENCES users (id),
    role                    text NOT NULL CHECK (role IN ('owner', 'user')),
    monthly_budget_nanousd  bigint NOT NULL CHECK (monthly_budget_nanousd >= 0),
    created_at              timestamptz NOT NULL DEFAULT now(),
    removed_at              timestamptz,
    UNIQUE (org_id, user_id)
);
CREATE INDEX memberships_user_id_idx ON memberships (user_id);

CREATE TABLE invites (
    id                      uuid PRIMARY KEY,
    org_id                  uuid NOT NULL REFERENCES orgs (id),
    email                   text NOT NULL CHECK (email = lower(email)),
    role                    text NOT NULL CHECK (role IN ('owner', 'user')),
    monthly_budget_nanousd  bigint NOT NULL CHECK (monthly_budget_nanousd >= 0),
    token_hash              bytea NOT NULL UNIQUE,
    invited_by              uuid REFERENCES users (id),
    created_at              timestamptz NOT NULL DEFAULT now(),
    expires_at              timestamptz NOT NULL,
    accepted_at             timestamptz
);
CREATE INDEX invites_org_id_idx ON invites (org_id);
CREATE INDEX invites_invited_by_idx ON invites (invited_by);

CREATE TABLE sessions (
    token_hash      bytea PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    current_org_id  uuid REFERENCES orgs (id),
    csrf_token      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_current_org_id_idx ON sessions (current_org_id);

-- Master API keys, sealed by the vault (AES-256-GCM). No plaintext is ever stored.
CREATE TABLE master_keys (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES orgs (id),
    service         text NOT NULL,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    ciphertext      bytea NOT NULL,
    nonce           bytea NOT NULL CHECK (length(nonce) = 12),
    sealing_key_id  text NOT NULL,
    last_four       text NOT NULL CHECK (length(last_four) <= 4),
    created_by      uuid REFERENCES users (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    rotated_at      timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX master_keys_org_id_idx ON master_keys (org_id, service);
CREATE INDEX master_keys_created_by_idx ON master_keys (created_by);

-- Sub-keys: gateway tokens, stored as a SHA-256 hash and a display prefix.
CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES orgs (id),
    membership_id   uuid NOT NULL REFERENCES memberships (id),
    master_key_id   uuid NOT NULL REFERENCES master_keys (id),
    service         text NOT NULL,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_hash      bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    prefix          text NOT NULL,
    cap_nanousd     bigint NOT NULL CHECK (cap_nanousd >= 0),
    spent_nanousd   bigint NOT NULL DEFAULT 0 CHECK (spent_nanousd >= 0),
    model_scope     text[] NOT NULL DEFAULT '{}',
    renew_monthly   boolean NOT NULL DEFAULT false,
    period_start    date NOT NULL,
    paused_reason   text,
    expires_at      timestamptz,
    created_by      uuid REFERENCES users (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    close_reason    text CHECK (close_reason IN ('revoked', 'expired')),
    CHECK ((closed_at IS NULL) = (close_reason IS NULL))
);
CREATE INDEX api_keys_org_id_idx ON api_keys (org_id);
CREATE INDEX api_keys_membership_id_idx ON api_keys (membership_id);
CREATE INDEX api_keys_master_key_id_idx ON api_keys (master_key_id);
CREATE INDEX api_keys_created_by_idx ON api_keys (created_by);
CREATE INDEX api_keys_prefix_idx ON api_keys (org_id, prefix);
CREATE INDEX api_keys_open_expiry_idx ON api_keys (expires_at) WHERE closed_at IS NULL;

-- Per-minute usage rollups written by the gateway's flusher.
CREATE TABLE usage_rollups (
    api_key_id         uuid NOT NULL REFERENCES api_keys (id),
    minute             timestamptz NOT NULL,
    n_requests         bigint NOT NULL DEFAULT 0 CHECK (n_requests >= 0),
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    cost_nanousd       bigint NOT NULL DEFAULT 0 CHECK (cost_nanousd >= 0),
    PRIMARY KEY (api_key_id, minute)
);
CREATE INDEX usage_rollups_minute_idx ON usage_rollups (minute);

-- The ledger: append-only, each row hash-chained over the previous row of its org.
CREATE TABLE transactions (
    id               bigserial PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES orgs (id),
    seq              bigint NOT NULL,
    kind             text NOT NULL,
    actor_user_id    uuid REFERENCES users (id),
    membership_id    uuid REFERENCES memberships (id),
    api_key_id       uuid REFERENCES api_keys (id),
    master_key_id    uuid REFERENCES master_keys (id),
    amount_nanousd   bigint NOT NULL DEFAULT 0,
    detail           jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    prev_hash        bytea NOT NULL,
    hash             bytea NOT NULL,
    UNIQUE (org_id, seq)
);
CREATE INDEX transactions_actor_user_id_idx ON transactions (actor_user_id);
CREATE INDEX transactions_membership_id_idx ON transactions (membership_id, created_at);
CREATE INDEX transactions_api_key_id_idx ON transactions (api_key_id);
CREATE INDEX transactions_master_key_id_idx ON transactions (master_key_id);
CREATE INDEX transactions_org_created_idx ON transactions (org_id, created_at);

-- The text a row's hash covers. Both the insert trigger and chain verification use it.
CREATE FUNCTION transactions_digest(
    prev_hash bytea, org_id uuid, seq bigint, kind text, actor_user_id uuid, membership_id uuid,
    api_key_id uuid, master_key_id uuid, amount_nanousd bigint, detail jsonb, created_at timestamptz
) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(prev_hash || convert_to(concat_ws('|',
        org_id::text, seq::text, kind, coalesce(actor_user_id::text, '-'),
        coalesce(membership_id::text, '-'), coalesce(api_key_id::text, '-'),
        coalesce(master_key_id::text, '-'), amount_nanousd::text, detail::text,
        (extract(epoch FROM created_at) * 1000000)::bigint::text), 'UTF8'))
$$;

CREATE FUNCTION transactions_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
BEGIN
    -- One writer per org at a time, so the chain has no forks.
    PERFORM pg_advisory_xact_lock(hashtextextended('keycap.transactions.' || NEW.org_id::text, 0));
    SELECT t.seq, t.hash INTO last_seq, last_hash
      FROM transactions t WHERE t.org_id = NEW.org_id ORDER BY t.seq DESC LIMIT 1;
    NEW.seq := coalesce(last_seq, 0) + 1;
    NEW.prev_hash := coalesce(last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.created_at := date_trunc('microseconds', coalesce(NEW.created_at, now()));
    NEW.hash := transactions_digest(NEW.prev_hash, NEW.org_id, NEW.seq, NEW.kind, NEW.actor_user_id,
        NEW.membership_id, NEW.api_key_id, NEW.master_key_id, NEW.amount_nanousd, NEW.detail, NEW.created_at);
    RETURN NEW;
END
$$;
CREATE TRIGGER transactions_chain BEFORE INSERT ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_chain();

CREATE FUNCTION transactions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transactions is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER transactions_no_update BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION transactions_append_only();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_append_only();

-- Changes that a running gateway must learn about within a second. Spend updates from the
-- gateway's own flusher are deliberately not among the watched columns.
CREATE FUNCTION notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keycap_changes', TG_TABLE_NAME || ':' || NEW.id::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OF cap_nanousd, model_scope, expires_at,
    paused_reason, closed_at, master_key_id, period_start ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_key_change();
CREATE TRIGGER master_keys_notify AFTER INSERT OR UPDATE ON master_keys
    FOR EACH ROW EXECUTE FUNCTION notify_key_change();
