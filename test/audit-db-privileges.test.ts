// The audit tables belong to jobmesh_audit_owner, a role nobody logs in as and the service's role
// is not a member of. The tests connect as superuser postgres, which ownership does not bind, so
// this one makes a LOGIN role the way a deployment's service role is made (jobmesh.env.example:
// every process migrates at start as `jobmesh`): it creates in schema public, migrates itself, and
// then shows that it can store and run retention, but cannot change, remove or unguard a stored
// row in any way an owner could.
import t from "tap";
import { randomUUID } from "node:crypto";
import pg from "pg";
import { join } from "node:path";
import { rm } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { createAuditDomain, createAuditSink, createAuditTopology, provisionAuditTopology, startAuditStore } from "../internal/audit/index.ts";
import { connectBus } from "../internal/bus/index.ts";
import { createPool, migrate } from "../internal/db/index.ts";
import { createPageTokens } from "../internal/paging/index.ts";
import { createLogger } from "../internal/telemetry/index.ts";
import { auditEvent } from "./support/audit-store.ts";
import { adminDatabaseUrl, isolate } from "./support/isolation.ts";

t.setTimeout(120_000);
const log = createLogger({ name: "audit-db-privileges-test", level: "warn" });
const isolated = await isolate();
const admin = new pg.Client({ connectionString: adminDatabaseUrl });
await admin.connect();
const service = `jm_svc_${isolated.id}`;
const password = randomUUID();
await admin.query(`CREATE ROLE ${service} NOLOGIN`);
// What the deployment's operator does: a role of its own owning the database, allowed to
// create roles while it migrates (the audit roles are cluster-wide), logging in with a password.
await admin.query(`ALTER ROLE ${service} LOGIN PASSWORD '${password}' CREATEROLE`);
// Not the database's owner: since Postgres 15 that owns schema public, and a schema's owner can
// drop any table in it. CREATE on it instead, with the grant option 0007 uses for the owner role.
const inDatabase = new pg.Client({ connectionString: isolated.databaseUrl });
await inDatabase.connect();
await inDatabase.query(`GRANT USAGE, CREATE ON SCHEMA public TO ${service} WITH GRANT OPTION`);
await inDatabase.end();
const serviceUrl = new URL(isolated.databaseUrl);
serviceUrl.username = service;
serviceUrl.password = password;
await migrate(serviceUrl.href, log);
// Migrated, it keeps no power over roles at run time (else it could make itself the owner's member).
await admin.query(`ALTER ROLE ${service} NOCREATEROLE`);
const db = new pg.Client({ connectionString: serviceUrl.href });
await db.connect();
t.teardown(async () => {
  await db.end();
  await isolated.drop();
  await admin.query(`DROP ROLE IF EXISTS ${service}`);
  await admin.end();
});

const tenant = randomUUID();
const old = new Date(Date.UTC(2020, 0, 15));
const recent = new Date();

async function append(sequence: number, at: Date): Promise<void> {
  await db.query("BEGIN");
  try {
    await db.query("SET LOCAL ROLE jobmesh_audit_appender");
    await db.query("INSERT INTO audit_events (tenant_id, sequence, event_id, event_time, hash) VALUES ($1, $2, $3, $4, $5)", [tenant, sequence, randomUUID(), at, `h${sequence}`]);
    await db.query("COMMIT");
  } catch (error) {
    await db.query("ROLLBACK");
    throw error;
  }
}

void t.test("audit tables - owned by jobmesh_audit_owner, the service's role is not its member", async (t) => {
  const c = new pg.Client({ connectionString: isolated.databaseUrl });
  await c.connect();
  const { rows } = await c.query<{ owner: string }>(
    `SELECT DISTINCT pg_get_userbyid(c.relowner) AS owner FROM pg_class c
     WHERE c.relname IN ('audit_events', 'audit_event_ids', 'audit_chain_heads', 'audit_retention_horizons', 'audit_signing_keys', 'audit_checkpoints')`,
  ).finally(() => c.end());
  t.same(rows.map((r) => r.owner), ["jobmesh_audit_owner"]);
  const member = await db.query<{ member: boolean }>("SELECT pg_has_role(current_user, 'jobmesh_audit_owner', 'MEMBER') AS member");
  t.equal(member.rows[0].member, false);
});

void t.test("the service's role - stores (partitions made for it) and reads", async (t) => {
  const part = await db.query<{ name: string }>("SELECT audit_events_partition($1, $2) AS name", [tenant, old]);
  await db.query("SELECT audit_events_partition($1, $2)", [tenant, recent]);
  await append(1, old);
  await append(2, recent);
  const { rows } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_events WHERE tenant_id = $1", [tenant]);
  t.equal(rows[0].n, 2);
  const owner = await db.query<{ owner: string }>("SELECT pg_get_userbyid(relowner) AS owner FROM pg_class WHERE relname = $1", [part.rows[0].name]);
  t.equal(owner.rows[0].owner, "jobmesh_audit_owner", "a partition is the owner's too");
});

