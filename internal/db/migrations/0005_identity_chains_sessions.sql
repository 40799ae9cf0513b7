-- Up Migration

-- A key made by a key acts for the principal at the root of its chain and dies with any key
-- above it. Each key keeps that root and its ancestors (root first, parent last), so the check
-- made on every call is one lookup instead of a walk up the creators.
ALTER TABLE api_keys
  ADD COLUMN parent_key_id text,
  ADD COLUMN root_creator text,
  ADD COLUMN ancestor_key_ids text[] NOT NULL DEFAULT '{}';

WITH RECURSIVE chain AS (
  SELECT tenant_id, api_key_id, creator AS root_creator, ARRAY[]::text[] AS ancestor_key_ids
  FROM api_keys WHERE creator NOT LIKE 'apiKeys/%'
  UNION ALL
  SELECT k.tenant_id, k.api_key_id, c.root_creator, c.ancestor_key_ids || c.api_key_id
  FROM api_keys k JOIN chain c ON k.tenant_id = c.tenant_id AND k.creator = 'apiKeys/' || c.api_key_id
)
UPDATE api_keys k SET root_creator = chain.root_creator, ancestor_key_ids = chain.ancestor_key_ids
FROM chain WHERE k.tenant_id = chain.tenant_id AND k.api_key_id = chain.api_key_id;

UPDATE api_keys SET parent_key_id = substr(creator, length('apiKeys/') + 1) WHERE creator LIKE 'apiKeys/%';
-- A key whose parent no longer exists has no root to act for: its chain names the missing
-- parent, which the check never finds active, so it is refused.
UPDATE api_keys SET root_creator = creator, ancestor_key_ids = ARRAY[parent_key_id] WHERE root_creator IS NULL;
ALTER TABLE api_keys ALTER COLUMN root_creator SET NOT NULL;
CREATE INDEX api_keys_root_creator ON api_keys (tenant_id, root_creator);
CREATE INDEX api_keys_ancestors ON api_keys USING gin (ancestor_key_ids);

-- Secrets of the deployment that every process reads and no client sees, such as the key that
-- authenticates identity entries in Redis (so a value written there by anyone else is ignored).
CREATE TABLE server_secrets (
  name text PRIMARY KEY,
  secret bytea NOT NULL,
  create_time timestamptz NOT NULL DEFAULT now()
);

-- A password change or reset bumps the epoch: access tokens carry the epoch they were issued
-- in, and refresh tokens the epoch of their login, so both of an earlier epoch are refused.
ALTER TABLE users ADD COLUMN session_epoch integer NOT NULL DEFAULT 0;
ALTER TABLE refresh_tokens ADD COLUMN session_epoch integer NOT NULL DEFAULT 0;

-- When the login a refresh token descends from happened: a session ends a fixed time after it,
-- however often it is refreshed.
ALTER TABLE refresh_tokens ADD COLUMN session_start_time timestamptz;
UPDATE refresh_tokens r SET session_start_time = f.start
FROM (SELECT family_id, min(create_time) AS start FROM refresh_tokens GROUP BY family_id) f
WHERE r.family_id = f.family_id;
ALTER TABLE refresh_tokens ALTER COLUMN session_start_time SET DEFAULT now();
ALTER TABLE refresh_tokens ALTER COLUMN session_start_time SET NOT NULL;

-- Down Migration
ALTER TABLE refresh_tokens DROP COLUMN session_start_time;
ALTER TABLE refresh_tokens DROP COLUMN session_epoch;
ALTER TABLE users DROP COLUMN session_epoch;
DROP TABLE server_secrets;
DROP INDEX api_keys_ancestors;
DROP INDEX api_keys_root_creator;
ALTER TABLE api_keys DROP COLUMN ancestor_key_ids, DROP COLUMN root_creator, DROP COLUMN parent_key_id;
