/**
 * What grpcurl does, with @grpc/grpc-js: a client built from descriptors (not our generated
 * code) signs in with Login, then calls PipelineService with and without "authorization"
 * metadata, and with an API key.
 */
import t from "tap";
import { create, toBinary, type DescFile } from "@bufbuild/protobuf";
import { type FileDescriptorProto, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { file_jobmesh_v1_auth } from "../gen/jobmesh/v1/auth_pb.js";
import { file_jobmesh_v1_pipelines } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;

function descriptorSet(...roots: DescFile[]): Buffer {
  const files = new Map<string, FileDescriptorProto>();
  const collect = (f: DescFile): void => {
    if (files.has(f.proto.name)) return;
    f.dependencies.forEach(collect);
    files.set(f.proto.name, f.proto);
  };
  roots.forEach(collect);
  return Buffer.from(toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: [...files.values()] })));
}

const definition = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet(file_jobmesh_v1_auth, file_jobmesh_v1_pipelines), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
type Unary = (req: unknown, metadata: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: Record<string, unknown>) => void) => void;
function clientOf(service: string, url: string) {
  const Client = grpc.makeClientConstructor(definition[service] as grpc.ServiceDefinition, service);
  const client = new Client(url.replace(/^http:\/\//, ""), grpc.credentials.createInsecure()) as grpc.Client & Record<string, Unary>;
  t.teardown(() => client.close());
  return client;
}
const authClient = clientOf("jobmesh.v1.AuthService", auth.server.url);
const pipelineClient = clientOf("jobmesh.v1.PipelineService", mesh.pipelines.url);

function call(client: Record<string, Unary>, method: string, req: unknown, headers: Record<string, string> = {}) {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(headers)) metadata.set(k, v);
  return new Promise<{ code: grpc.status; res?: Record<string, unknown> }>((resolve) =>
    client[method](req, metadata, (err, res) => resolve(err ? { code: err.code } : { code: grpc.status.OK, res })),
  );
}

t.test("grpc-js - without a token UNAUTHENTICATED; Login, then the token is accepted", async (t) => {
  const get = { name: "pipelines/document-default" };
  t.equal((await call(pipelineClient, "GetPipeline", get)).code, grpc.status.UNAUTHENTICATED);
  const viewer = await auth.userFor("viewer");
  const login = await call(authClient, "Login", { email: viewer.email, password: viewer.password });
  t.equal(login.code, grpc.status.OK);
  const token = login.res!.access_token as string;
  const ok = await call(pipelineClient, "GetPipeline", get, { authorization: `Bearer ${token}` });
  t.equal(ok.code, grpc.status.OK);
  t.equal((ok.res!.pipeline as { name: string }).name, "pipelines/document-default");
  const who = await call(authClient, "GetCurrentIdentity", {}, { authorization: `Bearer ${token}` });
  t.equal((who.res!.identity as { subject: string }).subject, viewer.name);
});

t.test("grpc-js - a viewer is PERMISSION_DENIED for a write; an operator's token is not", async (t) => {
  const create = { pipeline_id: "native", pipeline: { config: { stages: [{ stage: "STAGE_INGEST" }, { stage: "STAGE_DETECT" }, { stage: "STAGE_PARSE" }, { stage: "STAGE_OUTPUT" }] } } };
  t.equal((await call(pipelineClient, "CreatePipeline", create, await auth.headersFor("viewer"))).code, grpc.status.PERMISSION_DENIED);
  t.equal((await call(pipelineClient, "CreatePipeline", create, await auth.headersFor("operator"))).code, grpc.status.OK);
});

t.test("grpc-js - an API key in x-api-key metadata, and a forged token", async (t) => {
  const { secret } = await auth.client.createApiKey({ apiKey: { displayName: "grpc-js" } }, { headers: await auth.headersFor("admin") });
  t.equal((await call(pipelineClient, "ListPipelines", {}, { "x-api-key": secret })).code, grpc.status.OK);
  t.equal((await call(pipelineClient, "ListPipelines", {}, { authorization: "Bearer eyJhbGciOiJub25lIn0.e30." })).code, grpc.status.UNAUTHENTICATED);
});
