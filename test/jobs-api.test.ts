import t from "tap";
import { create, fromJsonString } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobResultSchema, JobService, Priority, SourceKind, StageAttemptOutcome, UploadDocumentRequestSchema } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { createTopology, openBuckets } from "../internal/bus/topology.ts";
import { startWorkers } from "../internal/mesh/servers.ts";
import { Code, codeOf, jobClient, readEventStream, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { makeDocx, makePdf, makePng, PROSE } from "./stages-fixtures.ts";
import { startTestMesh } from "./support/mesh.ts";

// No workers at first: queued jobs stay queued until the "worker starts" test.
const mesh = await startTestMesh({ JOBMESH_MAX_DOCUMENT_BYTES: String(256 * 1024) }, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const pipelinesClient = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));
const text = (value: string) => ({ source: { case: "text" as const, value } });
const tenant = mesh.infra.bootstrapTenantId;

t.test("create - queued with the latest version of document-default snapshotted", async (t) => {
  const { job } = await client.createJob({ job: { document: text("hello"), labels: { team: "a" } } });
  t.match(job?.name, /^jobs\/[0-9a-f-]{36}$/);
  t.equal(job?.state, JobState.QUEUED);
  t.equal(job?.pipeline, "pipelines/document-default");
  t.equal(job?.pipelineVersion, 1);
  t.equal(job?.priority, Priority.NORMAL);
  t.equal(job?.stage, Stage.INGEST);
  t.equal(job?.document?.sourceKind, SourceKind.TEXT);
  t.match(job?.traceId, /^[0-9a-f]{32}$/);
});

/** jobmesh_jobs_created_total of normal-priority jobs, as /metrics says now. */
async function jobsCreatedNormal(): Promise<number> {
  const text = await (await fetch(`${mesh.jobs!.url}/metrics`)).text();
  return Number(/^jobmesh_jobs_created_total\{priority="normal"[^}]*\} (\d+)/m.exec(text)?.[1] ?? 0);
}

t.test("create - request_id: same body gives the same job, a different body ALREADY_EXISTS", async (t) => {
  const requestId = "2b0c9a57-6c1e-4a4e-9d55-3f1e1d2c4b5a";
  const before = await jobsCreatedNormal();
  const a = await client.createJob({ requestId, job: { document: text("same"), labels: { k: "v" } } });
  const b = await client.createJob({ requestId, job: { document: text("same"), labels: { k: "v" } } });
  t.equal(a.job?.name, b.job?.name);
  t.equal(await codeOf(client.createJob({ requestId, job: { document: text("different") } })), Code.AlreadyExists);
  const { rows } = await mesh.infra.db.query("SELECT count(*)::int AS n FROM jobs WHERE request_id = $1", [requestId]);
  t.equal(rows[0].n, 1);
  const replayed = await client.createJobs({ requests: [{ requestId, job: { document: text("same"), labels: { k: "v" } } }, { job: { document: text("new") } }] });
  t.equal(replayed.jobs[0].name, a.job?.name, "a replay inside CreateJobs gives the same job");
  t.equal(await jobsCreatedNormal(), before + 2, "jobs created counts the two new jobs, not the replays");
});

t.test("create - a pinned version is snapshotted; unknown pipelines and versions are NOT_FOUND", async (t) => {
  const config = create(PipelineConfigSchema, { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] });
  const { pipeline } = await pipelinesClient.createPipeline({ pipelineId: "pinned", pipeline: { config } });
  await pipelinesClient.updatePipeline({ pipeline: { name: "pipelines/pinned", etag: pipeline!.etag, description: "v2" }, updateMask: { paths: ["description"] } });
  const v1 = await client.createJob({ job: { pipeline: "pipelines/pinned", pipelineVersion: 1, document: text("x") } });
  t.equal(v1.job?.pipelineVersion, 1);
  const latest = await client.createJob({ job: { pipeline: "pipelines/pinned", document: text("x") } });
  t.equal(latest.job?.pipelineVersion, 2);
  t.equal(await codeOf(client.createJob({ job: { pipeline: "pipelines/nope", document: text("x") } })), Code.NotFound);
  t.equal(await codeOf(client.createJob({ job: { pipeline: "pipelines/pinned", pipelineVersion: 9, document: text("x") } })), Code.NotFound);
});

