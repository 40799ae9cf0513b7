// Each stage thread has its own heap limit (JOBMESH_STAGE_HEAP_MB; 64 MiB here, so that a
// legitimate 4 MB document exceeds it): a stage that needs more dies with its thread and loses
// its own attempt (ABANDONED, STAGE_CRASHED), while the worker process — its heartbeats, and
// another tenant's job at the same moment — goes on, and the process's memory stays bounded.
import t from "tap";
import { create } from "@bufbuild/protobuf";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { isTerminalState, jobClient, signInAsAdmin, waitForJob, type JobClient } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";
import { largeProse, metricSum } from "./worker-stage-support.ts";

const heapMb = 64;
const MiB = 1024 * 1024;

const mesh = await startTestMesh(
  { JOBMESH_HEARTBEAT_TTL_MS: "2000", JOBMESH_STAGE_THREADS: "2", JOBMESH_STAGE_HEAP_MB: String(heapMb), JOBMESH_MAX_STAGE_LOSSES: "2" },
  { jobs: true, auth: true },
);
t.teardown(() => mesh.close());
/**
 * The bound on this process's RSS (it hosts the services, the worker and its two stage threads):
 * what it held once the mesh was up, plus for each thread its 64 MiB heap and up to 192 MiB more
 * (young generation, code, the copies of the document a stage holds), plus 256 MiB for the worker
 * thread's own copies of a 4 MB document as it is stored, loaded and handed on. Without the limit
 * the 4 MB document's enrich alone takes several hundred MiB, and the open-links HTML grew
 * without end.
 */
const rssBoundBytes = process.memoryUsage().rss + 2 * (heapMb + 192) * MiB + 256 * MiB;
const rssBoundText = `${Math.round(rssBoundBytes / MiB)} MiB`;
const reapedTotal = () => metricSum(`${mesh.jobs!.url}/metrics`, "jobmesh_stage_reaped_total");

async function tenant(signIn: Interceptor[], pipelineId: string): Promise<{ jobs: JobClient; pipeline: string }> {
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));
  const config = create(PipelineConfigSchema, {
    stages: [Stage.INGEST, Stage.DETECT, Stage.PARSE, Stage.ENRICH, Stage.OUTPUT].map((stage) => ({ stage, retry: { maxAttempts: 1 } })),
  });
  await pipelines.createPipeline({ pipelineId, pipeline: { config } });
  return { jobs: jobClient(mesh.jobs!.url, signIn), pipeline: `pipelines/${pipelineId}` };
}
const heavy = await tenant(await signInAsAdmin(mesh), "heavy");
const neighbour = await tenant([await mesh.auth!.interceptorFor("admin", "neighbour")], "plain");
/** The other tenant's document: over 1 KiB, so its stages run in a stage thread too (the other one). */
const NEIGHBOUR_DOC = largeProse(4096);
const submit = (to: { jobs: JobClient; pipeline: string }, text: string, filename = "") =>
  to.jobs.createJob({ job: { pipeline: to.pipeline, document: { source: { case: "text", value: text }, filename } } }).then((r) => r.job!.name);

/** The largest RSS of this process while `during` runs, sampled every 50 ms. */
async function peakRss(during: () => Promise<void>): Promise<number> {
  let peak = process.memoryUsage().rss;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
  try {
    await during();
  } finally {
    clearInterval(sampler);
  }
  return Math.max(peak, process.memoryUsage().rss);
}

t.test("heap limit - a stage that needs more than its thread's heap loses its own attempts; another tenant's job succeeds; RSS stays bounded", async (t) => {
  const reaped = await reapedTotal();
  const peak = await peakRss(async () => {
    const [big, other] = await Promise.all([submit(heavy, largeProse(3_900_000), "large.txt"), submit(neighbour, NEIGHBOUR_DOC)]);
    const job = await waitForJob(neighbour.jobs, other, undefined, 120_000);
    t.equal(job.state, JobState.SUCCEEDED, `the other tenant's job succeeded ${JSON.stringify(job.error ?? {})}`);
    t.ok(job.attempts.every((a) => a.outcome !== StageAttemptOutcome.ABANDONED), "none of its attempts was abandoned");

    const done = await waitForJob(heavy.jobs, big, undefined, 120_000);
    t.equal(done.state, JobState.FAILED, "the job failed (its losses are bounded)");
    t.equal(done.error?.code, "STAGE_CRASHED");
    t.match(done.error?.message, new RegExp(`thread died: it exceeded its heap limit of ${heapMb} MiB`));
    const crashed = done.attempts.filter((a) => a.error?.code === "STAGE_CRASHED");
    t.ok(crashed.length >= 1, "the attempts that ran out of heap are recorded");
    t.ok(crashed.every((a) => a.outcome === StageAttemptOutcome.ABANDONED && [Stage.DETECT, Stage.PARSE, Stage.ENRICH].includes(a.stage)), "as losses of a stage that runs in a thread");
    t.notOk(done.attempts.some((a) => a.error?.code === "WORKER_LOST"), "none was lost with the worker");
  });
  t.ok(peak < rssBoundBytes, `RSS peaked at ${Math.round(peak / MiB)} MiB, under ${rssBoundText}`);
  t.equal(await reapedTotal(), reaped, "the reaper requeued nothing: the worker kept heartbeating");
});

t.test("heap limit - HTML with 50,000 links left open ends, and the process's RSS stays bounded", async (t) => {
  const peak = await peakRss(async () => {
    const name = await submit(heavy, "<html>" + "<a href=x><b>".repeat(5e4) + "y<i>".repeat(2e4), "links.html");
    const done = await waitForJob(heavy.jobs, name, undefined, 120_000);
    t.ok(isTerminalState(done.state), `the job ended: ${JobState[done.state]} ${done.error?.code ?? ""}`);
    t.notOk(done.attempts.some((a) => a.error?.code === "WORKER_LOST"), "no attempt was lost with the worker");
  });
  t.ok(peak < rssBoundBytes, `RSS peaked at ${Math.round(peak / MiB)} MiB, under ${rssBoundText}`);
  // The pool replaced any thread that died: the next job runs every stage.
  const after = await waitForJob(neighbour.jobs, await submit(neighbour, NEIGHBOUR_DOC), undefined, 60_000);
  t.equal(after.state, JobState.SUCCEEDED);
});
