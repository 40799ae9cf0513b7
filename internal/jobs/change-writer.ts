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
  /** The event's id: the id of its outbox message, whose payload is these bytes (sent once). */
  eventId: string;
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
  // The events once, as a relation both INSERTs read: job_events, and the outbox messages that
  // publish them (their payloads are not sent a second time).
  const rows = `job_event_rows AS (
       SELECT * FROM unnest(${p(1)}::uuid[], ${p(2)}::uuid[], ${p(3)}::bigint[], ${p(4)}::smallint[], ${p(5)}::bytea[], ${p(6)}::uuid[])
         AS e(tenant_id, job_id, seq, type, payload, id)
     )`;
  const source = statement.gate ? `${statement.gate.from} JOIN job_event_rows e ON e.job_id = ${statement.gate.key}` : "job_event_rows e";
  const events = `job_events_written AS (
       INSERT INTO job_events (tenant_id, job_id, sequence, event_type, event)
       SELECT e.tenant_id, e.job_id, e.seq, e.type, e.payload FROM ${source}
     )`;
  values.push(
    writes.events.map((e) => e.tenantId),
    writes.events.map((e) => e.jobId),
    writes.events.map((e) => e.sequence.toString()),
    writes.events.map((e) => e.type),
    writes.events.map((e) => e.bytes),
    writes.events.map((e) => e.eventId),
  );
  const eventIds = new Set(writes.events.map((e) => e.eventId));
  const outbox = writes.outbox.map((m) => (eventIds.has(m.id) ? { ...m, shared: true } : m));
  const withs = [statement.with, rows, events].filter(Boolean).join(", ");
  return writeOutbox<R>(db, outbox, { ...statement, with: withs, values, payloadsFrom: "job_event_rows" });
}
