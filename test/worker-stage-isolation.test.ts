// A hostile document costs its own attempt only: detect, parse and enrich run in the worker's
// stage threads, so a stage's timeout or a cancel stops synchronous work for real (the thread is
// terminated) and the worker's event loop — its heartbeats, claims and commits for every other
// tenant — goes on meanwhile. The heartbeat TTL is short here: a worker whose event loop a
// document blocked for a few seconds would have its attempts reaped as WORKER_LOST.
import t from "tap";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { type Job, StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { isTerminalState, jobClient, signInAsAdmin, waitForJob, type JobClient } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";
import { largeProse, metricSum, untilTrue } from "./worker-stage-support.ts";

// Two stage threads, whatever the machine; a heap large enough for the 4 MB document below.
const mesh = await startTestMesh(
  { JOBMESH_HEARTBEAT_TTL_MS: "2000", JOBMESH_STAGE_THREADS: "2", JOBMESH_STAGE_HEAP_MB: "1024" },
  { jobs: true, auth: true },
);
t.teardown(() => mesh.close());
const metrics = (name: string, labels?: string) => metricSum(`${mesh.jobs!.url}/metrics`, name, labels);

/**
 * A tenant's JobService client and a pipeline of its own; with a timeout, each stage (or only
 * `timedStage`) has that timeout and one attempt: what the job ends with is what its first
 * attempt did.
 */
async function tenant(signIn: Interceptor[], pipelineId: string, stageTimeoutMs?: number, timedStage?: Stage): Promise<{ jobs: JobClient; pipeline: string }> {
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));
  const limitsOf = (stage: Stage) =>
    stageTimeoutMs && (timedStage ?? stage) === stage ? { timeout: durationFromMs(stageTimeoutMs), retry: { maxAttempts: 1 } } : {};
  const config = create(PipelineConfigSchema, {
    stages: [
      { stage: Stage.INGEST, ...limitsOf(Stage.INGEST) },
      { stage: Stage.DETECT, ...limitsOf(Stage.DETECT) },
      { stage: Stage.PARSE, ...limitsOf(Stage.PARSE) },
      { stage: Stage.ENRICH, ...limitsOf(Stage.ENRICH), options: { options: { case: "enrich", value: { detectPii: true } } } },
      { stage: Stage.OUTPUT, ...limitsOf(Stage.OUTPUT) },
    ],
  });
  await pipelines.createPipeline({ pipelineId, pipeline: { config } });
  return { jobs: jobClient(mesh.jobs!.url, signIn), pipeline: `pipelines/${pipelineId}` };
}

const hostileTenant = await signInAsAdmin(mesh);
const hostile = await tenant(hostileTenant, "hostile", 3_000);
const slow = await tenant(hostileTenant, "slow");
const hasty = await tenant(hostileTenant, "hasty", 500, Stage.ENRICH);
const neighbour = await tenant([await mesh.auth!.interceptorFor("admin", "neighbour")], "plain");

const submit = (to: { jobs: JobClient; pipeline: string }, text: string, filename = "") =>
  to.jobs.createJob({ job: { pipeline: to.pipeline, document: { source: { case: "text", value: text }, filename } } }).then((r) => r.job!.name);

const cpuStages = [Stage.DETECT, Stage.PARSE, Stage.ENRICH];
/** The other tenant's document: over 1 KiB, so its stages run in a stage thread too (the other one). */
const NEIGHBOUR_DOC = largeProse(4096);
const noAbandoned = (job: Job) => job.attempts.every((a) => a.outcome !== StageAttemptOutcome.ABANDONED);

const documents = [
  // Every address overlaps nothing, but the overlap check compared each with all accepted ones.
  { name: "half a million email addresses through PII detection", filename: "mails.txt", text: "a@b.cc ".repeat(550_000) },
  // Text appended to every open link; a link left open under <b> never closes.
  { name: "HTML with 50,000 links left open", filename: "links.html", text: "<html>" + "<a href=x><b>".repeat(5e4) + "y<i>".repeat(2e4) },
  // A million spaces kept by <pre>, then a word and a tab: a whitespace pattern that must end in a
  // tab backtracked over the rest of the run from each space.
  { name: "HTML with a million spaces in <pre>", filename: "pre.html", text: "<html><body><pre>" + " ".repeat(1e6) + "x\t</pre></body></html>" },
];

