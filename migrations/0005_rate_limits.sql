-- A sub-key may carry a rate limit: at most this many requests per minute, enforced by the
-- gateway (429 beyond it). NULL means no limit. Set when the key is provisioned.

ALTER TABLE api_keys ADD COLUMN rate_limit_rpm integer
    CHECK (rate_limit_rpm IS NULL OR rate_limit_rpm BETWEEN 1 AND 1000000);
