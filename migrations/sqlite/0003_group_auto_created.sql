-- 1 for a consumer group created on first use (consumer.autoCreateSubscriptionGroup): it counts
-- against consumer.maxAutoCreatedGroups and may be retired while unused. 0 for groups created
-- explicitly (consumer.groups, admin API) and for every group stored before this column.
ALTER TABLE consumer_groups ADD COLUMN auto_created INTEGER NOT NULL DEFAULT 0;
