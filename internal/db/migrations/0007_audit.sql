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

-- Roles are cluster-wide: every database of the cluster (each test's among them) shares them, so
-- each is created only when missing, and a concurrent creator's win is not an error.
-- jobmesh_audit_owner owns the audit tables and functions and logs in never; the service's role
-- is not made a member of it, so it cannot ALTER, DISABLE TRIGGER, DROP or TRUNCATE them (an
-- owner can, whatever is revoked). jobmesh_audit_appender holds what storing needs.
DO $$
DECLARE
  name text;
BEGIN
  FOREACH name IN ARRAY ARRAY['jobmesh_audit_owner', 'jobmesh_audit_appender'] LOOP
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
      BEGIN
        EXECUTE format('CREATE ROLE %I NOLOGIN', name);
      EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
      END;
    END IF;
  END LOOP;
END $$;

-- The owner creates month partitions in this schema (through audit_events_partition). The
-- service's role must not own the schema: a schema's owner can drop any table in it, and since
-- Postgres 15 the database's owner owns public. Give it CREATE on the schema WITH GRANT OPTION.
DO $$
BEGIN
  EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO jobmesh_audit_owner', current_schema());
EXCEPTION WHEN insufficient_privilege THEN
  RAISE WARNING 'grant CREATE on schema % to jobmesh_audit_owner: the audit partitions are made there', current_schema();
END $$;

-- The month partition of a tenant: audit_events_<tenant hex>_<yyyymm>, months in UTC. Row
-- triggers are cloned to partitions by Postgres; a statement trigger is not, so the TRUNCATE
-- guard is added to each partition here. Idempotent; a concurrent creator loses harmlessly.
-- SECURITY DEFINER: only the owner of audit_events can attach a partition, and the partition is
-- the owner's too. The search_path is fixed (pg_catalog first, pg_temp last) so no object the
-- caller makes can stand in for one named here.
CREATE FUNCTION audit_events_partition(tenant uuid, at timestamptz) RETURNS text LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
  month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
  month_end timestamptz := (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
  part text := format('audit_events_%s_%s', replace(tenant::text, '-', ''), to_char(at AT TIME ZONE 'UTC', 'YYYYMM'));
  schema text := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = 'audit_events'::regclass);
BEGIN
  IF to_regclass(format('%I.%I', schema, part)) IS NOT NULL THEN
    RETURN part;
  END IF;
  BEGIN
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.audit_events FOR VALUES FROM (%L, %L) TO (%L, %L)',
      schema, part, schema, tenant, month_start, tenant, month_end);
    EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON %I.%I FOR EACH STATEMENT EXECUTE FUNCTION %I.audit_append_only(%L)',
      schema, part, schema, 'audit_events');
  EXCEPTION WHEN duplicate_table OR duplicate_object OR unique_violation THEN
    NULL;
  END;
  RETURN part;
END $$;

