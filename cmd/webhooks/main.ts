/** WebhookService and the webhook delivery engine as their own process: config → dependencies → serve → drain on SIGTERM. */
import { createInfra } from "../../internal/mesh/infra.ts";
import { loadConfigOrExit, runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { serveWebhooks } from "../../internal/mesh/servers.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

const config = loadConfigOrExit();
const log = createLogger({ name: "webhooks", level: config.logLevel });
const telemetry = startTelemetry({ serviceName: "jobmesh-webhooks", otlpEndpoint: config.otlpEndpoint });
await runUntilSignal(log, async () => {
  const infra = await createInfra(config, log, telemetry, "webhooks");
  const server = await serveWebhooks(infra);
  return async () => {
    // The server and the delivery engine stop first (attempts in flight are recorded), then the pools.
    await server.close();
    await infra.close();
    await telemetry.shutdown();
  };
});
