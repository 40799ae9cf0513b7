/**
 * Workers killed again and again while a backlog runs: every job still ends SUCCEEDED exactly
 * once. Two worker processes take the jobs; every 600 ms one of them is killed with SIGKILL
 * (mid-claim, mid-stage, mid-commit: wherever it is) and a new one started. Then the books are
 * checked: one result per job, one successful attempt per stage, events numbered without gaps
 * or repeats with one job_created and one job_succeeded, and the events stream holds exactly one
 * job_succeeded per job. Tasks a killed worker had taken but not claimed come back after the
 * work stream's ack wait (30 s), so the test waits that long at least.
 */
import t from "tap";
import type { ChildProcess } from "node:child_process";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { jobClient, readEventStream, signInAsAdmin } from "./jobs-support.ts";
import { startWorkerProcess } from "./support/worker-process.ts";
import { startTestMesh } from "./support/mesh.ts";

const overrides = { JOBMESH_HEARTBEAT_TTL_MS: "1500", JOBMESH_WORKER_CONCURRENCY: "8" };
const mesh = await startTestMesh(overrides, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const client = jobClient(mesh.jobs!.url, await signInAsAdmin(mesh));

const children = new Set<ChildProcess>();
function startWorker(): ChildProcess {
  const child = startWorkerProcess(t, { ...mesh.isolated.env, ...overrides });
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

const jobCount = 200;
const sentence = "The quarterly figures were reviewed by the finance team and approved for release.";

t.test("chaos - workers killed every 600 ms; 200 jobs end SUCCEEDED exactly once", { timeout: 150_000 }, async (t) => {
  startWorker();
  startWorker();
  const names: string[] = [];
  for (let i = 0; i < jobCount; i += 50) {
    const requests = Array.from({ length: 50 }, (_, k) => ({ job: { document: { source: { case: "text" as const, value: `${sentence} Job ${i + k}.` } } } }));
    names.push(...(await client.createJobs({ requests })).jobs.map((j) => j.name));
  }
  const ids = names.map((n) => n.slice("jobs/".length));

  const unfinished = async () => {
    const { rows } = await mesh.infra.db.query<{ n: number }>("SELECT count(*)::int AS n FROM jobs WHERE id = ANY($1) AND state NOT IN ($2, $3, $4)", [
      ids, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED,
    ]);
    return rows[0].n;
  };
  let kills = 0;
  // Kill while at least a tenth of the jobs are still to run, at most 15 times.
  while (kills < 15 && (await unfinished()) > jobCount / 10) {
    await new Promise((r) => setTimeout(r, 600));
    const victim = [...children][Math.floor(Math.random() * children.size)];
    victim?.kill("SIGKILL");
    kills++;
    startWorker();
  }
  t.ok(kills >= 3, `${kills} workers killed while the jobs ran`);
  const deadline = Date.now() + 90_000;
  while ((await unfinished()) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 500));

  const db = mesh.infra.db;
  const states = await db.query<{ state: number; n: number }>("SELECT state, count(*)::int AS n FROM jobs WHERE id = ANY($1) GROUP BY state", [ids]);
  t.same(states.rows, [{ state: JobState.SUCCEEDED, n: jobCount }], "every job SUCCEEDED");

  const results = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM job_results WHERE job_id = ANY($1)", [ids]);
  t.equal(results.rows[0].n, jobCount, "one result per job");

  const doubled = await db.query(
    `SELECT job_id, stage_index, count(*) FROM stage_attempts WHERE job_id = ANY($1) AND outcome = $2
     GROUP BY job_id, stage_index HAVING count(*) <> 1`,
    [ids, StageAttemptOutcome.SUCCEEDED],
  );
  t.same(doubled.rows, [], "exactly one successful attempt per stage of every job");
  const stagesDone = await db.query<{ n: number }>("SELECT count(DISTINCT (job_id, stage_index))::int AS n FROM stage_attempts WHERE job_id = ANY($1) AND outcome = $2", [
    ids, StageAttemptOutcome.SUCCEEDED,
  ]);
  t.equal(stagesDone.rows[0].n, jobCount * 5, "all five stages of every job succeeded");
  const running = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM stage_attempts WHERE job_id = ANY($1) AND outcome = $2", [ids, StageAttemptOutcome.RUNNING]);
  t.equal(running.rows[0].n, 0, "no attempt left RUNNING");

  const badEvents = await db.query(
    `SELECT job_id, count(*) AS n, max(sequence) AS last, j.event_seq,
            count(*) FILTER (WHERE event_type = $2) AS created, count(*) FILTER (WHERE event_type = $3) AS succeeded
     FROM job_events e JOIN jobs j ON j.tenant_id = e.tenant_id AND j.id = e.job_id
     WHERE e.job_id = ANY($1) GROUP BY job_id, j.event_seq
     HAVING count(*) <> max(sequence) OR max(sequence) <> j.event_seq
       OR count(*) FILTER (WHERE event_type = $2) <> 1 OR count(*) FILTER (WHERE event_type = $3) <> 1`,
    [ids, JobEventType.JOB_CREATED, JobEventType.JOB_SUCCEEDED],
  );
  t.same(badEvents.rows, [], "events numbered 1..n without gaps, one job_created and one job_succeeded each");

  // What a JetStream consumer sees: one job_succeeded per job, however often workers died.
  const succeeded = await readEventStream(mesh, `${mesh.isolated.namespace}.events.*.job_succeeded`, {
    keep: (e) => names.includes(e.event.job),
    enough: (kept) => new Set(kept.map((e) => e.event.job)).size >= jobCount,
    timeoutMs: 20_000,
  });
  const seen = new Map<string, number>();
  for (const { event } of succeeded) seen.set(event.job, (seen.get(event.job) ?? 0) + 1);
  t.equal(seen.size, jobCount, "a job_succeeded event for every job on the stream");
  t.same([...seen].filter(([, n]) => n !== 1), [], "and only one each");
});
