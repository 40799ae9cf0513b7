import t from "tap";
import type { ChildProcess } from "node:child_process";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startWorkers } from "../internal/mesh/servers.ts";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { PROSE } from "./stages-fixtures.ts";
import { startWorkerProcess } from "./support/worker-process.ts";
import { startTestMesh } from "./support/mesh.ts";

const overrides = { JOBMESH_ALLOW_LOOPBACK_FETCH: "true", JOBMESH_HEARTBEAT_TTL_MS: "2000" };
// JobService with its relay and reaper in this process; the first worker is a child process.
const mesh = await startTestMesh(overrides, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);

/** The first request hangs (the worker is mid-stage when it dies); later ones get the document. */
const requests: number[] = [];
const server = http.createServer((_req, res) => {
  requests.push(Date.now());
  if (requests.length > 1) res.writeHead(200, { "content-type": "text/plain" }).end(PROSE);
});
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
t.teardown(() => {
  server.closeAllConnections();
  server.close();
});

const startChildWorker = (): ChildProcess => startWorkerProcess(t, { ...mesh.isolated.env, ...overrides });

t.test("kill -9 of a worker mid-stage - the reaper requeues the attempt and the job finishes exactly once", async (t) => {
  const child = startChildWorker();
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/doc.txt`;
  const { job } = await client.createJob({ job: { document: { source: { case: "url", value: url } } } });
  const deadline = Date.now() + 20_000;
  while (requests.length === 0) {
    if (Date.now() > deadline) throw new Error("the child worker never started the stage");
    await new Promise((r) => setTimeout(r, 20));
  }
  t.equal((await client.getJob({ name: job!.name })).job?.state, JobState.RUNNING);
  child.kill("SIGKILL");
  await new Promise((resolve) => child.once("exit", resolve));

  mesh.workers.push(await startWorkers(mesh.infra));
  const done = await waitForJob(client, job!.name, undefined, 30_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const ingest = done.attempts.filter((a) => a.stage === Stage.INGEST);
  t.same(ingest.map((a) => [a.attempt, a.outcome]), [[1, StageAttemptOutcome.ABANDONED], [2, StageAttemptOutcome.SUCCEEDED]]);
  t.equal(ingest[0]?.error?.code, "WORKER_LOST");
  t.not(ingest[0]?.workerId, ingest[1]?.workerId, "another worker took over");
  t.equal(done.attempts.length, 6, "one lost attempt plus one per stage");

  const jobId = job!.name.slice(5);
  const { rows } = await mesh.infra.db.query<{ succeeded: number; results: number }>(
    `SELECT (SELECT count(*)::int FROM job_events WHERE job_id = $1 AND event_type = $2) AS succeeded,
            (SELECT count(*)::int FROM job_results WHERE job_id = $1) AS results`,
    [jobId, JobEventType.JOB_SUCCEEDED],
  );
  t.same(rows[0], { succeeded: 1, results: 1 }, "one JOB_SUCCEEDED event, one result");
  t.equal(requests.length, 2, "the document was fetched once more, by the new attempt");
  // The jobs process (here, the test's) runs the reaper: its /metrics counts the lost attempt.
  const metrics = await (await fetch(`${mesh.jobs!.url}/metrics`)).text();
  t.match(metrics, /^jobmesh_stage_reaped_total\{stage="ingest"[^}]*\} 1$/m, "the reaped attempt is counted");
  const { result } = await client.getJobResult({ name: `${job!.name}/result` });
  t.equal(result?.text, PROSE);
});
