/**
 * The gateway's status codes, each provoked through a real Deno gateway in front of the real
 * mesh: 400 naming the field, 401, 403 (refused at the edge, before the service), 404, 405 with
 * Allow, 409, 413 and 429. Every error body is a google.rpc.Status with the gRPC code behind the
 * HTTP status.
 */
import t, { type Test } from "tap";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { isStatusBody, startGatewayMesh, type StatusBody, fetchAnswer, type GatewayAnswer } from "./support/gateway.ts";

// Two meshes and two Deno processes start here; a loaded machine needs more than the default.
t.setTimeout(300_000);

const maxBodyBytes = 4096;
const maxDocumentBytes = 1024;
const { mesh, url } = await startGatewayMesh(t, {
  jobs: true,
  env: { JOBMESH_GATEWAY_MAX_BODY_BYTES: String(maxBodyBytes), JOBMESH_MAX_DOCUMENT_BYTES: String(maxDocumentBytes) },
});
const auth = mesh.auth!;
const admin = await auth.headersFor("admin");
const viewer = await auth.headersFor("viewer");
const json = { "content-type": "application/json" };

type Answer = GatewayAnswer;

const call = (path: string, init: RequestInit & { duplex?: "half" } = {}): Promise<Answer> => fetchAnswer(`${url}${path}`, init);

/** Asserts the HTTP status and that the body is a Status carrying `code`; returns the body. */
function expectStatus(t: Test, answer: Answer, status: number, code: Code): StatusBody {
  t.equal(answer.status, status, `HTTP ${status}: ${JSON.stringify(answer.body).slice(0, 300)}`);
  if (!isStatusBody(answer.body)) {
    t.fail(`the body is a google.rpc.Status: ${JSON.stringify(answer.body)}`);
    return { code: -1, message: "", details: [] };
  }
  t.equal(answer.body.code, code, `code ${Code[code]} (${code})`);
  t.ok(answer.body.message.length > 0, "with a message");
  return answer.body;
}

/** The field violations of the Status's google.rpc.BadRequest details, if any. */
function fieldViolationsOf(status: StatusBody): { field: string; description: string }[] {
  return status.details
    .filter((d) => d["@type"] === "type.googleapis.com/google.rpc.BadRequest")
    .flatMap((d) => (d.fieldViolations as { field: string; description: string }[] | undefined) ?? []);
}

const pipelineBody = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ config: { stages: [{ stage: "STAGE_INGEST" }, { stage: "STAGE_OUTPUT" }] }, ...extra });

t.test("401 - no credential on a non-public route, and a garbage token", async (t) => {
  expectStatus(t, await call("/v1/pipelines"), 401, Code.Unauthenticated);
  expectStatus(t, await call("/v1/pipelines", { headers: { authorization: "Bearer not-a-jwt" } }), 401, Code.Unauthenticated);
  expectStatus(t, await call("/v1/jobs", { headers: { authorization: "Bearer eyJhbGciOiJFZERTQSJ9.e30.c2ln" } }), 401, Code.Unauthenticated);
  expectStatus(t, await call("/v1/pipelines", { headers: { "x-api-key": "jmk_not-a-real-key-000000000000" } }), 401, Code.Unauthenticated);
});

t.test("public routes need no credential", async (t) => {
  const jwks = await call("/.well-known/jwks.json");
  t.equal(jwks.status, 200);
  t.ok(Array.isArray((jwks.body as { keys?: unknown }).keys), "the JWKS has keys");
});

/** Calls of `method` the pipelines server has counted (its telemetry interceptor is outermost: refused calls count too). */
async function callsOf(method: string): Promise<number> {
  const text = await (await fetch(`${mesh.pipelines.url}/metrics`)).text();
  return text
    .split("\n")
    .filter((line) => line.startsWith("rpc_server_calls") && line.includes(`rpc_method="${method}"`))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0);
}

t.test("403 - a viewer's write is refused at the edge, naming the permission, without reaching the service", async (t) => {
  const before = await callsOf("CreatePipeline");
  const answer = await call("/v1/pipelines?pipelineId=viewer-made", { method: "POST", headers: { ...viewer, ...json }, body: pipelineBody() });
  const status = expectStatus(t, answer, 403, Code.PermissionDenied);
  t.match(status.message, /pipelines\.create/, "the refusal names the permission");
  t.equal(await callsOf("CreatePipeline"), before, "the pipelines service saw no CreatePipeline call");

  // The counter does count refusals at the service: the same write sent straight to the service is one more.
  const direct = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));
  const code = await direct
    .createPipeline({ pipelineId: "viewer-direct", pipeline: {} }, { headers: viewer })
    .then(() => "ok", (e: unknown) => ConnectError.from(e).code);
  t.equal(code, Code.PermissionDenied, "the service refuses it too");
  t.equal(await callsOf("CreatePipeline"), before + 1, "and counted it: the edge refusal above would have shown");
});

