/**
 * Every RPC of every served service produces exactly one audit event, with the right action,
 * actor, tenant, resource and outcome: GENERATED from the service descriptors, so a new RPC is
 * covered without touching this file. Each method is called as an admin (with a minimal request,
 * or a valid one where it is cheap to build), anonymously, and, where the viewer may not call it,
 * as a viewer. The events are read back from the real audit stream on JetStream, where the
 * services' sink published them (each call told apart by its x-request-id), and the secrets the
 * calls carried are searched for in every event and in every column of the stored table.
 */
import t, { type Test } from "tap";
import { create, fromBinary, getOption, hasOption, toBinary, toJsonString, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { resource } from "../gen/google/api/resource_pb.js";
import { createValidator } from "@bufbuild/protovalidate";
import { Code, ConnectError, createClient, createContextValues, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { AuditEventSchema, AuditService, type AuditEvent } from "../gen/jobmesh/v1/audit_pb.js";
import { AuthService, LoginRequestSchema, PrincipalKind, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { createAuditTopology } from "../internal/bus/topology.ts";
import { InvalidCredentialsError } from "../internal/auth/errors.ts";
import { createAuthService } from "../internal/auth/service.ts";
import { auditAttributionKey } from "../internal/rpc/audit.ts";
import { accessRulesOf, decide, meshRegistry } from "../internal/contract/index.ts";
import { startTestMesh } from "./support/mesh.ts";
import { testPassword } from "./support/auth.ts";
import { waitFor } from "./support/wait.ts";

const mesh = await startTestMesh({ JOBMESH_LOG_LEVEL: "fatal" }, { auth: true, jobs: true, workers: 0, audit: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const tenant = mesh.infra.bootstrapTenantId;

// The services this mesh serves, each with where it listens.
const served: { service: DescService; url: string }[] = [
  { service: PipelineService, url: mesh.pipelines.url },
  { service: JobService, url: mesh.jobs!.url },
  { service: AuthService, url: auth.server.url },
  { service: AuditService, url: mesh.audit!.url },
];
const rules = accessRulesOf(served.map((s) => s.service));
const ruleOf = (m: DescMethod) => rules.get(`/${m.parent.typeName}/${m.name}`)!;
const clients = new Map(served.map(({ service, url }) => [service, createClient(service, createConnectTransport({ baseUrl: url, httpVersion: "1.1" })) as unknown as Client<DescService>]));

const admin = await auth.userFor("admin");
const adminHeaders = await auth.headersFor("admin");
const viewer = await auth.userFor("viewer");
const viewerHeaders = await auth.headersFor("viewer");
const secrets = new Set<string>([testPassword, await auth.tokenFor("admin"), await auth.tokenFor("viewer")]);

// ---- Requests ------------------------------------------------------------------------------

const validator = createValidator();
const id = "a0000000-0000-4000-8000-00000000a0d1";
// A name of every resource pattern of the mesh, each variable a UUID that is also a valid slug.
const sampleNames = [...meshRegistry].flatMap((type) =>
  type.kind === "message" && hasOption(type, resource) ? getOption(type, resource).pattern.map((p) => p.replace(/\{[a-z_]+\}/g, id)) : [],
);

/** The first sample name the request's `name` field accepts (by its validation rules), or none. */
function sampleNameFor(method: DescMethod): string | undefined {
  if (!method.input.fields.some((f) => f.name === "name" && f.fieldKind === "scalar")) return undefined;
  return sampleNames.find((name) => {
    const result = validator.validate(method.input, create(method.input, { name } as never));
    return result.kind === "valid" || !result.violations?.some((v) => v.field.length === 1 && (v.field[0] as { name?: string }).name === "name");
  });
}

const config = { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] };
/** Valid admin requests where they are cheap: the call succeeds and, for a create, names what it made. */
const validRequests: Record<string, () => unknown> = {
  "jobmesh.v1.PipelineService.CreatePipeline": () => ({ pipelineId: "audit-made", pipeline: { config } }),
  "jobmesh.v1.JobService.CreateJob": () => ({ job: { document: { source: { case: "text", value: "audited job" } } } }),
  "jobmesh.v1.JobService.UploadDocument": () => [{ part: { case: "metadata", value: { filename: "a.txt", mediaType: "text/plain" } } }, { part: { case: "chunk", value: new TextEncoder().encode("audited upload") } }],
  "jobmesh.v1.AuthService.CreateApiKey": () => ({ apiKey: { displayName: "audit-key", roles: [Role.VIEWER] } }),
  "jobmesh.v1.AuthService.Login": () => ({ email: admin.email, password: testPassword, tenant: admin.tenant }),
};

const actionOf = (m: DescMethod) => `${m.parent.typeName}.${m.name}`;

/** One call of `method`, as the client saw it. */
interface Call {
  requestId: string;
  method: DescMethod;
  as: "admin" | "anonymous" | "viewer";
  /** The status code the client saw; 0 for OK. */
  code: number;
  message: string;
  /** The resource the event must name. */
  resource: string;
}
const calls: Call[] = [];
let counter = 0;

async function call(method: DescMethod, as: Call["as"], request: unknown): Promise<Call> {
  const requestId = `audit-rec-${++counter}-${crypto.randomUUID()}`;
  const headers = { "x-request-id": requestId, ...(as === "admin" ? adminHeaders : as === "viewer" ? viewerHeaders : {}) };
  const fn = (clients.get(method.parent) as unknown as Record<string, (req: unknown, opts: unknown) => unknown>)[method.localName]!;
  let response: unknown;
  let error: ConnectError | undefined;
  try {
    switch (method.methodKind) {
      case "unary":
        response = await fn(request, { headers });
        break;
      case "server_streaming":
        for await (const _ of fn(request, { headers }) as AsyncIterable<unknown>) void _;
        break;
      case "client_streaming": {
        const messages = Array.isArray(request) ? request : [request];
        response = await fn((async function* () { yield* messages; })(), { headers });
        break;
      }
      default:
        throw new Error(`no bidi method is expected: ${method.name}`);
    }
  } catch (e) {
    error = ConnectError.from(e);
  }
  const named = (request as { name?: unknown }).name;
  const made = Object.values((response ?? {}) as Record<string, unknown>).find((v): v is { name: string } => typeof v === "object" && v !== null && typeof (v as { name?: unknown }).name === "string" && (v as { name: string }).name !== "");
  const resource = typeof named === "string" && named ? named : error === undefined && made ? made.name : "";
  const secret = (response as { secret?: unknown } | undefined)?.secret;
  if (typeof secret === "string" && secret) secrets.add(secret);
  for (const field of ["accessToken", "refreshToken"]) {
    const value = (response as Record<string, unknown> | undefined)?.[field];
    if (typeof value === "string" && value) secrets.add(value);
  }
  const done: Call = { requestId, method, as, code: error?.code ?? 0, message: error?.rawMessage ?? "", resource };
  calls.push(done);
  return done;
}

const minimalRequest = (method: DescMethod) => {
  const name = sampleNameFor(method);
  return name === undefined ? {} : { name };
};

// ---- The events -------------------------------------------------------------------------

const topology = createAuditTopology(mesh.isolated.namespace);

/** Every event on the namespace's audit stream, by request id. */
async function eventsByRequestId(): Promise<Map<string, AuditEvent[]>> {
  await (await mesh.infra.auditSink()).flush();
  const jsm = mesh.infra.bus.jsm;
  const { state } = await jsm.streams.info(topology.eventsStream);
  const byId = new Map<string, AuditEvent[]>();
  for (let seq = state.first_seq; state.messages > 0 && seq <= state.last_seq; seq++) {
    const event = fromBinary(AuditEventSchema, (await jsm.streams.getMessage(topology.eventsStream, { seq }))!.data);
    byId.set(event.requestId, [...(byId.get(event.requestId) ?? []), event]);
  }
  return byId;
}

/** A cheap read of each served service: its event, once stored, says every earlier event of that server has been published. */
const sentinels: Record<string, (client: Client<DescService>, headers: Record<string, string>) => Promise<unknown>> = {
  "jobmesh.v1.PipelineService": (c, headers) => (c as unknown as Client<typeof PipelineService>).listPipelines({}, { headers }),
  "jobmesh.v1.JobService": (c, headers) => (c as unknown as Client<typeof JobService>).listJobs({}, { headers }),
  "jobmesh.v1.AuthService": (c, headers) => (c as unknown as Client<typeof AuthService>).getJwks({}, { headers }),
  "jobmesh.v1.AuditService": (c, headers) => (c as unknown as Client<typeof AuditService>).listAuditEvents({}, { headers }),
};

/**
 * Waits (polling, generous deadline) until every call has at least one event; then makes one
 * sentinel call to every server and waits for those too, so an event a server records late
 * (a second record of a call, after its first) is on the stream before anything is counted.
 */
async function settledEvents(t: Test): Promise<Map<string, AuditEvent[]>> {
  const missing = (byId: Map<string, AuditEvent[]>) => calls.filter((c) => !byId.has(c.requestId)).map((c) => `${actionOf(c.method)} as ${c.as}`).join(", ");
  let last = new Map<string, AuditEvent[]>();
  await waitFor(t, "an event of every call", async () => ((last = await eventsByRequestId()), calls.every((c) => last.has(c.requestId))), { timeoutMs: 60_000, intervalMs: 100 }).catch(() => t.comment(`no event for ${missing(last)}`));
  const ids = await Promise.all(
    served.map(async ({ service }) => {
      const requestId = `audit-sentinel-${crypto.randomUUID()}`;
      await sentinels[service.typeName]!(clients.get(service)!, { ...adminHeaders, "x-request-id": requestId });
      return requestId;
    }),
  );
  return waitFor(t, "the sentinel calls' events", async () => ((last = await eventsByRequestId()), ids.every((id) => last.has(id)) && last), { timeoutMs: 60_000, intervalMs: 100 });
}

function checkEvent(t: Test, c: Call, events: AuditEvent[] | undefined) {
  const what = `${actionOf(c.method)} as ${c.as}`;
  t.equal(events?.length, 1, `${what}: exactly one event`);
  const e = events?.[0];
  if (!e) return;
  t.equal(e.action, actionOf(c.method), `${what}: action`);
  t.equal(e.outcome?.code, c.code, `${what}: outcome ${Code[c.code] ?? c.code} as the client saw it`);
  t.equal(e.outcome?.message, c.message, `${what}: the message the client saw`);
  t.equal(e.resource, c.resource, `${what}: resource "${c.resource}"`);
  if (c.resource) t.not(e.resourceType, "", `${what}: a resource type`);
  t.equal(e.recorder, { "jobmesh.v1.PipelineService": "pipelines", "jobmesh.v1.JobService": "jobs", "jobmesh.v1.AuthService": "auth", "jobmesh.v1.AuditService": "audit" }[c.method.parent.typeName], `${what}: recorder`);
  t.match(e.name, /^auditEvents\/[0-9a-f-]{36}$/);
  t.ok(e.eventTime && e.duration, `${what}: time and duration`);
  t.match(e.traceId, /^[0-9a-f]{32}$/, `${what}: the call's trace id`);
  t.equal(e.clientAddress, "127.0.0.1", `${what}: the client's address`);
  if (c.method.methodKind !== "client_streaming") t.not(e.request, "", `${what}: the request`);
  const isPublic = ruleOf(c.method).kind === "public";
  if (isPublic) {
    // No credentials are read: only a successful login (or exchange) says who it was for.
    const loggedIn = c.code === 0 && actionOf(c.method) === "jobmesh.v1.AuthService.Login";
    t.equal(e.actor?.subject, loggedIn ? admin.name : "", `${what}: public, subject from the login only`);
    if (loggedIn) t.match(e, { tenant, actor: { kind: PrincipalKind.USER, credentialHint: `email:${admin.email}` } });
  } else if (c.as === "anonymous") {
    t.equal(c.code, Code.Unauthenticated, `${what}: refused without credentials`);
    t.match(e, { tenant: "", actor: { subject: "", kind: PrincipalKind.UNSPECIFIED, roles: [] } }, `${what}: anonymous`);
  } else {
    const who = c.as === "admin" ? admin : viewer;
    t.match(e, { tenant, actor: { subject: who.name, kind: PrincipalKind.USER, roles: [c.as], credentialHint: /^tokens\// } }, `${what}: the ${c.as}`);
  }
}

// ---- The test ---------------------------------------------------------------------------

t.test("every RPC of every served service: one event per call as admin, anonymous and a refused viewer", async (t) => {
  const methods = served.flatMap(({ service }) => service.methods);
  t.ok(methods.length >= 30, `${methods.length} methods`);
  for (const method of methods) {
    const valid = validRequests[actionOf(method)];
    await call(method, "admin", valid ? valid() : minimalRequest(method));
    await call(method, "anonymous", minimalRequest(method));
    if (decide(ruleOf(method), ["viewer"]) === "permission_denied") {
      const refused = await call(method, "viewer", minimalRequest(method));
      t.equal(refused.code, Code.PermissionDenied, `${actionOf(method)}: a viewer is refused`);
    }
  }
  for (const action of Object.keys(validRequests)) {
    const c = calls.find((c) => actionOf(c.method) === action && c.as === "admin");
    t.equal(c?.code, 0, `${action}: the valid request succeeded (${c?.message})`);
  }
  t.ok(calls.some((c) => c.method.methodKind === "client_streaming"), "a client stream is among them");
  t.ok(calls.filter((c) => c.method.methodKind === "server_streaming").length >= 2, "server streams are among them");
  const events = await settledEvents(t);
  for (const c of calls) checkEvent(t, c, events.get(c.requestId));
  const upload = calls.find((c) => actionOf(c.method) === "jobmesh.v1.JobService.UploadDocument" && c.as === "admin")!;
  const uploaded = events.get(upload.requestId)?.[0];
  t.match(uploaded, { resource: /^uploads\//, resourceType: "jobmesh.dev/Upload" }, "the upload names what it made");
  t.match(JSON.parse(uploaded?.request || "{}"), { metadata: { filename: "a.txt" } }, "a client stream records its first message");
  const watch = calls.find((c) => actionOf(c.method) === "jobmesh.v1.JobService.WatchJob" && c.as === "anonymous")!;
  t.equal(events.get(watch.requestId)?.[0]?.resource, `jobs/${id}`, "a refused server stream still names its resource");
});

t.test("failed logins are recorded under the tenant they tried, with the email and never the password", async (t) => {
  const login = AuthService.method.login;
  const wrong = "not-the-password-at-all";
  secrets.add(wrong);
  const withTenant = await call(login, "anonymous", { email: admin.email, password: wrong, tenant: admin.tenant });
  const noTenant = await call(login, "anonymous", { email: admin.email, password: wrong });
  const unknown = await call(login, "anonymous", { email: "nobody@example.com", password: wrong, tenant: admin.tenant });
  for (const c of [withTenant, noTenant, unknown]) t.equal(c.code, Code.Unauthenticated);
  const events = await settledEvents(t);
  for (const [c, email] of [[withTenant, admin.email], [noTenant, admin.email], [unknown, "nobody@example.com"]] as const) {
    const e = events.get(c.requestId);
    t.equal(e?.length, 1, "one event");
    t.match(e?.[0], { tenant, action: "jobmesh.v1.AuthService.Login", outcome: { code: Code.Unauthenticated }, actor: { subject: "", credentialHint: `email:${email}` } });
    t.notOk(e?.[0]?.request.includes(wrong), "the password tried is not in the request");
  }
});

t.test("no password, token or key secret appears in any recorded event", async (t) => {
  const events = [...(await settledEvents(t)).values()].flat();
  t.ok(events.length >= calls.length, `${events.length} events`);
  const everything = events.map((e) => toJsonString(AuditEventSchema, e)).join("\n");
  t.ok(secrets.size >= 5, `${secrets.size} secrets to look for`);
  for (const secret of secrets) t.notOk(everything.includes(secret), `secret ${secret.slice(0, 6)}… is nowhere`);
  const key = [...secrets].find((s) => s.startsWith("jmk_"));
  t.ok(key, "the API key secret was among them");
  t.notOk(everything.includes(key!.slice("jmk_".length + 9)), "not even the key's secret part");

  // And in Postgres, once the audit store has stored them: every column of every row, as text.
  const deadline = Date.now() + 60_000;
  let rows: string[] = [];
  for (;;) {
    rows = (await mesh.infra.db.query<{ row: string }>("SELECT e::text AS row FROM audit_events e")).rows.map((r) => r.row);
    if (rows.length >= events.length || Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  t.ok(rows.length >= events.length, `${rows.length} rows stored`);
  const table = rows.join("\n");
  for (const secret of secrets) t.notOk(table.includes(secret), `secret ${secret.slice(0, 6)}… is in no column`);
});

t.test("gRPC over HTTP/2: a unary call and a stream read to its end are recorded as the client saw them, not as cancelled", async (t) => {
  const grpc = (url: string) => createGrpcTransport({ baseUrl: url });
  const pipelines = createClient(PipelineService, grpc(mesh.pipelines.url));
  const jobs = createClient(JobService, grpc(mesh.jobs!.url));
  const headersOf = (requestId: string) => ({ ...adminHeaders, "x-request-id": requestId });
  const listed = `audit-grpc-list-${crypto.randomUUID()}`;
  await pipelines.listPipelines({}, { headers: headersOf(listed) });
  const { job } = await jobs.createJob({ job: { document: { source: { case: "text", value: "watched over gRPC" } } } }, { headers: adminHeaders });
  const watched = `audit-grpc-watch-${crypto.randomUUID()}`;
  let n = 0;
  // No workers: the job waits until it is cancelled, which ends the stream.
  for await (const _ of jobs.watchJob({ name: job!.name }, { headers: headersOf(watched) })) {
    void _;
    if (n++ === 0) await jobs.cancelJob({ name: job!.name }, { headers: adminHeaders });
  }
  calls.push({ requestId: listed, method: PipelineService.method.listPipelines, as: "admin", code: 0, message: "", resource: "" });
  calls.push({ requestId: watched, method: JobService.method.watchJob, as: "admin", code: 0, message: "", resource: job!.name });
  const events = await settledEvents(t);
  t.match(events.get(listed), [{ action: "jobmesh.v1.PipelineService.ListPipelines", outcome: { code: 0 }, actor: { subject: admin.name } }]);
  t.equal(events.get(listed)?.length, 1);
  t.match(events.get(watched), [{ action: "jobmesh.v1.JobService.WatchJob", resource: job!.name, outcome: { code: 0 } }]);
  t.equal(events.get(watched)?.length, 1);
});

t.test("a 2 MiB name sent without credentials: refused, and its event is published (every text capped at 1 KiB, the request a stub), not stuck in the sink", async (t) => {
  const requestId = `audit-huge-${crypto.randomUUID()}`;
  const name = `pipelines/${"a".repeat(2 * 1024 * 1024)}`;
  const pipelines = clients.get(PipelineService) as unknown as Client<typeof PipelineService>;
  const code = await pipelines.getPipeline({ name }, { headers: { "x-request-id": requestId } }).then(() => 0, (e: unknown) => ConnectError.from(e).code);
  t.equal(code, Code.Unauthenticated, "identity refuses before validation");
  const after = `audit-after-huge-${crypto.randomUUID()}`;
  await pipelines.listPipelines({}, { headers: { ...adminHeaders, "x-request-id": after } });
  const events = await waitFor(t, "the refused call's event and the next call's", async () => {
    const byId = await eventsByRequestId();
    return byId.has(requestId) && byId.has(after) && byId;
  }, { timeoutMs: 60_000, intervalMs: 100 });
  const e = events.get(requestId)![0]!;
  t.match(e, { action: "jobmesh.v1.PipelineService.GetPipeline", outcome: { code: Code.Unauthenticated }, tenant: "" });
  t.ok(new TextEncoder().encode(e.resource).length <= 1024 && e.resource.startsWith("pipelines/aaaa") && e.resource.endsWith("…[cut]"), "the name, capped and marked");
  t.match(JSON.parse(e.request), { omitted: /^request of \d+ bytes$/ }, "the request is a stub naming its size");
  t.ok(toBinary(AuditEventSchema, e).length < 64 * 1024, `${toBinary(AuditEventSchema, e).length} bytes on the wire`);
});

t.test("login attribution: a successful login's tenant comes from the token it issued (no lookup); a refused one is looked up after the decision", async (t) => {
  const order: string[] = [];
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const issued = `${b64({ alg: "EdDSA" })}.${b64({ sub: "users/u1", tenant: "tenant-of-token" })}.c2ln`;
  const domain = {
    async login(email: string) {
      order.push("login");
      if (email === "refused@example.com") throw new InvalidCredentialsError();
      return { accessToken: issued, expireTime: new Date(), refreshToken: "r", refreshTokenExpireTime: new Date() };
    },
  };
  const service = createAuthService(domain as never, [], { loginTenantOf: async () => (order.push("lookup"), "tenant-looked-up") });
  const ok = createContextValues();
  await service.login(create(LoginRequestSchema, { email: "a@example.com", password: "p" }), { values: ok } as never);
  t.same(order, ["login"], "no lookup for a login that succeeded");
  t.match(ok.get(auditAttributionKey), { tenantId: "tenant-of-token", subject: "users/u1", credentialHint: "email:a@example.com" });
  order.length = 0;
  const refused = createContextValues();
  await t.rejects(async () => service.login(create(LoginRequestSchema, { email: "refused@example.com", password: "p" }), { values: refused } as never), InvalidCredentialsError);
  t.same(order, ["login", "lookup"], "the refused login was decided first");
  t.equal(refused.get(auditAttributionKey)?.tenantId, "tenant-looked-up");
});
