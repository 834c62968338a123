-- When a key or master key last changed in a way a gateway must learn about (the columns the
-- NOTIFY trigger watches), so that the gateway's periodic safety-net refresh reads only what
-- changed since its last pass instead of every key. Spend updates do not count.

ALTER TABLE api_keys ADD COLUMN changed_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE master_keys ADD COLUMN changed_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX api_keys_changed_at_idx ON api_keys (changed_at);

CREATE FUNCTION touch_changed_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_at := clock_timestamp();
    RETURN NEW;
END
$$;
CREATE TRIGGER api_keys_changed_at BEFORE UPDATE OF cap_nanousd, model_scope, expires_at,
    paused_reason, closed_at, master_key_id, period_start ON api_keys
    FOR EACH ROW EXECUTE FUNCTION touch_changed_at();
CREATE TRIGGER master_keys_changed_at BEFORE UPDATE OF ciphertext, nonce, sealing_key_id,
    revoked_at ON master_keys
    FOR EACH ROW EXECUTE FUNCTION touch_changed_at();
