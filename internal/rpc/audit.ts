/**
 * The audit interceptor: one AuditEvent per RPC, refused calls included, handed to a sink that
 * publishes it without making the caller wait (internal/audit/sink.ts). It sits in the audit slot
 * (slots.ts), outside identity, so it sees who a refused call claimed to be, and inside the error
 * mapping, so the outcome is the code and message the client saw.
 *
 * The event is built by the pure, transport-free builder the gateway shares
 * (internal/audit/event.ts); this interceptor gathers the facts of the call: who, the resource,
 * the bounded request. Health and reflection calls are infrastructure, not operations: they are
 * not recorded.
 */
import { getOption, hasOption, toBinary, toJsonString, type DescMessage, type DescMethod, type Message } from "@bufbuild/protobuf";
import { createContextKey, type ConnectError, type Interceptor, type StreamRequest, type UnaryRequest } from "@connectrpc/connect";
import { isSpanContextValid, trace } from "@opentelemetry/api";
import { resource as resourceOption } from "../../gen/google/api/resource_pb.js";
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { auditEventOf, type AuditAttribution } from "../audit/event.ts";
import { isRedacted, meshRegistry, redacted } from "../contract/index.ts";
import { clientAddressKey } from "./client-address.ts";
import { attemptedCallerKey, callerKey } from "./context.ts";
import { createCallEndInterceptor, type CallEnd } from "./slots.ts";

export type { AuditAttribution } from "../audit/event.ts";

/** Set by the handler of a public method (Login…); read by the audit interceptor after the call. */
export const auditAttributionKey = createContextKey<AuditAttribution | undefined>(undefined, { description: "jobmesh audit attribution" });

/** Services every server exposes that are not operations on the mesh. */
const unauditedPrefixes = ["grpc.health.v1.", "grpc.reflection."];

/** True for a method whose calls are recorded. */
export function isAudited(method: DescMethod): boolean {
  return !unauditedPrefixes.some((p) => method.parent.typeName.startsWith(p));
}

/** What every call of a method shares, worked out on its first call. */
interface MethodInfo {
  audited: boolean;
  /** "jobmesh.v1.JobService.CreateJob". */
  action: string;
  /** The request's string field `request_id`, if it has one. */
  requestIdField?: string;
}

const methodInfos = new WeakMap<DescMethod, MethodInfo>();

function methodInfoOf(method: DescMethod): MethodInfo {
  let info = methodInfos.get(method);
  if (info) return info;
  const requestId = method.input.fields.find((f) => f.localName === "requestId" && f.fieldKind === "scalar");
  info = {
    audited: isAudited(method),
    action: `${method.parent.typeName}.${method.name}`,
    requestIdField: requestId?.localName,
  };
  methodInfos.set(method, info);
  return info;
}

/** The trace id of a call, read when it starts (a context value: a WeakMap entry per call costs the GC more). */
const traceIdKey = createContextKey<string>("", { description: "jobmesh audit trace id" });

export interface AuditInterceptorOptions {
  sink: { record(event: AuditEvent): void };
  /** The process that records: "jobs", "pipelines", "auth". */
  recorder: string;
  /** What building or recording an event threw (it never reaches the caller). */
  onFailure?: (error: unknown) => void;
}

/** The interceptor for the audit slot: one event per audited call, when the call is over. */
export function createAuditInterceptor(options: AuditInterceptorOptions): Interceptor {
  // The first message of each client stream, by the request object the inner interceptor sees.
  const firstMessages = new WeakMap<object, { message?: unknown }>();

  const record = (req: UnaryRequest | StreamRequest, error: ConnectError | undefined, end: CallEnd) => {
    const requestMessage = req.stream ? firstMessages.get(req)?.message : req.message;
    const header = req.header;
    const info = methodInfoOf(req.method);
    const { resource, resourceType } = resourceOf(req.method, requestMessage, error ? undefined : end.response);
    options.sink.record(
      auditEventOf({
        id: crypto.randomUUID(),
        action: info.action,
        caller: req.contextValues.get(callerKey),
        attempted: req.contextValues.get(attemptedCallerKey),
        attribution: req.contextValues.get(auditAttributionKey),
        error,
        resource,
        resourceType,
        requestId: stringField(requestMessage, info.requestIdField) || (header.get("x-request-id") ?? ""),
        traceId: req.contextValues.get(traceIdKey),
        startTime: end.startTime,
        durationMs: performance.now() - end.startMs,
        clientAddress: req.contextValues.get(clientAddressKey) ?? "",
        userAgent: header.get("user-agent") ?? "",
        request: requestMessage === undefined ? "" : requestJsonOf(req.method.input, requestMessage),
        recorder: options.recorder,
      }),
    );
  };
  const callEnd = createCallEndInterceptor(record, options.onFailure);

  return (next) => {
    const inner = callEnd(next);
    return async (req) => {
      if (!methodInfoOf(req.method).audited) return next(req);
      let call: UnaryRequest | StreamRequest = req;
      if (req.stream) {
        const seen: { message?: unknown } = {};
        // A server-streaming call has one request message: read it now, so a call identity
        // refuses still names its resource. A client stream is only watched as it is read.
        const message = req.method.methodKind === "server_streaming" ? await readAhead(req.message, seen) : watchFirst(req.message, seen);
        call = { ...req, message };
        firstMessages.set(call, seen);
      }
      // Read now: the telemetry interceptor's span is the active one while the call starts.
      const span = trace.getActiveSpan()?.spanContext();
      if (span && isSpanContextValid(span)) call.contextValues.set(traceIdKey, span.traceId);
      return inner(call);
    };
  };
}

