-- Outbox relay (issue 3): stamp outbox rows when they are inserted, not when their transaction
-- began. The insert is the last statement of the API's transaction, so `created_at` is then within
-- a millisecond of the commit, which is what the relay's commit→confirm lag histogram and the
-- backlog-age gauge need. (`now()` is the transaction start: a slow transaction would look like
-- relay lag.)
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
