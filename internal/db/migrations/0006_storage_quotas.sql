-- Up Migration

-- Bytes each tenant holds in uploads and results, kept by triggers in the transaction of the
-- row that holds them: a crash, a rollback or a cascade (DeleteJob deletes its result) can never
-- leave the counter apart from the rows. Statement-level triggers add one delta per tenant and
-- statement, in tenant order, so two group statements over the same tenants cannot deadlock.
CREATE TABLE tenant_storage (
  tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
  used_bytes bigint NOT NULL DEFAULT 0
);

-- A tenant's own quota; NULL: the deployment's default (JOBMESH_TENANT_STORAGE_QUOTA_BYTES).
ALTER TABLE tenants ADD COLUMN storage_quota_bytes bigint CHECK (storage_quota_bytes >= 0);

CREATE FUNCTION tenant_storage_add(deltas jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  FOR r IN SELECT key::uuid AS tenant_id, value::bigint AS delta FROM jsonb_each_text(deltas) ORDER BY key LOOP
    CONTINUE WHEN r.delta = 0;
    INSERT INTO tenant_storage AS s (tenant_id, used_bytes) VALUES (r.tenant_id, r.delta)
    ON CONFLICT (tenant_id) DO UPDATE SET used_bytes = s.used_bytes + EXCLUDED.used_bytes;
  END LOOP;
END $$;

CREATE FUNCTION tenant_storage_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Each branch names only the transition tables its event has.
  IF TG_OP = 'INSERT' THEN
    PERFORM tenant_storage_add(coalesce((SELECT jsonb_object_agg(tenant_id, d) FROM
      (SELECT tenant_id, sum(size_bytes) AS d FROM new_rows GROUP BY tenant_id) x), '{}'));
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM tenant_storage_add(coalesce((SELECT jsonb_object_agg(tenant_id, d) FROM
      (SELECT tenant_id, -sum(size_bytes) AS d FROM old_rows GROUP BY tenant_id) x), '{}'));
  ELSE
    PERFORM tenant_storage_add(coalesce((SELECT jsonb_object_agg(tenant_id, d) FROM
      (SELECT tenant_id, sum(d) AS d FROM (
         SELECT tenant_id, size_bytes AS d FROM new_rows
         UNION ALL SELECT tenant_id, -size_bytes FROM old_rows) u GROUP BY tenant_id) x), '{}'));
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER uploads_storage_insert AFTER INSERT ON uploads REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tenant_storage_track();
CREATE TRIGGER uploads_storage_update AFTER UPDATE ON uploads REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tenant_storage_track();
CREATE TRIGGER uploads_storage_delete AFTER DELETE ON uploads REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tenant_storage_track();
CREATE TRIGGER job_results_storage_insert AFTER INSERT ON job_results REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tenant_storage_track();
CREATE TRIGGER job_results_storage_update AFTER UPDATE ON job_results REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tenant_storage_track();
CREATE TRIGGER job_results_storage_delete AFTER DELETE ON job_results REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION tenant_storage_track();

-- What is held already.
INSERT INTO tenant_storage (tenant_id, used_bytes)
SELECT tenant_id, sum(size_bytes) FROM (
  SELECT tenant_id, size_bytes FROM uploads UNION ALL SELECT tenant_id, size_bytes FROM job_results) held
GROUP BY tenant_id;

-- Down Migration
DROP TRIGGER job_results_storage_delete ON job_results;
DROP TRIGGER job_results_storage_update ON job_results;
DROP TRIGGER job_results_storage_insert ON job_results;
DROP TRIGGER uploads_storage_delete ON uploads;
DROP TRIGGER uploads_storage_update ON uploads;
DROP TRIGGER uploads_storage_insert ON uploads;
DROP FUNCTION tenant_storage_track();
DROP FUNCTION tenant_storage_add(jsonb);
ALTER TABLE tenants DROP COLUMN storage_quota_bytes;
DROP TABLE tenant_storage;
