/**
 * The named interceptor slots (telemetry → errors → audit → identity → validate), seen from an
 * interceptor in the audit slot of servers started as internal/mesh/servers.ts starts them: it
 * runs outside identity, sees every call once (a streaming call when its stream ends), with the
 * caller the call claimed to be, refused or not, and the ConnectError the caller gets.
 */
import t, { type Test } from "tap";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { AuthService, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { serveAuth, serveJobs, servePipelines } from "../internal/mesh/servers.ts";
import { attemptedCallerKey, callerKey, type AttemptedCaller, type Caller } from "../internal/rpc/context.ts";
import { chainOf, createCallEndInterceptor } from "../internal/rpc/slots.ts";
import { startTestMesh } from "./support/mesh.ts";

/** What the audit slot saw of one call. */
interface Seen {
  procedure: string;
  /** attemptedCallerKey when the call entered the audit slot: identity has not run yet. */
  attemptedBefore: AttemptedCaller | undefined;
  attempted: AttemptedCaller | undefined;
  caller: Caller | undefined;
  /** The error exactly as it reached the audit slot, not converted. */
  thrown: unknown;
  /** The code createCallEndInterceptor reported; "ok" without an error. */
  code: Code | "ok";
}

const seen: Seen[] = [];
const procedureOf = (req: { method: { name: string; parent: { typeName: string } } }) => `/${req.method.parent.typeName}/${req.method.name}`;

// Inside the recorder, still in the audit slot: what the call looked like before identity, and the raw error.
const entered = new WeakMap<object, { attemptedBefore: AttemptedCaller | undefined; thrown?: unknown }>();
const probe: Interceptor = (next) => async (req) => {
  const entry: { attemptedBefore: AttemptedCaller | undefined; thrown?: unknown } = { attemptedBefore: req.contextValues.get(attemptedCallerKey) };
  entered.set(req.contextValues, entry);
  try {
    const res = await next(req);
    if (!res.stream) return res;
    const message = res.message;
    return {
      ...res,
      message: (async function* () {
        try {
          yield* message;
        } catch (error) {
          entry.thrown = error;
          throw error;
        }
      })(),
    };
  } catch (error) {
    entry.thrown = error;
    throw error;
  }
};
const recorder = createCallEndInterceptor((req, error) => {
  const entry = entered.get(req.contextValues);
  seen.push({
    procedure: procedureOf(req),
    attemptedBefore: entry?.attemptedBefore,
    attempted: req.contextValues.get(attemptedCallerKey),
    caller: req.contextValues.get(callerKey),
    thrown: entry?.thrown,
    code: error === undefined ? "ok" : error.code,
  });
});
const audit = [recorder, probe];

const mesh = await startTestMesh({ JOBMESH_LOG_LEVEL: "fatal" }, { auth: true, jobs: true, workers: 0 });
const pipelinesServer = await servePipelines(mesh.infra, 0, "enforce", { audit });
const authServer = await serveAuth(mesh.infra, 0, { audit });
// The mesh's own JobService relays the outbox; this one only serves calls.
const jobsServer = await serveJobs(mesh.infra, 0, { identityMode: "enforce", relay: false, audit });
t.teardown(async () => {
  await jobsServer.close();
  await authServer.close();
  await pipelinesServer.close();
  await mesh.close();
});

const auth = mesh.auth!;
const transport = (url: string) => createConnectTransport({ baseUrl: url, httpVersion: "1.1" });
const pipelines = createClient(PipelineService, transport(pipelinesServer.url));
const health = createClient(Health, transport(pipelinesServer.url));
const authClient = createClient(AuthService, transport(authServer.url));
const jobs = createClient(JobService, transport(jobsServer.url));
const admin = await auth.headersFor("admin");
const viewer = await auth.userFor("viewer");
const viewerHeaders = await auth.headersFor("viewer");
const operator = await auth.userFor("operator");
const operatorHeaders = await auth.headersFor("operator");
const config = { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] };

async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

/** The one record the audit slot made of the call `run` makes; fails on none or on several. */
async function recordOf(t: Test, procedure: string, run: () => Promise<unknown>): Promise<Seen> {
  const before = seen.length;
  await run();
  const mine = seen.slice(before).filter((s) => s.procedure === procedure);
  t.equal(mine.length, 1, `exactly one record of ${procedure}`);
  return mine[0] ?? ({} as Seen);
}

