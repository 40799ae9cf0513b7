/**
 * Property-based requests generated from the gateway's own `/openapi.json`: for every operation,
 * hostile path variables (unicode, `..`, `%2F`, `%00`, invalid UTF-8, thousands of characters),
 * query strings (unknown keys, huge numbers, unicode) and bodies (malformed JSON, a wrong type
 * for a field, huge numbers, deep nesting, strings around the body limit, missing fields,
 * unicode, odd content types), as an admin and as nobody; beside them the operator paths
 * (/healthz, /readyz, /metrics, /openapi.json), /docs/<any string>, random HTTP method tokens on
 * every kind of path, and Connect/gRPC-Web pass-through paths (/<pkg.Service>/<Method>, real and
 * made up) with random bodies. Whatever arrives, the gateway answers no 5xx (bar 501 for a
 * service this deployment does not serve; never 503), and every 4xx carries a google.rpc.Status
 * JSON body whose code agrees with the status (404 → NOT_FOUND, 405 → UNIMPLEMENTED); a
 * pass-through answer may instead be the Connect protocol's own error. Afterwards /metrics has
 * grown no series for the method tokens sent.
 *
 * Bounded by the number of runs alone (a sweep, then 300 generated requests, fixed seed;
 * JOBMESH_FUZZ_SEED overrides it; a failure prints the seed and path to replay), never by time:
 * a slow machine takes longer, it does not fail.
 */
import t from "tap";
import { codeToHttpStatus } from "@connectrpc/connect/protocol-connect";
import fc from "fast-check";
import { Agent, request } from "node:http";
import { meshServices, procedureOf } from "../internal/contract/index.ts";
import { isStatusBody, startGatewayMesh } from "./support/gateway.ts";

const seed = Number(process.env.JOBMESH_FUZZ_SEED ?? 20261207);
// With the sweep below (each operation twice, ~100 requests), about 400 requests in all.
const numRuns = 300;
// Small, so bodies around the limit stay cheap; 413 past it.
const bodyLimit = 64 * 1024;
// A hang guard for a loaded 2-core machine, not a target: the run is bounded by numRuns.
t.setTimeout(300_000);
// Rate limits out of the way: a 429 is a fine answer, but a fuzz run of 429s tests nothing else.
const unlimited = Object.fromEntries(["TENANT", "CREDENTIAL", "ADDRESS"].flatMap((what) => [[`JOBMESH_GATEWAY_RATE_PER_${what}`, "100000"], [`JOBMESH_GATEWAY_BURST_PER_${what}`, "100000"]]));
const gateway = await startGatewayMesh(t, { jobs: true, env: { JOBMESH_GATEWAY_MAX_BODY_BYTES: String(bodyLimit), ...unlimited } });
const adminToken = await gateway.mesh.auth!.tokenFor("admin");
const { hostname, port } = new URL(gateway.url);
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
t.teardown(() => agent.destroy());

/** The services startGatewayMesh leaves without a backend: their routes answer 501 UNIMPLEMENTED. */
const unservedServices = new Set(["AuditService", "WebhookService"]);

type Schema = Record<string, unknown>;
interface Operation {
  id: string;
  service: string;
  verb: string;
  path: string;
  pathNames: string[];
  queryNames: string[];
  /** The JSON body's schema, when the operation takes JSON. */
  jsonBody?: Schema;
  /** Takes a raw or multipart body (UploadDocument). */
  rawBody: boolean;
}

const document = (await (await fetch(`${gateway.url}/openapi.json`)).json()) as {
  paths: Record<string, Record<string, { operationId: string; tags?: string[]; parameters?: { name: string; in: string }[]; requestBody?: { content: Record<string, { schema: Schema }> } }>>;
};
const operations: Operation[] = Object.entries(document.paths).flatMap(([path, item]) =>
  Object.entries(item).map(([verb, op]) => ({
    id: op.operationId,
    service: op.tags?.[0] ?? "",
    verb: verb.toUpperCase(),
    path,
    pathNames: [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]),
    queryNames: (op.parameters ?? []).filter((p) => p.in === "query").map((p) => p.name),
    jsonBody: op.requestBody?.content["application/json"]?.schema,
    rawBody: Boolean(op.requestBody?.content["application/octet-stream"]),
  })),
);

