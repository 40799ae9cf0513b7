import t from "tap";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createHash } from "node:crypto";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 1 });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));

t.test("minimal pipeline - [ingest, output] is valid and its jobs succeed with the digest and no text", async (t) => {
  await pipelines.createPipeline({
    pipelineId: "store-only",
    pipeline: { config: { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT, options: { options: { case: "output", value: { includeText: true } } } }] } },
  });
  const text = "Kept as it is, fingerprinted, not parsed.";
  const { job } = await client.createJob({ job: { pipeline: "pipelines/store-only", document: { source: { case: "text", value: text } } } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.SUCCEEDED, done.error?.message ?? "succeeded");
  t.same(done.attempts.map((a) => a.stage), [Stage.INGEST, Stage.OUTPUT]);
  const { result } = await client.getJobResult({ name: `${job!.name}/result` });
  t.equal(result?.sha256, createHash("sha256").update(text).digest("hex"));
  t.equal(result?.mediaType, "application/octet-stream", "no detect stage: the type is not guessed");
  t.equal(result?.text, "", "no parse stage: no text");
});
