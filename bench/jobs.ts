/**
 * Entry "jobs": jobs end to end through jobmesh (JobService, outbox relay, JetStream, stage
 * worker, Postgres), against BullMQ (Redis), pg-boss and Graphile Worker (Postgres) doing a
 * no-op job with the same concurrency, same N, same run; then the built-in 5-stage pipeline on
 * small text documents: throughput, and submit→SUCCEEDED latency one job at a time on an idle
 * mesh. Around every jobmesh batch, per-job counters from the servers' books (jobs-counters.ts).
 *
 * Everything runs in this process: jobmesh as the tests start it (own database and namespace,
 * identity enforced, one in-process worker with JOBMESH_WORKER_CONCURRENCY = `concurrency`), the
 * peers' workers next to it (jobs-peers.ts), and the clients that submit. A jobmesh job
 * counts as done when its `job_succeeded` event arrives on `<ns>.events.<tenant>.job_succeeded`
 * (what a client would watch); a BullMQ job on the Worker's "completed" event; a pg-boss job once
 * its row is `completed`; a Graphile Worker job once its row is gone. A batch's time runs from
 * just before the submit call to the last completion. Rounds alternate the systems' order and are pooled (jobs / seconds).
 */
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { Subscription } from "@nats-io/transport-node";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createHistogram } from "node:perf_hooks";
import { JobEventSchema } from "../gen/jobmesh/v1/events_pb.js";
import { JobService, type Job } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { redisUrl } from "../test/support/isolation.ts";
import { startTestMesh, type TestMesh } from "../test/support/mesh.ts";
import type { BenchEntry } from "./harness.ts";
import { addCounts, emptyCounts, settleMs, startJobmeshCounters, totalMessages, type JobCounts, type JobmeshCounters } from "./jobs-counters.ts";
import { batchTimeoutMs, concurrency, documentText, startBullmq, graphileMaxPoolSize, startDurableRedis, startGraphileWorker, startPgBoss, withTimeout, type Side } from "./jobs-peers.ts";
import { formatTable } from "./table.ts";

/** Ingest, detect, parse, output: a pipeline that extracts text, without enrich. */
const smallestPipeline = "pipelines/bench-smallest";
/** The smallest pipeline there is ([ingest, output]: store and fingerprint): jobmesh's "no-op" job. */
const twoStagePipeline = "pipelines/bench-ingest-output";
const defaultPipeline = "pipelines/document-default";

type Outcome = "succeeded" | "failed";

interface Measured {
  jobs: number;
  seconds: number;
  /** CPU of this (the only Node) process, in seconds, over the measured batches. */
  cpuSeconds: number;
  /** jobmesh's sides only: statements, transactions and messages over the measured batches. */
  counts?: JobCounts;
}

/** The peers each jobmesh row is compared with, by side name, in the table's order. */
const peers = ["BullMQ", "BullMQ durable", "pg-boss", "Graphile Worker"];
const isJobmesh = (name: string) => name.startsWith("jobmesh");

