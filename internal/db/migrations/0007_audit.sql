-- Up Migration

-- The interface of this migration to internal/audit (agreed with retention.ts and consumer.ts):
-- the audit tables and these functions are owned by the NOLOGIN role jobmesh_audit_owner, which
-- the service's role is NOT a member of; the functions are SECURITY DEFINER with a fixed
-- search_path, and the service may only EXECUTE them (through jobmesh_audit_appender).
--   audit_events_partition(tenant uuid, at timestamptz) RETURNS text
--     the month partition of the tenant holding `at`, created if missing; returns its name.
--   audit_drop_expired_partitions(retention_days integer, per_tenant jsonb DEFAULT '{}')
--     RETURNS TABLE (tenant_id uuid, month text, name text)
--     drops each partition whose month ended more than its tenant's retention before now()
--     (the database's clock, never the caller's): per_tenant is {"<tenant uuid>": days}, else
--     retention_days; fewer than 1 day keeps everything. A partition goes only when its highest
--     sequence is below the lowest sequence that remains (an event filed in an older month
--     holds its month back). Writes audit_retention_horizons (first_sequence, prev_hash) in the
--     same transaction; returns what it dropped, month as 'YYYY-MM'.

-- The audit log (issue 12). One row per audited RPC, hash-chained per tenant: sequence from 1,
-- hash = SHA-256(prev_hash || canonical event) as internal/audit/chain.ts computes it over the
-- event read back from the row (eventOfRow in internal/audit/store.ts), so every column that
-- is part of the event must round-trip exactly: event_time is a Date (ms) in a timestamptz
-- (us), duration a whole number of microseconds. stored_time is not part of the hash.
-- Partitioned per tenant per month, created on demand by the store (audit_events_partition
-- below), so retention drops whole partitions of a tenant and never deletes rows.
CREATE TABLE audit_events (
  tenant_id uuid NOT NULL,
  sequence bigint NOT NULL,
  event_id uuid NOT NULL,
  event_time timestamptz NOT NULL,
  actor_subject text NOT NULL DEFAULT '',
  actor_kind smallint NOT NULL DEFAULT 0,
  actor_roles text[] NOT NULL DEFAULT '{}',
  credential_hint text NOT NULL DEFAULT '',
  action text NOT NULL DEFAULT '',
  resource text NOT NULL DEFAULT '',
  resource_type text NOT NULL DEFAULT '',
  code integer NOT NULL DEFAULT 0,
  message text NOT NULL DEFAULT '',
  request_id text NOT NULL DEFAULT '',
  trace_id text NOT NULL DEFAULT '',
  client_address text NOT NULL DEFAULT '',
  user_agent text NOT NULL DEFAULT '',
  duration_us bigint NOT NULL DEFAULT 0,
  request text NOT NULL DEFAULT '',
  recorder text NOT NULL DEFAULT '',
  prev_hash text NOT NULL DEFAULT '',
  hash text NOT NULL DEFAULT '',
  stored_time timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, sequence, event_time)
) PARTITION BY RANGE (tenant_id, event_time);
-- Time-range queries ("yesterday's failed logins") and order_by event_time.
CREATE INDEX audit_events_time ON audit_events (tenant_id, event_time, sequence);

-- Dedupe by event id: a partitioned table cannot hold a unique index without the partition
-- key, and a redelivered event must be recognised whatever month it would land in.
CREATE TABLE audit_event_ids (
  event_id uuid PRIMARY KEY,
  tenant_id uuid NOT NULL,
  sequence bigint NOT NULL
);

-- The store's head of each tenant's chain, locked FOR UPDATE while appending. Bookkeeping, not
-- evidence: verification recomputes everything from the rows and the signed checkpoints.
CREATE TABLE audit_chain_heads (
  tenant_id uuid PRIMARY KEY,
  sequence bigint NOT NULL,
  hash text NOT NULL
);

-- Where each tenant's stored chain starts after retention dropped its oldest partitions: the
-- first sequence still kept and the hash of the event before it (gone with its partition).
-- Verification starts here, so a row removed at the start of what is kept is MISSING, not
-- mistaken for retention. Written only by internal/audit/retention.ts, with the DROP.
CREATE TABLE audit_retention_horizons (
  tenant_id uuid PRIMARY KEY,
  first_sequence bigint NOT NULL,
  prev_hash text NOT NULL DEFAULT '',
  update_time timestamptz NOT NULL DEFAULT now()
);

