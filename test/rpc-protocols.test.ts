// One port, every protocol: the same PipelineService calls through @grpc/grpc-js (a client built
// from descriptors by @grpc/proto-loader, not from our generated code), Connect JSON over plain
// fetch, Connect binary, gRPC-Web over HTTP/1.1 and h2c, and gRPC over h2c must all see the same
// pipelines, byte for byte once decoded.
import t from "tap";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { create, fromBinary, fromJson, toBinary, toJson, type DescFile, type JsonValue } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  file_jobmesh_v1_pipelines,
  GetPipelineResponseSchema,
  ListPipelinesResponseSchema,
  PipelineService,
  Stage,
} from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
const url = mesh.pipelines.url;
// Every protocol signs in as the bootstrap tenant's admin: a Bearer token in the headers.
const authHeaders = await mesh.auth!.headersFor("admin");
const authInterceptor = await mesh.auth!.interceptorFor("admin");
const sessions: Http2SessionManager[] = [];

function h2(): Http2SessionManager {
  const manager = new Http2SessionManager(url);
  sessions.push(manager);
  return manager;
}

// ---- @grpc/grpc-js from a FileDescriptorSet ---------------------------------------------------

/** The descriptor set of pipelines.proto and every file it imports, dependencies first. */
function descriptorSet(file: DescFile): Buffer {
  const files = new Map<string, FileDescriptorProto>();
  const collect = (f: DescFile): void => {
    if (files.has(f.proto.name)) return;
    f.dependencies.forEach(collect);
    files.set(f.proto.name, f.proto);
  };
  collect(file);
  return Buffer.from(toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: [...files.values()] })));
}

