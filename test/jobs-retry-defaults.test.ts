/**
 * A pipeline whose stages set no retry policy runs with RetryPolicy's documented defaults
 * (pipelines.proto: max_attempts 3, initial_backoff 1s, jitter 0.2): a transient failure is
 * retried, up to three attempts in all.
 */
import t from "tap";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
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

// No stage sets `retry` (nor `timeout`).
const config = create(PipelineConfigSchema, {
  stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT, options: { options: { case: "output", value: { includeText: true } } } }],
});
await pipelines.createPipeline({ pipelineId: "no-retry-policy", pipeline: { config } });
const pipeline = "pipelines/no-retry-policy";

/** A loopback server: 503 (transient: fetch_failed) for the first `failures` requests, then the document. */
async function flaky(failures: number) {
  const hits = { n: 0 };
  const server = http.createServer((_req, res) => {
    hits.n++;
    if (hits.n <= failures) return void res.writeHead(503).end("busy");
    res.writeHead(200, { "content-type": "text/plain" }).end(PROSE);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/doc.txt`, hits };
}

const ms = (ts: { seconds: bigint; nanos: number } | undefined) => Number(ts!.seconds) * 1000 + ts!.nanos / 1e6;

t.test("no retry policy, one 503 - retried after the default backoff, and the job SUCCEEDS", async (t) => {
  const source = await flaky(1);
  const { job } = await client.createJob({ job: { pipeline, document: { source: { case: "url", value: source.url } } } });
  const done = await waitForJob(client, job!.name, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const ingest = done.attempts.filter((a) => a.stage === Stage.INGEST);
  t.same(ingest.map((a) => [a.attempt, a.outcome]), [[1, StageAttemptOutcome.FAILED], [2, StageAttemptOutcome.SUCCEEDED]]);
  t.equal(ingest[0]?.error?.code, "FETCH_FAILED");
  t.equal(ingest[0]?.error?.transient, true, "the failure was to be retried");
  // initial_backoff 1s with jitter 0.2: at least 800 ms between the attempts.
  const gap = ms(ingest[1]!.startTime) - ms(ingest[0]!.endTime);
  t.ok(gap >= 800, `the retry waited the default initial backoff (${Math.round(gap)} ms)`);
  t.equal(source.hits.n, 2);
  const { result } = await client.getJobResult({ name: `${job!.name}/result` });
  t.equal(result?.text, PROSE);
});

t.test("no retry policy, always 503 - FAILED after exactly 3 attempts in all", async (t) => {
  const source = await flaky(Number.POSITIVE_INFINITY);
  const { job } = await client.createJob({ job: { pipeline, document: { source: { case: "url", value: source.url } } } });
  const done = await waitForJob(client, job!.name, undefined, 60_000);
  t.equal(done.state, JobState.FAILED);
  t.equal(done.error?.code, "FETCH_FAILED");
  t.equal(done.error?.transient, false, "no attempt left: not to be retried");
  t.same(done.attempts.map((a) => [a.stage, a.attempt, a.outcome]), [
    [Stage.INGEST, 1, StageAttemptOutcome.FAILED],
    [Stage.INGEST, 2, StageAttemptOutcome.FAILED],
    [Stage.INGEST, 3, StageAttemptOutcome.FAILED],
  ]);
  t.equal(source.hits.n, 3);
});
