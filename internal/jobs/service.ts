/**
 * JobService handlers: read the caller's tenant, call the domain, shape the response.
 * Validation happened in the interceptor; domain errors are mapped to codes there too.
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  CancelJobResponseSchema,
  CreateJobResponseSchema,
  CreateJobsResponseSchema,
  DeleteJobResponseSchema,
  DownloadJobResultResponseSchema,
  GetJobResponseSchema,
  GetJobResultResponseSchema,
  JobService,
  ListJobsResponseSchema,
  RetryJobResponseSchema,
  UploadDocumentResponseSchema,
  WatchJobResponseSchema,
} from "../../gen/jobmesh/v1/jobs_pb.js";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { ObjectStore } from "@nats-io/obj";
import type { Pool } from "../db/index.ts";
import { callerOf } from "../rpc/context.ts";
import type { JobDomain } from "./jobs.ts";
import { downloadResult, uploadDocument } from "./transfer.ts";
import type { JobWatcher } from "./watch.ts";

export { JobService };

export interface JobServiceDeps {
  jobs: JobDomain;
  db: Pool;
  /** Serves every WatchJob stream of the process (one subscription per watched tenant). */
  watcher: JobWatcher;
  uploads: ObjectStore;
  /** Large results, streamed by DownloadJobResult. */
  results: ObjectStore;
  /** Pulls a large result's chunks as its download goes (transfer.ts). */
  js: JetStreamClient;
  maxDocumentBytes: number;
  /** Bytes a tenant may hold in uploads and results unless its tenants row says otherwise. */
  storageQuotaBytes: number;
}

export function createJobService(deps: JobServiceDeps): ServiceImpl<typeof JobService> {
  const { jobs } = deps;
  return {
    async createJob(req, ctx) {
      const job = await jobs.create(callerOf(ctx.values).tenantId, req);
      return create(CreateJobResponseSchema, { job });
    },
    async createJobs(req, ctx) {
      const created = await jobs.createMany(callerOf(ctx.values).tenantId, req.requests);
      return create(CreateJobsResponseSchema, { jobs: created });
    },
    async getJob(req, ctx) {
      return create(GetJobResponseSchema, { job: await jobs.get(callerOf(ctx.values).tenantId, req.name) });
    },
    async listJobs(req, ctx) {
      return create(ListJobsResponseSchema, await jobs.list(callerOf(ctx.values).tenantId, req));
    },
    async cancelJob(req, ctx) {
      return create(CancelJobResponseSchema, { job: await jobs.cancel(callerOf(ctx.values).tenantId, req.name) });
    },
    async retryJob(req, ctx) {
      return create(RetryJobResponseSchema, { job: await jobs.retry(callerOf(ctx.values).tenantId, req.name, req.fromStage) });
    },
    async deleteJob(req, ctx) {
      await jobs.delete(callerOf(ctx.values).tenantId, req.name, req.etag);
      return create(DeleteJobResponseSchema, {});
    },
    async getJobResult(req, ctx) {
      return create(GetJobResultResponseSchema, { result: await jobs.getResult(callerOf(ctx.values).tenantId, req.name) });
    },
    async *downloadJobResult(req, ctx) {
      for await (const chunk of downloadResult({ jobs, results: { bucket: deps.results, js: deps.js } }, callerOf(ctx.values).tenantId, req.name, req.format, req.offset)) {
        yield create(DownloadJobResultResponseSchema, chunk);
      }
    },
    async *watchJob(req, ctx) {
      const events = deps.watcher.watch(callerOf(ctx.values), req.name, req.afterSequence, ctx.signal);
      for await (const event of events) yield create(WatchJobResponseSchema, { event });
    },
    async uploadDocument(req, ctx) {
      const upload = await uploadDocument({ db: deps.db, uploads: deps.uploads, maxDocumentBytes: deps.maxDocumentBytes, storageQuotaBytes: deps.storageQuotaBytes }, callerOf(ctx.values).tenantId, req);
      return create(UploadDocumentResponseSchema, { upload });
    },
  };
}
