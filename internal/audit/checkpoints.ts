/**
 * Signed checkpoints of the tenants' audit chains: the checkpointer, and the published copies.
 * The key that signs them is in checkpoints-keys.ts (re-exported here).
 *
 * A checkpoint lists the hash of every event since the tenant's previous checkpoint. It is
 * INSERTed into audit_checkpoints (the source) and published on the checkpoints stream (the
 * outside copy: a rewrite of Postgres no longer matches it). A publish that fails is retried,
 * and after a restart the checkpoints the stream lacks are republished from the table.
 *
 * The window: events the previous store committed but did not sign before it died are signed by
 * the next one from audit_events (resume), after it re-verified their links and hashes; a change
 * made in Postgres in between, recomputed consistently, would be signed as it stands.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import type { JetStreamClient } from "@nats-io/jetstream";
import { AuditCheckpointSchema, type AuditCheckpoint } from "../../gen/jobmesh/v1/audit_pb.js";
import type { Pool, Queryable } from "../db/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { genesisHash, hexHash, signCheckpoint } from "./chain-hash.ts";
import { createChainVerifier } from "./chain.ts";
import type { AuditKey } from "./checkpoints-keys.ts";
import { auditEventColumns, checkpointColumns, checkpointOfRow, eventOfRow, type AuditCheckpointRow, type AuditEventRow } from "./rows.ts";
import type { AuditTopology } from "../bus/topology.ts";

export { loadAuditSigningKey, trustedPublicKeys, trustedSigningKeys, type AuditKey } from "./checkpoints-keys.ts";
export { publishedCheckpoints, publishedHead } from "./checkpoints-published.ts";

export interface CheckpointerDeps {
  db: Pool;
  /**
   * Runs a checkpoint's insert on the store's lock connection (the consumer passes its lock
   * session, and runs the work between its batches, never inside one): a store that lost the
   * lock (its connection gone) can no longer store a checkpoint. `work` opens and ends its own
   * transaction. Not given: a transaction on a pool connection.
   */
  session?: <T>(work: (q: Queryable) => Promise<T>) => Promise<T>;
  js: JetStreamClient;
  topology: AuditTopology;
  key: AuditKey;
  log: Logger;
}

export interface Checkpointer {
  /** Called after each committed event, in sequence order per tenant. */
  append(tenantId: string, sequence: bigint, hash: string): void;
  /** Tenants whose oldest unsigned hash is intervalMs old, or with maxEvents unsigned, or with a checkpoint to republish. */
  due(now: number, intervalMs: number, maxEvents?: number): string[];
  /** Signs the tenant's pending hashes (in checkpoints of at most 1000), stores and publishes them; returns the last. */
  sign(tenantId: string): Promise<AuditCheckpoint>;
  /** After a restart: pending = the events after the tenant's last checkpoint, and the checkpoints the stream lacks are republished. */
  resume(tenantId: string): Promise<void>;
}

// A checkpoint of 1000 hashes is 32 KB: far below the NATS payload limit, whatever the backlog.
const maxHashesPerCheckpoint = 1000;

interface Pending {
  firstSequence: bigint;
  hashes: string[];
  /** When the oldest pending hash arrived (ms). */
  since: number;
}

interface TenantState {
  /** The sequence of the last checkpoint stored, when known. */
  signedUpTo?: bigint;
  pending?: Pending;
  /** The hashes in memory cannot be trusted to be contiguous: re-read them from the table. */
  reload: boolean;
  /** When the table was last re-read (a reload that could not close a gap waits an interval). */
  reloadTime: number;
  unpublished: AuditCheckpoint[];
  lastRetry: number;
  /** sign() and resume() of one tenant run one at a time. */
  busy: Promise<unknown>;
}

// Continuity is enforced here, not only in memory: a checkpoint is stored only when it starts
// right after the tenant's last one (a stale holder cannot sign an overlapping range), under a
// per-tenant transaction lock so that two holders cannot both see the same "last".
const lockTenantCheckpoints = "SELECT pg_advisory_xact_lock(hashtext('jobmesh.audit_checkpoints:' || $1::text))";
const insertCheckpoint = `INSERT INTO audit_checkpoints (tenant_id, sequence, first_sequence, hash, checkpoint_time, event_hashes, key_id, signature)
  SELECT $1, $2, $3, $4, $5, $6, $7, $8
  WHERE $3::bigint = coalesce((SELECT max(sequence) FROM audit_checkpoints WHERE tenant_id = $1), 0) + 1
  ON CONFLICT (tenant_id, sequence) DO NOTHING`;

