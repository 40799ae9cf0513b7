/**
 * The jobmesh CLI.
 *   jobmesh up       run the whole mesh on this machine (what `npm start` does)
 *   jobmesh status   ask every service of a running mesh (.jobmesh/mesh.json) whether it is ready
 *   jobmesh audit verify <export.ndjson> [--key <key_id>]
 *                    check an audit export offline (the chain and its signed checkpoints)
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { MeshDescription } from "../../internal/mesh/up.ts";

const usage = "usage: jobmesh <up|status|audit verify <export>>";
const command = process.argv[2];
// The offline verifier needs nothing but its file: no configuration, no environment, and not
// the seconds it takes to load the whole mesh (hence the imports below are dynamic).
if (command === "audit") {
  const { auditCommand } = await import("../../internal/audit/offline-verify.ts");
  process.exit(await auditCommand(process.argv.slice(3), { stdout: (l) => console.log(l), stderr: (l) => console.error(l) }));
}
const { loadConfigOrExit, runUntilSignal } = await import("../../internal/mesh/lifecycle.ts");
const { meshUp } = await import("../../internal/mesh/up.ts");
const { createLogger, startTelemetry } = await import("../../internal/telemetry/index.ts");
const config = loadConfigOrExit();

if (command === "up") {
  const log = createLogger({ name: "jobmesh", level: config.logLevel });
  const telemetry = startTelemetry({ serviceName: "jobmesh", otlpEndpoint: config.otlpEndpoint });
  await runUntilSignal(log, async () => {
    const mesh = await meshUp(config, log, telemetry);
    const d = mesh.description;
    const lines = [
      "",
      "jobmesh is up.",
      ...Object.entries(d.services).map(([name, url]) =>
        name === "gateway"
          ? `  ${name.padEnd(10)} ${url}   (REST/JSON, SSE; OpenAPI ${url}/openapi.json, docs ${url}/docs)`
          : `  ${name.padEnd(10)} ${url}   (gRPC, Connect, gRPC-Web; /readyz /metrics)`),
      `  postgres   ${mesh.maskedDatabaseUrl}${d.startedLocally.includes("postgres") ? "  (started locally)" : ""}`,
      `  redis      ${d.redisUrl}${d.startedLocally.includes("redis") ? "  (started locally)" : ""}`,
      `  nats       ${d.natsUrl}${d.startedLocally.includes("nats") ? "  (started locally)" : ""}`,
      ...(d.notYetBuilt.length > 0 ? [`  not built yet: ${d.notYetBuilt.join(", ")}`] : []),
      `  authentication: ${d.authentication}`,
      `  trusted proxies: ${d.trustedProxies.join(", ") || "none"}   (their x-forwarded-for names the client; JOBMESH_TRUSTED_PROXIES)`,
      mesh.generatedAdminPassword
        ? `  admin: ${d.admin.email}  password: ${mesh.generatedAdminPassword}   (generated; shown this once — change it with AuthService/ChangePassword)`
        : `  admin: ${d.admin.email}  (${d.admin.created ? "password from JOBMESH_ADMIN_PASSWORD" : "exists already; its password is unchanged"})`,
      `  log in: curl -s ${d.services.gateway}/v1/auth:login -d '{"email":"${d.admin.email}","password":"..."}'`,
      `  then:   curl -s ${d.services.gateway}/v1/pipelines -H "authorization: Bearer <accessToken>"`,
      `  or gRPC: grpcurl -plaintext -H "authorization: Bearer <accessToken>" ${new URL(d.services.pipelines).host} list`,
      `  written: ${mesh.meshFile}`,
      "Ctrl-C stops everything.",
      "",
    ];
    console.log(lines.join("\n"));
    return async () => {
      await mesh.stop();
      await telemetry.shutdown();
    };
  });
} else if (command === "status") {
  const mesh = JSON.parse(await readFile(join(config.dataDir, "mesh.json"), "utf8")) as MeshDescription;
  let allReady = true;
  for (const [name, url] of Object.entries(mesh.services)) {
    const ready = await fetch(new URL("/readyz", url)).then((r) => r.json(), (e: unknown) => ({ ready: false, error: String(e) }));
    allReady &&= ready.ready === true;
    console.log(`${name.padEnd(10)} ${url}  ${JSON.stringify(ready)}`);
  }
  process.exit(allReady ? 0 : 1);
} else {
  console.error(usage);
  process.exit(2);
}
