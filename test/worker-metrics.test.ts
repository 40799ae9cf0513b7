// The stage worker as its own process (`node cmd/worker/main.ts`) serves /metrics, /healthz and
// /readyz on JOBMESH_WORKER_METRICS_PORT: what it records about stages can be scraped from it,
// not only from a jobs server that happens to share its process.
import t from "tap";
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { PROSE } from "./stages-fixtures.ts";
import { startWorkerProcess } from "./support/worker-process.ts";
import { startTestMesh } from "./support/mesh.ts";

const overrides = { JOBMESH_ALLOW_LOOPBACK_FETCH: "true" };
// JobService with its relay and reaper in this process; the only worker is the child process.
const mesh = await startTestMesh(overrides, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const client = jobClient(mesh.jobs!.url, await signInAsAdmin(mesh));

/** A document source that answers 503 to its first request and the text after that. */
let hits = 0;
const flaky = http.createServer((_req, res) => {
  hits++;
  if (hits === 1) res.writeHead(503).end("busy");
  else res.writeHead(200, { "content-type": "text/plain" }).end(PROSE);
});
await new Promise<void>((resolve) => flaky.listen(0, "127.0.0.1", resolve));
t.teardown(() => {
  flaky.closeAllConnections();
  flaky.close();
});

/** Starts the worker binary with a free metrics port; resolves with the URL it logs. */
async function startChildWorker(): Promise<{ child: ChildProcess; metricsUrl: string; exited: Promise<unknown> }> {
  const child = startWorkerProcess(t, { ...mesh.isolated.env, ...overrides, JOBMESH_WORKER_METRICS_PORT: "0", JOBMESH_LOG_LEVEL: "info" }, { pipeStdout: true });
  const exited = once(child, "exit");
  const logged = new Promise<string>((resolve, reject) => {
    let buffered = "";
    // Keeps reading to the end: a pipe nobody drains would block the child's logging.
    child.stdout!.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split("\n");
      buffered = lines.pop()!;
      for (const line of lines) {
        if (!line.startsWith("{")) continue;
        const entry = JSON.parse(line) as { msg?: string; url?: string };
        if (entry.msg === "serving metrics" && entry.url) resolve(entry.url);
      }
    });
    void exited.then(([code]) => reject(new Error(`the worker exited (${String(code)}) before serving metrics`)));
    setTimeout(() => reject(new Error("the worker logged no metrics URL within 20 s")), 20_000).unref();
  });
  try {
    return { child, metricsUrl: await logged, exited };
  } catch (error) {
    // A failed top-level await skips the teardowns: do not leave the child running.
    child.kill("SIGKILL");
    throw error;
  }
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a Prometheus text exposition (label values here carry no escaped quotes). */
function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!match) continue;
    const labels = Object.fromEntries([...(match[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function valueOf(samples: Sample[], name: string, labels: Record<string, string>): number | undefined {
  const sample = samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return sample?.value;
}

const worker = await startChildWorker();

t.test("metrics - the worker process serves /healthz and /readyz", async (t) => {
  const healthz = await fetch(`${worker.metricsUrl}/healthz`);
  t.equal(healthz.status, 200);
  t.same(await healthz.json(), { status: "ok" });
  const readyz = await fetch(`${worker.metricsUrl}/readyz`);
  const report = (await readyz.json()) as { ready: boolean; checks: Record<string, { ok: boolean }> };
  t.equal(readyz.status, 200, JSON.stringify(report));
  t.same(Object.keys(report.checks).sort(), ["nats", "postgres", "redis"]);
});

t.test("metrics - stage durations, attempts and a retry of ingest are on the worker's /metrics", async (t) => {
  const url = `http://127.0.0.1:${(flaky.address() as AddressInfo).port}/doc.txt`;
  const { job } = await client.createJob({ job: { document: { source: { case: "url", value: url } } } });
  const done = await waitForJob(client, job!.name, undefined, 30_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const ingest = done.attempts.filter((a) => a.stage === Stage.INGEST);
  t.same(ingest.map((a) => a.outcome), [StageAttemptOutcome.FAILED, StageAttemptOutcome.SUCCEEDED], "the 503 was retried");

  const res = await fetch(`${worker.metricsUrl}/metrics`);
  t.equal(res.status, 200);
  const samples = parseSamples(await res.text());
  const stages = done.attempts.filter((a) => a.outcome === StageAttemptOutcome.SUCCEEDED).map((a) => Stage[a.stage].toLowerCase());
  t.same(stages, ["ingest", "detect", "parse", "enrich", "output"], "every stage of the default pipeline succeeded");
  for (const stage of stages) {
    const succeeded = { stage, outcome: "succeeded" };
    t.ok((valueOf(samples, "jobmesh_stage_duration_count", succeeded) ?? 0) >= 1, `jobmesh_stage_duration has samples for ${stage}`);
    t.ok(samples.some((s) => s.name === "jobmesh_stage_duration_bucket" && s.labels.stage === stage && s.labels.le === "+Inf"), `jobmesh_stage_duration has buckets for ${stage}`);
    t.ok((valueOf(samples, "jobmesh_stage_attempts_total", succeeded) ?? 0) >= 1, `jobmesh_stage_attempts_total counts ${stage} succeeded`);
  }
  const failedIngest = samples.filter((s) => s.name === "jobmesh_stage_attempts_total" && s.labels.stage === "ingest" && s.labels.outcome !== "succeeded");
  t.ok(failedIngest.some((s) => s.value >= 1), `the failed ingest attempt is counted (${JSON.stringify(failedIngest)})`);
  t.ok((valueOf(samples, "jobmesh_stage_retries_total", { stage: "ingest" }) ?? 0) >= 1, "the ingest retry is counted");
});

t.test("metrics - SIGTERM drains the worker and closes its metrics server", async (t) => {
  worker.child.kill("SIGTERM");
  const [code] = (await worker.exited) as [number | null];
  t.equal(code, 0);
  await t.rejects(fetch(`${worker.metricsUrl}/healthz`), "nothing listens on the metrics port any more");
});
