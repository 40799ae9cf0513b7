import t from "tap";
import { fromBinary } from "@bufbuild/protobuf";
import { JobEventSchema, JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { Priority, StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { groupCommit } from "../internal/db/group-commit.ts";
import { inTransaction } from "../internal/db/index.ts";
import { claimMany, completeMany, type ClaimedRow } from "../internal/jobs/fast-path.ts";
import type { StageTask } from "../internal/jobs/stage-task.ts";
import { completeStage } from "../internal/jobs/transitions.ts";
import { jobClient, signInAsAdmin } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

// No workers and no relay: the test plays the worker's group statements itself.
const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const { db } = mesh.infra;
const topology = mesh.jobs!.topology;

/** The stage task CreateJob queued for a job, as a worker receives it. */
async function firstTask(jobName: string): Promise<StageTask> {
  const { rows } = await db.query<{ payload: Buffer }>(
    "SELECT payload FROM outbox WHERE subject LIKE '%.work.%' AND convert_from(payload, 'UTF8')::jsonb->>'jobId' = $1",
    [jobName.slice(5)],
  );
  return JSON.parse(rows[0].payload.toString()) as StageTask;
}

const createText = async (text: string) => (await client.createJob({ job: { document: { source: { case: "text", value: text } } } })).job!;

t.test("fast path - a group claim claims each job once, records the attempt and the stage_started event", async (t) => {
  const jobs = await Promise.all(["a", "b", "c"].map(createText));
  const tasks = await Promise.all(jobs.map((j) => firstTask(j.name)));
  t.ok(tasks.every((task) => task.version === "1" && task.eventSeq === "1" && task.stage === Stage.INGEST), "tasks carry the job's version, event sequence and stage");

  // The third request repeats the first task: a duplicate delivery within one group.
  const claimed = await claimMany(db, topology, [...tasks, tasks[0]].map((task) => ({ task, headers: {} })), "worker-fast", 0);
  t.equal(claimed.filter(Boolean).length, 3, "three jobs claimed");
  t.notOk(claimed[3], "the duplicate in the same group is left to the locking path");
  t.equal(claimed[0]!.row.state, JobState.RUNNING);
  t.equal(claimed[0]!.inputs.sourceText, "a", "ingest's inline document comes with the claim");

  const again = await claimMany(db, topology, [{ task: tasks[1], headers: {} }], "worker-late", 0);
  t.notOk(again[0], "a later delivery of a claimed task claims nothing");

  const job = (await client.getJob({ name: jobs[0].name })).job!;
  t.equal(job.state, JobState.RUNNING);
  t.same(job.attempts.map((a) => [a.attempt, a.workerId, a.outcome]), [[1, "worker-fast", StageAttemptOutcome.RUNNING]]);
  const { rows } = await db.query<{ sequence: string; event: Buffer }>("SELECT sequence, event FROM job_events WHERE job_id = $1 ORDER BY sequence", [tasks[0].jobId]);
  const events = rows.map((r) => fromBinary(JobEventSchema, r.event));
  t.same(events.map((e) => [e.type, Number(e.sequence), e.state]), [
    [JobEventType.JOB_CREATED, 1, JobState.QUEUED],
    [JobEventType.STAGE_STARTED, 2, JobState.RUNNING],
  ]);
});

t.test("fast path - a group commit moves each job on; a job changed since its claim is left to the locking path", async (t) => {
  const [kept, cancelled] = await Promise.all(["kept", "cancelled"].map(createText));
  const tasks = await Promise.all([kept, cancelled].map((j) => firstTask(j.name)));
  const claimed = await claimMany(db, topology, tasks.map((task) => ({ task, headers: {} })), "worker-fast", 0);
  t.equal((await client.cancelJob({ name: cancelled.name })).job?.state, JobState.CANCELLING, "one job is cancelled while its stage runs");

  const done = { output: { size: 4 }, bytes: new TextEncoder().encode("kept"), patch: { size_bytes: 4, sha256: "ab" } };
  const committed = await completeMany(db, topology, tasks.map((task, i) => ({ task, row: claimed[i]!.row, done, headers: {} })), 0);
  t.ok(committed[0], "the unchanged job is committed");
  t.equal(committed[0]!.outbox.length, 2, "its stage_succeeded event and the next stage's task");
  const next = JSON.parse(committed[0]!.outbox[1].payload.toString()) as StageTask;
  t.match(next, { stageIndex: 1, attempt: 1, stage: Stage.DETECT, version: "3", eventSeq: "3" });
  t.notOk(committed[1], "the cancelled job's version moved on: not committed here");

  const after = (await client.getJob({ name: kept.name })).job!;
  t.equal(after.state, JobState.QUEUED);
  t.equal(after.stage, Stage.DETECT);
  t.equal(after.document?.sizeBytes, 4n);
  t.same(after.attempts.map((a) => a.outcome), [StageAttemptOutcome.SUCCEEDED]);

  // The locking path decides the cancelled one.
  t.equal(await inTransaction(db, (tx) => completeStage(tx, topology, tasks[1], done)), "cancelled");
  t.equal((await client.getJob({ name: cancelled.name })).job?.state, JobState.CANCELLED);

  // A second commit of the same attempt changes nothing.
  const twice = await completeMany(db, topology, [{ task: tasks[0], row: claimed[0]!.row, done, headers: {} }], 0);
  t.notOk(twice[0], "a repeated commit is not applied");
});

t.test("fast path - the last stage stores the result and ends the job SUCCEEDED", async (t) => {
  // Walk a job through its stages with the group statements, as a worker would.
  const job = await createText("walked");
  let task: StageTask | undefined = await firstTask(job.name);
  let row: ClaimedRow | undefined;
  let stages = 0;
  while (task) {
    const [claimed] = await claimMany(db, topology, [{ task, headers: {} }], "walker", 0);
    t.ok(claimed, `stage ${task.stageIndex} claimed`);
    row = claimed!.row;
    const expireTime = new Date(Date.now() + 60_000);
    const result = { summary: { pageCount: 0 } as never, inlineJson: new TextEncoder().encode('{"text":"walked"}'), size: 17, sha256: "cd", expireTime };
    const [committed] = await completeMany(db, topology, [{ task, row, done: { output: {}, result }, headers: {} }], 0);
    t.ok(committed, `stage ${task.stageIndex} committed`);
    const work = committed!.outbox.find((o) => o.subject.includes(".work."));
    task = work && (JSON.parse(work.payload.toString()) as StageTask);
    stages++;
  }
  t.equal(stages, 5, "document-default has five stages");
  const done = (await client.getJob({ name: job.name })).job!;
  t.equal(done.state, JobState.SUCCEEDED);
  t.ok(done.resultExpireTime);
  const { rows } = await db.query<{ inline_json: Buffer }>("SELECT inline_json FROM job_results WHERE job_id = $1", [job.name.slice(5)]);
  t.equal(rows[0]?.inline_json.toString(), '{"text":"walked"}');
  const events = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM job_events WHERE job_id = $1", [job.name.slice(5)]);
  t.equal(events.rows[0].n, 12, "job_created, 5 × (started, succeeded), job_succeeded");
});

t.test("fast path - a commit can claim the next stage for its worker: no task queued, the stage starts at once", async (t) => {
  const job = await createText("continued");
  const task = await firstTask(job.name);
  const [claimed] = await claimMany(db, topology, [{ task, headers: {} }], "worker-c", 0);
  const bytes = new TextEncoder().encode("continued");
  const done = { output: { size: 9, filename: "x.txt" }, bytes, patch: { size_bytes: 9, sha256: "ef" } };
  const [committed] = await completeMany(db, topology, [{ task, row: claimed!.row, done, headers: {}, inputs: claimed!.inputs, continueAs: "worker-c" }], 0);
  t.ok(committed?.continued, "the next stage is claimed");
  t.same(committed!.outbox.map((o) => o.subject.split(".").slice(-1)[0]), ["stage_succeeded", "stage_started"], "two events, no work task");
  const next = committed!.continued!;
  t.match(next.task, { stageIndex: 1, attempt: 1 });
  t.equal(next.row.state, JobState.RUNNING);
  t.equal(next.row.size_bytes, "9");
  t.same(next.inputs.outputs.get(Stage.INGEST), { size: 9, filename: "x.txt" }, "the next stage reads what this one made");
  t.same(next.inputs.ingestBytes && [...next.inputs.ingestBytes], [...bytes]);

  const running = (await client.getJob({ name: job.name })).job!;
  t.equal(running.state, JobState.RUNNING);
  t.equal(running.stage, Stage.DETECT);
  t.same(running.attempts.map((a) => [a.stage, a.workerId, a.outcome]), [
    [Stage.INGEST, "worker-c", StageAttemptOutcome.SUCCEEDED],
    [Stage.DETECT, "worker-c", StageAttemptOutcome.RUNNING],
  ]);
  const { rows } = await db.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM outbox WHERE subject LIKE '%.work.%' AND convert_from(payload, 'UTF8')::jsonb->>'jobId' = $1",
    [task.jobId],
  );
  t.equal(rows[0].n, 1, "only the ingest task CreateJob queued: no detect task");

  // The continued stage commits like any other: its row carries the version its claim left.
  const [second] = await completeMany(db, topology, [{ task: next.task, row: next.row, done: { output: { mediaType: "text/plain" } }, headers: {}, inputs: next.inputs }], 0);
  t.ok(second, "the continued stage commits on the group path");
  t.equal((await client.getJob({ name: job.name })).job?.stage, Stage.PARSE);
});

t.test("group commit - items arriving while a write runs go together into the next one", async (t) => {
  const groups: number[][] = [];
  let release: (() => void) | undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const writer = groupCommit<number, number>(async (items) => {
    groups.push(items);
    if (groups.length === 1) await gate;
    if (items.includes(13)) throw new Error("unlucky");
    return items.map((i) => i * 2);
  }, { maxItems: 3 });
  const first = writer.add(1);
  await new Promise((r) => setImmediate(r));
  const rest = [2, 3, 4, 13].map((i) => writer.add(i));
  release!();
  t.equal(await first, 2);
  const settled = await Promise.allSettled(rest);
  t.same(groups, [[1], [2, 3, 4], [13]], "one write at a time; the waiting items grouped, at most maxItems each");
  t.same(settled.map((s) => (s.status === "fulfilled" ? s.value : "rejected")), [4, 6, 8, "rejected"], "a failed write rejects only its own group");
  await writer.drain();
});

t.test("fast path - rows whose writer died before publishing are published by the relay after the grace period", async (t) => {
  // A mesh of its own with the relay running and no workers: this test is the worker that dies.
  const other = await startTestMesh({}, { jobs: true, auth: true, workers: 0 });
  t.teardown(() => other.close());
  const { db: otherDb, bus } = other.infra;
  const topology = other.jobs!.topology;
  const outboxRows = async () => (await otherDb.query<{ n: number }>("SELECT count(*)::int AS n FROM outbox")).rows[0].n;
  const until = async (what: () => Promise<boolean>) => {
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && !(await what()); ) await new Promise((r) => setTimeout(r, 50));
  };

  const otherClient = jobClient(other.jobs!.url, await signInAsAdmin(other));
  await otherClient.createJob({ job: { document: { source: { case: "text", value: "orphaned rows" } } } });
  await until(async () => (await outboxRows()) === 0);
  t.equal(await outboxRows(), 0, "CreateJob published its rows and deleted them itself");

  // Take the task and claim it as a worker would, with a short grace, then die before publishing.
  const consumer = await bus.js.consumers.get(topology.workStream, topology.workConsumer(Priority.NORMAL));
  const msg = await consumer.next({ expires: 5_000 });
  const task = JSON.parse(new TextDecoder().decode(msg!.data)) as StageTask;
  const [claimed] = await claimMany(otherDb, topology, [{ task, headers: {} }], "worker-dies", 0.3);
  t.ok(claimed);
  t.equal(await outboxRows(), 1, "stage_started waits in the outbox");

  const subject = `${other.isolated.namespace}.events.${other.infra.bootstrapTenantId}.stage_started`;
  const stored = async () => {
    const info = await bus.jsm.streams.info(`${other.isolated.namespace}_events`, { subjects_filter: subject });
    return ((info.state.subjects ?? {}) as Record<string, number>)[subject] ?? 0;
  };
  await until(async () => (await stored()) > 0);
  t.equal(await stored(), 1, "the relay published the orphaned stage_started event");
  await until(async () => (await outboxRows()) === 0);
  t.equal(await outboxRows(), 0, "and deleted it");
});

t.test("group commit - with two writes in flight the next group does not wait for the first", async (t) => {
  const started: number[][] = [];
  let release: (() => void) | undefined;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const writer = groupCommit<number, number>(async (items) => {
    started.push(items);
    if (started.length === 1) await gate;
    return items;
  }, { maxItems: 10, maxInFlight: 2 });
  const first = writer.add(1);
  await new Promise((r) => setImmediate(r));
  const second = Promise.all([2, 3].map((i) => writer.add(i)));
  t.same(await second, [2, 3], "the second group was written while the first was still in flight");
  t.same(started, [[1], [2, 3]]);
  release!();
  t.equal(await first, 1);
  await writer.drain();
});
