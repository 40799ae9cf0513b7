/**
 * Attempts lost with their worker (the reaper's WORKER_LOST) or their thread (STAGE_CRASHED) are
 * counted apart from the stage's own failures: they requeue the task without using one of the
 * stage's max_attempts, up to JOBMESH_MAX_STAGE_LOSSES per stage, and then the job fails saying
 * why. The test plays the workers: it claims attempts and never heartbeats, and runs the reaper.
 */
import t from "tap";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome, type Job } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { inTransaction } from "../internal/db/index.ts";
import type { StageTask } from "../internal/jobs/stage-task.ts";
import { claimAttempt, failStage } from "../internal/jobs/transitions.ts";
import { jobClient, signInAsAdmin } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

const maxLosses = 4;
// No workers and no relay: nothing runs the tasks but this test.
const mesh = await startTestMesh({ JOBMESH_HEARTBEAT_TTL_MS: "500", JOBMESH_MAX_STAGE_LOSSES: String(maxLosses) }, { jobs: true, auth: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));
const { db } = mesh.infra;
const topology = mesh.jobs!.topology;

/** A pipeline whose ingest has `maxAttempts` attempts and short backoffs. */
async function pipelineWith(id: string, maxAttempts: number) {
  const retry = { maxAttempts, initialBackoff: durationFromMs(10), maxBackoff: durationFromMs(10) };
  const config = create(PipelineConfigSchema, { stages: [{ stage: Stage.INGEST, retry }, { stage: Stage.OUTPUT }] });
  await pipelines.createPipeline({ pipelineId: id, pipeline: { config } });
  return `pipelines/${id}`;
}

async function newJob(pipeline: string): Promise<{ name: string; task: (attempt: number) => StageTask }> {
  const { job } = await client.createJob({ job: { pipeline, document: { source: { case: "text", value: "lost again" } } } });
  const jobId = job!.name.slice("jobs/".length);
  return { name: job!.name, task: (attempt) => ({ tenantId: mesh.infra.bootstrapTenantId, jobId, stageIndex: 0, attempt }) };
}

const getJob = async (name: string) => (await client.getJob({ name })).job!;

/** Claims the attempt as a worker that never heartbeats, then runs the reaper until it takes it. */
async function loseToReaper(name: string, task: StageTask, workerId: string): Promise<Job> {
  const claimed = await inTransaction(db, (tx) => claimAttempt(tx, topology, task, workerId));
  if (!claimed) throw new Error(`attempt ${task.attempt} could not be claimed`);
  const deadline = Date.now() + 30_000;
  for (;;) {
    // The reaper leaves attempts younger than one heartbeat TTL alone; the jobs process's own
    // reaper runs too, and either one takes it.
    await mesh.jobs!.reaper.reap();
    const job = await getJob(name);
    if (job.state !== JobState.RUNNING) return job;
    if (Date.now() > deadline) throw new Error(`attempt ${task.attempt} was never reaped`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test("a stage that loses its worker every time - FAILED after exactly JOBMESH_MAX_STAGE_LOSSES losses, saying so", async (t) => {
  // One attempt: were a loss counted as one, the first would fail the job.
  const job = await newJob(await pipelineWith("one-attempt", 1));
  for (let attempt = 1; attempt < maxLosses; attempt++) {
    const after = await loseToReaper(job.name, job.task(attempt), `ghost-${attempt}`);
    t.equal(after.state, JobState.QUEUED, `loss ${attempt} requeues the stage`);
    t.equal(after.attempts.at(-1)?.error?.transient, true);
  }
  const failed = await loseToReaper(job.name, job.task(maxLosses), `ghost-${maxLosses}`);
  t.equal(failed.state, JobState.FAILED);
  t.equal(failed.error?.code, "WORKER_LOST");
  t.equal(failed.error?.message, `the stage's worker was lost ${maxLosses} times; last: the worker running this stage stopped heartbeating`);
  t.equal(failed.error?.transient, false);
  t.same(
    failed.attempts.map((a) => [a.attempt, a.workerId, a.outcome]),
    Array.from({ length: maxLosses }, (_, i) => [i + 1, `ghost-${i + 1}`, StageAttemptOutcome.ABANDONED]),
    "every loss recorded ABANDONED, one per worker",
  );

  // RetryJob starts the stage over: a fresh budget of losses.
  t.equal((await client.retryJob({ name: job.name })).job?.state, JobState.QUEUED);
  const again = await loseToReaper(job.name, job.task(maxLosses + 1), "ghost-after-retry");
  t.equal(again.state, JobState.QUEUED, "after RetryJob, a loss requeues the stage again");
});

t.test("losses do not use a stage's attempts - after two losses, both of its 2 attempts remain", async (t) => {
  const job = await newJob(await pipelineWith("two-attempts", 2));
  // A thread that died (the thread pool's loss) ...
  t.ok(await inTransaction(db, (tx) => claimAttempt(tx, topology, job.task(1), "worker-a")));
  t.equal(await inTransaction(db, (tx) => failStage(tx, topology, job.task(1), { kind: "lost", outcome: StageAttemptOutcome.FAILED, code: "STAGE_CRASHED", message: "the stage's thread died" })), "committed");
  t.equal((await getJob(job.name)).state, JobState.QUEUED);
  // ... and a worker that was lost.
  t.equal((await loseToReaper(job.name, job.task(2), "worker-b")).state, JobState.QUEUED);
  // Now the stage's own failures: the first is retried, the second ends the job.
  const transient = { kind: "transient" as const, outcome: StageAttemptOutcome.FAILED, code: "FETCH_FAILED", message: "503" };
  t.ok(await inTransaction(db, (tx) => claimAttempt(tx, topology, job.task(3), "worker-c")));
  t.equal(await inTransaction(db, (tx) => failStage(tx, topology, job.task(3), transient)), "committed");
  const retried = await getJob(job.name);
  t.equal(retried.state, JobState.QUEUED, "the stage's first own failure is retried: losses used none of its attempts");
  t.ok(await inTransaction(db, (tx) => claimAttempt(tx, topology, job.task(4), "worker-d")));
  t.equal(await inTransaction(db, (tx) => failStage(tx, topology, job.task(4), transient)), "committed");
  const failed = await getJob(job.name);
  t.equal(failed.state, JobState.FAILED, "its second own failure uses its last attempt");
  t.equal(failed.error?.code, "FETCH_FAILED");
  t.equal(failed.error?.message, "503");
  t.same(failed.attempts.map((a) => [a.attempt, a.outcome, a.error?.code]), [
    [1, StageAttemptOutcome.ABANDONED, "STAGE_CRASHED"],
    [2, StageAttemptOutcome.ABANDONED, "WORKER_LOST"],
    [3, StageAttemptOutcome.FAILED, "FETCH_FAILED"],
    [4, StageAttemptOutcome.FAILED, "FETCH_FAILED"],
  ], "a lost attempt is recorded ABANDONED, whatever outcome its reporter gave");
});
