/** PipelineService as its own process: config → dependencies → serve → drain on SIGTERM. */
import { createInfra } from "../../internal/mesh/infra.ts";
import { servePipelines } from "../../internal/mesh/servers.ts";
import { loadConfigOrExit, runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

const config = loadConfigOrExit();
const log = createLogger({ name: "pipelines", level: config.logLevel });
const telemetry = startTelemetry({ serviceName: "jobmesh-pipelines", otlpEndpoint: config.otlpEndpoint });
await runUntilSignal(log, async () => {
  const infra = await createInfra(config, log, telemetry, "pipelines");
  const server = await servePipelines(infra);
  return async () => {
    await server.close();
    await infra.close();
    await telemetry.shutdown();
  };
});
