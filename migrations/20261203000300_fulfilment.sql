-- Fulfilment (issue 14): provisioning an order in the fulfilment system once Salesforce approved
-- it, and writing the result back. This row is the truth about a request; the broker messages
-- that carry its id (`fulfilment.requested`, `fulfilment.result`, through the outbox) are only
-- nudges to go and read it, so a lost, replayed or duplicated message decides nothing.
CREATE TABLE fulfilment_requests (
    -- The request id; also the `webhook-id` the fulfilment system sees, and what its callback
    -- names.
    id               uuid PRIMARY KEY,
    order_id         uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- The Salesforce Order Id the result is written back to (kept: the order's own column may
    -- change on a resync, the request's target must not).
    salesforce_id    text NOT NULL,
    -- What makes a trigger delivered twice the same request: `IdemKey__c`, else
    -- `event:<EventUuid>`, `status:<salesforce id>:<Status>`, `om:<notification id>`,
    -- `api:<uuid>`. Sent as the `Idempotency-Key` header, hence visible ASCII only.
    idem_key         text NOT NULL CONSTRAINT fulfilment_requests_idem_key_key UNIQUE
        CHECK (idem_key ~ '^[!-~]{1,255}$'),
    trigger          text NOT NULL
        CHECK (trigger IN ('platform_event', 'status_change', 'outbound_message', 'api')),
    correlation_id   text,
    -- queued → (accepted →) provisioned | failed; failed → queued when the same key comes again.
    state            text NOT NULL
        CHECK (state IN ('queued', 'accepted', 'provisioned', 'failed')),
    -- Why it failed, cut to a readable length by the writer (it comes from outside).
    reason           text CHECK (char_length(reason) <= 2000),
    -- Calls made to the fulfilment system for this request (reset when it is re-opened).
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the result reached the Salesforce order; NULL while it still has to be written.
    written_back_at  timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    decided_at       timestamptz
);

-- An order's requests, newest first (the API's detail, "already provisioned?").
CREATE INDEX fulfilment_requests_order_idx ON fulfilment_requests (order_id, created_at DESC);

-- At most one open request per order: a second trigger with another key (the event published
-- again while the first request is still under way) must not provision the order twice. The
-- writer locks the order first, so this only backs that rule up.
CREATE UNIQUE INDEX fulfilment_requests_open_order_key ON fulfilment_requests (order_id)
    WHERE state IN ('queued', 'accepted');

-- Open requests by age: a sweeper finds requests whose nudge was lost or whose callback never
-- came, without scanning the decided ones (nearly all rows).
CREATE INDEX fulfilment_requests_open_idx ON fulfilment_requests (updated_at)
    WHERE state IN ('queued', 'accepted');

-- Decided requests whose result has not reached Salesforce yet.
CREATE INDEX fulfilment_requests_write_back_idx ON fulfilment_requests (decided_at)
    WHERE state IN ('provisioned', 'failed') AND written_back_at IS NULL;