t.test("delete - a QUEUED job is FAILED_PRECONDITION; cancelled, it can be deleted with all its rows", async (t) => {
  // No worker runs yet in this file: the job stays QUEUED.
  const { job } = await client.createJob({ job: { document: text("not yet run") } });
  t.equal(await codeOf(client.deleteJob({ name: job!.name })), Code.FailedPrecondition);
  t.equal((await client.getJob({ name: job!.name })).job?.state, JobState.QUEUED, "and nothing changed");
  await client.cancelJob({ name: job!.name });
  await client.deleteJob({ name: job!.name });
  t.equal(await codeOf(client.getJob({ name: job!.name })), Code.NotFound);
  const id = job!.name.slice("jobs/".length);
  for (const table of ["job_events", "stage_attempts", "stage_outputs"]) {
    const { rows } = await mesh.infra.db.query(`SELECT count(*)::int AS n FROM ${table} WHERE job_id = $1`, [id]);
    t.equal(rows[0].n, 0, `no ${table} rows left`);
  }
});

t.test("create - literal private, loopback and link-local URLs are FAILED_PRECONDITION", async (t) => {
  for (const url of ["http://127.0.0.1:9/doc", "http://10.1.2.3/doc", "http://169.254.169.254/latest", "http://[::1]/doc", "http://192.168.0.1/"]) {
    t.equal(await codeOf(client.createJob({ job: { document: { source: { case: "url", value: url } } } })), Code.FailedPrecondition, url);
  }
});

t.test("create - a document over the configured limit is RESOURCE_EXHAUSTED and not stored", async (t) => {
  const before = await mesh.infra.db.query("SELECT count(*)::int AS n FROM jobs");
  const big = new Uint8Array(300 * 1024).fill(65);
  t.equal(await codeOf(client.createJob({ job: { document: { source: { case: "content", value: big } } } })), Code.ResourceExhausted);
  const after = await mesh.infra.db.query("SELECT count(*)::int AS n FROM jobs");
  t.equal(after.rows[0].n, before.rows[0].n);
});

t.test("createJobs - all or nothing", async (t) => {
  const before = await mesh.infra.db.query("SELECT count(*)::int AS n FROM jobs");
  const ok = await client.createJobs({ requests: [{ job: { document: text("a") } }, { job: { document: text("b"), priority: Priority.HIGH } }] });
  t.equal(ok.jobs.length, 2);
  t.equal(ok.jobs[1]?.priority, Priority.HIGH);
  t.equal(await codeOf(client.createJobs({ requests: [{ job: { document: text("c") } }, { job: { pipeline: "pipelines/missing", document: text("d") } }] })), Code.NotFound);
  const after = await mesh.infra.db.query("SELECT count(*)::int AS n FROM jobs");
  t.equal(after.rows[0].n, before.rows[0].n + 2, "the failed batch wrote nothing");
});

