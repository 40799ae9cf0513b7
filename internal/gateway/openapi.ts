/**
 * The OpenAPI 3.1 document of the gateway, derived at start-up from the descriptors: one
 * operation per http binding (paths from the `google.api.http` rules, parameters and bodies
 * from the request messages, responses from the response messages), schemas from the messages
 * (./json-schema.ts), the access rule of each method, and the one error body every failure
 * shares. Nothing in it is written by hand per route, so a new RPC shows up by itself.
 */
import type { DescMessage, DescMethod } from "@bufbuild/protobuf";
import { accessRuleOf, serviceNames, type HttpBinding } from "../contract/index.ts";
import { SchemaCollector, refTo, type JsonSchema } from "./json-schema.ts";
import { isDownloadMethod } from "./download.ts";
import { parsePathTemplate } from "./path-template.ts";
import { stringFormOf } from "./transcode.ts";
import { uploadShapeOf } from "./upload.ts";

export interface OpenApiOptions {
  title?: string;
  version: string;
  serverUrl?: string;
}

/** OpenAPI 3.1 derived from the descriptors: paths from the http rules, schemas from the messages. Built once at start. */
export function buildOpenApiDocument(bindings: readonly HttpBinding[], options: OpenApiOptions): Record<string, unknown> {
  const schemas = new SchemaCollector();
  const paths: Record<string, Record<string, unknown>> = {};
  const bindingsSeen = new Map<DescMethod, number>();
  for (const binding of bindings) {
    const seen = bindingsSeen.get(binding.method) ?? 0;
    bindingsSeen.set(binding.method, seen + 1);
    const { path, parameters, boundFields } = openApiPathOf(binding);
    const operationKey = binding.verb.toLowerCase();
    if (!openApiMethods.has(operationKey)) {
      throw new Error(`${methodName(binding.method)}: HTTP method ${binding.verb} has no OpenAPI operation`);
    }
    const item = (paths[path] ??= {});
    if (item[operationKey]) throw new Error(`${methodName(binding.method)}: ${binding.verb} ${path} is bound twice`);
    item[operationKey] = operationOf(binding, seen, parameters, boundFields, schemas);
  }
  const services = [...new Set(bindings.map((b) => b.method.parent))];
  return {
    openapi: "3.1.0",
    info: {
      title: options.title ?? "jobmesh API",
      version: options.version,
      description:
        "REST/JSON for the jobmesh services, translated by the gateway to their RPCs. Bodies follow the proto3 JSON " +
        "mapping (camelCase names, 64-bit integers as strings, enums by name). Authenticate with an access token " +
        "(`Authorization: Bearer <jwt>`, from `POST /v1/auth:login`) or an API key (`x-api-key`). Errors carry a " +
        "`google.rpc.Status` body.",
    },
    ...(options.serverUrl ? { servers: [{ url: options.serverUrl }] } : {}),
    tags: services.map((s) => ({ name: s.name, description: `${s.typeName}, served by cmd/${serviceNames[s.typeName] ?? "?"}.` })),
    security: [{ bearerAuth: [] }, { apiKey: [] }],
    paths,
    components: {
      schemas: { ...schemas.components, Status: statusSchema },
      responses: Object.fromEntries(errorResponses.map((e) => [e.name, errorResponseOf(e)])),
      securitySchemes: {
        bearerAuth: { type: "http", scheme: "bearer", bearerFormat: "JWT", description: "An access token from Login, RefreshToken or ExchangeApiKey." },
        apiKey: { type: "apiKey", in: "header", name: "x-api-key", description: "An API key from CreateApiKey." },
      },
    },
  };
}

/** The JSON Schema (2020-12, as OpenAPI 3.1 embeds it) of a message's proto3 JSON form, with $refs into components.schemas — e2e tests validate responses with it (ajv 2020, installed). */
export function schemaRefOf(message: DescMessage): { $ref: string } {
  return refTo(message, "output");
}

/** An OpenAPI path parameter made of one `*` of a path template variable. */
export interface PathParameter {
  /** The parameter's name in the OpenAPI path, e.g. "job". */
  name: string;
  /** The request field the variable fills, e.g. "name" or "user.name". */
  fieldPath: string;
  /** What the variable's value looks like with the parameters in place, e.g. "jobs/{job}". */
  fieldTemplate: string;
}

/**
 * The OpenAPI path of a binding: each `*` (or `**`) inside a variable becomes a parameter named
 * after the literal before it, singular ("jobs/*" → {job}), or `<field>_<n>`; custom verbs stay.
 * "/v1/{name=jobs/*}:cancel" → "/v1/jobs/{job}:cancel" with job forming `name = jobs/{job}`.
 */