t.test("slots - the chain is telemetry → errors → audit → (errors again) → identity → validate; an empty audit slot leaves today's chain", async (t) => {
  const named = (name: string): Interceptor => Object.assign((next: Parameters<Interceptor>[0]) => next, { slot: name });
  const builtIn = { telemetry: named("telemetry"), errors: named("errors"), validate: named("validate") };
  const names = (chain: Interceptor[]) => chain.map((i) => (i as unknown as { slot: string }).slot);
  t.same(names(chainOf({ identity: [named("identity")] }, builtIn)), ["telemetry", "errors", "identity", "validate"]);
  t.same(names(chainOf({ audit: [], identity: [named("identity")] }, builtIn)), ["telemetry", "errors", "identity", "validate"]);
  t.same(names(chainOf({ audit: [named("a1"), named("a2")], identity: [named("identity")] }, builtIn)), ["telemetry", "errors", "a1", "a2", "errors", "identity", "validate"]);
});

t.test("public - GetJwks and a health check are recorded as anonymous", async (t) => {
  const jwks = await recordOf(t, "/jobmesh.v1.AuthService/GetJwks", () => authClient.getJwks({}));
  t.same(jwks.attempted, { kind: "anonymous" });
  t.equal(jwks.code, "ok");
  t.equal(jwks.caller, undefined, "a public call has no caller");

  const check = await recordOf(t, "/grpc.health.v1.Health/Check", async () => {
    const res = await health.check({ service: "" });
    t.equal(res.status, HealthCheckResponse_ServingStatus.SERVING);
  });
  t.same(check.attempted, { kind: "anonymous" });
  t.equal(check.code, "ok");
});

t.test("unauthenticated - no credentials: anonymous, UNAUTHENTICATED as the mapped ConnectError, seen outside identity", async (t) => {
  const r = await recordOf(t, "/jobmesh.v1.PipelineService/ListPipelines", async () => {
    t.equal(await codeOf(pipelines.listPipelines({})), Code.Unauthenticated);
  });
  t.same(r.attempted, { kind: "anonymous" });
  t.equal(r.code, Code.Unauthenticated);
  t.ok(r.thrown instanceof ConnectError, "the audit slot gets a ConnectError, not the domain error");
  t.equal((r.thrown as ConnectError).code, Code.Unauthenticated);
  t.equal(r.attemptedBefore, undefined, "the audit slot runs before identity has recorded anything");
  t.equal(r.caller, undefined);
});

t.test("unauthenticated - a token that does not verify: kind token, unverified, no subject", async (t) => {
  const r = await recordOf(t, "/jobmesh.v1.PipelineService/ListPipelines", async () => {
    t.equal(await codeOf(pipelines.listPipelines({}, { headers: { authorization: "Bearer not.a.jwt" } })), Code.Unauthenticated);
  });
  t.same(r.attempted, { kind: "token", credentialHint: "unverified" });
  t.equal(r.code, Code.Unauthenticated);
});

t.test("permission denied - a viewer creating a pipeline: the viewer's subject, tenant and roles, and the code", async (t) => {
  const r = await recordOf(t, "/jobmesh.v1.PipelineService/CreatePipeline", async () => {
    t.equal(await codeOf(pipelines.createPipeline({ pipelineId: "refused", pipeline: { config } }, { headers: viewerHeaders })), Code.PermissionDenied);
  });
  t.match(r.attempted, { kind: "token", subject: viewer.name, tenantId: viewer.tenantId, roles: ["viewer"], credentialHint: /^tokens\/\S+$/ });
  t.equal(r.code, Code.PermissionDenied);
  t.ok(r.thrown instanceof ConnectError && r.thrown.code === Code.PermissionDenied, "mapped before the audit slot sees it");
  t.equal(r.attemptedBefore, undefined);
  t.equal(r.caller, undefined, "identity did not let it in");
});

