// The life of a service process, from the outside: `node cmd/pipelines/main.ts` started with
// the environment a deployment would give it. SIGTERM lets calls in flight finish and exits 0;
// a bad setting stops start-up with one line naming the variable; a method without an authz
// rule stops start-up (default deny).
import t from "tap";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import net from "node:net";
import { join } from "node:path";
import pg from "pg";
import { create, createFileRegistry, setExtension, type DescService } from "@bufbuild/protobuf";
import { file_google_protobuf_empty, FileDescriptorProtoSchema, MethodOptionsSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { file_google_api_annotations, http } from "../gen/google/api/annotations_pb.js";
import { HttpRuleSchema } from "../gen/google/api/http_pb.js";
import { AuditService } from "../gen/jobmesh/v1/audit_pb.js";
import { AuthService } from "../gen/jobmesh/v1/auth_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { authz, AuthzRuleSchema, file_jobmesh_v1_options } from "../gen/jobmesh/v1/options_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { WebhookService } from "../gen/jobmesh/v1/webhooks_pb.js";
import { loadConfig } from "../internal/config/index.ts";
import { freePort } from "../internal/devstack/server-process.ts";
import { createInfra } from "../internal/mesh/infra.ts";
import { serveAuth } from "../internal/mesh/servers.ts";
import { accessRulesOf, httpBindingsOfServices, MissingAuthzRuleError, MissingHttpRuleError } from "../internal/contract/index.ts";
import { startRpcServer } from "../internal/rpc/server.ts";
import { createLogger, startTelemetry } from "../internal/telemetry/index.ts";
import { createTestAuth } from "./support/auth.ts";
import { isolate, type Isolated } from "./support/isolation.ts";

const main = join(import.meta.dirname, "../cmd/pipelines/main.ts");

interface Started {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Runs the pipelines binary on this test's Node with exactly `env` (plus PATH). */
function startPipelines(env: Record<string, string>): Started {
  const child = spawn(process.execPath, [main], { env: { PATH: process.env.PATH ?? "", ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  const exited = once(child, "exit").then(([code]) => code as number | null);
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

async function until(what: string, ok: () => Promise<boolean>, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!(await ok().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what}: not after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * An admin's access token for a binary running in `isolated`: AuthService served in this
 * process on the same database. The binary verifies it with the JWKS it reads from Postgres,
 * so the token is good whether or not the binary enforces identity.
 */
async function signIn(isolated: Isolated): Promise<{ interceptor: Interceptor; close(): Promise<void> }> {
  const telemetry = startTelemetry({ serviceName: "lifecycle-auth" });
  const infra = await createInfra(isolated.config, createLogger({ name: "lifecycle-auth", level: "silent" }), telemetry, "lifecycle-auth");
  const server = await serveAuth(infra, 0);
  const close = async () => {
    await server.close();
    await infra.close();
    await telemetry.shutdown();
  };
  try {
    return { interceptor: await (await createTestAuth(infra, server)).interceptorFor("admin"), close };
  } catch (error) {
    await close();
    throw error;
  }
}

// Each failed start costs a process start: begin them all now, the tests below read the results.
const failedStarts = {
  // Everything else valid, so only the named variable can be the reason.
  badSettings: ([
    ["JOBMESH_PIPELINES_PORT", "abc"],
    ["DATABASE_URL", "mysql://x"],
  ] as const).map(([variable, value]) => [variable, value, startPipelines({ JOBMESH_LOG_LEVEL: "info", JOBMESH_PIPELINES_PORT: "0", [variable]: value })] as const),
  unreachableDatabase: startPipelines({ DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/jobmesh`, JOBMESH_PIPELINES_PORT: "0", JOBMESH_LOG_LEVEL: "silent" }),
};
t.teardown(() => {
  for (const proc of [...failedStarts.badSettings.map(([, , p]) => p), failedStarts.unreachableDatabase]) {
    if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill("SIGKILL");
  }
});

t.test("SIGTERM - calls in flight over gRPC and Connect complete, new calls are refused, the process exits 0", async (t) => {
  const port = await freePort();
  const isolated = await isolate({ JOBMESH_PIPELINES_PORT: String(port), JOBMESH_SHUTDOWN_GRACE_MS: "30000", JOBMESH_LOG_LEVEL: "info" });
  // Signed in before the binary starts: its migrations then find the database already migrated.
  const auth = await signIn(isolated);
  const proc = startPipelines(isolated.env);
  const lock = new pg.Client({ connectionString: isolated.databaseUrl });
  // Its own connection: inside the lock's transaction pg_stat_activity would be a frozen snapshot.
  const observer = new pg.Client({ connectionString: isolated.databaseUrl });
  const session = new Http2SessionManager(`http://127.0.0.1:${port}`);
  t.teardown(async () => {
    session.abort();
    if (proc.child.exitCode === null) proc.child.kill("SIGKILL");
    await lock.end().catch(() => {});
    await observer.end().catch(() => {});
    await auth.close();
    await isolated.drop();
  });

  const url = `http://127.0.0.1:${port}`;
  await until("ready", async () => (await fetch(`${url}/readyz`)).status === 200, 45_000);
  const interceptors = [auth.interceptor];
  const connect = createClient(PipelineService, createConnectTransport({ baseUrl: url, httpVersion: "1.1", interceptors }));
  const grpc = createClient(PipelineService, createGrpcTransport({ baseUrl: url, sessionManager: session, interceptors }));
  const config = { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }] };
  const a = (await connect.createPipeline({ pipelineId: "inflight-grpc", pipeline: { config } })).pipeline!;
  const b = (await grpc.createPipeline({ pipelineId: "inflight-connect", pipeline: { config } })).pipeline!;

  // Hold both pipeline rows: each update waits on its row lock, in flight, until we let go.
  await lock.connect();
  await observer.connect();
  await lock.query("BEGIN");
  await lock.query("SELECT 1 FROM pipelines WHERE pipeline_id = ANY($1) FOR UPDATE", [["inflight-grpc", "inflight-connect"]]);
  const updates = Promise.allSettled([
    grpc.updatePipeline({ pipeline: { name: a.name, etag: a.etag, description: "finished during drain" }, updateMask: { paths: ["description"] } }),
    connect.updatePipeline({ pipeline: { name: b.name, etag: b.etag, description: "finished during drain" }, updateMask: { paths: ["description"] } }),
  ]);
  await until("both updates wait on the lock", async () => {
    const { rows } = await observer.query(
      "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    );
    return rows[0].n === 2;
  }, 10_000);

  proc.child.kill("SIGTERM");
  await until("the port refuses new connections", async () => {
    try {
      await fetch(`${url}/healthz`);
      return false;
    } catch {
      return true;
    }
  }, 5_000);
  const refused = await connect.getPipeline({ name: a.name }).then(
    () => "ok",
    (e: unknown) => Code[ConnectError.from(e).code],
  );
  t.equal(refused, Code[Code.Unavailable], "a new call is UNAVAILABLE");
  t.equal(proc.child.exitCode, null, "still running while calls are in flight");

  await lock.query("COMMIT");
  const [viaGrpc, viaConnect] = await within(updates, 10_000, "in-flight calls");
  for (const [name, result] of [["gRPC", viaGrpc], ["Connect", viaConnect]] as const) {
    t.equal(result.status, "fulfilled", `the ${name} call completed`);
    if (result.status === "fulfilled") {
      t.equal(result.value.pipeline?.version, 2, `${name}: the update was committed`);
      t.equal(result.value.pipeline?.description, "finished during drain");
    } else {
      t.comment(String(result.reason));
    }
  }
  t.equal(await within(proc.exited, 15_000, "exit"), 0, "exit code 0");
  t.match(proc.stdout(), /"inFlight":2[,}].*"msg":"draining in-flight calls"/, "the drain was logged with both calls");
  t.equal(proc.stderr().trim(), "", "nothing on stderr");

  // The committed versions are really there.
  const { rows } = await observer.query("SELECT pipeline_id, current_version FROM pipelines WHERE pipeline_id LIKE 'inflight-%' ORDER BY 1");
  t.same(rows, [
    { pipeline_id: "inflight-connect", current_version: 2 },
    { pipeline_id: "inflight-grpc", current_version: 2 },
  ]);
});

t.test("start - a bad setting exits 1 with one stderr line naming the variable", async (t) => {
  for (const [variable, value, proc] of failedStarts.badSettings) {
    const code = await within(proc.exited, 30_000, `${variable}=${value}`);
    const lines = proc.stderr().split("\n").filter((l) => l.trim() !== "");
    t.equal(code, 1, `${variable}=${value} exits 1`);
    t.equal(lines.length, 1, `one line: ${JSON.stringify(proc.stderr())}`);
    t.match(lines[0], variable, "it names the variable");
    t.equal(proc.stdout(), "", "nothing started, nothing logged");
  }
});

t.test("config - every kind of bad value is a ConfigError naming its variable", async (t) => {
  const cases: [string, string][] = [
    ["JOBMESH_PIPELINES_PORT", "70000"],
    ["JOBMESH_JOBS_PORT", "-1"],
    ["DATABASE_URL", "not a url"],
    ["REDIS_URL", "http://127.0.0.1:6379"],
    ["NATS_URL", "redis://127.0.0.1:4222"],
    ["JOBMESH_LOG_LEVEL", "loud"],
    ["JOBMESH_MAX_MESSAGE_BYTES", "12"],
    ["JOBMESH_SHUTDOWN_GRACE_MS", "soon"],
    ["JOBMESH_NAMESPACE", "Has Spaces"],
    ["JOBMESH_HOST", "a host"],
    ["JOBMESH_TRUSTED_PROXIES", "10.0.0.0/33"],
    ["JOBMESH_MAX_CONCURRENT_STREAMS", "0"],
    ["JOBMESH_IDLE_TIMEOUT_MS", "soon"],
    ["JOBMESH_HEADERS_TIMEOUT_MS", "-5"],
    ["JOBMESH_LOGIN_MAX_FAILURES_PER_IP", "0"],
    ["JOBMESH_LOGIN_MAX_ATTEMPTS_PER_IP", "100"],
  ];
  for (const [variable, value] of cases) {
    t.throws(() => loadConfig({ [variable]: value }), { name: "ConfigError", variable, message: new RegExp(`^invalid configuration: ${variable} `) }, `${variable}=${value}`);
  }
  t.doesNotThrow(() => loadConfig({}), "the defaults are valid");
});

t.test("start - a database that does not answer exits 1 with one stderr line", async (t) => {
  const proc = failedStarts.unreachableDatabase;
  t.equal(await within(proc.exited, 30_000, "exit"), 1);
  const lines = proc.stderr().split("\n").filter((l) => l.trim() !== "");
  t.equal(lines.length, 1, `one line: ${JSON.stringify(proc.stderr())}`);
  t.match(lines[0], /^start-up failed: /);
});

// ---- default deny -------------------------------------------------------------------------------

/**
 * A service whose methods carry the given authz rules (undefined: no option at all), and an http
 * rule each unless named in `withoutHttp`.
 */
function serviceWith(rules: Record<string, { permission?: string; public?: boolean } | undefined>, withoutHttp: string[] = []) {
  const method = Object.entries(rules).map(([name, rule]) => {
    const options = create(MethodOptionsSchema);
    if (rule) setExtension(options, authz, create(AuthzRuleSchema, rule));
    if (!withoutHttp.includes(name)) setExtension(options, http, create(HttpRuleSchema, { pattern: { case: "post", value: `/v1/things:${name}` }, body: "*" }));
    return { name, inputType: ".google.protobuf.Empty", outputType: ".google.protobuf.Empty", options };
  });
  const file = create(FileDescriptorProtoSchema, {
    name: "lifecycle/v1/guarded.proto",
    package: "lifecycle.v1",
    syntax: "proto3",
    dependency: ["google/protobuf/empty.proto", "jobmesh/v1/options.proto", "google/api/annotations.proto"],
    service: [{ name: "GuardedService", method }],
  });
  const deps = new Map([
    ["google/protobuf/empty.proto", file_google_protobuf_empty],
    ["jobmesh/v1/options.proto", file_jobmesh_v1_options],
    ["google/api/annotations.proto", file_google_api_annotations],
  ]);
  const service = createFileRegistry(file, (name) => deps.get(name)).getService("lifecycle.v1.GuardedService");
  if (!service) throw new Error("the test descriptor did not link");
  return service;
}

/** Starts a server of `service` on a free port, as a binary would (the promise may reject: that is the point). */
async function startGuarded(t: { teardown(fn: () => unknown): void }, service: DescService) {
  const port = await freePort();
  const telemetry = startTelemetry({ serviceName: "lifecycle-test" });
  t.teardown(() => telemetry.shutdown());
  const starting = startRpcServer({
    name: "guarded",
    host: "127.0.0.1",
    port,
    services: [{ service, register: () => {} }],
    log: createLogger({ name: "lifecycle-test", level: "silent" }),
    telemetry,
    readiness: {},
    interceptors: { identity: [] },
    maxMessageBytes: 1 << 20,
    shutdownGraceMs: 0,
    server: loadConfig({}).server,
  });
  return { starting, port };
}

/** True when a connection to the port is refused. */
function nothingListensOn(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => (socket.destroy(), resolve(false)));
    socket.once("error", () => resolve(true));
  });
}

t.test("authz - every RPC of every contract has a rule", async (t) => {
  const services = [PipelineService, JobService, AuthService, AuditService, WebhookService];
  const rules = accessRulesOf(services);
  t.equal(rules.size, services.reduce((n, s) => n + s.methods.length, 0));
  t.same(rules.get("/jobmesh.v1.PipelineService/CreatePipeline"), { kind: "permission", permission: "pipelines.create" });
});

t.test("authz - a method without a rule, or with a contradictory one, is refused by name", async (t) => {
  const ok = serviceWith({ Read: { permission: "things.get" }, Ping: { public: true } });
  t.same([...accessRulesOf([ok]).values()], [{ kind: "permission", permission: "things.get" }, { kind: "public" }]);

  const bad: [string, Record<string, { permission?: string; public?: boolean } | undefined>][] = [
    ["no option", { Read: { permission: "things.get" }, Forgotten: undefined }],
    ["both public and a permission", { Forgotten: { public: true, permission: "things.get" } }],
    ["a malformed permission", { Forgotten: { permission: "Things" } }],
    ["an empty rule", { Forgotten: {} }],
  ];
  for (const [what, rules] of bad) {
    t.throws(() => accessRulesOf([serviceWith(rules)]), { name: "MissingAuthzRuleError", message: /lifecycle\.v1\.GuardedService\.Forgotten/ }, what);
  }
});

t.test("authz - startRpcServer refuses to start, and never listens, when a method has no rule", async (t) => {
  const service = serviceWith({ Read: { permission: "things.get" }, Forgotten: undefined });
  const { starting, port } = await startGuarded(t, service);
  await t.rejects(starting, MissingAuthzRuleError);
  await t.rejects(starting, { message: /lifecycle\.v1\.GuardedService\.Forgotten: no authz option/ });
  t.ok(await nothingListensOn(port), "nothing listens on the port");
});

t.test("http rules - every RPC of every contract is reachable over REST", async (t) => {
  const services = [PipelineService, JobService, AuthService, AuditService, WebhookService];
  const bindings = httpBindingsOfServices(services);
  t.equal(new Set(bindings.map((b) => b.method)).size, services.reduce((n, s) => n + s.methods.length, 0));
  const cancel = bindings.find((b) => b.method.name === "CancelJob");
  t.match(cancel, { verb: "POST", path: "/v1/{name=jobs/*}:cancel", body: "*", responseBody: "" });
});

t.test("http rules - startRpcServer refuses to start, and never listens, when a method has no http rule", async (t) => {
  const service = serviceWith({ Read: { permission: "things.get" }, Unrouted: { permission: "things.get" } }, ["Unrouted"]);
  const { starting, port } = await startGuarded(t, service);
  await t.rejects(starting, MissingHttpRuleError);
  await t.rejects(starting, { message: /lifecycle\.v1\.GuardedService\.Unrouted: no google\.api\.http option/ });
  t.ok(await nothingListensOn(port), "nothing listens on the port");
});
