/**
 * Every RPC with an http rule, called over REST through a real Deno gateway in front of the real
 * mesh. The calls are generated from the descriptors (httpBindingsOfServices(meshServices)), so a
 * new RPC is called here without anyone adding it; a table gives the methods that need a real body
 * one, and a binding without an entry is still called (with `{}`) and must not fail on the server.
 * Every answer of that loop is checked with ajv against the schema the gateway's `/openapi.json`
 * gives the operation a client would pick for the request, for the status and media type served
 * (a stream's events against the streamed message's schema). Then: REST answers are the services' answers in proto3 JSON, and Connect and gRPC-Web pass through.
 */
import t, { type Test } from "tap";
import { equals, fromJson, type DescMessage, type JsonValue } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { createConnectTransport as createWebConnectTransport } from "@connectrpc/connect-web";
import { randomBytes } from "node:crypto";
import { Role } from "../gen/jobmesh/v1/auth_pb.js";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { GetJobResponseSchema, JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { GetPipelineResponseSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { httpBindingsOfServices, meshRegistry, meshServices, procedureOf, serviceNames, type HttpBinding } from "../internal/contract/index.ts";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { isStatusBody, jsonLinesOf, startGatewayMesh } from "./support/gateway.ts";
import { testPassword } from "./support/auth.ts";
import { loadOpenApiSchemas } from "./support/openapi-schemas.ts";

// A mesh with jobs, a Deno process and a job run to the end before the first call: more than the default on a loaded machine.
t.setTimeout(300_000);

const { mesh, url, stdout } = await startGatewayMesh(t, { jobs: true });
const auth = mesh.auth!;
const admin = await auth.headersFor("admin");
const adminUser = await auth.userFor("admin");
const jobs = jobClient(mesh.jobs!.url, await signInAsAdmin(mesh));
const schemas = await loadOpenApiSchemas(`${url}/openapi.json`);
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: [await auth.interceptorFor("admin")] }));

/** The services this mesh does not run: their routes answer 501 UNIMPLEMENTED. */
const unserved = new Set(["audit", "webhooks"]);

/** HTTP status by gRPC code: the one table (413 is RESOURCE_EXHAUSTED for a body over the limit). */
const httpStatusByCode: Record<number, number[]> = {
  [Code.InvalidArgument]: [400],
  [Code.FailedPrecondition]: [400],
  [Code.OutOfRange]: [400],
  [Code.Unauthenticated]: [401],
  [Code.PermissionDenied]: [403],
  [Code.NotFound]: [404],
  [Code.AlreadyExists]: [409],
  [Code.Aborted]: [409],
  [Code.ResourceExhausted]: [429, 413],
  [Code.Canceled]: [499],
  [Code.Unimplemented]: [501, 405],
  [Code.Unavailable]: [503],
  [Code.DeadlineExceeded]: [504],
};

const stages = (...names: string[]) => ({ stages: names.map((stage) => ({ stage: `STAGE_${stage}` })) });
const minimalConfig = { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }] };
const unique = (prefix: string) => `${prefix}-${randomBytes(3).toString("hex")}`;

/** A job run to the end, through the services directly: what the REST calls read. */
async function succeededJob(text: string): Promise<string> {
  const { job } = await jobs.createJob({ job: { document: { source: { case: "text", value: text } } } });
  const done = await waitForJob(jobs, job!.name, undefined, 60_000);
  if (done.state !== JobState.SUCCEEDED) throw new Error(`fixture job ${done.name} ended ${JobState[done.state]}`);
  return done.name;
}

async function newApiKey(): Promise<{ name: string; secret: string }> {
  const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: unique("key"), roles: [Role.VIEWER] } }, { headers: admin });
  return { name: apiKey!.name, secret };
}

async function bearerOf(user: { email: string; password: string; tenant: string }): Promise<Record<string, string>> {
  const { accessToken } = await auth.client.login({ email: user.email, password: user.password, tenant: user.tenant });
  return { authorization: `Bearer ${accessToken}` };
}

// The resources every call names: "jobs/<this job>", "pipelines/<this pipeline>", and so on.
const fixtureJob = await succeededJob("The gateway reads this job. It has two sentences.");
await pipelines.createPipeline({ pipelineId: "rest-main", pipeline: { displayName: "REST main", config: minimalConfig } });
const fixtureUser = await auth.newUser("viewer");
const fixtureKey = await newApiKey();

