/**
 * The scale entry's process rows: the binaries as a deployment runs them, each its own process
 * (`node cmd/<name>/main.ts`) on its own port, together in one fresh database and namespace.
 *
 * RSS: VmRSS of each process once start-up has settled, then its peak (VmHWM, the kernel's
 * high-water mark of the resident set) after a throughput run of [ingest, output] jobs submitted
 * through the jobs process and run by the worker process.
 *
 * Worker processes: document-default jobs/s with one `cmd/worker` process and with two, same N,
 * each set of workers fresh and warmed up with a small batch first; every job must SUCCEED.
 */
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import pg from "pg";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { AuthService } from "../gen/jobmesh/v1/auth_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { createTopology, removeTopology } from "../internal/bus/topology.ts";
import { isolate, natsUrl, redisUrl } from "../test/support/isolation.ts";
import { startWorkerProcess } from "../test/support/worker-process.ts";
import type { BenchContext } from "./harness.ts";
import { documentText } from "./jobs-peers.ts";

const repoRoot = join(import.meta.dirname, "..");
const twoStagePipeline = "pipelines/bench-ingest-output";
const defaultPipeline = "pipelines/document-default";
const adminEmail = "admin@scale.example.com";
const adminPassword = "scale-bench-password-not-a-secret";
const doneTimeoutMs = 300_000;

export interface ProcessRss {
  name: string;
  idleBytes: number;
  /** The idle RSS split: anonymous memory (heaps, stacks) and mapped files (the node binary, libraries). */
  idleAnonBytes: number;
  idleFileBytes: number;
  /** VmHWM once idle: the most it held resident during start-up (migrations, provisioning, imports). */
  startupPeakBytes: number;
  /** The largest VmRSS sampled (every 100 ms) during the throughput run. */
  loadPeakBytes: number;
  /** VmHWM after the throughput run: the most the process ever held resident. */
  peakBytes: number;
}

export interface WorkerRun {
  workers: number;
  jobs: number;
  seconds: number;
  succeeded: number;
  /** Per round, the stage attempts each worker process ran. */
  attemptsByWorker: number[][];
}

export interface ProcessResults {
  rss: ProcessRss[];
  throughput: { jobs: number; seconds: number; succeeded: number };
  /** Pooled per number of worker processes (1, 2). */
  workerRuns: Map<number, WorkerRun>;
}

interface Service {
  name: string;
  child: ChildProcess;
  /** Where /readyz answers. */
  url: string;
}

