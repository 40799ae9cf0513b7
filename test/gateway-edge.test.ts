/**
 * The gateway's edge behaviour, through a real Deno gateway in front of the real mesh: its
 * operator endpoints (/healthz, /readyz up and down, /metrics by route template, /docs served
 * locally, /openapi.json), CORS from the allow-list and the security headers, the client address
 * it forwards (believed from a trusted proxy, a client's own x-forwarded-for ignored otherwise),
 * traceparent reaching the services' spans, grpc-timeout deadlines, and API keys at the edge up
 * to their revocation.
 */
import t, { type Test } from "tap";
import { Code } from "@connectrpc/connect";
import { isStatusBody, startGatewayMesh, type GatewayMesh, type StatusBody, fetchAnswer, type GatewayAnswer } from "./support/gateway.ts";
import type { TestUser } from "./support/auth.ts";

// Two meshes and two Deno processes start here; a loaded machine needs more than the default.
t.setTimeout(300_000);

const appOrigin = "https://app.example.com";
/** Failed logins one client address may make (in a long window: nothing expires mid-test). */
const ipLimit = 3;
const loginLimits = { JOBMESH_LOGIN_MAX_FAILURES_PER_IP: String(ipLimit), JOBMESH_LOGIN_WINDOW_SECONDS: "600" };

// Started first: the first mesh in a process owns the global tracer, so its `spans` see the calls.
// The gateway believes the x-forwarded-for of 127.0.0.1 (this test, standing in for a load balancer).
const main = await startGatewayMesh(t, {
  jobs: true,
  env: { JOBMESH_GATEWAY_CORS_ORIGINS: appOrigin, JOBMESH_GATEWAY_TRUSTED_PROXIES: "127.0.0.1" },
  meshEnv: loginLimits,
});
const { mesh, url } = main;
const admin = await mesh.auth!.headersFor("admin");
const json = { "content-type": "application/json" };

type Answer = GatewayAnswer;

const call = (base: string, path: string, init: RequestInit = {}): Promise<Answer> => fetchAnswer(`${base}${path}`, init);

/** Fields that carry a credential: never printed, even in a failing assertion's message. */
const credentialFields = new Set(["accessToken", "refreshToken", "secret"]);

/** The body for an assertion message, credentials replaced, at most 300 characters. */
function shown(body: unknown): string {
  return JSON.stringify(body, (key, value: unknown) => (credentialFields.has(key) ? "<redacted>" : value)).slice(0, 300);
}

/** Asserts the HTTP status and that the body is a Status carrying `code`; returns the body. */
function expectStatus(t: Test, answer: Answer, status: number, code: Code): StatusBody {
  t.equal(answer.status, status, `HTTP ${status}: ${shown(answer.body)}`);
  if (!isStatusBody(answer.body)) {
    t.fail(`the body is a google.rpc.Status: ${shown(answer.body)}`);
    return { code: -1, message: "", details: [] };
  }
  t.equal(answer.body.code, code, `code ${Code[code]} (${code})`);
  return answer.body;
}

/** Polls `check` until it answers true or `timeoutMs` passes; answers whether it did, and after how long. */
async function eventually(check: () => Promise<boolean>, timeoutMs: number): Promise<{ ok: boolean; afterMs: number }> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    if (await check()) return { ok: true, afterMs: Date.now() - started };
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return { ok: await check(), afterMs: Date.now() - started };
}

