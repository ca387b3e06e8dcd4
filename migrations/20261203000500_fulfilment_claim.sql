-- Fulfilment (issue 14): a worker's claim on a request, so the slow steps (the call to the
-- fulfilment system while the request is queued; the Salesforce write-back once it is decided)
-- are done by one delivery at a time without holding a database connection through them.
-- Until `claimed_until` passes, only the delivery that claimed the request acts on it; another
-- delivery of it comes back later (or, for a write-back, leaves it to the holder). A worker that
-- dies mid-step leaves the claim to expire (the step's timeout plus a margin), after which the
-- next delivery does the step again (the call under the same Idempotency-Key).
ALTER TABLE fulfilment_requests ADD COLUMN claimed_until timestamptz;
