/**
 * The job state machine: where each step of a stage attempt takes a job, and the events that say
 * so. Both write paths take their decisions here and only differ in how they write them: the
 * group statements of fast-path.ts (optimistic, one statement for many jobs) and the locking path
 * of transitions.ts (one job, row locked). Pure: no I/O.
 *
 *   QUEUED --claim--> RUNNING --success--> QUEUED (next stage's task) | RUNNING (next stage
 *   continued by the same worker) | SUCCEEDED (last stage)
 *   RUNNING --failure--> QUEUED (retry, delayed) | FAILED; RUNNING or CANCELLING --cancel--> CANCELLED
 */
import { JobEventType, JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import type { NewEvent, QueuedTask } from "./outbox.ts";
import { backoffMs, retryPolicyOf } from "./stage-policy.ts";
import { configOf, stageAt, type JobErrorJson, type JobRow } from "./store.ts";

/** What a step does to a job: its state after, the events it writes, the stage task it queues. */
export interface Step {
  state: JobState;
  events: NewEvent[];
  /** The stage task to queue with the change (none when the job ends or its worker continues). */
  task?: QueuedTask;
}

/** A claim: the stage's attempt starts. */
export function claimStep(stageIndex: number, attempt: number): Step {
  return { state: JobState.RUNNING, events: [{ type: JobEventType.STAGE_STARTED, stageIndex, attempt }] };
}

/**
 * The next stage after `stageIndex`, or undefined after the last. After RetryJob the next stage
 * may have run before: its attempt numbers continue (`nextMaxAttempt`, its highest attempt so far).
 */
export function nextStageOf(row: JobRow, stageIndex: number, nextMaxAttempt: number): { stageIndex: number; attempt: number } | undefined {
  const next = stageIndex + 1;
  return next < configOf(row).stages.length ? { stageIndex: next, attempt: nextMaxAttempt + 1 } : undefined;
}

/**
 * A successful attempt: stage_succeeded, then job_succeeded after the last stage (SUCCEEDED);
 * else the next stage started at once by the same worker when `continueHere` (RUNNING), or its
 * task queued (QUEUED).
 */
export function successStep(next: { stageIndex: number; attempt: number } | undefined, stageIndex: number, attempt: number, continueHere: boolean): Step {
  const events: NewEvent[] = [{ type: JobEventType.STAGE_SUCCEEDED, stageIndex, attempt }];
  if (!next) return { state: JobState.SUCCEEDED, events: [...events, { type: JobEventType.JOB_SUCCEEDED }] };
  if (continueHere) return { state: JobState.RUNNING, events: [...events, { type: JobEventType.STAGE_STARTED, stageIndex: next.stageIndex, attempt: next.attempt }] };
  return { state: JobState.QUEUED, events, task: next };
}

/** A cancel that reached a running stage. */
export function cancelStep(): Step {
  return { state: JobState.CANCELLED, events: [{ type: JobEventType.JOB_CANCELLED }] };
}

/** How a stage attempt failed (the worker's classification). */
export interface StageFailure {
  /**
   * transient: retry while attempts remain; permanent: fail the job; cancelled: the job was
   * cancelled; lost: the attempt's worker or thread was lost (killed, stopped, its commit failed),
   * not the stage's own failure, so it is counted apart from the stage's attempts: requeued
   * without using one of them, while the stage has lost fewer than maxStageLosses.
   * A lost attempt is recorded ABANDONED, and an attempt recorded ABANDONED is a loss: that is
   * how losses are counted.
   */
  kind: "transient" | "permanent" | "cancelled" | "lost";
  outcome: StageAttemptOutcome;
  code: string;
  message: string;
}

/** A failed attempt's step, with what it records on the attempt and whether it was a loss or a retry. */
export interface FailureStep extends Step {
  /** The attempt's outcome as recorded (ABANDONED for a loss). */
  outcome: StageAttemptOutcome;
  error: JobErrorJson;
  lost: boolean;
  retried: boolean;
}

/**
 * A failed attempt: retried after a backoff while the stage's policy allows (a loss, while the
 * stage has lost fewer than `maxStageLosses`; losses do not use attempts), else the job FAILED.
 * `lossesBefore`: attempts of this stage lost before this one since it was (re)started.
 */
export function failureStep(row: JobRow, stageIndex: number, attempt: number, failure: StageFailure, lossesBefore: number, maxStageLosses: number): FailureStep {
  const stage = stageAt(row, stageIndex);
  const policy = retryPolicyOf(row, stageIndex);
  const lost = failure.kind === "lost" || failure.outcome === StageAttemptOutcome.ABANDONED;
  const losses = lossesBefore + (lost ? 1 : 0);
  // The stage's own attempts since it was (re)started; lost ones do not count.
  const attemptsUsed = attempt - row.stage_attempt_base + 1 - losses;
  // A stage aborted for a cancel that is no longer pending (the job was not CANCELLING) is retried.
  const retried = lost ? losses < maxStageLosses : failure.kind !== "permanent" && attemptsUsed < policy.maxAttempts;
  const message = lost && !retried ? `the stage's worker was lost ${losses === 1 ? "once" : `${losses} times`}; last: ${failure.message}` : failure.message;
  const error: JobErrorJson = { stage, code: failure.code, message, transient: retried };
  const failed: NewEvent = { type: JobEventType.STAGE_FAILED, stageIndex, attempt, error };
  const outcome = lost ? StageAttemptOutcome.ABANDONED : failure.outcome;
  if (retried) {
    // After a loss too, so a document that kills every worker does not spin.
    const delayMs = backoffMs(policy, lost ? losses : attemptsUsed);
    return { state: JobState.QUEUED, events: [failed], task: { stageIndex, attempt: attempt + 1, delayMs }, outcome, error, lost, retried };
  }
  return { state: JobState.FAILED, events: [failed, { type: JobEventType.JOB_FAILED, stageIndex, attempt, error }], outcome, error, lost, retried };
}
