// A database superuser plays the attacker: with the append-only triggers off (as any superuser
// can), it edits, deletes, reorders and re-chains stored events. VerifyAuditChain names the exact
// sequence each time. Every case has a tenant of its own, chained and signed beforehand.
import t, { type Test } from "tap";
import { randomUUID } from "node:crypto";
import type pg from "pg";
import { AuditChainBreak } from "../gen/jobmesh/v1/audit_pb.js";
import { createAuditDomain } from "../internal/audit/domain.ts";
import { chainHashOf } from "../internal/audit/chain.ts";
import { createPageTokens } from "../internal/paging/index.ts";
import { auditEventColumns, eventOfRow, type AuditEventRow } from "../internal/audit/rows.ts";
import { auditEvent, createAuditStoreWorld } from "./support/audit-store.ts";

t.setTimeout(300_000);
const world = await createAuditStoreWorld(t);
const { domain, db, sink } = world;
await world.startStore({ batchSize: 50 });
const eventsPerTenant = 20;

/** A tenant with a stored chain of 20 events, all covered by signed checkpoints. */
async function signedTenant(): Promise<string> {
  const tenant = randomUUID();
  for (let i = 0; i < eventsPerTenant; i++) sink.record(auditEvent(tenant, { action: `jobmesh.v1.JobService.GetJob`, resource: `jobs/j${i}` }));
  await sink.flush();
  await world.until("the tenant's events stored", async () => (await world.count(tenant)) === eventsPerTenant);
  await world.until("the tenant's chain signed", async () => (await domain.listCheckpoints(tenant, { pageSize: 1, pageToken: "" })).checkpoints[0]?.sequence === BigInt(eventsPerTenant));
  const before = await domain.verify(tenant, { startSequence: 0n, endSequence: 0n });
  if (!before.intact || before.unsignedCount !== 0n) throw new Error(`the chain is not intact and signed before the attack: ${before.reason}`);
  return tenant;
}

/** Runs `attack` as the superuser with triggers off (session_replication_role = replica). */
async function asAttacker(attack: (c: pg.PoolClient) => Promise<unknown>): Promise<void> {
  const client = await db.connect();
  try {
    await client.query("SET session_replication_role = replica");
    await attack(client);
  } finally {
    await client.query("RESET session_replication_role");
    client.release();
  }
}

async function expectBreak(t: Test, tenant: string, sequence: bigint, kind: AuditChainBreak) {
  const verdict = await domain.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, false, "the chain is reported broken");
  t.equal(verdict.firstBrokenSequence, sequence, `at sequence ${sequence}: ${verdict.reason}`);
  t.equal(verdict.breakKind, kind, AuditChainBreak[kind]);
  t.match(verdict.reason, `sequence ${sequence}`, "the reason names it");
}

void t.test("tamper - an UPDATE of one row's action is EDITED at exactly that sequence", async (t) => {
  const tenant = await signedTenant();
  await asAttacker((c) => c.query("UPDATE audit_events SET action = 'jobmesh.v1.JobService.DeleteJob' WHERE tenant_id = $1 AND sequence = 7", [tenant]));
  await expectBreak(t, tenant, 7n, AuditChainBreak.EDITED);
});

void t.test("tamper - a DELETE of one row is MISSING at it", async (t) => {
  const tenant = await signedTenant();
  await asAttacker((c) => c.query("DELETE FROM audit_events WHERE tenant_id = $1 AND sequence = 12", [tenant]));
  await expectBreak(t, tenant, 12n, AuditChainBreak.MISSING);
});

void t.test("tamper - removing the tail is MISSING where it starts (the signed chain is longer)", async (t) => {
  const tenant = await signedTenant();
  await asAttacker((c) => c.query("DELETE FROM audit_events WHERE tenant_id = $1 AND sequence > 17", [tenant]));
  await expectBreak(t, tenant, 18n, AuditChainBreak.MISSING);
});

void t.test("tamper - removing the tail AND its checkpoints from Postgres is still MISSING where it starts (published outside)", async (t) => {
  const tenant = await signedTenant();
  await asAttacker(async (c) => {
    await c.query("DELETE FROM audit_events WHERE tenant_id = $1 AND sequence > 17", [tenant]);
    await c.query("DELETE FROM audit_checkpoints WHERE tenant_id = $1 AND sequence > 17", [tenant]);
  });
  await expectBreak(t, tenant, 18n, AuditChainBreak.MISSING);
});

/** Removes every checkpoint of the tenant from the checkpoints stream (as if it had let them go). */
async function purgeCheckpointsStream(tenant: string) {
  await world.bus.jsm.streams.purge(world.topology.checkpointsStream, { filter: world.topology.checkpointsSubject(tenant) });
}

