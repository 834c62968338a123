-- Rate limits shared by every gateway, kept across restarts: a key's requests per minute are
-- counted per UTC minute of the database's clock, here, and each gateway takes a share of a
-- minute's requests (a batch at a time) before it forwards them. So a key with a limit of N
-- requests per minute is sent at most N in any minute of the clock however many gateways
-- serve it (and at most 2N in a 60 s window that straddles two), and a restart starts from
-- what the minute has used. (Migration 0005's limit was a per-gateway GCRA.)

CREATE TABLE rate_windows (
    api_key_id   uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    used         integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (api_key_id, window_start)
);
CREATE INDEX rate_windows_window_start_idx ON rate_windows (window_start);

-- Takes up to `want` of `key`'s `rpm` requests in the current minute, at least one when any
-- is left, and at most its share among the live gateways (a heartbeat within `live_within`)
-- unless only one is wanted. Returns how many, and the milliseconds until the minute ends
-- (when what was taken lapses). The key's minutes before the last are forgotten here, every
-- key's by `reclaim_leases` (migration 0015).
CREATE FUNCTION rate_take(key uuid, rpm integer, want integer, live_within interval,
                          OUT granted integer, OUT ends_in_ms bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    at timestamptz := clock_timestamp();
    minute timestamptz := date_trunc('minute', at);
    used_now integer;
    live bigint;
BEGIN
    ends_in_ms := ceil(extract(epoch FROM (minute + interval '1 minute' - at)) * 1000)::bigint;
    INSERT INTO rate_windows (api_key_id, window_start) VALUES (key, minute)
    ON CONFLICT DO NOTHING;
    SELECT w.used INTO used_now FROM rate_windows w
     WHERE w.api_key_id = key AND w.window_start = minute FOR UPDATE;
    SELECT greatest(count(*), 1) INTO live FROM gateways g
     WHERE g.reclaimed_at IS NULL AND g.heartbeat_at > now() - live_within;
    granted := greatest(least(rpm - used_now, greatest(1, least(want, (rpm - used_now) / live))), 0);
    IF granted > 0 THEN
        UPDATE rate_windows SET used = used + granted
         WHERE api_key_id = key AND window_start = minute;
    END IF;
    DELETE FROM rate_windows WHERE api_key_id = key AND window_start < minute - interval '1 minute';
END
$$;