void t.test("the service's role - cannot change, remove or unguard what is stored", async (t) => {
  const { rows } = await db.query<{ name: string }>("SELECT audit_events_partition($1, $2) AS name", [tenant, recent]);
  const part = `"${rows[0].name}"`;
  const attempts = [
    "UPDATE audit_events SET message = 'forged'",
    "DELETE FROM audit_events",
    "TRUNCATE audit_events",
    `TRUNCATE ${part}`,
    `DELETE FROM ${part}`,
    "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
    "ALTER TABLE audit_events DISABLE TRIGGER ALL",
    `ALTER TABLE ${part} DISABLE TRIGGER ALL`,
    `ALTER TABLE ${part} DISABLE TRIGGER audit_events_no_truncate`,
    `DROP TABLE ${part}`,
    `ALTER TABLE audit_events DETACH PARTITION ${part}`,
    "ALTER TABLE audit_events OWNER TO CURRENT_USER",
    "DROP TRIGGER audit_events_append_only ON audit_events",
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
    "DELETE FROM audit_checkpoints",
    "ALTER TABLE audit_checkpoints DISABLE TRIGGER ALL",
    "DELETE FROM audit_signing_keys",
    "DELETE FROM audit_event_ids",
    `INSERT INTO audit_retention_horizons (tenant_id, first_sequence, prev_hash) VALUES ('${tenant}', 2, 'forged')`,
    "UPDATE audit_retention_horizons SET prev_hash = 'forged'",
    "SET ROLE jobmesh_audit_owner",
    "GRANT jobmesh_audit_owner TO CURRENT_USER",
    "SET session_replication_role = replica",
  ];
  for (const sql of attempts) {
    const error = await db.query(sql).then(() => undefined, (e: unknown) => e as { code?: string; message: string });
    t.ok(error, `refused: ${sql.slice(0, 80)}`);
    if (error) t.match(error.code, /^(42501|0LP01)$/, `${error.message} (no privilege)`);
  }
  const { rows: after } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_events WHERE tenant_id = $1 AND message = ''", [tenant]);
  t.equal(after[0].n, 2, "both rows as stored");
});

void t.test("the service's role - retention only through the owner's function, which keeps its own rules", async (t) => {
  // A year ago is not yet past 36500 days: nothing goes, whatever the caller's clock.
  const none = await db.query("SELECT * FROM audit_drop_expired_partitions(36500)");
  t.same(none.rows, []);
  const { rows } = await db.query<{ tenant_id: string; month: string }>("SELECT tenant_id, month FROM audit_drop_expired_partitions(365)");
  t.same(rows, [{ tenant_id: tenant, month: "2020-01" }], "January 2020 is past a year");
  const horizon = await db.query<{ first_sequence: string; prev_hash: string }>("SELECT first_sequence::text, prev_hash FROM audit_retention_horizons WHERE tenant_id = $1", [tenant]);
  t.same(horizon.rows, [{ first_sequence: "2", prev_hash: "h1" }], "the horizon written with the drop");
});

void t.test("the service's role - the store and the domain run as it: events stored, signed, verified", async (t) => {
  const pool = createPool({ url: serviceUrl.href });
  const bus = await connectBus({ url: isolated.config.natsUrl, name: "audit-db-privileges-test", log });
  const topology = createAuditTopology(isolated.namespace);
  await provisionAuditTopology(topology, bus.jsm, { streamMaxBytes: 16 * 1024 * 1024 });
  const keyEncryptionKey = randomBytes(32);
  const sink = await createAuditSink({ nc: bus.nc, js: bus.js, topology, spoolFile: join(isolated.config.audit.spoolDir, "privileges.spool"), log });
  const store = await startAuditStore({ db: pool, js: bus.js, jsm: bus.jsm, topology, keyEncryptionKey, log, unattributedTenantId: randomUUID(), checkpointIntervalMs: 200, retentionDays: 400 });
  t.teardown(async () => {
    await store.stop();
    await sink.close();
    for (const stream of [topology.eventsStream, topology.checkpointsStream, topology.headsStream]) await bus.jsm.streams.delete(stream).catch(() => false);
    await bus.close();
    await pool.end();
    await rm(isolated.config.audit.spoolDir, { recursive: true, force: true });
  });
  const storedTenant = randomUUID();
  for (let i = 0; i < 20; i++) sink.record(auditEvent(storedTenant));
  await sink.flush();
  const domain = createAuditDomain({ db: pool, js: bus.js, jsm: bus.jsm, topology, pageTokens: createPageTokens("test"), keyEncryptionKey, log });
  const deadline = Date.now() + 60_000;
  let verdict = await domain.verify(storedTenant, { startSequence: 0n, endSequence: 0n });
  while ((verdict.verifiedCount < 20n || verdict.unsignedCount > 0n) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 200));
    verdict = await domain.verify(storedTenant, { startSequence: 0n, endSequence: 0n });
  }
  t.equal(verdict.intact, true, verdict.reason);
  t.equal(verdict.verifiedCount, 20n, "every event stored by the service's role");
  t.equal(verdict.unsignedCount, 0n, "and signed");
});