void t.test("tamper - checkpoints gone from Postgres and from the checkpoints stream, chain re-chained: the kept head still catches it", async (t) => {
  const tenant = await signedTenant();
  await purgeCheckpointsStream(tenant);
  await asAttacker(async (c) => {
    await c.query("DELETE FROM audit_checkpoints WHERE tenant_id = $1", [tenant]);
    await c.query("UPDATE audit_events SET resource = 'jobs/innocent' WHERE tenant_id = $1 AND sequence = 5", [tenant]);
    const { rows } = await c.query<AuditEventRow>(`SELECT ${auditEventColumns} FROM audit_events WHERE tenant_id = $1 AND sequence >= 5 ORDER BY sequence`, [tenant]);
    let prev = (await c.query<{ hash: string }>("SELECT hash FROM audit_events WHERE tenant_id = $1 AND sequence = 4", [tenant])).rows[0].hash;
    for (const row of rows) {
      const hash = chainHashOf(prev, eventOfRow({ ...row, prev_hash: prev }));
      await c.query("UPDATE audit_events SET prev_hash = $3, hash = $4 WHERE tenant_id = $1 AND sequence = $2", [tenant, row.sequence, prev, hash]);
      prev = hash;
    }
  });
  const verdict = await domain.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, false, `not intact: ${verdict.reason}`);
  t.ok(verdict.firstBrokenSequence >= 1n && verdict.firstBrokenSequence <= 5n, `broken at or before the edit (${verdict.firstBrokenSequence})`);
  t.equal(verdict.breakKind, AuditChainBreak.CHECKPOINT_MISMATCH);
});

void t.test("tamper - the oldest rows removed behind a hand-written retention horizon are MISSING (the horizon's checkpoint is not older than the cutoff)", async (t) => {
  const tenant = await signedTenant();
  const h10 = (await db.query<{ hash: string }>("SELECT hash FROM audit_events WHERE tenant_id = $1 AND sequence = 10", [tenant])).rows[0].hash;
  await asAttacker(async (c) => {
    await c.query("DELETE FROM audit_events WHERE tenant_id = $1 AND sequence <= 10", [tenant]);
    await c.query("INSERT INTO audit_retention_horizons (tenant_id, first_sequence, prev_hash) VALUES ($1, 11, $2)", [tenant, h10]);
  });
  const verdict = await domain.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.same([verdict.intact, verdict.firstBrokenSequence, verdict.breakKind], [false, 1n, AuditChainBreak.MISSING], verdict.reason);
  t.match(verdict.reason, /retention horizon at sequence 11: not trusted/, "the refused horizon is named");
  // A horizon whose hash no checkpoint signed is refused whatever its age.
  const anyAge = createAuditDomain({ db, js: world.bus.js, jsm: world.bus.jsm, topology: world.topology, pageTokens: createPageTokens("test"), keyEncryptionKey: world.keyEncryptionKey, log: world.log, retentionDays: 10 / 86_400_000 });
  await asAttacker((c) => c.query("UPDATE audit_retention_horizons SET prev_hash = $2 WHERE tenant_id = $1", [tenant, "ab".repeat(32)]));
  const forged = await anyAge.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.same([forged.intact, forged.firstBrokenSequence], [false, 1n], forged.reason);
  t.match(forged.reason, /signed another hash for sequence 10/);
});

void t.test("unsigned - events unsigned much longer than the checkpoint interval are not intact", async (t) => {
  const tenant = await signedTenant();
  await purgeCheckpointsStream(tenant);
  await world.bus.jsm.streams.purge(world.topology.headsStream, { filter: world.topology.headsSubject(tenant) });
  await asAttacker((c) => c.query("DELETE FROM audit_checkpoints WHERE tenant_id = $1", [tenant]));
  const strict = createAuditDomain({ db, js: world.bus.js, jsm: world.bus.jsm, topology: world.topology, pageTokens: createPageTokens("test"), keyEncryptionKey: world.keyEncryptionKey, log: world.log, unsignedGraceMs: 1_000 });
  const lenient = createAuditDomain({ db, js: world.bus.js, jsm: world.bus.jsm, topology: world.topology, pageTokens: createPageTokens("test"), keyEncryptionKey: world.keyEncryptionKey, log: world.log, unsignedGraceMs: 3_600_000 });
  const young = await lenient.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.same([young.intact, young.unsignedCount], [true, 20n], "within the grace: intact, 20 unsigned");
  await world.until("the events older than 1 s", async () => (await db.query("SELECT 1 FROM audit_events WHERE tenant_id = $1 AND stored_time < now() - interval '2 seconds' LIMIT 1", [tenant])).rowCount === 1);
  const verdict = await strict.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, false, verdict.reason);
  t.equal(verdict.firstBrokenSequence, 1n);
  t.match(verdict.reason, /still signed by no checkpoint/);
});

void t.test("tamper - swapping two rows' sequences is REORDERED at the lower", async (t) => {
  const tenant = await signedTenant();
  await asAttacker(async (c) => {
    await c.query("UPDATE audit_events SET sequence = -1 WHERE tenant_id = $1 AND sequence = 9", [tenant]);
    await c.query("UPDATE audit_events SET sequence = 9 WHERE tenant_id = $1 AND sequence = 10", [tenant]);
    await c.query("UPDATE audit_events SET sequence = 10 WHERE tenant_id = $1 AND sequence = -1", [tenant]);
  });
  await expectBreak(t, tenant, 9n, AuditChainBreak.REORDERED);
});

