import t from "tap";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { JobEventType } from "../gen/jobmesh/v1/events_pb.js";
import { Priority } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startWorkers } from "../internal/mesh/servers.ts";
import { jobClient, signInAsAdmin } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));

t.test("priority - under a backlog a worker serves high-priority stage tasks first", async (t) => {
  const config = create(PipelineConfigSchema, { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] });
  await pipelines.createPipeline({ pipelineId: "short", pipeline: { config } });
  const make = (priority: Priority, n: number) =>
    Array.from({ length: n }, (_, i) => ({ job: { pipeline: "pipelines/short", priority, document: { source: { case: "text" as const, value: `${Priority[priority]} ${i}` } } } }));
  // The backlog: low work queued first, then high, with no worker running.
  const low = (await client.createJobs({ requests: make(Priority.LOW, 8) })).jobs;
  const high = (await client.createJobs({ requests: make(Priority.HIGH, 8) })).jobs;
  const backlogged = async () => (await mesh.infra.db.query<{ n: number }>("SELECT count(*)::int AS n FROM outbox")).rows[0].n === 0;
  while (!(await backlogged())) await new Promise((r) => setTimeout(r, 20));
  // The backlog is what the queue-depth gauge reports, read from the work stream.
  const metrics = await (await fetch(`${mesh.jobs!.url}/metrics`)).text();
  t.match(metrics, /jobmesh_queue_depth\{stage="ingest",priority="low"[^}]*\} 8\b/, "8 low ingest tasks waiting");
  t.match(metrics, /jobmesh_queue_depth\{stage="ingest",priority="high"[^}]*\} 8\b/, "8 high ingest tasks waiting");
  t.match(metrics, /jobmesh_queue_depth\{stage="parse",priority="high"[^}]*\} 0\b/, "none at parse yet");

  mesh.workers.push(await startWorkers(mesh.infra, { concurrency: 1 }));
  const deadline = Date.now() + 60_000;
  const unfinished = async () => (await mesh.infra.db.query<{ n: number }>("SELECT count(*)::int AS n FROM jobs WHERE end_time IS NULL")).rows[0].n;
  while ((await unfinished()) > 0) {
    if (Date.now() > deadline) throw new Error("the backlog did not drain");
    await new Promise((r) => setTimeout(r, 100));
  }
  const { rows } = await mesh.infra.db.query<{ job_id: string }>(
    `SELECT e.job_id FROM job_events e JOIN stage_attempts a ON a.job_id = e.job_id AND a.stage_index = 0
     WHERE e.event_type = $1 ORDER BY a.start_time`,
    [JobEventType.JOB_SUCCEEDED],
  );
  const highIds = new Set(high.map((j) => j.name.slice(5)));
  const ingestOrder = rows.map((r) => (highIds.has(r.job_id) ? "H" : "L")).join("");
  // Before the worker saw the high queue it may have taken a low task or two.
  t.ok(ingestOrder.slice(0, 10).split("").filter((c) => c === "H").length >= 7, `ingest order ${ingestOrder}`);
  const ended = await mesh.infra.db.query<{ id: string }>("SELECT id FROM jobs ORDER BY end_time, id");
  const endOrder = ended.rows.map((r) => (highIds.has(r.id) ? "H" : "L")).join("");
  const meanRank = (c: string) => [...endOrder].reduce((sum, x, i) => (x === c ? sum + i : sum), 0) / 8;
  t.ok(meanRank("H") < meanRank("L"), `high jobs finish earlier on average: ${endOrder}`);
});
