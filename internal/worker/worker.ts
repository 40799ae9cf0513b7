/**
 * A stage worker: N stage tasks at once from the work stream, higher priorities first. For each
 * task it claims the attempt in Postgres (fenced by attempt number), heartbeats into Redis and
 * extends the JetStream ack deadline while the stage runs, aborts the stage on timeout or
 * cancellation through its AbortSignal (detect, parse and enrich run in stage threads, which that
 * abort terminates: stage-pool.ts), commits the outcome with the next task atomically,
 * publishes what it wrote to the outbox, and only then acks the message. Claims and successful
 * commits of the tasks in hand are grouped into one statement each (fast-path.ts), and a commit
 * may claim the job's next stage for this worker, which then runs it without a hand-off.
 */
import { context, propagation, SpanKind, SpanStatusCode, trace, type Context, type Meter, type Span, type Tracer } from "@opentelemetry/api";
import type { ConsumerMessages, JetStreamClient, JsMsg } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { ObjectStore } from "@nats-io/obj";
import type { Redis } from "ioredis";
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { type Priority, StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import { traceContextOf, type StreamPublisher } from "../bus/index.ts";
import type { Pool } from "../db/index.ts";
import {
  cancelKey, createJobLifecycle, heartbeatKey, stageAt, stageTimeoutMs,
  type ClaimedRow, type StageCompletion, type StageFailure, type StageInputs, type StageTask,
} from "../jobs/lifecycle.ts";
import { prioritiesInOrder, stageToken, workAckWaitMs, type Topology } from "../bus/topology.ts";
import { findStageError } from "../stages/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { originalKeyOf, runStage } from "./run-stage.ts";
import { createStagePool, StageThreadLost } from "./stage-pool.ts";

export interface WorkerDeps {
  db: Pool;
  js: JetStreamClient;
  nc: NatsConnection;
  /** Publishes what the worker's commits wrote to the outbox. */
  streams: StreamPublisher;
  redis: Redis;
  topology: Topology;
  buckets: { uploads: ObjectStore; results: ObjectStore };
  log: Logger;
  tracer: Tracer;
  meter: Meter;
  concurrency: number;
  heartbeatTtlMs: number;
  /** Threads that run detect, parse and enrich (stage-pool.ts). */
  stageThreads: number;
  /** Heap limit of each stage thread, in MiB. */
  stageHeapMb: number;
  /** How much a DOCX or PDF may inflate to in parse. */
  maxInflatedBytes: number;
  maxDocumentBytes: number;
  allowLoopbackFetch: boolean;
  resultRetentionSeconds: number;
  /** Defaults to host-pid-random. */
  workerId?: string;
}

export interface Worker {
  id: string;
  /** Stops taking work, lets running stages finish for up to `graceMs`, then aborts them. */
  stop(graceMs?: number): Promise<void>;
}

/** Why a stage's signal was aborted. */
class CancelledByUser extends Error {
  override name = "CancelledByUser";
}
class StageTimedOut extends Error {
  override name = "StageTimedOut";
}
class WorkerStopping extends Error {
  override name = "WorkerStopping";
}

export async function startWorker(deps: WorkerDeps): Promise<Worker> {
  const { redis, topology, log, tracer } = deps;
  const workerId = deps.workerId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const stageDuration = deps.meter.createHistogram("jobmesh.stage.duration", { description: "Stage attempt duration by stage and outcome", unit: "ms" });
  const attempts = deps.meter.createCounter("jobmesh.stage.attempts", { description: "Stage attempts by stage and outcome" });

  // Claims and successful commits of the tasks in hand go to Postgres in groups (lifecycle.ts).
  const lifecycle = createJobLifecycle({ db: deps.db, topology, send: deps.streams.publish, tracer, log, workerId, concurrency: deps.concurrency });
  const pool = createStagePool({ threads: deps.stageThreads, heapMb: deps.stageHeapMb, log, meter: deps.meter });
  const stageDeps = { ...deps, pool, uploads: deps.buckets.uploads, results: deps.buckets.results };

  const running = new Map<string, AbortController>();
  const queues: JsMsg[][] = prioritiesInOrder.map(() => []);
  /** Feeds waiting for room in their queue. */
  const spaceWaiters: (() => void)[] = [];
  let active = 0;
  let stopping = false;
  const inflight = new Set<Promise<void>>();

  /**
   * Cancels that named an attempt this worker was not running (yet): the message can overtake the
   * claim's reply, so a stage checks here when it starts. Keyed by job, "stageIndex:attempt",
   * kept for a few seconds.
   */
  const earlyCancels = new Map<string, { attempt: string; at: number }>();
  const cancelSub: Subscription = deps.nc.subscribe(`${topology.namespace}.cancel.*`, {
    callback: (_err, msg) => {
      const jobId = msg.subject.split(".").pop()!;
      const controller = running.get(jobId);
      if (controller) return controller.abort(new CancelledByUser("job cancelled"));
      const attempt = msg.string();
      if (!attempt) return;
      const now = Date.now();
      for (const [id, entry] of earlyCancels) if (now - entry.at > 5_000) earlyCancels.delete(id);
      earlyCancels.set(jobId, { attempt, at: now });
    },
  });

  const feeds = new Set<ConsumerMessages>();
  /** Pulls one priority's tasks into its local queue; re-subscribes when the feed breaks (NATS restart). */
  async function feed(i: number) {
    while (!stopping) {
      try {
        const consumer = await deps.js.consumers.get(topology.workStream, topology.workConsumer(prioritiesInOrder[i]));
        const messages = await consumer.consume({ max_messages: deps.concurrency, expires: 5_000 });
        feeds.add(messages);
        try {
          for await (const msg of messages) {
            if (stopping) {
              msg.nak();
              continue;
            }
            queues[i].push(msg);
            dispatch();
            // Backpressure: a worker holds at most `concurrency` waiting tasks per priority, so
            // other workers get the rest and priorities are decided close to the stream.
            while (queues[i].length >= deps.concurrency && !stopping) await new Promise<void>((r) => spaceWaiters.push(r));
          }
        } finally {
          feeds.delete(messages);
        }
      } catch (error) {
        if (!stopping) log.warn({ err: error }, "work feed broke; subscribing again");
      }
      if (!stopping) await new Promise((r) => setTimeout(r, 500));
    }
  }
  const feeding = prioritiesInOrder.map((_, i) => feed(i));

  // Tasks waiting in the local queues keep their ack deadline too.
  const keepQueuedAlive = setInterval(() => {
    for (const q of queues) for (const msg of q) msg.working();
  }, workAckWaitMs / 3);

  function dispatch() {
    while (!stopping && active < deps.concurrency) {
      const msg = queues.find((q) => q.length > 0)?.shift();
      if (!msg) return;
      for (const wake of spaceWaiters.splice(0)) wake();
      active++;
      const p = handle(msg)
        .catch((error: unknown) => log.error({ err: error }, "stage task failed unexpectedly"))
        .finally(() => {
          active--;
          inflight.delete(p);
          dispatch();
        });
      inflight.add(p);
    }
  }

  /** A stage this worker claimed for itself when it committed the one before (fast-path.ts). */
  interface Continuation {
    task: StageTask;
    row: ClaimedRow;
    inputs: StageInputs;
    /** The trace context of the stage before. */
    parent: Context;
  }

  /** Runs the message's stage, then every stage the worker continues with. */
  async function handle(msg: JsMsg) {
    let task: StageTask;
    try {
      task = JSON.parse(new TextDecoder().decode(msg.data)) as StageTask;
    } catch {
      log.error({ subject: msg.subject }, "dropping a malformed stage task");
      msg.term();
      return;
    }
    let next = await attempt(msg.subject.split(".").at(-2) ?? "unknown", task, traceContextOf(msg.headers), msg);
    while (next) next = await attempt(stageToken(stageAt(next.row, next.task.stageIndex)), next.task, next.parent, undefined, next);
  }

  /**
   * One stage attempt in its span: claims it (unless it was continued), runs it, commits it.
   * Resolves with the next stage when the commit claimed it for this worker.
   */
  async function attempt(stageName: string, task: StageTask, parent: Context, msg?: JsMsg, continued?: Continuation): Promise<Continuation | undefined> {
    const span = tracer.startSpan(`stage ${stageName}`, {
      kind: SpanKind.CONSUMER,
      attributes: { "jobmesh.job": task.jobId, "jobmesh.stage": stageName, "jobmesh.attempt": task.attempt, "jobmesh.worker": workerId },
    }, parent);
    const spanContext = trace.setSpan(parent, span);
    // The outbox rows of this attempt continue the stage span's trace.
    const headers: Record<string, string> = {};
    propagation.inject(spanContext, headers);
    return context.with(spanContext, async () => {
      try {
        const claimed = continued ?? (await claim(task, headers, msg!));
        if (!claimed) {
          // Stale, duplicate or cancelled: the job has moved on; this delivery has no effect.
          span.setAttribute("jobmesh.stale", true);
          msg?.ack();
          return undefined;
        }
        if (continued) span.setAttribute("jobmesh.continued", true);
        const after = await runClaimed(msg, task, claimed.row, claimed.inputs, span, headers);
        return after && { ...after, parent: spanContext };
      } catch (error) {
        // After a claim, runClaimed acked: if its commit failed, the reaper requeues the
        // attempt once the heartbeat lapses.
        span.setStatus({ code: SpanStatusCode.ERROR, message: String(error) });
        throw error;
      } finally {
        span.end();
      }
    });
  }

  /** Claims a delivered task (lifecycle.ts); a task nothing could be claimed for goes back to the stream. */
  async function claim(task: StageTask, headers: Record<string, string>, msg: JsMsg): Promise<{ row: ClaimedRow; inputs: StageInputs } | undefined> {
    try {
      return await lifecycle.claim(task, headers);
    } catch (error) {
      // Nothing was claimed (Postgres unreachable?): hand the task back for a later try.
      msg.nak(1000);
      throw error;
    }
  }

  /**
   * Whether to run a job's next stage here rather than queue it: saves the hand-off (a task
   * published, delivered, acked and claimed). Not while stopping, and not while tasks of a
   * higher priority wait in this worker's queues: those go first.
   */
  function continueHere(priority: Priority): boolean {
    if (stopping) return false;
    const rank = prioritiesInOrder.indexOf(priority as (typeof prioritiesInOrder)[number]);
    return queues.slice(0, rank < 0 ? queues.length : rank).every((q) => q.length === 0);
  }

  async function runClaimed(msg: JsMsg | undefined, task: StageTask, row: ClaimedRow, inputs: StageInputs, span: Span, headers: Record<string, string>) {
    const stage = stageAt(row, task.stageIndex);
    const hbKey = heartbeatKey(task);
    const controller = new AbortController();
    running.set(task.jobId, controller);
    if (earlyCancels.get(task.jobId)?.attempt === `${task.stageIndex}:${task.attempt}`) {
      earlyCancels.delete(task.jobId);
      controller.abort(new CancelledByUser("job cancelled"));
    }
    const timeoutMs = stageTimeoutMs(row, task.stageIndex);
    const timedOut = () => controller.abort(new StageTimedOut(`stage ${stageToken(stage)} exceeded its timeout of ${timeoutMs} ms`));
    let timeout = setTimeout(timedOut, timeoutMs);
    // A stage that runs in a thread has its whole timeout from when a thread takes it: waiting
    // for a free thread (busy with other stages) is not the stage's time.
    const threadStarted = () => {
      clearTimeout(timeout);
      if (!controller.signal.aborted) timeout = setTimeout(timedOut, timeoutMs);
    };
    // The first heartbeat is due before the reaper looks (it leaves attempts younger than one
    // TTL alone), so a short stage never touches Redis. Cancels arrive on the cancel subject;
    // the heartbeat also reads the cancel flag, for a message this worker missed.
    let beaten = false;
    const beat = async () => {
      msg?.working();
      beaten = true;
      try {
        const replies = await redis.pipeline().set(hbKey, workerId, "PX", deps.heartbeatTtlMs).exists(cancelKey(task.jobId)).exec();
        if (replies?.[1]?.[1]) controller.abort(new CancelledByUser("job cancelled"));
      } catch {
        // Redis is down: the reaper cannot reap without it either, so keep working.
      }
    };
    const heartbeat = setInterval(() => void beat(), Math.max(100, Math.floor(deps.heartbeatTtlMs / 3)));
    const started = performance.now();
    let outcome = "succeeded";
    try {
      let result: StageCompletion | undefined;
      let failure: StageFailure | undefined;
      try {
        result = await runStage(stageDeps, row, task, inputs, controller.signal, threadStarted);
      } catch (error) {
        failure = classify(error, controller.signal);
        outcome = failure.code.toLowerCase();
        span.setStatus({ code: SpanStatusCode.ERROR, message: failure.message });
      }
      if (failure && controller.signal.reason instanceof WorkerStopping) {
        // Stopped past the grace period: give the attempt up at once as a loss (not one of the
        // stage's attempts), so another worker takes it without waiting for the heartbeat to
        // lapse. Should this commit fail too, the reaper requeues the attempt later.
        const lost: StageFailure = { kind: "lost", outcome: StageAttemptOutcome.ABANDONED, code: "WORKER_STOPPED", message: "the worker running this stage was stopped before the stage finished" };
        const given = await lifecycle.fail(task, lost).catch((error: unknown) => {
          log.warn({ err: error, job: task.jobId }, "could not give up a stage attempt while stopping; the reaper will requeue it");
          return "stale" as const;
        });
        span.setAttribute("jobmesh.commit", given);
        return undefined;
      }
      const continueAs = continueHere(row.priority) ? workerId : undefined;
      const { committed, continued } = result
        ? await lifecycle.complete({ task, row, done: result, headers, inputs, continueAs })
        : { committed: await lifecycle.fail(task, failure!), continued: undefined };
      span.setAttribute("jobmesh.commit", committed);
      // A large original this attempt kept but did not commit (stale, cancelled) is nobody's.
      const uncommitted = committed === "committed" ? undefined : originalKeyOf(result?.output);
      if (uncommitted) await deps.buckets.uploads.delete(uncommitted).catch(() => {});
      return continued;
    } finally {
      clearTimeout(timeout);
      clearInterval(heartbeat);
      running.delete(task.jobId);
      if (beaten) await redis.del(hbKey).catch(() => {});
      const attrs = { stage: stageToken(stage), outcome };
      stageDuration.record(performance.now() - started, attrs);
      attempts.add(1, attrs);
      msg?.ack();
    }
  }

  return {
    id: workerId,
    async stop(graceMs = 10_000) {
      stopping = true;
      for (const wake of spaceWaiters.splice(0)) wake();
      clearInterval(keepQueuedAlive);
      await Promise.all([...feeds].map((f) => f.close().catch(() => {})));
      await Promise.allSettled(feeding);
      for (const q of queues) for (const msg of q.splice(0)) msg.nak();
      const all = Promise.allSettled([...inflight]);
      const timer = setTimeout(() => {
        for (const c of running.values()) c.abort(new WorkerStopping("worker stopping"));
      }, graceMs);
      await all;
      clearTimeout(timer);
      cancelSub.unsubscribe();
      await pool.destroy();
      await lifecycle.close();
    },
  };
}

/** Maps what a stage threw to how the attempt failed. */
export function classify(error: unknown, signal: AbortSignal): StageFailure {
  if (signal.aborted) {
    const reason: unknown = signal.reason;
    if (reason instanceof CancelledByUser) {
      return { kind: "cancelled", outcome: StageAttemptOutcome.CANCELLED, code: "CANCELLED", message: "the job was cancelled" };
    }
    if (reason instanceof StageTimedOut) {
      return { kind: "transient", outcome: StageAttemptOutcome.TIMED_OUT, code: "STAGE_TIMEOUT", message: reason.message };
    }
  }
  if (error instanceof StageThreadLost) {
    // Not the stage's own failure: the attempt is counted as a loss, apart from its attempts.
    return { kind: "lost", outcome: StageAttemptOutcome.ABANDONED, code: "STAGE_CRASHED", message: error.message };
  }
  const stageError = findStageError(error);
  if (stageError) {
    return {
      kind: stageError.retryable ? "transient" : "permanent",
      outcome: StageAttemptOutcome.FAILED,
      code: stageError.code.toUpperCase(),
      message: stageError.message,
    };
  }
  return { kind: "transient", outcome: StageAttemptOutcome.FAILED, code: "INTERNAL", message: "the stage failed unexpectedly; it will be retried" };
}
