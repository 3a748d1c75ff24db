-- Metadata schema (PostgreSQL): the same tables as migrations/sqlite/0001..0005, in one step.
-- Log positions and offsets are u64 in the gateway, stored as BIGINT (they stay below 2^63).
-- Row counts grow with topics, groups, queues and tiered segments, never with messages.
CREATE TABLE topics (
    name        TEXT PRIMARY KEY NOT NULL,
    queue_nums  BIGINT NOT NULL CHECK (queue_nums > 0),
    topic_type  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE consumer_groups (
    name             TEXT PRIMARY KEY NOT NULL,
    fifo             BOOLEAN NOT NULL DEFAULT FALSE,
    retry_max_times  INTEGER NOT NULL DEFAULT 16,
    -- The group's own retry delays (space-separated durations); NULL: consumer.retryBackoff.
    retry_backoff    TEXT,
    -- BROADCASTING: every consumer client gets every message, with its own progress.
    broadcast        BOOLEAN NOT NULL DEFAULT FALSE,
    -- Created on first use (consumer.autoCreateSubscriptionGroup); may be retired while unused.
    auto_created     BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       BIGINT NOT NULL
);

-- One row per (consumer, topic, queue), rewritten in batches by the progress flusher.
CREATE TABLE consumer_progress (
    group_name   TEXT NOT NULL,
    topic        TEXT NOT NULL,
    queue_id     BIGINT NOT NULL,
    ack_floor    BIGINT NOT NULL,
    acked_above  BYTEA NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (group_name, topic, queue_id)
);

CREATE TABLE secrets (
    name   TEXT PRIMARY KEY NOT NULL,
    value  BYTEA NOT NULL
);

-- Position in the consumer journal (system topic rmq_sys_pop_journal) up to which
-- consumer_progress is complete; journal records from here on are replayed at start.
CREATE TABLE journal_checkpoint (
    id              INTEGER PRIMARY KEY NOT NULL CHECK (id = 0),
    journal_offset  BIGINT NOT NULL
);

-- The tiering manifest: sealed log segments stored in the object store, and where each
-- queue's messages lie in them.
CREATE TABLE tiered_segments (
    log_id          TEXT NOT NULL,
    base            BIGINT NOT NULL,
    size            BIGINT NOT NULL,
    object_key      TEXT NOT NULL,
    object_size     BIGINT NOT NULL,
    first_store_ms  BIGINT NOT NULL,
    last_store_ms   BIGINT NOT NULL,
    uploaded_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (log_id, base)
);

CREATE TABLE tiered_segment_queues (
    log_id        TEXT NOT NULL,
    base          BIGINT NOT NULL,
    topic         TEXT NOT NULL,
    queue_id      BIGINT NOT NULL,
    first_offset  BIGINT NOT NULL,
    end_offset    BIGINT NOT NULL,
    index_pos     BIGINT NOT NULL,
    PRIMARY KEY (log_id, base, topic, queue_id),
    FOREIGN KEY (log_id, base) REFERENCES tiered_segments (log_id, base) ON DELETE CASCADE
);
