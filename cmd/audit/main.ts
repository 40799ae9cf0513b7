/** AuditService and the audit store as their own process: config → dependencies → serve → drain on SIGTERM. */
import { createInfra } from "../../internal/mesh/infra.ts";
import { loadConfigOrExit, runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { serveAudit } from "../../internal/mesh/servers.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

const config = loadConfigOrExit();
const log = createLogger({ name: "audit", level: config.logLevel });
const telemetry = startTelemetry({ serviceName: "jobmesh-audit", otlpEndpoint: config.otlpEndpoint });
await runUntilSignal(log, async () => {
  const infra = await createInfra(config, log, telemetry, "audit");
  const server = await serveAudit(infra);
  return async () => {
    // The server and the store stop first (the store's last batch is committed), then the pools.
    await server.close();
    await infra.close();
    await telemetry.shutdown();
  };
});
