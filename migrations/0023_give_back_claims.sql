-- A give-back is applied once, whatever happens to its reply (ARCHITECTURE.md, "Leases").
--
-- A gateway gives unused slices of its leases back with `lease_give_back` (migration 0015).
-- Until now, when the statement committed but the connection dropped before the gateway heard
-- back, the gateway took the slice as not given back and went on spending it, while Postgres
-- counted it free and could grant it again: the key's spend could pass its cap by the slice.
--
-- Now each give-back claims an id of the gateway's choosing here, in the statement that applies
-- it. A gateway that does not know whether its give-back went through keeps the slice unusable
-- and sends the same id again until it gets an answer: a give-back that had committed finds its
-- id claimed and applies nothing. Maintenance deletes claims older than a week, as it does the
-- flushes' (migration 0007).
--
-- Upgrading: expand only (a new table, and a new five-argument function beside the old one,
-- which an older gateway keeps calling).

CREATE TABLE lease_give_backs (
    id uuid PRIMARY KEY,
    given_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lease_give_backs_given_at_idx ON lease_give_backs (given_at);

-- Gives `amount` of `gateway`'s lease of `key` back, as the four-argument `lease_give_back`
-- does, once for each `claim`: true when applied now, false when the claim was made before.
-- The claim is taken before the key's spend row is locked, so a retry whose first attempt is
-- still running waits for its outcome rather than deadlocking with it.
CREATE FUNCTION lease_give_back(key uuid, gateway uuid, amount bigint, at timestamptz,
                                claim uuid)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO lease_give_backs (id) VALUES (claim) ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM lease_give_back(key, gateway, amount, at);
    RETURN true;
END
$$;
