// The audit store killed mid-stream (SIGKILL, inside a transaction with a batch in hand) loses and
// duplicates nothing: its standby takes the store lock, the unacknowledged events come back
// (after the consumer's ack_wait) and those already committed are skipped by event id.
import t from "tap";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { auditEvent, createAuditStoreWorld } from "./support/audit-store.ts";

t.setTimeout(400_000);
// The chain's first prev_hash (genesisHash in internal/audit), as the store writes a new head.
const genesisHash = "0".repeat(64);
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

  // The kill point is made, not raced: the test holds the chain head of tenants[0] (made as the
  // store makes it), so the store appends the other chains and then stops, inside a transaction
  // with a batch in hand, at the first batch holding an event of tenants[0].
  await db.query("INSERT INTO audit_chain_heads (tenant_id, sequence, hash) VALUES ($1, 0, $2)", [tenants[0], genesisHash]);
  const blocker = await db.connect();
  await blocker.query("BEGIN");
  await blocker.query("SELECT 1 FROM audit_chain_heads WHERE tenant_id = $1 FOR UPDATE", [tenants[0]]);
  const others = (i: number) => (i % 10 === 9 ? "" : tenants[1 + (i % 2)]);
  const before = 300;
  for (let i = 0; i < before; i++) sink.record(auditEvent(others(i), { resource: `jobs/j${i}` }));
  await sink.flush();
  await world.until("the store has begun", async () => (await world.count()) === before, 60_000);
  // The first half, every chain's events mixed.
  for (let i = before; i < total / 2; i++) sink.record(auditEvent(i % 10 === 9 ? "" : tenants[i % 3], { resource: `jobs/j${i}` }));
  await sink.flush();
  await world.until("the store waits for the held chain head", async () => {
    const { rows } = await db.query<{ waiting: boolean }>(
      "SELECT wait_event_type = 'Lock' AS waiting FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND state = 'active'",
      [holder],
    );
    return rows.some((r) => r.waiting);
  }, 60_000);
  victim.kill("SIGKILL");
  await once(victim, "exit");
  await blocker.query("ROLLBACK");
  blocker.release();
  const storedAtKill = await world.count();
  t.equal(storedAtKill, before, `killed mid-stream, inside a transaction, after ${storedAtKill} of ${total / 2} events`);

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