t.test("list - filters by state, label, pipeline and pages with tokens", async (t) => {
  for (let i = 0; i < 3; i++) await client.createJob({ job: { document: text(`l${i}`), labels: { batch: "list" } } });
  const filtered = await client.listJobs({ filter: 'labels.batch = "list" AND state = QUEUED AND pipeline = "pipelines/document-default"' });
  t.equal(filtered.jobs.length, 3);
  const first = await client.listJobs({ filter: 'labels.batch = "list"', pageSize: 2 });
  t.equal(first.jobs.length, 2);
  t.not(first.nextPageToken, "");
  const second = await client.listJobs({ filter: 'labels.batch = "list"', pageSize: 2, pageToken: first.nextPageToken });
  t.equal(second.jobs.length, 1);
  t.equal(second.nextPageToken, "");
  t.same(new Set([...first.jobs, ...second.jobs].map((j) => j.name)).size, 3);
  const asc = await client.listJobs({ filter: 'labels.batch = "list"', orderBy: "create_time" });
  t.same(asc.jobs.map((j) => j.name), [...filtered.jobs].reverse().map((j) => j.name), "order_by create_time ascends");
  const since = await client.listJobs({ filter: `labels.batch = "list" AND create_time >= "${new Date(Date.now() + 60_000).toISOString()}"` });
  t.equal(since.jobs.length, 0);
  t.equal((await client.listJobs({ filter: 'labels.batch = "list" AND stage = INGEST AND priority = NORMAL' })).jobs.length, 3);
  t.equal((await client.listJobs({ filter: 'labels.batch = "list" AND stage = PARSE' })).jobs.length, 0);
  t.equal((await client.listJobs({ filter: "priority = HIGH" })).jobs.length, 1, "the one high job of the batch test");
  t.equal(await codeOf(client.listJobs({ filter: "state = SLEEPING" })), Code.InvalidArgument);
  t.equal(await codeOf(client.listJobs({ filter: "colour = red" })), Code.InvalidArgument);
  t.equal(await codeOf(client.listJobs({ pageToken: "forged.token" })), Code.InvalidArgument);
});

t.test("cancel - a queued job is CANCELLED at once; a cancelled one cannot be cancelled into anything else", async (t) => {
  const { job } = await client.createJob({ job: { document: text("to cancel") } });
  const cancelled = await client.cancelJob({ name: job!.name });
  t.equal(cancelled.job?.state, JobState.CANCELLED);
  t.ok(cancelled.job?.endTime);
  t.equal((await client.cancelJob({ name: job!.name })).job?.state, JobState.CANCELLED, "idempotent");
  t.equal(await codeOf(client.getJobResult({ name: `${job!.name}/result` })), Code.NotFound, "no result until SUCCEEDED");
  t.equal(await codeOf(client.getJob({ name: "jobs/00000000-0000-4000-8000-000000000000" })), Code.NotFound);
  t.equal(await codeOf(client.getJob({ name: "jobs/not-a-uuid" })), Code.NotFound);
});

let watchedJob = "";
const liveEvents: JobEventType[] = [];
let liveWatch: Promise<void> | undefined;

t.test("watch - a live watch opened on a queued job", async (t) => {
  const { job } = await client.createJob({ job: { document: text(PROSE) } });
  watchedJob = job!.name;
  liveWatch = (async () => {
    for await (const res of client.watchJob({ name: watchedJob })) liveEvents.push(res.event!.type);
  })();
  for (const deadline = Date.now() + 5000; liveEvents.length === 0 && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 100));
  t.same(liveEvents, [JobEventType.JOB_CREATED], "stored events first, then nothing until something happens");
});

t.test("worker starts - queued jobs run, including the one being watched", async (t) => {
  await startWorkers(mesh.infra).then((w) => mesh.workers.push(w));
  const done = await waitForJob(client, watchedJob);
  t.equal(done.state, JobState.SUCCEEDED);
  await liveWatch;
  t.equal(liveEvents.at(-1), JobEventType.JOB_SUCCEEDED, "the stream ends with the terminal event");
  t.equal(liveEvents.filter((e) => e === JobEventType.STAGE_SUCCEEDED).length, 5);
  // A cancelled job's queued task was dropped by the worker, not run.
  const cancelled = await client.listJobs({ filter: "state = CANCELLED" });
  t.ok(cancelled.jobs.length >= 1);
  t.ok(cancelled.jobs.every((j) => j.attempts.length === 0), "no attempt of a job cancelled while queued");
});

