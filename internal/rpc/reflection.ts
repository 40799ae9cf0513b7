/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha) for Connect routers, so grpcurl and
 * other reflection clients can list, describe and call our services without proto files.
 *
 * Answers carry the requested file and its transitive imports as serialized
 * FileDescriptorProtos, as grpc-go does. The bytes come from `DescFile.proto`, whose options keep
 * custom extensions such as `(jobmesh.v1.authz)` and `(buf.validate.field)` as unknown fields, so
 * clients see them too.
 */
import { Code, type ConnectRouter } from "@connectrpc/connect";
import { create, createFileRegistry, toBinary } from "@bufbuild/protobuf";
import type { DescEnum, DescFile, DescMessage, FileRegistry } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { file_grpc_health_v1_health, Health } from "../../gen/grpc/health/v1/health_pb.js";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { filesWithImports } from "../contract/index.ts";

/** A reflection request as both protocol versions shape it. */
type Query =
  | {
      case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices";
      value: string;
    }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: undefined; value?: undefined };

/** A reflection answer as both protocol versions shape it (init shapes, no $typeName). */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/** Every file reachable from the registry, and where each symbol and extension is declared. */
interface Index {
  files: Map<string, DescFile>;
  symbols: Map<string, DescFile>;
  /** extendee full name → extension number → declaring file */
  extensions: Map<string, Map<number, DescFile>>;
  services: string[];
}

/**
 * Registers `grpc.reflection.v1.ServerReflection` and `grpc.reflection.v1alpha.ServerReflection`.
 *
 * @param registry the files this server's types come from; their imports are found through the
 *   files themselves, so a registry holding only the service files is enough.
 * @param serviceNames fully-qualified services this server serves; list_services also returns
 *   grpc.health.v1.Health and both reflection services.
 */
export function registerReflection(
  router: ConnectRouter,
  registry: FileRegistry,
  serviceNames: string[],
): void {
  const index = buildIndex(registry, [
    ...serviceNames,
    Health.typeName,
    v1.ServerReflection.typeName,
    v1alpha.ServerReflection.typeName,
  ]);
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const req of requests) {
        const messageResponse = answer(index, req.messageRequest, sent);
        yield create(v1.ServerReflectionResponseSchema, {
          validHost: req.host,
          originalRequest: req,
          messageResponse,
        });
      }
    },
  });
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const req of requests) {
        const messageResponse = answer(index, req.messageRequest, sent);
        yield create(v1alpha.ServerReflectionResponseSchema, {
          validHost: req.host,
          originalRequest: req,
          messageResponse,
        });
      }
    },
  });
}

/**
 * Builds a FileRegistry from generated file descriptors (`file_jobmesh_v1_pipelines`, ...) and
 * their transitive imports. `createFileRegistry(...files)` does not accept DescFiles: it takes
 * registries or FileDescriptorProtos.
 */
export function createReflectionRegistry(...files: DescFile[]): FileRegistry {
  // Dependencies first: the registry resolves each file's imports as it adds it.
  const set = create(FileDescriptorSetSchema, { file: filesWithImports(files).map((f) => f.proto) });
  return createFileRegistry(set);
}

