/**
 * REST ⇄ proto: a request message from the path variables, the query string and the JSON body
 * of an HTTP request, following its http binding; responses in proto3 JSON. Strict like the
 * proto3 JSON mapping: an unknown field or a wrong type is INVALID_ARGUMENT naming the field as
 * the client wrote it, with a google.rpc.BadRequest field violation.
 *
 * Query parameters follow grpc-gateway's rules: any field not bound by the path or the body,
 * by proto or JSON name, nested with "." ("filter.state=RUNNING"), repeated by repeating the key
 * (a=1&a=2), maps as "labels[key]=value", enums by name or number, 64-bit integers, bytes
 * (base64), and the well-known types with a string JSON form (Timestamp, Duration, FieldMask,
 * wrappers). No query parameter is accepted when the body is "*".
 */
import { create, fromJson, ScalarType, toJson, type DescField, type DescMessage, type JsonObject, type JsonValue, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { meshRegistry, type HttpBinding } from "../contract/index.ts";
// @deno-types="../../gen/google/rpc/error_details_pb.d.ts"
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";

const readOptions = { registry: meshRegistry };
const writeOptions = { registry: meshRegistry, alwaysEmitImplicit: true };

/** "" (or only whitespace) is no body; anything else must be JSON. */
export function parseJsonBody(text: string): unknown {
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ConnectError(`request body is not valid JSON: ${e instanceof Error ? e.message : String(e)}`, Code.InvalidArgument);
  }
}

/**
 * The request message of `binding` from the matched path variables, the query string and the
 * parsed body (undefined for none). Path variables set their (nested) fields; body "*" fills the
 * whole request, body "field" that field; every other field may come from the query string.
 */
export function requestFromHttp(binding: HttpBinding, variables: Map<string, string>, query: URLSearchParams, body: unknown): Message {
  const schema = binding.method.input;
  const json: JsonObject = {};
  if (binding.body === "") {
    if (body !== undefined) throw new ConnectError(`${binding.verb} ${binding.path} takes no request body`, Code.InvalidArgument);
  } else if (binding.body === "*") {
    if (body !== undefined) {
      if (!isObject(body)) throw invalidField("", `the request body must be a JSON object (${schema.typeName}), got ${kindOf(body)}`, "INVALID_VALUE");
      for (const [key, value] of Object.entries(body)) setOwn(json, key, value as JsonValue);
    }
    const first = query.keys().next();
    if (!first.done) throw invalidField(first.value, `unknown query parameter "${first.value}": this request takes all its fields from the body`, "UNKNOWN_FIELD");
  } else if (body !== undefined) {
    json[fieldByName(schema, binding.body)!.jsonName] = body as JsonValue;
  }

  for (const key of new Set(query.keys())) setFromQuery(binding, json, key, query.getAll(key));
  for (const [fieldPath, value] of variables) setFromPath(schema, json, fieldPath, value);

  try {
    return fromJson(schema, json, readOptions);
  } catch (e) {
    const found = locate(schema, json, "");
    if (found) throw invalidField(found.field, found.unknown ? `unknown field "${found.field}"` : `invalid value for "${found.field}": ${found.reason}`, found.unknown ? "UNKNOWN_FIELD" : "INVALID_VALUE");
    throw invalidField("", `invalid request: ${reasonOf(e)}`, "INVALID_VALUE");
  }
}

/** The response in proto3 JSON, or only its response_body field when the binding names one. */
export function responseToJson(binding: HttpBinding, message: Message): JsonValue {
  const json = toJson(binding.method.output, message as never, writeOptions);
  if (binding.responseBody === "") return json;
  return (json as JsonObject)[fieldByName(binding.method.output, binding.responseBody)!.jsonName] ?? null;
}

/** One message in proto3 JSON, as responses are written (for stream messages: SSE, NDJSON). */
export function messageToJson(message: Message): JsonValue {
  const desc = meshRegistry.getMessage(message.$typeName);
  if (!desc) throw new Error(`${message.$typeName} is not in the mesh registry`);
  return toJson(desc, message as never, writeOptions);
}

