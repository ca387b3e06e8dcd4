-- The Salesforce Pub/Sub subscriber (sf-subscriber, issue 13): where each topic's stream stands,
-- which events were already handled, and what could not be read.

-- One row per subscribed topic. `replay_id` is where a restarted subscriber resumes (CUSTOM
-- replay): the replay id of the last event whose effects committed, or a keepalive's latest
-- replay id when the server owed us events and had none (nothing newer exists then). It is
-- advanced in the same transaction as the effects of the events before it, so a crash replays
-- at most the batch that did not commit. Replay ids are opaque: stored exactly, never compared.
CREATE TABLE pubsub_cursors (
    topic             text PRIMARY KEY,
    replay_id         bytea,
    -- The latest replay id the server reported (FetchResponse.latest_replay_id), for lag checks.
    latest_replay_id  bytea,
    -- When the last event was received (NULL: none yet); the start of the window a lost replay
    -- position may have missed.
    last_event_at     timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Events already handled, by their event id (ProducerEvent.id, the EventUuid): delivery is at
-- least once, so a replayed event finds its id here and changes nothing. Purged after the
-- subscriber's retention (longer than the bus's 72 h, so a replay never outlives its row).
CREATE TABLE pubsub_inbox (
    event_id     text PRIMARY KEY,
    topic        text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pubsub_inbox_received_at_idx ON pubsub_inbox (received_at);

-- Events that could not be read (undecodable Avro, a schema that cannot be fetched, a
-- header that makes no sense): kept with the raw bytes and the reason; the stream goes on.
CREATE TABLE pubsub_dead_letters (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,
    schema_id    text NOT NULL,
    replay_id    bytea,
    event_id     text,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pubsub_dead_letters_recorded_at_idx ON pubsub_dead_letters (recorded_at);

-- Windows in which events may have been missed: the stored replay id was no longer valid (past
-- the bus's retention) and the subscriber fell back to another preset. An operator closes one
-- with `orderbridge reconcile statuses --since <missed_from>`.
CREATE TABLE pubsub_gaps (
    id                bigserial PRIMARY KEY,
    topic             text NOT NULL,
    stored_replay_id  bytea,
    -- The last event received before the gap (NULL: never received one; the window is unknown).
    missed_from       timestamptz,
    detected_at       timestamptz NOT NULL DEFAULT now(),
    -- The preset the subscriber fell back to: `latest` or `earliest`.
    fallback          text NOT NULL,
    closed_at         timestamptz
);
