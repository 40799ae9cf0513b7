-- Up Migration

-- Per-deployment settings that every replica must share, such as the key that signs page tokens.
CREATE TABLE settings (
  key text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO settings (key, value)
VALUES ('page_token_secret', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));

CREATE TABLE tenants (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  slug text NOT NULL UNIQUE,
  display_name text NOT NULL DEFAULT '',
  create_time timestamptz NOT NULL DEFAULT now()
);

-- Timestamps are kept at millisecond precision: they are keys of keyset pagination and
-- JavaScript dates carry milliseconds only.
CREATE TABLE pipelines (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  pipeline_id text NOT NULL,
  display_name text NOT NULL DEFAULT '',
  description text NOT NULL DEFAULT '',
  labels jsonb NOT NULL DEFAULT '{}',
  current_version integer NOT NULL,
  built_in boolean NOT NULL DEFAULT false,
  create_request_id uuid,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  update_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  delete_time timestamptz,
  PRIMARY KEY (tenant_id, pipeline_id)
);
CREATE UNIQUE INDEX pipelines_create_request_id ON pipelines (tenant_id, create_request_id)
  WHERE create_request_id IS NOT NULL;
CREATE INDEX pipelines_create_time ON pipelines (tenant_id, create_time, pipeline_id);
CREATE INDEX pipelines_update_time ON pipelines (tenant_id, update_time, pipeline_id);

-- Immutable versions: a row is written once and never updated, so jobs can snapshot them and
-- caches can keep them.
CREATE TABLE pipeline_versions (
  tenant_id uuid NOT NULL,
  pipeline_id text NOT NULL,
  version integer NOT NULL,
  display_name text NOT NULL DEFAULT '',
  description text NOT NULL DEFAULT '',
  labels jsonb NOT NULL DEFAULT '{}',
  -- The PipelineConfig in protobuf JSON: readable by operators, decoded with the generated schema.
  config jsonb NOT NULL,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  PRIMARY KEY (tenant_id, pipeline_id, version),
  FOREIGN KEY (tenant_id, pipeline_id) REFERENCES pipelines (tenant_id, pipeline_id)
);

-- Down Migration
DROP TABLE pipeline_versions;
DROP TABLE pipelines;
DROP TABLE tenants;
DROP TABLE settings;