/** Passes a request stream through, keeping its first message (nothing more is held). */
async function* watchFirst<T>(source: AsyncIterable<T>, seen: { message?: unknown }): AsyncGenerator<T> {
  for await (const message of source) {
    if (seen.message === undefined) seen.message = message;
    yield message;
  }
}

/** Reads the first message of `source` now (a failure is kept for whoever reads on) and replays it, then the rest. */
async function readAhead<T>(source: AsyncIterable<T>, seen: { message?: unknown }): Promise<AsyncIterable<T>> {
  const it = source[Symbol.asyncIterator]();
  let first: IteratorResult<T>;
  try {
    first = await it.next();
  } catch (error) {
    return (async function* () {
      yield* [];
      throw error;
    })();
  }
  if (!first.done) seen.message = first.value;
  return (async function* () {
    if (first.done) return;
    yield first.value;
    yield* { [Symbol.asyncIterator]: () => it };
  })();
}

/** A string field of the request by its localName, or "" when it has none. */
function stringField(message: unknown, localName: string | undefined): string {
  if (localName === undefined || message === undefined) return "";
  const value = (message as Record<string, unknown>)[localName];
  return typeof value === "string" ? value : "";
}

/** Longest request kept in an event, in UTF-8 bytes (the contract's 8 KiB). */
export const maxRequestBytes = 8 * 1024;
const cutMarker = "…[cut at 8 KiB]";

/**
 * Largest request, by its encoded (binary) size, that is written as JSON and then cut to
 * maxRequestBytes. Past it the event holds a stub naming the size: serialising megabytes (an
 * upload's chunk, a 2 MiB name) to keep 8 KiB of them would cost every such call milliseconds.
 * Not maxRequestBytes itself: a request just over 8 KiB (a job with a longer inline text) keeps
 * its first 8 KiB, which name what it was, for the price of a few tens of KiB of JSON.
 */
export const maxSerialisedRequestBytes = 64 * 1024;

/**
 * The request as the event keeps it: proto3 JSON of its redacted copy, at most maxRequestBytes
 * (a longer one is cut on a character boundary and ends with a marker that says so); a request
 * of more than maxSerialisedRequestBytes encoded is `{"omitted":"request of N bytes"}`.
 */
export function requestJsonOf(schema: DescMessage, message: unknown): string {
  let json: string;
  try {
    // The encoded size first: a bound from the fields' lengths, else a copy of the bytes (far
    // cheaper than JSON of them), only for a request that might pass the limit.
    if (encodedSizeBound(schema, message as Message, 0) > maxSerialisedRequestBytes) {
      const size = toBinary(schema, message as Message).length;
      if (size > maxSerialisedRequestBytes) return JSON.stringify({ omitted: `request of ${size} bytes` });
    }
    // A copy is made only for a type that can hold a marked field: most requests (a Get, a List)
    // cannot, and the copy costs far more than the JSON. JSON never carries unknown fields.
    const safe = mayHoldRedacted(schema) ? redacted(schema, message as Message) : (message as Message);
    json = toJsonString(schema, safe, { registry: meshRegistry });
  } catch {
    // An Any of an unknown type, say: the event still says what was called.
    return "{}";
  }
  const bytes = new TextEncoder().encode(json);
  if (bytes.length <= maxRequestBytes) return json;
  let cut = maxRequestBytes - new TextEncoder().encode(cutMarker).length;
  while (cut > 0 && (bytes[cut]! & 0xc0) === 0x80) cut--; // not inside a UTF-8 sequence
  return new TextDecoder().decode(bytes.subarray(0, cut)) + cutMarker;
}

/** Most bytes a tag and a length prefix take, or a varint, fixed64 or double value. */
const fieldOverhead = 16;

/**
 * Never less than the message's encoded size (a string counts 3 bytes per UTF-16 unit, every number
 * and tag the most a varint takes), without encoding it: a walk of the set fields. Infinity when
 * it cannot tell (unknown fields, absurd depth): the caller then measures.
 */
function encodedSizeBound(schema: DescMessage, message: Message, depth: number): number {
  const unknown = (message as { $unknown?: unknown[] }).$unknown;
  if (depth > 64 || (unknown !== undefined && unknown.length > 0)) return Infinity;
  const fields = message as unknown as Record<string, unknown>;
  let size = 0;
  for (const field of schema.fields) {
    let value: unknown;
    if (field.oneof) {
      const chosen = fields[field.oneof.localName] as { case?: string; value?: unknown } | undefined;
      if (chosen?.case !== field.localName) continue;
      value = chosen.value;
    } else value = fields[field.localName];
    if (value === undefined || value === null) continue;
    const nested = field.fieldKind === "scalar" || field.fieldKind === "enum" ? undefined : field.message;
    if (field.fieldKind === "list") for (const item of value as unknown[]) size += valueBound(item, nested, depth);
    else if (field.fieldKind === "map") {
      for (const [key, item] of Object.entries(value as object)) size += fieldOverhead + valueBound(key, undefined, depth) + valueBound(item, nested, depth);
    } else size += valueBound(value, nested, depth);
    if (size > maxSerialisedRequestBytes) return size;
  }
  return size;
}

