-- Usage where operators look (docs/metrics.md): spend by model, tokens that read only metrics,
-- and budget alerts sent once per threshold per period.

-- Spend by the model a request named, per key and UTC month, written by the gateway's flush
-- with the per-minute rollups (the same claim, so never twice): the usage metrics' counter by
-- model reads a row per key and model, not one per minute. The rollups keep their key and stay
-- what a member's month is read from (a gateway of the previous version goes on writing only
-- them); what they held before this migration is counted here under the model ''.
CREATE TABLE usage_by_model (
    api_key_id         uuid NOT NULL,
    month              date NOT NULL CHECK (extract(day FROM month) = 1),
    model              text NOT NULL,
    n_requests         bigint NOT NULL DEFAULT 0 CHECK (n_requests >= 0),
    prompt_tokens      bigint NOT NULL DEFAULT 0,
    completion_tokens  bigint NOT NULL DEFAULT 0,
    cost_nanousd       bigint NOT NULL DEFAULT 0 CHECK (cost_nanousd >= 0),
    PRIMARY KEY (api_key_id, month, model)
);
CREATE INDEX usage_by_model_month_idx ON usage_by_model (month);

INSERT INTO usage_by_model (api_key_id, month, model, n_requests, prompt_tokens, completion_tokens, cost_nanousd)
SELECT api_key_id, date_trunc('month', minute AT TIME ZONE 'UTC')::date, '',
       sum(n_requests), sum(prompt_tokens), sum(completion_tokens), sum(cost_nanousd)
FROM usage_rollups GROUP BY 1, 2;

-- The foreign key last, and NOT VALID (the rows above come from rows that have one): adding it
-- locks api_keys against writes only for this moment, not for the backfill.
ALTER TABLE usage_by_model ADD CONSTRAINT usage_by_model_api_key_id_fkey
    FOREIGN KEY (api_key_id) REFERENCES api_keys (id) NOT VALID;

-- An admin token acts as its owner on /api/ ('admin', kca_...), or reads its org's usage
-- metrics on /metrics and nothing else ('metrics', kcm_..., a prefix earlier versions never
-- look up). A metrics token made on the command line has no user.
ALTER TABLE admin_tokens ADD COLUMN scope text NOT NULL DEFAULT 'admin'
    CHECK (scope IN ('admin', 'metrics'));
ALTER TABLE admin_tokens ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE admin_tokens ADD CHECK (scope = 'metrics' OR user_id IS NOT NULL);

-- A member's spend this month passed a share of their monthly budget (api_key_id NULL), or a
-- key's spend passed a share of its cap. The unique index makes each alert once per threshold
-- per period: a month for a member, the key's period for a key.
CREATE TABLE budget_alerts (
    id                 uuid PRIMARY KEY,
    org_id             uuid NOT NULL REFERENCES orgs (id),
    membership_id      uuid NOT NULL REFERENCES memberships (id),
    api_key_id         uuid REFERENCES api_keys (id),
    threshold_percent  integer NOT NULL CHECK (threshold_percent BETWEEN 1 AND 1000),
    period_start       timestamptz NOT NULL,
    spent_nanousd      bigint NOT NULL CHECK (spent_nanousd >= 0),
    limit_nanousd      bigint NOT NULL CHECK (limit_nanousd >= 0),
    created_at         timestamptz NOT NULL
);
CREATE UNIQUE INDEX budget_alerts_once_idx ON budget_alerts
    (membership_id, coalesce(api_key_id, '00000000-0000-0000-0000-000000000000'),
     threshold_percent, period_start);
CREATE INDEX budget_alerts_org_idx ON budget_alerts (org_id, created_at DESC);
CREATE INDEX budget_alerts_api_key_idx ON budget_alerts (api_key_id);

-- Each alert's messages: an email per recipient, and the webhook. A sender claims a due row by
-- moving next_attempt_at ahead, so two admin processes never send one row at once; a failed
-- try is retried later (backoff) until failed_at.
CREATE TABLE alert_deliveries (
    id               bigserial PRIMARY KEY,
    alert_id         uuid NOT NULL REFERENCES budget_alerts (id),
    channel          text NOT NULL CHECK (channel IN ('email', 'webhook')),
    recipient        text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    sent_at          timestamptz,
    failed_at        timestamptz,
    last_error       text CHECK (length(last_error) <= 1000)
);
CREATE INDEX alert_deliveries_alert_idx ON alert_deliveries (alert_id);
CREATE INDEX alert_deliveries_due_idx ON alert_deliveries (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
