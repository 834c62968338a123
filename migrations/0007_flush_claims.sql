-- Each gateway flush claims its own id here, in the same statement that adds its spend and
-- rollups. A flush retried after a lost reply (the statement committed, but the connection
-- dropped before the gateway heard back) finds its id claimed and applies nothing, so spend is
-- never added twice. Maintenance deletes claims older than a week: a retry never waits that
-- long while its gateway lives, and a restarted gateway has no batches to retry.

CREATE TABLE spend_flushes (
    id uuid PRIMARY KEY,
    flushed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spend_flushes_flushed_at_idx ON spend_flushes (flushed_at);
