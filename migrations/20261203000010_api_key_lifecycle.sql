-- API key lifecycle (`orderbridge keys create|list|revoke|rotate`): a key may carry a name for
-- the operator, may expire, and records roughly when it was last used, so an operator can tell a
-- forgotten key from a live one before revoking it.

-- What the key is for ("checkout service", "rotated from 3f2a…"); free text, optional.
ALTER TABLE api_keys ADD COLUMN name text;
-- After this instant the key no longer authenticates. NULL: it does not expire. A rotation sets
-- the old key's expiry to the end of the grace period.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
-- Last successful authentication, written at most once a minute per key (the API caches keys,
-- so this is "used around then", not an access log).
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;
