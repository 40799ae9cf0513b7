/**
 * A tenant's chain read back from Postgres for VerifyAuditChain and ExportAuditEvents: the range
 * to read, the events in sequence order and the checkpoints, page by page (never a whole chain
 * in memory), with each checkpoint compared with its copy published outside Postgres.
 */
import { equals } from "@bufbuild/protobuf";
import type { JetStreamClient } from "@nats-io/jetstream";
import { AuditChainBreak, AuditCheckpointSchema, type AuditCheckpoint, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import type { Pool } from "../db/index.ts";
import { publishedCheckpoints, publishedHead } from "./checkpoints-published.ts";
import { auditEventColumns, checkpointColumns, checkpointOfRow, eventOfRow, type AuditCheckpointRow, type AuditEventRow } from "./rows.ts";
import type { RetentionHorizon } from "./retention.ts";
import type { AuditTopology } from "../bus/topology.ts";

const pageRows = 1000;
// A checkpoint signed this recently may not be on the stream yet (its publish in flight or retried).
const publishGraceMs = 60_000;
// The checkpoints stream's max_age (bus/topology.ts: 400 days), less a margin.
const streamKeepsMs = 390 * 86_400_000;

export interface ChainRange {
  /** First sequence read. */
  start: bigint;
  /** Last sequence read: the requested end moved on to the first checkpoint at or after it. */
  end: bigint;
  /** The trusted hash before `start`; undefined from sequence 1 (genesis). */
  firstPrevHash?: string;
  /** The highest sequence stored in Postgres (0 when none). */
  storedHead: bigint;
  /** The tenant's highest published checkpoint (it may be on the heads stream only). */
  publishedHead?: AuditCheckpoint;
}

/**
 * The range to read: start 0 is where the kept chain starts (after retention), end 0 the head:
 * the highest of Postgres's last row, its last checkpoint and the last checkpoint PUBLISHED (a
 * tail removed together with its checkpoints in Postgres is still signed outside: MISSING at its
 * first absent sequence). The end runs on to the next checkpoint so every event read is covered
 * by a signature when one exists.
 */
export async function chainRangeOf(
  db: Pool,
  js: JetStreamClient,
  topology: AuditTopology,
  tenantId: string,
  startSequence: bigint,
  endSequence: bigint,
  retention?: RetentionHorizon,
): Promise<ChainRange> {
  const { rows } = await db.query<{ head: string | null; last_cp: string | null }>(
    `SELECT (SELECT max(sequence) FROM audit_events WHERE tenant_id = $1)::text AS head,
            (SELECT max(sequence) FROM audit_checkpoints WHERE tenant_id = $1)::text AS last_cp`,
    [tenantId],
  );
  // A horizon that is not proven is not where the chain starts: what it hides is MISSING.
  const horizon = retention?.trusted ? retention.firstSequence : 1n;
  const start = startSequence > horizon ? startSequence : horizon;
  const head = BigInt(rows[0].head ?? "0");
  const lastCheckpoint = BigInt(rows[0].last_cp ?? "0");
  const outside = await publishedHead(js, topology, tenantId);
  let end = head > lastCheckpoint ? head : lastCheckpoint;
  if (outside && outside.sequence > end) end = outside.sequence;
  if (endSequence > 0n) end = endSequence;
  const next = await db.query<{ s: string | null }>("SELECT min(sequence)::text AS s FROM audit_checkpoints WHERE tenant_id = $1 AND sequence >= $2", [tenantId, end.toString()]);
  if (next.rows[0].s !== null) end = BigInt(next.rows[0].s);
  let firstPrevHash: string | undefined;
  if (start === horizon && retention?.trusted) firstPrevHash = retention.prevHash;
  else if (start > 1n) {
    // The stored hash before the range is trusted (the proto says so); without that row, the
    // first row's own prev_hash.
    const before = await db.query<{ hash: string }>(
      "SELECT hash FROM audit_events WHERE tenant_id = $1 AND sequence = $2 UNION ALL SELECT prev_hash FROM audit_events WHERE tenant_id = $1 AND sequence = $3 LIMIT 1",
      [tenantId, (start - 1n).toString(), start.toString()],
    );
    firstPrevHash = before.rows[0]?.hash;
  }
  return { start, end, firstPrevHash, storedHead: head, publishedHead: outside };
}

/** The tenant's events start..end in sequence order (ties by id, so a duplicated sequence shows). */
export async function* eventsInRange(db: Pool, tenantId: string, range: ChainRange): AsyncGenerator<AuditEvent> {
  let after: [string, string] | undefined;
  for (;;) {
    const params: unknown[] = [tenantId, range.start.toString(), range.end.toString()];
    const resume = after ? `AND (sequence, event_id) > ($4::bigint, $5::uuid)` : "";
    if (after) params.push(...after);
    const { rows } = await db.query<AuditEventRow>(
      `SELECT ${auditEventColumns} FROM audit_events WHERE tenant_id = $1 AND sequence BETWEEN $2 AND $3 ${resume}
       ORDER BY sequence, event_id LIMIT ${pageRows}`,
      params,
    );
    for (const row of rows) yield eventOfRow(row);
    if (rows.length < pageRows) return;
    const last = rows[rows.length - 1];
    after = [last.sequence, last.event_id];
  }
}

async function* storedCheckpoints(db: Pool, tenantId: string, range: ChainRange): AsyncGenerator<{ cp: AuditCheckpoint; ageMs: number }> {
  let after = range.start - 1n;
  for (;;) {
    const { rows } = await db.query<AuditCheckpointRow & { age_ms: number }>(
      `SELECT ${checkpointColumns}, (extract(epoch FROM now() - checkpoint_time) * 1000)::float8 AS age_ms FROM audit_checkpoints
       WHERE tenant_id = $1 AND sequence > $2 AND sequence <= $3 ORDER BY sequence LIMIT ${pageRows}`,
      [tenantId, after.toString(), range.end.toString()],
    );
    for (const row of rows) {
      const { age_ms, ...cp } = row;
      yield { cp: checkpointOfRow(cp), ageMs: age_ms };
    }
    if (rows.length < pageRows) return;
    after = BigInt(rows[rows.length - 1].sequence);
  }
}

/** What differs between Postgres and the published copies: the first sequence it puts in doubt. */
export interface CheckpointMismatch {
  sequence: bigint;
  breakKind: AuditChainBreak;
  reason: string;
}

/**
 * The range's checkpoints in sequence order, the published copy preferred (it is the one outside
 * Postgres), and `mismatch()`: the earliest checkpoint missing from or different in Postgres, or
 * stored but never published, once the iteration is done.
 */
export async function checkpointsInRange(db: Pool, js: JetStreamClient, topology: AuditTopology, tenantId: string, range: ChainRange) {
  const published = new Map<bigint, AuditCheckpoint>();
  let firstPublished: bigint | undefined;
  // Read from where the range starts, not from the tenant's first checkpoint: the stream is
  // positioned at the time Postgres's first checkpoint of the range was signed (a minute early,
  // for clocks). A later time there (a rewrite) only skips copies, which then show as missing.
  const { rows: firstInRange } = await db.query<{ ms: number }>(
    "SELECT (extract(epoch FROM checkpoint_time) * 1000)::float8 AS ms FROM audit_checkpoints WHERE tenant_id = $1 AND sequence >= $2 ORDER BY sequence LIMIT 1",
    [tenantId, range.start.toString()],
  );
  const from = range.start > 1n && firstInRange[0] ? new Date(firstInRange[0].ms - 60_000) : undefined;
  for await (const cp of publishedCheckpoints(js, topology, tenantId, from)) {
    if (firstPublished === undefined || cp.sequence < firstPublished) firstPublished = cp.sequence;
    if (cp.sequence >= range.start && cp.sequence <= range.end && !published.has(cp.sequence)) published.set(cp.sequence, cp);
  }
  // The head is kept when the checkpoints stream has let it go.
  const head = range.publishedHead;
  if (head && head.sequence >= range.start && head.sequence <= range.end && !published.has(head.sequence)) published.set(head.sequence, head);
  // Stored but not on the stream: suspect, unless it is too recent to have been published yet,
  // or older than what the stream still keeps (its max_age or max_bytes let old ones go).
  const shouldBePublished = (cp: AuditCheckpoint, ageMs: number) =>
    ageMs > publishGraceMs && (firstPublished === undefined ? ageMs < streamKeepsMs : cp.sequence > firstPublished);
  let mismatch: CheckpointMismatch | undefined;
  const note = (cp: AuditCheckpoint, why: string) => {
    let sequence = cp.firstSequence > range.start ? cp.firstSequence : range.start;
    // A checkpoint of events beyond the stored ones: what it puts in doubt starts where the rows
    // end (the verifier reports those MISSING there), not at its first sequence.
    if (cp.sequence > range.storedHead && range.storedHead + 1n > sequence) sequence = range.storedHead + 1n;
    if (!mismatch || sequence < mismatch.sequence) {
      mismatch = { sequence, breakKind: AuditChainBreak.CHECKPOINT_MISMATCH, reason: `sequence ${sequence}: the checkpoint at sequence ${cp.sequence} ${why}` };
    }
  };
  async function* merged(): AsyncGenerator<AuditCheckpoint> {
    const onlyPublished = [...published.values()].sort((a, b) => (a.sequence < b.sequence ? -1 : 1));
    let i = 0;
    for await (const { cp, ageMs } of storedCheckpoints(db, tenantId, range)) {
      while (i < onlyPublished.length && onlyPublished[i].sequence < cp.sequence) {
        note(onlyPublished[i], "was published but is missing from Postgres");
        yield onlyPublished[i++];
      }
      const outside = published.get(cp.sequence);
      if (outside) {
        i++;
        if (!equals(AuditCheckpointSchema, outside, cp)) note(cp, "in Postgres differs from the one published");
        yield outside;
      } else {
        if (shouldBePublished(cp, ageMs)) note(cp, "in Postgres was never published (it may have been made in Postgres)");
        yield cp;
      }
    }
    for (; i < onlyPublished.length; i++) {
      note(onlyPublished[i], "was published but is missing from Postgres");
      yield onlyPublished[i];
    }
  }
  return { checkpoints: merged(), mismatch: () => mismatch };
}
