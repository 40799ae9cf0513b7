/**
 * What a grpcurl user does, with `buf curl` (the same reflection-driven client, shipped in our
 * devDependencies): list the services and methods and call them with no proto files at all.
 */
import t from "tap";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { startTestMesh } from "./support/mesh.ts";

const buf = join(import.meta.dirname, "../node_modules/.bin/buf");
const run = async (args: string[]) => {
  // Asynchronously: the server runs in this process.
  const { stdout } = await promisify(execFile)(buf, ["curl", "--http2-prior-knowledge", ...args], { encoding: "utf8", timeout: 30_000 });
  return stdout;
};

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const url = mesh.pipelines.url;
const { authorization } = await mesh.auth!.headersFor("admin");

t.test("reflection - list shows every service served, with no proto files", async (t) => {
  const services = (await run(["--list-services", url])).trim().split("\n");
  t.ok(services.includes("jobmesh.v1.PipelineService"));
  t.ok(services.includes("grpc.health.v1.Health"));
  t.ok(services.includes("grpc.reflection.v1.ServerReflection"));
  const methods = (await run(["--list-methods", url])).trim().split("\n");
  t.ok(methods.includes("jobmesh.v1.PipelineService/GetPipeline"));
  t.ok(methods.includes("jobmesh.v1.PipelineService/ValidatePipeline"));
});

t.test("reflection - a call over native gRPC with a JSON body built from the reflected schema", async (t) => {
  const out = await run(["--protocol", "grpc", "-H", `authorization: ${authorization}`, "-d", '{"name":"pipelines/document-default"}', `${url}/jobmesh.v1.PipelineService/GetPipeline`]);
  const body = JSON.parse(out) as { pipeline: { name: string; config: { stages: { stage: string }[] } } };
  t.equal(body.pipeline.name, "pipelines/document-default");
  t.same(body.pipeline.config.stages.map((s) => s.stage), ["STAGE_INGEST", "STAGE_DETECT", "STAGE_PARSE", "STAGE_ENRICH", "STAGE_OUTPUT"]);
});

t.test("reflection - health check over gRPC-Web", async (t) => {
  const out = await run(["--protocol", "grpcweb", "-d", "{}", `${url}/grpc.health.v1.Health/Check`]);
  t.same(JSON.parse(out), { status: "SERVING" });
});
