import t from "tap";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

// A private NATS server, so restarting it disturbs no other test.
const storeDir = mkdtempSync(join(tmpdir(), "jobmesh-nats-"));
const port = await new Promise<number>((resolve) => {
  const probe = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = probe.address() as net.AddressInfo;
    probe.close(() => resolve(port));
  });
});

async function startNats(): Promise<ChildProcess> {
  const child = spawn("nats-server", ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir], { stdio: "ignore" });
  const deadline = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (up) return child;
    if (Date.now() > deadline) throw new Error("nats-server did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
}

let nats = await startNats();
t.teardown(() => {
  nats.kill("SIGKILL");
  rmSync(storeDir, { recursive: true, force: true });
});
const mesh = await startTestMesh({ NATS_URL: `nats://127.0.0.1:${port}` }, { jobs: true, auth: true, workers: 1 });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);

t.test("NATS restarted while jobs are in flight - none is lost and each finishes once", async (t) => {
  const { jobs } = await client.createJobs({
    requests: Array.from({ length: 12 }, (_, i) => ({ job: { document: { source: { case: "text" as const, value: `Document number ${i}. It has two sentences.` } } } })),
  });
  await new Promise((r) => setTimeout(r, 150));
  nats.kill("SIGKILL");
  await new Promise((resolve) => nats.once("exit", resolve));
  // Jobs keep being submitted while NATS is down: the outbox holds their events and tasks.
  const { job: during } = await client.createJob({ job: { document: { source: { case: "text", value: "Submitted while NATS was down." } } } });
  await new Promise((r) => setTimeout(r, 500));
  nats = await startNats();

  const all = [...jobs, during!];
  const finished = [];
  for (const j of all) finished.push(await waitForJob(client, j.name, undefined, 90_000));
  t.same(finished.map((j) => j.state), all.map(() => JobState.SUCCEEDED));
  const { rows } = await mesh.infra.db.query<{ job_id: string; n: number }>(
    "SELECT job_id, count(*)::int AS n FROM job_events WHERE event_type = $1 GROUP BY job_id",
    [JobEventType.JOB_SUCCEEDED],
  );
  t.equal(rows.length, all.length);
  t.ok(rows.every((r) => r.n === 1), "one JOB_SUCCEEDED per job");
  const results = await mesh.infra.db.query<{ n: number }>("SELECT count(*)::int AS n FROM job_results");
  t.equal(results.rows[0].n, all.length, "one result per job");
});
