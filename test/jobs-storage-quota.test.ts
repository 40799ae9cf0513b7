/**
 * Storage quotas: a tenant's uploads and results count against its quota; past it, uploads and
 * every CreateJob are RESOURCE_EXHAUSTED naming the quota, while other tenants'
 * jobs run; deleting the job frees what it held. Streams and buckets carry max_bytes.
 */
import t from "tap";
import { create } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobService, UploadDocumentRequestSchema } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { openBuckets } from "../internal/bus/topology.ts";
import { Code, waitForJob } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

const quota = 256 * 1024;
// Loopback URLs allowed, so the URL job below is refused by the quota alone, and no fetch could leave the machine.
const mesh = await startTestMesh({ JOBMESH_TENANT_STORAGE_QUOTA_BYTES: String(quota), JOBMESH_ALLOW_LOOPBACK_FETCH: "true" }, { jobs: true, auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const jobs = createClient(JobService, createGrpcTransport({ baseUrl: mesh.jobs!.url }));
const a = { headers: await auth.headersFor("admin") };
const b = { headers: await auth.headersFor("admin", "tenant-b") };
const tenantA = mesh.infra.bootstrapTenantId;
const { uploads } = await openBuckets(mesh.jobs!.topology, mesh.infra.bus.js);

async function* uploadOf(size: number, declare: boolean) {
  yield create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { filename: "doc.txt", mediaType: "text/plain", sizeBytes: declare ? BigInt(size) : 0n } } });
  const line = "quota words fill the tenant's storage.\n";
  const body = Buffer.from(line.repeat(Math.ceil(size / line.length)).slice(0, size));
  for (let at = 0; at < size; at += 32 * 1024) yield create(UploadDocumentRequestSchema, { part: { case: "chunk", value: body.subarray(at, at + 32 * 1024) } });
}

const refusal = (call: Promise<unknown>) => call.then(() => undefined, (e: unknown) => ConnectError.from(e));
const held = async () => {
  const { rows } = await mesh.infra.db.query<{ counter: string; rows: string }>(
    `SELECT (SELECT coalesce(sum(used_bytes), 0) FROM tenant_storage WHERE tenant_id = $1) AS counter,
            (SELECT coalesce(sum(size_bytes), 0) FROM uploads WHERE tenant_id = $1) + (SELECT coalesce(sum(size_bytes), 0) FROM job_results WHERE tenant_id = $1) AS rows`,
    [tenantA],
  );
  return { counter: Number(rows[0].counter), rows: Number(rows[0].rows) };
};
let jobName = "";

t.test("quota - a tenant's upload and its job's result count; past the quota its uploads and inline jobs are RESOURCE_EXHAUSTED", async (t) => {
  const { upload } = await jobs.uploadDocument(uploadOf(150 * 1024, true), a);
  const { job } = await jobs.createJob({ job: { document: { source: { case: "upload", value: upload!.name } } } }, a);
  jobName = job!.name;
  const done = await waitForJob(createClient(JobService, createGrpcTransport({ baseUrl: mesh.jobs!.url, interceptors: [await auth.interceptorFor("admin")] })), jobName, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const use = await held();
  t.ok(use.rows > quota, `the upload and the result hold ${use.rows} bytes, over the ${quota}-byte quota (a result is always kept)`);
  t.equal(use.counter, use.rows, "the counter is the sum of the rows");

  const objectsBefore = (await uploads.list()).length;
  const declared = await refusal(jobs.uploadDocument(uploadOf(64 * 1024, true), a));
  t.equal(declared?.code, Code.ResourceExhausted, "a declared size past the quota");
  t.match(declared?.rawMessage, new RegExp(`storage quota exceeded: .* of its quota of ${quota} bytes \\(JOBMESH_TENANT_STORAGE_QUOTA_BYTES`));
  t.equal((await uploads.list()).length, objectsBefore, "refused before a byte was stored");
  t.equal((await refusal(jobs.uploadDocument(uploadOf(64 * 1024, false), a)))?.code, Code.ResourceExhausted, "an undeclared size, once the bytes received pass it");
  const inline = await refusal(jobs.createJob({ job: { document: { source: { case: "text", value: "a small inline document" } } } }, a));
  t.equal(inline?.code, Code.ResourceExhausted, "CreateJob with inline content");
  t.match(inline?.rawMessage, /storage quota exceeded/);
  // Each of these would store a result too: a tenant over its quota cannot run the same upload
  // (or a URL) a thousand times to grow its results past it.
  const again = await refusal(jobs.createJob({ job: { document: { source: { case: "upload", value: upload!.name } } } }, a));
  t.equal(again?.code, Code.ResourceExhausted, "CreateJob of an upload already held, once over the quota");
  const byUrl = await refusal(jobs.createJob({ job: { document: { source: { case: "url", value: "http://127.0.0.1:9/report.pdf" } } } }, a));
  t.equal(byUrl?.code, Code.ResourceExhausted, "CreateJob of a URL, once over the quota (a loopback URL: nothing leaves this machine, whatever happens)");
  t.equal((await held()).rows, use.rows, "nothing more is held");
});

t.test("quota - another tenant's job still runs", async (t) => {
  const pipelines = createClient(PipelineService, createGrpcTransport({ baseUrl: mesh.pipelines.url }));
  const config = { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] };
  const { pipeline } = await pipelines.createPipeline({ pipelineId: "b-pipeline", pipeline: { config } }, b);
  const { job } = await jobs.createJob({ job: { pipeline: pipeline!.name, document: { source: { case: "text", value: "tenant B's document" } } } }, b);
  const done = await waitForJob(createClient(JobService, createGrpcTransport({ baseUrl: mesh.jobs!.url, interceptors: [await auth.interceptorFor("admin", "tenant-b")] })), job!.name, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
});

t.test("quota - deleting the job frees what its upload and result held", async (t) => {
  await jobs.deleteJob({ name: jobName }, a);
  t.same(await held(), { counter: 0, rows: 0 });
  const { upload } = await jobs.uploadDocument(uploadOf(64 * 1024, true), a);
  t.equal(upload?.sizeBytes, BigInt(64 * 1024), "an upload fits again");
  t.same(await held(), { counter: 64 * 1024, rows: 64 * 1024 });
});

t.test("quota - a tenant's own quota overrides the default", async (t) => {
  await mesh.infra.db.query("UPDATE tenants SET storage_quota_bytes = $2 WHERE id = $1", [tenantA, 100 * 1024]);
  const refused = await refusal(jobs.uploadDocument(uploadOf(64 * 1024, true), a));
  t.equal(refused?.code, Code.ResourceExhausted);
  t.match(refused?.rawMessage, /of its quota of 102400 bytes/);
  await mesh.infra.db.query("UPDATE tenants SET storage_quota_bytes = NULL WHERE id = $1", [tenantA]);
  t.ok((await jobs.uploadDocument(uploadOf(64 * 1024, true), a)).upload, "back to the default");
});

t.test("max_bytes - every stream and bucket has its limit", async (t) => {
  const { jsm } = mesh.infra.bus;
  const topology = mesh.jobs!.topology;
  const { env } = mesh.isolated;
  for (const stream of [topology.workStream, topology.eventsStream]) {
    t.equal((await jsm.streams.info(stream)).config.max_bytes, Number(env.JOBMESH_STREAM_MAX_BYTES), stream);
  }
  for (const bucket of [topology.uploadsBucket, topology.resultsBucket]) {
    t.equal((await jsm.streams.info(`OBJ_${bucket}`)).config.max_bytes, Number(env.JOBMESH_BUCKET_MAX_BYTES), bucket);
  }
});