t.test("403 - a viewer's read passes", async (t) => {
  const answer = await call("/v1/pipelines/document-default", { headers: viewer });
  t.equal(answer.status, 200);
  t.equal((answer.body as { pipeline?: { name?: string } }).pipeline?.name, "pipelines/document-default");
  t.equal((await call("/v1/pipelines", { headers: viewer })).status, 200);
});

t.test("404 - an unknown path, and a job that does not exist", async (t) => {
  expectStatus(t, await call("/v1/nothing-here", { headers: admin }), 404, Code.NotFound);
  expectStatus(t, await call("/nope", { headers: admin }), 404, Code.NotFound);
  const missing = expectStatus(t, await call("/v1/jobs/does-not-exist", { headers: admin }), 404, Code.NotFound);
  t.notMatch(missing.message, /route|path/i, "a missing job is the service's NOT_FOUND, not a missing route");
});

t.test("405 - a wrong verb on a known path lists the right ones in Allow", async (t) => {
  const collection = await call("/v1/pipelines", { method: "DELETE", headers: admin });
  expectStatus(t, collection, 405, Code.Unimplemented);
  const allow = (collection.headers.get("allow") ?? "").split(",").map((v) => v.trim());
  t.ok(allow.includes("GET") && allow.includes("POST"), `Allow names GET and POST: ${allow.join(", ")}`);
  t.notOk(allow.includes("DELETE"), "and not DELETE");

  const item = await call("/v1/pipelines/document-default", { method: "POST", headers: { ...admin, ...json }, body: "{}" });
  expectStatus(t, item, 405, Code.Unimplemented);
  const itemAllow = (item.headers.get("allow") ?? "").split(",").map((v) => v.trim());
  for (const verb of ["GET", "PATCH", "DELETE"]) t.ok(itemAllow.includes(verb), `Allow names ${verb}: ${itemAllow.join(", ")}`);
});

t.test("409 - creating the same pipeline twice, and an update with a stale etag", async (t) => {
  const create = () => call("/v1/pipelines?pipelineId=twice", { method: "POST", headers: { ...admin, ...json }, body: pipelineBody() });
  const first = await create();
  t.equal(first.status, 200, "the first create succeeds");
  expectStatus(t, await create(), 409, Code.AlreadyExists);

  const staleEtag = (first.body as { pipeline: { etag: string } }).pipeline.etag;
  const update = (displayName: string) =>
    call("/v1/pipelines/twice?updateMask=displayName", { method: "PATCH", headers: { ...admin, ...json }, body: JSON.stringify({ etag: staleEtag, displayName }) });
  t.equal((await update("Second")).status, 200, "an update with the current etag succeeds");
  expectStatus(t, await update("Third"), 409, Code.Aborted);
});

t.test("413 - a JSON body over JOBMESH_GATEWAY_MAX_BODY_BYTES", async (t) => {
  const body = pipelineBody({ description: "x".repeat(maxBodyBytes * 2) });
  expectStatus(t, await call("/v1/pipelines?pipelineId=too-big", { method: "POST", headers: { ...admin, ...json }, body }), 413, Code.ResourceExhausted);
  // Without a Content-Length the gateway counts as the body arrives.
  const quarter = Math.ceil(body.length / 4);
  const streamed = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < 4; i++) controller.enqueue(new TextEncoder().encode(body.slice(i * quarter, (i + 1) * quarter)));
      controller.close();
    },
  });
  expectStatus(t, await call("/v1/pipelines?pipelineId=too-big", { method: "POST", headers: { ...admin, ...json }, body: streamed, duplex: "half" }), 413, Code.ResourceExhausted);
  t.equal((await call("/v1/pipelines/too-big", { headers: admin })).status, 404, "nothing was created");
});

