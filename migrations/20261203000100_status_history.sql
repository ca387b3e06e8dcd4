-- The return path (issue 13): the business status Salesforce decides (Activated, Shipped, …)
-- reaches the order, with its history, and every change wakes whoever waits for the order.

-- Every business status an order has had, oldest first (by id). `at` is when the status was
-- decided where it was decided (the order's creation for `submitted`, the change event's commit
-- time for Salesforce); `recorded_at` is when orderbridge learned of it.
CREATE TABLE order_status_history (
    id           bigserial PRIMARY KEY,
    order_id     uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status       text NOT NULL,
    at           timestamptz NOT NULL,
    -- Who set it: `api` (creation) or the Salesforce path (`salesforce`).
    source       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_status_history_order_idx ON order_status_history (order_id, id);

-- Existing orders have only ever had the status they were created with.
INSERT INTO order_status_history (order_id, status, at, source)
SELECT id, 'submitted', created_at, 'api' FROM orders ORDER BY id;

-- When the current status was decided: a change decided earlier than this arrived late (change
-- events can be replayed, or overtake one another across subscriber restarts) and must not
-- overwrite the newer status. NULL (rows written by an older writer) reads as `created_at`.
ALTER TABLE orders ADD COLUMN status_at timestamptz;
UPDATE orders SET status_at = created_at;

-- The Salesforce change-event subscriber finds orders by the Salesforce Order Id.
CREATE INDEX orders_salesforce_id_idx ON orders (salesforce_id) WHERE salesforce_id IS NOT NULL;

-- Wake waiters (long-polls, event streams) whenever an order's version changes, whoever changed
-- it: the sync report applier, a resync, a status change, or a writer added later, none of which
-- needs to know about waiters. NOTIFY is delivered on commit only. The payload is
-- `<order uuid>:<version>`.
CREATE FUNCTION orders_notify_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_versions', NEW.id::text || ':' || NEW.version::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_notify_version_insert AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION orders_notify_version();
CREATE TRIGGER orders_notify_version_update AFTER UPDATE ON orders
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION orders_notify_version();
