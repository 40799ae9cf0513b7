// Tracing with no exporter configured (`npm start` without JOBMESH_OTLP_ENDPOINT): spans still
// get real ids, unsampled, so a job has a real trace id and every event of it carries a
// traceparent in that trace, from CreateJob through the work stream to the worker's commits.
import t from "tap";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { jobClient, readEventStream, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 1, recordSpans: false });
t.teardown(() => mesh.close());
const client = jobClient(mesh.jobs!.url, await signInAsAdmin(mesh));

t.test("no exporter - the job's trace id is real and every event's traceparent is in its trace", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: "A short note about tracing without an exporter." } } } });
  t.match(job!.traceId, /^[0-9a-f]{32}$/);
  t.not(job!.traceId, "0".repeat(32), "not the invalid (all-zero) trace id");
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.SUCCEEDED, done.error?.message ?? "succeeded");
  t.equal(done.traceId, job!.traceId);

  const streamed = await readEventStream(mesh, `${mesh.isolated.namespace}.events.>`, {
    keep: (e) => e.event.job === job!.name,
    enough: (kept) => kept.some((e) => e.event.type === JobEventType.JOB_SUCCEEDED),
  });
  const traceparents = new Map<JobEventType, string[]>();
  for (const e of streamed) traceparents.set(e.event.type, [...(traceparents.get(e.event.type) ?? []), e.headers?.get("traceparent") ?? ""]);
  t.same([...traceparents.keys()].sort(), [JobEventType.JOB_CREATED, JobEventType.STAGE_STARTED, JobEventType.STAGE_SUCCEEDED, JobEventType.JOB_SUCCEEDED].sort());
  const all = [...traceparents.values()].flat();
  t.equal(all.length, 12, "job created, five stages started and succeeded, job succeeded");
  for (const traceparent of all) t.match(traceparent, new RegExp(`^00-${job!.traceId}-[0-9a-f]{16}-00$`), "not sampled: nothing exports it");
});
