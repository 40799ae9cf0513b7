/**
 * Writes what a job's state change causes into the same transaction as the change: its events
 * (job_events for WatchJob, outbox rows for JetStream) and its next stage task (an outbox row
 * for the work stream, possibly delayed). The relay publishes the outbox after the commit, so a
 * rolled-back change publishes nothing and a committed one is never lost.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { context, propagation, trace } from "@opentelemetry/api";
import { randomUUID } from "node:crypto";
import { JobEventSchema, type JobEventType, type JobEvent } from "../../gen/jobmesh/v1/events_pb.js";
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import { jobErrorOf, jobNameOf, pipelineNameOf, stageAt, type JobErrorJson, type JobRow } from "./store.ts";
import { eventTypeToken, type Topology } from "./topology.ts";

/** Postgres channel the relay LISTENs on; a NOTIFY in the writing transaction wakes it on commit. */
export const outboxChannel = "jobmesh_outbox";

/** The payload of a stage task on the work stream. */
export interface StageTask {
  tenantId: string;
  jobId: string;
  stageIndex: number;
  attempt: number;
}

export interface NewEvent {
  type: JobEventType;
  /** Index of the stage the event is about; omitted for whole-job events. */
  stageIndex?: number;
  attempt?: number;
  error?: JobErrorJson;
}

/** The W3C trace headers of the active span, or of the job's own trace when none is active. */
export function traceHeaders(row: Pick<JobRow, "traceparent">): Record<string, string> {
  const carrier: Record<string, string> = {};
  if (trace.getSpan(context.active())) propagation.inject(context.active(), carrier);
  else if (row.traceparent) carrier.traceparent = row.traceparent;
  return carrier;
}

async function insertOutbox(tx: Queryable, id: string, subject: string, payload: Uint8Array, headers: Record<string, string>, delayMs = 0) {
  await tx.query(
    `INSERT INTO outbox (id, subject, payload, headers, available_time)
     VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5::float8 / 1000))`,
    [id, subject, Buffer.from(payload), headers, delayMs],
  );
}

/**
 * Appends events to the job (sequence numbers follow the job's last one) and to the outbox.
 * `row` is the job after the change: its state goes into every event.
 */
export async function recordEvents(tx: Queryable, topology: Topology, row: JobRow, events: NewEvent[]): Promise<JobEvent[]> {
  if (events.length === 0) return [];
  const { rows } = await tx.query<{ event_seq: string; now: Date }>(
    `UPDATE jobs SET event_seq = event_seq + $3 WHERE tenant_id = $1 AND id = $2
     RETURNING event_seq, date_trunc('milliseconds', now()) AS now`,
    [row.tenant_id, row.id, events.length],
  );
  const last = BigInt(rows[0].event_seq);
  const headers = traceHeaders(row);
  const out: JobEvent[] = [];
  for (const [i, e] of events.entries()) {
    const event = create(JobEventSchema, {
      eventId: randomUUID(),
      type: e.type,
      tenant: row.tenant_id,
      job: jobNameOf(row.id),
      pipeline: pipelineNameOf(row.pipeline_id),
      pipelineVersion: row.pipeline_version,
      stage: e.stageIndex === undefined ? Stage.UNSPECIFIED : stageAt(row, e.stageIndex),
      attempt: e.stageIndex === undefined ? 0 : (e.attempt ?? 0),
      state: row.state,
      error: e.error ? jobErrorOf(e.error) : undefined,
      eventTime: timestampFromDate(rows[0].now),
      sequence: last - BigInt(events.length) + BigInt(i) + 1n,
      labels: row.labels,
      traceId: row.trace_id,
    });
    const bytes = toBinary(JobEventSchema, event);
    await tx.query(
      "INSERT INTO job_events (tenant_id, job_id, sequence, event_type, event) VALUES ($1, $2, $3, $4, $5)",
      [row.tenant_id, row.id, event.sequence.toString(), e.type, Buffer.from(bytes)],
    );
    await insertOutbox(tx, event.eventId, topology.eventSubject(row.tenant_id, e.type), bytes, {
      ...headers,
      "Jobmesh-Event-Type": eventTypeToken(e.type),
    });
    out.push(event);
  }
  await tx.query(`SELECT pg_notify('${outboxChannel}', '')`);
  return out;
}

/** Queues a stage task; `delayMs` holds it back (retry backoff). */
export async function enqueueStage(tx: Queryable, topology: Topology, row: JobRow, stageIndex: number, attempt: number, delayMs = 0): Promise<void> {
  const task: StageTask = { tenantId: row.tenant_id, jobId: row.id, stageIndex, attempt };
  const subject = topology.workSubject(stageAt(row, stageIndex), row.priority);
  await insertOutbox(tx, randomUUID(), subject, new TextEncoder().encode(JSON.stringify(task)), traceHeaders(row), delayMs);
  await tx.query(`SELECT pg_notify('${outboxChannel}', '')`);
}
