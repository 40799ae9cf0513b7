/**
 * Stage workers as their own process: JOBMESH_WORKER_CONCURRENCY stage tasks at once. On
 * SIGTERM it stops taking work and lets running stages finish within the shutdown grace.
 */
import { ConfigError, loadConfig } from "../../internal/config/index.ts";
import { createInfra } from "../../internal/mesh/infra.ts";
import { startWorkers } from "../../internal/mesh/servers.ts";
import { runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

let config;
try {
  config = loadConfig();
} catch (error) {
  console.error(error instanceof ConfigError ? error.message : String(error));
  process.exit(1);
}
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
