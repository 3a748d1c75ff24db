-- When a send to the topic is acknowledged: 'local' (after the local flush) or 's3' (after
-- the data is also in the object store and the manifest).
ALTER TABLE topics ADD COLUMN durability TEXT NOT NULL DEFAULT 'local';

-- The consumer-journal offset up to which consumer_progress is complete, per node; '' is a
-- single gateway's row. Replaces journal_checkpoint.
CREATE TABLE journal_offsets (
    node_id         TEXT PRIMARY KEY NOT NULL,
    journal_offset  INTEGER NOT NULL
);
INSERT INTO journal_offsets (node_id, journal_offset)
    SELECT '', journal_offset FROM journal_checkpoint WHERE id = 0;
DROP TABLE journal_checkpoint;
