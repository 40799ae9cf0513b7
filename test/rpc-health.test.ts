// Health and readiness from the outside. The service here uses a private redis-server and a
// private nats-server started by this file, so they can be stopped and started again without
// touching the machine's shared servers: grpc.health.v1 Check/Watch and /readyz must follow
// them, /healthz must not, and /metrics must show the calls and the cache.
import t from "tap";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { createProcessGuard } from "../internal/devstack/process-guard.ts";
import { isNatsUp, isRedisUp, waitUntilUp } from "../internal/devstack/probe.ts";
import { freePort, spawnServer, type ServerProcess } from "../internal/devstack/server-process.ts";
import { startTestMesh } from "./support/mesh.ts";

const guard = createProcessGuard();
const dataDir = await mkdtemp(join(tmpdir(), "jobmesh-health-"));

/** A server binary on a fixed port that can be stopped and started again at the same URL. */
interface Restartable {
  url: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

async function restartable(command: string, scheme: string, args: (port: number) => string[], isUp: (url: string) => Promise<boolean>): Promise<Restartable> {
  const port = await freePort();
  const url = `${scheme}://127.0.0.1:${port}`;
  let server: ServerProcess | undefined;
  const self: Restartable = {
    url,
    async start() {
      server = await spawnServer(command, args(port), command, guard);
      await waitUntilUp(`${command} on ${port}`, () => isUp(url), 10_000, server.exited);
    },
    async stop() {
      await server?.stop();
      server = undefined;
    },
  };
  await self.start();
  return self;
}

const redis = await restartable("redis-server", "redis", (port) => ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dataDir], isRedisUp);
const nats = await restartable("nats-server", "nats", (port) => ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", join(dataDir, "nats")], isNatsUp);
// The warnings this file provokes on purpose (redis down, nats down) are kept here, not printed.
const logLines: string[] = [];
const mesh = await startTestMesh({ REDIS_URL: redis.url, NATS_URL: nats.url }, { auth: true, logLevel: "warn", logDestination: { write: (line: string) => void logLines.push(line) } });
const url = mesh.pipelines.url;
// Health, /readyz, /healthz and /metrics are public; PipelineService calls sign in.
const client = createClient(PipelineService, createConnectTransport({ baseUrl: url, httpVersion: "1.1", interceptors: [await mesh.auth!.interceptorFor("admin")] }));

// The standard health client, from grpc-health-check's own proto (not our generated code).
const healthDefinition = protoLoader.loadSync("health/v1/health.proto", { includeDirs: ["node_modules/grpc-health-check/proto"], enums: String, defaults: true });
const HealthClient = (grpc.loadPackageDefinition(healthDefinition) as any).grpc.health.v1.Health;
const health = new HealthClient(url.replace(/^http:\/\//, ""), grpc.credentials.createInsecure()) as grpc.Client & Record<string, (...args: any[]) => any>;

t.teardown(async () => {
  health.close();
  await mesh.close();
  await Promise.all([redis.stop(), nats.stop()]);
  guard.close();
  await rm(dataDir, { recursive: true, force: true });
});

const check = (service: string): Promise<string> =>
  new Promise((resolve, reject) => health.Check({ service }, (err: Error | null, res: { status: string }) => (err ? reject(err) : resolve(res.status))));

/** A Watch stream that records every status it is sent. */
function watch(service: string) {
  const seen: string[] = [];
  const waiters: { status: string; resolve: () => void }[] = [];
  const call = health.Watch({ service }) as grpc.ClientReadableStream<{ status: string }>;
  call.on("data", ({ status }) => {
    seen.push(status);
    for (const w of waiters.filter((w) => w.status === status)) w.resolve();
  });
  call.on("error", () => {}); // cancelled at the end
  return {
    seen,
    /** Resolves when `status` arrives (now or already seen after `from`), or rejects after `ms`. */
    until(status: string, from: number, ms = 10_000): Promise<void> {
      if (seen.slice(from).includes(status)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${status} within ${ms} ms; saw ${seen.join(", ")}`)), ms);
        waiters.push({ status, resolve: () => (clearTimeout(timer), resolve()) });
      });
    },
    cancel: () => call.cancel(),
  };
}

async function readyz(): Promise<{ status: number; type: string | null; text: string; body: { ready: boolean; checks: Record<string, { ok: boolean; state: string }> } }> {
  const res = await fetch(`${url}/readyz`);
  const text = await res.text();
  return { status: res.status, type: res.headers.get("content-type"), text, body: JSON.parse(text) as never };
}

async function eventually<T>(what: string, probe: () => Promise<T>, ok: (value: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (ok(value)) return value;
    if (Date.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(value)} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

t.test("health - Check is SERVING for the server and for PipelineService once every dependency answers", async (t) => {
  await eventually("readyz", readyz, (r) => r.status === 200);
  t.equal(await check(""), "SERVING");
  t.equal(await check(PipelineService.typeName), "SERVING");
  await t.rejects(check("jobmesh.v1.NoSuchService"), { code: grpc.status.NOT_FOUND });
  const ready = await readyz();
  t.match(ready.type, /^application\/json/);
  t.same(Object.keys(ready.body.checks).sort(), ["nats", "postgres", "redis"]);
  t.ok(Object.values(ready.body.checks).every((c) => c.ok), "every dependency ok");
});

t.test("healthz - 200 JSON while the process is alive", async (t) => {
  const res = await fetch(`${url}/healthz`);
  t.equal(res.status, 200);
  t.match(res.headers.get("content-type"), /^application\/json/);
  t.same(await res.json(), { status: "ok" });
});

t.test("metrics - Prometheus text with RPC durations and cache hits and misses", async (t) => {
  const metric = (text: string, name: string, label: string) => {
    const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(label));
    return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : 0;
  };
  const scrape = async () => {
    const res = await fetch(`${url}/metrics`);
    t.equal(res.status, 200);
    t.match(res.headers.get("content-type"), /^text\/plain/);
    return res.text();
  };
  const before = await scrape();
  await client.createPipeline({ pipelineId: "metered", pipeline: { config: { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }] } } });
  // Create read the new pipeline through the cache (a miss) and stored it without waiting.
  const key = `pipeline:${mesh.infra.bootstrapTenantId}:metered:latest`;
  await eventually("cached", () => mesh.infra.cache.redis.exists(key), (n) => n === 1);
  await client.getPipeline({ name: "pipelines/metered" });
  const after = await scrape();

  t.match(after, /^# TYPE rpc_server_duration\S* histogram$/m, "the RPC duration histogram");
  t.match(after, /^rpc_server_duration\S*_bucket\{[^}]*rpc_method="GetPipeline"/m, "buckets per method");
  t.match(after, /^rpc_server_calls\S*\{[^}]*rpc_method="CreatePipeline"/m, "calls per method");
  const hits = (text: string) => metric(text, "cache_hits_total", 'cache="pipelines"');
  const misses = (text: string) => metric(text, "cache_misses_total", 'cache="pipelines"');
  t.equal(misses(after) - misses(before), 1, "create's read was a miss");
  t.equal(hits(after) - hits(before), 1, "the get was a hit");
});

t.test("readyz - goes unready when Redis stops, names it, and recovers when it returns", async (t) => {
  const watcher = watch(PipelineService.typeName);
  t.teardown(watcher.cancel);
  await watcher.until("SERVING", 0);
  const from = watcher.seen.length;

  await redis.stop();
  await watcher.until("NOT_SERVING", from);
  t.pass("Watch saw NOT_SERVING");
  t.equal(await check(""), "NOT_SERVING");
  const down = await readyz();
  t.equal(down.status, 503);
  t.match(down.type, /^application\/json/);
  t.equal(down.body.ready, false);
  t.equal(down.body.checks.redis.ok, false, "redis is named as failing");
  t.equal(down.body.checks.redis.state, "down");
  t.same(Object.keys(down.body.checks.redis).sort(), ["latencyMs", "ok", "state"], "and no error text: /readyz is public");
  t.notOk(down.text.includes(new URL(redis.url).port), "no port or host of a dependency in the answer");
  t.equal(down.body.checks.postgres.state, "ok");
  t.ok(logLines.some((l) => l.includes('"dependency":"redis"') && l.includes("dependency check failed")), "the detail is in the log");
  t.equal(down.body.checks.postgres.ok, true);
  t.equal(down.body.checks.nats.ok, true);
  t.equal((await fetch(`${url}/healthz`)).status, 200, "still alive");
  // Redis holds only a cache: calls fall through to Postgres without an error.
  t.equal((await client.getPipeline({ name: "pipelines/document-default" })).pipeline?.name, "pipelines/document-default");

  const back = watcher.seen.length;
  await redis.start();
  await watcher.until("SERVING", back, 15_000);
  t.pass("Watch saw SERVING again");
  t.equal((await readyz()).status, 200);
});

t.test("readyz - goes unready when NATS stops, names it, and recovers when it returns", async (t) => {
  const watcher = watch("");
  t.teardown(watcher.cancel);
  await watcher.until("SERVING", 0);
  const from = watcher.seen.length;

  await nats.stop();
  await watcher.until("NOT_SERVING", from);
  t.pass("Watch saw NOT_SERVING");
  t.equal(await check(PipelineService.typeName), "NOT_SERVING");
  const down = await readyz();
  t.equal(down.status, 503);
  t.equal(down.body.ready, false);
  t.equal(down.body.checks.nats.ok, false, "nats is named as failing");
  t.same(Object.keys(down.body.checks.nats).sort(), ["latencyMs", "ok", "state"], "and no error text");
  t.notOk(down.text.includes(new URL(nats.url).port), "no port or host of a dependency in the answer");
  t.equal(down.body.checks.redis.ok, true);
  t.equal(down.body.checks.postgres.ok, true);
  t.equal((await fetch(`${url}/healthz`)).status, 200, "still alive");

  const back = watcher.seen.length;
  await nats.start();
  await watcher.until("SERVING", back, 15_000);
  t.pass("Watch saw SERVING again");
  t.equal((await readyz()).status, 200);
});
