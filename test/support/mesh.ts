/**
 * Starts jobmesh services in the test process, against real Postgres, NATS and Redis, in an
 * isolated database and namespace.
 */
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { createInfra, type Infra } from "../../internal/mesh/infra.ts";
import { removeTopology } from "../../internal/jobs/topology.ts";
import { serveJobs, servePipelines, startWorkers, type JobsServer } from "../../internal/mesh/servers.ts";
import type { Worker } from "../../internal/worker/worker.ts";
import type { RpcServer } from "../../internal/rpc/server.ts";
import { createLogger, startTelemetry, type Telemetry } from "../../internal/telemetry/index.ts";
import { isolate, type Isolated } from "./isolation.ts";

export interface TestMesh {
  isolated: Isolated;
  infra: Infra;
  pipelines: RpcServer;
  spans: InMemorySpanExporter;
  telemetry: Telemetry;
  /** Set with `{ jobs: true }`. */
  jobs?: JobsServer;
  /** In-process stage workers, set with `{ jobs: true }` unless `workers: 0`. */
  workers: Worker[];
  close(): Promise<void>;
}

export interface TestMeshOptions {
  /** Also serve JobService (with its relay and reaper) and start stage workers. */
  jobs?: boolean;
  /** In-process worker instances to start with jobs (default 1); 0 for none. */
  workers?: number;
  /** Start the outbox relay with JobService (default true). */
  relay?: boolean;
}

export async function startTestMesh(overrides: Record<string, string> = {}, options: TestMeshOptions = {}): Promise<TestMesh> {
  const isolated = await isolate(overrides);
  const spans = new InMemorySpanExporter();
  const telemetry = startTelemetry({ serviceName: "jobmesh-test", spanProcessors: [new SimpleSpanProcessor({ exporter: spans })] });
  const log = createLogger({ name: "test", level: isolated.config.logLevel });
  const infra = await createInfra(isolated.config, log, telemetry, "test");
  const pipelines = await servePipelines(infra, 0);
  const jobs = options.jobs ? await serveJobs(infra, 0, { relay: options.relay }) : undefined;
  const workers: Worker[] = [];
  for (let i = 0; options.jobs && i < (options.workers ?? 1); i++) workers.push(await startWorkers(infra));
  return {
    isolated,
    infra,
    pipelines,
    spans,
    telemetry,
    jobs,
    workers,
    async close() {
      await Promise.all(workers.map((w) => w.stop(1000)));
      await jobs?.close();
      if (jobs) await removeTopology(jobs.topology, infra.bus.jsm);
      await pipelines.close();
      await infra.cache.redis.eval("for _, k in ipairs(redis.call('keys', ARGV[1])) do redis.call('del', k) end", 0, `${isolated.namespace}:*`).catch(() => {});
      await infra.close();
      await telemetry.shutdown();
      await isolated.drop();
    },
  };
}
