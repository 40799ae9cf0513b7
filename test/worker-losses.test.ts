/**
 * A crash loses nothing: an attempt whose worker is killed, stopped past its grace period, or
 * cut off from Postgres while it commits is requeued for another worker, recorded ABANDONED, and
 * does not use one of the stage's attempts.
 *
 * To catch a worker in the middle of its parse attempt, the test holds the commit: it inserts
 * the job's parse output row itself in a transaction it keeps open, so the worker's own insert
 * of that row waits on the lock (its attempt stays RUNNING, heartbeating) until the test lets go.
 */
import t from "tap";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { ChildProcess } from "node:child_process";
import http from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage, type StageConfigSchema } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startWorkers } from "../internal/mesh/servers.ts";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { PROSE } from "./stages-fixtures.ts";
import { startWorkerProcess } from "./support/worker-process.ts";
import { startTestMesh } from "./support/mesh.ts";

// Two child worker processes start here; on a loaded machine that alone takes tens of seconds.
t.setTimeout(300_000);

const overrides = { JOBMESH_ALLOW_LOOPBACK_FETCH: "true", JOBMESH_HEARTBEAT_TTL_MS: "1000", JOBMESH_SHUTDOWN_GRACE_MS: "200" };
// JobService with its relay and reaper in this process; each test starts the workers it needs.
const mesh = await startTestMesh(overrides, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));
const tenantId = mesh.infra.bootstrapTenantId;

const output = { stage: Stage.OUTPUT, options: { options: { case: "output" as const, value: { includeText: true } } } };
async function pipelineOf(id: string, stages: MessageInitShape<typeof StageConfigSchema>[]) {
  await pipelines.createPipeline({ pipelineId: id, pipeline: { config: create(PipelineConfigSchema, { stages: [...stages, output] }) } });
  return `pipelines/${id}`;
}
/** No stage sets a retry policy. */
const noPolicy = await pipelineOf("no-retry-policy", [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }]);
/** Parse (or ingest) has ONE attempt: were a loss counted as one, the job would fail. */
const oneAttempt = { maxAttempts: 1, initialBackoff: durationFromMs(50), maxBackoff: durationFromMs(50) };
const parseOnce = await pipelineOf("parse-once", [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE, retry: oneAttempt }]);
const ingestOnce = await pipelineOf("ingest-once", [{ stage: Stage.INGEST, retry: oneAttempt }, { stage: Stage.DETECT }, { stage: Stage.PARSE }]);

const startChildWorker = (): ChildProcess => startWorkerProcess(t, { ...mesh.isolated.env, ...overrides });

async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The test's own connection to the mesh's database. */
async function connect(): Promise<pg.Client> {
  const db = new pg.Client({ connectionString: mesh.isolated.databaseUrl });
  await db.connect();
  t.teardown(() => db.end().catch(() => {}));
  return db;
}