/** The id each resource family's `*` takes; a family this test does not know gets a syntactically valid name of nothing. */
const idsByFamily: Record<string, string> = {
  jobs: fixtureJob.split("/")[1],
  pipelines: "rest-main",
  users: fixtureUser.name.split("/")[1],
  apiKeys: fixtureKey.name.split("/")[1],
};
const absentId = "e2e-absent";

/** The concrete path of a binding: every `*` of a variable becomes the id of the family named before it. */
function fillPath(template: string, ids: Record<string, string> = idsByFamily): string {
  return template.replace(/\{([^}=]+)(?:=([^}]+))?\}/g, (_, _field: string, pattern: string | undefined) =>
    (pattern ?? "*")
      .split("/")
      .map((segment: string, i: number, segments: string[]) => (segment === "*" ? (ids[segments[i - 1]] ?? absentId) : segment === "**" ? absentId : segment))
      .join("/"),
  );
}

/** A request a method needs to do real work; bindings without one are called with `{}` (or no body). */
interface Interesting {
  ids?: Record<string, string>;
  query?: Record<string, string>;
  body?: unknown;
  /** A raw body with its content type (uploads). */
  raw?: { contentType: string; bytes: string };
  /** Credentials of another caller instead of the admin's. */
  headers?: Record<string, string>;
  /** Call with no credential at all (public methods). */
  anonymous?: true;
  /** The call must succeed. */
  succeeds: true;
  check?: (t: Test, body: unknown) => void;
}