function setFromQuery(binding: HttpBinding, json: JsonObject, key: string, values: string[]): void {
  const unknown = () => invalidField(key, `unknown query parameter "${key}"`, "UNKNOWN_FIELD");
  let desc = binding.method.input;
  let target = json;
  const protoPath: string[] = [];
  const parts = key.split(".");
  for (let i = 0; i < parts.length; i++) {
    const part = /^([A-Za-z_][A-Za-z0-9_]*)(?:\[(.*)\])?$/.exec(parts[i]!);
    if (!part) throw unknown();
    const field = fieldByName(desc, part[1]!);
    if (!field) throw unknown();
    protoPath.push(field.name);
    const mapKey = part[2];
    const last = i === parts.length - 1;
    if (i === 0 && field.name === binding.body) throw invalidField(key, `query parameter "${key}" names a field the request body sets`, "INVALID_VALUE");
    const bound = protoPath.join(".");
    for (const variable of pathVariablesOf(binding)) {
      if (variable === bound || variable.startsWith(`${bound}.`) || bound.startsWith(`${variable}.`)) {
        throw invalidField(key, `query parameter "${key}" names a field the path sets`, "INVALID_VALUE");
      }
    }
    if (!last) {
      if (mapKey !== undefined || field.fieldKind !== "message" || isWellKnown(field.message)) throw unknown();
      // Only message fields are descended into, and the query sets none itself: this is an object.
      target = (target[field.jsonName] ??= {}) as JsonObject;
      desc = field.message;
      continue;
    }
    const value = queryValueOf(key, field, mapKey, values);
    // Checked on its own, so the error names the parameter as the client wrote it.
    try {
      fromJson(desc, { [field.jsonName]: value }, readOptions);
    } catch (e) {
      throw invalidField(key, `invalid value for query parameter "${key}": ${reasonOf(e)}`, "INVALID_VALUE");
    }
    if (mapKey !== undefined) {
      const map = (target[field.jsonName] ??= {}) as JsonObject;
      if (Object.hasOwn(map, mapKey)) throw invalidField(key, `query parameter "${key}" is given more than once`, "INVALID_VALUE");
      setOwn(map, mapKey, (value as JsonObject)[mapKey]!);
    } else {
      if (Object.hasOwn(target, field.jsonName)) throw invalidField(key, `query parameter "${key}" is given more than once`, "INVALID_VALUE");
      target[field.jsonName] = value;
    }
  }
}

/** The JSON value a query parameter stands for; for a map entry, `{key: value}`. */
function queryValueOf(key: string, field: DescField, mapKey: string | undefined, values: string[]): JsonValue {
  const notHere = () => invalidField(key, `query parameter "${key}": ${field.name} cannot be set from the query string`, "INVALID_VALUE");
  const single = () => {
    if (values.length > 1) throw invalidField(key, `query parameter "${key}" is given more than once`, "INVALID_VALUE");
    return values[0]!;
  };
  if (mapKey !== undefined) {
    if (field.fieldKind !== "map" || field.mapKind === "message") throw notHere();
    return { [mapKey]: field.mapKind === "enum" ? enumValueOf(single()) : scalarValueOf(key, field.scalar, single()) };
  }
  switch (field.fieldKind) {
    case "scalar":
      return scalarValueOf(key, field.scalar, single());
    case "enum":
      return enumValueOf(single());
    case "list":
      if (field.listKind === "scalar") return values.map((v) => scalarValueOf(key, field.scalar, v));
      if (field.listKind === "enum") return values.map(enumValueOf);
      throw notHere();
    case "message": {
      const scalar = stringFormOf(field.message);
      if (scalar === undefined) throw notHere();
      return scalar === "string" ? single() : scalarValueOf(key, scalar, single());
    }
    default:
      throw notHere();
  }
}

function scalarValueOf(key: string, scalar: ScalarType, text: string): JsonValue {
  if (scalar !== ScalarType.BOOL) return text; // proto3 JSON reads numbers, 64-bit integers and base64 bytes from strings
  if (text === "true") return true;
  if (text === "false") return false;
  throw invalidField(key, `invalid value for query parameter "${key}": expected true or false, got "${text}"`, "INVALID_VALUE");
}

function enumValueOf(text: string): JsonValue {
  return /^-?\d+$/.test(text) ? Number(text) : text;
}

/** Well-known types whose JSON is a string (or a wrapped scalar), so a query value can carry them. */
/** How a well-known type is written as one query value ("string" for its JSON string form), or undefined when it has none (the OpenAPI document asks too). */
export function stringFormOf(message: DescMessage): ScalarType | "string" | undefined {
  switch (message.typeName) {
    case "google.protobuf.Timestamp":
    case "google.protobuf.Duration":
    case "google.protobuf.FieldMask":
      return "string";
    case "google.protobuf.DoubleValue":
    case "google.protobuf.FloatValue":
    case "google.protobuf.Int64Value":
    case "google.protobuf.UInt64Value":
    case "google.protobuf.Int32Value":
    case "google.protobuf.UInt32Value":
    case "google.protobuf.BoolValue":
    case "google.protobuf.StringValue":
    case "google.protobuf.BytesValue":
      return message.fields[0]!.scalar;
    default:
      return undefined;
  }
}

