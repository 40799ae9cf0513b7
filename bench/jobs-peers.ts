/**
 * The peers the jobs entry measures jobmesh against, each as a Side that runs a batch of no-op
 * jobs: BullMQ on the machine's Redis, BullMQ on a Redis of the bench's own that fsyncs every
 * write, pg-boss and Graphile Worker each in a database of its own.
 */
import { Queue, Worker as BullWorker } from "bullmq";
import { Logger as GraphileLogger, makeWorkerUtils, run as runGraphileWorker } from "graphile-worker";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { PgBoss } from "pg-boss";
import { createDatabase } from "../test/support/isolation.ts";
import type { BenchContext } from "./harness.ts";

/** Stage tasks (jobmesh) or jobs (BullMQ, pg-boss, Graphile Worker) processed at once. */
export const concurrency = 32;
/** Longest wait for one batch; a stuck run fails the entry instead of hanging the bench. */
export const batchTimeoutMs = 120_000;

const sentence = "Invoice 2291 from Acme Corp to Example Ltd: 14 widgets at 3.50 EUR each, due on 1 March.";
/** The small text document every system gets (the peers carry it as job data). */
export const documentText = (i: number) => `${sentence} Line ${i}. ${sentence}`;

/** One system under test: runs a batch of `n` jobs and resolves when every one is done. */
export interface Side {
  name: string;
  work: string;
  runBatch(n: number): Promise<void>;
  close(): Promise<void>;
}

/** Rejects after `ms` with what `describe` says; the timer does not hold the process open. */
export function withTimeout<T>(promise: Promise<T>, ms: number, describe: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(describe())), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * A Redis of the bench's own that fsyncs every write (appendonly, appendfsync always), on a free
 * loopback port with a temporary directory: what it costs BullMQ to keep an acknowledged job
 * through a crash, as jobmesh (Postgres, JetStream with file storage) and pg-boss do.
 */
export async function startDurableRedis(): Promise<{ url: string; stop(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), "jobmesh-bench-redis-"));
  const port = await new Promise<number>((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--appendfsync", "always", "--save", ""], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await withTimeout(new Promise<void>((resolve, reject) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("Ready to accept connections")) resolve();
    });
    child.once("error", reject);
    void exited.then(() => reject(new Error(`redis-server exited with ${child.exitCode}`)));
  }), 10_000, () => "redis-server did not start in 10 s");
  child.stdout!.resume();
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** BullMQ on a Redis: a queue under its own prefix and a Worker with a no-op processor. */
export async function startBullmq(id: string, redis: string, name: string): Promise<Side> {
  const url = new URL(redis);
  const connection = { host: url.hostname, port: Number(url.port || 6379), maxRetriesPerRequest: null };
  const prefix = `jobmesh-bench-${id}`;
  const queue = new Queue("noop", { connection, prefix });
  let completed = 0;
  let target = Infinity;
  let done: (() => void) | undefined;
  const worker = new BullWorker("noop", async () => {}, { connection, prefix, concurrency });
  worker.on("completed", () => {
    if (++completed >= target) done?.();
  });
  await worker.waitUntilReady();
  await queue.waitUntilReady();
  let serial = 0;
  return {
    name,
    work: name === "BullMQ" ? "no-op processor" : "no-op processor, Redis appendfsync always",
    async runBatch(n) {
      completed = 0;
      target = n;
      const finished = new Promise<void>((resolve) => (done = resolve));
      await queue.addBulk(Array.from({ length: n }, () => ({ name: "noop", data: { text: documentText(serial++) } })));
      await withTimeout(finished, batchTimeoutMs, () => `${name}: ${completed} of ${n} jobs completed after ${batchTimeoutMs / 1000} s`);
      target = Infinity;
    },
    async close() {
      await worker.close();
      await queue.obliterate({ force: true });
      await queue.close();
    },
  };
}