export function openApiPathOf(binding: HttpBinding): { path: string; parameters: PathParameter[]; boundFields: Set<string> } {
  const template = parsePathTemplate(binding.path);
  const parts: string[] = [];
  const parameters: PathParameter[] = [];
  const used = new Set<string>();
  const variableAt = (i: number) => template.variables.find((v) => i >= v.start && i < v.end);
  const fieldParts = new Map<string, string[]>();
  template.segments.forEach((segment, i) => {
    const variable = variableAt(i);
    if (segment.kind === "literal") {
      parts.push(segment.value);
      if (variable) fieldParts.get(variable.fieldPath)?.push(segment.value) ?? fieldParts.set(variable.fieldPath, [segment.value]);
      return;
    }
    const previous = i > 0 && variable && i - 1 >= variable.start ? template.segments[i - 1] : undefined;
    const base = variable ? variable.fieldPath.replaceAll(".", "_") : "segment";
    let name = previous?.kind === "literal" ? singular(previous.value) : variable && variable.end - variable.start === 1 ? base : `${base}_${i}`;
    while (used.has(name)) name = `${name}_${i}`;
    used.add(name);
    parts.push(`{${name}}`);
    if (variable) {
      const list = fieldParts.get(variable.fieldPath) ?? [];
      list.push(`{${name}}`);
      fieldParts.set(variable.fieldPath, list);
      parameters.push({ name, fieldPath: variable.fieldPath, fieldTemplate: "" });
    } else {
      parameters.push({ name, fieldPath: "", fieldTemplate: "" });
    }
  });
  for (const parameter of parameters) parameter.fieldTemplate = fieldParts.get(parameter.fieldPath)?.join("/") ?? "";
  const path = "/" + parts.join("/") + (template.verb ? `:${template.verb}` : "");
  return { path, parameters, boundFields: new Set(template.variables.map((v) => v.fieldPath)) };
}

/** "deliveries" → "delivery", "jobs" → "job", "apiKeys" → "apiKey"; a word that is not plural stays. */
export function singular(word: string): string {
  if (word.endsWith("ies")) return word.slice(0, -3) + "y";
  if (word.endsWith("ss") || word.endsWith("us") || !word.endsWith("s")) return word;
  return word.slice(0, -1);
}

const openApiMethods = new Set(["get", "put", "post", "delete", "options", "head", "patch", "trace"]);

function methodName(method: DescMethod): string {
  return `${method.parent.typeName}.${method.name}`;
}

function operationOf(
  binding: HttpBinding,
  bindingIndex: number,
  pathParameters: PathParameter[],
  boundFields: Set<string>,
  schemas: SchemaCollector,
): Record<string, unknown> {
  const { method } = binding;
  const rule = accessRuleOf(method);
  const permission = rule.kind === "public" ? "public" : rule.permission;
  const notes = [
    rule.kind === "public" ? "Public: needs no credentials." : `Requires the permission \`${rule.permission}\`.`,
    `RPC: \`${methodName(method)}\`.`,
  ];
  const parameters: unknown[] = pathParameters.map((p) => ({
    name: p.name,
    in: "path",
    required: true,
    description: p.fieldPath ? `Forms the field \`${p.fieldPath}\` = \`${p.fieldTemplate}\`.` : "A path segment the request does not read.",
    schema: { type: "string", pattern: "^[^/]+$" },
  }));
  let requestBody: Record<string, unknown> | undefined;

  const upload = uploadShapeOf(method);
  if (upload) {
    notes.push(
      "Send the document as the raw body (any content type; `filename` and `sha256` from the query, or " +
        "`Content-Disposition` and `Content-Digest` headers) or as `multipart/form-data` with a `file` part. It is " +
        "streamed to the service, never buffered whole; over the document size limit the answer is 413.",
    );
    // The raw form takes these two from the query; the rest of the metadata comes from headers.
    const fromQuery = queryParametersOf(upload.metadata.message, schemas, new Set()).filter((p) => p.name === "filename" || p.name === "sha256");
    parameters.push(...fromQuery);
    const digest = fromQuery.find((p) => p.name === "sha256");
    requestBody = {
      required: true,
      content: {
        "application/octet-stream": { schema: { type: "string", format: "binary" } },
        "multipart/form-data": {
          schema: {
            type: "object",
            properties: { ...(digest ? { sha256: digest.schema } : {}), file: { type: "string", format: "binary" } },
            required: ["file"],
          },
        },
      },
    };
  } else if (binding.body === "*") {
    requestBody = bodyOfWholeRequest(method.input, boundFields, schemas);
  } else {
    if (binding.body !== "") {
      const field = method.input.fields.find((f) => f.name === binding.body);
      if (field) {
        // With an update mask the body carries only the fields it changes (AIP-134).
        const form = method.input.fields.some((f) => f.name === "update_mask") ? "update" : "input";
        requestBody = { required: schemas.isRequiredInput(field), content: { "application/json": { schema: schemas.fieldSchema(field, form) } } };
      }
    }
    const skip = new Set([...boundFields, ...(binding.body ? [binding.body] : [])]);
    parameters.push(...queryParametersOf(method.input, schemas, skip));
  }
  const success = successResponseOf(binding, schemas, notes);
  return {
    operationId: `${method.parent.name}_${method.name}${bindingIndex > 0 ? `_${bindingIndex + 1}` : ""}`,
    tags: [method.parent.name],
    summary: sentenceOf(method.name),
    description: notes.join("\n\n"),
    "x-jobmesh-permission": permission,
    ...(rule.kind === "public" ? { security: [] } : {}),
    ...(parameters.length > 0 ? { parameters } : {}),
    ...(requestBody ? { requestBody } : {}),
    responses: { "200": success, ...errorRefs(requestBody !== undefined) },
  };
}

