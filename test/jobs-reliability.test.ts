import t from "tap";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { PROSE } from "./stages-fixtures.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({ JOBMESH_ALLOW_LOOPBACK_FETCH: "true" }, { jobs: true, auth: true, workers: 1 });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));

/** A pipeline whose ingest retries fast: `attempts` attempts, 50 ms backoff, `timeoutMs` per attempt. */
async function fastPipeline(id: string, attempts: number, timeoutMs = 10_000) {
  const retry = { maxAttempts: attempts, initialBackoff: durationFromMs(50), maxBackoff: durationFromMs(200), backoffMultiplier: 2, jitter: 0.2 };
  const config = create(PipelineConfigSchema, {
    stages: [
      { stage: Stage.INGEST, retry, timeout: durationFromMs(timeoutMs) },
      { stage: Stage.DETECT },
      { stage: Stage.PARSE },
      { stage: Stage.OUTPUT, options: { options: { case: "output", value: { includeText: true } } } },
    ],
  });
  await pipelines.createPipeline({ pipelineId: id, pipeline: { config } });
  return `pipelines/${id}`;
}

/** A loopback HTTP server answering with `handler`; `requests` counts what it received. */
async function serve(handler: http.RequestListener) {
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const urlDoc = (url: string) => ({ source: { case: "url" as const, value: url } });

t.test("transient failure - a flaky source is retried with backoff and then succeeds", async (t) => {
  const pipeline = await fastPipeline("flaky", 4);
  let hits = 0;
  const base = await serve((_req, res) => {
    hits++;
    if (hits <= 2) {
      res.writeHead(503).end("busy");
      return;
    }
    res.writeHead(200, { "content-type": "text/plain" }).end(PROSE);
  });
  const { job } = await client.createJob({ job: { pipeline, document: urlDoc(`${base}/doc.txt`) } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  t.equal(hits, 3);
  const ingest = done.attempts.filter((a) => a.stage === Stage.INGEST);
  t.same(ingest.map((a) => [a.attempt, a.outcome]), [[1, StageAttemptOutcome.FAILED], [2, StageAttemptOutcome.FAILED], [3, StageAttemptOutcome.SUCCEEDED]]);
  t.equal(ingest[0]?.error?.code, "FETCH_FAILED");
  t.equal(ingest[0]?.error?.transient, true, "a failure that will be retried is transient");
  const gap = Number(ingest[1]!.startTime!.seconds * 1000n) + ingest[1]!.startTime!.nanos / 1e6 - (Number(ingest[0]!.endTime!.seconds * 1000n) + ingest[0]!.endTime!.nanos / 1e6);
  t.ok(gap >= 35, `the retry waited its backoff (${gap} ms)`);
  const { result } = await client.getJobResult({ name: `${job!.name}/result` });
  t.equal(result?.text, PROSE);
});

t.test("transient failure - attempts exhausted fail the job as a dead letter", async (t) => {
  const pipeline = await fastPipeline("always-down", 2);
  let hits = 0;
  const base = await serve((_req, res) => {
    hits++;
    res.writeHead(502).end();
  });
  const { job } = await client.createJob({ job: { pipeline, document: urlDoc(`${base}/x`) } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.FAILED);
  t.equal(hits, 2);
  t.equal(done.error?.code, "FETCH_FAILED");
  t.equal(done.error?.transient, false, "no retry is left");
});

t.test("permanent failure - a 404 is not retried", async (t) => {
  const pipeline = await fastPipeline("perm", 4);
  let hits = 0;
  const base = await serve((_req, res) => {
    hits++;
    res.writeHead(404).end();
  });
  const { job } = await client.createJob({ job: { pipeline, document: urlDoc(`${base}/missing`) } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.FAILED);
  t.equal(hits, 1);
  t.equal(done.attempts.length, 1);
  t.equal(done.error?.transient, false);
});

/** A server that holds every request open and reports when one arrives and when it is dropped. */
async function hangingServer() {
  const arrived: number[] = [];
  const closed: number[] = [];
  const base = await serve((req) => {
    arrived.push(Date.now());
    req.socket.once("close", () => closed.push(Date.now()));
  });
  return { base, arrived, closed };
}

async function until(check: () => boolean, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test("cancel - a running stage sees its AbortSignal in under a second", async (t) => {
  const pipeline = await fastPipeline("cancellable", 3);
  const server = await hangingServer();
  const { job } = await client.createJob({ job: { pipeline, document: urlDoc(`${server.base}/slow`) } });
  await until(() => server.arrived.length === 1);
  const cancelAt = Date.now();
  const { job: cancelling } = await client.cancelJob({ name: job!.name });
  t.ok(cancelling?.state === JobState.CANCELLING || cancelling?.state === JobState.CANCELLED);
  await until(() => server.closed.length === 1, 5000);
  const seenMs = server.closed[0]! - cancelAt;
  t.ok(seenMs < 1000, `the fetch was aborted ${seenMs} ms after CancelJob`);
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.CANCELLED);
  t.same(done.attempts.map((a) => a.outcome), [StageAttemptOutcome.CANCELLED]);
  t.equal(server.arrived.length, 1, "a cancelled stage is not retried");
  const events = [];
  for await (const res of client.watchJob({ name: job!.name })) events.push(res.event!.type);
  t.same(events.slice(-2), [JobEventType.JOB_CANCELLING, JobEventType.JOB_CANCELLED]);
});

t.test("timeout - a stage past its timeout is stopped and recorded as TIMED_OUT", async (t) => {
  const pipeline = await fastPipeline("impatient", 1, 300);
  const server = await hangingServer();
  const { job } = await client.createJob({ job: { pipeline, document: urlDoc(`${server.base}/slow`) } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.FAILED);
  t.equal(done.error?.code, "STAGE_TIMEOUT");
  t.same(done.attempts.map((a) => a.outcome), [StageAttemptOutcome.TIMED_OUT]);
  await until(() => server.closed.length === 1, 2000);
  t.ok(server.closed[0]! - server.arrived[0]! < 1500, "the request was dropped when the timeout fired");
});

t.test("duplicate delivery - redelivered stage tasks have no effect", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: PROSE } } } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.SUCCEEDED);
  const jobId = job!.name.slice("jobs/".length);
  const count = async () => {
    const { rows } = await mesh.infra.db.query<{ events: number; attempts: number; results: number }>(
      `SELECT (SELECT count(*)::int FROM job_events WHERE job_id = $1) AS events,
              (SELECT count(*)::int FROM stage_attempts WHERE job_id = $1) AS attempts,
              (SELECT count(*)::int FROM job_results WHERE job_id = $1) AS results`,
      [jobId],
    );
    return rows[0];
  };
  const before = await count();
  const ns = mesh.isolated.namespace;
  const stages = ["ingest", "detect", "parse", "enrich", "output"];
  for (const [stageIndex, stage] of stages.entries()) {
    for (let copy = 0; copy < 2; copy++) {
      await mesh.infra.bus.js.publish(`${ns}.work.${stage}.normal`, JSON.stringify({ tenantId: mesh.infra.bootstrapTenantId, jobId, stageIndex, attempt: 1 }));
    }
  }
  const consumer = "work_normal";
  await (async () => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const info = await mesh.infra.bus.jsm.consumers.info(`${ns}_work`, consumer);
      if (info.num_pending === 0 && info.num_ack_pending === 0) return;
      if (Date.now() > deadline) throw new Error("duplicates not consumed");
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  t.same(await count(), before, "no new events, attempts or results");
  t.equal((await client.getJob({ name: job!.name })).job?.state, JobState.SUCCEEDED);
});
