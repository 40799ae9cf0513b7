/**
 * The audit domain AuditService calls: list, get, verify, export and checkpoints, every query
 * scoped to the caller's tenant (`WHERE tenant_id = $1`), so another tenant's events are never
 * seen, not even as "forbidden".
 */
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import {
  AuditChainBreak,
  AuditSigningKeySchema,
  ExportAuditEventsResponseSchema,
  type AuditCheckpoint,
  type AuditEvent,
  type ExportAuditEventsResponse,
} from "../../gen/jobmesh/v1/audit_pb.js";
import type { Pool } from "../db/index.ts";
import { keysetSql, pageSizeOf, parseOrderBy, splitPage, type KeysetPosition, type PageTokens } from "../paging/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { createChainVerifier, type ChainVerdict } from "./chain.ts";
import { chainRangeOf, checkpointsInRange, eventsInRange, type ChainRange } from "./chain-reader.ts";
import { trustedPublicKeys, trustedSigningKeys } from "./checkpoints.ts";
import { AuditEventNotFoundError } from "./errors.ts";
import { retentionHorizonOf } from "./retention.ts";
import { auditFilterConditions } from "./filter.ts";
import { auditEventColumns, checkpointColumns, checkpointOfRow, eventOfRow, isUuid, type AuditCheckpointRow, type AuditEventRow } from "./rows.ts";
import type { AuditTopology } from "../bus/topology.ts";

export interface AuditDomainDeps {
  db: Pool;
  js: JetStreamClient;
  jsm: JetStreamManager;
  topology: AuditTopology;
  pageTokens: PageTokens;
  keyEncryptionKey: Buffer;
  log: Logger;
  /**
   * How long a stored event may stay unsigned and the chain still be called intact (default
   * 60 s: many checkpoint intervals, which are at most 5 s, and a store's takeover). Past it the
   * signatures are not keeping up, or were removed: the first unsigned event is the break.
   */
  unsignedGraceMs?: number;
  /**
   * The retention (JOBMESH_AUDIT_RETENTION_DAYS, default 400): a retention horizon is trusted
   * only when the checkpoint that signed the hash before it is older than this.
   */
  retentionDays?: number;
}

export interface ListAuditEventsQuery {
  pageSize: number;
  pageToken: string;
  filter: string;
  orderBy: string;
}

export interface AuditRangeQuery {
  startSequence: bigint;
  endSequence: bigint;
  startTime?: Timestamp;
  endTime?: Timestamp;
}

export type AuditDomain = ReturnType<typeof createAuditDomain>;

const sortColumns: Record<string, { sql: string; type: string }> = {
  sequence: { sql: "sequence", type: "bigint" },
  event_time: { sql: "event_time", type: "timestamptz" },
};