t.test("watch - resumes after a sequence without gaps or repeats, and ends at once for a finished job", async (t) => {
  const all = [];
  for await (const res of client.watchJob({ name: watchedJob })) all.push(res.event!);
  t.same(all.map((e) => Number(e.sequence)), all.map((_, i) => i + 1));
  t.equal(all[0]?.type, JobEventType.JOB_CREATED);
  t.equal(all.at(-1)?.type, JobEventType.JOB_SUCCEEDED);
  const resumed = [];
  for await (const res of client.watchJob({ name: watchedJob, afterSequence: 4n })) resumed.push(res.event!);
  t.same(resumed.map((e) => e.eventId), all.slice(4).map((e) => e.eventId));
  const none = [];
  for await (const res of client.watchJob({ name: watchedJob, afterSequence: BigInt(all.length) })) none.push(res);
  t.equal(none.length, 0);
});

t.test("events - a JetStream consumer receives the documented events with their headers", async (t) => {
  const mine = await readEventStream(mesh, `${mesh.isolated.namespace}.events.${tenant}.>`, {
    keep: (e) => e.event.job === watchedJob,
    enough: (kept) => kept.some((m) => m.event.type === JobEventType.JOB_SUCCEEDED),
  });
  t.same(mine.map((m) => m.event.type), [
    JobEventType.JOB_CREATED,
    ...[1, 2, 3, 4, 5].flatMap(() => [JobEventType.STAGE_STARTED, JobEventType.STAGE_SUCCEEDED]),
    JobEventType.JOB_SUCCEEDED,
  ]);
  const created = mine[0]!;
  t.equal(created.subject, `${mesh.isolated.namespace}.events.${tenant}.job_created`);
  t.equal(created.headers?.get("Nats-Msg-Id"), created.event.eventId);
  t.equal(created.headers?.get("Jobmesh-Event-Type"), "job_created");
  t.match(created.headers?.get("traceparent"), new RegExp(`^00-${created.event.traceId}-[0-9a-f]{16}-0[01]$`));
  t.equal(mine[1]?.event.stage, Stage.INGEST);
  t.equal(mine[1]?.event.attempt, 1);
});

t.test("trace - CreateJob, the relay and all five stages share the job's trace id", async (t) => {
  const { job } = await client.getJob({ name: watchedJob });
  const spans = mesh.spans.getFinishedSpans().filter((s) => s.spanContext().traceId === job!.traceId);
  const names = new Set(spans.map((s) => s.name));
  t.ok(names.has("jobmesh.v1.JobService/CreateJob"), [...names].join(", "));
  t.ok([...names].some((n) => n.startsWith("outbox publish")));
  for (const stage of ["ingest", "detect", "parse", "enrich", "output"]) t.ok(names.has(`stage ${stage}`), `stage ${stage}`);
});

t.test("permanent failure - an unsupported format fails at parse once, without retries; RetryJob runs it again", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "content", value: makePng() }, filename: "image.png" } } });
  const failed = await waitForJob(client, job!.name);
  t.equal(failed.state, JobState.FAILED);
  t.equal(failed.error?.code, "UNSUPPORTED_MEDIA_TYPE");
  t.equal(failed.error?.stage, Stage.PARSE);
  t.equal(failed.error?.transient, false);
  const parseAttempts = failed.attempts.filter((a) => a.stage === Stage.PARSE);
  t.same(parseAttempts.map((a) => [a.attempt, a.outcome]), [[1, StageAttemptOutcome.FAILED]]);
  t.equal(failed.stage, Stage.PARSE, "the failed stage is kept for inspection");
  t.equal(await codeOf(client.retryJob({ name: job!.name, fromStage: Stage.ENRICH })), Code.InvalidArgument);
  const retried = await client.retryJob({ name: job!.name, fromStage: Stage.DETECT });
  t.equal(retried.job?.state, JobState.QUEUED);
  const again = await waitForJob(client, job!.name);
  t.equal(again.state, JobState.FAILED);
  t.same(again.attempts.filter((a) => a.stage === Stage.DETECT).map((a) => a.attempt), [1, 2]);
  t.same(again.attempts.filter((a) => a.stage === Stage.INGEST).map((a) => a.attempt), [1], "stages before from_stage are not rerun");
});

