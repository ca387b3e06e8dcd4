-- orderbridge schema, version 1: API clients and keys, orders and their lines, idempotency keys
-- and the transactional outbox.

CREATE TABLE api_clients (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CONSTRAINT api_clients_name_key UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- A key is `obk_<id>_<secret>`; only the SHA-256 of the whole key is kept. Keys are 256-bit
-- random, so a fast hash is enough: there is nothing to brute-force with a dictionary.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    client_id    uuid NOT NULL REFERENCES api_clients (id) ON DELETE CASCADE,
    key_hash     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

CREATE TABLE orders (
    id                  uuid PRIMARY KEY,
    client_id           uuid NOT NULL REFERENCES api_clients (id),
    client_ref          text NOT NULL,
    customer            jsonb NOT NULL,
    billing_address     jsonb,
    shipping_address    jsonb,
    currency            text NOT NULL,
    notes               text,
    total               numeric NOT NULL CHECK (total >= 0),
    status              text NOT NULL,
    sync_state          text NOT NULL DEFAULT 'pending'
        CHECK (sync_state IN ('pending', 'published', 'retrying', 'synced', 'failed')),
    salesforce_id       text,
    sync_attempts       integer NOT NULL DEFAULT 0,
    last_error_code     text,
    last_error_message  text,
    synced_at           timestamptz,
    -- Bumped on every change; the ETag and the "stale event" check both read it.
    version             bigint NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT orders_client_ref_key UNIQUE (client_id, client_ref)
);

-- Every change to an order bumps its version and updated_at, whoever makes it: the ETag and the
-- "stale event" check rely on it, so the database enforces it rather than each writer.
CREATE FUNCTION orders_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_bump_version BEFORE UPDATE ON orders
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION orders_bump_version();

-- Ids are UUIDv7, so `id DESC` is newest first: listing and cursor paging use these.
CREATE INDEX orders_client_id_idx ON orders (client_id, id DESC);
CREATE INDEX orders_client_sync_state_idx ON orders (client_id, sync_state, id DESC);

CREATE TABLE order_lines (
    order_id     uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_number  integer NOT NULL CHECK (line_number >= 1),
    sku          text NOT NULL,
    name         text NOT NULL,
    quantity     integer NOT NULL CHECK (quantity >= 1),
    unit_price   numeric NOT NULL CHECK (unit_price >= 0),
    line_total   numeric NOT NULL,
    PRIMARY KEY (order_id, line_number)
);

-- One row per (client, Idempotency-Key) whose request succeeded, written in the same transaction
-- as the order, so a key is never recorded for an order that does not exist, nor the reverse.
CREATE TABLE idempotency_keys (
    client_id        uuid NOT NULL REFERENCES api_clients (id) ON DELETE CASCADE,
    key              text NOT NULL,
    request_hash     bytea NOT NULL,
    response_status  smallint NOT NULL,
    -- The exact bytes first sent, so a replay is byte-for-byte the original response.
    response_body    bytea NOT NULL,
    order_id         uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (client_id, key)
);
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);

-- The transactional outbox. `position` gives a total order for reading, but it is NOT a safe
-- "read everything after N" cursor: identity values are taken before commit and transactions
-- commit out of order. Readers claim unpublished rows with FOR UPDATE SKIP LOCKED, or read by
-- `transaction_id` below pg_snapshot_xmin(pg_current_snapshot()) as Watermill does.
CREATE TABLE outbox (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid NOT NULL CONSTRAINT outbox_event_id_key UNIQUE,
    aggregate_type  text NOT NULL,
    aggregate_id    uuid NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}'::jsonb,
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (position) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake relays on commit. NOTIFY is transactional (delivered only if the insert commits) and
-- deduplicated within a transaction; relays also poll, so a lost notification strands nothing.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orderbridge_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
