/**
 * The job domain behind JobService: create, read, list, cancel, retry, delete, results, watch
 * and uploads. Transport-free: it throws the named errors of errors.ts.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { ObjectStore } from "@nats-io/obj";
import type { Redis } from "ioredis";
import { JobEventType, JobState } from "../../gen/jobmesh/v1/events_pb.js";
import type { CreateJobRequest, Job, JobResult } from "../../gen/jobmesh/v1/jobs_pb.js";
import { type Pipeline, Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { inTransaction, type Pool, type Queryable } from "../db/index.ts";
import type { PageTokens } from "../paging/index.ts";
import type { PipelineDomain } from "../pipelines/pipelines.ts";
import type { JobResultDocument } from "../stages/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { findByRequestId, insertableAtOnce, insertJobs, insertLargeJob, prepareJob, type PreparedJob } from "./create.ts";
import { InvalidJobRequestError, JobNotFoundError, JobStateError, ResultNotFoundError, StaleJobEtagError } from "./errors.ts";
import { listJobs, type ListJobsQuery } from "./list.ts";
import { applyChange } from "./outbox.ts";
import type { DirectPublisher } from "../outbox/index.ts";
import { cancelKey } from "./reaper.ts";
import { selectResult, toJobResult } from "./results.ts";
import { checkStorageQuota } from "./storage-quota.ts";
import { configOf, etagOf, isTerminal, jobIdOf, loadJob, maxAttemptOf, selectAttempts, selectJob, toJob, type JobRow } from "./store.ts";
import { countFinished, jobCounters } from "./metrics.ts";
import { priorityToken, type Topology } from "../bus/topology.ts";

export interface JobDomainDeps {
  db: Pool;
  redis: Redis;
  nc: NatsConnection;
  topology: Topology;
  buckets: { uploads: ObjectStore; results: ObjectStore };
  pipelines: PipelineDomain;
  pageTokens: PageTokens;
  log: Logger;
  maxDocumentBytes: number;
  /** Bytes a tenant may hold in uploads and results unless its tenants row says otherwise. */
  storageQuotaBytes: number;
  allowLoopbackFetch: boolean;
  /** Publishes new jobs' outbox rows right after their commit. */
  publisher: DirectPublisher;
}