const ok = { succeeds: true } as const;
const interesting: Record<string, () => Promise<Interesting>> = {
  "/jobmesh.v1.JobService/CreateJob": async () => ({
    ...ok,
    body: { document: { text: "created over REST" }, labels: { via: "rest" } },
    check: (t, body) => t.match((body as { job: { name: string } }).job.name, /^jobs\//),
  }),
  "/jobmesh.v1.JobService/CreateJobs": async () => ({ ...ok, body: { requests: [{ job: { document: { text: "batch over REST" } } }] } }),
  "/jobmesh.v1.JobService/GetJob": async () => ok,
  "/jobmesh.v1.JobService/ListJobs": async () => ({ ...ok, query: { pageSize: "5" } }),
  "/jobmesh.v1.JobService/DeleteJob": async () => ({ ...ok, ids: { jobs: (await succeededJob("deleted over REST")).split("/")[1] } }),
  "/jobmesh.v1.JobService/GetJobResult": async () => ok,
  "/jobmesh.v1.JobService/DownloadJobResult": async () => ok,
  "/jobmesh.v1.JobService/WatchJob": async () => ok,
  "/jobmesh.v1.JobService/UploadDocument": async () => ({
    ...ok,
    query: { filename: "hello.txt" },
    raw: { contentType: "text/plain", bytes: "uploaded over REST" },
    check: (t, body) => t.match((body as { upload: { name: string } }).upload.name, /^uploads\//),
  }),
  "/jobmesh.v1.PipelineService/CreatePipeline": async () => ({ ...ok, query: { pipelineId: "rest-created" }, body: { config: stages("INGEST", "DETECT", "PARSE", "OUTPUT") } }),
  "/jobmesh.v1.PipelineService/GetPipeline": async () => ok,
  "/jobmesh.v1.PipelineService/ListPipelines": async () => ok,
  "/jobmesh.v1.PipelineService/UpdatePipeline": async () => {
    const { pipeline } = await pipelines.createPipeline({ pipelineId: "rest-updated", pipeline: { config: minimalConfig } });
    return { ...ok, ids: { pipelines: "rest-updated" }, query: { updateMask: "displayName" }, body: { etag: pipeline!.etag, displayName: "Updated over REST" } };
  },
  "/jobmesh.v1.PipelineService/DeletePipeline": async () => {
    await pipelines.createPipeline({ pipelineId: "rest-deleted", pipeline: { config: minimalConfig } });
    return { ...ok, ids: { pipelines: "rest-deleted" } };
  },
  "/jobmesh.v1.PipelineService/ListPipelineVersions": async () => ok,
  "/jobmesh.v1.PipelineService/ValidatePipeline": async () => ({ ...ok, body: { config: stages("INGEST", "OUTPUT") } }),
  "/jobmesh.v1.AuthService/Login": async () => ({
    ...ok,
    anonymous: true,
    body: { email: adminUser.email, password: adminUser.password, tenant: adminUser.tenant },
    check: (t, body) => t.type((body as { accessToken: unknown }).accessToken, "string"),
  }),
  "/jobmesh.v1.AuthService/RefreshToken": async () => {
    const user = await auth.newUser("viewer");
    const { refreshToken } = await auth.client.login({ email: user.email, password: user.password, tenant: user.tenant });
    return { ...ok, anonymous: true, body: { refreshToken } };
  },
  "/jobmesh.v1.AuthService/Logout": async () => ({ ...ok, headers: await bearerOf(await auth.newUser("viewer")) }),
  "/jobmesh.v1.AuthService/GetJwks": async () => ({ ...ok, anonymous: true }),
  "/jobmesh.v1.AuthService/GetCurrentIdentity": async () => ok,
  "/jobmesh.v1.AuthService/CreateUser": async () => ({ ...ok, query: { password: testPassword }, body: { email: `${unique("rest")}@example.com`, roles: ["ROLE_VIEWER"] } }),
  "/jobmesh.v1.AuthService/GetUser": async () => ok,
  "/jobmesh.v1.AuthService/ListUsers": async () => ok,
  "/jobmesh.v1.AuthService/UpdateUser": async () => ({ ...ok, query: { updateMask: "displayName" }, body: { displayName: "Renamed over REST" } }),
  "/jobmesh.v1.AuthService/DeleteUser": async () => ({ ...ok, ids: { users: (await auth.newUser("viewer")).name.split("/")[1] } }),
  "/jobmesh.v1.AuthService/CreateApiKey": async () => ({ ...ok, body: { displayName: "made over REST", roles: ["ROLE_VIEWER"] } }),
  "/jobmesh.v1.AuthService/GetApiKey": async () => ok,
  "/jobmesh.v1.AuthService/ListApiKeys": async () => ok,
  "/jobmesh.v1.AuthService/RevokeApiKey": async () => ({ ...ok, ids: { apiKeys: (await newApiKey()).name.split("/")[1] } }),
  "/jobmesh.v1.AuthService/ExchangeApiKey": async () => ({ ...ok, anonymous: true, body: { secret: fixtureKey.secret } }),
  "/jobmesh.v1.AuthService/ChangePassword": async () => ({
    ...ok,
    headers: await bearerOf(await auth.newUser("viewer")),
    body: { currentPassword: testPassword, newPassword: "a-new-password-for-rest" },
  }),
  "/jobmesh.v1.AuthService/ResetUserPassword": async () => ({
    ...ok,
    ids: { users: (await auth.newUser("viewer")).name.split("/")[1] },
    body: { newPassword: "a-reset-password-for-rest" },
  }),
};

/** Reads a body: a stream only until its first message (a watch may stay open), anything else whole. */
async function readBody(res: Response): Promise<{ text: string; json: unknown }> {
  const type = res.headers.get("content-type") ?? "";
  const sse = type.startsWith("text/event-stream");
  if ((sse || type.startsWith("application/x-ndjson")) && res.body) {
    const complete = (s: string) => (sse ? /^data:.*\n\n/m.test(s) : s.includes("\n"));
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!complete(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
    }
    await reader.cancel();
    return { text, json: undefined };
  }
  const text = await res.text();
  let json: unknown;
  if (type.includes("json")) {
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
  }
  return { text, json };
}

/** The JSON texts a stream carried: each SSE record's data, or each NDJSON line. */
function streamedJson(mediaType: string, text: string): string[] {
  if (mediaType === "application/x-ndjson") return text.split("\n").filter((line) => line.trim() !== "");
  return text
    .replace(/\r\n?/g, "\n")
    .split("\n\n")
    .map((record) => record.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).replace(/^ /, "")).join("\n"))
    .filter((data) => data !== "");
}

/**
 * Checks one answer against /openapi.json: the operation a client would pick for `verb` on the
 * concrete path is this binding's RPC, documents the status, and the body matches the schema of
 * the media type served. A stream's schema is a string; each event in it is checked against the
 * streamed message's schema instead. A media type the document does not list for the status is
 * accepted only where it promises any bytes (a download is served in the result's own type).
 */
