/**
 * The named interceptor slots (telemetry → errors → audit → identity → validate), seen from an
 * interceptor in the audit slot of servers started as internal/mesh/servers.ts starts them: it
 * runs outside identity, sees every call once (a streaming call when its stream ends), with the
 * caller the call claimed to be, refused or not, and the ConnectError the caller gets.
 */
import http2 from "node:http2";
import t, { type Test } from "tap";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createContextValues, type HandlerContext, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { AuthService, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { GetPipelineResponseSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { serveAuth, serveJobs, servePipelines } from "../internal/mesh/servers.ts";
import { attemptedCallerKey, callerKey, type AttemptedCaller, type Caller } from "../internal/rpc/context.ts";
import { chainOf, createCallEndInterceptor } from "../internal/rpc/slots.ts";
import { generateKeyPair, SignJWT, type CryptoKey } from "jose";
import { createSigningKeys, loadKeyEncryptionKey } from "../internal/auth/signing-keys.ts";
import { startTestMesh } from "./support/mesh.ts";
import { until } from "./support/wait.ts";

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
  /** The unary response message createCallEndInterceptor passed on. */
  response: unknown;
  /** The context values of the call: the same object for every record of one call. */
  values: object;
}

const seen: Seen[] = [];
const procedureOf = (req: { method: { name: string; parent: { typeName: string } } }) => `/${req.method.parent.typeName}/${req.method.name}`;

// Inside the recorder, still in the audit slot: what the call looked like before identity, and the raw error.
interface Entry {
  attemptedBefore: AttemptedCaller | undefined;
  thrown?: unknown;
  /** Set when the response stream below the recorder has finished, however it ended. */
  streamClosed?: boolean;
}
const entered = new WeakMap<object, Entry>();
const probe: Interceptor = (next) => async (req) => {
  const entry: Entry = { attemptedBefore: req.contextValues.get(attemptedCallerKey) };
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
        } finally {
          entry.streamClosed = true;
        }
      })(),
    };
  } catch (error) {
    entry.thrown = error;
    throw error;
  }
};
const recorder = createCallEndInterceptor((req, error, end) => {
  const entry = entered.get(req.contextValues);
  seen.push({
    procedure: procedureOf(req),
    attemptedBefore: entry?.attemptedBefore,
    attempted: req.contextValues.get(attemptedCallerKey),
    caller: req.contextValues.get(callerKey),
    thrown: entry?.thrown,
    code: error === undefined ? "ok" : error.code,
    response: end.response,
    values: req.contextValues,
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

t.test("unauthenticated - an expired token whose signature verifies: attributed to its subject, tenant and token id; a forged one is not", async (t) => {
  const { config } = mesh.infra;
  const keys = createSigningKeys({ db: mesh.infra.db, keyEncryptionKey: await loadKeyEncryptionKey(config.auth.keyEncryptionKey, config.auth.signingKeyDir), rotationSeconds: config.auth.signingKeyRotationSeconds });
  const current = await keys.current();
  const now = Math.floor(Date.now() / 1000);
  const jti = crypto.randomUUID();
  const claims = { iss: config.auth.issuer, aud: config.auth.audience, sub: viewer.name, tenant: viewer.tenantId, roles: ["viewer"], iat: now - 1000, nbf: now - 1000, exp: now - 60, jti };
  const signWith = (key: CryptoKey) => new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid: current.kid, typ: "at+jwt" }).sign(key);
  const expired = await recordOf(t, "/jobmesh.v1.PipelineService/ListPipelines", async () => {
    t.equal(await codeOf(pipelines.listPipelines({}, { headers: { authorization: `Bearer ${await signWith(current.privateKey)}` } })), Code.Unauthenticated);
  });
  t.same(expired.attempted, { kind: "token", subject: viewer.name, tenantId: viewer.tenantId, credentialHint: `tokens/${jti}` }, "the tenant's chain, not the operator's");
  t.equal(expired.caller, undefined, "still refused");
  const { privateKey: forger } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  const forged = await recordOf(t, "/jobmesh.v1.PipelineService/ListPipelines", async () => {
    t.equal(await codeOf(pipelines.listPipelines({}, { headers: { authorization: `Bearer ${await signWith(forger)}` } })), Code.Unauthenticated);
  });
  t.same(forged.attempted, { kind: "token", credentialHint: "unverified" }, "an expired token someone else signed names nobody");
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

t.test("abandoned - a WatchJob the client stops reading is one CANCELED record, not OK", async (t) => {
  const { job } = await jobs.createJob({ job: { document: { source: { case: "text", value: "abandoned by its watcher" } } } }, { headers: operatorHeaders });
  const watch = "/jobmesh.v1.JobService/WatchJob";
  const before = seen.length;
  const client = new AbortController();
  const first = await codeOf((async () => {
    for await (const _ of jobs.watchJob({ name: job!.name }, { headers: viewerHeaders, signal: client.signal })) {
      void _;
      client.abort(); // the first event is enough: walk away with the stream open
    }
  })());
  t.equal(first, Code.Canceled, "the client sees its own cancellation");
  await until(t, "the record of the abandoned stream", () => seen.slice(before).some((s) => s.procedure === watch));
  const mine = seen.slice(before).filter((s) => s.procedure === watch);
  const entry = entered.get(mine[0]!.values)!;
  // Once the stream below the recorder is closed, any second record would follow within the same turn.
  await until(t, "the server to close the stream", () => entry.streamClosed === true && jobsServer.watcher.stats().streams === 0);
  await new Promise((resolve) => setImmediate(resolve));
  const all = seen.slice(before).filter((s) => s.procedure === watch);
  t.equal(all.length, 1, "exactly one record");
  t.equal(all[0]!.code, Code.Canceled, "abandoned, not OK");
  t.match(all[0], { attempted: { kind: "token", subject: viewer.name }, caller: { subject: viewer.name } });
  await jobs.cancelJob({ name: job!.name }, { headers: operatorHeaders });
});

t.test("unary - the response message is passed on (a create names what it made); a refused call has none", async (t) => {
  const made = await recordOf(t, "/jobmesh.v1.PipelineService/CreatePipeline", () => pipelines.createPipeline({ pipelineId: "slots-made", pipeline: { config } }, { headers: admin }));
  t.equal(made.code, "ok");
  t.match(made.response, { pipeline: { name: "pipelines/slots-made" } });
  const refused = await recordOf(t, "/jobmesh.v1.PipelineService/CreatePipeline", async () => {
    t.equal(await codeOf(pipelines.createPipeline({ pipelineId: "slots-refused", pipeline: { config } }, { headers: viewerHeaders })), Code.PermissionDenied);
  });
  t.equal(refused.response, undefined);
});

/** A stream request as the server hands it to interceptors, with the signal under the test's control. */
function fakeStreamCall(signal: AbortSignal) {
  const request = { stream: true, method: JobService.method.watchJob, service: JobService, signal, header: new Headers(), contextValues: createContextValues(), message: (async function* () {})() };
  return request as unknown as Parameters<ReturnType<Interceptor>>[0];
}

/** The codes createCallEndInterceptor reported for one call whose stream yields `n` messages and then waits forever. */
function callEndOver(n: number) {
  const ends: (Code | "ok")[] = [];
  const interceptor = createCallEndInterceptor((_req, error) => ends.push(error === undefined ? "ok" : error.code));
  const call = interceptor(async () => ({
    stream: true,
    message: (async function* () {
      for (let i = 0; i < n; i++) yield i;
      await new Promise(() => {}); // a live stream with nothing more to say
    })(),
  }) as never);
  return { ends, call };
}

t.test("call end - a stream never read ends when the call's signal aborts: once, CANCELED or DEADLINE_EXCEEDED", async (t) => {
  const client = new AbortController();
  const cancelled = callEndOver(1);
  await cancelled.call(fakeStreamCall(client.signal));
  t.same(cancelled.ends, [], "nothing while the call is alive");
  client.abort();
  t.same(cancelled.ends, [Code.Canceled]);
  client.signal.dispatchEvent(new Event("abort"));
  t.same(cancelled.ends, [Code.Canceled], "still one");

  const timer = new AbortController();
  const late = callEndOver(0);
  await late.call(fakeStreamCall(timer.signal));
  timer.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
  t.same(late.ends, [Code.DeadlineExceeded]);
});

t.test("call end - a stream read partly and returned early is one CANCELED record, even when the signal aborts after", async (t) => {
  const client = new AbortController();
  const partly = callEndOver(3);
  const res = (await partly.call(fakeStreamCall(client.signal))) as unknown as { message: AsyncGenerator<number> };
  t.same((await res.message.next()).value, 0);
  await res.message.return(undefined);
  t.same(partly.ends, [Code.Canceled]);
  client.abort();
  t.same(partly.ends, [Code.Canceled], "the signal does not add a second record");

  const whole = createCallEndInterceptor((_req, error) => ends.push(error === undefined ? "ok" : error.code));
  const ends: (Code | "ok")[] = [];
  const done = (await whole(async () => ({ stream: true, message: (async function* () { yield 1; })() }) as never)(fakeStreamCall(new AbortController().signal))) as unknown as { message: AsyncIterable<number> };
  for await (const _ of done.message) void _;
  t.same(ends, ["ok"], "a stream read to its end is OK, once");
});

/** A call as the server hands it to interceptors: `method` of JobService, the signal under the test's control. */
function fakeCall(method: "createJob" | "uploadDocument", signal: AbortSignal) {
  const stream = method === "uploadDocument";
  const message = stream ? (async function* () {})() : {};
  const request = { stream, method: JobService.method[method], service: JobService, signal, header: new Headers(), contextValues: createContextValues(), message };
  return request as unknown as Parameters<ReturnType<Interceptor>>[0];
}

t.test("call end - a unary or client-streaming handler that finishes after the client left is recorded with what it did, once", async (t) => {
  for (const method of ["createJob", "uploadDocument"] as const) {
    const ends: { code: Code | "ok"; response: unknown }[] = [];
    const interceptor = createCallEndInterceptor((_req, error, end) => ends.push({ code: error === undefined ? "ok" : error.code, response: end.response }));
    let finish = () => {};
    const answered = new Promise<void>((resolve) => (finish = resolve));
    const made = { job: { name: "jobs/committed" } };
    const client = new AbortController();
    const call = interceptor(async () => {
      await answered; // the handler is still committing when the client goes
      return (method === "createJob" ? { stream: false, message: made } : { stream: true, message: (async function* () { yield made; })() }) as never;
    })(fakeCall(method, client.signal));
    client.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
    await new Promise((resolve) => setImmediate(resolve));
    t.same(ends, [], `${method}: nothing while its handler runs`);
    finish();
    const res = (await call) as unknown as { stream: boolean; message: unknown };
    t.same(ends, [{ code: "ok", response: made }], `${method}: OK, with the response that names what it made`);
    if (res.stream) {
      const answers: unknown[] = [];
      for await (const m of res.message as AsyncIterable<unknown>) answers.push(m);
      t.same(answers, [made], `${method}: the one answer still reaches the client`);
    }
    t.same(ends.length, 1, `${method}: still one record`);
  }

  const failing = createCallEndInterceptor((_req, error) => ends.push(error === undefined ? "ok" : error.code));
  const ends: (Code | "ok")[] = [];
  const client = new AbortController();
  const call = failing(async () => {
    client.abort();
    throw new ConnectError("no such pipeline", Code.NotFound);
  })(fakeCall("createJob", client.signal));
  await t.rejects(call);
  t.same(ends, [Code.NotFound], "a handler's own error after the client left is its error, not CANCELED");
});

t.test("call end - over HTTP/2, a unary call whose deadline passes while its handler completes is recorded OK", async (t) => {
  const ends: string[] = [];
  let handlerDone = false;
  const interceptor = createCallEndInterceptor((req, error) => ends.push(`${req.method.name} ${error === undefined ? "ok" : error.code}`));
  const handler = connectNodeAdapter({
    interceptors: [interceptor],
    routes: (router) => {
      router.service(PipelineService, {
        async getPipeline(_req: unknown, ctx: HandlerContext) {
          // Outlives the client's deadline on purpose; settles as soon as the client has given up.
          await new Promise<void>((resolve) => (ctx.signal.aborted ? resolve() : ctx.signal.addEventListener("abort", () => resolve(), { once: true })));
          handlerDone = true;
          return create(GetPipelineResponseSchema, {});
        },
      } as never);
    },
  });
  const server = http2.createServer(handler).listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as { port: number }).port;
  const client = createClient(PipelineService, createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2" }));
  t.equal(await codeOf(client.getPipeline({ name: "pipelines/p1" }, { timeoutMs: 200 })), Code.DeadlineExceeded, "the client gave up");
  await until(t, "the handler finished", () => handlerDone);
  await until(t, "the call's record", () => ends.length > 0);
  t.same(ends, ["GetPipeline ok"], "what the handler did, not the client's abandonment");
});