export const jobsEntry: BenchEntry = {
  name: "jobs",
  async run(ctx) {
    const quick = ctx.timing.rounds < 2;
    const n = quick ? 300 : 1000;
    const rounds = ctx.timing.rounds;
    const latencyJobs = quick ? 20 : 50;
    const id = `b${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;

    ctx.progress(`jobs: starting jobmesh (own database and namespace, identity enforced, worker concurrency ${concurrency})`);
    const mesh = await startTestMesh(
      { JOBMESH_LOG_LEVEL: "warn", JOBMESH_WORKER_CONCURRENCY: String(concurrency) },
      { jobs: true, workers: 1, auth: true, recordSpans: false },
    );
    const closers: (() => Promise<void>)[] = [() => mesh.close()];
    try {
      const jm = await jobmeshClient(mesh);
      closers.unshift(() => jm.close());
      for (const [name, stages] of [
        [smallestPipeline, [Stage.INGEST, Stage.DETECT, Stage.PARSE, Stage.OUTPUT]],
        [twoStagePipeline, [Stage.INGEST, Stage.OUTPUT]],
      ] as const) {
        await jm.pipelines.createPipeline({
          pipelineId: name.slice("pipelines/".length),
          pipeline: { displayName: "bench", config: { stages: stages.map((stage) => ({ stage })) } },
        });
      }

      ctx.progress("jobs: starting BullMQ (Redis), BullMQ on a durable Redis (appendfsync always), pg-boss and Graphile Worker (fresh databases)");
      const bull = await startBullmq(id, redisUrl, "BullMQ");
      closers.unshift(() => bull.close());
      const durableRedis = await startDurableRedis();
      closers.unshift(() => durableRedis.stop());
      const durableBull = await startBullmq(id, durableRedis.url, "BullMQ durable");
      closers.unshift(() => durableBull.close());
      const boss = await startPgBoss(id, ctx);
      closers.unshift(() => boss.close());
      const graphile = await startGraphileWorker(id, ctx);
      closers.unshift(() => graphile.close());
      const counters = await startJobmeshCounters(mesh);
      closers.unshift(() => counters.close());
      const sides: Side[] = [
        jm.side("jobmesh", twoStagePipeline, "2 stages: ingest, output (store + digest)"),
        jm.side("jobmesh 4-stage", smallestPipeline, "4 stages: ingest, detect, parse, output"),
        bull,
        durableBull,
        boss,
        graphile,
      ];

      // Warm-up: connections, JIT, prepared statements, consumers; not measured.
      for (const side of sides) {
        ctx.progress(`jobs: warm-up, ${side.name}, 50 jobs`);
        await side.runBatch(50);
      }
      mesh.spans.reset();

      const results = new Map<string, Measured>(sides.map((s) => [s.name, { jobs: 0, seconds: 0, cpuSeconds: 0, counts: isJobmesh(s.name) ? emptyCounts() : undefined }]));
      for (let round = 0; round < rounds; round++) {
        const order = round % 2 === 0 ? sides : [...sides].reverse();
        for (const side of order) {
          ctx.progress(`jobs: ${side.name}, ${n} jobs, concurrency ${concurrency}, round ${round + 1}/${rounds}`);
          await measure(results.get(side.name)!, n, () => side.runBatch(n), counters);
          mesh.spans.reset();
        }
      }

      // 5 stages, document-default, small text documents.
      const full = jm.side("jobmesh 5-stage", defaultPipeline, "5 stages");
      ctx.progress("jobs: warm-up, jobmesh document-default, 50 jobs");
      await full.runBatch(50);
      mesh.spans.reset();
      const fullResult: Measured = { jobs: 0, seconds: 0, cpuSeconds: 0, counts: emptyCounts() };
      for (let round = 0; round < rounds; round++) {
        ctx.progress(`jobs: jobmesh document-default, ${n} jobs, concurrency ${concurrency}, round ${round + 1}/${rounds}`);
        await measure(fullResult, n, () => full.runBatch(n), counters);
        mesh.spans.reset();
      }

      // "On an idle mesh": the throughput rounds leave Postgres vacuuming thousands of changed
      // rows for a while; the latency is measured once the machine has gone quiet.
      ctx.progress("jobs: waiting for the machine to go idle (autovacuum after the throughput rounds)");
      const idle = await waitForIdleMachine(30_000);
      ctx.progress(`jobs: machine ${idle ? "idle" : "still busy after 30 s; measuring anyway"}`);
      ctx.progress(`jobs: jobmesh document-default, submit→SUCCEEDED latency, ${latencyJobs} jobs one at a time`);
      for (let i = 0; i < 5; i++) await jm.one(defaultPipeline);
      mesh.spans.reset();
      const latency = createHistogram();
      const timed: TimedJob[] = [];
      for (let i = 0; i < latencyJobs; i++) {
        const submitAt = Date.now();
        const t0 = process.hrtime.bigint();
        const name = await jm.one(defaultPipeline);
        latency.record(process.hrtime.bigint() - t0);
        timed.push({ name, submitAt, doneAt: Date.now() });
      }
      mesh.spans.reset();
      const breakdown = breakdownOf(await Promise.all(timed.map(async (t) => ({ ...t, job: (await jm.jobs.getJob({ name: t.name })).job! }))));

      // What the idle mesh (relay and reaper polls) adds to a window: how much of a row is background.
      const idleWindow = await counters.start();
      const idleCounts = await idleWindow.end();

      return formatReport({ n, rounds, latencyJobs, results, sides, fullResult, latency, breakdown, idleCounts });
    } finally {
      for (const close of closers) {
        try {
          await close();
        } catch (error) {
          ctx.progress(`jobs: cleanup failed: ${error instanceof Error ? error.message : String(error)}`);
        }
      }
    }
  },
};

/** Busy and total CPU time of the machine so far (Linux /proc/stat), or undefined elsewhere. */
function machineCpu(): { busy: number; total: number } | undefined {
  try {
    const fields = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - fields[3] - (fields[4] ?? 0), total };
  } catch {
    return undefined;
  }
}

/** Resolves true once a second passes with the machine at most 10% busy; false after `maxMs`. */
async function waitForIdleMachine(maxMs: number): Promise<boolean> {
  const deadline = Date.now() + maxMs;
  while (Date.now() < deadline) {
    const before = machineCpu();
    await new Promise((r) => setTimeout(r, 1000));
    const after = machineCpu();
    if (!before || !after) return false;
    if ((after.busy - before.busy) / Math.max(1, after.total - before.total) <= 0.1) return true;
  }
  return false;
}

/** Times `batch`; for a side with counts, also counts around it (the settle after it is not timed). */
async function measure(into: Measured, n: number, batch: () => Promise<void>, counters: JobmeshCounters) {
  const window = into.counts ? await counters.start() : undefined;
  const cpu = process.cpuUsage();
  const t0 = performance.now();
  await batch();
  const seconds = (performance.now() - t0) / 1000;
  const used = process.cpuUsage(cpu);
  into.jobs += n;
  into.seconds += seconds;
  into.cpuSeconds += (used.user + used.system) / 1e6;
  if (window) addCounts(into.counts!, await window.end());
}

/** JobService and PipelineService clients signed in as an admin, and a counter of job_succeeded events. */
async function jobmeshClient(mesh: TestMesh) {
  const interceptor: Interceptor = await mesh.auth!.interceptorFor("admin");
  const jobsSessions = new Http2SessionManager(mesh.jobs!.url);
  const jobs = createClient(
    JobService,
    createConnectTransport({ baseUrl: mesh.jobs!.url, httpVersion: "2", useBinaryFormat: true, sessionManager: jobsSessions, interceptors: [interceptor] }),
  );
  const pipelinesSessions = new Http2SessionManager(mesh.pipelines.url);
  const pipelines = createClient(
    PipelineService,
    createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "2", useBinaryFormat: true, sessionManager: pipelinesSessions, interceptors: [interceptor] }),
  );

  // Core NATS subscriptions on the subjects the relay publishes job_succeeded and job_failed to
  // (the events stream captures the same messages); at-least-once, so keyed by job name.
  const ended = new Map<string, { outcome: Outcome; message: string }>();
  let waiting: { remaining: Set<string>; expect: Outcome; resolve: () => void; reject: (error: Error) => void } | undefined;
  const prefix = `${mesh.isolated.namespace}.events.${mesh.infra.bootstrapTenantId}`;
  const subs: Subscription[] = (["succeeded", "failed"] as const).map((outcome) =>
    mesh.infra.bus.nc.subscribe(`${prefix}.job_${outcome}`, {
      callback: (error, msg) => {
        if (error) return;
        const event = fromBinary(JobEventSchema, msg.data);
        ended.set(event.job, { outcome, message: event.error?.message ?? "" });
        if (!waiting?.remaining.has(event.job)) return;
        if (outcome !== waiting.expect) return waiting.reject(new Error(`jobmesh: ${event.job} ended ${outcome}, not ${waiting.expect}: ${event.error?.message}`));
        waiting.remaining.delete(event.job);
        if (waiting.remaining.size === 0) waiting.resolve();
      },
    }),
  );
  await mesh.infra.bus.nc.flush();

  function untilEnded(names: string[], expect: Outcome): Promise<void> {
    const unexpected = names.map((name) => [name, ended.get(name)] as const).find(([, e]) => e && e.outcome !== expect);
    if (unexpected) return Promise.reject(new Error(`jobmesh: ${unexpected[0]} ended ${unexpected[1]!.outcome}, not ${expect}: ${unexpected[1]!.message}`));
    const remaining = new Set(names.filter((name) => !ended.has(name)));
    if (remaining.size === 0) return Promise.resolve();
    const done = new Promise<void>((resolve, reject) => {
      waiting = { remaining, expect, resolve, reject };
    });
    return withTimeout(done, batchTimeoutMs, () => `jobmesh: ${remaining.size} of ${names.length} jobs not ${expect} after ${batchTimeoutMs / 1000} s`).finally(() => {
      waiting = undefined;
    });
  }

  let serial = 0;
  const text = () => ({ source: { case: "text" as const, value: documentText(serial++) } });
  return {
    jobs,
    pipelines,
    side(name: string, pipeline: string, work: string, expect: Outcome = "succeeded"): Side {
      return {
        name,
        work,
        async runBatch(n) {
          const names: string[] = [];
          for (let i = 0; i < n; i += 1000) {
            const requests = Array.from({ length: Math.min(1000, n - i) }, () => ({ job: { pipeline, document: text() } }));
            const response = await jobs.createJobs({ requests });
            names.push(...response.jobs.map((j) => j.name));
          }
          await untilEnded(names, expect);
        },
        close: () => Promise.resolve(),
      };
    },
    /** Submits one job and resolves with its name once it SUCCEEDED. */
    async one(pipeline: string): Promise<string> {
      const { job } = await jobs.createJob({ job: { pipeline, document: text() } });
      await untilEnded([job!.name], "succeeded");
      return job!.name;
    },
    async close() {
      for (const sub of subs) sub.unsubscribe();
      jobsSessions.abort();
      pipelinesSessions.abort();
    },
  };
}

interface TimedJob {
  name: string;
  /** Wall clock (ms) just before CreateJob, and when its job_succeeded event arrived. */
  submitAt: number;
  doneAt: number;
}

/** Mean ms per job, in the order a job's time passes. */
type Breakdown = { what: string; ms: number }[];

/**
 * Where a latency job's time went, from the job's own timestamps (create_time, each stage
 * attempt's start and end, end_time; Postgres clock, same machine) and the client's clock.
 * An attempt starts when the worker claims it and ends when its outcome commits.
 */
function breakdownOf(jobs: (TimedJob & { job: Job })[]): Breakdown {
  const sums = new Map<string, number>();
  const add = (what: string, ms: number) => sums.set(what, (sums.get(what) ?? 0) + ms);
  for (const { job, submitAt, doneAt } of jobs) {
    const at = (t: Parameters<typeof timestampMs>[0] | undefined) => (t ? timestampMs(t) : NaN);
    const attempts = job.attempts;
    add("CreateJob (submit → job row committed)", at(job.createTime) - submitAt);
    add("to first stage (publish after commit → JetStream → worker claim)", at(attempts[0]?.startTime) - at(job.createTime));
    for (let i = 0; i < attempts.length; i++) {
      add(`stage ${Stage[attempts[i].stage].toLowerCase()} (claim → run → commit)`, at(attempts[i].endTime) - at(attempts[i].startTime));
    }
    let handoffs = 0;
    for (let i = 1; i < attempts.length; i++) handoffs += at(attempts[i].startTime) - at(attempts[i - 1].endTime);
    add(`hand-offs between stages, all ${attempts.length - 1} (0 when the worker continued the job: the commit claimed the next stage)`, handoffs);
    add("last commit → job_succeeded event at the client", doneAt - at(attempts.at(-1)?.endTime));
    add("total: submit → job_succeeded at the client (mean)", doneAt - submitAt);
  }
  return [...sums].map(([what, ms]) => ({ what, ms: ms / jobs.length }));
}

function formatReport(r: {
  n: number;
  rounds: number;
  latencyJobs: number;
  results: Map<string, Measured>;
  sides: Side[];
  fullResult: Measured;
  latency: ReturnType<typeof createHistogram>;
  breakdown: Breakdown;
  idleCounts: JobCounts;
}): string {
  const rate = (m: Measured) => m.jobs / m.seconds;
  const cpuPerJob = (m: Measured) => ((m.cpuSeconds * 1e6) / m.jobs).toFixed(0);
  const baseline = (name: string) => rate(r.results.get(name)!);
  const ratio = (s: Side, against: string) => (isJobmesh(s.name) ? `${(rate(r.results.get(s.name)!) / baseline(against)).toFixed(2)}x` : "");
  const throughput = formatTable(
    [
      { header: "system" },
      { header: "work per job" },
      { header: "conc", align: "right" },
      { header: "jobs", align: "right" },
      { header: "jobs/s", align: "right" },
      { header: "node cpu us/job", align: "right" },
      ...peers.map((peer) => ({ header: `/${peer}`, align: "right" as const })),
    ],
    r.sides.map((s) => {
      const m = r.results.get(s.name)!;
      return [s.name, s.work, String(concurrency), String(m.jobs), rate(m).toFixed(0), cpuPerJob(m), ...peers.map((peer) => ratio(s, peer))];
    }),
  );
  const twoStage = rate(r.results.get("jobmesh")!);
  const verdict = (met: boolean) => (met ? "met" : "NOT met");
  // Two decimals: batched statements and transactions come to less than one per job.
  const perJob = (m: Measured, count: number) => (count / m.jobs).toFixed(2);
  const byStream = (m: Measured) =>
    [...m.counts!.messages]
      .filter(([, n]) => n > 0)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([stream, n]) => `${stream} ${n / m.jobs < 0.01 ? "<0.01" : perJob(m, n)}`)
      .join(", ");
  const counted: [string, string, Measured][] = [
    ...r.sides.filter((s) => isJobmesh(s.name)).map((s) => [s.name, s.work, r.results.get(s.name)!] as [string, string, Measured]),
    ["jobmesh 5-stage", `${defaultPipeline}: ingest, detect, parse, enrich, output`, r.fullResult],
  ];
  const counters = formatTable(
    [
      { header: "per job" },
      { header: "work per job" },
      { header: "jobs", align: "right" },
      { header: "pg statements", align: "right" },
      { header: "pg transactions", align: "right" },
      { header: "pg rows ins/upd/del", align: "right" },
      { header: "WAL KB", align: "right" },
      { header: "JetStream msgs", align: "right" },
      { header: "cpu us node/pg/nats", align: "right" },
      { header: "JetStream msgs by stream" },
    ],
    counted.map(([name, work, m]) => [
      name,
      work,
      String(m.jobs),
      perJob(m, m.counts!.statements),
      perJob(m, m.counts!.transactions),
      [m.counts!.rows.inserted, m.counts!.rows.updated, m.counts!.rows.deleted].map((n) => (n / m.jobs).toFixed(1)).join("/"),
      (m.counts!.walBytes / 1024 / m.jobs).toFixed(1),
      perJob(m, totalMessages(m.counts!)),
      `${cpuPerJob(m)}/${(m.counts!.serverCpuUs.postgres / m.jobs).toFixed(0)}/${(m.counts!.serverCpuUs.nats / m.jobs).toFixed(0)}`,
      byStream(m),
    ]),
  );
  const idle = r.idleCounts;
  const p = (q: number) => r.latency.percentile(q) / 1e6;
  const full = rate(r.fullResult);
  const fullTable = formatTable(
    [{ header: "jobmesh, pipelines/document-default (5 stages)" }, { header: "measured", align: "right" }, { header: "target", align: "right" }, { header: "" }],
    [
      [`jobs/s, ${r.fullResult.jobs} jobs in ${r.rounds} batch(es), concurrency ${concurrency}`, full.toFixed(0), ">= 1500", full >= 1500 ? "met" : "NOT met"],
      [`submit→SUCCEEDED p50 ms, ${r.latencyJobs} jobs one at a time, idle`, p(50).toFixed(1), "<= 10", p(50) <= 10 ? "met" : "NOT met"],
      [`submit→SUCCEEDED p99 ms`, p(99).toFixed(1), "", ""],
      [`node cpu us/job (throughput run)`, cpuPerJob(r.fullResult), "", ""],
    ],
  );
  const breakdown = formatTable(
    [{ header: `where a latency job's time goes (mean over ${r.latencyJobs} jobs)` }, { header: "ms", align: "right" }],
    r.breakdown.map((b) => [b.what, b.ms.toFixed(1)]),
  );
  return [
    `Jobs end to end: jobmesh vs BullMQ (Redis) vs pg-boss and Graphile Worker (Postgres), same concurrency, same N, same run`,
    "",
    throughput,
    `  /<peer> = jobmesh jobs/s / the peer's jobs/s. Targets (issue 14): "jobmesh" [ingest, output] >= 3000 jobs/s and >= 0.35x BullMQ:`,
    `  ${verdict(twoStage >= 3000 && twoStage / baseline("BullMQ") >= 0.35)} (${twoStage.toFixed(0)} jobs/s, ${(twoStage / baseline("BullMQ")).toFixed(2)}x); ${r.rounds} batch(es) of ${r.n} per system,`,
    `  order alternating, pooled, after a 50-job warm-up each. "BullMQ" runs on the machine's Redis, which keeps nothing on disk; "BullMQ durable"`,
    `  on a Redis of the bench's own with appendfsync always, so that an acknowledged job survives a crash as it does in jobmesh and pg-boss.`,
    `  jobmesh has no 1-stage pipeline (ingest first, output last): "jobmesh" runs ${twoStagePipeline} = [ingest, output]: the document stored`,
    `  and digested, 2 stage attempts, each claimed and committed in Postgres with its events, every event published to JetStream (6 per job);`,
    `  "jobmesh 4-stage" runs ${smallestPipeline} = [ingest, detect, parse, output]. The peers run 1 no-op job each.`,
    `  Submit: one CreateJobs / addBulk / insert / addJobs call per batch. Done: jobmesh job_succeeded/job_failed event on NATS, BullMQ Worker`,
    `  "completed" event, pg-boss row state = completed, Graphile Worker: every task returned and no job row left (a completed job's row is deleted).`,
    `  pg-boss: work() with batchSize ${concurrency}, localConcurrency 1, burstWhenBatchFull (its fastest setting). Graphile Worker 0.18: concurrentJobs`,
    `  ${concurrency}, localQueue.size 500, completeJobBatchDelay 0, failJobBatchDelay 0 (its documented fast settings), maxPoolSize ${graphileMaxPoolSize}.`,
    `  node cpu = CPU of the one Node process (jobmesh services + worker + clients, or the peer's worker); Postgres, Redis, NATS not counted.`,
    "",
    counters,
    `  Counted around each measured jobmesh batch (not the warm-up), from just before the submit to ${settleMs} ms after the last job_succeeded, then / jobs:`,
    `  pg statements = pg Client#query calls (pg.Client.prototype.query wrapped in the bench process) on clients connected to jobmesh's own database,`,
    `    by every jobmesh service in the process (jobs, worker, relay, reaper, pipelines, auth); BEGIN, COMMIT each count, a multi-statement string once.`,
    `  pg transactions = xact_commit + xact_rollback of jobmesh's database in pg_stat_database: every backend on it, autovacuum included (a statement`,
    `    outside BEGIN is a transaction of its own).`,
    `  pg rows = tup_inserted/tup_updated/tup_deleted of jobmesh's database in pg_stat_database (catalog rows and autovacuum included). WAL KB =`,
    `    pg_current_wal_lsn delta (the whole server). cpu us pg/nats = CPU of every postgres and nats-server process (/proc) over the window,`,
    `    settle included, / jobs: the whole machine's servers, so anything else they did meanwhile counts too.`,
    `  JetStream msgs = last_seq deltas of the namespace's streams (messages stored; a duplicate dropped by Nats-Msg-Id is not counted); uploads/results`,
    `    are the object store buckets' streams (chunks + metadata). node cpu us = the Node process's CPU over the timed batch / jobs.`,
    `  The ${settleMs} ms after a batch lets Postgres backends flush their statistics (at most once a second); idle background in one such window, no jobs:`,
    `    ${idle.statements} statements, ${idle.transactions} transactions, ${totalMessages(idle)} messages: in each batch of ${r.n}, about`,
    `    ${(idle.statements / r.n).toFixed(2)} statements and ${(idle.transactions / r.n).toFixed(2)} transactions per job of each row are this background (not subtracted).`,
    "",
    fullTable,
    "",
    breakdown,
    "  From the job's create_time, stage attempts' start/end and end_time (ms resolution) and the client's clock; the stages' work is small text.",
  ].join("\n");
}
