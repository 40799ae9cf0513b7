// The audit store killed mid-stream (SIGKILL, between or inside its transactions) loses and
// duplicates nothing: its standby takes the store lock, the unacknowledged events come back
// (after the consumer's ack_wait) and those already committed are skipped by event id.
import t from "tap";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { auditEvent, createAuditStoreWorld } from "./support/audit-store.ts";

t.setTimeout(400_000);
const world = await createAuditStoreWorld(t);
const { db, sink, domain } = world;
const tenants = [randomUUID(), randomUUID(), randomUUID()];
const total = 5000;

void t.test("kill -9 of the audit store mid-stream - a standby stores every event exactly once, chains intact", async (t) => {
  const first = world.startStoreProcess("store-a", { batchSize: 25 });
  const second = world.startStoreProcess("store-b", { batchSize: 25 });
  await world.until("one store holds the lock", async () => (await world.lockHolder()) !== undefined);
  const holder = (await world.lockHolder())!;
  const [victim, standby] = holder === "store-a" ? [first, second] : [second, first];

  // The first half, while one process stores; it dies once it has stored a tenth of it.
  for (let i = 0; i < total / 2; i++) sink.record(auditEvent(i % 10 === 9 ? "" : tenants[i % 3], { resource: `jobs/j${i}` }));
  await sink.flush();
  await world.until("the store has begun", async () => (await world.count()) >= 250, 60_000);
  victim.kill("SIGKILL");
  await once(victim, "exit");
  const storedAtKill = await world.count();
  t.ok(storedAtKill < total / 2, `killed mid-stream, after ${storedAtKill} of ${total / 2} events`);

  // The second half, while the standby takes over.
  for (let i = total / 2; i < total; i++) sink.record(auditEvent(i % 10 === 9 ? "" : tenants[i % 3], { resource: `jobs/j${i}` }));
  await sink.flush();
  await world.until("the standby holds the lock", async () => (await world.lockHolder()) === (holder === "store-a" ? "store-b" : "store-a"), 60_000);
  // Events the victim had in hand come back after ack_wait (30 s).
  await world.until("every event stored", async () => (await world.count()) >= total, 180_000);
  await world.until("the consumer drained", async () => {
    const info = await world.bus.jsm.consumers.info(world.topology.eventsStream, world.topology.storeConsumer);
    return info.num_pending + info.num_ack_pending === 0;
  }, 180_000);

  t.equal(await world.count(), total, "exactly every event, none twice");
  const ids = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_event_ids");
  t.equal(ids.rows[0].n, total, "one id row per event");
  const distinct = await db.query<{ n: number }>("SELECT count(DISTINCT event_id)::int AS n FROM audit_events");
  t.equal(distinct.rows[0].n, total, "no event id twice");
  const chains = await db.query<{ tenant_id: string; n: string; seqs: string; lo: string; hi: string }>(
    "SELECT tenant_id, count(*) AS n, count(DISTINCT sequence) AS seqs, min(sequence) AS lo, max(sequence) AS hi FROM audit_events GROUP BY tenant_id ORDER BY tenant_id",
  );
  t.equal(chains.rows.length, 4, "three tenants and the unattributed chain");
  for (const c of chains.rows) t.same([c.lo, c.hi, c.seqs], ["1", c.n, c.n], `tenant ${c.tenant_id}: sequences 1..${c.n}, no gap, no duplicate`);

  // Stopped cleanly, the standby signs what is pending: every chain verifies, fully signed.
  standby.kill("SIGTERM");
  await once(standby, "exit");
  for (const tenant of [...tenants, world.unattributedTenantId]) {
    const verdict = await domain.verify(tenant, { startSequence: 0n, endSequence: 0n });
    t.equal(verdict.intact, true, `tenant ${tenant}: ${verdict.reason || "intact"}`);
    t.equal(verdict.unsignedCount, 0n, "every event covered by a signed checkpoint, those of the killed store included");
    t.ok(verdict.checkpointsVerified >= 1n);
  }
});
