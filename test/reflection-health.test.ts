// Server reflection and health, checked from the outside: the clients are @grpc/grpc-js stubs
// built by @grpc/proto-loader from the upstream .proto sources, not from our generated code.
import t from "tap";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { createFileRegistry, fromBinary, getExtension, hasExtension } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { field as validateField } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { file_jobmesh_v1_pipelines, PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { authz } from "../gen/jobmesh/v1/options_pb.js";
import { createReflectionRegistry, registerReflection } from "../internal/rpc/reflection.ts";
import { createHealth } from "../internal/rpc/health.ts";

type Stub = grpc.Client & Record<string, (...args: unknown[]) => any>;
type Response = Record<string, any>;

const loaderOptions = { keepCase: true, enums: String, defaults: true, oneofs: true };

function stub(file: string, includeDir: string, service: string, address: string): Stub {
  const definition = protoLoader.loadSync(file, { ...loaderOptions, includeDirs: [includeDir] });
  const Ctor = service
    .split(".")
    .reduce<any>((node, part) => node[part], grpc.loadPackageDefinition(definition));
  return new Ctor(address, grpc.credentials.createInsecure());
}

/** Sends the requests on one reflection stream and collects one response per request. */
function reflect(client: Stub, ...requests: Response[]): Promise<Response[]> {
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    const responses: Response[] = [];
    call.on("data", (res: Response) => {
      responses.push(res);
      if (responses.length === requests.length) {
        call.end();
        resolve(responses);
      }
    });
    call.on("error", reject);
    for (const req of requests) call.write(req);
  });
}

function decode(res: Response): FileDescriptorProto[] {
  if (res.message_response !== "file_descriptor_response") {
    throw new Error(`expected descriptors, got ${JSON.stringify(res.error_response)}`);
  }
  return res.file_descriptor_response.file_descriptor_proto.map((b: Buffer) =>
    fromBinary(FileDescriptorProtoSchema, b),
  );
}

/** Links the files into a registry: throws when an import or a referenced type is missing. */
function link(files: FileDescriptorProto[]) {
  const byName = new Map(files.map((f) => [f.name, f]));
  return createFileRegistry(files[0], (name) => byName.get(name));
}

function unary<T>(client: Stub, method: string, req: Response): Promise<T> {
  return new Promise((resolve, reject) =>
    client[method](req, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res))),
  );
}

const health = createHealth({ services: [PipelineService.typeName] });
const server = http2.createServer(
  connectNodeAdapter({
    routes(router) {
      registerReflection(router, createReflectionRegistry(file_jobmesh_v1_pipelines), [
        PipelineService.typeName,
      ]);
      health.register(router);
    },
  }),
);
await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;

const reflectionDir = "node_modules/@grpc/reflection/build/proto";
const reflectionV1 = stub("grpc/reflection/v1/reflection.proto", reflectionDir, "grpc.reflection.v1.ServerReflection", address);
const reflectionV1alpha = stub("grpc/reflection/v1alpha/reflection.proto", reflectionDir, "grpc.reflection.v1alpha.ServerReflection", address);
const healthClient = stub("health/v1/health.proto", "node_modules/grpc-health-check/proto", "grpc.health.v1.Health", address);

t.teardown(async () => {
  health.close();
  for (const client of [reflectionV1, reflectionV1alpha, healthClient]) client.close();
  await new Promise((resolve) => server.close(resolve));
});

const expectedServices = [
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
  "jobmesh.v1.PipelineService",
];

for (const [version, client] of [["v1", reflectionV1], ["v1alpha", reflectionV1alpha]] as const) {
  t.test(`reflection ${version} - list_services names our services, health and reflection`, async (t) => {
    const [res] = await reflect(client, { host: "localhost", list_services: "" });
    t.equal(res.valid_host, "localhost");
    t.same(res.list_services_response.service.map((s: Response) => s.name).sort(), expectedServices);
  });

  t.test(`reflection ${version} - an unknown symbol is NOT_FOUND and the stream stays open`, async (t) => {
    const [missing, after] = await reflect(
      client,
      { file_containing_symbol: "jobmesh.v1.NoSuchThing" },
      { file_containing_symbol: "jobmesh.v1.PipelineService" },
    );
    t.equal(missing.message_response, "error_response");
    t.equal(missing.error_response.error_code, grpc.status.NOT_FOUND);
    t.equal(decode(after)[0].name, "jobmesh/v1/pipelines.proto");
  });
}

t.test("reflection - file_containing_symbol finds every kind of symbol with its imports", async (t) => {
  const symbols = [
    "jobmesh.v1.PipelineService",
    "jobmesh.v1.PipelineService.GetPipeline",
    "jobmesh.v1.GetPipelineRequest",
    "jobmesh.v1.GetPipelineRequest.name",
    "jobmesh.v1.Pipeline.LabelsEntry",
    "jobmesh.v1.Stage",
    "jobmesh.v1.STAGE_PARSE",
  ];
  for (const symbol of symbols) {
    // One stream per symbol: a stream sends each import only once.
    const files = decode((await reflect(reflectionV1, { file_containing_symbol: symbol }))[0]);
    t.equal(files[0].name, "jobmesh/v1/pipelines.proto", symbol);
    const names = files.map((f) => f.name);
    for (const dep of [
      "buf/validate/validate.proto",
      "google/api/annotations.proto",
      "google/api/http.proto",
      "google/protobuf/descriptor.proto",
      "jobmesh/v1/options.proto",
    ]) {
      t.ok(names.includes(dep), `${symbol} comes with ${dep}`);
    }
    t.equal(new Set(names).size, names.length, "no file twice");
    const registry = link(files);
    t.ok(registry.getService("jobmesh.v1.PipelineService"), "the files link into a registry");
  }
});