/** Follows `#/...` refs within the document. */
function resolve(schema: Schema): Schema {
  let current = schema;
  for (let hops = 0; typeof current.$ref === "string" && hops < 20; hops++) {
    current = (current.$ref as string).slice(2).split("/").reduce<unknown>((node, token) => (node as Record<string, unknown>)[token.replaceAll("~1", "/").replaceAll("~0", "~")], document) as Schema;
  }
  return current;
}

/** A value shaped by `schema` (every field optional, so "missing fields" come for free), down to a few levels. */
function valueOf(schema: Schema, depth = 0): fc.Arbitrary<unknown> {
  const s = resolve(schema);
  const variants = (s.oneOf ?? s.anyOf) as Schema[] | undefined;
  if (variants?.length) return fc.oneof(...variants.map((v) => valueOf(v, depth + 1)));
  if (Array.isArray(s.enum) && s.enum.length > 0) return fc.constantFrom(...(s.enum as unknown[]));
  const type = Array.isArray(s.type) ? (s.type as string[]).find((x) => x !== "null") : (s.type as string | undefined);
  if (depth > 4) return fc.constant(type === "object" ? {} : null);
  switch (type) {
    case "object": {
      const properties = (s.properties ?? {}) as Record<string, Schema>;
      if (Object.keys(properties).length === 0 && typeof s.additionalProperties === "object") {
        return fc.dictionary(fc.string({ maxLength: 8 }), valueOf(s.additionalProperties as Schema, depth + 1), { maxKeys: 3 });
      }
      return fc.record(Object.fromEntries(Object.entries(properties).map(([k, v]) => [k, valueOf(v, depth + 1)])), { requiredKeys: [] });
    }
    case "array":
      return fc.array(valueOf((s.items ?? {}) as Schema, depth + 1), { maxLength: 3 });
    case "integer":
      return fc.integer();
    case "number":
      return fc.double();
    case "boolean":
      return fc.boolean();
    case "string":
      if (s.format === "int64" || s.format === "uint64") return fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n }).map(String);
      if (s.format === "date-time") return fc.date({ noInvalidDate: true }).map((d) => d.toISOString());
      if (s.format === "byte") return fc.uint8Array({ maxLength: 32 }).map((b) => Buffer.from(b).toString("base64"));
      return fc.string({ unit: "binary", maxLength: 24 });
    default:
      return fc.oneof(fc.constant(null), fc.string(), fc.integer());
  }
}

/** Replacements for one spot in a body: values of the wrong type, numbers JSON can carry but int64/double cannot, unicode. */
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(12345, -1, 0.5, true, false, null, [], {}, "", "abc", [1, "two", null], { nested: { deeper: [] } }),
  fc.constantFrom("RAW:1e999", "RAW:-1e999", "RAW:18446744073709551616", "RAW:-9223372036854775809", "RAW:1.0e-400", "RAW:123456789012345678901234567890"),
  fc.constantFrom("NaN", "Infinity", "-0", "0x10", "1e5", "9223372036854775808", " 1", "JOB_STATE_BOGUS", "STAGE_UNSPECIFIED"),
  fc.string({ unit: "binary", maxLength: 64 }),
  fc.integer({ min: bodyLimit - 2048, max: bodyLimit + 2048 }).map((n) => "é".repeat(Math.floor(n / 2))),
);

/** Every path to a value inside `value` (the root included). */
function spotsOf(value: unknown, at: (string | number)[] = []): (string | number)[][] {
  const spots = [at];
  if (value && typeof value === "object") for (const [k, v] of Object.entries(value)) spots.push(...spotsOf(v, [...at, Array.isArray(value) ? Number(k) : k]));
  return spots;
}

