/**
 * The job lifecycle as a stage worker drives it, and the only part of the jobs package the worker
 * uses: claim a delivered stage task, then complete or fail the attempt. Claims and successful
 * completions of the tasks a worker has in hand go to Postgres in groups, one statement per group
 * (fast-path.ts: the job must still be as its task left it); what a group leaves (a duplicate
 * delivery, a cancel in between, a task the reaper rebuilt, a large output) takes the locking
 * path (transitions.ts), one at a time, which decides as before. What a change writes to the
 * outbox is published straight after the commit (internal/outbox's direct publisher), the relay
 * covering a crash in between. Fencing is by stage index, attempt and version throughout: a stale
 * worker never completes a newer attempt.
 */
import type { Tracer } from "@opentelemetry/api";
import { groupCommit } from "../db/group-commit.ts";
import { inTransaction, type Pool } from "../db/index.ts";
import { createDirectPublisher, type Send } from "../outbox/index.ts";
import type { Topology } from "../bus/topology.ts";
import type { Logger } from "../telemetry/index.ts";
import {
  claimMany, completeMany, loadInputs,
  type Claimed, type ClaimedRow, type ClaimRequest, type Committed, type CompletionRequest, type StageInputs,
} from "./fast-path.ts";
import { claimAttempt, completeStage, failStage, type CommitOutcome, type StageFailure } from "./transitions.ts";
import type { StageTask } from "./stage-task.ts";
import { stageAt } from "./store.ts";

// What the worker needs besides: the contract of its messages, the rows it is handed, and the
// keys and limits it keeps while a stage runs.
export type { StageTask } from "./stage-task.ts";
export type { ClaimedRow, CompletionRequest, StageCompletion, StageInputs } from "./fast-path.ts";
export type { CommitOutcome, StageFailure } from "./transitions.ts";
export { stageTimeoutMs } from "./transitions.ts";
export { cancelKey, heartbeatKey } from "./reaper.ts";
export { configOf, stageAt, type JobRow } from "./store.ts";
export { resultNameOf, resultObjectJson, resultObjectKey, type ResultSummary } from "./results.ts";

export interface LifecycleDeps {
  db: Pool;
  topology: Topology;
  /** Publishes what commits wrote to the outbox (the bus's stream publisher). */
  send: Send;
  tracer: Tracer;
  log: Logger;
  /** The worker that claims (stage_attempts.worker_id). */
  workerId: string;
  /** Tasks in hand at most: the largest group a statement takes. */
  concurrency: number;
}

export interface JobLifecycle {
  /**
   * Claims the attempt a delivered task names: resolves the job's row and the stage's inputs, or
   * undefined when the job has moved on (stale, duplicate, cancelled). Rejects when nothing could
   * be claimed (Postgres unreachable): hand the task back.
   */
  claim(task: StageTask, headers: Record<string, string>): Promise<{ row: ClaimedRow; inputs: StageInputs } | undefined>;
  /**
   * Commits a successful attempt: its output, and the next stage queued, or claimed for this
   * worker with `continueAs` (resolved as `continued`: run it at once), or the job SUCCEEDED.
   */
  complete(request: CompletionRequest): Promise<{ committed: CommitOutcome; continued?: Committed["continued"] }>;
  /** Records a failed attempt: retried on the stage's policy, or the job FAILED. */
  fail(task: StageTask, failure: StageFailure): Promise<CommitOutcome>;
  /** Waits for the publishes in flight. */
  close(): Promise<void>;
}

export function createJobLifecycle(deps: LifecycleDeps): JobLifecycle {
  const { db, topology, log, workerId } = deps;
  const publisher = createDirectPublisher({ db, send: deps.send, tracer: deps.tracer, log, enabled: true });
  const claims = groupCommit<ClaimRequest, Claimed | undefined>((requests) => claimMany(db, topology, requests, workerId, publisher.graceSeconds), { maxItems: deps.concurrency });
  const completions = groupCommit<CompletionRequest, Committed | undefined>((requests) => completeMany(db, topology, requests, publisher.graceSeconds), { maxItems: deps.concurrency, maxInFlight: 2 });

  return {
    async claim(task, headers) {
      const fast = await claims.add({ task, headers }).catch((error: unknown) => {
        log.debug({ err: error }, "group claim failed; claiming on the locking path");
        return undefined;
      });
      if (fast) {
        void publisher.publish(fast.outbox);
        return fast;
      }
      const row = await inTransaction(db, (tx) => claimAttempt(tx, topology, task, workerId));
      return row && { row, inputs: await loadInputs(db, task.tenantId, task.jobId, stageAt(row, task.stageIndex)) };
    },
    async complete(request) {
      const fast = await completions.add(request).catch((error: unknown) => {
        log.debug({ err: error }, "group commit failed; committing on the locking path");
        return undefined;
      });
      if (fast) {
        void publisher.publish(fast.outbox);
        return { committed: "committed", continued: fast.continued };
      }
      return { committed: await inTransaction(db, (tx) => completeStage(tx, topology, request.task, request.done)) };
    },
    fail: (task, failure) => inTransaction(db, (tx) => failStage(tx, topology, task, failure)),
    close: () => publisher.close(),
  };
}