function valueBound(value: unknown, schema: DescMessage | undefined, depth: number): number {
  if (typeof value === "string") return fieldOverhead + 3 * value.length;
  if (value instanceof Uint8Array) return fieldOverhead + value.length;
  // A message, unless a wrapper type's field holds its plain value.
  if (schema && typeof value === "object" && value !== null) return fieldOverhead + encodedSizeBound(schema, value as Message, depth + 1);
  return fieldOverhead;
}

const holdsRedacted = new WeakMap<DescMessage, boolean>();

/** True when a field marked (jobmesh.v1.redact) is in this type or any type it holds, at any depth. */
export function mayHoldRedacted(schema: DescMessage): boolean {
  let known = holdsRedacted.get(schema);
  if (known === undefined) holdsRedacted.set(schema, (known = searchRedacted(schema, new Set())));
  return known;
}

// Not cached per nested type: a type met again while it is being searched (a recursive type)
// counts as clean only for this search, whose root still sees every field of the cycle.
function searchRedacted(schema: DescMessage, visiting: Set<DescMessage>): boolean {
  visiting.add(schema);
  return schema.fields.some((field) => {
    if (isRedacted(field)) return true;
    const nested = field.fieldKind === "message" ? field.message : (field.fieldKind === "list" || field.fieldKind === "map") && field.message ? field.message : undefined;
    return nested !== undefined && !visiting.has(nested) && searchRedacted(nested, visiting);
  });
}

/** Where a method's resource name is found, worked out once per method. */
interface ResourcePlan {
  /** A string field of the request named `name`, or a resource message in it (UpdateUser's `user`). */
  request?: { field: string; nested?: string };
  /** A resource message in the response (CreateJob's `job`): what a create made. */
  response?: string;
}

const plans = new WeakMap<DescMethod, ResourcePlan>();
let patterns: { type: string; regex: RegExp }[] | undefined;

/** The resource a call acted on and its type: the request's name, else what the answer names. */
export function resourceOf(method: DescMethod, request: unknown, response: unknown): { resource: string; resourceType: string } {
  let plan = plans.get(method);
  if (!plan) plans.set(method, (plan = planOf(method)));
  let resource = "";
  if (plan.request && request !== undefined) resource = nameIn(request, plan.request.field, plan.request.nested);
  if (!resource && plan.response && response !== undefined) resource = nameIn(response, plan.response, "name");
  return { resource, resourceType: resource ? resourceTypeOf(resource) : "" };
}

/** The google.api.resource type whose pattern matches `name`, or "". */
export function resourceTypeOf(name: string): string {
  patterns ??= resourcePatterns();
  return patterns.find((p) => p.regex.test(name))?.type ?? "";
}

function planOf(method: DescMethod): ResourcePlan {
  const plan: ResourcePlan = {};
  const name = method.input.fields.find((f) => f.name === "name" && f.fieldKind === "scalar");
  if (name) plan.request = { field: name.localName };
  else {
    const nested = resourceField(method.input);
    if (nested) plan.request = { field: nested, nested: "name" };
  }
  const made = resourceField(method.output);
  if (made) plan.response = made;
  return plan;
}

/** The localName of a singular message field whose type is a resource with a `name`. */
function resourceField(schema: DescMessage): string | undefined {
  return schema.fields.find((f) => f.fieldKind === "message" && hasOption(f.message, resourceOption) && f.message.fields.some((g) => g.name === "name"))?.localName;
}

function nameIn(message: unknown, field: string, nested?: string): string {
  let value = (message as Record<string, unknown>)[field];
  if (nested !== undefined) value = typeof value === "object" && value !== null ? (value as Record<string, unknown>)[nested] : undefined;
  return typeof value === "string" ? value : "";
}

/** Every resource pattern of the mesh's messages, each anchored at both ends ("jobs/{job}" does not match "jobs/x/result"). */
function resourcePatterns(): { type: string; regex: RegExp }[] {
  const found: { type: string; pattern: string }[] = [];
  for (const type of meshRegistry) {
    if (type.kind !== "message" || !hasOption(type, resourceOption)) continue;
    const descriptor = getOption(type, resourceOption);
    for (const pattern of descriptor.pattern) found.push({ type: descriptor.type, pattern });
  }
  return found.map(({ type, pattern }) => ({
    type,
    regex: new RegExp(`^${pattern.split("/").map((s) => (/^\{[a-z_]+\}$/.test(s) ? "[^/]+" : s.replace(/[.*+?^$()|[\]\\]/g, "\\$&"))).join("/")}$`),
  }));
}
