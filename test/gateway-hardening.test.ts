/**
 * The gateway's answers to what a review found it mishandled, each provoked through a real Deno
 * gateway in front of the real mesh: a backend that is down is 503 UNAVAILABLE (never 500);
 * /docs/<a name every JavaScript object has> is a 404 Status; an HTTP method token of the client's
 * own is a 404/405 Status and grows no /metrics series of its own; refused credentials from one
 * client address run into that address's rate limit; a pass-through body over the limit is
 * refused; and the open server streams of one credential are capped.
 */
import t, { type Test } from "tap";
import { Code } from "@connectrpc/connect";
import { createServer } from "node:net";
import { isStatusBody, startGatewayMesh, type StatusBody, fetchAnswer, type GatewayAnswer } from "./support/gateway.ts";

// Two meshes and two Deno processes start here; a loaded machine needs more than the default.
t.setTimeout(300_000);

const addressBurst = 3;
const maxBodyBytes = 4096;
const maxStreams = 2;
// The test stands in for a load balancer (127.0.0.1 is trusted), so each test names its own client
// address in x-forwarded-for and spends no other test's address budget.
const gateway = await startGatewayMesh(t, {
  jobs: true,
  env: {
    JOBMESH_GATEWAY_TRUSTED_PROXIES: "127.0.0.1",
    JOBMESH_GATEWAY_RATE_PER_ADDRESS: "1",
    JOBMESH_GATEWAY_BURST_PER_ADDRESS: String(addressBurst),
    JOBMESH_GATEWAY_MAX_BODY_BYTES: String(maxBodyBytes),
    JOBMESH_GATEWAY_MAX_STREAMS_PER_CALLER: String(maxStreams),
  },
});
const { mesh, url } = gateway;
const admin = await mesh.auth!.headersFor("admin");
const json = { "content-type": "application/json" };

type Answer = GatewayAnswer;

const call = (base: string, path: string, init: RequestInit & { duplex?: "half" } = {}): Promise<Answer> => fetchAnswer(`${base}${path}`, init);

const shown = (answer: Answer) => `${answer.status} ${answer.headers.get("content-type") ?? ""} ${answer.text.slice(0, 300)}`;

/** Asserts the HTTP status and that the body is a JSON google.rpc.Status carrying `code`; returns the body. */
function expectStatus(t: Test, answer: Answer, status: number, code: Code, what = ""): StatusBody {
  const prefix = what ? `${what}: ` : "";
  t.equal(answer.status, status, `${prefix}HTTP ${status} (${shown(answer)})`);
  t.match(answer.headers.get("content-type") ?? "", /^application\/json/, `${prefix}a JSON body`);
  if (!isStatusBody(answer.body)) {
    t.fail(`${prefix}the body is a google.rpc.Status (${shown(answer)})`);
    return { code: -1, message: "", details: [] };
  }
  t.equal(answer.body.code, code, `${prefix}code ${Code[code]} (${code})`);
  return answer.body;
}

/** Polls `check` until it answers true or `timeoutMs` passes. */
async function eventually(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; ) {
    if (await check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return check();
}

/** A URL on 127.0.0.1 that refuses connections: a port this test bound, then closed. */
async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return `http://127.0.0.1:${port}`;
}

t.test("a backend that is down - REST and pass-through calls to it answer 503 UNAVAILABLE, never 500", async (t) => {
  const down = await startGatewayMesh(t, { env: { JOBMESH_JOBS_URL: await closedPortUrl() } });
  t.teardown(down.stop);
  const headers = await down.mesh.auth!.headersFor("admin");
  expectStatus(t, await call(down.url, "/v1/jobs", { headers }), 503, Code.Unavailable, "GET /v1/jobs");
  expectStatus(t, await call(down.url, "/v1/jobs/00000000-0000-4000-8000-000000000000", { headers }), 503, Code.Unavailable, "GET /v1/jobs/<id>");
  expectStatus(t, await call(down.url, "/v1/jobs", { method: "POST", headers: { ...headers, ...json }, body: JSON.stringify({ document: { text: "x" } }) }), 503, Code.Unavailable, "POST /v1/jobs");

  const passthrough = await call(down.url, "/jobmesh.v1.JobService/ListJobs", { method: "POST", headers: { ...headers, ...json }, body: "{}" });
  t.equal(passthrough.status, 503, `a Connect pass-through call is 503 too (${shown(passthrough)})`);
  const code = (passthrough.body as { code?: unknown } | null)?.code;
  t.ok(code === Code.Unavailable || code === "unavailable", `its body says UNAVAILABLE, as a Status or a Connect error (${shown(passthrough)})`);

  const served = await call(down.url, "/v1/pipelines", { headers });
  t.equal(served.status, 200, "the backends that are up still answer");
});

