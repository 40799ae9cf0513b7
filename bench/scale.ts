/**
 * Entry "scale" (issue 14, "Scale figures, measured"):
 *
 * 1. GetJob and ListJobs latency with few and with many jobs in the tenant, and the small tenant
 *    again once another tenant holds the many (scale-job-reads.ts).
 * 2. RSS of each binary run as its own process (cmd/auth, cmd/pipelines, cmd/jobs, cmd/worker):
 *    idle after start-up, and at its peak under a throughput run (scale-processes.ts).
 * 3. document-default jobs/s with one worker process and with two (scale-processes.ts).
 */
import type { BenchEntry, LoadResult } from "./harness.ts";
import { measureJobReads, readCases, type ReadResults } from "./scale-job-reads.ts";
import { measureProcesses, type ProcessResults } from "./scale-processes.ts";
import { formatTable } from "./table.ts";

const targets = { readRatio: 1.5, idleMiB: 120, loadMiB: 250 };

export const scaleEntry: BenchEntry = {
  name: "scale",
  async run(ctx) {
    const quick = ctx.timing.rounds < 2;
    const sizes = quick ? { small: 10_000, large: 200_000 } : { small: 10_000, large: 1_000_000 };
    const readTiming = quick ? { rounds: 1, warmupMs: 300, durationMs: 3000 } : { rounds: 2, warmupMs: 500, durationMs: 4000 };
    const reads = await measureJobReads(ctx, sizes, readTiming);
    let readsTable: string;
    try {
      readsTable = formatReads(reads, quick);
    } finally {
      await reads.close();
    }
    const processSizes = quick
      ? { throughputJobs: 1000, scalingJobs: 300, rounds: 1, settleMs: 3000 }
      : { throughputJobs: 3000, scalingJobs: 1000, rounds: 2, settleMs: 10_000 };
    const processes = await measureProcesses(ctx, processSizes);
    return [readsTable, "", formatRss(processes, processSizes.settleMs), "", formatWorkers(processes)].join("\n");
  },
};

const ms = (n: number) => (Number.isFinite(n) ? (n < 10 ? n.toFixed(2) : n.toFixed(1)) : "-");
const count = (n: number) => (n >= 1_000_000 ? `${n / 1_000_000}M` : n >= 1000 ? `${n / 1000}k` : String(n));
const pair = (r: LoadResult) => `${ms(r.p50)}/${ms(r.p99)}${r.errors > 0 ? ` (${r.errors} err)` : ""}`;
const times = (n: number) => (Number.isFinite(n) ? `${n.toFixed(2)}x` : "-");

/**
 * The latency table, judged by p99 as the issue asks. On a shared 2-core machine a p99 ratio can
 * miss on noise alone, so each row also shows the shared buffers Postgres touched for one call
 * (EXPLAIN ANALYZE, BUFFERS): a row whose buffers grow does more work at scale; its plan is printed.
 */
function formatReads(r: ReadResults, quick: boolean): string {
  const small = count(r.small);
  const large = count(r.large);
  const plans: string[] = [];
  const rows = readCases.map((c) => {
    const alone = r.alone.get(c.label)!;
    const big = r.largeTenant.get(c.label)!;
    const beside = r.beside.get(c.label)!;
    const checks = [
      { what: `at ${large}`, latency: big.latency.p99 / alone.latency.p99, work: big.explained.buffers / alone.explained.buffers, figures: big },
      { what: `beside ${large}`, latency: beside.latency.p99 / alone.latency.p99, work: beside.explained.buffers / alone.explained.buffers, figures: beside },
    ];
    const verdicts = checks.flatMap((check) => {
      if (check.work > targets.readRatio) {
        plans.push("", `  "${c.label}" ${check.what}: Postgres touches ${times(check.work)} the buffers; EXPLAIN (ANALYZE, BUFFERS):`, ...check.figures.explained.plan.map((l) => `    ${l}`));
        return [`${check.what}: pg work ${times(check.work)}, plan below`];
      }
      if (!(check.latency <= targets.readRatio)) return [`${check.what}: p99 only, same pg work (noise?)`];
      return [];
    });
    return [
      c.label,
      pair(alone.latency),
      pair(big.latency),
      times(big.latency.p99 / alone.latency.p99),
      pair(beside.latency),
      times(beside.latency.p99 / alone.latency.p99),
      `${alone.explained.buffers}/${big.explained.buffers}/${beside.explained.buffers}`,
      verdicts.length === 0 ? "met" : `NOT met: ${verdicts.join("; ")}`,
    ];
  });
  const table = formatTable(
    [
      { header: "call (JobService, Connect binary h2c, one at a time)" },
      { header: `${small} p50/p99 ms`, align: "right" },
      { header: `${large} p50/p99 ms`, align: "right" },
      { header: `${large}/${small} p99`, align: "right" },
      { header: `${small} beside ${large}`, align: "right" },
      { header: "beside/alone p99", align: "right" },
      { header: "pg buffers", align: "right" },
      { header: `target <= ${targets.readRatio}x` },
    ],
    rows,
  );
  const phases = [r.alone, r.largeTenant, r.beside];
  const errors = phases.flatMap((phase) => [...phase].filter(([, f]) => f.latency.firstError).map(([label, f]) => `  error: ${label}: ${f.latency.firstError}`));
  return [
    `Job reads at scale: ${small} jobs in the tenant vs ${large}, and ${small} again while another tenant holds ${large}${quick ? ` (--quick: ${large}, not 1M)` : ""}`,
    "",
    table,
    `  Jobs seeded with INSERT … SELECT FROM generate_series (copies of one real [ingest, output] job with its 2 stage attempts; 5% FAILED,`,
    `  0.2% CANCELLED, the rest SUCCEEDED, one create_time a second) into the mesh's own database in ${r.seedSeconds.toFixed(0)} s, then VACUUM ANALYZE.`,
    `  Page size 50 (the default), newest first; a deep page resumes from a token at 90% of the rows its filter selects.`,
    `  "${small}" is measured before the other tenant exists; "${large}" and "${small} beside" alternate round by round.`,
    `  pg buffers = shared buffers hit or read by one call's statements (EXPLAIN ANALYZE), ${small} / ${large} / ${small} beside: the work, whatever the load.`,
    ...errors,
    ...plans,
  ].join("\n");
}