/** The sum of a Prometheus counter's samples whose labels include every one of `labels`. */
function counterOf(text: string, name: string, labels: Record<string, string>): number {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  return text
    .split("\n")
    .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name}_total{`))
    .filter((line) => wanted.every((label) => line.includes(label)))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
}

/** Calls of `method` the pipelines service has counted (its telemetry interceptor is outermost: refusals count too). */
async function serviceCallsOf(method: string): Promise<number> {
  const text = await fetch(`${mesh.pipelines.url}/metrics`).then((res) => res.text());
  return counterOf(text, "rpc_server_calls", { rpc_method: method });
}

const login = (base: string, user: TestUser, password: string, headers: Record<string, string> = {}) =>
  call(base, "/v1/auth:login", { method: "POST", headers: { ...json, ...headers }, body: JSON.stringify({ email: user.email, password, tenant: user.tenant }) });
const wrongPassword = "wrong-password-123";
const retryInfoType = "type.googleapis.com/google.rpc.RetryInfo";

t.test("operator endpoints - /healthz answers 200 and /readyz names every served backend as ready", async (t) => {
  const health = await call(url, "/healthz");
  t.equal(health.status, 200);
  const ready = await call(url, "/readyz");
  t.equal(ready.status, 200, `ready: ${shown(ready.body)}`);
  t.same(ready.body, { ready: true, backends: { jobs: true, pipelines: true, auth: true } }, "jobs, pipelines and auth are reachable");
});

t.test("operator endpoints - /metrics is Prometheus text counting gateway_requests by route template, not by path", async (t) => {
  const route = { method: "GET", route: "/v1/{name=pipelines/*}", status: "200" };
  const before = await fetch(`${url}/metrics`).then((res) => res.text());
  const calls = 3;
  for (let i = 0; i < calls; i++) t.equal((await call(url, "/v1/pipelines/document-default", { headers: admin })).status, 200);
  const res = await fetch(`${url}/metrics`);
  t.equal(res.status, 200);
  t.match(res.headers.get("content-type"), /^text\/plain/, "Prometheus text exposition");
  const after = await res.text();
  t.match(after, /^# TYPE gateway_requests(_total)? counter$/m, "gateway_requests is a counter");
  t.equal(counterOf(after, "gateway_requests", route) - counterOf(before, "gateway_requests", route), calls, `${calls} more GET ${route.route} answered 200`);
  t.notMatch(after, /route="\/v1\/pipelines\/document-default"/, "no label carries the concrete path");
  t.match(after, /^gateway_request_duration(_seconds)?_bucket\{/m, "and a duration histogram");
});

t.test("operator endpoints - /docs is an HTML page whose assets load from the gateway itself, under a CSP with no CDN", async (t) => {
  const res = await fetch(`${url}/docs`);
  t.equal(res.status, 200);
  t.match(res.headers.get("content-type"), /^text\/html/);
  const html = await res.text();
  const assets = [...html.matchAll(/<(script|link)\b[^>]*\b(?:src|href)="([^"]+)"/g)].map((m) => ({ tag: m[1]!, path: m[2]! }));
  t.ok(assets.some((a) => a.tag === "script") && assets.some((a) => a.tag === "link"), `the page loads scripts and styles: ${JSON.stringify(assets)}`);
  for (const { tag, path } of assets) {
    // Only the gateway is fetched: a test sends nothing off this machine.
    if (!/^\/docs\//.test(path)) {
      t.fail(`${path} is served by the gateway (not a CDN)`);
      continue;
    }
    const asset = await fetch(new URL(path, url));
    t.equal(asset.status, 200, `${path} loads`);
    if (tag === "script") t.match(asset.headers.get("content-type"), /javascript/, `${path} is a script`);
    if (path.endsWith(".css")) t.match(asset.headers.get("content-type"), /^text\/css/, `${path} is a stylesheet`);
    await asset.body?.cancel();
  }
  const csp = res.headers.get("content-security-policy") ?? "";
  t.match(csp, /script-src 'self'/, `the page's CSP allows scripts from the gateway: ${csp}`);
  const sources = csp.split(";").flatMap((directive) => directive.trim().split(/\s+/).slice(1));
  const foreign = sources.filter((s) => !["'self'", "'none'", "data:"].includes(s));
  t.same(foreign, [], "every source is 'self', 'none' or data: (no CDN, no other host)");
});

t.test("operator endpoints - /openapi.json is an OpenAPI 3.1 document", async (t) => {
  const doc = await call(url, "/openapi.json");
  t.equal(doc.status, 200);
  t.match(doc.headers.get("content-type"), /^application\/json/);
  t.match((doc.body as { openapi?: string }).openapi, /^3\.1\.\d+$/, "openapi: 3.1.x");
  t.ok(Object.keys((doc.body as { paths?: object }).paths ?? {}).length > 0, "with paths");
});

t.test("CORS - a preflight from an allowed origin is answered 204 with the methods and headers a client needs", async (t) => {
  const res = await fetch(`${url}/v1/pipelines`, {
    method: "OPTIONS",
    headers: { origin: appOrigin, "access-control-request-method": "POST", "access-control-request-headers": "authorization, content-type, x-api-key" },
  });
  t.equal(res.status, 204);
  t.equal(res.headers.get("access-control-allow-origin"), appOrigin);
  const methods = (res.headers.get("access-control-allow-methods") ?? "").split(",").map((v) => v.trim());
  for (const method of ["GET", "POST", "PATCH", "DELETE"]) t.ok(methods.includes(method), `allows ${method}: ${methods.join(", ")}`);
  const allowed = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase().split(",").map((v) => v.trim());
  for (const header of ["authorization", "content-type", "x-api-key"]) t.ok(allowed.includes(header), `allows the ${header} header`);
  t.notOk(res.headers.get("access-control-allow-credentials"), "never ambient credentials");
});

