-- Up Migration

-- A job row is updated two or three times per stage (claim, commit, cancel). With state in an
-- index every one of those updates wrote a new entry into each of the table's indexes; without
-- it, and with room left on each page, Postgres updates the row in place (a HOT update) and
-- touches no index. ListJobs' state filter reads jobs_create_time instead. The index also led
-- the planner, on a fresh table, to scan every QUEUED job for a claim of sixteen.
DROP INDEX jobs_state;
ALTER TABLE jobs SET (fillfactor = 70);

-- The outbox holds only messages not yet known to be published: a published row is deleted
-- (one cheap delete instead of an update that writes a new row version and index entries).
DELETE FROM outbox WHERE published_at IS NOT NULL;
DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at;
CREATE INDEX outbox_due ON outbox (available_time, create_time);

-- Down Migration
DROP INDEX outbox_due;
ALTER TABLE outbox ADD COLUMN published_at timestamptz;
CREATE INDEX outbox_unpublished ON outbox (available_time) WHERE published_at IS NULL;
ALTER TABLE jobs RESET (fillfactor);
CREATE INDEX jobs_state ON jobs (tenant_id, state, create_time);