t.test("permanent failure - a corrupt PDF and a corrupt DOCX fail at parse once, with a clear error", async (t) => {
  const pdf = await makePdf([PROSE]);
  const docx = await makeDocx();
  for (const [filename, bytes, message] of [
    ["broken.pdf", pdf.subarray(0, 400), "the PDF document is corrupt or unreadable"],
    ["broken.docx", docx.subarray(0, 300), "the DOCX document is corrupt or unreadable"],
  ] as const) {
    const { job } = await client.createJob({ job: { document: { source: { case: "content", value: bytes }, filename } } });
    const failed = await waitForJob(client, job!.name);
    t.equal(failed.state, JobState.FAILED, filename);
    t.equal(failed.error?.code, "CORRUPT_DOCUMENT", filename);
    t.equal(failed.error?.message, message, filename);
    t.equal(failed.error?.transient, false, `${filename}: no retry`);
    t.same(failed.attempts.filter((a) => a.stage === Stage.PARSE).map((a) => a.outcome), [StageAttemptOutcome.FAILED], `${filename}: one parse attempt`);
  }
});

t.test("delete - a finished job is gone with its result", async (t) => {
  const { job } = await client.getJob({ name: watchedJob });
  t.equal(await codeOf(client.deleteJob({ name: watchedJob, etag: "stale" })), Code.Aborted);
  await client.deleteJob({ name: watchedJob, etag: job!.etag });
  t.equal(await codeOf(client.getJob({ name: watchedJob })), Code.NotFound);
  const { rows } = await mesh.infra.db.query("SELECT count(*)::int AS n FROM job_results WHERE job_id = $1", [watchedJob.slice(5)]);
  t.equal(rows[0].n, 0);
});

t.test("upload - a document streamed in chunks runs as a job", async (t) => {
  const streaming = createClient(JobService, createConnectTransport({ baseUrl: mesh.jobs!.url, httpVersion: "2", interceptors: signIn }));
  const pdf = await makePdf([PROSE, "Uploaded second page."]);
  async function* parts() {
    yield create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { filename: "up.pdf", mediaType: "application/pdf", sizeBytes: BigInt(pdf.byteLength) } } });
    for (let i = 0; i < pdf.byteLength; i += 1000) yield create(UploadDocumentRequestSchema, { part: { case: "chunk", value: pdf.subarray(i, i + 1000) } });
  }
  const { upload } = await streaming.uploadDocument(parts());
  t.match(upload?.name, /^uploads\/[0-9a-f-]{36}$/);
  t.equal(upload?.sizeBytes, BigInt(pdf.byteLength));
  const { job } = await client.createJob({ job: { document: { source: { case: "upload", value: upload!.name } } } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  t.equal(done.document?.sha256, upload?.sha256);
  const { result } = await client.getJobResult({ name: `${job!.name}/result` });
  t.match(result?.text, /Uploaded second page\.$/);
  // DeleteJob removes the document with the job: the uploads row and the object in the bucket.
  const uploadId = upload!.name.slice("uploads/".length);
  const { uploads } = await openBuckets(createTopology(mesh.isolated.namespace), mesh.infra.bus.js);
  t.ok(await uploads.get(uploadId), "the upload is stored while its job exists");
  await client.deleteJob({ name: job!.name });
  const { rows } = await mesh.infra.db.query("SELECT count(*)::int AS n FROM uploads WHERE id = $1", [uploadId]);
  t.equal(rows[0].n, 0, "the upload row is gone");
  t.equal(await uploads.get(uploadId), null, "and so is its object");
  t.equal(await codeOf(client.createJob({ job: { document: { source: { case: "upload", value: "uploads/00000000-0000-4000-8000-000000000000" } } } })), Code.NotFound);
  async function* wrongSize() {
    yield create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { sizeBytes: 10n } } });
    yield create(UploadDocumentRequestSchema, { part: { case: "chunk", value: new Uint8Array(5) } });
  }
  t.equal(await codeOf(streaming.uploadDocument(wrongSize())), Code.InvalidArgument);
});

