/** JobService as its own process, with the outbox relay and the lease reaper. */
import { createInfra } from "../../internal/mesh/infra.ts";
import { serveJobs } from "../../internal/mesh/servers.ts";
import { loadConfigOrExit, runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

const config = loadConfigOrExit();
const log = createLogger({ name: "jobs", level: config.logLevel });
const telemetry = startTelemetry({ serviceName: "jobmesh-jobs", otlpEndpoint: config.otlpEndpoint });
await runUntilSignal(log, async () => {
  const infra = await createInfra(config, log, telemetry, "jobs");
  const server = await serveJobs(infra);
  log.info({ url: server.url }, "jobs serving");
  return async () => {
    await server.close();
    await infra.close();
    await telemetry.shutdown();
  };
});