/** Sets a path variable's field; the body may name the same field only with the same value. */
function setFromPath(schema: DescMessage, json: JsonObject, fieldPath: string, value: string): void {
  let desc = schema;
  let target = json;
  const jsonPath: string[] = [];
  const names = fieldPath.split(".");
  names.forEach((name, i) => {
    const field = fieldByName(desc, name)!;
    const existingKey = [field.jsonName, field.name].find((k) => k in target && target[k] !== null);
    jsonPath.push(existingKey ?? field.jsonName);
    if (i < names.length - 1) {
      const next = existingKey === undefined ? (target[field.jsonName] = {}) : target[existingKey];
      if (!isObject(next)) throw invalidField(jsonPath.join("."), `invalid value for "${jsonPath.join(".")}": expected an object, got ${kindOf(next)}`, "INVALID_VALUE");
      target = next;
      desc = field.message!;
      return;
    }
    if (existingKey !== undefined && target[existingKey] !== value) {
      throw invalidField(jsonPath.join("."), `"${jsonPath.join(".")}" in the body differs from the path, which sets it to "${value}"`, "INVALID_VALUE");
    }
    if (existingKey !== undefined) delete target[existingKey];
    target[field.jsonName] = value;
  });
}

/**
 * The first field of `json` that fails alone: unknown, or a value of the wrong type. Descends
 * into messages, lists and maps of messages so a nested problem gets its full path, e.g.
 * `requests[1].job.priority`.
 */
function locate(desc: DescMessage, json: unknown, path: string): { field: string; unknown: boolean; reason: string } | undefined {
  if (!isObject(json)) return undefined;
  for (const [key, value] of Object.entries(json)) {
    const here = path === "" ? key : `${path}.${key}`;
    const field = fieldByName(desc, key);
    if (!field) return { field: here, unknown: true, reason: "unknown field" };
    try {
      fromJson(desc, { [key]: value }, readOptions);
      continue;
    } catch (e) {
      const inner = locateInside(field, value, here);
      return inner ?? { field: here, unknown: false, reason: reasonOf(e) };
    }
  }
  return undefined;
}

function locateInside(field: DescField, value: JsonValue, here: string) {
  const tryOne = (message: DescMessage, item: unknown, at: string) => {
    try {
      fromJson(message, item as JsonValue, readOptions);
      return undefined;
    } catch (e) {
      return locate(message, item, at) ?? { field: at, unknown: false, reason: reasonOf(e) };
    }
  };
  if (field.fieldKind === "message" && !isWellKnown(field.message)) return locate(field.message, value, here);
  if (field.fieldKind === "list" && field.listKind === "message" && !isWellKnown(field.message) && Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = tryOne(field.message, value[i], `${here}[${i}]`);
      if (found) return found;
    }
  }
  if (field.fieldKind === "map" && field.mapKind === "message" && !isWellKnown(field.message) && isObject(value)) {
    for (const [k, v] of Object.entries(value)) {
      const found = tryOne(field.message, v, `${here}[${JSON.stringify(k)}]`);
      if (found) return found;
    }
  }
  return undefined;
}

function pathVariablesOf(binding: HttpBinding): string[] {
  return [...binding.path.matchAll(/\{([A-Za-z0-9_.]+)/g)].map((m) => m[1]!);
}

function fieldByName(desc: DescMessage, name: string): DescField | undefined {
  return desc.fields.find((f) => f.jsonName === name || f.name === name);
}

function isWellKnown(desc: DescMessage): boolean {
  return desc.typeName.startsWith("google.protobuf.");
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function kindOf(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
}

/** protobuf-es says "cannot decode field x.y.Z.f from JSON: <reason>"; the client needs the reason. */
function reasonOf(e: unknown): string {
  const message = e instanceof Error ? e.message : String(e);
  return message.replace(/^cannot decode (?:field |message )?\S+ from JSON:? ?/, "");
}

/** INVALID_ARGUMENT with a google.rpc.BadRequest naming `field` ("" when the whole request is at fault: no detail). */
function invalidField(field: string, description: string, reason: string): ConnectError {
  const details = field === "" ? [] : [{ desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: [{ field, description, reason }] }) }];
  return new ConnectError(description, Code.InvalidArgument, undefined, details);
}

/**
 * Sets an own property, whatever its name: plain assignment of "__proto__" would set the object's
 * prototype and drop the key, so an unknown field of that name would pass unnoticed.
 */
function setOwn(target: JsonObject, key: string, value: JsonValue): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}
