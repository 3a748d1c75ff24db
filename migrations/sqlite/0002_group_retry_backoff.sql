-- A consumer group's own retry delays (space-separated durations, e.g. "1s 5s 30s"); NULL means
-- the gateway's consumer.retryBackoff.
ALTER TABLE consumer_groups ADD COLUMN retry_backoff TEXT;
