-- A sub-key may carry a rate limit in requests per minute, enforced by the gateway: a burst of
-- that many, then one every 60 s / N (429 beyond it). NULL means no limit. Set when the key is
-- provisioned; a later way to change it must add the column to the NOTIFY and changed_at
-- triggers' column lists (0001, 0002) so running gateways learn of it.

ALTER TABLE api_keys ADD COLUMN rate_limit_rpm integer
    CHECK (rate_limit_rpm IS NULL OR rate_limit_rpm BETWEEN 1 AND 1000000);
