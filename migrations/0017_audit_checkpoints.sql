-- Where an org's hash chain was last found intact, so that /audit checks only the rows after it
-- on each view (the whole chain at most once a day): the row's sequence number and hash, and
-- when the whole chain was last checked. `keycap audit` always checks the whole chain, and
-- `keycap audit verify --from HASH` the rows from a hash kept elsewhere (`keycap audit head`).

CREATE TABLE audit_checkpoints (
    org_id             uuid PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    seq                bigint NOT NULL,
    hash               bytea NOT NULL,
    whole_checked_at   timestamptz NOT NULL
);