function replaceAt(value: unknown, at: (string | number)[], replacement: unknown): unknown {
  if (at.length === 0) return replacement;
  const copy = (Array.isArray(value) ? [...value] : { ...(value as object) }) as Record<string | number, unknown>;
  copy[at[0]] = replaceAt(copy[at[0]], at.slice(1), replacement);
  return copy;
}

/** JSON text; "RAW:<n>" strings become bare number tokens JSON.stringify cannot write. */
const jsonText = (value: unknown) => JSON.stringify(value).replace(/"RAW:([^"]*)"/g, "$1");

/** A JSON body for a schema: well-shaped, one spot replaced, nested past any parser's comfort, or not JSON at all. */
function jsonBodyOf(schema: Schema): fc.Arbitrary<Buffer> {
  const shaped = valueOf(schema);
  return fc.oneof(
    shaped.map((v) => Buffer.from(jsonText(v))),
    fc.tuple(shaped, fc.nat(), hostileValue).map(([v, i, r]) => {
      const spots = spotsOf(v);
      return Buffer.from(jsonText(replaceAt(v, spots[i % spots.length], r)));
    }),
    fc.integer({ min: 100, max: 40_000 }).map((n) => Buffer.from(`{"a":${"[".repeat(n)}${"]".repeat(n)}}`)),
    fc.integer({ min: 100, max: 20_000 }).map((n) => Buffer.from(`${'{"x":'.repeat(n)}1${"}".repeat(n)}`)),
    fc.tuple(shaped, fc.nat()).map(([v, cut]) => {
      const text = jsonText(v);
      return Buffer.from(text.slice(0, cut % Math.max(1, text.length)));
    }),
    fc.constantFrom("", "{", "}", "[]", "null", "42", '"text"', "{'single': 1}", '{"a":1,}', "{\"a\":1}{\"b\":2}", "\uFEFF{}", '{"__proto__":{"x":1}}').map((s) => Buffer.from(s)),
    fc.uint8Array({ maxLength: 256 }).map((b) => Buffer.from(b)),
    fc.integer({ min: bodyLimit - 1024, max: bodyLimit + 4096 }).map((n) => Buffer.from(`{"x":"${"a".repeat(n)}"}`)),
  );
}

const jsonContentType = fc.oneof(
  { weight: 6, arbitrary: fc.constant("application/json") },
  { weight: 1, arbitrary: fc.constantFrom("text/plain", "application/json; charset=latin1", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "") },
);
const rawContentType = fc.constantFrom("application/pdf", "application/octet-stream", "text/plain", "multipart/form-data; boundary=fuzz", "multipart/form-data", "", "x/y;;;=");