t.test("CORS - a preflight from any other origin is refused with 403 and no Access-Control-Allow-Origin", async (t) => {
  for (const origin of ["https://evil.example.com", "https://app.example.com.evil.example", "http://app.example.com"]) {
    const res = await fetch(`${url}/v1/pipelines`, { method: "OPTIONS", headers: { origin, "access-control-request-method": "GET" } });
    t.equal(res.status, 403, `${origin} is refused`);
    t.equal(res.headers.get("access-control-allow-origin"), null, `${origin} gets no Access-Control-Allow-Origin`);
    t.equal(res.headers.get("access-control-allow-methods"), null, `${origin} gets no Access-Control-Allow-Methods`);
  }
});

t.test("CORS - an actual request from the allowed origin carries Access-Control-Allow-Origin and Vary: Origin; another origin's does not", async (t) => {
  const allowed = await fetch(`${url}/v1/pipelines`, { headers: { ...admin, origin: appOrigin } });
  t.equal(allowed.status, 200);
  await allowed.body?.cancel();
  t.equal(allowed.headers.get("access-control-allow-origin"), appOrigin);
  const vary = (allowed.headers.get("vary") ?? "").toLowerCase().split(",").map((v) => v.trim());
  t.ok(vary.includes("origin"), `Vary names Origin: ${allowed.headers.get("vary")}`);
  t.match(allowed.headers.get("access-control-expose-headers") ?? "", /x-request-id/i, "a script may read the request id");

  const other = await fetch(`${url}/v1/pipelines`, { headers: { ...admin, origin: "https://evil.example.com" } });
  await other.body?.cancel();
  t.equal(other.headers.get("access-control-allow-origin"), null, "another origin's answer allows it nothing");
});

t.test("security headers - every answer (data, error, operator endpoint) says nosniff and may not be framed", async (t) => {
  const answers = {
    "a REST answer": await fetch(`${url}/v1/pipelines`, { headers: admin }),
    "an error": await fetch(`${url}/v1/pipelines`),
    "an unknown path": await fetch(`${url}/no-such-path`),
    "/healthz": await fetch(`${url}/healthz`),
  };
  for (const [what, res] of Object.entries(answers)) {
    await res.body?.cancel();
    t.equal(res.headers.get("x-content-type-options"), "nosniff", `${what}: X-Content-Type-Options nosniff`);
    const csp = res.headers.get("content-security-policy") ?? "";
    t.ok(res.headers.get("x-frame-options") === "DENY" || /frame-ancestors 'none'/.test(csp), `${what}: X-Frame-Options DENY or CSP frame-ancestors 'none'`);
  }
});

t.test("deadlines - grpc-timeout sets the call's deadline: 1 ms ends a login in 504 DEADLINE_EXCEEDED, a malformed one is 400", async (t) => {
  const user = await mesh.auth!.newUser("viewer");
  // Its own client address: should the cut-off login count as a failure, it is counted there.
  const headers = { "x-forwarded-for": "192.0.2.40" };
  // A login hashes its password (argon2): never done within 1 ms.
  expectStatus(t, await login(url, user, user.password, { ...headers, "grpc-timeout": "1m" }), 504, Code.DeadlineExceeded);
  const malformed = expectStatus(t, await login(url, user, user.password, { ...headers, "grpc-timeout": "soon" }), 400, Code.InvalidArgument);
  t.match(malformed.message, /grpc-timeout/, "the message names the header");
  const ample = await login(url, user, user.password, { ...headers, "grpc-timeout": "60S" });
  t.equal(ample.status, 200, `an ample deadline lets the same login through: ${shown(ample.body)}`);
});

t.test("client address - a trusted proxy's x-forwarded-for is the address the login limit counts", async (t) => {
  const user = await mesh.auth!.newUser("viewer");
  const from = (address: string) => ({ "x-forwarded-for": address });
  for (let i = 0; i < ipLimit; i++) {
    expectStatus(t, await login(url, user, wrongPassword, from("203.0.113.5")), 401, Code.Unauthenticated);
  }
  const limited = expectStatus(t, await login(url, user, user.password, from("203.0.113.5")), 429, Code.ResourceExhausted);
  t.match(limited.message, /login attempts/, `the service's login limit refused it, not the gateway's rate limit: ${limited.message}`);
  t.ok(limited.details.some((d) => d["@type"] === retryInfoType), "with the service's RetryInfo");
  const other = await login(url, user, user.password, from("203.0.113.6"));
  t.equal(other.status, 200, `203.0.113.6 is not limited: ${shown(other.body)}`);
  t.ok((other.body as { accessToken?: string }).accessToken, "and signs in");
});