t.test("reflection - the same stream does not resend imports", async (t) => {
  const [first, second] = await reflect(
    reflectionV1,
    { file_containing_symbol: "jobmesh.v1.PipelineService" },
    { file_by_filename: "jobmesh/v1/pipelines.proto" },
  );
  t.ok(decode(first).length > 5);
  t.same(decode(second).map((f) => f.name), ["jobmesh/v1/pipelines.proto"]);
});

t.test("reflection - file_by_filename, extensions and extension numbers", async (t) => {
  const [byName, missingFile, extension, numbers, unknownType] = await reflect(
    reflectionV1alpha,
    { file_by_filename: "google/api/annotations.proto" },
    { file_by_filename: "nope.proto" },
    { file_containing_extension: { containing_type: "google.protobuf.MethodOptions", extension_number: 50001 } },
    { all_extension_numbers_of_type: "google.protobuf.MethodOptions" },
    { all_extension_numbers_of_type: "jobmesh.v1.Nope" },
  );
  t.same(decode(byName).map((f) => f.name).sort(), [
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/protobuf/descriptor.proto",
  ]);
  t.equal(missingFile.error_response.error_code, grpc.status.NOT_FOUND);
  t.equal(decode(extension)[0].name, "jobmesh/v1/options.proto");
  t.equal(numbers.all_extension_numbers_response.base_type_name, "google.protobuf.MethodOptions");
  // 50001 is (jobmesh.v1.authz), 72295728 is (google.api.http)
  t.ok(numbers.all_extension_numbers_response.extension_number.includes(50001));
  t.ok(numbers.all_extension_numbers_response.extension_number.includes(72295728));
  t.equal(unknownType.error_response.error_code, grpc.status.NOT_FOUND);
});

t.test("reflection - descriptors keep custom options (authz, http, buf.validate)", async (t) => {
  const [res] = await reflect(reflectionV1, { file_by_filename: "jobmesh/v1/pipelines.proto" });
  const pipelines = decode(res)[0];
  const getPipeline = pipelines.service[0].method.find((m) => m.name === "GetPipeline");
  const options = getPipeline?.options;
  if (!options) throw new Error("GetPipeline has no options");
  t.ok(options.$unknown?.some((u) => u.no === 50001), "authz is on the wire as field 50001");
  t.ok(hasExtension(options, authz));
  t.equal(getExtension(options, authz).permission, "pipelines.get");

  const request = pipelines.messageType.find((m) => m.name === "GetPipelineRequest");
  const name = request?.field.find((f) => f.name === "name");
  if (!name?.options) throw new Error("GetPipelineRequest.name has no options");
  t.ok(hasExtension(name.options, validateField), "buf.validate rule survives");
});

t.test("health - Check answers SERVING, NOT_SERVING and NOT_FOUND", async (t) => {
  const check = (service: string) => unary<Response>(healthClient, "Check", { service });
  t.equal((await check("")).status, "SERVING");
  t.equal((await check("jobmesh.v1.PipelineService")).status, "SERVING");
  health.setStatus("jobmesh.v1.PipelineService", "NOT_SERVING");
  t.equal((await check("jobmesh.v1.PipelineService")).status, "NOT_SERVING");
  t.equal((await check("")).status, "SERVING", "other services keep their status");
  health.setAll("SERVING");
  t.equal((await check("jobmesh.v1.PipelineService")).status, "SERVING");
  await t.rejects(check("jobmesh.v1.Nope"), { code: grpc.status.NOT_FOUND });
  const list = await unary<Response>(healthClient, "List", {});
  t.same(Object.keys(list.statuses).sort(), ["", "jobmesh.v1.PipelineService"]);
});

/** Opens a Watch and returns a function that awaits the next status (or "end"). */
function watch(service: string) {
  const call = healthClient.Watch({ service });
  const queue: string[] = [];
  const waiting: ((s: string) => void)[] = [];
  const push = (s: string) => (waiting.length ? waiting.shift()!(s) : queue.push(s));
  call.on("data", (res: Response) => push(res.status));
  call.on("end", () => push("end"));
  call.on("error", (err: grpc.ServiceError) => push(`error ${err.code}`));
  const next = () => new Promise<string>((resolve) => (queue.length ? resolve(queue.shift()!) : waiting.push(resolve)));
  return { next, cancel: () => call.cancel() };
}

t.test("health - Watch sends the current status, then each change", async (t) => {
  const w = watch("jobmesh.v1.PipelineService");
  t.equal(await w.next(), "SERVING");
  health.setStatus("jobmesh.v1.PipelineService", "NOT_SERVING");
  t.equal(await w.next(), "NOT_SERVING");
  health.setStatus("jobmesh.v1.PipelineService", "SERVING");
  t.equal(await w.next(), "SERVING");
  w.cancel();
  t.equal(await w.next(), `error ${grpc.status.CANCELLED}`);
});

t.test("health - Watch of an unknown service waits for it to appear", async (t) => {
  const w = watch("jobmesh.v1.Later");
  t.equal(await w.next(), "SERVICE_UNKNOWN");
  health.setStatus("jobmesh.v1.Later", "SERVING");
  t.equal(await w.next(), "SERVING");
  w.cancel();
});

t.test("health - close() reports NOT_SERVING and ends every Watch", async (t) => {
  const w = watch("");
  t.equal(await w.next(), "SERVING");
  health.close();
  t.equal(await w.next(), "NOT_SERVING");
  t.equal(await w.next(), "end");
  health.setStatus("", "SERVING");
  t.equal((await unary<Response>(healthClient, "Check", { service: "" })).status, "NOT_SERVING");
});
