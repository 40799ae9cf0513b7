/**
 * Tenant isolation with real identities: tenant B's admin (who holds every permission) asks
 * for tenant A's resources by name and gets NOT_FOUND, never PERMISSION_DENIED, and lists that
 * never show them.
 */
import t from "tap";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Role } from "../gen/jobmesh/v1/auth_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true, jobs: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const pipelines = createClient(PipelineService, createGrpcTransport({ baseUrl: mesh.pipelines.url }));
const jobs = createClient(JobService, createGrpcTransport({ baseUrl: mesh.jobs!.url }));
const a = await auth.headersFor("admin");
const b = await auth.headersFor("admin", "tenant-b");

async function codeOf(call: Promise<unknown> | AsyncIterable<unknown>): Promise<Code | "ok"> {
  try {
    if (Symbol.asyncIterator in call) {
      for await (const _ of call) break;
    } else {
      await call;
    }
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

const config = () => create(PipelineConfigSchema, { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] });

t.test("pipelines - get, versions, update, delete of tenant A's pipeline are NOT_FOUND for tenant B; B's list does not show it", async (t) => {
  const { pipeline } = await pipelines.createPipeline({ pipelineId: "secret-plans", pipeline: { config: config() } }, { headers: a });
  const name = pipeline!.name;
  t.equal(await codeOf(pipelines.getPipeline({ name }, { headers: b })), Code.NotFound);
  t.equal(await codeOf(pipelines.listPipelineVersions({ parent: name }, { headers: b })), Code.NotFound);
  t.equal(await codeOf(pipelines.updatePipeline({ pipeline: { name, etag: pipeline!.etag, displayName: "mine now" }, updateMask: { paths: ["display_name"] } }, { headers: b })), Code.NotFound);
  t.equal(await codeOf(pipelines.deletePipeline({ name }, { headers: b })), Code.NotFound);
  const listed = await pipelines.listPipelines({}, { headers: b });
  t.notOk(listed.pipelines.some((p) => p.name === name), "B's list does not include it");
  t.ok((await pipelines.listPipelines({}, { headers: a })).pipelines.some((p) => p.name === name), "A's list does");
  // B can use the same id for its own pipeline: names are per tenant.
  t.equal(await codeOf(pipelines.createPipeline({ pipelineId: "secret-plans", pipeline: { config: config() } }, { headers: b })), "ok");
  t.equal((await pipelines.getPipeline({ name }, { headers: a })).pipeline?.version, 1, "A's pipeline is untouched");
});

t.test("jobs - get, cancel, retry, delete, result, download and watch of tenant A's job answer tenant B exactly as a job that never existed", async (t) => {
  const { job } = await jobs.createJob({ job: { document: { source: { case: "text", value: "tenant A's document" } } } }, { headers: a });
  const real = job!.name;
  // Same shape as the real id, different last characters: a job that was never created.
  const ghost = real.slice(0, -4) + (real.endsWith("0000") ? "1111" : "0000");
  const calls: [string, (name: string) => Promise<unknown> | AsyncIterable<unknown>][] = [
    ["get", (name) => jobs.getJob({ name }, { headers: b })],
    ["cancel", (name) => jobs.cancelJob({ name }, { headers: b })],
    ["retry", (name) => jobs.retryJob({ name }, { headers: b })],
    ["delete", (name) => jobs.deleteJob({ name }, { headers: b })],
    ["result", (name) => jobs.getJobResult({ name: `${name}/result` }, { headers: b })],
    ["download", (name) => jobs.downloadJobResult({ name: `${name}/result` }, { headers: b, timeoutMs: 5_000 })],
    ["watch", (name) => jobs.watchJob({ name }, { headers: b, timeoutMs: 5_000 })],
  ];
  for (const [what, call] of calls) {
    const [forReal, forGhost] = [await answerOf(call(real), real), await answerOf(call(ghost), ghost)];
    t.equal(forReal.code, Code.NotFound, `${what}: NOT_FOUND`);
    t.same(forReal, forGhost, `${what}: same answer as for a job that never existed`);
  }
  t.notOk((await jobs.listJobs({}, { headers: b })).jobs.some((j) => j.name === real), "B's list does not include it");
  t.equal(await codeOf(jobs.getJob({ name: real }, { headers: a })), "ok", "A still sees it");
});

/** Code and message, with the resource name replaced so answers about two names compare. */
async function answerOf(call: Promise<unknown> | AsyncIterable<unknown>, name: string) {
  try {
    if (Symbol.asyncIterator in call) {
      for await (const _ of call) break;
    } else {
      await call;
    }
    return { code: "ok" as const, message: "" };
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: e.code, message: e.rawMessage.replaceAll(name.replace(/^jobs\//, ""), "<id>") };
  }
}

t.test("users and API keys - tenant A's are NOT_FOUND for tenant B's admin", async (t) => {
  const viewerA = await auth.userFor("viewer");
  t.equal(await codeOf(auth.client.getUser({ name: viewerA.name }, { headers: b })), Code.NotFound);
  t.equal(await codeOf(auth.client.updateUser({ user: { name: viewerA.name, roles: [Role.ADMIN] }, updateMask: { paths: ["roles"] } }, { headers: b })), Code.NotFound);
  t.equal(await codeOf(auth.client.deleteUser({ name: viewerA.name }, { headers: b })), Code.NotFound);
  t.notOk((await auth.client.listUsers({}, { headers: b })).users.some((u) => u.name === viewerA.name));
  const { apiKey } = await auth.client.createApiKey({ apiKey: { displayName: "a-key" } }, { headers: a });
  t.equal(await codeOf(auth.client.getApiKey({ name: apiKey!.name }, { headers: b })), Code.NotFound);
  t.equal(await codeOf(auth.client.revokeApiKey({ name: apiKey!.name }, { headers: b })), Code.NotFound);
  t.notOk((await auth.client.listApiKeys({}, { headers: b })).apiKeys.some((k) => k.name === apiKey!.name));
  t.equal((await auth.client.getUser({ name: viewerA.name }, { headers: a })).user?.roles[0], Role.VIEWER, "A's user is unchanged");
});

t.test("tokens carry their tenant - the same email in two tenants logs in to the one named", async (t) => {
  const adminB = await auth.userFor("admin", "tenant-b");
  const { identity } = await auth.client.getCurrentIdentity({}, { headers: b });
  t.equal(identity?.tenant, adminB.tenantId);
  t.not(identity?.tenant, mesh.infra.bootstrapTenantId);
});
