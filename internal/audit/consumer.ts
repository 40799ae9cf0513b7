/**
 * The audit store: the one process of a deployment that holds a Postgres advisory lock reads the
 * audit stream's durable consumer and appends the events to each tenant's chain, in batches,
 * one transaction per batch; the others wait for the lock and take over when its holder dies.
 *
 * Nothing lost, nothing twice: a batch is committed before its messages are acknowledged (the
 * shared consumer loop, bus/consumer-loop.ts), so a crash in between redelivers them, and the
 * event ids already in audit_event_ids are skipped.
 * Committed events go to the checkpointer, which signs each tenant's new hashes at least every
 * checkpointIntervalMs and every 1000 events.
 */
import { fromBinary } from "@bufbuild/protobuf";
import type { JetStreamClient, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type pg from "pg";
import { AuditEventSchema, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import type { Pool, Queryable } from "../db/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { runDurableConsumer } from "../bus/consumer-loop.ts";
import { chainHashOf, genesisHash } from "./chain.ts";
import { createCheckpointer, loadAuditSigningKey } from "./checkpoints.ts";
import { dropExpiredPartitions } from "./retention.ts";
import { appendAuditEventRows, eventOfRow, isoOfMicros, isUuid, rowOfEvent, type AuditEventRow } from "./rows.ts";
import type { AuditTopology } from "../bus/topology.ts";

export interface AuditStoreDeps {
  db: Pool;
  js: JetStreamClient;
  jsm: JetStreamManager;
  topology: AuditTopology;
  keyEncryptionKey: Buffer;
  log: Logger;
  /** The chain of events whose tenant is not known (the bootstrap tenant's). */
  unattributedTenantId: string;
  checkpointIntervalMs: number;
  /** Days a month partition is kept after its end; 0 keeps everything. */
  retentionDays: number;
  batchSize?: number;
}

export interface AuditStore {
  /** Stops reading, finishes the batch in hand, signs what is pending, releases the lock. */
  stop(): Promise<void>;
  /** Events this process stored (duplicates not counted). */
  stored(): bigint;
  /** Messages of the store consumer not yet acknowledged (pending + in flight). */
  lag(): Promise<number>;
}

// One storer per database: the key is the same for every process of a deployment.
const lockName = "jobmesh.audit_store";
const lockRetryMs = 2_000;
const retentionEveryMs = 3_600_000;
// Checked a few times per interval, so a checkpoint is never much later than the interval.
const tickMs = (intervalMs: number) => Math.max(50, Math.min(250, intervalMs / 4));
// Memory is bounded in bytes as well as messages: an event can be up to NATS's max_payload
// (1 MiB), so 2 × batchSize of them were up to a GB. The consumer loop pulls at most batchBytes
// at a time (a message must fit in it whole: above max_payload), reads ahead at most 2 ×
// batchBytes, and a batch stops at batchBytes (always at least one event).
const batchBytes = 4 * 1024 * 1024;

/** The storing of one lock holder: its connection, checkpointer and partition cache. */
type Session = Awaited<ReturnType<typeof openSession>>;

async function openSession(deps: AuditStoreDeps, client: pg.PoolClient) {
  // Everything this holder writes goes through the lock connection, one piece of work at a time
  // (a batch's transaction, a checkpoint's): once the connection is gone, so is the lock, and a
  // holder that lost it can store neither events nor checkpoints. A pool connection could.
  let turn: Promise<unknown> = Promise.resolve();
  const exclusive = <T>(work: (q: Queryable) => Promise<T>): Promise<T> => {
    const run = turn.then(() => work(client), () => work(client));
    turn = run.catch(() => {});
    return run;
  };
  const key = await loadAuditSigningKey({ db: deps.db, keyEncryptionKey: deps.keyEncryptionKey });
  const checkpointer = createCheckpointer({ db: deps.db, session: exclusive, js: deps.js, topology: deps.topology, key, log: deps.log });
  // Events stored after a tenant's last checkpoint by the previous holder are signed by this one.
  const { rows } = await client.query<{ tenant_id: string }>("SELECT tenant_id FROM audit_chain_heads ORDER BY tenant_id");
  for (const { tenant_id } of rows) await checkpointer.resume(tenant_id);
  return { client, exclusive, checkpointer, partitions: new Set<string>() };
}

/** The event id of a message: the uuid of its name, or (a malformed name) one derived from its stream position. */
function eventIdOf(event: AuditEvent, msg: JsMsg, stream: string): string {
  const id = event.name.startsWith("auditEvents/") ? event.name.slice("auditEvents/".length) : "";
  if (isUuid(id)) return id.toLowerCase();
  const h = createHash("sha256").update(`${stream}:${msg.seq}`).digest("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

interface Arrived {
  msg: JsMsg;
  row: AuditEventRow;
}

/**
 * Stores one batch in one transaction and returns the rows it appended (in chain order per
 * tenant). Duplicates (by event id) are skipped; the caller acknowledges every message after.
 */
async function storeBatch(deps: AuditStoreDeps, session: Session, batch: Arrived[]): Promise<AuditEventRow[]> {
  return session.exclusive(() => storeBatchAlone(session, batch));
}

async function storeBatchAlone(session: Session, batch: Arrived[]): Promise<AuditEventRow[]> {
  const { client } = session;
  const byId = new Map<string, AuditEventRow>();
  for (const { row } of batch) if (!byId.has(row.event_id)) byId.set(row.event_id, row);
  const rows = [...byId.values()];
  // Partitions are DDL: made before the transaction, so the insert never waits on a catalog lock.
  for (const row of rows) {
    const us = BigInt(row.event_time_us);
    const month = `${row.tenant_id}:${isoOfMicros(us).slice(0, 7)}`;
    if (session.partitions.has(month)) continue;
    await client.query("SELECT audit_events_partition($1::uuid, $2::timestamptz)", [row.tenant_id, isoOfMicros(us)]);
    session.partitions.add(month);
  }
  const tenants = [...new Set(rows.map((r) => r.tenant_id))].sort();
  // The whole transaction runs as the appender role: it can insert and read, never change.
  await client.query("BEGIN; SET LOCAL ROLE jobmesh_audit_appender");
  try {
    // Creates missing heads and locks them all, in tenant order: two holders (a stale one and its
    // successor) queue on the same rows and never deadlock.
    const heads = await client.query<{ tenant_id: string; sequence: string; hash: string }>(
      `INSERT INTO audit_chain_heads AS h (tenant_id, sequence, hash) SELECT unnest($1::uuid[]), 0, $2
       ON CONFLICT (tenant_id) DO UPDATE SET sequence = h.sequence RETURNING tenant_id, sequence, hash`,
      [tenants, genesisHash],
    );
    const head = new Map(heads.rows.map((h) => [h.tenant_id, { tenantId: h.tenant_id, sequence: BigInt(h.sequence), hash: h.hash }]));
    // Under the heads' locks no other holder can add these ids: the check cannot race.
    const known = await client.query<{ event_id: string }>("SELECT event_id FROM audit_event_ids WHERE event_id = ANY($1::uuid[])", [rows.map((r) => r.event_id)]);
    const seen = new Set(known.rows.map((r) => r.event_id));
    const fresh = rows.filter((r) => !seen.has(r.event_id));
    if (fresh.length === 0) {
      await client.query("COMMIT");
      return [];
    }
    for (const row of fresh) {
      const h = head.get(row.tenant_id)!;
      row.sequence = (h.sequence + 1n).toString();
      row.prev_hash = h.hash;
      // The hash of the event as it will be read back from this row, byte for byte.
      row.hash = chainHashOf(h.hash, eventOfRow(row));
      h.sequence += 1n;
      h.hash = row.hash;
    }
    const moved = [...head.values()].filter((h) => h.sequence > 0n);
    await appendAuditEventRows(client, fresh, moved);
    await client.query("COMMIT");
    return fresh;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  }
}

/** Starts storing (or waiting for the lock to store); resolves once the loop runs. */
export async function startAuditStore(deps: AuditStoreDeps): Promise<AuditStore> {
  const batchSize = deps.batchSize ?? 500;
  const { topology, log } = deps;
  const stopping = new AbortController();
  let storedCount = 0n;

  function decode(msg: JsMsg): Arrived | undefined {
    let event: AuditEvent;
    try {
      event = fromBinary(AuditEventSchema, msg.data);
    } catch (error) {
      // Not an event at all: it can never be stored, and must not stop the ones behind it.
      log.error({ err: error, stream_sequence: msg.seq }, "audit message is not an AuditEvent; dropped");
      msg.term();
      return undefined;
    }
    const tenantId = isUuid(event.tenant) ? event.tenant.toLowerCase() : deps.unattributedTenantId;
    const arrivalUs = BigInt(msg.time.getTime()) * 1000n;
    return { msg, row: rowOfEvent(event, { tenantId, eventId: eventIdOf(event, msg, topology.eventsStream), arrivalUs }) };
  }

  /** Signs the due checkpoints; one run at a time, another run queued when asked meanwhile. */
  let signing: Promise<void> | undefined;
  let signAgain = false;
  function signDue(session: Session, intervalMs: number): Promise<void> {
    if (signing) {
      signAgain = true;
      return signing;
    }
    signing = (async () => {
      do {
        signAgain = false;
        for (const tenant of session.checkpointer.due(Date.now(), intervalMs, 1000)) {
          await session.checkpointer.sign(tenant).catch((error: unknown) => log.error({ err: error, tenant }, "audit checkpoint not signed; retried on the next tick"));
        }
      } while (signAgain && intervalMs > 0);
    })().finally(() => (signing = undefined));
    return signing;
  }

  /** Stores a batch; a batch whose data Postgres refuses is stored event by event, refusing only the bad one. */
  async function store(session: Session, batch: Arrived[]): Promise<void> {
    let appended: AuditEventRow[];
    try {
      appended = await storeBatch(deps, session, batch);
    } catch (error) {
      const code = (error as { code?: string }).code ?? "";
      if (!code.startsWith("22")) throw error;
      if (batch.length > 1) {
        for (const one of batch) await store(session, [one]);
        return;
      }
      log.error({ err: error, stream_sequence: batch[0].msg.seq }, "audit event refused by Postgres; dropped");
      batch[0].msg.term();
      return;
    }
    for (const { msg } of batch) msg.ack();
    for (const row of appended) session.checkpointer.append(row.tenant_id, BigInt(row.sequence), row.hash);
    storedCount += BigInt(appended.length);
    void signDue(session, deps.checkpointIntervalMs);
  }

  /** Holds the lock on `client` and stores until stopped or an error ends the session. */
  async function run(client: pg.PoolClient): Promise<void> {
    const session = await openSession(deps, client);
    // The session ends when stop() is asked, when a batch is not stored, or when the lock
    // connection is lost (noticed at once, even while idle, not at the next batch).
    const ended = new AbortController();
    let failure: Error | undefined;
    const end = (error: Error) => {
      failure ??= error;
      ended.abort();
    };
    client.on("error", end);
    const retention = async () => {
      const dropped = await session.exclusive(() => dropExpiredPartitions(deps.db, new Date(), deps.retentionDays));
      if (dropped.length > 0) {
        session.partitions.clear();
        log.info({ partitions: dropped.map((d) => d.name) }, "audit partitions past retention dropped");
      }
    };
    const tick = setInterval(() => void signDue(session, deps.checkpointIntervalMs), tickMs(deps.checkpointIntervalMs));
    let retentionTimer: NodeJS.Timeout | undefined;
    // Set only when the loop ends because stop() was asked, not because something failed.
    let clean = false;
    try {
      if (deps.retentionDays > 0) {
        await retention();
        retentionTimer = setInterval(() => void retention().catch((error: unknown) => log.error({ err: error }, "audit retention failed; retried in an hour")), retentionEveryMs);
        retentionTimer.unref();
      }
      await runDurableConsumer({
        js: deps.js,
        stream: topology.eventsStream,
        consumer: topology.storeConsumer,
        maxMessages: batchSize,
        maxBytes: batchBytes,
        log,
        signal: AbortSignal.any([stopping.signal, ended.signal]),
        async handle(batch) {
          const arrived = batch.map(decode).filter((a) => a !== undefined);
          if (arrived.length === 0) return;
          // Not stored: the loop gives the batch back to the stream, for whoever holds the lock next.
          await store(session, arrived).catch((error: unknown) => {
            end(error as Error);
            throw error;
          });
        },
      });
      if (failure) throw failure;
      clean = true;
    } finally {
      client.removeListener("error", end);
      clearInterval(tick);
      clearInterval(retentionTimer);
      await signing?.catch(() => {});
      // Only a holder stopping cleanly signs what is pending. After an error the lock may be gone
      // (the connection lost) and a successor may be signing the same events: the successor
      // signs them, from the table, as they stand.
      if (clean) await signDue(session, 0).catch(() => {});
    }
  }

  const loop = (async () => {
    while (!stopping.signal.aborted) {
      let client: pg.PoolClient | undefined;
      let broken: Error | undefined;
      const onError = (error: Error) => (broken = error);
      try {
        client = await deps.db.connect();
        client.on("error", onError);
        const { rows } = await client.query<{ locked: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS locked", [lockName]);
        if (rows[0].locked) {
          log.info({}, "audit store: holding the store lock");
          await run(client);
          await client.query("SELECT pg_advisory_unlock(hashtext($1))", [lockName]);
          continue;
        }
      } catch (error) {
        broken ??= error as Error;
        log.error({ err: error }, "audit store stopped storing; retrying");
      } finally {
        client?.removeListener("error", onError);
        // A connection that failed is dropped, which releases the lock with its session.
        client?.release(broken);
      }
      await sleep(lockRetryMs, undefined, { signal: stopping.signal }).catch(() => {});
    }
  })();

  return {
    async stop() {
      stopping.abort();
      await loop;
    },
    stored: () => storedCount,
    async lag() {
      const info = await deps.jsm.consumers.info(topology.eventsStream, topology.storeConsumer);
      return info.num_pending + info.num_ack_pending;
    },
  };
}