t.test("/docs/<a name every JavaScript object has> - 404 with a google.rpc.Status body, never a 500 or an object's member", async (t) => {
  for (const name of ["constructor", "toString", "__proto__", "hasOwnProperty", "valueOf", "__defineGetter__"]) {
    expectStatus(t, await call(url, `/docs/${name}`), 404, Code.NotFound, `/docs/${name}`);
  }
  expectStatus(t, await call(url, "/docs/no-such-asset.js"), 404, Code.NotFound, "an unknown asset");
  const asset = await call(url, "/docs/swagger-ui.css");
  t.equal(asset.status, 200, "a real asset is still served");
  t.match(asset.headers.get("content-type"), /^text\/css/);
});

/** The series of gateway_requests in /metrics, and the method labels they carry. */
async function requestSeries(): Promise<{ count: number; methods: Set<string> }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const lines = text.split("\n").filter((line) => /^gateway_requests(_total)?\{/.test(line));
  return { count: lines.length, methods: new Set(lines.map((line) => /[{,]method="([^"]*)"/.exec(line)?.[1] ?? "")) };
}

t.test("HTTP method tokens - an unknown token is a 404/405 Status on every kind of path, and /metrics grows no series per token", async (t) => {
  // Paths where a route exists (a 405 there names what is allowed), and one where none does.
  const paths = {
    "a REST route": { path: "/v1/pipelines", routed: true },
    "an unknown path": { path: "/v1/nowhere", routed: false },
    "an operator endpoint": { path: "/healthz", routed: true },
    "/docs": { path: "/docs", routed: true },
    "a pass-through procedure": { path: "/jobmesh.v1.PipelineService/GetPipeline", routed: true },
  };
  for (const [what, { path, routed }] of Object.entries(paths)) {
    const answer = await call(url, path, { method: "XYZZY", headers: admin });
    // 404 or 405 are both honest for a method no route takes; the code must be the one of the status answered.
    t.ok(answer.status === 404 || answer.status === 405, `${what}: XYZZY answers 404/405 (${shown(answer)})`);
    expectStatus(t, answer, answer.status, answer.status === 404 ? Code.NotFound : Code.Unimplemented, `${what}: XYZZY`);
    if (answer.status === 405) t.ok(answer.headers.get("allow"), `${what}: a 405 names what is allowed`);
    if (!routed) t.equal(answer.status, 404, `${what}: no route at all is 404`);
  }

  // Once a first batch of tokens has made whatever series they share, more fresh tokens add none.
  const tokens = (prefix: string) => Array.from({ length: 12 }, (_, i) => `${prefix}${i}X${Math.random().toString(36).slice(2, 8).toUpperCase()}`);
  for (const method of tokens("FIRST")) await call(url, "/v1/pipelines", { method, headers: admin });
  // A first scrape makes the series of GET /metrics itself.
  await requestSeries();
  const before = await requestSeries();
  for (const method of tokens("MORE")) await call(url, "/v1/pipelines", { method, headers: admin });
  const after = await requestSeries();
  t.equal(after.count, before.count, `12 more method tokens added no gateway_requests series (${before.count} → ${after.count})`);
  const allowed = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"]);
  t.same([...after.methods].filter((m) => !allowed.has(m)), [], `every method label is one of ${[...allowed].join(" ")} (${[...after.methods].join(", ")})`);
});

t.test("refused credentials - one client address sending garbage tokens is rate-limited after the address burst: 429 with Retry-After", async (t) => {
  const from = (address: string, token = `garbage.${Math.random().toString(36).slice(2)}.token`) => ({ authorization: `Bearer ${token}`, "x-forwarded-for": address });
  const address = "203.0.113.77";
  for (let i = 0; i < addressBurst; i++) {
    expectStatus(t, await call(url, "/v1/pipelines", { headers: from(address) }), 401, Code.Unauthenticated, `refusal ${i + 1} of ${addressBurst}`);
  }
  // Rounds of concurrent calls: on a loaded machine, calls one after another could be slower than the refill (1/s).
  let limited: Answer | undefined;
  for (let round = 0; round < 3 && !limited; round++) {
    const answers = await Promise.all(Array.from({ length: 6 }, () => call(url, "/v1/pipelines", { headers: from(address) })));
    limited = answers.find((a) => a.status === 429);
    for (const a of answers.filter((a) => a.status !== 429)) t.equal(a.status, 401, `a call not limited is refused as before (${shown(a)})`);
  }
  if (!limited) return t.fail(`garbage tokens from ${address} were never refused with 429 (burst ${addressBurst}, 1/s)`);
  expectStatus(t, limited, 429, Code.ResourceExhausted, "past the burst");
  const retryAfter = limited.headers.get("retry-after");
  t.match(retryAfter, /^\d+$/, `Retry-After is whole seconds: ${retryAfter}`);
  t.ok(Number(retryAfter) >= 1, "and at least one");

  expectStatus(t, await call(url, "/v1/pipelines", { headers: from("203.0.113.78") }), 401, Code.Unauthenticated, "another address is refused, not limited");
});

t.test("pass-through body limit - a Connect body over JOBMESH_GATEWAY_MAX_BODY_BYTES is refused (413, or Connect resource_exhausted)", async (t) => {
  const path = "/jobmesh.v1.PipelineService/GetPipeline";
  const small = await call(url, path, { method: "POST", headers: { ...admin, ...json }, body: JSON.stringify({ name: "pipelines/document-default" }) });
  t.equal(small.status, 200, `a body under the limit passes through (${shown(small)})`);

  const big = JSON.stringify({ name: `pipelines/${"a".repeat(4 * maxBodyBytes)}` });
  const refusedOf = (answer: Answer, what: string) => {
    const code = (answer.body as { code?: unknown } | null)?.code;
    const ok = (answer.status === 413 && code === Code.ResourceExhausted) || code === "resource_exhausted";
    t.ok(ok, `${what}: refused as too large (${shown(answer)})`);
    t.not(answer.status, 500, `${what}: not a 500`);
  };
  refusedOf(await call(url, path, { method: "POST", headers: { ...admin, ...json }, body: big }), "with Content-Length");

  // The same body with no Content-Length (chunked): the gateway must count what arrives.
  const bytes = new TextEncoder().encode(big);
  const chunked = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let at = 0; at < bytes.byteLength; at += 1024) controller.enqueue(bytes.subarray(at, at + 1024));
      controller.close();
    },
  });
  refusedOf(await call(url, path, { method: "POST", headers: { ...admin, ...json }, body: chunked, duplex: "half" }), "chunked");
});

