-- Up Migration

-- Each subscription's rate bucket lives in its row, so every webhooks process draws on the same
-- one (it was in each process's memory: N processes could send N times max_rate_per_second).
-- Only claims change it (internal/webhooks/claim.ts), holding the row locked: the tokens left at
-- the last claim, and when that was; NULL is a full bucket.
ALTER TABLE webhooks ADD COLUMN rate_tokens double precision, ADD COLUMN rate_refill_time timestamptz;

-- Down Migration
ALTER TABLE webhooks DROP COLUMN rate_tokens, DROP COLUMN rate_refill_time;
