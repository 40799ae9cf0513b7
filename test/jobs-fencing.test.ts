import t from "tap";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { inTransaction } from "../internal/db/index.ts";
import type { StageTask } from "../internal/jobs/stage-task.ts";
import { claimAttempt, completeStage, failStage } from "../internal/jobs/transitions.ts";
import { jobClient, signInAsAdmin } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

// No workers and no relay: the test plays two workers racing for one job.
const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const { db } = mesh.infra;
const topology = mesh.jobs!.topology;

t.test("fencing - a stale worker can never complete a newer attempt", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: "fenced" } } } });
  const task: StageTask = { tenantId: mesh.infra.bootstrapTenantId, jobId: job!.name.slice(5), stageIndex: 0, attempt: 1 };

  t.ok(await inTransaction(db, (tx) => claimAttempt(tx, topology, task, "worker-a")), "worker A claims attempt 1");
  t.notOk(await inTransaction(db, (tx) => claimAttempt(tx, topology, task, "worker-b")), "a duplicate delivery cannot claim it again");

  // Worker A goes silent; the reaper's view: its attempt is abandoned and attempt 2 is queued.
  t.equal(await inTransaction(db, (tx) => failStage(tx, topology, task, { kind: "transient", outcome: StageAttemptOutcome.ABANDONED, code: "WORKER_LOST", message: "lost" })), "committed");
  const second = { ...task, attempt: 2 };
  t.ok(await inTransaction(db, (tx) => claimAttempt(tx, topology, second, "worker-b")), "worker B claims attempt 2");

  // Worker A wakes up and commits its output: nothing changes.
  const before = (await client.getJob({ name: job!.name })).job!;
  t.equal(await inTransaction(db, (tx) => completeStage(tx, topology, task, { output: { stale: true } })), "stale");
  t.equal(await inTransaction(db, (tx) => failStage(tx, topology, task, { kind: "permanent", outcome: StageAttemptOutcome.FAILED, code: "X", message: "x" })), "stale");
  const after = (await client.getJob({ name: job!.name })).job!;
  t.equal(after.etag, before.etag, "the job did not change");
  const { rows } = await db.query("SELECT count(*)::int AS n FROM stage_outputs WHERE job_id = $1", [task.jobId]);
  t.equal(rows[0].n, 0, "the stale output was not stored");

  t.equal(await inTransaction(db, (tx) => completeStage(tx, topology, second, { output: { ok: true } })), "committed", "worker B's commit counts");
  const done = (await client.getJob({ name: job!.name })).job!;
  t.equal(done.state, JobState.QUEUED, "queued for the next stage");
  t.same(done.attempts.map((a) => [a.attempt, a.workerId, a.outcome]), [[1, "worker-a", StageAttemptOutcome.ABANDONED], [2, "worker-b", StageAttemptOutcome.SUCCEEDED]]);
});

t.test("cancel - a CANCELLING job whose worker is lost ends CANCELLED when the reaper takes the attempt", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: "orphaned" } } } });
  const task: StageTask = { tenantId: mesh.infra.bootstrapTenantId, jobId: job!.name.slice(5), stageIndex: 0, attempt: 1 };
  t.ok(await inTransaction(db, (tx) => claimAttempt(tx, topology, task, "worker-gone")));
  t.equal((await client.cancelJob({ name: job!.name })).job?.state, JobState.CANCELLING);
  // The reaper's move for an attempt without heartbeat:
  t.equal(await inTransaction(db, (tx) => failStage(tx, topology, task, { kind: "transient", outcome: StageAttemptOutcome.ABANDONED, code: "WORKER_LOST", message: "lost" })), "cancelled");
  const done = (await client.getJob({ name: job!.name })).job!;
  t.equal(done.state, JobState.CANCELLED);
  t.same(done.attempts.map((a) => a.outcome), [StageAttemptOutcome.CANCELLED]);
  const retried = await client.retryJob({ name: job!.name });
  t.equal(retried.job?.state, JobState.QUEUED, "a cancelled job can be retried");
  t.equal(retried.job?.stage, Stage.INGEST);
});