t.test("metrics - jobs created and finished, queue depth, stage durations on /metrics", async (t) => {
  const text = await (await fetch(`${mesh.jobs!.url}/metrics`)).text();
  t.match(text, /jobmesh_jobs_created_total\{priority="normal"[^}]*\} \d+/);
  t.match(text, /jobmesh_jobs_finished_total\{outcome="succeeded"[^}]*\} \d+/);
  t.match(text, /jobmesh_jobs_finished_total\{outcome="failed"[^}]*\} \d+/);
  t.match(text, /jobmesh_queue_depth\{stage="ingest",priority="normal"[^}]*\} \d+/);
  t.match(text, /jobmesh_stage_duration_bucket\{stage="parse"/);
});

t.test("protocols - gRPC and gRPC-Web reach JobService, server streaming included", async (t) => {
  for (const [protocol, transport] of [
    ["grpc", createGrpcTransport({ baseUrl: mesh.jobs!.url, interceptors: signIn })],
    ["grpc-web", createGrpcWebTransport({ baseUrl: mesh.jobs!.url, httpVersion: "1.1", interceptors: signIn })],
  ] as const) {
    const c = createClient(JobService, transport);
    const { job } = await c.createJob({ job: { document: text(`${protocol}: ${PROSE}`) } });
    const events = [];
    for await (const res of c.watchJob({ name: job!.name })) events.push(res.event!.type);
    t.equal(events.at(-1), JobEventType.JOB_SUCCEEDED, protocol);
    const chunks = [];
    for await (const res of c.downloadJobResult({ name: `${job!.name}/result` })) chunks.push(res.chunk);
    t.equal(fromJsonString(JobResultSchema, Buffer.concat(chunks).toString("utf8")).text, `${protocol}: ${PROSE}`, protocol);
  }
});

t.test("upload - more than the document limit is RESOURCE_EXHAUSTED", async (t) => {
  const streaming = createClient(JobService, createConnectTransport({ baseUrl: mesh.jobs!.url, httpVersion: "2", interceptors: signIn }));
  async function* tooBig() {
    yield create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { filename: "big.txt" } } });
    for (let i = 0; i < 5; i++) yield create(UploadDocumentRequestSchema, { part: { case: "chunk", value: new Uint8Array(64 * 1024).fill(66) } });
  }
  t.equal(await codeOf(streaming.uploadDocument(tooBig())), Code.ResourceExhausted);
  async function* declaredTooBig() {
    yield create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { filename: "big.txt", sizeBytes: BigInt(256 * 1024 + 1) } } });
    for (let i = 0; i < 5; i++) yield create(UploadDocumentRequestSchema, { part: { case: "chunk", value: new Uint8Array(64 * 1024).fill(66) } });
  }
  const refused = await streaming.uploadDocument(declaredTooBig()).then(() => undefined, (e: unknown) => ConnectError.from(e));
  t.equal(refused?.code, Code.ResourceExhausted, "a declared size over the limit");
  t.match(refused?.rawMessage, /document of 262145 bytes exceeds the limit of 262144 bytes/, "refused on the declared size, before reading the bytes");
  async function* declaredHuge() {
    yield create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { filename: "huge.bin", sizeBytes: 60n * 1024n * 1024n } } });
  }
  t.equal(await codeOf(streaming.uploadDocument(declaredHuge())), Code.ResourceExhausted, "the configured limit decides, whatever the size");
  const { rows } = await mesh.infra.db.query<{ n: number }>("SELECT count(*)::int AS n FROM uploads WHERE filename = 'big.txt'");
  t.equal(rows[0].n, 0, "the refused upload is not recorded");
});

t.test("ssrf - a host name that resolves to loopback fails permanently at ingest, nothing is fetched", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "url", value: "http://localhost:9/doc" } } } });
  const done = await waitForJob(client, job!.name);
  t.equal(done.state, JobState.FAILED);
  t.equal(done.error?.code, "SSRF_BLOCKED");
  t.equal(done.error?.stage, Stage.INGEST);
  t.equal(done.attempts.length, 1, "not retried");
});
