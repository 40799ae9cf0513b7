/**
 * Background upkeep in the jobs process: the lease reaper, which requeues stage attempts whose
 * worker stopped heartbeating (crashed, killed, partitioned); the retention sweep, which deletes
 * expired results and expired uploads; and statistics for the job tables while they are young.
 */
import type { Redis } from "ioredis";
import type { ObjectStore } from "@nats-io/obj";
import { StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import type { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { inTransaction, type Pool } from "../db/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { jobCounters } from "./metrics.ts";
import { resultObjectOwner } from "./results.ts";
import type { StageTask } from "./stage-task.ts";
import { stageToken, type Topology } from "../bus/topology.ts";
import { failStage } from "./transitions.ts";

/** Redis key of a running attempt's heartbeat (the cache adds the namespace prefix). */
export const heartbeatKey = (task: StageTask) => `hb:${task.jobId}:${task.stageIndex}:${task.attempt}`;
/** Redis key that tells workers a job was cancelled. */
export const cancelKey = (jobId: string) => `cancel:${jobId}`;

export interface ReaperOptions {
  db: Pool;
  redis: Redis;
  topology: Topology;
  buckets: { uploads: ObjectStore; results: ObjectStore };
  log: Logger;
  heartbeatTtlMs: number;
  onReaped?: (task: StageTask) => void;
}

export interface Reaper {
  /** One pass: requeues lost attempts; resolves with how many. */
  reap(): Promise<number>;
  /** One retention pass. */
  sweep(): Promise<void>;
  stop(): Promise<void>;
}

export function createReaper(options: ReaperOptions): Reaper {
  const { db, redis, log } = options;

  async function reap(): Promise<number> {
    // A worker writes its heartbeat before the stage starts; an attempt younger than one TTL
    // may simply not have been seen yet.
    const { rows } = await db.query<{ tenant_id: string; job_id: string; stage_index: number; attempt: number; stage: Stage }>(
      `SELECT tenant_id, job_id, stage_index, attempt, stage FROM stage_attempts
       WHERE outcome = $1 AND start_time < clock_timestamp() - make_interval(secs => $2::float8 / 1000)
       LIMIT 500`,
      [StageAttemptOutcome.RUNNING, options.heartbeatTtlMs],
    );
    let reaped = 0;
    for (const r of rows) {
      const task: StageTask = { tenantId: r.tenant_id, jobId: r.job_id, stageIndex: r.stage_index, attempt: r.attempt };
      let alive: number;
      try {
        alive = await redis.exists(heartbeatKey(task));
      } catch {
        return reaped; // Without Redis we cannot tell a live worker from a dead one: wait.
      }
      if (alive) continue;
      const outcome = await inTransaction(db, (tx) =>
        // A loss, not the stage's failure: the worker crashed, was killed or cut off, or could
        // not commit (its database connection broke): requeued without using a stage attempt.
        failStage(tx, options.topology, task, {
          kind: "lost",
          outcome: StageAttemptOutcome.ABANDONED,
          code: "WORKER_LOST",
          message: "the worker running this stage stopped heartbeating",
        }),
      );
      if (outcome !== "stale") {
        reaped++;
        jobCounters().reaped.add(1, { stage: stageToken(r.stage) });
        options.onReaped?.(task);
        log.warn({ job: task.jobId, stageIndex: task.stageIndex, attempt: task.attempt }, "reaped a stage attempt whose worker was lost");
      }
    }
    return reaped;
  }

  async function sweep(): Promise<void> {
    const expired = await db.query<{ object_key: string | null }>(
      "DELETE FROM job_results WHERE expire_time < now() RETURNING object_key",
    );
    for (const { object_key } of expired.rows) {
      if (object_key) await options.buckets.results.delete(object_key).catch(() => {});
    }
    const uploads = await db.query<{ id: string }>(
      `DELETE FROM uploads u WHERE expire_time < now()
       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.tenant_id = u.tenant_id AND j.source_upload = u.id AND j.state NOT IN (3, 4, 6))
       RETURNING id`,
    );
    for (const { id } of uploads.rows) await options.buckets.uploads.delete(id).catch(() => {});
    await sweepOrphanResults();
  }

  /**
   * Deletes result objects whose job is gone. The output stage writes a large result's object
   * before its commit; when DeleteJob (or a crash) comes in between, the commit finds no job and
   * the object would stay forever. A job row that does not exist can never commit again, so an
   * object under `<tenant>/<job>.json` without that job row is garbage, however young.
   */
  async function sweepOrphanResults(): Promise<void> {
    const objects = (await options.buckets.results.list()).filter((o) => !o.deleted);
    const keyed = objects.flatMap((o) => {
      const owner = resultObjectOwner(o.name);
      return owner ? [{ key: o.name, ...owner }] : [];
    });
    for (let i = 0; i < keyed.length; i += 1000) {
      const batch = keyed.slice(i, i + 1000);
      const { rows } = await db.query<{ key: string }>(
        `SELECT o.key FROM unnest($1::text[], $2::uuid[], $3::uuid[]) AS o(key, tenant_id, job_id)
         WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.tenant_id = o.tenant_id AND j.id = o.job_id)`,
        [batch.map((o) => o.key), batch.map((o) => o.tenantId), batch.map((o) => o.jobId)],
      );
      for (const { key } of rows) {
        await options.buckets.results.delete(key).catch(() => {});
        log.info({ key }, "deleted a result object whose job is gone");
      }
    }
  }

  /**
   * Analyzes the job tables while they are young. Autovacuum looks once a minute and analyzes a
   * table after a tenth of it changed; a table that grows from nothing to thousands of rows in
   * that minute is planned meanwhile as if it were empty, and the hot path's cached statement
   * plans (fast-path.ts) keep a sequential scan of jobs until the next analyze. This analyzes a
   * table each time it has changed by more than half its size (at least 200 rows): a handful of
   * times while it is young, never once it is large.
   */
  async function analyzeYoungTables(): Promise<void> {
    const { rows } = await db.query<{ relname: string }>(
      `SELECT relname FROM pg_stat_user_tables
       WHERE relname = ANY($1::text[]) AND n_mod_since_analyze > greatest(200, n_live_tup / 2) AND n_live_tup < 1000000`,
      [["jobs", "stage_attempts", "stage_outputs", "job_events", "outbox"]],
    );
    for (const { relname } of rows) await db.query(`ANALYZE ${relname}`);
  }

  let stopped = false;
  const analyzeTimer = setInterval(() => {
    if (!stopped) analyzeYoungTables().catch((error: unknown) => log.debug({ err: error }, "analyzing young tables failed"));
  }, 2_000);
  const reapEvery = Math.max(200, Math.floor(options.heartbeatTtlMs / 3));
  const reapTimer = setInterval(() => {
    if (!stopped) reap().catch((error: unknown) => log.warn({ err: error }, "reaper pass failed"));
  }, reapEvery);
  const sweepTimer = setInterval(() => {
    if (!stopped) sweep().catch((error: unknown) => log.warn({ err: error }, "retention sweep failed"));
  }, 60_000);

  return {
    reap,
    sweep,
    async stop() {
      stopped = true;
      clearInterval(reapTimer);
      clearInterval(sweepTimer);
      clearInterval(analyzeTimer);
    },
  };
}
