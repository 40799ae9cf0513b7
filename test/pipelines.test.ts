import t from "tap";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const client = createClient(
  PipelineService,
  createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: [await mesh.auth!.interceptorFor("admin")] }),
);

const minimalConfig = () =>
  create(PipelineConfigSchema, { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] });

async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

t.test("document-default exists in the tenant with all five stages", async (t) => {
  const { pipeline } = await client.getPipeline({ name: "pipelines/document-default" });
  t.equal(pipeline?.builtIn, true);
  t.same(pipeline?.config?.stages.map((s) => s.stage), [Stage.INGEST, Stage.DETECT, Stage.PARSE, Stage.ENRICH, Stage.OUTPUT]);
});

t.test("create - then get, update makes a new version, stale etag is ABORTED", async (t) => {
  const { pipeline } = await client.createPipeline({ pipelineId: "invoices", pipeline: { displayName: "Invoices", config: minimalConfig() } });
  t.equal(pipeline?.name, "pipelines/invoices");
  t.equal(pipeline?.version, 1);
  const updated = await client.updatePipeline({
    pipeline: { name: "pipelines/invoices", etag: pipeline!.etag, displayName: "Invoices v2" },
    updateMask: { paths: ["display_name"] },
  });
  t.equal(updated.pipeline?.version, 2);
  t.equal(updated.pipeline?.displayName, "Invoices v2");
  t.equal((await client.getPipeline({ name: "pipelines/invoices", version: 1 })).pipeline?.displayName, "Invoices");
  t.equal(
    await codeOf(client.updatePipeline({ pipeline: { name: "pipelines/invoices", etag: pipeline!.etag, description: "x" }, updateMask: { paths: ["description"] } })),
    Code.Aborted,
  );
  const versions = await client.listPipelineVersions({ parent: "pipelines/invoices" });
  t.same(versions.versions.map((v) => v.version), [2, 1]);
});

t.test("create - request_id makes it idempotent", async (t) => {
  const requestId = "6f1c1f7e-3a4b-4c5d-8e9f-0a1b2c3d4e5f";
  const a = await client.createPipeline({ pipelineId: "idem", pipeline: { config: minimalConfig() }, requestId });
  const b = await client.createPipeline({ pipelineId: "idem", pipeline: { config: minimalConfig() }, requestId });
  t.equal(a.pipeline?.etag, b.pipeline?.etag);
  t.equal(await codeOf(client.createPipeline({ pipelineId: "idem", pipeline: { config: minimalConfig() } })), Code.AlreadyExists);
});

t.test("get - unknown pipeline is NOT_FOUND", async (t) => {
  t.equal(await codeOf(client.getPipeline({ name: "pipelines/nope" })), Code.NotFound);
});