export async function measureProcesses(ctx: BenchContext, sizes: { throughputJobs: number; scalingJobs: number; rounds: number; settleMs: number }): Promise<ProcessResults> {
  const dataDir = await mkdtemp(join(tmpdir(), "jobmesh-scale-"));
  const ports = { auth: await freePort(), pipelines: await freePort(), jobs: await freePort() };
  const isolated = await isolate({
    JOBMESH_LOG_LEVEL: "warn",
    JOBMESH_DATA_DIR: dataDir,
    // Shared by every process: the auth process seals its signing key with it.
    JOBMESH_KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
    JOBMESH_ADMIN_EMAIL: adminEmail,
    JOBMESH_ADMIN_PASSWORD: adminPassword,
    JOBMESH_AUTH_PORT: String(ports.auth),
    JOBMESH_PIPELINES_PORT: String(ports.pipelines),
    JOBMESH_JOBS_PORT: String(ports.jobs),
  });
  const teardowns: (() => unknown)[] = [];
  const db = new pg.Pool({ connectionString: isolated.databaseUrl, max: 2 });
  try {
    // One at a time: each migrates the fresh database and provisions the namespace on start-up.
    const services: Service[] = [];
    for (const name of ["auth", "pipelines", "jobs"] as const) {
      ctx.progress(`scale: starting cmd/${name}`);
      const child = spawn(process.execPath, [join(repoRoot, "cmd", name, "main.ts")], { env: { ...process.env, ...isolated.env }, stdio: ["ignore", "ignore", "inherit"] });
      teardowns.unshift(() => stopProcess(child));
      const service = { name: `cmd/${name}`, child, url: `http://127.0.0.1:${ports[name]}` };
      await untilReady(service);
      services.push(service);
    }
    ctx.progress("scale: starting cmd/worker");
    const startWorker = async () => {
      const port = await freePort();
      const child = startWorkerProcess({ teardown: (fn) => teardowns.unshift(fn) }, { ...isolated.env, JOBMESH_WORKER_METRICS_PORT: String(port) });
      const service = { name: "cmd/worker", child, url: `http://127.0.0.1:${port}` };
      await untilReady(service);
      return service;
    };
    const worker = await startWorker();
    services.push(worker);

    ctx.progress(`scale: letting start-up settle for ${sizes.settleMs / 1000} s, then reading each process's idle RSS`);
    await sleep(sizes.settleMs);
    const idle = await Promise.all(services.map((s) => statusOf(s.child.pid!)));

    const api = await signIn(ports);
    teardowns.unshift(() => api.close());
    await api.pipelines.createPipeline({
      pipelineId: twoStagePipeline.slice("pipelines/".length),
      pipeline: { displayName: "scale bench", config: { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }] } },
    });
    const tenantId = (await db.query<{ id: string }>("SELECT id FROM tenants LIMIT 1")).rows[0].id;
    const batch = async (pipeline: string, n: number) => {
      const started = Date.now();
      const ids = await submit(api.jobs, pipeline, n);
      return { started, ...(await untilDone(db, tenantId, ids)) };
    };

    ctx.progress(`scale: throughput run, ${sizes.throughputJobs} [ingest, output] jobs through cmd/jobs and cmd/worker`);
    const sampler = sampleRss(services.map((s) => s.child.pid!));
    let run: Awaited<ReturnType<typeof batch>>;
    let loadPeaks: number[];
    try {
      run = await batch(twoStagePipeline, sizes.throughputJobs);
    } finally {
      loadPeaks = await sampler.stop();
    }
    const peaks = await Promise.all(services.map((s) => statusOf(s.child.pid!)));
    const rss = services.map((s, i) => ({
      name: s.name,
      idleBytes: idle[i].rss,
      idleAnonBytes: idle[i].anon,
      idleFileBytes: idle[i].file,
      startupPeakBytes: idle[i].hwm,
      loadPeakBytes: loadPeaks[i],
      peakBytes: peaks[i].hwm,
    }));
    const throughput = { jobs: sizes.throughputJobs, seconds: (run.lastEnd - run.started) / 1000, succeeded: run.succeeded };

    await stopProcess(worker.child);
    const workerRuns = new Map<number, WorkerRun>();
    for (let round = 0; round < sizes.rounds; round++) {
      for (const count of round % 2 === 0 ? [1, 2] : [2, 1]) {
        ctx.progress(`scale: ${count} worker process(es), warm-up then ${sizes.scalingJobs} document-default jobs, round ${round + 1}/${sizes.rounds}`);
        const workers = [];
        for (let i = 0; i < count; i++) workers.push(await startWorker());
        await batch(defaultPipeline, 50);
        const measured = await batch(defaultPipeline, sizes.scalingJobs);
        const pooled = workerRuns.get(count) ?? { workers: count, jobs: 0, seconds: 0, succeeded: 0, attemptsByWorker: [] };
        pooled.jobs += sizes.scalingJobs;
        pooled.seconds += (measured.lastEnd - measured.started) / 1000;
        pooled.succeeded += measured.succeeded;
        pooled.attemptsByWorker.push(await attemptsByWorker(db, tenantId, measured.ids));
        workerRuns.set(count, pooled);
        for (const w of workers) await stopProcess(w.child);
      }
    }
    return { rss, throughput, workerRuns };
  } finally {
    for (const fn of teardowns) await fn();
    await db.end();
    await removeNamespace(isolated.namespace);
    await isolated.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

/** A port free right now on loopback (the process that gets it binds it a moment later). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Polls /readyz until 200; fails when the process exits first or after a minute. */
async function untilReady(service: Service): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (service.child.exitCode !== null || service.child.signalCode !== null) throw new Error(`scale: ${service.name} exited during start-up (${service.child.exitCode ?? service.child.signalCode})`);
    const ready = await fetch(`${service.url}/readyz`).then((r) => r.ok, () => false);
    if (ready) return;
    if (Date.now() > deadline) throw new Error(`scale: ${service.name} not ready after 60 s`);
    await sleep(100);
  }
}

/** SIGTERM, then SIGKILL if the drain takes longer than the shutdown grace and some. */
async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(timer);
}

/** VmRSS (and its anonymous and file-backed parts) and VmHWM of a process, in bytes. */
async function statusOf(pid: number): Promise<{ rss: number; anon: number; file: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
    if (!match) throw new Error(`/proc/${pid}/status has no ${field} line`);
    return Number(match[1]) * 1024;
  };
  return { rss: kib("VmRSS"), anon: kib("RssAnon"), file: kib("RssFile"), hwm: kib("VmHWM") };
}

