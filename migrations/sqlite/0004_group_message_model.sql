-- A consumer group's message model: 0 = CLUSTERING (the group shares the messages), 1 =
-- BROADCASTING (every consumer client of the group gets every message, with its own progress).
ALTER TABLE consumer_groups ADD COLUMN broadcast INTEGER NOT NULL DEFAULT 0;