function buildIndex(registry: FileRegistry, serviceNames: string[]): Index {
  const index: Index = {
    files: new Map(),
    symbols: new Map(),
    extensions: new Map(),
    services: [...new Set(serviceNames)].sort(),
  };
  const addMessage = (file: DescFile, message: DescMessage): void => {
    index.symbols.set(message.typeName, file);
    for (const field of message.fields) index.symbols.set(`${message.typeName}.${field.name}`, file);
    for (const oneof of message.oneofs) index.symbols.set(`${message.typeName}.${oneof.name}`, file);
    message.nestedMessages.forEach((m) => addMessage(file, m));
    // Map entries (Pipeline.LabelsEntry) are real messages to protoc but have no DescMessage.
    for (const entry of message.proto.nestedType.filter((n) => n.options?.mapEntry)) {
      const name = `${message.typeName}.${entry.name}`;
      index.symbols.set(name, file);
      for (const field of entry.field) index.symbols.set(`${name}.${field.name}`, file);
    }
    message.nestedEnums.forEach((e) => addEnum(file, e));
    message.nestedExtensions.forEach((x) => addExtension(file, x.typeName, x.extendee.typeName, x.number));
  };
  const addEnum = (file: DescFile, desc: DescEnum): void => {
    index.symbols.set(desc.typeName, file);
    // Enum values are scoped like their enum's siblings (C++ scoping); accept both spellings.
    const scope = desc.parent?.typeName ?? file.proto.package;
    for (const value of desc.values) {
      index.symbols.set(scope ? `${scope}.${value.name}` : value.name, file);
      index.symbols.set(`${desc.typeName}.${value.name}`, file);
    }
  };
  const addExtension = (file: DescFile, name: string, extendee: string, no: number): void => {
    index.symbols.set(name, file);
    let numbers = index.extensions.get(extendee);
    if (!numbers) index.extensions.set(extendee, (numbers = new Map()));
    numbers.set(no, file);
  };
  const addFile = (file: DescFile): void => {
    if (index.files.has(file.proto.name)) return;
    index.files.set(file.proto.name, file);
    file.messages.forEach((m) => addMessage(file, m));
    file.enums.forEach((e) => addEnum(file, e));
    file.extensions.forEach((x) => addExtension(file, x.typeName, x.extendee.typeName, x.number));
    for (const service of file.services) {
      index.symbols.set(service.typeName, file);
      for (const method of service.methods) index.symbols.set(`${service.typeName}.${method.name}`, file);
    }
    file.dependencies.forEach(addFile);
  };
  // The health and reflection services are always served, so they can always be described.
  for (const file of registry.files) addFile(file);
  addFile(file_grpc_health_v1_health);
  addFile(v1.file_grpc_reflection_v1_reflection);
  addFile(v1alpha.file_grpc_reflection_v1alpha_reflection);
  return index;
}

function answer(index: Index, query: Query, sent: Set<string>): Answer {
  switch (query.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: index.services.map((name) => ({ name })) } };
    case "fileByFilename":
      return withDependencies(index.files.get(query.value), sent, `file ${query.value}`);
    case "fileContainingSymbol":
      return withDependencies(index.symbols.get(query.value), sent, `symbol ${query.value}`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = query.value;
      const file = index.extensions.get(containingType)?.get(extensionNumber);
      return withDependencies(file, sent, `extension ${extensionNumber} of ${containingType}`);
    }
    case "allExtensionNumbersOfType": {
      if (!index.symbols.has(query.value)) return notFound(`type ${query.value}`);
      const numbers = [...(index.extensions.get(query.value)?.keys() ?? [])].sort((a, b) => a - b);
      return {
        case: "allExtensionNumbersResponse",
        value: { baseTypeName: query.value, extensionNumber: numbers },
      };
    }
    default:
      return error(Code.InvalidArgument, "reflection request names no message_request");
  }
}

/**
 * The file first, then its transitive imports breadth-first, skipping imports already sent on
 * this stream (the protocol allows it, and grpc-go does the same); the file itself always goes.
 */
function withDependencies(file: DescFile | undefined, sent: Set<string>, what: string): Answer {
  if (!file) return notFound(what);
  const out: Uint8Array[] = [];
  const queue = [file];
  for (let current = queue.shift(); current; current = queue.shift()) {
    const name = current.proto.name;
    if (out.length === 0 || !sent.has(name)) {
      sent.add(name);
      out.push(toBinary(FileDescriptorProtoSchema, current.proto));
      queue.push(...current.dependencies);
    }
  }
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } };
}

function notFound(what: string): Answer {
  return error(Code.NotFound, `${what} not found`);
}

function error(code: Code, errorMessage: string): Answer {
  return { case: "errorResponse", value: { errorCode: code, errorMessage } };
}