for (const doc of documents) {
  t.test(`hostile document - ${doc.name}: ends within its stage timeout, and another tenant's jobs on the same worker succeed`, async (t) => {
    const reaped = await metrics("jobmesh_stage_reaped_total");
    // Submitted at the same moment, to the one worker of this mesh.
    const [bad, first] = await Promise.all([submit(hostile, doc.text, doc.filename), submit(neighbour, NEIGHBOUR_DOC)]);
    // And one more once the hostile document's CPU-bound stage runs (or it already ended).
    await waitForJob(hostile.jobs, bad, (j) => isTerminalState(j.state) || (j.state === JobState.RUNNING && cpuStages.includes(j.stage)), 60_000);
    const second = await submit(neighbour, NEIGHBOUR_DOC);

    for (const name of [first, second]) {
      const job = await waitForJob(neighbour.jobs, name, undefined, 60_000);
      t.equal(job.state, JobState.SUCCEEDED, `the other tenant's job succeeded ${JSON.stringify(job.error ?? {})}`);
      t.ok(noAbandoned(job), "none of its attempts was abandoned");
    }
    // The hang guard: on a worker whose event loop the stage blocks, this never comes.
    const done = await waitForJob(hostile.jobs, bad, undefined, 60_000);
    t.ok(done.state === JobState.SUCCEEDED || done.state === JobState.FAILED, `the hostile job ended: ${JobState[done.state]}`);
    if (done.state === JobState.FAILED) {
      // Its own timeout, a thread that died of its heap limit, or a permanent stage error.
      t.ok(["STAGE_TIMEOUT", "STAGE_CRASHED"].includes(done.error!.code) || !done.error!.transient, `failed with ${done.error?.code}: ${done.error?.message}`);
      t.not(done.error?.code, "INTERNAL");
    }
    t.notOk(done.attempts.some((a) => a.error?.code === "WORKER_LOST"), "no attempt of it was lost with the worker");
    t.equal(await metrics("jobmesh_stage_reaped_total"), reaped, "the reaper requeued nothing: the worker kept heartbeating");
  });
}

t.test("timeout - a stage busy in synchronous work past its timeout is stopped: its thread is terminated and the attempt TIMED_OUT", async (t) => {
  const terminated = await metrics("jobmesh_stage_threads_terminated_total", 'stage="enrich"');
  // Seconds of enrich for a 4 MB document; its stage timeout is half a second.
  const done = await waitForJob(hasty.jobs, await submit(hasty, largeProse(3_900_000), "large.txt"), undefined, 120_000);
  t.equal(done.state, JobState.FAILED);
  t.equal(done.error?.code, "STAGE_TIMEOUT");
  t.same(done.attempts.filter((a) => a.stage === Stage.ENRICH).map((a) => a.outcome), [StageAttemptOutcome.TIMED_OUT]);
  t.equal(await metrics("jobmesh_stage_threads_terminated_total", 'stage="enrich"'), terminated + 1, "its thread was terminated");
});

t.test("cancel - a stage busy in synchronous work is stopped: its thread is terminated and the job ends CANCELLED", async (t) => {
  const terminated = await metrics("jobmesh_stage_threads_terminated_total", 'stage="enrich"');
  // Seconds of enrich (keywords, summary, PII) in one synchronous run, with the default timeout.
  const name = await submit(slow, largeProse(3_900_000), "large.txt");
  await untilTrue(async () => {
    const { job } = await slow.jobs.getJob({ name });
    if (isTerminalState(job!.state)) throw new Error(`the job ended before its enrich stage could be cancelled: ${JobState[job!.state]}`);
    return job!.stage === Stage.ENRICH && (await metrics("jobmesh_stage_threads_busy", 'stage="enrich"')) >= 1;
  }, 120_000);
  await slow.jobs.cancelJob({ name });
  const done = await waitForJob(slow.jobs, name, undefined, 60_000);
  t.equal(done.state, JobState.CANCELLED);
  t.same(done.attempts.filter((a) => a.stage === Stage.ENRICH).map((a) => a.outcome), [StageAttemptOutcome.CANCELLED], "the running enrich attempt was cancelled");
  t.equal(await metrics("jobmesh_stage_threads_terminated_total", 'stage="enrich"'), terminated + 1, "its thread was terminated");

  // The pool started a thread in its place: the next job runs every stage.
  const after = await waitForJob(neighbour.jobs, await submit(neighbour, NEIGHBOUR_DOC), undefined, 60_000);
  t.equal(after.state, JobState.SUCCEEDED);
});
