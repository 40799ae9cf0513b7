/**
 * The locking path: the state changes of a running job one at a time, each one transaction that
 * locks the job, also records its events and queues what comes next; what changes is decided by
 * state-machine.ts, as on the group path (fast-path.ts). Every change of a stage attempt is
 * fenced by (stage_index, stage_attempt): a worker whose attempt is no longer the job's current
 * one changes nothing.
 */
import { JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import { countFinished, jobCounters } from "./metrics.ts";
import { applyChange } from "./outbox.ts";
import type { StageTask } from "./stage-task.ts";
import type { ClaimedRow, StageCompletion } from "./fast-path.ts";
import { insertResult } from "./results.ts";
import { backoffMs, retryPolicyOf, stageTimeoutMs } from "./stage-policy.ts";
import { cancelStep, claimStep, failureStep, nextStageOf, successStep, type StageFailure } from "./state-machine.ts";
import { jobColumnList, nextStageMaxAttemptSql, stageAt, type JobErrorJson, type JobRow } from "./store.ts";
import type { Topology } from "../bus/topology.ts";

/**
 * Locks the job if `task` is still its current attempt and it is in one of `states`. Also reads
 * the highest attempt the next stage has had (after RetryJob it may have run before).
 */
async function lockCurrent(tx: Queryable, task: StageTask, states: JobState[]): Promise<(JobRow & { next_max_attempt: number }) | undefined> {
  const { rows } = await tx.query<JobRow & { next_max_attempt: number }>(
    `SELECT ${jobColumnList},
       ${nextStageMaxAttemptSql("jobs")} AS next_max_attempt
     FROM jobs
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

// The worker and the tests read these from here.
export { backoffMs, retryPolicyOf, stageTimeoutMs };

/**
 * Claims a queued stage task for a worker: the job becomes RUNNING and the attempt is recorded.
 * Undefined when the task is stale or already claimed (a duplicate delivery): drop it.
 */
export async function claimAttempt(tx: Queryable, topology: Topology, task: StageTask, workerId: string): Promise<ClaimedRow | undefined> {
  const current = await lockCurrent(tx, task, [JobState.QUEUED]);
  if (!current) return undefined;
  await tx.query(
    `INSERT INTO stage_attempts (tenant_id, job_id, stage_index, attempt, stage, worker_id, outcome)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [task.tenantId, task.jobId, task.stageIndex, task.attempt, stageAt(current, task.stageIndex), workerId, StageAttemptOutcome.RUNNING],
  );
  const step = claimStep(task.stageIndex, task.attempt);
  const after = await applyChange(tx, topology, current, { state: step.state, start_time: current.start_time ?? new Date() }, step.events);
  return { ...after, next_max_attempt: current.next_max_attempt };
}

export type CommitOutcome = "committed" | "stale" | "cancelled";

async function cancelRunning(tx: Queryable, topology: Topology, row: JobRow, task: StageTask): Promise<CommitOutcome> {
  await endAttempt(tx, task, StageAttemptOutcome.CANCELLED);
  const step = cancelStep();
  await applyChange(tx, topology, row, { state: step.state, end_time: new Date() }, step.events);
  countFinished(JobState.CANCELLED);
  return "cancelled";
}

/** Commits a successful stage: its output, the next stage's task or the result, the events. */
export async function completeStage(tx: Queryable, topology: Topology, task: StageTask, done: StageCompletion): Promise<CommitOutcome> {
  const current = await lockCurrent(tx, task, [JobState.RUNNING, JobState.CANCELLING]);
  if (!current) return "stale";
  if (current.state === JobState.CANCELLING) return cancelRunning(tx, topology, current, task);
  const stage = stageAt(current, task.stageIndex);
  // The attempt's end and the stage's output in one round trip.
  await tx.query(
    `WITH ended AS (
       UPDATE stage_attempts SET outcome = $6, end_time = clock_timestamp(), error = NULL
       WHERE tenant_id = $1 AND job_id = $2 AND stage_index = $7 AND attempt = $8
     )
     INSERT INTO stage_outputs (tenant_id, job_id, stage, output, bytes) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (tenant_id, job_id, stage) DO UPDATE SET output = EXCLUDED.output, bytes = EXCLUDED.bytes`,
    [task.tenantId, task.jobId, stage, JSON.stringify(done.output ?? null), done.bytes ? Buffer.from(done.bytes) : null, StageAttemptOutcome.SUCCEEDED, task.stageIndex, task.attempt],
  );
  const next = nextStageOf(current, task.stageIndex, current.next_max_attempt);
  const step = successStep(next, task.stageIndex, task.attempt, false);
  if (step.state === JobState.QUEUED && next) {
    const patch = { ...done.patch, state: step.state, stage_index: next.stageIndex, stage_attempt: next.attempt, stage_attempt_base: next.attempt };
    await applyChange(tx, topology, current, patch, step.events, step.task);
    return "committed";
  }
  if (done.result) await insertResult(tx, task.tenantId, task.jobId, done.result);
  const patch = { ...done.patch, state: step.state, end_time: new Date(), result_expire_time: done.result?.expireTime ?? null, error: null };
  await applyChange(tx, topology, current, patch, step.events);
  countFinished(JobState.SUCCEEDED);
  return "committed";
}

export type { StageFailure };

/** How many attempts of the task's stage, since the stage was (re)started, were lost before this one. */
async function lossesBefore(tx: Queryable, task: StageTask, base: number): Promise<number> {
  const { rows } = await tx.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM stage_attempts
     WHERE tenant_id = $1 AND job_id = $2 AND stage_index = $3 AND attempt >= $4 AND attempt < $5 AND outcome = $6`,
    [task.tenantId, task.jobId, task.stageIndex, base, task.attempt, StageAttemptOutcome.ABANDONED],
  );
  return rows[0]?.n ?? 0;
}

/** Commits a failed attempt: a delayed retry (or requeue after a loss), the job FAILED, or CANCELLED. */
export async function failStage(tx: Queryable, topology: Topology, task: StageTask, failure: StageFailure): Promise<CommitOutcome> {
  const current = await lockCurrent(tx, task, [JobState.RUNNING, JobState.CANCELLING]);
  if (!current) return "stale";
  if (current.state === JobState.CANCELLING) return cancelRunning(tx, topology, current, task);
  const stage = stageAt(current, task.stageIndex);
  const step = failureStep(current, task.stageIndex, task.attempt, failure, await lossesBefore(tx, task, current.stage_attempt_base), topology.maxStageLosses);
  await endAttempt(tx, task, step.outcome, step.error);
  if (step.lost) jobCounters().losses.add(1, { stage: Stage[stage].toLowerCase(), code: failure.code });
  if (step.retried) {
    await applyChange(tx, topology, current, { state: step.state, stage_attempt: task.attempt + 1 }, step.events, step.task);
    if (!step.lost) jobCounters().retries.add(1, { stage: Stage[stage].toLowerCase() });
    return "committed";
  }
  await applyChange(tx, topology, current, { state: step.state, end_time: new Date(), error: step.error }, step.events);
  countFinished(JobState.FAILED);
  return "committed";
}
