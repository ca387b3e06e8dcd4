-- Tenant isolation in Salesforce (issue 12). A customer's Account was keyed by the client's own
-- customer id alone, so client B posting `CUST-42` renamed client A's account. Every Salesforce
-- key not made from the order id now starts with the client's external-id prefix, kept here and
-- carried by every `order.submitted` event (`data.client`).
--
-- A prefix is empty or 1 to 40 of [A-Za-z0-9_-] followed by ':'. A non-empty prefix has exactly
-- one ':', at its end, so two clients' keys `prefix || customer id` never meet; an empty prefix
-- (keys as they were before this migration) is only safe for customer ids without ':', which
-- the API and the sync worker enforce for such a client.
ALTER TABLE api_clients ADD COLUMN external_id_prefix text;

-- Existing clients. A deployment with exactly one client keeps its keys: the empty prefix, so
-- nothing changes in Salesforce. With several, each gets a prefix from its id: their next order
-- per customer writes a new, scoped account (see README "Tenant isolation" for the old ones).
UPDATE api_clients
SET external_id_prefix = CASE
    WHEN (SELECT count(*) FROM api_clients) = 1 THEN ''
    ELSE replace(id::text, '-', '') || ':'
END;

ALTER TABLE api_clients ALTER COLUMN external_id_prefix SET NOT NULL;
ALTER TABLE api_clients ADD CONSTRAINT api_clients_external_id_prefix_check
    CHECK (external_id_prefix ~ '^([A-Za-z0-9_-]{1,40}:)?$');
-- Salesforce matches external ids case-insensitively, so prefixes must differ regardless of case.
CREATE UNIQUE INDEX api_clients_external_id_prefix_key ON api_clients (lower(external_id_prefix));

-- New clients get a prefix unless one is given: the client's name made into letters, digits,
-- '-' and '_' (`Acme GmbH` → `acme-gmbh:`), readable in Salesforce; or, when that is empty or
-- taken, the client id's 32 hex digits. A trigger, so every way of creating a client gets one.
CREATE FUNCTION api_clients_default_prefix() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    slug text;
BEGIN
    IF NEW.external_id_prefix IS NULL THEN
        slug := left(trim(BOTH '-' FROM lower(regexp_replace(NEW.name, '[^A-Za-z0-9_-]+', '-', 'g'))), 40);
        IF slug <> '' AND NOT EXISTS (
            SELECT 1 FROM api_clients WHERE lower(external_id_prefix) = slug || ':'
        ) THEN
            NEW.external_id_prefix := slug || ':';
        ELSE
            NEW.external_id_prefix := replace(NEW.id::text, '-', '') || ':';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER api_clients_default_prefix BEFORE INSERT ON api_clients
    FOR EACH ROW EXECUTE FUNCTION api_clients_default_prefix();