/** An SSE watch of `job`, open until `close()`; `opened` resolves with its status once its first event (or an error answer) arrived. */
function openWatch(job: string, headers: Record<string, string>): { opened: Promise<Answer>; close(): void } {
  const abort = new AbortController();
  const opened = (async (): Promise<Answer> => {
    const res = await fetch(`${url}/v1/${job}:watch`, { headers: { ...headers, accept: "text/event-stream" }, signal: abort.signal });
    if (res.status !== 200 || !res.body) {
      const text = await res.text();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        // left as text
      }
      return { status: res.status, headers: res.headers, text, body };
    }
    // Open: read until the first event has arrived, then leave the stream open (not read further).
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!/^data:.*\n\n/m.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the watch of ${job} ended: ${text}`);
      text += value;
    }
    reader.releaseLock();
    return { status: res.status, headers: res.headers, text, body: undefined };
  })();
  // Aborting the fetch of an open watch rejects what is still read; that is the point of closing.
  opened.catch(() => {});
  return { opened, close: () => abort.abort() };
}

t.test("open streams per credential - a third concurrent SSE watch by one credential is 429; closing one frees a slot", async (t) => {
  // No worker: the job stays queued, so every watch of it stays open until closed.
  await Promise.all(mesh.workers.map((w) => w.stop(1000)));
  mesh.workers.length = 0;
  const created = await call(url, "/v1/jobs", { method: "POST", headers: { ...admin, ...json }, body: JSON.stringify({ document: { text: "watched, never worked" } }) });
  t.equal(created.status, 200, `a job to watch (${shown(created)})`);
  const job = (created.body as { job: { name: string } }).job.name;

  const watches = Array.from({ length: maxStreams }, () => openWatch(job, admin));
  t.teardown(() => watches.forEach((w) => w.close()));
  for (const [i, watch] of watches.entries()) t.equal((await watch.opened).status, 200, `watch ${i + 1} of ${maxStreams} is open`);

  const third = openWatch(job, admin);
  watches.push(third);
  const refused = await third.opened;
  expectStatus(t, refused, 429, Code.ResourceExhausted, `watch ${maxStreams + 1}`);

  const viewer = openWatch(job, await mesh.auth!.headersFor("viewer"));
  watches.push(viewer);
  t.equal((await viewer.opened).status, 200, "another credential's watch is open: the cap is per credential");

  watches[0]!.close();
  let last: Answer | undefined;
  const freed = await eventually(async () => {
    const retry = openWatch(job, admin);
    watches.push(retry);
    last = await retry.opened;
    if (last.status !== 200) retry.close();
    return last.status === 200;
  }, 15_000);
  t.ok(freed, `once one watch is closed, a new one by the same credential opens (last answer ${last ? shown(last) : "none"})`);
});