function checkAgainstDocument(t: Test, binding: HttpBinding, concretePath: string, res: Response, text: string, json: unknown): void {
  let operation: ReturnType<typeof schemas.operationAt>;
  try {
    operation = schemas.operationAt(binding.verb, concretePath);
  } catch (error) {
    t.fail(`the document has one operation for ${binding.verb} ${concretePath}: ${(error as Error).message}`);
    return;
  }
  t.match(operation.operation.operationId, new RegExp(`^${binding.method.parent.name}_${binding.method.name}(_\\d+)?$`), `the document's operation for the request is ${binding.method.name}`);
  const documented = schemas.mediaTypesOf(operation, res.status);
  if (documented.length === 0) {
    t.fail(`${operation.operation.operationId} documents its ${res.status} answer (documented: ${Object.keys(operation.operation.responses ?? {}).join(", ")})`);
    return;
  }
  const served = (res.headers.get("content-type") ?? "").split(";")[0]!.trim();
  const streamed = served === "text/event-stream" || served === "application/x-ndjson";
  if (streamed && documented.includes(served) && documented.includes("application/x-ndjson")) {
    const validate = schemas.validatorOf(operation, res.status, "application/x-ndjson", served === "text/event-stream" ? ["properties", "result"] : []);
    const messages = streamedJson(served, text);
    t.ok(messages.length > 0, `the ${served} stream carried a message to check`);
    for (const message of messages) t.ok(validate(JSON.parse(message)), `a streamed message matches its schema in /openapi.json${validate.errors ? ": " + schemas.errorsText(validate) : ""} (${message.slice(0, 200)})`);
    return;
  }
  const mediaType = documented.includes(served) ? served : documented.includes("application/octet-stream") ? "application/octet-stream" : undefined;
  if (!mediaType) {
    t.fail(`${operation.operation.operationId} ${res.status} is served as ${served || "nothing"}; the document says ${documented.join(", ")}`);
    return;
  }
  const validate = schemas.validatorOf(operation, res.status, mediaType);
  const body = mediaType === "application/json" ? json : text;
  t.ok(validate(body), `the ${res.status} ${mediaType} body matches its schema in /openapi.json${validate.errors ? ": " + schemas.errorsText(validate) : ""}`);
}

const bindings = httpBindingsOfServices(meshServices);
const verbs = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const called = new Set<string>();

t.test("every binding of every service is called over REST", async (t) => {
  t.ok(bindings.length >= 40, `the descriptors give the routes (${bindings.length})`);
  for (const binding of bindings) {
    const procedure = procedureOf(binding.method);
    await t.test(`${binding.verb} ${binding.path} (${binding.method.parent.name}.${binding.method.name})`, async (t) => {
      const service = serviceNames[binding.method.parent.typeName];
      called.add(procedure);
      const entry = interesting[procedure] ? await interesting[procedure]() : undefined;
      const path = fillPath(binding.path, { ...idsByFamily, ...entry?.ids });

      // The route exists: another verb on the same path is 405 naming this one, never 404.
      const bound = bindings.filter((b) => fillPath(b.path) === fillPath(binding.path)).map((b) => b.verb);
      const otherVerb = verbs.find((v) => !bound.includes(v))!;
      const probe = await fetch(`${url}${fillPath(binding.path)}`, { method: otherVerb, headers: admin });
      await probe.body?.cancel();
      t.equal(probe.status, 405, `${otherVerb} on the same path is 405 (the route exists)`);
      t.match(probe.headers.get("allow") ?? "", binding.verb, `Allow names ${binding.verb}`);

      const headers: Record<string, string> = entry?.anonymous ? {} : { ...(entry?.headers ?? admin) };
      let body: string | undefined;
      if (entry?.raw) {
        headers["content-type"] = entry.raw.contentType;
        body = entry.raw.bytes;
      } else if (binding.body !== "") {
        headers["content-type"] = "application/json";
        body = JSON.stringify(entry?.body ?? {});
      }
      const query = entry?.query ? `?${new URLSearchParams(entry.query)}` : "";
      const res = await fetch(`${url}${path}${query}`, { method: binding.verb, headers, body });
      const { text, json } = await readBody(res);
      const seen = `${res.status} ${text.slice(0, 300)}`;

      t.not(res.status, 405, `not 405: ${seen}`);
      checkAgainstDocument(t, binding, path, res, text, json);
      if (unserved.has(service)) {
        t.equal(res.status, 501, `a service this mesh does not run is 501: ${seen}`);
        t.ok(isStatusBody(json) && json.code === Code.Unimplemented && /not served/i.test(json.message), `and the body says it is not served: ${seen}`);
        return;
      }
      t.ok(res.status < 500, `not 5xx: ${seen}`);
      if (res.status >= 400) {
        t.ok(isStatusBody(json), `a 4xx body is a google.rpc.Status: ${seen}`);
        if (isStatusBody(json)) t.ok(httpStatusByCode[json.code]?.includes(res.status), `HTTP ${res.status} is the table's status of code ${Code[json.code]}`);
        if (res.status === 404) t.ok(path.includes(absentId), `404 only for a name this test made up: ${seen}`);
      }
      if (entry?.succeeds) {
        t.equal(res.status, 200, `succeeds: ${seen}`);
        if (res.status === 200) entry.check?.(t, json);
      }
    });
  }
  const methods = new Set(bindings.map((b) => procedureOf(b.method)));
  t.equal(called.size, methods.size, "every method was called");
  t.ok(
    bindings.some((b) => !interesting[procedureOf(b.method)] && !unserved.has(serviceNames[b.method.parent.typeName])),
    "some served methods (cancel, retry) are called with no table entry, as a new RPC would be",
  );
});