const definition = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet(file_jobmesh_v1_pipelines), {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
type GrpcResponse = Record<string, any>;
const GrpcPipelineService = grpc.makeClientConstructor(
  definition["jobmesh.v1.PipelineService"] as grpc.ServiceDefinition,
  "jobmesh.v1.PipelineService",
);
const grpcClient = new GrpcPipelineService(url.replace(/^http:\/\//, ""), grpc.credentials.createInsecure()) as grpc.Client &
  Record<string, (req: unknown, metadata: grpc.Metadata, cb: (err: grpc.ServiceError | null, res: GrpcResponse) => void) => void>;
const methodOf = (name: string) => (definition["jobmesh.v1.PipelineService"] as grpc.ServiceDefinition)[name];

const grpcMetadata = new grpc.Metadata();
for (const [key, value] of Object.entries(authHeaders)) grpcMetadata.set(key, value);

function grpcUnary(method: string, req: unknown): Promise<GrpcResponse> {
  return new Promise((resolve, reject) => grpcClient[method](req, grpcMetadata, (err, res) => (err ? reject(err) : resolve(res))));
}

/** grpc-js's plain object, re-encoded by proto-loader's own serializer, then read as JSON. */
function grpcToJson(method: string, schema: typeof GetPipelineResponseSchema | typeof ListPipelinesResponseSchema, res: GrpcResponse): JsonValue {
  const bytes = methodOf(method).responseSerialize(res);
  return toJson(schema, fromBinary(schema, bytes));
}

// ---- Connect JSON over fetch --------------------------------------------------------------------

async function fetchConnect(method: string, body: unknown): Promise<JsonValue> {
  const res = await fetch(`${url}/jobmesh.v1.PipelineService/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json", "connect-protocol-version": "1", ...authHeaders },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as JsonValue;
  if (!res.ok) throw Object.assign(new Error(`HTTP ${res.status}: ${JSON.stringify(json)}`), { status: res.status, body: json });
  if (!res.headers.get("content-type")?.startsWith("application/json")) throw new Error(`answered ${res.headers.get("content-type")}`);
  return json;
}

// ---- the protocols ------------------------------------------------------------------------------

/** One way of calling PipelineService; each returns canonical proto JSON so results compare. */
interface Protocol {
  name: string;
  create(id: string, labels: Record<string, string>): Promise<JsonValue>;
  get(name: string): Promise<JsonValue>;
  list(filter: string): Promise<JsonValue>;
}

const stages = [Stage.INGEST, Stage.DETECT, Stage.PARSE, Stage.OUTPUT];

function viaConnectClient(name: string, transport: Transport): Protocol {
  const client: Client<typeof PipelineService> = createClient(PipelineService, transport);
  return {
    name,
    async create(id, labels) {
      const res = await client.createPipeline({
        pipelineId: id,
        pipeline: { displayName: `made by ${name}`, labels, config: { stages: stages.map((stage) => ({ stage })) } },
      });
      return toJson(GetPipelineResponseSchema, create(GetPipelineResponseSchema, { pipeline: res.pipeline }));
    },
    get: async (pipeline) => toJson(GetPipelineResponseSchema, await client.getPipeline({ name: pipeline })),
    list: async (filter) => toJson(ListPipelinesResponseSchema, await client.listPipelines({ filter, orderBy: "name" })),
  };
}

const protocols: Protocol[] = [
  {
    name: "grpc-js (descriptor set)",
    async create(id, labels) {
      const res = await grpcUnary("CreatePipeline", {
        pipeline_id: id,
        // protobufjs builds a map field read from a descriptor as its repeated entry message.
        pipeline: { display_name: "made by grpc-js", labels: Object.entries(labels).map(([key, value]) => ({ key, value })), config: { stages: stages.map((s) => ({ stage: `STAGE_${Stage[s]}` })) } },
      });
      return grpcToJson("GetPipeline", GetPipelineResponseSchema, res);
    },
    get: async (name) => grpcToJson("GetPipeline", GetPipelineResponseSchema, await grpcUnary("GetPipeline", { name })),
    list: async (filter) => grpcToJson("ListPipelines", ListPipelinesResponseSchema, await grpcUnary("ListPipelines", { filter, order_by: "name" })),
  },
  {
    name: "Connect JSON over fetch",
    async create(id, labels) {
      const json = await fetchConnect("CreatePipeline", {
        pipelineId: id,
        pipeline: { displayName: "made by fetch", labels, config: { stages: stages.map((s) => ({ stage: `STAGE_${Stage[s]}` })) } },
      });
      return toJson(GetPipelineResponseSchema, fromJson(GetPipelineResponseSchema, json));
    },
    // The raw JSON must already be canonical: what fromJson/toJson round-trips is what came.
    get: (name) => fetchConnect("GetPipeline", { name }),
    list: (filter) => fetchConnect("ListPipelines", { filter, orderBy: "name" }),
  },
  viaConnectClient("Connect JSON over HTTP/1.1", createConnectTransport({ baseUrl: url, httpVersion: "1.1", interceptors: [authInterceptor] })),
  viaConnectClient("Connect binary over HTTP/1.1", createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true, interceptors: [authInterceptor] })),
  viaConnectClient("Connect binary over h2c", createConnectTransport({ baseUrl: url, httpVersion: "2", useBinaryFormat: true, sessionManager: h2(), interceptors: [authInterceptor] })),
  viaConnectClient("gRPC-Web over HTTP/1.1", createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", interceptors: [authInterceptor] })),
  viaConnectClient("gRPC-Web over h2c", createGrpcWebTransport({ baseUrl: url, httpVersion: "2", sessionManager: h2(), interceptors: [authInterceptor] })),
  viaConnectClient("gRPC over h2c", createGrpcTransport({ baseUrl: url, sessionManager: h2(), interceptors: [authInterceptor] })),
];

t.teardown(async () => {
  grpcClient.close();
  for (const session of sessions) session.abort();
  await mesh.close();
});

const idOf = (protocol: Protocol) => `proto-${protocols.indexOf(protocol)}`;
const created = new Map<string, JsonValue>();

t.test("protocols - every protocol creates a pipeline on the one port", async (t) => {
  for (const protocol of protocols) {
    const json = (await protocol.create(idOf(protocol), { suite: "protocols", via: `p${protocols.indexOf(protocol)}` })) as Record<string, any>;
    t.equal(json.pipeline?.name, `pipelines/${idOf(protocol)}`, protocol.name);
    t.equal(json.pipeline?.version, 1, protocol.name);
    t.same(
      json.pipeline?.config?.stages.map((s: { stage: string }) => s.stage),
      ["STAGE_INGEST", "STAGE_DETECT", "STAGE_PARSE", "STAGE_OUTPUT"],
      `${protocol.name} sent the stages`,
    );
    t.equal(json.pipeline?.labels?.suite, "protocols", `${protocol.name} sent the labels map`);
    created.set(idOf(protocol), json);
  }
  t.equal(created.size, protocols.length);
});

t.test("protocols - every protocol gets every pipeline identically", async (t) => {
  for (const [id, expected] of created) {
    for (const protocol of protocols) {
      t.same(await protocol.get(`pipelines/${id}`), expected, `${protocol.name} reads ${id}`);
    }
  }
});

t.test("protocols - the built-in pipeline reads the same everywhere, timestamps and durations included", async (t) => {
  const [first, ...rest] = await Promise.all(protocols.map((p) => p.get("pipelines/document-default")));
  const pipeline = (first as Record<string, any>).pipeline;
  t.ok(pipeline.createTime, "createTime is set");
  t.ok(pipeline.config.stages.some((s: Record<string, unknown>) => s.timeout ?? s.retry), "stages carry a timeout or retry policy");
  rest.forEach((json, i) => t.same(json, first, protocols[i + 1].name));
});

t.test("protocols - every protocol lists the same page", async (t) => {
  const filter = 'labels.suite = "protocols"';
  const [first, ...rest] = await Promise.all(protocols.map((p) => p.list(filter)));
  t.same(
    (first as Record<string, any>).pipelines.map((p: { name: string }) => p.name),
    protocols.map((p) => `pipelines/${idOf(p)}`).sort(),
  );
  rest.forEach((json, i) => t.same(json, first, protocols[i + 1].name));
});

t.test("protocols - the h2c transports really spoke HTTP/2", async (t) => {
  for (const session of sessions) t.match(session.state(), /^(open|idle)$/);
});

t.test("protocols - NOT_FOUND arrives as the same code and message on every protocol", async (t) => {
  const name = "pipelines/does-not-exist";
  const messages: string[] = [];
  for (const protocol of protocols) {
    try {
      await protocol.get(name);
      t.fail(`${protocol.name} found ${name}`);
    } catch (error) {
      if (protocol.name.startsWith("grpc-js")) {
        const e = error as grpc.ServiceError;
        t.equal(e.code, grpc.status.NOT_FOUND, protocol.name);
        // connect-es writes grpc-message with encodeURIComponent ("/" → "%2F") and grpc-js reads
        // it with decodeURI, which leaves "%2F" alone: undo the difference here.
        messages.push(decodeURIComponent(e.details));
      } else if (protocol.name === "Connect JSON over fetch") {
        const e = error as { status: number; body: { code: string; message: string } };
        t.equal(e.status, 404, "Connect maps not_found to HTTP 404");
        t.equal(e.body.code, "not_found");
        messages.push(e.body.message);
      } else {
        const e = ConnectError.from(error);
        t.equal(e.code, Code.NotFound, protocol.name);
        messages.push(e.rawMessage);
      }
    }
  }
  t.equal(messages.length, protocols.length);
  t.same(new Set(messages), new Set([`pipeline ${name} not found`]));
});

t.test("protocols - Connect GET is refused for methods not marked side-effect free", async (t) => {
  // No RPC sets idempotency_level = NO_SIDE_EFFECTS, so the Connect GET form must not run it.
  const message = encodeURIComponent(JSON.stringify({ name: "pipelines/document-default" }));
  const res = await fetch(`${url}/jobmesh.v1.PipelineService/GetPipeline?connect=v1&encoding=json&message=${message}`, { headers: authHeaders });
  await res.arrayBuffer();
  t.equal(res.status, 405);
});
