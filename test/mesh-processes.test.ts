/**
 * The mesh as production runs it: cmd/auth, cmd/pipelines, cmd/jobs and cmd/worker as four
 * processes, started at the same moment on an empty database (each migrates at start), sharing
 * only the environment. A user logs in on AuthService, submits a document to JobService, the
 * worker process runs it, the result is read; then SIGTERM stops every process with exit 0.
 */
import t from "tap";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { connect } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import { AuthService } from "../gen/jobmesh/v1/auth_pb.js";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { freePort } from "../internal/devstack/server-process.ts";
import { createTopology, removeTopology } from "../internal/bus/topology.ts";
import { jobClient, waitForJob } from "./jobs-support.ts";
import { isolate } from "./support/isolation.ts";

// Four processes started on a loaded machine: the file-level hang guard must outlast the readiness deadline.
t.setTimeout(300_000);
const password = `pw-${randomBytes(12).toString("hex")}`;
const ports = { auth: await freePort(), pipelines: await freePort(), jobs: await freePort(), worker: await freePort() };
const isolated = await isolate({
  JOBMESH_AUTH_PORT: String(ports.auth),
  JOBMESH_PIPELINES_PORT: String(ports.pipelines),
  JOBMESH_JOBS_PORT: String(ports.jobs),
  JOBMESH_WORKER_METRICS_PORT: String(ports.worker),
  JOBMESH_ADMIN_EMAIL: "ops@example.com",
  JOBMESH_ADMIN_PASSWORD: password,
  JOBMESH_KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
});
t.teardown(async () => {
  const nc = await connect({ servers: isolated.env.NATS_URL.replace(/^nats:\/\//, "") });
  await removeTopology(createTopology(isolated.namespace), await jetstreamManager(nc));
  await nc.close();
  await isolated.drop();
});

const processes = new Map<string, { child: ChildProcess; output: () => string; exited: Promise<number | null> }>();
for (const binary of ["auth", "pipelines", "jobs", "worker"]) {
  const child = spawn(process.execPath, [join(import.meta.dirname, "..", "cmd", binary, "main.ts")], {
    env: { PATH: process.env.PATH ?? "", ...isolated.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  processes.set(binary, { child, output: () => output, exited: once(child, "exit").then(([code]) => code as number | null) });
}
t.teardown(() => {
  for (const { child } of processes.values()) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

/**
 * Resolves once `url` answers /readyz with 200; fails with the process's output otherwise. The
 * deadline is a hang guard: four Node processes loading the mesh and migrating one database
 * took up to 30 s when the 2-core machine was loaded.
 */
async function ready(binary: string, url: string) {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const ok = await fetch(`${url}/readyz`).then((r) => r.ok, () => false);
    if (ok) return;
    const p = processes.get(binary)!;
    if (p.child.exitCode !== null || Date.now() > deadline) throw new Error(`cmd/${binary} is not ready (exit ${p.child.exitCode}):\n${p.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
const url = (port: number) => `http://127.0.0.1:${port}`;

t.test("four processes - started together on an empty database, all become ready", async (t) => {
  for (const [binary, port] of Object.entries(ports)) {
    await ready(binary, url(port));
    t.pass(`cmd/${binary} is ready`);
  }
});

t.test("four processes - log in on auth, submit to jobs, the worker process runs it, read the result", async (t) => {
  const auth = createClient(AuthService, createConnectTransport({ baseUrl: url(ports.auth), httpVersion: "1.1" }));
  const { accessToken } = await auth.login({ email: "ops@example.com", password });
  const withToken: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${accessToken}`);
    return next(req);
  };
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: url(ports.pipelines), httpVersion: "1.1", interceptors: [withToken] }));
  t.equal((await pipelines.getPipeline({ name: "pipelines/document-default" })).pipeline?.name, "pipelines/document-default", "the token works on PipelineService");
  const jobs = jobClient(url(ports.jobs), [withToken]);
  const { job } = await jobs.createJob({ job: { document: { source: { case: "text", value: "Four processes, one job. It runs on the worker process." } } } });
  const done = await waitForJob(jobs, job!.name);
  t.equal(done.state, JobState.SUCCEEDED, done.error?.message ?? "succeeded");
  t.ok(done.attempts.every((a) => a.workerId.includes(String(processes.get("worker")!.child.pid))), "every stage ran in the worker process");
  const { result } = await jobs.getJobResult({ name: `${job!.name}/result` });
  t.equal(result?.language, "en");
  const metrics = await (await fetch(`${url(ports.worker)}/metrics`)).text();
  t.match(metrics, /jobmesh_stage_attempts_total\{stage="output",outcome="succeeded"/, "the worker's own /metrics counts its stages");
});

t.test("four processes - SIGTERM stops each with exit 0", async (t) => {
  for (const [binary, { child, exited }] of processes) {
    child.kill("SIGTERM");
    t.equal(await exited, 0, `cmd/${binary} exited 0`);
  }
});
