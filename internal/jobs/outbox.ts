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
import { JobEventSchema, type JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import { jobColumnList, jobErrorOf, jobNameOf, pipelineNameOf, stageAt, type JobErrorJson, type JobRow } from "./store.ts";
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

/** A stage task to queue with a change. */
export interface QueuedTask {
  stageIndex: number;
  attempt: number;
  /** Held back this long (retry backoff). */
  delayMs?: number;
}

/**
 * Applies a change to a job in ONE statement: the patched row (version and update_time bumped),
 * its events (job_events and outbox) and the next stage task (outbox), plus the NOTIFY that wakes
 * the relay on commit. `current` must be the row as locked by the caller's transaction: event
 * sequences continue from its event_seq. Returns the row after the change.
 */
export async function applyChange(
  tx: Queryable,
  topology: Topology,
  current: JobRow,
  patch: Record<string, unknown>,
  events: NewEvent[],
  task?: QueuedTask,
): Promise<JobRow> {
  const after = { ...current, ...patch } as JobRow;
  const headers = traceHeaders(current);
  const now = new Date(Math.floor(Date.now()));
  const first = BigInt(current.event_seq) + 1n;
  const eventRows = events.map((e, i) => {
    const event = create(JobEventSchema, {
      eventId: randomUUID(),
      type: e.type,
      tenant: current.tenant_id,
      job: jobNameOf(current.id),
      pipeline: pipelineNameOf(current.pipeline_id),
      pipelineVersion: current.pipeline_version,
      stage: e.stageIndex === undefined ? Stage.UNSPECIFIED : stageAt(current, e.stageIndex),
      attempt: e.stageIndex === undefined ? 0 : (e.attempt ?? 0),
      state: after.state,
      error: e.error ? jobErrorOf(e.error) : undefined,
      eventTime: timestampFromDate(now),
      sequence: first + BigInt(i),
      labels: current.labels,
      traceId: current.trace_id,
    });
    return { event, bytes: Buffer.from(toBinary(JobEventSchema, event)) };
  });
  const outbox: { id: string; subject: string; payload: Buffer; headers: Record<string, string>; delayMs: number }[] = eventRows.map(({ event, bytes }) => ({
    id: event.eventId,
    subject: topology.eventSubject(current.tenant_id, event.type),
    payload: bytes,
    headers: { ...headers, "Jobmesh-Event-Type": eventTypeToken(event.type) },
    delayMs: 0,
  }));
  if (task) {
    const payload: StageTask = { tenantId: current.tenant_id, jobId: current.id, stageIndex: task.stageIndex, attempt: task.attempt };
    outbox.push({
      id: randomUUID(),
      subject: topology.workSubject(stageAt(current, task.stageIndex), current.priority),
      payload: Buffer.from(JSON.stringify(payload)),
      headers,
      delayMs: task.delayMs ?? 0,
    });
  }
  const params: unknown[] = [
    current.tenant_id,
    current.id,
    events.length,
    eventRows.map((r) => r.event.sequence.toString()),
    eventRows.map((r) => r.event.type),
    eventRows.map((r) => r.bytes),
    outbox.map((o) => o.id),
    outbox.map((o) => o.subject),
    outbox.map((o) => o.payload),
    outbox.map((o) => JSON.stringify(o.headers)),
    outbox.map((o) => o.delayMs),
  ];
  const sets = Object.entries(patch).map(([column, value]) => {
    params.push(value);
    return `${column} = $${params.length}`;
  });
  const { rows } = await tx.query<JobRow>(
    `WITH job AS (
       UPDATE jobs SET ${[...sets, "event_seq = event_seq + $3", "version = version + 1", "update_time = date_trunc('milliseconds', now())"].join(", ")}
       WHERE tenant_id = $1 AND id = $2 RETURNING ${jobColumnList}
     ), events AS (
       INSERT INTO job_events (tenant_id, job_id, sequence, event_type, event)
       SELECT $1, $2, x.seq, x.type, x.event FROM unnest($4::bigint[], $5::smallint[], $6::bytea[]) AS x(seq, type, event)
     ), box AS (
       INSERT INTO outbox (id, subject, payload, headers, available_time)
       SELECT x.id, x.subject, x.payload, x.headers, clock_timestamp() + make_interval(secs => x.delay / 1000)
       FROM unnest($7::uuid[], $8::text[], $9::bytea[], $10::jsonb[], $11::float8[]) AS x(id, subject, payload, headers, delay)
     )
     SELECT job.*, pg_notify('${outboxChannel}', '') FROM job`,
    params,
  );
  return rows[0];
}

/** Appends events to a job (locked by the caller) and to the outbox. */
export async function recordEvents(tx: Queryable, topology: Topology, row: JobRow, events: NewEvent[]): Promise<void> {
  if (events.length > 0) await applyChange(tx, topology, row, {}, events);
}
