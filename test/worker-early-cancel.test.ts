import t from "tap";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { createOutboxRelay } from "../internal/outbox/index.ts";
import { startWorkers } from "../internal/mesh/servers.ts";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

// A cancel message can reach a worker before the reply to its own claim does: the worker must
// still abort that attempt when the stage starts, and only that attempt.
// No relay at first: the test decides when the stage task reaches the worker.
const mesh = await startTestMesh({ JOBMESH_ALLOW_LOOPBACK_FETCH: "true" }, { jobs: true, auth: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));

// A document source that never answers: an ingest that is not aborted hangs until its timeout.
const hanging = http.createServer(() => {});
await new Promise<void>((resolve) => hanging.listen(0, "127.0.0.1", resolve));
t.teardown(() => {
  hanging.closeAllConnections();
  hanging.close();
});

t.test("early cancel - a cancel for an attempt that arrives before its claim aborts that attempt as it starts", async (t) => {
  const retry = { maxAttempts: 2, initialBackoff: durationFromMs(50), maxBackoff: durationFromMs(50), backoffMultiplier: 1, jitter: 0 };
  const config = create(PipelineConfigSchema, { stages: [{ stage: Stage.INGEST, retry, timeout: durationFromMs(3_000) }, { stage: Stage.OUTPUT }] });
  await pipelines.createPipeline({ pipelineId: "hangs", pipeline: { config } });
  const url = `http://127.0.0.1:${(hanging.address() as AddressInfo).port}/doc.txt`;
  const { job } = await client.createJob({ job: { pipeline: "pipelines/hangs", document: { source: { case: "url", value: url } } } });
  const jobId = job!.name.slice(5);

  // The worker is listening; the message for attempt 1 of stage 0 reaches it before the task does.
  mesh.workers.push(await startWorkers(mesh.infra));
  mesh.infra.bus.nc.publish(mesh.jobs!.topology.cancelSubject(jobId), "0:1");
  await mesh.infra.bus.nc.flush();
  await new Promise((r) => setTimeout(r, 100));
  const { db, bus, log, telemetry } = mesh.infra;
  const relay = createOutboxRelay({ db, js: bus.js, log, tracer: telemetry.tracer, pollMs: 50 });
  t.teardown(() => relay.stop());

  const first = await waitForJob(client, job!.name, (j) => j.attempts.some((a) => a.attempt === 1 && a.endTime !== undefined), 10_000);
  const attempt = first.attempts.find((a) => a.attempt === 1)!;
  t.equal(attempt.outcome, StageAttemptOutcome.CANCELLED, "attempt 1 was aborted as the cancel said");
  t.ok(Number(attempt.endTime!.seconds - attempt.startTime!.seconds) < 2, "at once, not at its 3 s timeout");

  // The job was never CANCELLING, so the abort counts as a failed attempt and the stage is
  // retried; the message named attempt 1 only, so attempt 2 runs until its own timeout.
  const second = await waitForJob(client, job!.name, (j) => j.attempts.some((a) => a.attempt === 2 && a.endTime !== undefined), 15_000);
  t.equal(second.attempts.find((a) => a.attempt === 2)?.outcome, StageAttemptOutcome.TIMED_OUT, "attempt 2 was not aborted by the old message");
});
