-- Initial metadata schema (SQLite).
CREATE TABLE topics (
    name        TEXT PRIMARY KEY NOT NULL,
    queue_nums  INTEGER NOT NULL CHECK (queue_nums > 0),
    topic_type  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE consumer_groups (
    name             TEXT PRIMARY KEY NOT NULL,
    fifo             INTEGER NOT NULL DEFAULT 0,
    retry_max_times  INTEGER NOT NULL DEFAULT 16,
    created_at       INTEGER NOT NULL
);

CREATE TABLE consumer_progress (
    group_name   TEXT NOT NULL,
    topic        TEXT NOT NULL,
    queue_id     INTEGER NOT NULL,
    ack_floor    INTEGER NOT NULL,
    acked_above  BLOB NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic, queue_id)
);

CREATE TABLE secrets (
    name   TEXT PRIMARY KEY NOT NULL,
    value  BLOB NOT NULL
);

-- Position in the consumer journal (system topic rmq_sys_pop_journal) up to which
-- consumer_progress is complete; journal records from here on are replayed at start.
CREATE TABLE journal_checkpoint (
    id              INTEGER PRIMARY KEY NOT NULL CHECK (id = 0),
    journal_offset  INTEGER NOT NULL
);
