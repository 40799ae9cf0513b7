// The audit store's session: what it writes goes through the connection that holds the store
// lock, only a clean stop signs what is pending, and what it holds in memory is bounded in bytes.
import t from "tap";
import { create, toBinary } from "@bufbuild/protobuf";
import { randomUUID } from "node:crypto";
import { AuditEventSchema } from "../gen/jobmesh/v1/audit_pb.js";
// The chain's first prev_hash (genesisHash in internal/audit), as the store writes a new head.
const genesisHash = "0".repeat(64);
import { createPool } from "../internal/db/index.ts";
import { auditEvent, createAuditStoreWorld } from "./support/audit-store.ts";

t.setTimeout(300_000);
const world = await createAuditStoreWorld(t);
const { db, sink, bus, topology } = world;

const lockBackend = async () => {
  const { rows } = await db.query<{ pid: number }>(
    `SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.objid::text::bigint = (hashtext('jobmesh.audit_store')::bigint & 4294967295)`,
  );
  return rows[0]?.pid;
};

void t.test("a store that lost its lock connection signs nothing after (its successor does)", async (t) => {
  const tenant = randomUUID();
  // No checkpoint is due for a minute: whatever is signed below is signed by a stop.
  const store = await world.startStore({ checkpointIntervalMs: 60_000 });
  await world.until("the store holds the lock", async () => (await lockBackend()) !== undefined);
  for (let i = 0; i < 50; i++) sink.record(auditEvent(tenant));
  await sink.flush();
  await world.until("the events stored", async () => (await world.count(tenant)) === 50);
  const checkpoints = async () => (await db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_checkpoints WHERE tenant_id = $1", [tenant])).rows[0].n;
  t.equal(await checkpoints(), 0, "nothing signed yet");

  // The lock connection dies; a successor (this test) takes the lock at once, before the store
  // retries (it waits 2 s): pg_advisory_lock queues behind the dying session.
  const successor = await db.connect();
  try {
    const pid = (await lockBackend())!;
    await db.query("SELECT pg_terminate_backend($1)", [pid]);
    await successor.query("SELECT pg_advisory_lock(hashtext('jobmesh.audit_store'))");
    await store.stop();
    t.equal(await checkpoints(), 0, "the store that lost the lock stored no checkpoint (its pending events are the successor's to sign)");
  } finally {
    await successor.query("SELECT pg_advisory_unlock_all()").catch(() => {});
    successor.release();
  }

  // The successor (a store again) signs them, from the table.
  const next = await world.startStore({ checkpointIntervalMs: 500 });
  await world.until("the successor signed the tail", async () => (await db.query<{ s: string | null }>("SELECT max(sequence)::text AS s FROM audit_checkpoints WHERE tenant_id = $1", [tenant])).rows[0].s === "50");
  const verdict = await world.domain.verify(tenant, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, true, verdict.reason);
  t.equal(verdict.unsignedCount, 0n);
  await next.stop();
});

void t.test("large events - no batch holds more than 4 MiB of them, however many wait", async (t) => {
  const tenant = randomUUID();
  const store = await world.startStore({ batchSize: 100 });
  await world.until("the store holds the lock", async () => (await lockBackend()) !== undefined);
  // The store is stopped at its first event by the test holding the tenant's chain head, so
  // that the large events behind it all wait in its hands (or the consumer's) at once.
  await db.query("INSERT INTO audit_chain_heads (tenant_id, sequence, hash) VALUES ($1, 0, $2)", [tenant, genesisHash]);
  const blocker = await db.connect();
  await blocker.query("BEGIN");
  await blocker.query("SELECT 1 FROM audit_chain_heads WHERE tenant_id = $1 FOR UPDATE", [tenant]);
  try {
    sink.record(auditEvent(tenant));
    await sink.flush();
    const big = "x".repeat(500 * 1024);
    for (let i = 0; i < 30; i++) {
      const event = create(AuditEventSchema, { ...auditEvent(tenant), request: big });
      await bus.js.publish(topology.eventsSubject(tenant), toBinary(AuditEventSchema, event), { msgID: event.name });
    }
    // 12 delivered and unacknowledged: 11 large events in hand besides the blocked one, 5.5 MB.
    await world.until("the large events delivered to the store", async () => {
      const info = await bus.jsm.consumers.info(topology.eventsStream, topology.storeConsumer);
      return info.num_ack_pending >= 12;
    });
  } finally {
    await blocker.query("ROLLBACK");
    blocker.release();
  }
  await world.until("every event stored", async () => (await world.count(tenant)) === 31, 120_000);
  // A batch is one transaction: its rows share stored_time (now() of the transaction).
  const { rows } = await db.query<{ n: number; bytes: string }>(
    "SELECT count(*)::int AS n, sum(length(request))::text AS bytes FROM audit_events WHERE tenant_id = $1 GROUP BY stored_time ORDER BY stored_time",
    [tenant],
  );
  const largest = Math.max(...rows.map((r) => Number(r.bytes)));
  t.ok(largest <= 4 * 1024 * 1024, `the largest batch held ${largest} bytes of requests (batches: ${rows.map((r) => r.n).join(", ")})`);
  await store.stop();
});

void t.test("a pool connection - TCP keepalives asked of the server, so a vanished lock holder's lock goes in about a minute", async (t) => {
  const pool = createPool({ url: world.isolated.databaseUrl, max: 1 });
  try {
    const { rows } = await pool.query<{ idle: string; interval: string; count: string }>(
      "SELECT current_setting('tcp_keepalives_idle') AS idle, current_setting('tcp_keepalives_interval') AS interval, current_setting('tcp_keepalives_count') AS count",
    );
    t.same(rows[0], { idle: "30", interval: "10", count: "3" });
  } finally {
    await pool.end();
  }
});
