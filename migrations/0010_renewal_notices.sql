-- A renewal (a key's `period_start` changing) is announced twice on `keycap_changes`: first
-- `api_keys_renewed:<id>`, then the usual `api_keys:<id>`. A month boundary renews every monthly
-- key at once; a gateway that reads the first notice applies the second in a slower lane, after
-- one fold of the spend journal for many keys, so that a revocation announced behind them is not
-- kept waiting. A gateway that predates this notice ignores the unknown table name and applies
-- the second notice as before (expand, then contract).
-- Notices of one transaction reach a listener together and in the order sent, so a row's second
-- notice comes right after its first, unless the transaction had already announced that row:
-- Postgres sends a repeated notice once, and then the first is followed by another row's.
CREATE OR REPLACE FUNCTION notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'api_keys' AND TG_OP = 'UPDATE' THEN
        -- Nested: only `api_keys` rows have the column.
        IF NEW.period_start IS DISTINCT FROM OLD.period_start THEN
            PERFORM pg_notify('keycap_changes', 'api_keys_renewed:' || NEW.id::text);
        END IF;
    END IF;
    PERFORM pg_notify('keycap_changes', TG_TABLE_NAME || ':' || NEW.id::text);
    RETURN NULL;
END
$$;