/** Inserts a signed checkpoint in a transaction of its own on `q`, as the appender; false when refused (not contiguous). */
async function storeCheckpoint(q: Queryable, cp: AuditCheckpoint, time: Date): Promise<boolean> {
  await q.query("BEGIN");
  try {
    await q.query("SET LOCAL ROLE jobmesh_audit_appender");
    await q.query(lockTenantCheckpoints, [cp.tenant]);
    const { rowCount } = await q.query(insertCheckpoint, [
      cp.tenant, cp.sequence.toString(), cp.firstSequence.toString(), cp.hash, time,
      Buffer.from(cp.eventHashes), cp.keyId, Buffer.from(cp.signature),
    ]);
    await q.query("COMMIT");
    return rowCount === 1;
  } catch (error) {
    await q.query("ROLLBACK").catch(() => {});
    throw error;
  }
}

/** Keeps each tenant's unsigned hashes and turns them into signed, stored, published checkpoints. */
export function createCheckpointer(deps: CheckpointerDeps): Checkpointer {
  const { db, js, topology, key, log } = deps;
  const session = deps.session ?? (async <T>(work: (q: Queryable) => Promise<T>): Promise<T> => {
    const client = await db.connect();
    try {
      return await work(client);
    } finally {
      client.release();
    }
  });
  const tenants = new Map<string, TenantState>();
  const stateOf = (tenantId: string): TenantState => {
    let state = tenants.get(tenantId);
    if (!state) tenants.set(tenantId, (state = { reload: false, reloadTime: 0, unpublished: [], lastRetry: 0, busy: Promise.resolve() }));
    return state;
  };
  const serially = <T>(state: TenantState, work: () => Promise<T>): Promise<T> => {
    const run = state.busy.then(work, work);
    state.busy = run.catch(() => {});
    return run;
  };

  /** Publishes the checkpoint; false (and kept for a retry) when the stream did not take it. */
  async function publish(state: TenantState, cp: AuditCheckpoint): Promise<boolean> {
    try {
      const bytes = toBinary(AuditCheckpointSchema, cp);
      await js.publish(topology.checkpointsSubject(cp.tenant), bytes, { msgID: `${cp.tenant}:${cp.sequence}` });
      // The tenant's head: published after the checkpoint, in order, so the last one stands.
      await js.publish(topology.headsSubject(cp.tenant), bytes, { msgID: `head:${cp.tenant}:${cp.sequence}` });
      return true;
    } catch (error) {
      log.warn({ err: error, tenant: cp.tenant, sequence: cp.sequence.toString() }, "audit checkpoint stored but not published; retried");
      state.unpublished.push(cp);
      return false;
    }
  }

  async function republish(state: TenantState): Promise<void> {
    state.lastRetry = Date.now();
    const queued = state.unpublished.splice(0);
    // In order; after the first failure the rest wait for the next retry rather than each time out.
    while (queued.length > 0) {
      if (!(await publish(state, queued.shift()!))) {
        state.unpublished.push(...queued);
        return;
      }
    }
  }

  /** The tenant's last stored checkpoint. */
  async function lastStored(tenantId: string): Promise<AuditCheckpoint | undefined> {
    const { rows } = await db.query<AuditCheckpointRow>(`SELECT ${checkpointColumns} FROM audit_checkpoints WHERE tenant_id = $1 ORDER BY sequence DESC LIMIT 1`, [tenantId]);
    return rows[0] && checkpointOfRow(rows[0]);
  }

  /**
   * Re-reads the unsigned events' hashes from the table. They are signed as stored, even where
   * a row does not verify (logged): a verifier still reports that row, as it would unsigned. A
   * row missing between two present ones is signed by the hash the next one links to, so the
   * verifier reports it MISSING rather than the signing stop there for good.
   */
  async function reloadPending(tenantId: string, state: TenantState): Promise<void> {
    const last = await lastStored(tenantId);
    const after = last?.sequence ?? 0n;
    const { rows } = await db.query<AuditEventRow>(`SELECT ${auditEventColumns} FROM audit_events WHERE tenant_id = $1 AND sequence > $2 ORDER BY sequence`, [tenantId, after.toString()]);
    const verifier = createChainVerifier({ keys: new Map(), startSequence: after + 1n, firstPrevHash: last?.hash ?? genesisHash });
    const hashes: string[] = [];
    let next = after + 1n;
    for (const row of rows) {
      verifier.addEvent(eventOfRow(row));
      const sequence = BigInt(row.sequence);
      if (sequence === next + 1n && hexHash.test(row.prev_hash)) hashes.push(row.prev_hash);
      else if (sequence !== next) break;
      hashes.push(row.hash);
      next = sequence + 1n;
    }
    const verdict = verifier.finish();
    if (!verdict.intact) log.error({ tenant: tenantId, reason: verdict.reason }, "audit chain broken in the unsigned events a previous store left; signed as stored");
    if (next <= BigInt(rows.at(-1)?.sequence ?? 0)) log.error({ tenant: tenantId, from: next.toString() }, "audit events missing in the unsigned tail; the events after them are not signed");
    state.signedUpTo = after;
    state.pending = hashes.length > 0 ? { firstSequence: after + 1n, hashes, since: 0 } : undefined;
    state.reload = false;
    state.reloadTime = Date.now();
  }

  /** Republishes the stored checkpoints after the last one the stream holds for the tenant. */
  async function republishMissing(tenantId: string, state: TenantState): Promise<void> {
    const stream = await js.streams.get(topology.checkpointsStream);
    const latest = await stream.getMessage({ last_by_subj: topology.checkpointsSubject(tenantId) }).catch(() => null);
    const onStream = latest ? fromBinary(AuditCheckpointSchema, latest.data).sequence : 0n;
    const { rows } = await db.query<AuditCheckpointRow>(`SELECT ${checkpointColumns} FROM audit_checkpoints WHERE tenant_id = $1 AND sequence > $2 ORDER BY sequence`, [tenantId, onStream.toString()]);
    const missing = rows.map(checkpointOfRow);
    state.unpublished.push(...missing);
    await republish(state);
  }

  async function signChunk(tenantId: string, state: TenantState, pending: Pending): Promise<AuditCheckpoint> {
    const hashes = pending.hashes.slice(0, maxHashesPerCheckpoint);
    const time = new Date();
    const cp = signCheckpoint({ tenant: tenantId, firstSequence: pending.firstSequence, hashes, time }, key);
    const stored = await session((q) => storeCheckpoint(q, cp, time));
    if (!stored) {
      // Not right after the tenant's last stored checkpoint (another holder signed meanwhile):
      // the table stands; what is unsigned is re-read from it before the next signing.
      log.warn({ tenant: tenantId, first: cp.firstSequence.toString(), sequence: cp.sequence.toString() }, "audit checkpoint refused: not contiguous with the stored ones; the table's are kept");
      state.pending = undefined;
      state.reload = true;
      state.reloadTime = 0;
      const last = await lastStored(tenantId);
      if (!last) throw new Error(`audit checkpoint ${tenantId}:${cp.sequence} refused and the tenant has none stored`);
      return last;
    }
    const result = cp;
    pending.hashes.splice(0, hashes.length);
    pending.firstSequence += BigInt(hashes.length);
    if (pending.hashes.length === 0) state.pending = undefined;
    state.signedUpTo = cp.sequence;
    await publish(state, result);
    return result;
  }

  return {
    append(tenantId, sequence, hash) {
      const state = stateOf(tenantId);
      const next = state.pending ? state.pending.firstSequence + BigInt(state.pending.hashes.length) : (state.signedUpTo ?? 0n) + 1n;
      if (sequence < next) return; // already pending (appended again after a reload)
      if (sequence > next) {
        // Not contiguous with what is held (a tenant never resumed, or a reload in flight): the
        // table is read again before the next signing.
        state.reload = true;
        return;
      }
      if (state.pending) state.pending.hashes.push(hash);
      else state.pending = { firstSequence: sequence, hashes: [hash], since: Date.now() };
    },
    due(now, intervalMs, maxEvents = maxHashesPerCheckpoint) {
      const due: string[] = [];
      for (const [tenantId, state] of tenants) {
        const p = state.pending;
        if (state.reload ? now - state.reloadTime >= intervalMs : p && (now - p.since >= intervalMs || p.hashes.length >= maxEvents)) due.push(tenantId);
        else if (state.unpublished.length > 0 && now - state.lastRetry >= intervalMs) due.push(tenantId);
      }
      return due;
    },
    sign(tenantId) {
      const state = stateOf(tenantId);
      return serially(state, async () => {
        if (state.unpublished.length > 0) await republish(state);
        if (state.reload) await reloadPending(tenantId, state);
        let last: AuditCheckpoint | undefined;
        while (state.pending && !state.reload) last = await signChunk(tenantId, state, state.pending);
        last ??= await lastStored(tenantId);
        if (!last) throw new Error(`tenant ${tenantId} has no audit events to sign`);
        return last;
      });
    },
    resume(tenantId) {
      const state = stateOf(tenantId);
      return serially(state, async () => {
        await reloadPending(tenantId, state);
        await republishMissing(tenantId, state).catch((error: unknown) => {
          log.warn({ err: error, tenant: tenantId }, "audit checkpoints not compared with the stream; retried");
        });
      });
    },
  };
}
