// `jobmesh up` (meshUp, as `npm start` runs it) against this machine's servers: the mesh.json it
// writes is its owner's alone and holds no password, and `jobmesh status` still finds the mesh
// with it.
import t from "tap";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { connectBus } from "../internal/bus/index.ts";
import { createTopology, removeTopology } from "../internal/bus/topology.ts";
import { meshUp, type MeshDescription } from "../internal/mesh/up.ts";
import { createLogger, startTelemetry } from "../internal/telemetry/index.ts";
import { isolate } from "./support/isolation.ts";

const dataDir = await mkdtemp(join(tmpdir(), "jobmesh-up-"));
const isolated = await isolate({ JOBMESH_DATA_DIR: dataDir });
// This Postgres trusts local connections, so any password is accepted: one that must not leak.
const password = "db-pass-that-must-not-leak";
const withPassword = new URL(isolated.databaseUrl);
withPassword.password = password;
const config = { ...isolated.config, databaseUrl: withPassword.href, explicitUrls: { ...isolated.config.explicitUrls, databaseUrl: withPassword.href } };
const log = createLogger({ name: "mesh-up-test", level: "warn" });
const telemetry = startTelemetry({ serviceName: "jobmesh-mesh-up-test" });
const meshFile = join(dataDir, "mesh.json");
// A mesh.json left by an older version, world-readable: the new one must not inherit its mode.
await writeFile(meshFile, "{}", { mode: 0o644 });
const mesh = await meshUp(config, log, telemetry);

t.teardown(async () => {
  await mesh.stop();
  const bus = await connectBus({ url: isolated.config.natsUrl, name: "mesh-up-test-cleanup", log });
  await removeTopology(createTopology(isolated.namespace), bus.jsm);
  await bus.close();
  await telemetry.shutdown();
  await isolated.drop();
  await rm(dataDir, { recursive: true, force: true });
});

t.test("mesh.json - readable by its owner only, with no database password", async (t) => {
  t.equal(mesh.meshFile, meshFile);
  t.equal((await stat(meshFile)).mode & 0o777, 0o600, "mode 0600");
  const text = await readFile(meshFile, "utf8");
  t.notOk(text.includes(password), "the password is not in it");
  const description = JSON.parse(text) as MeshDescription;
  t.equal(new URL(description.databaseUrl).password, "");
  t.equal(new URL(description.databaseUrl).pathname, withPassword.pathname, "it still names the database");
  t.equal(mesh.maskedDatabaseUrl, withPassword.href.replace(password, "***"), "the console line shows it masked");
  t.same(description.trustedProxies, ["127.0.0.2/32"], "when JOBMESH_TRUSTED_PROXIES is not set, only the gateway's source address is trusted, not loopback, where every local client is");
  // Where the server trusts local connections (as here and the Postgres `jobmesh up` starts with
  // its fixed development login), the URL alone still connects.
  const client = new pg.Client({ connectionString: description.databaseUrl });
  await client.connect();
  t.equal((await client.query<{ one: number }>("SELECT 1 AS one")).rows[0]?.one, 1);
  await client.end();
});

t.test("jobmesh status - finds every service through mesh.json and says they are ready", async (t) => {
  const run = promisify(execFile);
  const { stdout } = await run(process.execPath, [join(import.meta.dirname, "../cmd/jobmesh/main.ts"), "status"], {
    env: { ...process.env, ...isolated.env, JOBMESH_DATA_DIR: dataDir },
  });
  for (const name of ["gateway", "auth", "pipelines", "jobs"]) t.match(stdout, new RegExp(`^${name}\\s+http://127\\.0\\.0\\.1:\\d+\\s+\\{"ready":true`, "m"), `${name} is ready`);
});

t.test("gateway - npm start serves REST beside the services: log in and list pipelines with plain HTTP", async (t) => {
  const { description } = mesh;
  const gateway = description.services.gateway;
  t.match(gateway, /^http:\/\/127\.0\.0\.1:\d+$/, "mesh.json names the gateway");
  t.notOk(description.notYetBuilt.includes("gateway"));
  const login = await fetch(`${gateway}/v1/auth:login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: description.admin.email, password: mesh.generatedAdminPassword ?? isolated.config.auth.adminPassword }),
  });
  t.equal(login.status, 200, "the admin logs in through the gateway");
  const { accessToken } = (await login.json()) as { accessToken: string };
  const list = await fetch(`${gateway}/v1/pipelines`, { headers: { authorization: `Bearer ${accessToken}` } });
  t.equal(list.status, 200);
  const { pipelines } = (await list.json()) as { pipelines: { name: string }[] };
  t.ok(pipelines.some((p) => p.name === "pipelines/document-default"), "the bootstrap tenant's built-in pipeline is listed");
  const docs = await fetch(`${gateway}/openapi.json`);
  t.equal(docs.status, 200, "the OpenAPI document is served");
});
