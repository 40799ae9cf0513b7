// Server reflection end to end, as grpcurl uses it: against a running PipelineService (the
// one-port server from startTestMesh), a @grpc/grpc-js reflection client built from
// @grpc/reflection's own .proto files lists every served service, describes every method's
// input and output, and the descriptors it hands out are enough to call the service.
// (test/reflection-health.test.ts covers the reflection protocol itself in isolation.)
import t from "tap";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { create, createFileRegistry, fromBinary, toBinary, type DescService, type FileRegistry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { Health } from "../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ReflectionV1 } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1alpha } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

type Stub = grpc.Client & Record<string, (...args: unknown[]) => any>;
type Message = Record<string, any>;

// Reflection is public; only the call of PipelineService at the end signs in.
const mesh = await startTestMesh({}, { auth: true });
const address = mesh.pipelines.url.replace(/^http:\/\//, "");

/** Everything this server serves, as our generated descriptors describe it. */
const served: DescService[] = [PipelineService, Health, ReflectionV1, ReflectionV1alpha];

const reflectionProtos = "node_modules/@grpc/reflection/build/proto";
function reflectionStub(version: "v1" | "v1alpha"): Stub {
  const definition = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, {
    keepCase: true,
    defaults: true,
    oneofs: true,
    includeDirs: [reflectionProtos],
  });
  const Ctor = (grpc.loadPackageDefinition(definition) as any).grpc.reflection[version].ServerReflection;
  return new Ctor(address, grpc.credentials.createInsecure());
}
const stubs = { v1: reflectionStub("v1"), v1alpha: reflectionStub("v1alpha") };
const clients: grpc.Client[] = [stubs.v1, stubs.v1alpha];

t.teardown(async () => {
  for (const client of clients) client.close();
  await mesh.close();
});

/** One request on a fresh reflection stream (a stream sends each import once, so fresh = all). */
function ask(client: Stub, request: Message): Promise<Message> {
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on("data", (res: Message) => {
      call.end();
      resolve(res);
    });
    call.on("error", reject);
    call.write({ host: "localhost", ...request });
  });
}

function filesOf(res: Message): FileDescriptorProto[] {
  if (res.message_response !== "file_descriptor_response") {
    throw new Error(`expected descriptors, got ${JSON.stringify(res.error_response)}`);
  }
  return res.file_descriptor_response.file_descriptor_proto.map((b: Buffer) => fromBinary(FileDescriptorProtoSchema, b));
}

/** Links reflected files the way a client does; throws when an import or type is missing. */
function link(files: FileDescriptorProto[]): FileRegistry {
  const byName = new Map(files.map((f) => [f.name, f]));
  return createFileRegistry(files[0], (name) => byName.get(name));
}

for (const version of ["v1", "v1alpha"] as const) {
  t.test(`reflection ${version} - list_services names exactly the services this port serves`, async (t) => {
    const res = await ask(stubs[version], { list_services: "" });
    t.equal(res.message_response, "list_services_response");
    t.same(res.list_services_response.service.map((s: Message) => s.name).sort(), served.map((s) => s.typeName).sort());
  });

  t.test(`reflection ${version} - every listed service is described, with every method's input and output`, async (t) => {
    const listed = (await ask(stubs[version], { list_services: "" })).list_services_response.service.map((s: Message) => s.name as string);
    t.ok(listed.length >= served.length);
    for (const name of listed) {
      const registry = link(filesOf(await ask(stubs[version], { file_containing_symbol: name })));
      const described = registry.getService(name);
      const ours = served.find((s) => s.typeName === name);
      if (!described || !ours) {
        t.fail(`${name} is listed but ${described ? "not served" : "not described"}`);
        continue;
      }
      t.same(
        described.methods.map((m) => [m.name, m.input.typeName, m.output.typeName, m.methodKind]),
        ours.methods.map((m) => [m.name, m.input.typeName, m.output.typeName, m.methodKind]),
        `${name}: methods, input, output and streaming kind`,
      );
      for (const method of described.methods) {
        t.same(
          method.input.fields.map((f) => f.name),
          ours.methods.find((m) => m.name === method.name)!.input.fields.map((f) => f.name),
          `${name}.${method.name} input fields`,
        );
        t.same(
          method.output.fields.map((f) => f.name),
          ours.methods.find((m) => m.name === method.name)!.output.fields.map((f) => f.name),
          `${name}.${method.name} output fields`,
        );
      }
    }
  });

  t.test(`reflection ${version} - a method and its message types can be described by name`, async (t) => {
    for (const method of PipelineService.methods) {
      const symbol = `${PipelineService.typeName}.${method.name}`;
      const fromMethod = link(filesOf(await ask(stubs[version], { file_containing_symbol: symbol })));
      t.equal(fromMethod.getService(PipelineService.typeName)?.methods.find((m) => m.name === method.name)?.input.typeName, method.input.typeName, symbol);
      for (const type of [method.input, method.output]) {
        const files = filesOf(await ask(stubs[version], { file_containing_symbol: type.typeName }));
        t.ok(link(files).getMessage(type.typeName), `${type.typeName} is described`);
      }
    }
  });
}

t.test("reflection - an unknown symbol is NOT_FOUND, as grpcurl expects", async (t) => {
  const res = await ask(stubs.v1, { file_containing_symbol: "jobmesh.v1.NoSuchService" });
  t.equal(res.message_response, "error_response");
  t.equal(res.error_response.error_code, grpc.status.NOT_FOUND);
});

t.test("reflection - the reflected descriptors alone are enough to call PipelineService (grpcurl style)", async (t) => {
  const files = filesOf(await ask(stubs.v1, { file_containing_symbol: PipelineService.typeName }));
  // proto-loader links the set itself; hand it every file the service needs, nothing of ours.
  const set = toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: files }));
  const definition = protoLoader.loadFileDescriptorSetFromBuffer(Buffer.from(set), { keepCase: true, enums: String, defaults: true, oneofs: true });
  const Client = grpc.makeClientConstructor(definition[PipelineService.typeName] as grpc.ServiceDefinition, PipelineService.typeName);
  const client = new Client(address, grpc.credentials.createInsecure()) as Stub;
  clients.push(client);
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(await mesh.auth!.headersFor("admin"))) metadata.set(key, value);
  const res = await new Promise<Message>((resolve, reject) =>
    client.GetPipeline({ name: "pipelines/document-default" }, metadata, (err: grpc.ServiceError | null, r: Message) => (err ? reject(err) : resolve(r))),
  );
  t.equal(res.pipeline.name, "pipelines/document-default");
  t.same(
    res.pipeline.config.stages.map((s: Message) => s.stage),
    ["STAGE_INGEST", "STAGE_DETECT", "STAGE_PARSE", "STAGE_ENRICH", "STAGE_OUTPUT"],
  );
});