/** Percent-encodes every byte but the unreserved ones (RFC 3986): what a careful client sends for any string. */
function percentEncode(bytes: Uint8Array): string {
  return [...bytes].map((b) => (/[A-Za-z0-9\-._~]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, "0")}`)).join("");
}
const encoded = (s: string) => percentEncode(Buffer.from(s, "utf8"));

/** Path variable values, sent as they are (dot segments and escapes the gateway must not decode into routing). */
const pathValue = fc.oneof(
  fc.constantFrom("..", ".", "%2e%2e", "%2E%2E%2F", "%2F", "a%2Fb", "%00", "a%00b", "%", "%zz", "%C0%AE%C0%AE", "%FF%FE", "~", "%252F", "..%2F..%2Fetc%2Fpasswd", "%20", "+", "*", "a:b", "%3A"),
  fc.string({ unit: "binary", minLength: 1, maxLength: 40 }).map(encoded),
  fc.uint8Array({ minLength: 1, maxLength: 16 }).map((b) => percentEncode(b)),
  fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,62}$/),
  fc.integer({ min: 1000, max: 8000 }).map((n) => "a".repeat(n)),
);

const queryValue = fc.oneof(
  fc.constantFrom("1e999", "-1", "99999999999999999999999999", "-9223372036854775809", "NaN", "true", "", "0x1F", "JOB_STATE_SUCCEEDED", "STATE_BOGUS", "2026-13-45T99:99:99Z", "1.5"),
  fc.string({ unit: "binary", maxLength: 30 }).map(encoded),
  fc.uint8Array({ maxLength: 16 }).map((b) => percentEncode(b)),
  fc.integer({ min: 1000, max: 6000 }).map((n) => "x".repeat(n)),
);

interface FuzzRequest {
  /** What generated it: an operation id, "operator", "docs" or "pass-through". */
  origin: string;
  /** The service whose route it is, when there is one (a 501 of an unserved service is fine). */
  service: string;
  /** A Connect/gRPC-Web pass-through path: a 4xx may be the Connect protocol's own error. */
  passthrough: boolean;
  method: string;
  caller: "admin" | "anonymous";
  path: string;
  query: string;
  contentType: string;
  body?: Buffer;
}

/**
 * HTTP method tokens (RFC 9110 tchar): extension methods, a lower-case "get" (methods are case
 * sensitive), the standard ones off their routes. Not CONNECT, which asks for a tunnel rather than
 * an answer.
 */
const methodToken = fc
  .oneof(
    fc.constantFrom("XYZZY", "PROPFIND", "MKCOL", "TRACE", "QUERY", "PURGE", "M-SEARCH", "get", "Post", "OPTIONS", "HEAD", "GET", "POST", "PUT", "PATCH", "DELETE"),
    fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}$/),
  )
  .filter((m) => m !== "CONNECT");

function requestsOf(operation: Operation): fc.Arbitrary<FuzzRequest> {
  const queryKey = fc.oneof(fc.constantFrom(...operation.queryNames, "unknownField", "a.b.c", "pageSize", "page_size", "name", "$alt", ""), fc.string({ maxLength: 12 }).map(encoded));
  const body: fc.Arbitrary<{ contentType: string; body?: Buffer }> = operation.jsonBody
    ? fc.record({ contentType: jsonContentType, body: jsonBodyOf(operation.jsonBody) })
    : operation.rawBody
      ? fc.record({ contentType: rawContentType, body: fc.oneof(fc.uint8Array({ maxLength: 4096 }).map((b) => Buffer.from(b)), fc.constant(Buffer.from("--fuzz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n%PDF-1.4 truncated"))) })
      : fc.oneof({ weight: 4, arbitrary: fc.constant({ contentType: "" }) }, { weight: 1, arbitrary: fc.record({ contentType: jsonContentType, body: jsonBodyOf({}) }) });
  return fc.record({
    origin: fc.constant(operation.id),
    service: fc.constant(operation.service),
    passthrough: fc.constant(false),
    method: fc.oneof({ weight: 9, arbitrary: fc.constant(operation.verb) }, { weight: 1, arbitrary: methodToken }),
    caller: fc.constantFrom("admin" as const, "anonymous" as const),
    path: fc.array(pathValue, { minLength: operation.pathNames.length, maxLength: operation.pathNames.length }).map((values) => operation.path.replace(/\{[^}]+\}/g, () => values.shift()!)),
    query: fc.array(fc.tuple(queryKey, queryValue), { maxLength: 4 }).map((pairs) => pairs.map(([k, v]) => `${k}=${v}`).join("&")),
  }).chain((r) => body.map((b) => printable({ ...r, ...b })));
}

const caller = fc.constantFrom("admin" as const, "anonymous" as const);
const anyQuery = fc.array(fc.tuple(fc.string({ maxLength: 12 }).map(encoded), queryValue), { maxLength: 3 }).map((pairs) => pairs.map(([k, v]) => `${k}=${v}`).join("&"));

/** The gateway's own endpoints, mostly with GET, sometimes with any method token. */
const operatorRequest: fc.Arbitrary<FuzzRequest> = fc
  .record({
    origin: fc.constant("operator"),
    service: fc.constant(""),
    passthrough: fc.constant(false),
    method: fc.oneof({ weight: 3, arbitrary: fc.constantFrom("GET", "HEAD") }, { weight: 2, arbitrary: methodToken }),
    caller,
    path: fc.constantFrom("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/", "/healthz/", "/metrics/x", "/openapi.json/", "//healthz"),
    query: fc.oneof(fc.constant(""), anyQuery),
    contentType: fc.constant(""),
  })
  .map(printable);

/**
 * /docs/<any string>: the page's own assets, names every JavaScript object has (constructor,
 * __proto__, toString), traversal, and arbitrary strings, escaped or raw.
 */
const docsRequest: fc.Arbitrary<FuzzRequest> = fc
  .record({
    origin: fc.constant("docs"),
    service: fc.constant(""),
    passthrough: fc.constant(false),
    method: fc.oneof({ weight: 4, arbitrary: fc.constantFrom("GET", "HEAD") }, { weight: 1, arbitrary: methodToken }),
    caller,
    path: fc
      .oneof(
        fc.constantFrom("swagger-ui.css", "swagger-ui-bundle.js", "jobmesh-docs-init.js", "favicon-16x16.png", "constructor", "__proto__", "toString", "hasOwnProperty", "valueOf", "__defineGetter__", "prototype", "..", "../package.json", "..%2Fpackage.json", "%2e%2e/%2e%2e/etc/passwd", "swagger-ui.css/", "index.html", ""),
        fc.string({ unit: "binary", minLength: 1, maxLength: 40 }).map(encoded),
        fc.stringMatching(/^[A-Za-z0-9._~-]{1,40}$/),
        fc.array(pathValue, { minLength: 1, maxLength: 3 }).map((parts) => parts.join("/")),
      )
      .map((rest) => `/docs/${rest}`),
    query: fc.constant(""),
    contentType: fc.constant(""),
  })
  .map(printable);

/** The mesh's procedures as Connect and gRPC-Web clients name them, and names that are none of them. */
const procedures = meshServices.flatMap((s) => s.methods.map((m) => procedureOf(m)));
const procedurePath = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...procedures) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      "/jobmesh.v1.JobService/NoSuchMethod",
      "/jobmesh.v1.NoSuchService/GetJob",
      "/jobmesh.v1.JobService/",
      "/jobmesh.v1.JobService/GetJob/extra",
      "/jobmesh.v1.JobService/getJob",
      "/grpc.health.v1.Health/Check",
      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      "/foo.Bar/Baz",
    ),
  },
  { weight: 1, arbitrary: fc.tuple(fc.stringMatching(/^[a-z][a-z0-9_]{0,8}(\.[a-z0-9_]{1,8}){0,2}$/), fc.stringMatching(/^[A-Z][A-Za-z0-9_]{0,16}$/), fc.stringMatching(/^[A-Z][A-Za-z0-9_]{0,16}$/)).map(([pkg, service, method]) => `/${pkg}.${service}/${method}`) },
);

/** Content types a Connect, gRPC-Web or gRPC client sends, and some no client sends. */
const passthroughContentType = fc.constantFrom(
  "application/json",
  "application/proto",
  "application/connect+json",
  "application/connect+proto",
  "application/grpc-web+proto",
  "application/grpc-web+json",
  "application/grpc-web-text",
  "application/grpc",
  "text/plain",
  "",
);

/** Connect/gRPC-Web pass-through requests: random bytes, JSON-ish bodies, bodies past the limit; mostly POST. */
const passthroughRequest: fc.Arbitrary<FuzzRequest> = fc
  .record({
    origin: fc.constant("pass-through"),
    passthrough: fc.constant(true),
    method: fc.oneof({ weight: 4, arbitrary: fc.constant("POST") }, { weight: 1, arbitrary: methodToken }),
    caller,
    path: procedurePath,
    query: fc.oneof({ weight: 4, arbitrary: fc.constant("") }, { weight: 1, arbitrary: anyQuery }),
    contentType: passthroughContentType,
    body: fc.oneof(
      fc.uint8Array({ maxLength: 4096 }).map((b) => Buffer.from(b)),
      jsonBodyOf({}),
      fc.constantFrom('{"name":"pipelines/document-default"}', '{"name":"jobs/fuzz"}', "{}", "\u0000\u0000\u0000\u0000\u0002{}").map((b) => Buffer.from(b)),
      fc.integer({ min: bodyLimit + 1, max: bodyLimit + 8192 }).map((n) => Buffer.from(`{"name":"${"p".repeat(n)}"}`)),
    ),
  })
  .map((r) => printable({ ...r, service: /^\/jobmesh\.v1\.([A-Za-z]+)\//.exec(r.path)?.[1] ?? "" }));

/** Every kind of request, most of them to the operations of /openapi.json. */
const anyRequest: fc.Arbitrary<FuzzRequest> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...operations).chain(requestsOf) },
  { weight: 1, arbitrary: operatorRequest },
  { weight: 1, arbitrary: docsRequest },
  { weight: 2, arbitrary: passthroughRequest },
);

/** fast-check prints a counterexample with this, not as a dump of its (possibly 64 KiB) body bytes. */
function printable(r: FuzzRequest): FuzzRequest {
  return Object.assign(r, { [fc.toStringMethod]: () => describe(r) });
}

interface Answer {
  status: number;
  contentType: string;
  body: string;
}

/** Sends the request byte for byte (node:http leaves the path as given; fetch would normalise `..`). */
function send(r: FuzzRequest): Promise<Answer> {
  const headers: Record<string, string | number> = {};
  if (r.caller === "admin") headers.authorization = `Bearer ${adminToken}`;
  if (r.contentType) headers["content-type"] = r.contentType;
  if (r.body) headers["content-length"] = r.body.byteLength;
  return new Promise((resolve, reject) => {
    const req = request({ agent, host: hostname, port, method: r.method, path: r.path + (r.query ? `?${r.query}` : ""), headers, timeout: 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on("data", (chunk: Buffer) => {
        size += chunk.byteLength;
        if (size <= 1024 * 1024) chunks.push(chunk);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers["content-type"] ?? ""), body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error("no answer within 30 s")));
    req.on("error", reject);
    req.end(r.body);
  });
}

/** The issue's error table: the HTTP status of each gRPC code. */
const statusOfCode: Record<number, number> = { 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401 };

/** Connect's names of the gRPC codes, by number (the Connect protocol's JSON error carries the name). */
const connectCodeNames = ["ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists", "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated"];

/** The numeric code of a Connect protocol error body (`{"code": "not_found", ...}`), or undefined when it is not one. */
function connectErrorCodeOf(body: unknown): number | undefined {
  const code = (body as { code?: unknown } | null)?.code;
  const index = typeof code === "string" ? connectCodeNames.indexOf(code) : -1;
  return index > 0 ? index : undefined;
}

/** What is wrong with an answer, or undefined when nothing is. */
function problemOf(r: Pick<FuzzRequest, "service" | "method" | "passthrough">, answer: Answer): string | undefined {
  const { status } = answer;
  let parsed: unknown;
  try {
    parsed = JSON.parse(answer.body);
  } catch {
    parsed = undefined;
  }
  if (status === 501 && unservedServices.has(r.service) && (r.method === "HEAD" || (isStatusBody(parsed) && parsed.code === 12) || (r.passthrough && connectErrorCodeOf(parsed) === 12))) return undefined;
  if (status >= 500) return `a ${status} (${answer.body.slice(0, 300)})`;
  if (status < 400) return undefined;
  // An answer to HEAD has no body by HTTP; its status must still be an error's, never a 5xx.
  if (r.method === "HEAD") return undefined;
  const agrees = (code: number) =>
    // 413 is RESOURCE_EXHAUSTED for a body over the limit; 405 is UNIMPLEMENTED for a method the route does not take.
    statusOfCode[code] === status || (status === 413 && code === 8) || (status === 405 && code === 12);
  // A pass-through call is answered in the Connect protocol, by the service or by the edge refusing
  // it: Connect's error JSON with Connect's own code-to-status mapping (UNIMPLEMENTED is 404 there),
  // or a bare 415 for a content type it does not speak. A 405 (not a POST) is the gateway's Status.
  if (r.passthrough && status !== 405) {
    const connectCode = connectErrorCodeOf(parsed);
    if (connectCode !== undefined) {
      return agrees(connectCode) || codeToHttpStatus(connectCode) === status ? undefined : `a ${status} carrying Connect code ${connectCodeNames[connectCode]}, which neither table maps to ${status}`;
    }
    if (status === 415 && answer.body === "") return undefined;
  }
  if (!/^application\/json/.test(answer.contentType)) return `a ${status} as ${answer.contentType || "no content type"}, not JSON (${answer.body.slice(0, 200)})`;
  if (!isStatusBody(parsed)) return `a ${status} whose body is not a google.rpc.Status (${answer.body.slice(0, 300)})`;
  return agrees(parsed.code) ? undefined : `a ${status} carrying code ${parsed.code}, which the error table maps to ${statusOfCode[parsed.code]}`;
}

const describe = (r: FuzzRequest) => `${r.caller} ${r.method} ${r.path.slice(0, 200)}${r.query ? "?" + r.query.slice(0, 200) : ""} [${r.contentType}] ${r.body ? r.body.subarray(0, 200).toString("utf8") + (r.body.byteLength > 200 ? `… (${r.body.byteLength} bytes)` : "") : ""}`;

t.test("fuzz - the check itself refuses what it must", async (t) => {
  const json = "application/json";
  const rest = (service: string, method = "GET") => ({ service, method, passthrough: false });
  const passthrough = { service: "JobService", method: "POST", passthrough: true };
  t.match(problemOf(rest("JobService"), { status: 500, contentType: json, body: '{"code":13,"message":"x","details":[]}' }), /500/, "a 500 is a problem");
  t.match(problemOf(rest("JobService"), { status: 503, contentType: json, body: '{"code":14,"message":"x","details":[]}' }), /503/, "a 503 is a problem");
  t.match(problemOf(rest("JobService"), { status: 501, contentType: json, body: '{"code":12,"message":"x","details":[]}' }), /501/, "a 501 of a served service is a problem");
  t.equal(problemOf(rest("WebhookService"), { status: 501, contentType: json, body: '{"code":12,"message":"x","details":[]}' }), undefined, "a 501 of an unserved service is not");
  t.match(problemOf(rest("JobService"), { status: 400, contentType: "text/plain", body: "bad request" }), /not JSON/, "a 4xx in plain text is a problem");
  t.match(problemOf(rest("JobService"), { status: 400, contentType: json, body: '{"error":"bad"}' }), /google.rpc.Status/, "a 4xx in another JSON shape is a problem");
  t.match(problemOf(rest("JobService"), { status: 400, contentType: json, body: '{"code":5,"message":"x","details":[]}' }), /maps to 404/, "a status that disagrees with its code is a problem");
  t.equal(problemOf(rest("JobService"), { status: 413, contentType: json, body: '{"code":8,"message":"x","details":[]}' }), undefined, "413 with RESOURCE_EXHAUSTED is fine");
  t.match(problemOf(rest(""), { status: 404, contentType: json, body: '{"code":3,"message":"x","details":[]}' }), /maps to 400/, "a 404 must carry NOT_FOUND");
  t.match(problemOf(rest(""), { status: 405, contentType: json, body: '{"code":5,"message":"x","details":[]}' }), /maps to 404/, "a 405 must carry UNIMPLEMENTED");
  t.equal(problemOf(rest(""), { status: 405, contentType: json, body: '{"code":12,"message":"x","details":[]}' }), undefined, "a 405 with UNIMPLEMENTED is fine");
  t.match(problemOf(rest("", "XYZZY"), { status: 404, contentType: "text/plain", body: "not found\n" }), /not JSON/, "a plain-text 404 (e.g. /docs/<name>) is a problem");
  t.equal(problemOf(rest("", "HEAD"), { status: 404, contentType: json, body: "" }), undefined, "an answer to HEAD has no body to check");
  t.equal(problemOf(passthrough, { status: 400, contentType: json, body: '{"code":"invalid_argument","message":"x"}' }), undefined, "a pass-through may answer the Connect protocol's error");
  t.match(problemOf(passthrough, { status: 409, contentType: json, body: '{"code":"invalid_argument","message":"x"}' }), /neither table maps to 409/, "whose code must agree with the status too");
  t.match(problemOf(passthrough, { status: 500, contentType: json, body: '{"code":"internal","message":"parse binary: illegal tag"}' }), /500/, "and a 500 is a problem there too");
  t.equal(problemOf(passthrough, { status: 415, contentType: "", body: "" }), undefined, "or Connect's bare 415 for a content type it does not speak");
  t.match(problemOf(passthrough, { status: 405, contentType: "", body: "" }), /not JSON/, "but not a bare 405: a method the gateway does not pass on is its own answer");
  t.match(problemOf(rest("JobService"), { status: 400, contentType: json, body: '{"code":"invalid_argument","message":"x"}' }), /google.rpc.Status/, "a REST route never answers in Connect's shape");
});

/** The method labels /metrics carries; only the standard methods and OTHER may appear, whatever tokens were sent. */
const metricMethods = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"]);
async function methodLabels(): Promise<Set<string>> {
  const text = await (await fetch(`${gateway.url}/metrics`)).text();
  return new Set([...text.matchAll(/[{,]method="([^"]*)"/g)].map((m) => m[1]!));
}

t.test("fuzz - every operation of /openapi.json, then 300 generated requests of every kind: no 5xx, every 4xx a google.rpc.Status with the table's code", async (t) => {
  t.ok(operations.length >= 40, `the document lists the operations (${operations.length})`);
  t.comment(`seed ${seed} (JOBMESH_FUZZ_SEED=${seed} replays this run)`);
  // Each operation once, with a harmless id and an empty JSON object, as each caller: every route is hit whatever the draw.
  for (const operation of operations) {
    for (const caller of ["admin", "anonymous"] as const) {
      const r: FuzzRequest = {
        origin: operation.id,
        service: operation.service,
        passthrough: false,
        method: operation.verb,
        caller,
        path: operation.path.replace(/\{[^}]+\}/g, "fuzz-sweep"),
        query: "",
        contentType: operation.jsonBody ? "application/json" : "",
        body: operation.jsonBody ? Buffer.from("{}") : undefined,
      };
      const problem = problemOf(r, await send(r));
      if (problem) t.fail(`${describe(r)} → ${problem}`);
    }
  }
  const started = Date.now();
  const statuses = new Map<string, Map<number, number>>();
  const sentMethods = new Set<string>();
  await fc.assert(
    fc.asyncProperty(anyRequest, async (r) => {
      sentMethods.add(r.method);
      const answer = await send(r);
      const kind = r.passthrough || r.origin === "operator" || r.origin === "docs" ? r.origin : "rest";
      const counts = statuses.get(kind) ?? new Map<number, number>();
      counts.set(answer.status, (counts.get(answer.status) ?? 0) + 1);
      statuses.set(kind, counts);
      const problem = problemOf(r, answer);
      if (problem) throw new Error(`${describe(r)} → ${problem}`);
    }),
    { seed, numRuns },
  );
  const shown = Object.fromEntries([...statuses].map(([origin, counts]) => [origin, Object.fromEntries([...counts].sort(([a], [b]) => a - b))]));
  t.comment(`${numRuns} runs in ${Date.now() - started} ms; statuses ${JSON.stringify(shown)}`);
  t.pass("no request drew a 5xx or a 4xx without a Status body");

  const extension = [...sentMethods].filter((m) => !metricMethods.has(m));
  t.ok(extension.length >= 5, `the run sent method tokens of its own (${extension.slice(0, 10).join(", ")}, ...)`);
  const labels = [...(await methodLabels())];
  t.same(labels.filter((m) => !metricMethods.has(m)), [], `/metrics labels only ${[...metricMethods].join(" ")}, not a series per method token (labels: ${labels.join(", ")})`);
});
