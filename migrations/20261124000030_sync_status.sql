-- The return path: the sync worker's `order.sync_status` reports are applied to the order by the
-- outbox relay process. Reports can arrive late, twice, or out of order (at-least-once delivery,
-- retries, competing consumers, dead letters replayed hours later), so applying one must be
-- idempotent and must never let an older fact overwrite a newer one. These two columns are what
-- the apply rule compares against.

-- The `data.version` of the `order.submitted` event the current sync state is about. A report
-- about an older event (`order_version` below this) is stale: a resync has sent a newer event
-- since, and only reports about that one may change the order. An order's first event carries
-- version 1, hence the default; a resync sets it to the version its new event carries.
ALTER TABLE orders ADD COLUMN sync_event_version bigint NOT NULL DEFAULT 1;

-- `occurred_at` of the last report applied for that event version (NULL: none yet). Within one
-- event version a `synced` report is final and otherwise the later report wins, so a `retrying`
-- that was delayed in a retry queue cannot overwrite the `failed` or `retrying` written after it.
ALTER TABLE orders ADD COLUMN sync_reported_at timestamptz;
