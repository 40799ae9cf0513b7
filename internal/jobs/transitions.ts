/**
 * The state changes of a running job, each one transaction that also records its events and
 * queues what comes next. Every change of a stage attempt is fenced by (stage_index,
 * stage_attempt): a worker whose attempt is no longer the job's current one changes nothing.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import { JobEventType, JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import { type RetryPolicy, Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import { countFinished, jobCounters } from "./metrics.ts";
import { enqueueStage, recordEvents, type NewEvent, type StageTask } from "./outbox.ts";
import { configOf, jobColumnList, maxAttemptOf, stageAt, type JobErrorJson, type JobRow } from "./store.ts";
import type { Topology } from "./topology.ts";

/** A change to a job row: column → value. `version` and `update_time` change with every one. */
export type JobPatch = Record<string, unknown>;

/** Applies a patch to the job and returns the row after it. */
export async function updateJob(tx: Queryable, row: Pick<JobRow, "tenant_id" | "id">, patch: JobPatch): Promise<JobRow> {
  const params: unknown[] = [row.tenant_id, row.id];
  const sets = Object.entries(patch).map(([column, value]) => {
    params.push(value);
    return `${column} = $${params.length}`;
  });
  sets.push("version = version + 1", "update_time = date_trunc('milliseconds', now())");
  const { rows } = await tx.query<JobRow>(
    `UPDATE jobs SET ${sets.join(", ")} WHERE tenant_id = $1 AND id = $2 RETURNING ${jobColumnList}`,
    params,
  );
  return rows[0];
}

/** Locks the job if `task` is still its current attempt and it is in one of `states`. */
async function lockCurrent(tx: Queryable, task: StageTask, states: JobState[]): Promise<JobRow | undefined> {
  const { rows } = await tx.query<JobRow>(
    `SELECT ${jobColumnList} FROM jobs
     WHERE tenant_id = $1 AND id = $2 AND stage_index = $3 AND stage_attempt = $4 AND state = ANY($5::smallint[])
     FOR UPDATE`,
    [task.tenantId, task.jobId, task.stageIndex, task.attempt, states],
  );
  return rows[0];
}

async function endAttempt(tx: Queryable, task: StageTask, outcome: StageAttemptOutcome, error?: JobErrorJson) {
  await tx.query(
    `UPDATE stage_attempts SET outcome = $5, end_time = clock_timestamp(), error = $6
     WHERE tenant_id = $1 AND job_id = $2 AND stage_index = $3 AND attempt = $4`,
    [task.tenantId, task.jobId, task.stageIndex, task.attempt, outcome, error ?? null],
  );
}

/** The retry policy of a stage with defaults for unset fields. */
export function retryPolicyOf(row: JobRow, stageIndex: number) {
  const retry: RetryPolicy | undefined = configOf(row).stages[stageIndex]?.retry;
  return {
    maxAttempts: Math.max(1, retry?.maxAttempts ?? 1),
    initialMs: retry?.initialBackoff ? durationMs(retry.initialBackoff) : 500,
    maxMs: retry?.maxBackoff ? durationMs(retry.maxBackoff) : 30_000,
    multiplier: retry?.backoffMultiplier || 2,
    jitter: retry?.jitter ?? 0,
  };
}

/** Exponential backoff with jitter before retry number `retry` (1 = the first retry). */
export function backoffMs(policy: ReturnType<typeof retryPolicyOf>, retry: number, random = Math.random): number {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** (retry - 1));
  const spread = base * policy.jitter;
  return Math.max(0, Math.round(base - spread + random() * 2 * spread));
}

/** The stage timeout of a job's stage, in milliseconds. */
export function stageTimeoutMs(row: JobRow, stageIndex: number): number {
  const timeout = configOf(row).stages[stageIndex]?.timeout;
  return timeout ? durationMs(timeout) : 60_000;
}

/**
 * Claims a queued stage task for a worker: the job becomes RUNNING and the attempt is recorded.
 * Undefined when the task is stale or already claimed (a duplicate delivery): drop it.
 */