void t.test("tamper - an edit with every later hash and prev_hash recomputed is CHECKPOINT_MISMATCH at the edited sequence", async (t) => {
  const tenant = await signedTenant();
  await asAttacker(async (c) => {
    await c.query("UPDATE audit_events SET resource = 'jobs/innocent' WHERE tenant_id = $1 AND sequence = 5", [tenant]);
    const { rows } = await c.query<AuditEventRow>(`SELECT ${auditEventColumns} FROM audit_events WHERE tenant_id = $1 AND sequence >= 5 ORDER BY sequence`, [tenant]);
    const before = await c.query<{ hash: string }>("SELECT hash FROM audit_events WHERE tenant_id = $1 AND sequence = 4", [tenant]);
    let prev = before.rows[0].hash;
    for (const row of rows) {
      const hash = chainHashOf(prev, eventOfRow({ ...row, prev_hash: prev }));
      await c.query("UPDATE audit_events SET prev_hash = $3, hash = $4 WHERE tenant_id = $1 AND sequence = $2", [tenant, row.sequence, prev, hash]);
      prev = hash;
    }
  });
  // The rewritten chain is self-consistent: only the signed checkpoints can tell.
  const { rows } = await db.query<AuditEventRow>(`SELECT ${auditEventColumns} FROM audit_events WHERE tenant_id = $1 ORDER BY sequence`, [tenant]);
  t.ok(rows.every((r) => chainHashOf(r.prev_hash, eventOfRow(r)) === r.hash), "every row's hash matches its content again");
  await expectBreak(t, tenant, 5n, AuditChainBreak.CHECKPOINT_MISMATCH);
});

void t.test("tamper - checkpoints removed from Postgres are still compared with the published ones", async (t) => {
  const tenant = await signedTenant();
  await asAttacker((c) => c.query("DELETE FROM audit_checkpoints WHERE tenant_id = $1", [tenant]));
  await expectBreak(t, tenant, 1n, AuditChainBreak.CHECKPOINT_MISMATCH);
});

void t.test("tamper - a checkpoint changed in Postgres differs from the published one, at its first sequence", async (t) => {
  const tenant = await signedTenant();
  const { rows } = await db.query<{ first: string; last: string }>(
    "SELECT first_sequence AS first, sequence AS last FROM audit_checkpoints WHERE tenant_id = $1 ORDER BY sequence DESC LIMIT 1",
    [tenant],
  );
  await asAttacker((c) => c.query("UPDATE audit_checkpoints SET checkpoint_time = checkpoint_time - interval '1 day' WHERE tenant_id = $1 AND sequence = $2", [tenant, rows[0].last]));
  await expectBreak(t, tenant, BigInt(rows[0].first), AuditChainBreak.CHECKPOINT_MISMATCH);
});

void t.test("append-only - the appender role cannot UPDATE or DELETE; the triggers stop even the owner", async (t) => {
  const tenant = await signedTenant();
  const client = await db.connect();
  const attempt = async (sql: string, role?: string) => {
    await client.query("BEGIN");
    try {
      if (role) await client.query(`SET LOCAL ROLE ${role}`);
      await client.query(sql, sql.includes("$1") ? [tenant] : []);
      return "allowed";
    } catch (error) {
      return (error as Error).message;
    } finally {
      await client.query("ROLLBACK");
    }
  };
  try {
    for (const table of ["audit_events", "audit_checkpoints"]) {
      t.match(await attempt(`UPDATE ${table} SET hash = 'x' WHERE tenant_id = $1`, "jobmesh_audit_appender"), /permission denied/, `appender: UPDATE ${table}`);
      t.match(await attempt(`DELETE FROM ${table} WHERE tenant_id = $1`, "jobmesh_audit_appender"), /permission denied/, `appender: DELETE ${table}`);
      t.match(await attempt(`TRUNCATE ${table}`, "jobmesh_audit_appender"), /permission denied/, `appender: TRUNCATE ${table}`);
      t.match(await attempt(`UPDATE ${table} SET hash = 'x' WHERE tenant_id = $1`), `${table} is append-only`, `owner: UPDATE ${table}`);
      t.match(await attempt(`DELETE FROM ${table} WHERE tenant_id = $1`), `${table} is append-only`, `owner: DELETE ${table}`);
      t.match(await attempt(`TRUNCATE ${table}`), `${table} is append-only`, `owner: TRUNCATE ${table}`);
    }
    const { rows } = await client.query<{ name: string }>("SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass LIMIT 1");
    t.match(await attempt(`TRUNCATE ${rows[0].name}`), "audit_events is append-only", "owner: TRUNCATE of one partition");
    t.match(await attempt(`UPDATE ${rows[0].name} SET hash = 'x'`), "audit_events is append-only", "owner: UPDATE of one partition");
  } finally {
    client.release();
  }
  const verdict = await domain.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, true, "nothing changed");
});
