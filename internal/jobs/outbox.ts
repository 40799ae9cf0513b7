/**
 * Builds what a job's state change causes, to be written in the same statement as the change:
 * its events (job_events for WatchJob, outbox rows for JetStream) and its next stage task (an
 * outbox row for the work stream, possibly delayed); change-writer.ts writes them. The relay
 * publishes the outbox after the commit, so a rolled-back change publishes nothing and a
 * committed one is never lost. applyChange is the locking path's whole change in one statement.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { context, propagation, trace } from "@opentelemetry/api";
import { randomUUID } from "node:crypto";
import { JobEventSchema, type JobEventType, type JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import type { OutboxMessage } from "../outbox/index.ts";
import { writeJobChanges, type JobEventRow } from "./change-writer.ts";
import { headerOf, type JobHeader, type StageTask } from "./stage-task.ts";
import { jobColumnList, jobErrorOf, jobNameOf, pipelineNameOf, stageAt, type JobErrorJson, type JobRow } from "./store.ts";
import { eventTypeToken, type Topology } from "../bus/topology.ts";

export interface NewEvent {
  type: JobEventType;
  /** Index of the stage the event is about; omitted for whole-job events. */
  stageIndex?: number;
  attempt?: number;
  error?: JobErrorJson;
}

/**
 * The W3C trace headers a job's outbox rows carry: the active span's when it is in the job's own
 * trace (a worker's stage span), else the job's trace itself. Another active trace belongs to a
 * later request (RetryJob, CancelJob): the job's events and stages stay in the one trace that
 * its trace_id names.
 */
export function traceHeaders(row: Pick<JobRow, "traceparent" | "trace_id">): Record<string, string> {
  const carrier: Record<string, string> = {};
  const active = trace.getSpan(context.active())?.spanContext();
  if (active && (active.traceId === row.trace_id || !row.traceparent)) propagation.inject(context.active(), carrier);
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

/** A job's events and stage task as rows, built before the statement that writes them (change-writer.ts). */
export interface ChangeRows {
  events: JobEventRow[];
  outbox: OutboxMessage[];
}

/** A job as far as its events need it. */
export interface EventSource {
  tenantId: string;
  jobId: string;
  header: JobHeader;
  /** The stage at an index of the job's pipeline. */
  stageAt(index: number): Stage;
}

export function eventSourceOf(row: JobRow): EventSource {
  return { tenantId: row.tenant_id, jobId: row.id, header: headerOf(row), stageAt: (i) => stageAt(row, i) };
}

/**
 * The rows a change writes: its events (sequences from `firstSeq`, each carrying the job's state
 * after the change) and, with `task`, the next stage task, which records the version and event
 * sequence the job will have after this change (`versionAfter`).
 */
export function changeRows(
  topology: Topology,
  job: EventSource,
  stateAfter: JobState,
  firstSeq: bigint,
  versionAfter: bigint,
  events: NewEvent[],
  headers: Record<string, string>,
  task?: QueuedTask,
): ChangeRows {
  const now = new Date();
  const h = job.header;
  const rows = events.map((e, i) => {
    const event = create(JobEventSchema, {
      eventId: randomUUID(),
      type: e.type,
      tenant: job.tenantId,
      job: jobNameOf(job.jobId),
      pipeline: pipelineNameOf(h.pipelineId),
      pipelineVersion: h.pipelineVersion,
      stage: e.stageIndex === undefined ? Stage.UNSPECIFIED : job.stageAt(e.stageIndex),
      attempt: e.stageIndex === undefined ? 0 : (e.attempt ?? 0),
      state: stateAfter,
      error: e.error ? jobErrorOf(e.error) : undefined,
      eventTime: timestampFromDate(now),
      sequence: firstSeq + BigInt(i),
      labels: h.labels,
      traceId: h.traceId,
    });
    return { event, bytes: Buffer.from(toBinary(JobEventSchema, event)) };
  });
  const outbox: OutboxMessage[] = rows.map(({ event, bytes }) => ({
    id: event.eventId,
    subject: topology.eventSubject(job.tenantId, event.type),
    payload: bytes,
    headers: { ...headers, "Jobmesh-Event-Type": eventTypeToken(event.type) },
    delayMs: 0,
  }));
  if (task) {
    const stage = job.stageAt(task.stageIndex);
    const payload: StageTask = {
      tenantId: job.tenantId,
      jobId: job.jobId,
      stageIndex: task.stageIndex,
      attempt: task.attempt,
      stage,
      version: versionAfter.toString(),
      eventSeq: (firstSeq + BigInt(events.length) - 1n).toString(),
      job: h,
    };
    outbox.push({
      id: randomUUID(),
      subject: topology.workSubject(stage, h.priority),
      payload: Buffer.from(JSON.stringify(payload)),
      headers,
      delayMs: task.delayMs ?? 0,
    });
  }
  return { events: rows.map(({ event, bytes }) => ({ eventId: event.eventId, tenantId: job.tenantId, jobId: job.jobId, sequence: event.sequence, type: event.type, bytes })), outbox };
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
  const { events: eventRows, outbox } = changeRows(
    topology, eventSourceOf(current), after.state, BigInt(current.event_seq) + 1n, BigInt(current.version) + 1n, events, traceHeaders(current), task,
  );
  const params: unknown[] = [current.tenant_id, current.id, events.length];
  const sets = Object.entries(patch).map(([column, value]) => {
    params.push(value);
    return `${column} = $${params.length}`;
  });
  // The outbox rows are due at once (their task's delay aside): nobody publishes them directly,
  // and the NOTIFY wakes the relay on commit.
  const rows = await writeJobChanges<JobRow>(tx, { events: eventRows, outbox }, {
    with: `job AS (
       UPDATE jobs SET ${[...sets, "event_seq = event_seq + $3", "version = version + 1", "update_time = date_trunc('milliseconds', now())"].join(", ")}
       WHERE tenant_id = $1 AND id = $2 RETURNING ${jobColumnList}
     )`,
    select: "SELECT job.* FROM job",
    values: params,
    notify: true,
  });
  return rows[0];
}

/** Appends events to a job (locked by the caller) and to the outbox. */
export async function recordEvents(tx: Queryable, topology: Topology, row: JobRow, events: NewEvent[]): Promise<void> {
  if (events.length > 0) await applyChange(tx, topology, row, {}, events);
}