/** Holds the commit of the job's parse output until `release` (see the file comment). */
async function holdParseCommit(jobId: string) {
  const db = await connect();
  await db.query("BEGIN");
  await db.query("INSERT INTO stage_outputs (tenant_id, job_id, stage, output) VALUES ($1, $2, $3, 'null')", [tenantId, jobId, Stage.PARSE]);
  const { rows } = await db.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
  const holder = rows[0].pid;
  /** Backends of this database (but the holder's) waiting on a lock: a commit held here. */
  const waiting = async () =>
    (await mesh.infra.db.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> $1 AND wait_event_type = 'Lock'`,
      [holder],
    )).rows.map((r) => r.pid);
  /** Ends the waiting backends' connections: the statement they run fails, as on a network cut. */
  const terminateWaiting = async () => {
    const pids = await waiting();
    for (const pid of pids) await mesh.infra.db.query("SELECT pg_terminate_backend($1)", [pid]);
    return pids.length;
  };
  return { waiting, terminateWaiting, release: () => db.query("ROLLBACK") };
}

async function parseAttempts(jobId: string) {
  const { rows } = await mesh.infra.db.query<{ attempt: number; outcome: StageAttemptOutcome }>(
    "SELECT attempt, outcome FROM stage_attempts WHERE tenant_id = $1 AND job_id = $2 AND stage = $3 ORDER BY attempt",
    [tenantId, jobId, Stage.PARSE],
  );
  return rows;
}

async function createJob(pipeline: string, text: string) {
  const { job } = await client.createJob({ job: { pipeline, document: { source: { case: "text", value: text } } } });
  return { name: job!.name, id: job!.name.slice("jobs/".length) };
}

t.test("no retry policy, worker SIGKILLed during its parse attempt - the job SUCCEEDS on another worker", async (t) => {
  const job = await createJob(noPolicy, `${PROSE}\n\nKilled while parsing.`);
  const held = await holdParseCommit(job.id);
  const child = startChildWorker();
  // The child ran ingest and detect, parsed, and now waits to commit: its attempt is RUNNING.
  await waitFor("the child's parse attempt to wait at its commit", async () =>
    (await held.waiting()).length > 0 && (await parseAttempts(job.id)).map((a) => a.outcome).join() === String(StageAttemptOutcome.RUNNING));
  child.kill("SIGKILL");
  await new Promise((resolve) => child.once("exit", resolve));
  // Its backend would still finish the statement once the lock is free: end it, as a crash of the
  // host would, before letting go.
  await waitFor("the dead worker's backend to end", async () => (await held.terminateWaiting()) === 0 && (await held.waiting()).length === 0);
  await held.release();

  const worker = await startWorkers(mesh.infra, { workerId: "survivor" });
  t.teardown(() => worker.stop(1000));
  const done = await waitForJob(client, job.name, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const parse = done.attempts.filter((a) => a.stage === Stage.PARSE);
  t.same(parse.map((a) => [a.attempt, a.outcome]), [[1, StageAttemptOutcome.ABANDONED], [2, StageAttemptOutcome.SUCCEEDED]]);
  t.equal(parse[0]?.error?.code, "WORKER_LOST");
  t.equal(parse[0]?.error?.transient, true);
  t.equal(parse[1]?.workerId, "survivor", "another worker took over");
  t.equal(done.attempts.filter((a) => a.outcome !== StageAttemptOutcome.SUCCEEDED).length, 1, "the lost attempt is the only one that did not succeed");
  const { result } = await client.getJobResult({ name: `${job.name}/result` });
  t.match(result?.text, /Killed while parsing\.$/);
});

t.test("a database error while a worker commits - the attempt is requeued as a loss, not a stage failure", async (t) => {
  // Parse has one attempt: counted as the stage's failure, the lost commit would fail the job.
  const job = await createJob(parseOnce, `${PROSE}\n\nCut off while committing.`);
  const held = await holdParseCommit(job.id);
  const worker = await startWorkers(mesh.infra, { workerId: "cut-off" });
  t.teardown(() => worker.stop(1000));
  // Every statement the worker commits the attempt with loses its connection (the group
  // statement, then the locking path), until the worker gives the attempt up: its span ends.
  const attemptEnded = () =>
    mesh.spans.getFinishedSpans().some((s) => s.name === "stage parse" && s.attributes["jobmesh.job"] === job.id && s.attributes["jobmesh.attempt"] === 1);
  let cut = 0;
  await waitFor("the worker to give up committing", async () => {
    if (attemptEnded()) return true;
    cut += await held.terminateWaiting();
    return false;
  });
  t.ok(cut >= 1, `the worker's commit lost its connection (${cut} statement(s))`);
  t.same((await parseAttempts(job.id)).map((a) => a.outcome), [StageAttemptOutcome.RUNNING], "nothing was committed: the attempt is still RUNNING");
  await held.release();

  // Its heartbeat stopped with the attempt: the reaper requeues it, and the worker runs it again.
  const done = await waitForJob(client, job.name, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const parse = done.attempts.filter((a) => a.stage === Stage.PARSE);
  t.same(parse.map((a) => [a.attempt, a.outcome]), [[1, StageAttemptOutcome.ABANDONED], [2, StageAttemptOutcome.SUCCEEDED]]);
  t.equal(parse[0]?.error?.code, "WORKER_LOST");
  const { result } = await client.getJobResult({ name: `${job.name}/result` });
  t.match(result?.text, /Cut off while committing\.$/);
});

t.test("SIGTERM past the grace period - the worker gives the attempt up at once, and another worker runs it", async (t) => {
  /** The first request never gets an answer (the stage is still running at SIGTERM); later ones get the document. */
  let requests = 0;
  const server = http.createServer((_req, res) => {
    requests++;
    if (requests > 1) res.writeHead(200, { "content-type": "text/plain" }).end(PROSE);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/doc.txt`;
  // Ingest has one attempt: were the stop counted as its failure, the job would fail.
  const { job } = await client.createJob({ job: { pipeline: ingestOnce, document: { source: { case: "url", value: url } } } });
  const child = startChildWorker();
  await waitFor("the child worker to start fetching", async () => requests > 0);
  child.kill("SIGTERM");
  const code = await new Promise<number | null>((resolve) => child.once("exit", (exitCode) => resolve(exitCode)));
  t.equal(code, 0, "the worker exits cleanly after its 200 ms grace");

  // Already given up when the process ended: no heartbeat had to lapse, no reaper was needed.
  const stopped = (await client.getJob({ name: job!.name })).job!;
  t.equal(stopped.state, JobState.QUEUED, "requeued at once");
  t.same(stopped.attempts.map((a) => [a.stage, a.attempt, a.outcome, a.error?.code]), [[Stage.INGEST, 1, StageAttemptOutcome.ABANDONED, "WORKER_STOPPED"]]);

  const worker = await startWorkers(mesh.infra);
  t.teardown(() => worker.stop(1000));
  const done = await waitForJob(client, job!.name, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  t.same(done.attempts.filter((a) => a.stage === Stage.INGEST).map((a) => [a.attempt, a.outcome]), [[1, StageAttemptOutcome.ABANDONED], [2, StageAttemptOutcome.SUCCEEDED]]);
  t.equal(requests, 2);
});
