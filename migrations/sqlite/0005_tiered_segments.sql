-- The tiering manifest: sealed log segments stored in the object store, and where each
-- queue's messages lie in them. One row per segment and per (segment, queue): the row
-- count grows with segments and queues, never with messages.
CREATE TABLE tiered_segments (
    log_id          TEXT NOT NULL,
    base            INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    object_key      TEXT NOT NULL,
    object_size     INTEGER NOT NULL,
    first_store_ms  INTEGER NOT NULL,
    last_store_ms   INTEGER NOT NULL,
    uploaded_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (log_id, base)
);

CREATE TABLE tiered_segment_queues (
    log_id        TEXT NOT NULL,
    base          INTEGER NOT NULL,
    topic         TEXT NOT NULL,
    queue_id      INTEGER NOT NULL,
    first_offset  INTEGER NOT NULL,
    end_offset    INTEGER NOT NULL,
    index_pos     INTEGER NOT NULL,
    PRIMARY KEY (log_id, base, topic, queue_id)
);
