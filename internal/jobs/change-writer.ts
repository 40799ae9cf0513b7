/**
 * The one writer of what a job's state change causes: its `job_events` rows (the log WatchJob and
 * GetJob's history read) and its `outbox` rows (the same events and the next stage task, for
 * JetStream), written in the statement that makes the change.
 *
 * Like the outbox writer it extends (internal/outbox/writer.ts, which stays the one INSERT into
 * `outbox`), it adds its INSERTs as CTEs to the caller's statement, so a change and all it causes
 * commit together in one round trip; with `gate`, the rows of a job are written only when the
 * caller's statement produced that job's row (the group statements change only the jobs still as
 * their task left them).
 */
import type { JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import type { Queryable } from "../db/index.ts";
import { writeOutbox, type KeyedOutboxMessage, type OutboxStatement } from "../outbox/index.ts";

/** One job_events row. */
export interface JobEventRow {
  tenantId: string;
  jobId: string;
  sequence: bigint;
  type: JobEventType;
  /** The JobEvent, binary: the same bytes the outbox publishes. */
  bytes: Buffer;
}

/** What a group of changes writes besides the jobs themselves; outbox messages are keyed by job id. */
export interface ChangeWrites {
  events: JobEventRow[];
  outbox: KeyedOutboxMessage[];
}

/**
 * Runs the caller's statement with the job_events and outbox INSERTs added; resolves with the
 * rows of its SELECT. With `statement.gate`, its key column must be the job id.
 */
export async function writeJobChanges<R extends object = Record<string, unknown>>(db: Queryable, writes: ChangeWrites, statement: OutboxStatement = {}): Promise<R[]> {
  const values = [...(statement.values ?? [])];
  const p = (i: number) => `$${values.length + i}`;
  const rows = `unnest(${p(1)}::uuid[], ${p(2)}::uuid[], ${p(3)}::bigint[], ${p(4)}::smallint[], ${p(5)}::bytea[]) AS e(tenant_id, job_id, seq, type, event)`;
  const source = statement.gate ? `${statement.gate.from} JOIN ${rows} ON e.job_id = ${statement.gate.key}` : rows;
  const events = `job_events_written AS (
       INSERT INTO job_events (tenant_id, job_id, sequence, event_type, event)
       SELECT e.tenant_id, e.job_id, e.seq, e.type, e.event FROM ${source}
     )`;
  values.push(
    writes.events.map((e) => e.tenantId),
    writes.events.map((e) => e.jobId),
    writes.events.map((e) => e.sequence.toString()),
    writes.events.map((e) => e.type),
    writes.events.map((e) => e.bytes),
  );
  return writeOutbox<R>(db, writes.outbox, { ...statement, with: statement.with ? `${statement.with}, ${events}` : events, values });
}