-- Ed25519 keys that sign checkpoints. The private key (PKCS#8 DER) is sealed with AES-256-GCM
-- under the key-encryption key, which is not in the database (as signing_keys for JWTs).
CREATE TABLE audit_signing_keys (
  key_id text PRIMARY KEY,
  public_key bytea NOT NULL,
  private_key_sealed bytea NOT NULL,
  create_time timestamptz NOT NULL DEFAULT now()
);

-- Signed statements of a tenant's chain: the hashes of first_sequence..sequence. The same
-- checkpoints are published on the checkpoints stream, outside Postgres.
CREATE TABLE audit_checkpoints (
  tenant_id uuid NOT NULL,
  sequence bigint NOT NULL,
  first_sequence bigint NOT NULL,
  hash text NOT NULL,
  checkpoint_time timestamptz NOT NULL,
  event_hashes bytea NOT NULL,
  key_id text NOT NULL REFERENCES audit_signing_keys (key_id),
  signature bytea NOT NULL,
  PRIMARY KEY (tenant_id, sequence)
);

-- Append-only, twice over: the store inserts under SET LOCAL ROLE jobmesh_audit_appender, which
-- holds INSERT and SELECT only, and these triggers refuse UPDATE, DELETE and TRUNCATE even to
-- the owner. A superuser can still disable them (session_replication_role = replica); that is
-- what the hash chain and the checkpoints published outside Postgres are for.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_ARGV[0];
END $$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_append_only('audit_events');
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only('audit_events');
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
  FOR EACH ROW EXECUTE FUNCTION audit_append_only('audit_checkpoints');
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
  FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only('audit_checkpoints');

-- The month partition of a tenant: audit_events_<tenant hex>_<yyyymm>, months in UTC. Row
-- triggers are cloned to partitions by Postgres; a statement trigger is not, so the TRUNCATE
-- guard is added to each partition here. Idempotent; a concurrent creator loses harmlessly.
CREATE FUNCTION audit_events_partition(tenant uuid, at timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
  month_end timestamptz := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
  part text := format('audit_events_%s_%s', replace(tenant::text, '-', ''), to_char(at AT TIME ZONE 'UTC', 'YYYYMM'));
BEGIN
  IF to_regclass(part) IS NOT NULL THEN
    RETURN part;
  END IF;
  BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_events FOR VALUES FROM (%L, %L) TO (%L, %L)',
      part, tenant, month_start, tenant, month_end);
    EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only(%L)',
      part, 'audit_events');
  EXCEPTION WHEN duplicate_table OR duplicate_object OR unique_violation THEN
    NULL;
  END;
  RETURN part;
END $$;

-- Roles are cluster-wide: every database of the cluster (each test's among them) shares this
-- one, so it is created only when missing, and a concurrent creator's win is not an error.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobmesh_audit_appender') THEN
    BEGIN
      CREATE ROLE jobmesh_audit_appender NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
  END IF;
  -- The service's own role must be a member to SET ROLE to it (a superuser is implicitly).
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    BEGIN
      EXECUTE format('GRANT jobmesh_audit_appender TO %I', current_user);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    WHEN insufficient_privilege THEN
      -- The role was made by someone else: its owner must grant it (the store says so when it cannot SET ROLE).
      RAISE WARNING 'grant jobmesh_audit_appender to % so that the audit store can append', current_user;
    END;
  END IF;
END $$;

REVOKE ALL ON audit_events, audit_checkpoints FROM PUBLIC;
GRANT INSERT, SELECT ON audit_events, audit_checkpoints TO jobmesh_audit_appender;
-- The store's whole append transaction runs as the appender (one role switch per batch): it
-- also records the event ids and moves the chain heads (bookkeeping, not evidence).
GRANT INSERT, SELECT ON audit_event_ids TO jobmesh_audit_appender;
GRANT INSERT, SELECT, UPDATE ON audit_chain_heads TO jobmesh_audit_appender;

-- Down Migration
DROP TABLE audit_checkpoints;
DROP TABLE audit_signing_keys;
DROP TABLE audit_retention_horizons;
DROP TABLE audit_chain_heads;
DROP TABLE audit_event_ids;
DROP TABLE audit_events;
DROP FUNCTION audit_events_partition(uuid, timestamptz);
DROP FUNCTION audit_append_only();
