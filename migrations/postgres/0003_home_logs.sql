-- Home logs (cluster mode). Times are the database's (now()).
--
-- A node's home log is its own message log (log id 'node-<id>'): its POP journal, its timers
-- (scheduled messages) and its half (transactional) messages. While the node is dead, another
-- node adopts its pending scheduled and half messages: it copies them into its own home log.
-- The cut says below which offsets of the dead node's log they were adopted: when the node is
-- back, it applies the cut to its own log first and then fires or resolves only those above.
CREATE TABLE home_logs (
    node_id           TEXT PRIMARY KEY NOT NULL,
    -- Cumulative: offsets of queue 0 of the timer topic and of the half queue below which
    -- the messages belong to the nodes that adopted them.
    cut_scheduled     BIGINT NOT NULL DEFAULT 0,
    cut_half          BIGINT NOT NULL DEFAULT 0,
    -- The node that adopted last, if any.
    adopted_by        TEXT,
    -- The last adoption is not applied to the node's own log yet: it must be before the node
    -- fires timers or resolves transactions again.
    unapplied         BOOLEAN NOT NULL DEFAULT FALSE,
    -- The node served its home log since the last adoption: there may be work to adopt.
    dirty             BOOLEAN NOT NULL DEFAULT FALSE,
    -- A node adopting it right now, until claim_expires_at (a claim whose time is past is
    -- void).
    claimed_by        TEXT,
    claim_expires_at  TIMESTAMPTZ
);
