// A job that failed and was retried, as its watchers and its trace see it: WatchJob does not end
// at the first run's JOB_FAILED, and the second run stays in the job's one trace (not in the
// RetryJob request's).
import t from "tap";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { PROSE } from "./stages-fixtures.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({ JOBMESH_ALLOW_LOOPBACK_FETCH: "true" }, { jobs: true, auth: true, workers: 1 });
t.teardown(() => mesh.close());
const client = jobClient(mesh.jobs!.url, await signInAsAdmin(mesh));

/** 404 (a permanent failure: no retries) until `available`, then the document. */
let available = false;
const server = http.createServer((_req, res) => {
  if (!available) return void res.writeHead(404).end("not yet");
  res.writeHead(200, { "content-type": "text/plain" }).end(PROSE);
});
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
t.teardown(() => {
  server.closeAllConnections();
  server.close();
});
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/doc.txt`;

const { job } = await client.createJob({ job: { document: { source: { case: "url", value: url } } } });
const failed = await waitForJob(client, job!.name);
available = true;
const retried = await client.retryJob({ name: job!.name });
const done = await waitForJob(client, job!.name, (j) => j.state === JobState.SUCCEEDED || (j.state === JobState.FAILED && j.updateTime !== retried.job?.updateTime));

t.test("the job failed, was retried and succeeded", async (t) => {
  t.equal(failed.state, JobState.FAILED);
  t.equal(failed.error?.code, "FETCH_REJECTED", failed.error?.message ?? "");
  t.equal(done.state, JobState.SUCCEEDED, done.error?.message ?? "succeeded");
});

t.test("WatchJob from the start - through the first run's JOB_FAILED to the retry's JOB_SUCCEEDED", async (t) => {
  const types: JobEventType[] = [];
  for await (const res of client.watchJob({ name: job!.name })) types.push(res.event!.type);
  t.equal(types.filter((type) => type === JobEventType.JOB_FAILED).length, 1, "the first run's end is shown");
  t.equal(types.at(-1), JobEventType.JOB_SUCCEEDED, "and the watch ends only at the job's latest end");
  t.ok(types.indexOf(JobEventType.JOB_FAILED) < types.lastIndexOf(JobEventType.STAGE_STARTED), "the retry's stages come after it");
});

t.test("WatchJob from just after JOB_FAILED - resumes with the retry", async (t) => {
  const all = [];
  for await (const res of client.watchJob({ name: job!.name })) all.push(res.event!);
  const failedAt = all.find((e) => e.type === JobEventType.JOB_FAILED)!.sequence;
  const resumed = [];
  for await (const res of client.watchJob({ name: job!.name, afterSequence: failedAt })) resumed.push(res.event!);
  t.same(resumed.map((e) => e.sequence), all.filter((e) => e.sequence > failedAt).map((e) => e.sequence));
  t.equal(resumed.at(-1)?.type, JobEventType.JOB_SUCCEEDED);
});

t.test("trace - the retried run's stage spans and events are in the job's trace, not RetryJob's", async (t) => {
  const spans = mesh.spans.getFinishedSpans();
  const retrySpan = spans.find((s) => s.name === "jobmesh.v1.JobService/RetryJob");
  t.ok(retrySpan, "the RetryJob request has its own span");
  t.not(retrySpan?.spanContext().traceId, done.traceId, "in its own trace");
  const ingestSpans = spans.filter((s) => s.name === "stage ingest" && s.attributes["jobmesh.job"] === job!.name.slice("jobs/".length));
  t.equal(ingestSpans.length, 2, "one ingest attempt per run");
  t.same(ingestSpans.map((s) => s.spanContext().traceId), [done.traceId, done.traceId], "both in the job's trace");
  const events = [];
  for await (const res of client.watchJob({ name: job!.name })) events.push(res.event!);
  t.same([...new Set(events.map((e) => e.traceId))], [done.traceId]);
});