const mib = (bytes: number) => bytes / 1024 / 1024;

function formatRss(p: ProcessResults, settleMs: number): string {
  const rows = p.rss.map((r) => {
    const idle = mib(r.idleBytes);
    const underLoad = mib(r.loadPeakBytes);
    return [
      r.name,
      `${idle.toFixed(0)} (${mib(r.idleAnonBytes).toFixed(0)} + ${mib(r.idleFileBytes).toFixed(0)})`,
      idle <= targets.idleMiB ? "met" : "NOT met",
      mib(r.startupPeakBytes).toFixed(0),
      underLoad.toFixed(0),
      underLoad <= targets.loadMiB ? "met" : "NOT met",
      mib(r.peakBytes).toFixed(0),
    ];
  });
  const t = p.throughput;
  return [
    "Resident memory of each binary run as its own process (one fresh database and namespace, each on its own port)",
    "",
    formatTable(
      [
        { header: "process" },
        { header: "idle RSS MiB (anon + file)", align: "right" },
        { header: `<= ${targets.idleMiB}` },
        { header: "start-up peak", align: "right" },
        { header: "peak under load", align: "right" },
        { header: `<= ${targets.loadMiB}` },
        { header: "VmHWM at end", align: "right" },
      ],
      rows,
    ),
    `  idle = VmRSS ${settleMs / 1000} s after /readyz answered (RssAnon: heaps; RssFile: the node binary and libraries mapped); start-up peak = VmHWM then.`,
    `  peak under load = the largest VmRSS sampled every 100 ms during the throughput run; VmHWM at end = the most ever resident.`,
    `  Throughput run: ${t.jobs} [ingest, output] jobs in CreateJobs calls of 1000 through cmd/jobs, run by one cmd/worker (concurrency 32):`,
    `  ${t.succeeded} of ${t.jobs} SUCCEEDED in ${t.seconds.toFixed(1)} s (${Math.round(t.jobs / t.seconds)} jobs/s). cmd/auth serves one Login and cmd/pipelines one`,
    `  CreatePipeline before the run and nothing during it: their rise is what a first call costs, not load (idle, they stay flat).`,
  ].join("\n");
}

function formatWorkers(p: ProcessResults): string {
  const one = p.workerRuns.get(1)!;
  const two = p.workerRuns.get(2)!;
  const rate = (r: typeof one) => r.jobs / r.seconds;
  const rows = [one, two].map((r) => [
    `${r.workers} cmd/worker process${r.workers > 1 ? "es" : ""}`,
    Math.round(rate(r)).toString(),
    `${r.succeeded}/${r.jobs}`,
    r.attemptsByWorker.map((round) => round.join("+")).join(", "),
  ]);
  const allSucceeded = one.succeeded === one.jobs && two.succeeded === two.jobs;
  const ratio = rate(two) / rate(one);
  return [
    "document-default (5 stages) with one worker process and with two, same N",
    "",
    formatTable([{ header: "workers" }, { header: "jobs/s", align: "right" }, { header: "SUCCEEDED", align: "right" }, { header: "stage attempts per worker, per round" }], rows),
    `  two/one = ${ratio.toFixed(2)}x; every job SUCCEEDED: ${allSucceeded ? "yes" : "NO"}. Each worker process has concurrency 32 and 2 stage threads (the defaults).`,
    `  On 2 cores a second process adds overhead, not capacity: the point is that work is shared and nothing is lost. Each set of workers is`,
    `  started fresh, warmed with 50 jobs, then measured from the first submit to the last job's end_time; rounds alternate the order.`,
  ].join("\n");
}
