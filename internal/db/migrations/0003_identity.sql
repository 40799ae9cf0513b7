-- Up Migration

-- Users sign in with email and password. Ids are short random slugs ("users/{user_id}").
CREATE TABLE users (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  user_id text NOT NULL,
  email text NOT NULL,
  display_name text NOT NULL DEFAULT '',
  -- Role names: viewer, operator, admin.
  roles text[] NOT NULL,
  disabled boolean NOT NULL DEFAULT false,
  -- Argon2id PHC string; never leaves this table.
  password_hash text NOT NULL,
  -- Bumped by every change; the etag is derived from it.
  revision integer NOT NULL DEFAULT 1,
  create_request_id uuid,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  update_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  last_login_time timestamptz,
  PRIMARY KEY (tenant_id, user_id)
);
CREATE UNIQUE INDEX users_email ON users (tenant_id, lower(email));
CREATE INDEX users_email_any_tenant ON users (lower(email));
CREATE UNIQUE INDEX users_create_request_id ON users (tenant_id, create_request_id) WHERE create_request_id IS NOT NULL;

-- Refresh tokens are opaque; only their SHA-256 is stored. Every rotation adds a row to the
-- family of the login it descends from, so presenting a spent token can revoke the family.
CREATE TABLE refresh_tokens (
  token_hash bytea PRIMARY KEY,
  family_id uuid NOT NULL,
  tenant_id uuid NOT NULL,
  user_id text NOT NULL,
  create_time timestamptz NOT NULL DEFAULT now(),
  expire_time timestamptz NOT NULL,
  spent_time timestamptz,
  revoke_time timestamptz,
  FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (tenant_id, user_id);

-- API keys: the secret is shown once; only its SHA-256 is stored (it has 256 bits of entropy,
-- so a slow hash adds nothing and would cost every request).
CREATE TABLE api_keys (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  api_key_id text NOT NULL,
  prefix text NOT NULL,
  secret_hash bytea NOT NULL UNIQUE,
  display_name text NOT NULL DEFAULT '',
  roles text[] NOT NULL,
  creator text NOT NULL,
  create_request_id uuid,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  expire_time timestamptz,
  last_used_time timestamptz,
  revoke_time timestamptz,
  PRIMARY KEY (tenant_id, api_key_id)
);
CREATE UNIQUE INDEX api_keys_create_request_id ON api_keys (tenant_id, create_request_id) WHERE create_request_id IS NOT NULL;
CREATE INDEX api_keys_create_time ON api_keys (tenant_id, create_time, api_key_id);

-- Keys that sign access tokens. The private JWK is sealed with AES-256-GCM under a key that
-- is not in the database (JOBMESH_KEY_ENCRYPTION_KEY or a key file under the data dir).
-- A retired key signs nothing new but stays in the JWKS until the tokens it signed expire.
CREATE TABLE signing_keys (
  kid text PRIMARY KEY,
  alg text NOT NULL,
  public_jwk jsonb NOT NULL,
  private_jwk_sealed bytea NOT NULL,
  create_time timestamptz NOT NULL DEFAULT now(),
  retire_time timestamptz
);

-- Down Migration
DROP TABLE signing_keys;
DROP TABLE api_keys;
DROP TABLE refresh_tokens;
DROP TABLE users;
