/**
 * How each service is served from the shared infrastructure. `cmd/<service>` serves one;
 * `jobmesh up` serves them all in one process.
 */
import { createPipelineDomain } from "../pipelines/pipelines.ts";
import { createPipelineService, PipelineService } from "../pipelines/service.ts";
import { createBootstrapTenantInterceptor } from "../rpc/bootstrap-tenant.ts";
import { bindService, startRpcServer, type RpcServer } from "../rpc/server.ts";
import { createJobDomain } from "../jobs/jobs.ts";
import { createOutboxRelay, type OutboxRelay } from "../jobs/relay.ts";
import { createReaper, type Reaper } from "../jobs/reaper.ts";
import { createJobService, JobService } from "../jobs/service.ts";
import { createTopology, openBuckets, provisionTopology, type Topology } from "../jobs/topology.ts";
import { startWorker, type Worker } from "../worker/worker.ts";
import type { Infra } from "./infra.ts";

export async function servePipelines(infra: Infra, port = infra.config.ports.pipelines): Promise<RpcServer> {
  const pipelines = createPipelineDomain({
    db: infra.db,
    cache: infra.cache,
    pageTokens: infra.pageTokens,
    validator: infra.validator,
    cacheTtlSeconds: infra.config.cacheTtlSeconds,
  });
  await pipelines.ensureBuiltIns(infra.bootstrapTenantId);
  return startRpcServer({
    name: "pipelines",
    host: infra.config.host,
    port,
    services: [bindService(PipelineService, createPipelineService(pipelines))],
    log: infra.log,
    telemetry: infra.telemetry,
    readiness: infra.readiness,
    identity: [createBootstrapTenantInterceptor(infra.bootstrapTenantId)],
    maxMessageBytes: infra.config.maxMessageBytes,
    shutdownGraceMs: infra.config.shutdownGraceMs,
  });
}

/** JobService with the processes' background parts: the outbox relay and the lease reaper. */
export interface JobsServer extends RpcServer {
  relay: OutboxRelay;
  reaper: Reaper;
  topology: Topology;
}

export interface ServeJobsOptions {
  /** Start the outbox relay (default true); tests turn it off to play a relay crash. */
  relay?: boolean;
}

export async function serveJobs(infra: Infra, port = infra.config.ports.jobs, options: ServeJobsOptions = {}): Promise<JobsServer> {
  const { config } = infra;
  const topology = createTopology(config.namespace);
  await provisionTopology(topology, infra.bus.jsm);
  const buckets = await openBuckets(topology, infra.bus.js);
  const pipelines = createPipelineDomain({
    db: infra.db,
    cache: infra.cache,
    pageTokens: infra.pageTokens,
    validator: infra.validator,
    cacheTtlSeconds: config.cacheTtlSeconds,
  });
  await pipelines.ensureBuiltIns(infra.bootstrapTenantId);
  const jobs = createJobDomain({
    db: infra.db,
    redis: infra.cache.redis,
    nc: infra.bus.nc,
    topology,
    buckets,
    pipelines,
    pageTokens: infra.pageTokens,
    log: infra.log,
    maxDocumentBytes: config.maxDocumentBytes,
    allowLoopbackFetch: config.allowLoopbackFetchForTests,
  });
  const relay: OutboxRelay = options.relay === false
    ? { publishBatch: () => Promise.resolve(0), stop: () => Promise.resolve() }
    : createOutboxRelay({ db: infra.db, js: infra.bus.js, log: infra.log, tracer: infra.telemetry.tracer });
  const reaper = createReaper({ db: infra.db, redis: infra.cache.redis, topology, buckets, log: infra.log, heartbeatTtlMs: config.heartbeatTtlMs });
  const server = await startRpcServer({
    name: "jobs",
    host: config.host,
    port,
    services: [bindService(JobService, createJobService({ jobs, db: infra.db, nc: infra.bus.nc, topology, uploads: buckets.uploads, maxDocumentBytes: config.maxDocumentBytes }))],
    log: infra.log,
    telemetry: infra.telemetry,
    readiness: infra.readiness,
    identity: [createBootstrapTenantInterceptor(infra.bootstrapTenantId)],
    maxMessageBytes: config.maxMessageBytes,
    shutdownGraceMs: config.shutdownGraceMs,
  });
  return {
    ...server,
    relay,
    reaper,
    topology,
    async close() {
      await server.close();
      await reaper.stop();
      await relay.stop();
    },
  };
}

export interface StartWorkersOptions {
  /** Stage tasks run at once; defaults to the configuration. */
  concurrency?: number;
  workerId?: string;
}

/** A stage worker on the shared infrastructure (`cmd/worker`, or in-process in `jobmesh up`). */
export async function startWorkers(infra: Infra, options: StartWorkersOptions = {}): Promise<Worker> {
  const { config } = infra;
  const topology = createTopology(config.namespace);
  await provisionTopology(topology, infra.bus.jsm);
  const buckets = await openBuckets(topology, infra.bus.js);
  return startWorker({
    db: infra.db,
    js: infra.bus.js,
    nc: infra.bus.nc,
    redis: infra.cache.redis,
    topology,
    buckets,
    log: infra.log,
    tracer: infra.telemetry.tracer,
    meter: infra.telemetry.meter,
    concurrency: options.concurrency ?? config.workerConcurrency,
    heartbeatTtlMs: config.heartbeatTtlMs,
    maxDocumentBytes: config.maxDocumentBytes,
    allowLoopbackFetch: config.allowLoopbackFetchForTests,
    resultRetentionSeconds: config.resultRetentionSeconds,
    workerId: options.workerId,
  });
}
