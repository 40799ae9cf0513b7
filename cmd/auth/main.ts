/** AuthService as its own process: config → dependencies → first admin → serve → drain on SIGTERM. */
import { createInfra } from "../../internal/mesh/infra.ts";
import { loadConfigOrExit, runUntilSignal } from "../../internal/mesh/lifecycle.ts";
import { ensureBootstrapAdmin, serveAuth } from "../../internal/mesh/servers.ts";
import { createLogger, startTelemetry } from "../../internal/telemetry/index.ts";

const config = loadConfigOrExit();
const log = createLogger({ name: "auth", level: config.logLevel });
const telemetry = startTelemetry({ serviceName: "jobmesh-auth", otlpEndpoint: config.otlpEndpoint });
await runUntilSignal(log, async () => {
  const infra = await createInfra(config, log, telemetry, "auth");
  const admin = await ensureBootstrapAdmin(infra);
  if (admin.generatedPassword) {
    // Printed once, to the terminal only: the logs never carry it.
    console.log(`first admin created: ${admin.email} with password ${admin.generatedPassword} (shown once; change it with AuthService/ChangePassword)`);
  }
  const server = await serveAuth(infra);
  return async () => {
    await server.close();
    await infra.close();
    await telemetry.shutdown();
  };
});