/** Builds the domain over the audit tables, the checkpoints stream and the trusted keys. */
export function createAuditDomain(deps: AuditDomainDeps) {
  const { db } = deps;

  /** Feeds a range's events and checkpoints, each checkpoint after the event at its sequence. */
  async function* interleaved(tenantId: string, range: ChainRange) {
    const cps = await checkpointsInRange(db, deps.js, deps.topology, tenantId, range);
    const it = cps.checkpoints[Symbol.asyncIterator]();
    let next = await it.next();
    for await (const event of eventsInRange(db, tenantId, range)) {
      yield { event } as { event?: AuditEvent; checkpoint?: AuditCheckpoint };
      while (!next.done && next.value.sequence <= event.sequence) {
        yield { checkpoint: next.value };
        next = await it.next();
      }
    }
    for (; !next.done; next = await it.next()) yield { checkpoint: next.value };
    return cps.mismatch();
  }

  /** The sequences bounding a time range (start_time <= event_time < end_time), within the given ones. */
  async function sequencesOfTimes(tenantId: string, q: AuditRangeQuery): Promise<{ start: bigint; end: bigint } | undefined> {
    let start = q.startSequence;
    let end = q.endSequence;
    if (q.startTime) {
      const { rows } = await db.query<{ s: string | null }>("SELECT min(sequence)::text AS s FROM audit_events WHERE tenant_id = $1 AND event_time >= $2", [tenantId, timestampDate(q.startTime)]);
      if (rows[0].s === null) return undefined;
      if (BigInt(rows[0].s) > start) start = BigInt(rows[0].s);
    }
    if (q.endTime) {
      const { rows } = await db.query<{ s: string | null }>("SELECT max(sequence)::text AS s FROM audit_events WHERE tenant_id = $1 AND event_time < $2", [tenantId, timestampDate(q.endTime)]);
      if (rows[0].s === null) return undefined;
      if (end === 0n || BigInt(rows[0].s) < end) end = BigInt(rows[0].s);
    }
    if (end > 0n && start > end) return undefined;
    return { start, end };
  }

  const unsignedGraceMs = deps.unsignedGraceMs ?? 60_000;
  const retentionDays = deps.retentionDays ?? 400;

  /** An intact verdict, or a break at its first unsigned event when that was stored longer ago than the grace. */
  async function unsignedTooLong(tenantId: string, verdict: ChainVerdict): Promise<ChainVerdict> {
    const first = verdict.lastSequence - verdict.unsignedCount + 1n;
    const { rows } = await db.query<{ age_ms: number }>(
      "SELECT (extract(epoch FROM now() - min(stored_time)) * 1000)::float8 AS age_ms FROM audit_events WHERE tenant_id = $1 AND sequence = $2",
      [tenantId, first.toString()],
    );
    const ageMs = rows[0]?.age_ms ?? 0;
    if (ageMs <= unsignedGraceMs) return verdict;
    return {
      ...verdict,
      intact: false,
      firstBrokenSequence: first,
      breakKind: AuditChainBreak.CHECKPOINT_MISMATCH,
      reason: `sequence ${first}: stored ${Math.round(ageMs / 1000)} s ago and still signed by no checkpoint (${verdict.unsignedCount} events unsigned; a checkpoint is missing or the store is not signing)`,
    };
  }

  return {
    /** Events of the tenant matching the filter, newest first unless order_by says otherwise. */
    async list(tenantId: string, q: ListAuditEventsQuery): Promise<{ events: AuditEvent[]; nextPageToken: string }> {
      const params: unknown[] = [tenantId];
      const param = (value: unknown) => `$${params.push(value)}`;
      const where = ["tenant_id = $1", ...auditFilterConditions(q.filter, param)];
      const orderBy = parseOrderBy(q.orderBy, Object.keys(sortColumns), { field: "sequence", descending: true });
      const sort = sortColumns[orderBy.field];
      // The tenant is part of the key: a token is never a position in another tenant's list.
      const queryKey = JSON.stringify(["auditEvents", tenantId, q.filter, q.orderBy]);
      const after = q.pageToken ? deps.pageTokens.decode<KeysetPosition>(q.pageToken, queryKey) : undefined;
      const keyset = keysetSql({ sort: sort.sql, sortType: sort.type, id: "event_id", idType: "uuid", descending: orderBy.descending, after, param });
      if (keyset.resume) where.push(keyset.resume);
      const limit = pageSizeOf(q.pageSize);
      const { rows } = await db.query<AuditEventRow & { sort_value: string }>(
        `SELECT ${auditEventColumns}, (${sort.sql})::text AS sort_value FROM audit_events WHERE ${where.join(" AND ")}
         ${keyset.orderBy} LIMIT ${param(limit + 1)}`,
        params,
      );
      const { page, nextPageToken } = splitPage(rows, limit, (last) => [last.sort_value, last.event_id], deps.pageTokens, queryKey);
      return { events: page.map(eventOfRow), nextPageToken };
    },

    /** One event of the tenant by "auditEvents/{id}" or its id; another tenant's is not found. */
    async get(tenantId: string, id: string): Promise<AuditEvent> {
      const eventId = id.startsWith("auditEvents/") ? id.slice("auditEvents/".length) : id;
      if (!isUuid(eventId)) throw new AuditEventNotFoundError(`auditEvents/${eventId}`);
      const { rows } = await db.query<AuditEventRow>(
        `SELECT ${auditEventColumns} FROM audit_events
         WHERE tenant_id = $1 AND event_id = $2 AND sequence = (SELECT sequence FROM audit_event_ids WHERE event_id = $2 AND tenant_id = $1)`,
        [tenantId, eventId],
      );
      if (rows.length === 0) throw new AuditEventNotFoundError(`auditEvents/${eventId}`);
      return eventOfRow(rows[0]);
    },

    /**
     * Recomputes the tenant's chain over the range and checks every checkpoint (signature, and
     * the hash it signed for each sequence), preferring the copy published outside Postgres, and
     * compares Postgres's checkpoints with the published ones. The first break of either wins.
     */
    async verify(tenantId: string, q: { startSequence: bigint; endSequence: bigint }): Promise<ChainVerdict> {
      const keys = await trustedPublicKeys(db, deps.keyEncryptionKey);
      const horizon = await retentionHorizonOf(db, deps.js, deps.topology, tenantId, { keys, retentionDays });
      const range = await chainRangeOf(db, deps.js, deps.topology, tenantId, q.startSequence, q.endSequence, horizon);
      const verifier = createChainVerifier({ keys, startSequence: range.start, firstPrevHash: range.firstPrevHash, tenant: tenantId });
      const items = interleaved(tenantId, range);
      let item = await items.next();
      for (; !item.done; item = await items.next()) {
        if (item.value.event) verifier.addEvent(item.value.event);
        else if (item.value.checkpoint) verifier.addCheckpoint(item.value.checkpoint);
      }
      const verdict = verifier.finish();
      const mismatch = item.value;
      let result = verdict;
      if (mismatch && (verdict.intact || mismatch.sequence < verdict.firstBrokenSequence)) {
        result = { ...verdict, intact: false, firstBrokenSequence: mismatch.sequence, breakKind: AuditChainBreak.CHECKPOINT_MISMATCH, reason: mismatch.reason };
      } else if (verdict.intact && verdict.unsignedCount > 0n) {
        result = await unsignedTooLong(tenantId, verdict);
      }
      // Where the chain starts after retention, and what proves it (or why it is not trusted).
      if (horizon && q.startSequence <= horizon.firstSequence) result = { ...result, reason: result.reason ? `${result.reason}; ${horizon.evidence}` : horizon.evidence };
      return result;
    },

    /**
     * The keys, then the events in sequence order with each checkpoint right after the event at
     * its sequence; the end runs on to the next checkpoint. Read page by page.
     */
    async *export(tenantId: string, q: AuditRangeQuery): AsyncGenerator<ExportAuditEventsResponse> {
      const bounds = await sequencesOfTimes(tenantId, q);
      for (const key of await trustedSigningKeys(db, deps.keyEncryptionKey)) {
        const signingKey = create(AuditSigningKeySchema, { keyId: key.keyId, publicKey: key.publicKey, createTime: timestampFromDate(key.createTime) });
        yield create(ExportAuditEventsResponseSchema, { item: { case: "signingKey", value: signingKey } });
      }
      if (!bounds) return;
      const keys = await trustedPublicKeys(db, deps.keyEncryptionKey);
      const horizon = await retentionHorizonOf(db, deps.js, deps.topology, tenantId, { keys, retentionDays });
      const range = await chainRangeOf(db, deps.js, deps.topology, tenantId, bounds.start, bounds.end, horizon);
      for await (const { event, checkpoint } of interleaved(tenantId, range)) {
        if (event) yield create(ExportAuditEventsResponseSchema, { item: { case: "auditEvent", value: event } });
        else if (checkpoint) yield create(ExportAuditEventsResponseSchema, { item: { case: "checkpoint", value: checkpoint } });
      }
    },

    /** The tenant's checkpoints in Postgres, newest first. */
    async listCheckpoints(tenantId: string, q: { pageSize: number; pageToken: string }): Promise<{ checkpoints: AuditCheckpoint[]; nextPageToken: string }> {
      const queryKey = JSON.stringify(["auditCheckpoints", tenantId]);
      const after = q.pageToken ? deps.pageTokens.decode<KeysetPosition>(q.pageToken, queryKey) : undefined;
      const limit = pageSizeOf(q.pageSize);
      const params: unknown[] = [tenantId, after ? after[0] : null, limit + 1];
      const { rows } = await db.query<AuditCheckpointRow>(
        `SELECT ${checkpointColumns} FROM audit_checkpoints WHERE tenant_id = $1 AND ($2::bigint IS NULL OR sequence < $2::bigint)
         ORDER BY sequence DESC LIMIT $3`,
        params,
      );
      const { page, nextPageToken } = splitPage(rows, limit, (last) => [last.sequence, last.sequence], deps.pageTokens, queryKey);
      return { checkpoints: page.map(checkpointOfRow), nextPageToken };
    },
  };
}