/** proto3 JSON from a service directly, over Connect's JSON codec. */
async function connectJson(baseUrl: string, method: string, request: unknown): Promise<JsonValue> {
  const res = await fetch(`${baseUrl}${method}`, { method: "POST", headers: { ...admin, "content-type": "application/json" }, body: JSON.stringify(request) });
  if (res.status !== 200) throw new Error(`${method}: ${res.status} ${await res.text()}`);
  return (await res.json()) as JsonValue;
}

/** The gateway's REST JSON carries every field the service's Connect JSON has, with the same values, and reads back as the same message. */
function sameAnswer(t: Test, schema: DescMessage, rest: JsonValue, connect: JsonValue) {
  t.has(rest, connect, "every field of the Connect JSON, the same");
  t.ok(equals(schema, fromJson(schema, rest, { registry: meshRegistry }), fromJson(schema, connect, { registry: meshRegistry })), "the same message");
}

const rfc3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/;

t.test("REST and Connect agree - GetPipeline: enum names, timestamps in RFC 3339", async (t) => {
  const res = await fetch(`${url}/v1/pipelines/rest-main`, { headers: admin });
  t.equal(res.status, 200);
  t.match(res.headers.get("content-type"), /^application\/json/);
  const rest = (await res.json()) as JsonValue;
  sameAnswer(t, GetPipelineResponseSchema, rest, await connectJson(mesh.pipelines.url, "/jobmesh.v1.PipelineService/GetPipeline", { name: "pipelines/rest-main" }));
  const pipeline = (rest as { pipeline: Record<string, unknown> }).pipeline;
  t.equal(pipeline.state, "PIPELINE_STATE_ACTIVE", "enums by name");
  t.same((pipeline.config as { stages: { stage: string }[] }).stages.map((s) => s.stage), ["STAGE_INGEST", "STAGE_OUTPUT"]);
  t.match(pipeline.createTime, rfc3339, "a timestamp in RFC 3339");
  t.equal(pipeline.displayName, "REST main", "camelCase field names");

  const version = await fetch(`${url}/v1/pipelines/rest-main?version=1`, { headers: admin });
  t.equal(version.status, 200, "a query parameter sets a request field");
  t.equal(((await version.json()) as { pipeline: { version: number } }).pipeline.version, 1);
});