/** Samples each process's VmRSS every 100 ms until stopped; stop() resolves with the largest of each. */
function sampleRss(pids: number[]): { stop(): Promise<number[]> } {
  const peaks = pids.map(() => 0);
  let stopped = false;
  const sampling = (async () => {
    while (!stopped) {
      // A process that exited has no status; the run fails on its own account.
      const now = await Promise.all(pids.map((pid) => statusOf(pid).catch(() => undefined)));
      now.forEach((s, i) => (peaks[i] = Math.max(peaks[i], s?.rss ?? 0)));
      await sleep(100);
    }
  })();
  return {
    async stop() {
      stopped = true;
      await sampling;
      return peaks;
    },
  };
}

/** Logs in as the bootstrap admin through cmd/auth; JobService and PipelineService clients with its token. */
async function signIn(ports: { auth: number; pipelines: number; jobs: number }) {
  const auth = createClient(AuthService, createConnectTransport({ baseUrl: `http://127.0.0.1:${ports.auth}`, httpVersion: "1.1" }));
  const { accessToken } = await auth.login({ email: adminEmail, password: adminPassword });
  const signedIn: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${accessToken}`);
    return next(req);
  };
  const sessions: Http2SessionManager[] = [];
  const transport = (port: number) => {
    const baseUrl = `http://127.0.0.1:${port}`;
    const sessionManager = new Http2SessionManager(baseUrl);
    sessions.push(sessionManager);
    return createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager, interceptors: [signedIn] });
  };
  return {
    jobs: createClient(JobService, transport(ports.jobs)),
    pipelines: createClient(PipelineService, transport(ports.pipelines)),
    close: () => sessions.forEach((s) => s.abort()),
  };
}

let serial = 0;

/** Submits `n` small text jobs in CreateJobs calls of up to 1000; their ids. */
async function submit(jobs: Client<typeof JobService>, pipeline: string, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i += 1000) {
    const requests = Array.from({ length: Math.min(1000, n - i) }, () => ({ job: { pipeline, document: { source: { case: "text" as const, value: documentText(serial++) } } } }));
    const { jobs: made } = await jobs.createJobs({ requests });
    ids.push(...made.map((j) => j.name.slice("jobs/".length)));
  }
  return ids;
}

/** Waits until every job is terminal; how many SUCCEEDED and when the last ended (ms since the epoch, Postgres clock). */
async function untilDone(db: pg.Pool, tenantId: string, ids: string[]): Promise<{ ids: string[]; succeeded: number; lastEnd: number }> {
  const deadline = Date.now() + doneTimeoutMs;
  for (;;) {
    const { rows: [r] } = await db.query<{ done: number; succeeded: number; last_end: Date | null }>(
      `SELECT count(*) FILTER (WHERE state IN ($3, $4, $5))::int AS done, count(*) FILTER (WHERE state = $3)::int AS succeeded, max(end_time) AS last_end
       FROM jobs WHERE tenant_id = $1 AND id = ANY($2::uuid[])`,
      [tenantId, ids, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED],
    );
    if (r.done === ids.length) return { ids, succeeded: r.succeeded, lastEnd: r.last_end!.getTime() };
    if (Date.now() > deadline) throw new Error(`scale: ${ids.length - r.done} of ${ids.length} jobs not finished after ${doneTimeoutMs / 1000} s`);
    await sleep(100);
  }
}

async function attemptsByWorker(db: pg.Pool, tenantId: string, ids: string[]): Promise<number[]> {
  const { rows } = await db.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM stage_attempts WHERE tenant_id = $1 AND job_id = ANY($2::uuid[]) GROUP BY worker_id ORDER BY n DESC",
    [tenantId, ids],
  );
  return rows.map((r) => r.n);
}

/** Removes the namespace's streams, buckets and consumers, and its Redis keys (what test/support/mesh.ts does at close). */
async function removeNamespace(namespace: string): Promise<void> {
  const nc = await connect({ servers: natsUrl });
  try {
    await removeTopology(createTopology(namespace), await jetstreamManager(nc));
  } finally {
    await nc.close();
  }
  const redis = new Redis(redisUrl);
  try {
    await redis.eval("for _, k in ipairs(redis.call('keys', ARGV[1])) do redis.call('del', k) end", 0, `${namespace}:*`);
  } finally {
    redis.disconnect();
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
