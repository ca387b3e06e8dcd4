-- pgbench script: the writes of one POST /v1/orders, straight on Postgres, one transaction per
-- order (order, 3 lines, first status-history row, outbox event, idempotency key). The physical
-- limit for intake.
--   pgbench -n -c 64 -j 2 -T 30 -D client=<api_clients.id> -f tools/bench/intake-pgbench.sql <db>
BEGIN;
SELECT gen_random_uuid() AS id, gen_random_uuid() AS event_id \gset
SELECT pg_try_advisory_xact_lock(hashtextextended('idempotency:' || ':id', 0));
INSERT INTO orders (id, client_id, client_ref, customer, shipping_address, currency, total,
                    status, sync_state, version, created_at, updated_at, status_at)
VALUES (':id', ':client', 'pgb-' || ':id',
        '{"external_id":"CUST-42","name":"Acme GmbH","email":"buyer@acme.example","phone":null}',
        '{"line1":"Hauptstrasse 1","line2":null,"city":"Berlin","postal_code":"10115","region":null,"country":"DE"}',
        'EUR', 40.72, 'submitted', 'pending', 1, now(), now(), now());
INSERT INTO order_lines (order_id, line_number, sku, name, quantity, unit_price, line_total)
SELECT ':id', * FROM UNNEST(ARRAY[1,2,3], ARRAY['SKU-RED-MUG','SKU-TEA','SKU-SPOON'],
                            ARRAY['Red mug','Green tea','Spoon'], ARRAY[2,3,1],
                            ARRAY[12.50,4.99,0.75]::numeric[], ARRAY[25.00,14.97,0.75]::numeric[]);
INSERT INTO order_status_history (order_id, status, at, source)
VALUES (':id', 'submitted', now(), 'api');
INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
VALUES (':event_id', 'order', ':id', 'order.submitted',
        jsonb_build_object('id', ':event_id', 'type', 'order.submitted', 'version', 1,
                           'occurred_at', now(), 'correlation_id', ':id',
                           'data', jsonb_build_object('id', ':id', 'client_ref', 'pgb-' || ':id',
                               'customer', '{"external_id":"CUST-42","name":"Acme GmbH","email":"buyer@acme.example","phone":null}'::jsonb,
                               'lines', '[{"line_number":1,"sku":"SKU-RED-MUG","name":"Red mug","quantity":2,"unit_price":"12.50","line_total":"25.00"},{"line_number":2,"sku":"SKU-TEA","name":"Green tea","quantity":3,"unit_price":"4.99","line_total":"14.97"},{"line_number":3,"sku":"SKU-SPOON","name":"Spoon","quantity":1,"unit_price":"0.75","line_total":"0.75"}]'::jsonb,
                               'total', '40.72', 'status', 'submitted')),
        jsonb_build_object('correlation_id', ':id', 'schema_version', 1));
INSERT INTO idempotency_keys (client_id, key, request_hash, response_status, response_body,
                              order_id, expires_at)
VALUES (':client', 'pgb-' || ':id', sha256(':id'::bytea), 201,
        convert_to(repeat('x', 900), 'UTF8'), ':id', now() + interval '24 hours');
COMMIT;
