/**
 * Stage workers as their own process: JOBMESH_WORKER_CONCURRENCY stage tasks at once. On
 * SIGTERM it stops taking work and lets running stages finish within the shutdown grace.
 */
import { createInfra } from "../../internal/mesh/infra.ts";
import { startWorkers } from "../../internal/mesh/servers.ts";
import { loadConfigOrExit, runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

const config = loadConfigOrExit();
const log = createLogger({ name: "worker", level: config.logLevel });
const telemetry = startTelemetry({ serviceName: "jobmesh-worker", otlpEndpoint: config.otlpEndpoint });
await runUntilSignal(log, async () => {
  const infra = await createInfra(config, log, telemetry, "worker");
  const worker = await startWorkers(infra);
  log.info({ worker: worker.id, concurrency: config.workerConcurrency }, "worker started");
  return async () => {
    await worker.stop(config.shutdownGraceMs);
    await infra.close();
    await telemetry.shutdown();
  };
});