export function createJobDomain(deps: JobDomainDeps) {
  const { db, topology } = deps;

  function idOrNotFound(name: string): string {
    const id = jobIdOf(name);
    if (!id) throw new JobNotFoundError(name);
    return id;
  }

  /** A row just written: a new job has no attempts to read; a request_id replay might. */
  async function jobOf(tx: Queryable, tenantId: string, row: JobRow): Promise<Job> {
    return row.event_seq === "1" ? toJob(row, []) : (await loadJob(tx, tenantId, row.id))!;
  }

  /**
   * Writes prepared jobs (all or nothing), publishes their events and first tasks, and returns
   * them as this request left them (QUEUED), read before a worker can change them.
   */
  async function insert(tenantId: string, prepared: PreparedJob[]): Promise<Job[]> {
    // Every job stores a result the tenant holds: refused up front when the tenant is at its
    // quota (whatever the source: an upload or a URL run again and again grows the results too),
    // or when its inline documents would not fit.
    const inline = prepared.reduce((sum, p) => sum + (p.content?.byteLength ?? 0) + (p.text === null ? 0 : Buffer.byteLength(p.text)), 0);
    await checkStorageQuota(db, tenantId, deps.storageQuotaBytes, inline, { room: true });
    let rows: JobRow[];
    let created: boolean[];
    if (!insertableAtOnce(prepared)) {
      // Large inline documents: one statement each, published by the relay on commit.
      const inserted = await inTransaction(db, async (tx) => {
        const out: { row: JobRow; created: boolean }[] = [];
        for (const p of prepared) out.push(await insertLargeJob(tx, topology, tenantId, p));
        return out;
      });
      rows = inserted.map((i) => i.row);
      created = inserted.map((i) => i.created);
    } else {
      // A replayed request_id may turn out to be reused with another body: then nothing stays.
      const write = (q: Queryable) => insertJobs(q, topology, tenantId, prepared, deps.publisher.graceSeconds);
      const inserted = prepared.some((p) => p.requestId) ? await inTransaction(db, write) : await write(db);
      void deps.publisher.publish(inserted.outbox);
      ({ rows, created } = inserted);
    }
    // A replayed request_id created nothing.
    prepared.forEach((p, i) => created[i] && jobCounters().created.add(1, { priority: priorityToken(p.priority) }));
    return Promise.all(rows.map((row) => jobOf(db, tenantId, row)));
  }

  async function reload(tenantId: string, jobId: string): Promise<Job> {
    const job = await loadJob(db, tenantId, jobId);
    if (!job) throw new JobNotFoundError(`jobs/${jobId}`);
    return job;
  }

  return {
    async create(tenantId: string, req: CreateJobRequest): Promise<Job> {
      const prepared = await prepareJob(tenantId, req, { db, pipelines: deps.pipelines, maxDocumentBytes: deps.maxDocumentBytes, allowLoopbackFetch: deps.allowLoopbackFetch });
      const earlier = await findByRequestId(db, tenantId, prepared);
      if (earlier) return reload(tenantId, earlier.id);
      return (await insert(tenantId, [prepared]))[0];
    },

    /** All or nothing: every request is checked before any job is written. */
    async createMany(tenantId: string, reqs: CreateJobRequest[]): Promise<Job[]> {
      const prepared: PreparedJob[] = [];
      // A batch usually names one pipeline a thousand times: look each one up once.
      const looked = new Map<string, Promise<Pipeline>>();
      const pipelines = {
        get(tenant: string, name: string, version: number) {
          const key = `${name}@${version}`;
          let pipeline = looked.get(key);
          if (!pipeline) looked.set(key, (pipeline = deps.pipelines.get(tenant, name, version)));
          return pipeline;
        },
      };
      for (const [i, req] of reqs.entries()) {
        try {
          prepared.push(await prepareJob(tenantId, req, { db, pipelines, maxDocumentBytes: deps.maxDocumentBytes, allowLoopbackFetch: deps.allowLoopbackFetch }));
        } catch (error) {
          if (error instanceof Error) error.message = `requests[${i}]: ${error.message}`;
          throw error;
        }
      }
      return insert(tenantId, prepared);
    },

    async get(tenantId: string, name: string): Promise<Job> {
      return reload(tenantId, idOrNotFound(name));
    },

    async list(tenantId: string, query: ListJobsQuery) {
      const page = await listJobs(db, deps.pageTokens, tenantId, query);
      const attempts = await selectAttempts(db, tenantId, page.rows.map((r) => r.id));
      return { jobs: page.rows.map((r) => toJob(r, attempts.get(r.id) ?? [])), nextPageToken: page.nextPageToken };
    },

    async cancel(tenantId: string, name: string): Promise<Job> {
      const jobId = idOrNotFound(name);
      // The row of a job whose running stage must be told, if any.
      const toSignal = await inTransaction(db, async (tx): Promise<JobRow | undefined> => {
        const row = await selectJob(tx, tenantId, jobId, true);
        if (!row) throw new JobNotFoundError(name);
        switch (row.state) {
          case JobState.QUEUED: {
            // The queued task stays on the stream; its claim finds the job cancelled and drops it.
            await applyChange(tx, topology, row, { state: JobState.CANCELLED, end_time: new Date() }, [{ type: JobEventType.JOB_CANCELLED }]);
            countFinished(JobState.CANCELLED);
            return undefined;
          }
          case JobState.RUNNING: {
            await applyChange(tx, topology, row, { state: JobState.CANCELLING }, [{ type: JobEventType.JOB_CANCELLING }]);
            return row;
          }
          case JobState.CANCELLING:
            return row;
          case JobState.CANCELLED:
            return undefined;
          default:
            throw new JobStateError(`job ${name} is ${JobState[row.state]} and cannot be cancelled`);
        }
      });
      if (toSignal) {
        // Two paths to the running stage: a message for an immediate abort, and a flag that the
        // worker's heartbeat reads in case the message is missed.
        await deps.redis.set(cancelKey(jobId), "1", "EX", 3600).catch(() => {});
        // The message names the running attempt, so a worker that claimed it a moment before
        // it registered the stage still recognises it (worker.ts).
        deps.nc.publish(topology.cancelSubject(jobId), `${toSignal.stage_index}:${toSignal.stage_attempt}`);
      }
      return reload(tenantId, jobId);
    },

    async retry(tenantId: string, name: string, fromStage: Stage): Promise<Job> {
      const jobId = idOrNotFound(name);
      const job = await inTransaction(db, async (tx) => {
        const row = await selectJob(tx, tenantId, jobId, true);
        if (!row) throw new JobNotFoundError(name);
        if (row.state !== JobState.FAILED && row.state !== JobState.CANCELLED) {
          throw new JobStateError(`job ${name} is ${JobState[row.state]}; only FAILED or CANCELLED jobs can be retried`);
        }
        const stages = configOf(row).stages;
        let index = Math.min(row.stage_index, stages.length - 1);
        if (fromStage !== Stage.UNSPECIFIED) {
          const wanted = stages.findIndex((s) => s.stage === fromStage);
          if (wanted < 0 || wanted > index) {
            throw new InvalidJobRequestError(`from_stage ${Stage[fromStage]} is not a stage of this job at or before ${Stage[stages[index].stage]}`, {
              violations: [{ field: "from_stage", description: "must be a stage of the job's pipeline at or before the failed stage" }],
            });
          }
          index = wanted;
        }
        const attempt = (await maxAttemptOf(tx, tenantId, jobId, index)) + 1;
        const patch = { state: JobState.QUEUED, stage_index: index, stage_attempt: attempt, stage_attempt_base: attempt, error: null, end_time: null };
        await applyChange(tx, topology, row, patch, [{ type: JobEventType.JOB_RETRIED, stageIndex: index, attempt }], { stageIndex: index, attempt });
        return (await loadJob(tx, tenantId, jobId))!;
      });
      await deps.redis.del(cancelKey(jobId)).catch(() => {});
      return job;
    },

    async delete(tenantId: string, name: string, etag: string): Promise<void> {
      const jobId = idOrNotFound(name);
      const objects = await inTransaction(db, async (tx) => {
        const row = await selectJob(tx, tenantId, jobId, true);
        if (!row) throw new JobNotFoundError(name);
        if (!isTerminal(row.state)) throw new JobStateError(`job ${name} is ${JobState[row.state]}; cancel it before deleting it`);
        if (etag && etag !== etagOf(row)) throw new StaleJobEtagError(name);
        const result = await tx.query<{ object_key: string | null }>("SELECT object_key FROM job_results WHERE tenant_id = $1 AND job_id = $2", [tenantId, jobId]);
        // A large original that ingest kept in the uploads bucket (run-stage.ts).
        const original = await tx.query<{ key: string | null }>(
          "SELECT output->>'originalKey' AS key FROM stage_outputs WHERE tenant_id = $1 AND job_id = $2 AND stage = $3",
          [tenantId, jobId, Stage.INGEST],
        );
        await tx.query("DELETE FROM jobs WHERE tenant_id = $1 AND id = $2", [tenantId, jobId]);
        let upload: string | null = null;
        if (row.source_upload) {
          const others = await tx.query("SELECT 1 FROM jobs WHERE tenant_id = $1 AND source_upload = $2 LIMIT 1", [tenantId, row.source_upload]);
          if (others.rowCount === 0) {
            await tx.query("DELETE FROM uploads WHERE tenant_id = $1 AND id = $2", [tenantId, row.source_upload]);
            upload = row.source_upload;
          }
        }
        return { result: result.rows[0]?.object_key ?? null, upload, original: original.rows[0]?.key ?? null };
      });
      if (objects.result) await deps.buckets.results.delete(objects.result).catch(() => {});
      if (objects.upload) await deps.buckets.uploads.delete(objects.upload).catch(() => {});
      if (objects.original) await deps.buckets.uploads.delete(objects.original).catch(() => {});
    },

    /** The result: whole when stored inline, else its metadata and object reference. */
    async getResult(tenantId: string, name: string): Promise<JobResult> {
      const jobId = idOrNotFound(name);
      const job = await selectJob(db, tenantId, jobId);
      if (!job) throw new JobNotFoundError(name.replace(/\/result$/, ""));
      // NOT_FOUND until SUCCEEDED: the result does not exist yet (or never will), and a client
      // polling for it treats both the same way.
      if (job.state !== JobState.SUCCEEDED) throw new ResultNotFoundError(name, `the job is ${JobState[job.state]}; a result exists once it SUCCEEDED`);
      const row = await selectResult(db, tenantId, jobId);
      if (!row) throw new ResultNotFoundError(name);
      const doc = row.inline_json ? (JSON.parse(row.inline_json.toString("utf8")) as JobResultDocument) : undefined;
      return toJobResult(name, row, topology.resultsBucket, doc);
    },
  };
}

export type JobDomain = ReturnType<typeof createJobDomain>;
