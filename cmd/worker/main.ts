/**
 * Stage workers as their own process: JOBMESH_WORKER_CONCURRENCY stage tasks at once, with
 * /metrics, /healthz and /readyz on JOBMESH_WORKER_METRICS_PORT. On SIGTERM it stops taking work
 * and lets running stages finish within the shutdown grace.
 */
import { createInfra } from "../../internal/mesh/infra.ts";
import { startWorkers } from "../../internal/mesh/servers.ts";
import { loadConfigOrExit, runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { startMetricsServer } from "../../internal/rpc/metrics-server.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

const config = loadConfigOrExit();
const log = createLogger({ name: "worker", level: config.logLevel });
const telemetry = startTelemetry({ serviceName: "jobmesh-worker", otlpEndpoint: config.otlpEndpoint });
await runUntilSignal(log, async () => {
  const infra = await createInfra(config, log, telemetry, "worker");
  // Before the worker: a port already taken stops start-up before any task is claimed.
  const metrics = await startMetricsServer({ name: "worker", host: config.host, port: config.ports.workerMetrics, log, telemetry, readiness: infra.readiness, server: config.server });
  const worker = await startWorkers(infra);
  log.info({ worker: worker.id, concurrency: config.workerConcurrency, stageThreads: config.stageThreads, stageHeapMb: config.stageHeapMb, metrics: metrics.url }, "worker started");
  return async () => {
    await worker.stop(config.shutdownGraceMs);
    // After the drain, so the last stages' metrics can still be scraped; before the pools go.
    await metrics.close();
    await infra.close();
    await telemetry.shutdown();
  };
});