/** pg-boss in a database of its own, dropped at the end. */
export async function startPgBoss(id: string, ctx: BenchContext): Promise<Side> {
  const { url, drop } = await createDatabase(`jobmesh_bench_pgboss_${id}`);
  const boss = new PgBoss({ connectionString: url, schema: "pgboss" });
  boss.on("error", (error: unknown) => ctx.progress(`jobs: pg-boss error: ${error instanceof Error ? error.message : String(error)}`));
  const probe = new pg.Client({ connectionString: url });
  let started = false;
  try {
    await boss.start();
    started = true;
    await boss.createQueue("noop");
    await probe.connect();
  } catch (error) {
    if (started) await boss.stop({ graceful: false, close: true }).catch(() => {});
    await drop();
    throw error;
  }
  let handled = 0;
  let target = Infinity;
  let done: (() => void) | undefined;
  // pg-boss's fastest way to keep `concurrency` jobs in hand: one fetch loop taking batches of
  // `concurrency`, fetching again at once while batches come back full (burst mode). With
  // batchSize 1 and localConcurrency `concurrency` each loop sleeps >= 0.5 s after every job.
  await boss.work("noop", { batchSize: concurrency, localConcurrency: 1, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 }, async (jobs) => {
    await Promise.all(jobs.map(async () => {}));
    handled += jobs.length;
    if (handled >= target) done?.();
  });
  let completedBefore = 0;
  let serial = 0;
  return {
    name: "pg-boss",
    work: "no-op handler",
    async runBatch(n) {
      handled = 0;
      target = n;
      const handledAll = new Promise<void>((resolve) => (done = resolve));
      await boss.insert("noop", Array.from({ length: n }, () => ({ data: { text: documentText(serial++) } })));
      await withTimeout(handledAll, batchTimeoutMs, () => `pg-boss: ${handled} of ${n} jobs handled after ${batchTimeoutMs / 1000} s`);
      target = Infinity;
      // The handler resolved; pg-boss marks the batch completed right after. Wait for the rows.
      const want = completedBefore + n;
      for (;;) {
        const { rows } = await probe.query<{ n: number }>("SELECT count(*)::int AS n FROM pgboss.job WHERE name = 'noop' AND state = 'completed'");
        if (rows[0].n >= want) break;
        await new Promise((r) => setTimeout(r, 2));
      }
      completedBefore = want;
    },
    async close() {
      try {
        await probe.end();
        await boss.stop({ graceful: false, close: true });
      } finally {
        await drop();
      }
    },
  };
}

/** Graphile Worker's advice: max(10, concurrentJobs + 2), so that no job waits for a connection to complete. */
export const graphileMaxPoolSize = Math.max(10, concurrency + 2);

/**
 * Graphile Worker in a database of its own, dropped at the end, with the settings its performance
 * page documents for throughput (https://worker.graphile.org/docs/performance): a local queue of
 * 500 jobs claimed per fetch, and completions written in batches (completeJobBatchDelay 0: what
 * finishes in the same tick goes in one statement).
 */
export async function startGraphileWorker(id: string, ctx: BenchContext): Promise<Side> {
  const { url, drop } = await createDatabase(`jobmesh_bench_graphile_${id}`);
  // Its info log is a line per completed job; only errors are worth showing.
  const logger = new GraphileLogger(() => (level, message) => {
    if (level === "error") ctx.progress(`jobs: Graphile Worker error: ${message}`);
  });
  const worker = {
    connectionString: url,
    concurrentJobs: concurrency,
    maxPoolSize: graphileMaxPoolSize,
    localQueue: { size: 500 },
    completeJobBatchDelay: 0,
    failJobBatchDelay: 0,
    logger,
  };
  let handled = 0;
  let target = Infinity;
  let done: (() => void) | undefined;
  let failed: ((error: Error) => void) | undefined;
  const utils = await makeWorkerUtils({ preset: { worker } });
  const probe = new pg.Client({ connectionString: url });
  let runner: Awaited<ReturnType<typeof runGraphileWorker>> | undefined;
  try {
    await utils.migrate();
    runner = await runGraphileWorker({
      preset: { worker },
      taskList: { noop: async () => {} },
      crontab: "",
      noHandleSignals: true,
    });
    // "job:complete" comes when the task has returned; with batched completion the row goes a moment later.
    runner.events.on("job:complete", ({ error }) => {
      if (error) return failed?.(new Error(`Graphile Worker: a job failed: ${error instanceof Error ? error.message : String(error)}`));
      if (++handled >= target) done?.();
    });
    await probe.connect();
  } catch (error) {
    await runner?.stop().catch(() => {});
    await utils.release();
    await drop();
    throw error;
  }
  let serial = 0;
  return {
    name: "Graphile Worker",
    work: "no-op task",
    async runBatch(n) {
      handled = 0;
      target = n;
      const handledAll = new Promise<void>((resolve, reject) => {
        done = resolve;
        failed = reject;
      });
      await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: { text: documentText(serial++) } })));
      await withTimeout(handledAll, batchTimeoutMs, () => `Graphile Worker: ${handled} of ${n} jobs handled after ${batchTimeoutMs / 1000} s`);
      target = Infinity;
      // A completed job's row is deleted; the batch is done when no row is left.
      for (;;) {
        const { rows } = await probe.query<{ n: number }>("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
        if (rows[0].n === 0) break;
        await new Promise((r) => setTimeout(r, 2));
      }
    },
    async close() {
      try {
        await probe.end();
        await runner!.stop();
        await utils.release();
      } finally {
        await drop();
      }
    },
  };
}
