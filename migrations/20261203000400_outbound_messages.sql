-- Salesforce outbound messages (SOAP notifications) received by order-api (issue 14). One row
-- per notification: its id is the dedupe key (Salesforce repeats a notification until it is
-- acknowledged, and may send it again after an Ack), so a repeat finds its row and changes
-- nothing. The row is written in the same transaction as its effects (status + history), and
-- only after that commit is the Ack sent.
CREATE TABLE outbound_messages (
    notification_id  text PRIMARY KEY,
    organization_id  text NOT NULL,
    action_id        text NOT NULL,
    -- The sObject type from xsi:type (`Order`), and its record id (`sf:Id`, may be absent).
    object           text NOT NULL,
    record_id        text,
    -- The selected fields as sent: {"Status": "Activated", "Description": null (xsi:nil)}.
    fields           jsonb NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbound_messages_received_at_idx ON outbound_messages (received_at);