t.test("traceparent - a request's trace context reaches the service's span", async (t) => {
  const hex = (bytes: number) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
  const traceId = hex(16);
  const parentId = hex(8);
  const res = await fetch(`${url}/v1/pipelines/document-default`, { headers: { ...admin, traceparent: `00-${traceId}-${parentId}-01` } });
  t.equal(res.status, 200);
  await res.body?.cancel();
  const spanOf = () => mesh.spans.getFinishedSpans().find((s) => s.spanContext().traceId === traceId && s.name.endsWith("/GetPipeline"));
  const { ok } = await eventually(async () => spanOf() !== undefined, 10_000);
  t.ok(ok, "the pipelines service recorded a GetPipeline span in the request's trace");
  t.equal(spanOf()?.parentSpanContext?.spanId, parentId, "whose parent is the caller's span");
});

t.test("API keys - a viewer key reads, is refused a write at the edge, and is refused at the edge within the cache lifetime of its revocation", async (t) => {
  const created = await call(url, "/v1/apiKeys", { method: "POST", headers: { ...admin, ...json }, body: JSON.stringify({ displayName: "edge-viewer", roles: ["ROLE_VIEWER"] }) });
  t.equal(created.status, 200, `created: ${shown(created.body)}`);
  const { apiKey, secret } = created.body as { apiKey: { name: string }; secret: string };
  t.match(secret, /^jmk_/, "the secret is shown once");
  const withKey = { "x-api-key": secret };

  t.equal((await call(url, "/v1/pipelines", { headers: withKey })).status, 200, "the key lists pipelines");

  const before = await serviceCallsOf("CreatePipeline");
  const write = await call(url, "/v1/pipelines?pipelineId=key-made", {
    method: "POST",
    headers: { ...withKey, ...json },
    body: JSON.stringify({ config: { stages: [{ stage: "STAGE_INGEST" }, { stage: "STAGE_OUTPUT" }] } }),
  });
  const refused = expectStatus(t, write, 403, Code.PermissionDenied);
  t.match(refused.message, /pipelines\.create/, "the refusal names the permission");
  t.equal(await serviceCallsOf("CreatePipeline"), before, "the pipelines service never saw the write");

  const revoked = await call(url, `/v1/${apiKey.name}:revoke`, { method: "POST", headers: { ...admin, ...json }, body: "{}" });
  t.equal(revoked.status, 200, `revoked: ${shown(revoked.body)}`);
  // The service would refuse the key too; the edge must stop passing it on once its cached identity
  // (JOBMESH_API_KEY_CACHE_SECONDS, 5 s) lapses. The margin is for a loaded machine.
  let last: Answer | undefined;
  const refusedAtEdge = async () => {
    const calls = await serviceCallsOf("ListPipelines");
    last = await call(url, "/v1/pipelines", { headers: withKey });
    return last.status === 401 && (await serviceCallsOf("ListPipelines")) === calls;
  };
  const { ok, afterMs } = await eventually(refusedAtEdge, 5_000 + 10_000);
  t.ok(ok, `the revoked key is refused with 401 at the edge, without reaching the service (after ${afterMs} ms; last answer ${last?.status})`);
  if (last) expectStatus(t, last, 401, Code.Unauthenticated);
});

t.test("a gateway with a backend down and no trusted proxy", async (t) => {
  // Its own mesh: its address budget (127.0.0.1) is spent below. Default gateway: it trusts no proxy.
  const lone: GatewayMesh = await startGatewayMesh(t, { env: { JOBMESH_JOBS_URL: "http://127.0.0.1:1" }, meshEnv: loginLimits });
  t.teardown(lone.stop);

  t.test("/readyz answers 503, ready false, naming the backend that is down", async (t) => {
    const ready = await call(lone.url, "/readyz");
    t.equal(ready.status, 503);
    t.same(ready.body, { ready: false, backends: { jobs: false, pipelines: true, auth: true } }, "jobs is down, the others are reachable");
    t.equal((await call(lone.url, "/healthz")).status, 200, "while /healthz, about the gateway itself, stays 200");
  });

  t.test("client address - a client's own x-forwarded-for is ignored: every forged address counts against its real one", async (t) => {
    // Made first: from here on this test's own address is out of login failures.
    const user = await lone.mesh.auth!.newUser("viewer");
    for (let i = 0; i < ipLimit; i++) {
      expectStatus(t, await login(lone.url, user, wrongPassword, { "x-forwarded-for": `198.51.100.${i + 1}` }), 401, Code.Unauthenticated);
    }
    const limited = expectStatus(t, await login(lone.url, user, user.password, { "x-forwarded-for": "198.51.100.99" }), 429, Code.ResourceExhausted);
    t.match(limited.message, /login attempts/, `a fresh forged address does not escape the limit: ${limited.message}`);
    expectStatus(t, await login(lone.url, user, user.password), 429, Code.ResourceExhausted);
  });
});