t.test("permission denied - a viewer's API key: the key's name and public prefix, never its secret", async (t) => {
  const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: "slots-reader", roles: [Role.VIEWER] } }, { headers: admin });
  const r = await recordOf(t, "/jobmesh.v1.PipelineService/CreatePipeline", async () => {
    t.equal(await codeOf(pipelines.createPipeline({ pipelineId: "refused-key", pipeline: { config } }, { headers: { "x-api-key": secret } })), Code.PermissionDenied);
  });
  t.match(r.attempted, { kind: "api_key", subject: apiKey!.name, tenantId: mesh.infra.bootstrapTenantId, roles: ["viewer"], credentialHint: apiKey!.prefix });
  t.equal(r.code, Code.PermissionDenied);

  const bad = await recordOf(t, "/jobmesh.v1.PipelineService/ListPipelines", async () => {
    t.equal(await codeOf(pipelines.listPipelines({}, { headers: { "x-api-key": `${apiKey!.prefix}_${"x".repeat(43)}` } })), Code.Unauthenticated);
  });
  t.same(bad.attempted, { kind: "api_key", credentialHint: apiKey!.prefix }, "a key that does not verify: its prefix only");
  const everything = JSON.stringify(seen);
  t.notOk(everything.includes(secret.slice(apiKey!.prefix.length + 1)), "the key's secret part appears in no record");
  t.notOk(everything.includes(await auth.tokenFor("viewer")), "no token appears in any record");
});

t.test("allowed - the caller, its roles, and OK; a validation error inside identity is recorded with the caller", async (t) => {
  const r = await recordOf(t, "/jobmesh.v1.PipelineService/ListPipelines", () => pipelines.listPipelines({}, { headers: viewerHeaders }));
  t.match(r.attempted, { kind: "token", subject: viewer.name, tenantId: viewer.tenantId, roles: ["viewer"] });
  t.match(r.caller, { subject: viewer.name, tenantId: viewer.tenantId, roles: ["viewer"] });
  t.equal(r.code, "ok");
  t.equal(r.thrown, undefined);

  const invalid = await recordOf(t, "/jobmesh.v1.PipelineService/CreatePipeline", async () => {
    t.equal(await codeOf(pipelines.createPipeline({ pipelineId: "Not A Valid Id!", pipeline: { config } }, { headers: operatorHeaders })), Code.InvalidArgument);
  });
  t.match(invalid.attempted, { kind: "token", subject: operator.name, roles: ["operator"] });
  t.match(invalid.caller, { subject: operator.name });
  t.equal(invalid.code, Code.InvalidArgument);
  t.ok(invalid.thrown instanceof ConnectError);
});

t.test("streaming - WatchJob is recorded once, when its stream ends, not while it is open", async (t) => {
  // No workers: the job stays QUEUED, so the stream stays open until the job is cancelled.
  const { job } = await jobs.createJob({ job: { document: { source: { case: "text", value: "watched by the audit slot" } } } }, { headers: operatorHeaders });
  const watch = "/jobmesh.v1.JobService/WatchJob";
  const before = seen.filter((s) => s.procedure === watch).length;
  let events = 0;
  for await (const res of jobs.watchJob({ name: job!.name }, { headers: viewerHeaders })) {
    t.ok(res.event, "an event");
    if (events++ === 0) {
      t.equal(seen.filter((s) => s.procedure === watch).length - before, 0, "nothing recorded while the stream is open");
      await jobs.cancelJob({ name: job!.name }, { headers: operatorHeaders });
    }
  }
  t.ok(events >= 2, `the job's history and its cancellation streamed (${events} events)`);
  const mine = seen.filter((s) => s.procedure === watch).slice(before);
  t.equal(mine.length, 1, "one record when it ended");
  t.match(mine[0], { code: "ok", attempted: { kind: "token", subject: viewer.name, tenantId: viewer.tenantId, roles: ["viewer"] }, caller: { subject: viewer.name } });

  const missing = await recordOf(t, watch, async () => {
    t.equal(await codeOf((async () => {
      for await (const _ of jobs.watchJob({ name: "jobs/00000000-0000-4000-8000-000000000000" }, { headers: viewerHeaders })) void _;
    })()), Code.NotFound);
  });
  t.equal(missing.code, Code.NotFound, "a stream that fails is one record with its code");
  t.ok(missing.thrown instanceof ConnectError, "the stream's error is mapped before the audit slot sees it");
});
