import t from "tap";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { jobs: true });
t.teardown(() => mesh.close());
const client = createClient(JobService, createConnectTransport({ baseUrl: mesh.jobs!.url, httpVersion: "1.1" }));

async function waitForEnd(name: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { job } = await client.getJob({ name });
    if ([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED].includes(job!.state)) return job!;
    if (Date.now() > deadline) throw new Error(`job ${name} still ${JobState[job!.state]}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test("text - runs all five stages", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: "Hello world. This is a small document about pipelines." } } } });
  t.equal(job?.state, JobState.QUEUED);
  const done = await waitForEnd(job!.name);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  t.equal(done.attempts.length, 5);
  const { result } = await client.getJobResult({ name: `${job!.name}/result` });
  t.match(result?.text, /Hello world/);
});
