-- Cluster mode: several gateways on this store. Times are the database's (now()).

-- When a send to the topic is acknowledged: 'local' (after the local flush) or 's3' (after
-- the data is also in the object store and the manifest).
ALTER TABLE topics ADD COLUMN durability TEXT NOT NULL DEFAULT 'local';

-- The consumer-journal offset up to which consumer_progress is complete, per node (each node
-- has its own journal in its own log); '' is a single gateway's row. Replaces
-- journal_checkpoint.
CREATE TABLE journal_offsets (
    node_id         TEXT PRIMARY KEY NOT NULL,
    journal_offset  BIGINT NOT NULL
);
INSERT INTO journal_offsets (node_id, journal_offset)
    SELECT '', journal_offset FROM journal_checkpoint WHERE id = 0;
DROP TABLE journal_checkpoint;

-- The shard count, fixed for the life of the cluster.
CREATE TABLE cluster_settings (
    id      INTEGER PRIMARY KEY NOT NULL CHECK (id = 0),
    shards  INTEGER NOT NULL CHECK (shards > 0)
);

-- Nodes: a row per node, its heartbeat refreshed every renew interval.
CREATE TABLE cluster_nodes (
    node_id       TEXT PRIMARY KEY NOT NULL,
    advertised    TEXT NOT NULL,
    peer          TEXT NOT NULL,
    leaving       BOOLEAN NOT NULL DEFAULT FALSE,
    heartbeat_at  TIMESTAMPTZ NOT NULL
);

-- A lease per shard; the epoch goes up at every acquisition and fences the holder's
-- manifest writes (tiered_segments of log_id 'shard-NNNN').
CREATE TABLE shard_leases (
    shard       INTEGER PRIMARY KEY NOT NULL CHECK (shard >= 0),
    owner       TEXT,
    epoch       BIGINT NOT NULL DEFAULT 0,
    expires_at  TIMESTAMPTZ
);