t.test("REST and Connect agree - GetJob: int64 as strings, enum names, timestamps", async (t) => {
  const res = await fetch(`${url}/v1/${fixtureJob}`, { headers: admin });
  t.equal(res.status, 200);
  const rest = (await res.json()) as JsonValue;
  sameAnswer(t, GetJobResponseSchema, rest, await connectJson(mesh.jobs!.url, "/jobmesh.v1.JobService/GetJob", { name: fixtureJob }));
  const job = (rest as { job: Record<string, unknown> & { document: Record<string, unknown> } }).job;
  t.equal(job.state, "JOB_STATE_SUCCEEDED");
  t.type(job.document.sizeBytes, "string", "int64 as a string");
  t.match(job.document.sizeBytes, /^[1-9]\d*$/);
  for (const field of ["createTime", "updateTime", "startTime", "endTime"]) t.match(job[field], rfc3339, `${field} in RFC 3339`);
});

t.test("Connect and gRPC-Web pass through the gateway to the service", async (t) => {
  const interceptors = [await auth.interceptorFor("admin")];
  const transports = {
    "connect-node (Connect, JSON)": createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: false, interceptors }),
    "connect-node (Connect, binary)": createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true, interceptors }),
    "connect-web (Connect over fetch)": createWebConnectTransport({ baseUrl: url, interceptors }),
    "gRPC-Web (HTTP/1.1)": createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", interceptors }),
  };
  // A page of jobs is over 1 KiB, the size from which the services compress what they send.
  const direct = await jobs.listJobs({ pageSize: 50 });
  t.ok(direct.jobs.length >= 3, `jobs to list (${direct.jobs.length})`);
  for (const [name, transport] of Object.entries(transports)) {
    const { pipeline } = await createClient(PipelineService, transport).getPipeline({ name: "pipelines/rest-main" });
    t.equal(pipeline?.displayName, "REST main", name);
    const listed = await createClient(JobService, transport)
      .listJobs({ pageSize: 50 })
      .then((r) => r.jobs.map((j) => j.name), (e: unknown) => `failed: ${String(e)}`);
    t.same(listed, direct.jobs.map((j) => j.name), `${name}: a large answer (ListJobs) arrives whole`);
  }
  const anonymous = createClient(PipelineService, createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1" }));
  const refused = await anonymous.getPipeline({ name: "pipelines/rest-main" }).then(
    () => "ok",
    (e: { code?: Code }) => e.code,
  );
  t.equal(refused, Code.Unauthenticated, "an anonymous pass-through call is refused");
});

t.test("x-request-id - echoed when the client sends one, generated when not", async (t) => {
  const sent = await fetch(`${url}/v1/pipelines/rest-main`, { headers: { ...admin, "x-request-id": "e2e-request-1234" } });
  await sent.body?.cancel();
  t.equal(sent.headers.get("x-request-id"), "e2e-request-1234");
  const generated = await fetch(`${url}/v1/pipelines/rest-main`, { headers: admin });
  await generated.body?.cancel();
  t.ok((generated.headers.get("x-request-id") ?? "").length >= 8, `generated: ${generated.headers.get("x-request-id")}`);
  const another = await fetch(`${url}/v1/pipelines/rest-main`, { headers: admin });
  await another.body?.cancel();
  t.not(another.headers.get("x-request-id"), generated.headers.get("x-request-id"), "a new one for each request");
  const failed = await fetch(`${url}/v1/no-such-route`, { headers: { "x-request-id": "e2e-request-5678" } });
  await failed.body?.cancel();
  t.equal(failed.headers.get("x-request-id"), "e2e-request-5678", "on an error too");
});

t.test("access log - one line per request with its route template, status and request id; never a credential", async (t) => {
  const requestId = `e2e-log-${randomBytes(4).toString("hex")}`;
  const res = await fetch(`${url}/v1/pipelines/rest-main`, { headers: { ...admin, "x-request-id": requestId } });
  await res.body?.cancel();
  const deadline = Date.now() + 10_000;
  let line: Record<string, unknown> | undefined;
  while (!(line = jsonLinesOf(stdout()).find((l) => l.requestId === requestId)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.ok(line, "the request has its access-log line");
  t.match(line, { method: "GET", route: "/v1/{name=pipelines/*}", status: 200 });
  t.equal(jsonLinesOf(stdout()).filter((l) => l.requestId === requestId).length, 1, "exactly one");
  const token = admin.authorization.slice("Bearer ".length);
  t.notOk(stdout().includes(token), "the admin's token appears nowhere in the gateway's output");
  t.notOk(stdout().includes(fixtureKey.secret), "nor the API key's secret (exchanged above)");
});