t.test("413 - an upload over JOBMESH_MAX_DOCUMENT_BYTES (the services' own limit is larger)", async (t) => {
  const document = "a".repeat(maxDocumentBytes * 2);
  const headers = { ...admin, "content-type": "text/plain" };
  expectStatus(t, await call("/v1/uploads?filename=big.txt", { method: "POST", headers, body: document }), 413, Code.ResourceExhausted);
  const streamed = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < 4; i++) controller.enqueue(new TextEncoder().encode(document.slice(0, maxDocumentBytes / 2)));
      controller.close();
    },
  });
  expectStatus(t, await call("/v1/uploads?filename=big.txt", { method: "POST", headers, body: streamed, duplex: "half" }), 413, Code.ResourceExhausted);
  const small = await call("/v1/uploads?filename=small.txt", { method: "POST", headers, body: "a small document" });
  t.equal(small.status, 200, `a document under the limit is taken: ${JSON.stringify(small.body)}`);
});

t.test("400 - names the field: an unknown JSON field, a wrong type, an unknown query parameter", async (t) => {
  const post = (query: string, body: string) => call(`/v1/pipelines?${query}`, { method: "POST", headers: { ...admin, ...json }, body });
  const cases: { what: string; answer: () => Promise<Answer>; field: string }[] = [
    { what: "an unknown JSON field", answer: () => post("pipelineId=bad-one", pipelineBody({ bogusField: 1 })), field: "bogusField" },
    { what: "a wrong type", answer: () => post("pipelineId=bad-two", pipelineBody({ displayName: 5 })), field: "displayName" },
    { what: "an unknown query parameter", answer: () => call("/v1/pipelines?bogusParam=1", { headers: admin }), field: "bogusParam" },
    { what: "a query parameter of the wrong type", answer: () => call("/v1/pipelines?pageSize=many", { headers: admin }), field: "pageSize" },
  ];
  for (const { what, answer, field } of cases) {
    const status = expectStatus(t, await answer(), 400, Code.InvalidArgument);
    t.match(status.message, field, `${what}: the message names ${field}`);
    const violations = fieldViolationsOf(status);
    t.ok(
      violations.some((v) => v.field.includes(field) || v.field.includes(field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`))),
      `${what}: a google.rpc.BadRequest field violation names ${field}: ${JSON.stringify(status.details)}`,
    );
  }
  expectStatus(t, await post("pipelineId=bad-three", "{not json"), 400, Code.InvalidArgument);
});

t.test("429 - one credential hammering one route, with Retry-After and RateLimit headers", async (t) => {
  // Its own gateway (and mesh): a rate of 1/s per credential would refuse the other tests' calls.
  const limited = await startGatewayMesh(t, { env: { JOBMESH_GATEWAY_RATE_PER_CREDENTIAL: "1", JOBMESH_GATEWAY_BURST_PER_CREDENTIAL: "2" } });
  t.teardown(limited.stop);
  const headers = await limited.mesh.auth!.headersFor("operator");
  // Rounds of concurrent calls: on a loaded machine, calls one after another could be slower than the refill.
  let refused: Response | undefined;
  let allowed = 0;
  for (let round = 0; round < 3 && !refused; round++) {
    const answers = await Promise.all(Array.from({ length: 10 }, () => fetch(`${limited.url}/v1/pipelines`, { headers })));
    for (const res of answers) {
      if (res.status === 429 && !refused) refused = res;
      else {
        if (res.status !== 429) {
          t.equal(res.status, 200, "an allowed call is answered");
          allowed++;
        }
        await res.body?.cancel();
      }
    }
  }
  if (!refused) return t.fail(`30 calls in rounds of 10 were all allowed (burst 2, 1/s)`);
  t.ok(allowed >= 2, `the burst was allowed (${allowed} calls)`);
  const text = await refused.text();
  const answer: Answer = { status: refused.status, headers: refused.headers, text, body: JSON.parse(text) };
  expectStatus(t, answer, 429, Code.ResourceExhausted);
  const retryAfter = answer.headers.get("retry-after");
  t.match(retryAfter, /^\d+$/, `Retry-After is whole seconds: ${retryAfter}`);
  t.ok(Number(retryAfter) >= 1, "and at least one");
  t.ok(answer.headers.get("ratelimit"), `a RateLimit header: ${answer.headers.get("ratelimit")}`);
  t.ok(answer.headers.get("ratelimit-policy"), `a RateLimit-Policy header: ${answer.headers.get("ratelimit-policy")}`);

  // Another credential of the same tenant has its own bucket.
  const other = await fetch(`${limited.url}/v1/pipelines`, { headers: await limited.mesh.auth!.headersFor("viewer") });
  t.equal(other.status, 200, "another credential is not limited by the first one's bucket");
  await other.body?.cancel();
});