-- Retention (the interface is at the top of this file). The rules live here, not in the
-- caller, because only the owner can drop a partition: the service asks, the database's clock
-- and these rules decide. An expired partition stays while it holds a sequence at or above the
-- lowest sequence kept (an event filed in an older month, a recorder's clock behind), so the
-- kept chain never has a hole that retention made. The horizon is written with the drop.
CREATE FUNCTION audit_drop_expired_partitions(retention_days integer, per_tenant jsonb DEFAULT '{}'::jsonb)
RETURNS TABLE (tenant_id uuid, month text, name text) LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
  tenant uuid;
  days integer;
  candidates oid[];
  still oid[];
  min_kept bigint;
  max_dropped bigint;
  before_hash text;
  part oid;
  part_name text;
BEGIN
  -- One retention run at a time (two stores overlapping in a takeover).
  PERFORM pg_advisory_xact_lock(hashtext('jobmesh.audit_retention'));
  FOR tenant IN
    SELECT DISTINCT substr(c.relname, 14, 32)::uuid
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '^audit_events_[0-9a-f]{32}_[0-9]{6}$'
  LOOP
    days := coalesce((per_tenant ->> tenant::text)::integer, retention_days);
    CONTINUE WHEN days IS NULL OR days < 1;
    SELECT coalesce(array_agg(c.oid ORDER BY c.relname), '{}') INTO candidates
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'audit_events'::regclass
      AND c.relname ~ ('^audit_events_' || replace(tenant::text, '-', '') || '_[0-9]{6}$')
      AND make_timestamptz(substr(c.relname, 47, 4)::integer, substr(c.relname, 51, 2)::integer, 1, 0, 0, 0, 'UTC')
          + interval '1 month' + days * interval '1 day' <= now();
    CONTINUE WHEN cardinality(candidates) = 0;
    -- A candidate holding a sequence at or above the lowest kept one stays; keeping it can lower
    -- the lowest kept, so again until nothing changes.
    LOOP
      SELECT min(e.sequence) INTO min_kept FROM audit_events e WHERE e.tenant_id = tenant AND NOT (e.tableoid = ANY (candidates));
      SELECT coalesce(array_agg(x), '{}') INTO still FROM unnest(candidates) x
      WHERE min_kept IS NULL OR NOT EXISTS (SELECT FROM audit_events e WHERE e.tenant_id = tenant AND e.tableoid = x AND e.sequence >= min_kept);
      EXIT WHEN cardinality(still) = cardinality(candidates);
      candidates := still;
    END LOOP;
    CONTINUE WHEN cardinality(candidates) = 0;
    SELECT max(e.sequence) INTO max_dropped FROM audit_events e WHERE e.tenant_id = tenant AND e.tableoid = ANY (candidates);
    IF max_dropped IS NOT NULL THEN
      SELECT e.hash INTO before_hash FROM audit_events e WHERE e.tenant_id = tenant AND e.sequence = max_dropped;
      INSERT INTO audit_retention_horizons AS h (tenant_id, first_sequence, prev_hash)
      VALUES (tenant, max_dropped + 1, coalesce(before_hash, ''))
      ON CONFLICT ON CONSTRAINT audit_retention_horizons_pkey DO UPDATE
        SET first_sequence = EXCLUDED.first_sequence, prev_hash = EXCLUDED.prev_hash, update_time = now()
        WHERE EXCLUDED.first_sequence > h.first_sequence;
    END IF;
    FOREACH part IN ARRAY candidates LOOP
      SELECT c.relname::text INTO part_name FROM pg_class c WHERE c.oid = part;
      EXECUTE format('DROP TABLE %s', part::regclass);
      tenant_id := tenant;
      month := substr(part_name, 47, 4) || '-' || substr(part_name, 51, 2);
      name := part_name;
      RETURN NEXT;
    END LOOP;
  END LOOP;
END $$;

REVOKE ALL ON audit_events, audit_checkpoints, audit_event_ids, audit_chain_heads, audit_retention_horizons, audit_signing_keys FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_events_partition(uuid, timestamptz), audit_drop_expired_partitions(integer, jsonb) FROM PUBLIC;
GRANT INSERT, SELECT ON audit_events, audit_checkpoints TO jobmesh_audit_appender;
-- The store's whole append transaction runs as the appender (one role switch per batch): it
-- also records the event ids and moves the chain heads (bookkeeping, not evidence).
GRANT INSERT, SELECT ON audit_event_ids TO jobmesh_audit_appender;
GRANT INSERT, SELECT, UPDATE ON audit_chain_heads TO jobmesh_audit_appender;
GRANT EXECUTE ON FUNCTION audit_events_partition(uuid, timestamptz), audit_drop_expired_partitions(integer, jsonb) TO jobmesh_audit_appender;

-- What the service's role is given: reading every audit table, adding signing keys, and
-- membership of the appender (for SET ROLE, and the two functions). Never ownership, never
-- UPDATE/DELETE/TRUNCATE. A function so that an administrator who migrates as a superuser
-- gives a separate service role the same: SELECT audit_grant_service('jobmesh').
CREATE FUNCTION audit_grant_service(service name) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('GRANT SELECT ON audit_events, audit_checkpoints, audit_event_ids, audit_chain_heads, audit_retention_horizons, audit_signing_keys TO %I', service);
  EXECUTE format('GRANT INSERT ON audit_signing_keys TO %I', service);
  BEGIN
    EXECUTE format('GRANT jobmesh_audit_appender TO %I', service);
  EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
  WHEN insufficient_privilege THEN
    -- The role was made by someone else: its owner must grant it (the store says so when it cannot SET ROLE).
    RAISE WARNING 'grant jobmesh_audit_appender to % so that the audit store can append', service;
  END;
END $$;
REVOKE ALL ON FUNCTION audit_grant_service(name) FROM PUBLIC;

-- The role migrating is the service's own (every process migrates at start) unless it is a
-- superuser, which needs no grant. Everything goes to jobmesh_audit_owner, then the grants are
-- made. A role that is neither a superuser nor able to
-- become the owner for a moment (CREATEROLE, or ADMIN on the owner role) cannot hand the
-- tables over: it is warned, and keeps owning them until an administrator runs the ALTERs.
-- A role that can do it could also take the ownership back: the service's role should have
-- neither at run time.
DO $$
DECLARE
  is_super boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
  borrowed boolean := false;
  object text;
BEGIN
  IF NOT is_super THEN
    IF NOT pg_has_role(current_user, 'jobmesh_audit_owner', 'USAGE') THEN
      BEGIN
        EXECUTE format('GRANT jobmesh_audit_owner TO %I', current_user);
        borrowed := true;
      EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'the audit tables stay owned by % (which can therefore alter them): as a superuser, ALTER each audit table and function OWNER TO jobmesh_audit_owner', current_user;
        RETURN;
      END;
    END IF;
  END IF;
  FOREACH object IN ARRAY ARRAY['audit_events', 'audit_event_ids', 'audit_chain_heads', 'audit_retention_horizons', 'audit_signing_keys', 'audit_checkpoints'] LOOP
    EXECUTE format('ALTER TABLE %I OWNER TO jobmesh_audit_owner', object);
  END LOOP;
  FOREACH object IN ARRAY ARRAY['audit_append_only()', 'audit_events_partition(uuid, timestamptz)', 'audit_drop_expired_partitions(integer, jsonb)', 'audit_grant_service(name)'] LOOP
    EXECUTE format('ALTER FUNCTION %s OWNER TO jobmesh_audit_owner', object);
  END LOOP;
  -- Granted as the new owner: what an owner grants itself goes with the ownership.
  IF NOT is_super THEN
    PERFORM audit_grant_service(current_user);
  END IF;
  IF borrowed THEN
    EXECUTE format('REVOKE jobmesh_audit_owner FROM %I', current_user);
  END IF;
END $$;

-- Down Migration
DROP TABLE audit_checkpoints;
DROP TABLE audit_signing_keys;
DROP TABLE audit_retention_horizons;
DROP TABLE audit_chain_heads;
DROP TABLE audit_event_ids;
DROP TABLE audit_events;
DROP FUNCTION audit_grant_service(name);
DROP FUNCTION audit_drop_expired_partitions(integer, jsonb);
DROP FUNCTION audit_events_partition(uuid, timestamptz);
DROP FUNCTION audit_append_only();