export async function claimAttempt(tx: Queryable, topology: Topology, task: StageTask, workerId: string): Promise<JobRow | undefined> {
  const current = await lockCurrent(tx, task, [JobState.QUEUED]);
  if (!current) return undefined;
  const row = await updateJob(tx, current, { state: JobState.RUNNING, start_time: current.start_time ?? new Date() });
  await tx.query(
    `INSERT INTO stage_attempts (tenant_id, job_id, stage_index, attempt, stage, worker_id, outcome)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [task.tenantId, task.jobId, task.stageIndex, task.attempt, stageAt(row, task.stageIndex), workerId, StageAttemptOutcome.RUNNING],
  );
  await recordEvents(tx, topology, row, [{ type: JobEventType.STAGE_STARTED, stageIndex: task.stageIndex, attempt: task.attempt }]);
  return row;
}

/** What a finished stage hands on. */
export interface StageCompletion {
  output: unknown;
  bytes?: Uint8Array;
  /** Job columns the stage found out (size, digest, detected media type). */
  patch?: JobPatch;
  /** Only for the last stage: stores the result (inline row or object reference). */
  storeResult?: (tx: Queryable, row: JobRow) => Promise<{ expireTime: Date }>;
}

export type CommitOutcome = "committed" | "stale" | "cancelled";

async function cancelRunning(tx: Queryable, topology: Topology, row: JobRow, task: StageTask): Promise<CommitOutcome> {
  await endAttempt(tx, task, StageAttemptOutcome.CANCELLED);
  const cancelled = await updateJob(tx, row, { state: JobState.CANCELLED, end_time: new Date() });
  await recordEvents(tx, topology, cancelled, [{ type: JobEventType.JOB_CANCELLED }]);
  countFinished(JobState.CANCELLED);
  return "cancelled";
}

/** Commits a successful stage: its output, the next stage's task or the result, the events. */
export async function completeStage(tx: Queryable, topology: Topology, task: StageTask, done: StageCompletion): Promise<CommitOutcome> {
  const current = await lockCurrent(tx, task, [JobState.RUNNING, JobState.CANCELLING]);
  if (!current) return "stale";
  if (current.state === JobState.CANCELLING) return cancelRunning(tx, topology, current, task);
  await endAttempt(tx, task, StageAttemptOutcome.SUCCEEDED);
  const stage = stageAt(current, task.stageIndex);
  await tx.query(
    `INSERT INTO stage_outputs (tenant_id, job_id, stage, output, bytes) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (tenant_id, job_id, stage) DO UPDATE SET output = EXCLUDED.output, bytes = EXCLUDED.bytes`,
    [task.tenantId, task.jobId, stage, JSON.stringify(done.output ?? null), done.bytes ? Buffer.from(done.bytes) : null],
  );
  const succeeded: NewEvent = { type: JobEventType.STAGE_SUCCEEDED, stageIndex: task.stageIndex, attempt: task.attempt };
  const next = task.stageIndex + 1;
  if (next < configOf(current).stages.length) {
    // After RetryJob the next stage may have run before: its attempt numbers continue.
    const attempt = (await maxAttemptOf(tx, task.tenantId, task.jobId, next)) + 1;
    const row = await updateJob(tx, current, { ...done.patch, state: JobState.QUEUED, stage_index: next, stage_attempt: attempt, stage_attempt_base: attempt });
    await recordEvents(tx, topology, row, [succeeded]);
    await enqueueStage(tx, topology, row, next, attempt);
    return "committed";
  }
  const { expireTime } = done.storeResult ? await done.storeResult(tx, current) : { expireTime: null };
  const row = await updateJob(tx, current, { ...done.patch, state: JobState.SUCCEEDED, end_time: new Date(), result_expire_time: expireTime, error: null });
  await recordEvents(tx, topology, row, [succeeded, { type: JobEventType.JOB_SUCCEEDED }]);
  countFinished(JobState.SUCCEEDED);
  return "committed";
}

/** How a stage attempt failed. */
export interface StageFailure {
  /** transient: retry while attempts remain; permanent: fail the job; cancelled: the job was cancelled. */
  kind: "transient" | "permanent" | "cancelled";
  outcome: StageAttemptOutcome;
  code: string;
  message: string;
}

/** Commits a failed attempt: a delayed retry, the job FAILED, or CANCELLED. */
export async function failStage(tx: Queryable, topology: Topology, task: StageTask, failure: StageFailure): Promise<CommitOutcome> {
  const current = await lockCurrent(tx, task, [JobState.RUNNING, JobState.CANCELLING]);
  if (!current) return "stale";
  if (current.state === JobState.CANCELLING) return cancelRunning(tx, topology, current, task);
  const stage = stageAt(current, task.stageIndex);
  const policy = retryPolicyOf(current, task.stageIndex);
  const attemptsUsed = task.attempt - current.stage_attempt_base + 1;
  // A stage aborted for a cancel that is no longer pending (the job was not CANCELLING) is retried.
  const retry = failure.kind !== "permanent" && attemptsUsed < policy.maxAttempts;
  const error: JobErrorJson = { stage, code: failure.code, message: failure.message, transient: retry };
  await endAttempt(tx, task, failure.outcome, error);
  const failed: NewEvent = { type: JobEventType.STAGE_FAILED, stageIndex: task.stageIndex, attempt: task.attempt, error };
  if (retry) {
    const row = await updateJob(tx, current, { state: JobState.QUEUED, stage_attempt: task.attempt + 1 });
    await recordEvents(tx, topology, row, [failed]);
    await enqueueStage(tx, topology, row, task.stageIndex, task.attempt + 1, backoffMs(policy, attemptsUsed));
    jobCounters().retries.add(1, { stage: Stage[stage].toLowerCase() });
    return "committed";
  }
  const row = await updateJob(tx, current, { state: JobState.FAILED, end_time: new Date(), error });
  await recordEvents(tx, topology, row, [failed, { type: JobEventType.JOB_FAILED, stageIndex: task.stageIndex, attempt: task.attempt, error }]);
  countFinished(JobState.FAILED);
  return "committed";
}
