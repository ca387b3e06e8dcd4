-- Partitioned relays (RELAY_PARTITIONS): the outbox is split into N partitions by aggregate id,
-- and each partition is published by one relay at a time. The partition of a row is the last 32
-- bits of its aggregate id modulo N: random in both UUIDv4 and UUIDv7 (whose first bits are a
-- timestamp, which would put a burst of orders in one partition), independent of Postgres'
-- internal hash functions, and computed the same way in Rust
-- (`outbox_relay::outbox::partition_of`, tested against this function). Computed at read time
-- rather than stored, so N can change without rewriting the table.
CREATE FUNCTION outbox_partition(aggregate_id uuid, partitions integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN mod(('x' || right(aggregate_id::text, 8))::bit(32)::bigint, partitions)::integer;