/** "GetCurrentIdentity" → "Get current identity": the generated code carries no proto comments to say more. */
function sentenceOf(name: string): string {
  const words = name.replace(/([a-z0-9])([A-Z])/g, "$1 $2").toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** Body "*": the whole request, minus the fields the path fills (those would be refused or overridden). */
function bodyOfWholeRequest(input: DescMessage, boundFields: Set<string>, schemas: SchemaCollector): Record<string, unknown> {
  const pathFilled = input.fields.filter((f) => boundFields.has(f.name));
  if (pathFilled.length === 0) {
    const required = input.fields.some((f) => schemas.isRequiredInput(f));
    return { required, content: { "application/json": { schema: schemas.ref(input, "input") } } };
  }
  const rest = input.fields.filter((f) => !boundFields.has(f.name));
  const required = rest.filter((f) => schemas.isRequiredInput(f)).map((f) => f.jsonName);
  const schema: JsonSchema = {
    type: "object",
    title: input.name,
    properties: Object.fromEntries(rest.map((f) => [f.jsonName, schemas.fieldSchema(f, "input")])),
    additionalProperties: false,
    description: `${input.typeName} without ${pathFilled.map((f) => `\`${f.jsonName}\``).join(", ")}, which the path gives.`,
  };
  if (required.length > 0) schema.required = required;
  return { required: required.length > 0, content: { "application/json": { schema } } };
}

/**
 * The query parameters of a request: every field the path and body leave, nested messages as
 * dotted json names ("filter.createTime"), repeated fields as repeated parameters. Maps and
 * messages without a string form are left out; recursion stops at a type already on the way down.
 */
function queryParametersOf(message: DescMessage, schemas: SchemaCollector, skip: Set<string>, at: QueryPrefix = rootPrefix): Record<string, unknown>[] {
  const parameters: Record<string, unknown>[] = [];
  for (const field of message.fields) {
    const protoPath = at.proto ? `${at.proto}.${field.name}` : field.name;
    const name = at.json ? `${at.json}.${field.jsonName}` : field.jsonName;
    if (skip.has(protoPath) || field.fieldKind === "map") continue;
    if (field.fieldKind === "message" && stringFormOf(field.message) === undefined) {
      if (at.depth >= 3 || at.types.has(field.message.typeName)) continue;
      const below = { proto: protoPath, json: name, depth: at.depth + 1, types: new Set([...at.types, message.typeName]) };
      parameters.push(...queryParametersOf(field.message, schemas, skip, below));
      continue;
    }
    if (field.fieldKind === "list" && field.listKind === "message" && stringFormOf(field.message) === undefined) continue;
    const parameter: Record<string, unknown> = { name, in: "query", schema: schemas.fieldSchema(field, "input") };
    if (field.fieldKind === "list") Object.assign(parameter, { style: "form", explode: true });
    if (at.depth === 0 && schemas.isRequiredInput(field)) parameter.required = true;
    parameters.push(parameter);
  }
  return parameters;
}

/** Where queryParametersOf is on its way down a request message. */
interface QueryPrefix {
  proto: string;
  json: string;
  depth: number;
  types: Set<string>;
}

const rootPrefix: QueryPrefix = { proto: "", json: "", depth: 0, types: new Set() };

function successResponseOf(binding: HttpBinding, schemas: SchemaCollector, notes: string[]): Record<string, unknown> {
  const { method } = binding;
  if (isDownloadMethod(method)) {
    notes.push("Streams the bytes with `Content-Type` = the result's media type and `Content-Length` = its size.");
    return { description: "The bytes of the result.", content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } } };
  }
  if (method.methodKind === "server_streaming") {
    const message = schemas.ref(method.output, "output");
    notes.push(
      "A stream: Server-Sent Events by default (`id:` = the event sequence; reconnect with `Last-Event-ID` to resume " +
        "without gaps or repeats; `: keep-alive` comments while idle; an `error` event carries a Status), or NDJSON " +
        `with \`Accept: application/x-ndjson\` (one \`{"result": ...}\` per line, \`{"error": Status}\` on failure).`,
    );
    return {
      description: `A stream of ${method.output.typeName}.`,
      content: {
        "text/event-stream": { schema: { type: "string", description: `Each event's data is a ${method.output.typeName} in JSON.` } },
        "application/x-ndjson": {
          schema: {
            type: "object",
            description: "One of these per line.",
            properties: { result: message, error: { $ref: "#/components/schemas/Status" } },
          },
        },
      },
    };
  }
  const field = binding.responseBody ? method.output.fields.find((f) => f.name === binding.responseBody) : undefined;
  const schema = field ? schemas.fieldSchema(field, "output") : schemas.ref(method.output, "output");
  return { description: `${field ? `The \`${field.jsonName}\` of ` : ""}${method.output.typeName}.`, content: { "application/json": { schema } } };
}

/** The error body of every failure: google.rpc.Status in its JSON form. */
const statusSchema: JsonSchema = {
  type: "object",
  title: "Status",
  description: "google.rpc.Status: the gRPC code, a message for people, and typed details (e.g. google.rpc.BadRequest with field violations).",
  properties: {
    code: { type: "integer", format: "int32", description: "The gRPC status code, e.g. 3 for INVALID_ARGUMENT." },
    message: { type: "string" },
    details: {
      type: "array",
      items: { type: "object", properties: { "@type": { type: "string" } }, required: ["@type"] },
    },
  },
  required: ["code", "message"],
};

interface ErrorResponse {
  status: string;
  name: string;
  description: string;
  headers?: Record<string, unknown>;
  bodyOnly?: boolean;
}

const errorResponses: ErrorResponse[] = [
  { status: "400", name: "BadRequest", description: "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: details name the fields." },
  { status: "401", name: "Unauthenticated", description: "UNAUTHENTICATED: no credential, or one that is not valid." },
  { status: "403", name: "PermissionDenied", description: "PERMISSION_DENIED: the caller's roles do not grant the permission." },
  { status: "404", name: "NotFound", description: "NOT_FOUND." },
  { status: "409", name: "Conflict", description: "ALREADY_EXISTS, or ABORTED (e.g. an etag that does not match)." },
  { status: "413", name: "PayloadTooLarge", description: "The body is over the size limit.", bodyOnly: true },
  {
    status: "429",
    name: "TooManyRequests",
    description: "RESOURCE_EXHAUSTED: a rate limit or quota.",
    headers: {
      "Retry-After": { description: "Seconds to wait.", schema: { type: "integer" } },
      RateLimit: { description: "The remaining budget (draft IETF RateLimit header fields).", schema: { type: "string" } },
      "RateLimit-Policy": { schema: { type: "string" } },
    },
  },
  { status: "500", name: "Internal", description: "INTERNAL or UNKNOWN: the message carries only a trace id." },
  { status: "501", name: "Unimplemented", description: "UNIMPLEMENTED: the service is not served by this deployment." },
  { status: "503", name: "Unavailable", description: "UNAVAILABLE: the service cannot be reached; retry." },
  { status: "504", name: "DeadlineExceeded", description: "DEADLINE_EXCEEDED: the deadline (`grpc-timeout` or the default) passed." },
];

function errorResponseOf(e: ErrorResponse): Record<string, unknown> {
  return {
    description: e.description,
    ...(e.headers ? { headers: e.headers } : {}),
    content: { "application/json": { schema: { $ref: "#/components/schemas/Status" } } },
  };
}

/** The error responses an operation can give; 413 only where there is a body to be too large. */
function errorRefs(hasBody: boolean): Record<string, unknown> {
  return Object.fromEntries(
    errorResponses.filter((e) => hasBody || !e.bodyOnly).map((e) => [e.status, { $ref: `#/components/responses/${e.name}` }]),
  );
}
