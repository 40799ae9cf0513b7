/**
 * Every answer a REST client gets on the walkthrough's path (pipelines, jobs, results, identity,
 * users, keys, and the errors on the way) checked with ajv against the schema the gateway's own
 * `/openapi.json` promises for that operation and status: the document is only worth publishing
 * if what is served matches it.
 */
import t, { type Test } from "tap";
import type { ValidateFunction } from "ajv/dist/2020.js";
import { startGatewayMesh } from "./support/gateway.ts";
import { loadOpenApiSchemas } from "./support/openapi-schemas.ts";

t.setTimeout(240_000);
const gateway = await startGatewayMesh(t, { jobs: true });
const auth = gateway.mesh.auth!;

const schemas = await loadOpenApiSchemas(`${gateway.url}/openapi.json`);
t.comment(`formats in the document: ${schemas.formats.used.join(", ")}; not checked: ${schemas.formats.unchecked.join(", ") || "none"}`);

/** The validator of the JSON body the document gives `rpc` (its one operation) for `status`. */
const validatorOf = (rpc: string, status: number): ValidateFunction => schemas.validatorOf(schemas.operationOf(rpc), status);

interface Answer {
  status: number;
  contentType: string;
  body: unknown;
}

async function call(method: string, path: string, options: { headers?: Record<string, string>; body?: unknown } = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${gateway.url}${path}`, { method, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // left as text: the check below names it
  }
  return { status: response.status, contentType: response.headers.get("content-type") ?? "", body };
}

/** Asserts the answer has the expected status, a JSON body, and that the body matches its schema. */
function checkAgainstSchema(t: Test, rpc: string, answer: Answer, status: number): void {
  t.equal(answer.status, status, `${rpc} answers ${status} (${JSON.stringify(answer.body).slice(0, 300)})`);
  t.match(answer.contentType, /^application\/json/, `${rpc} ${status}: a JSON body`);
  const validate = validatorOf(rpc, answer.status);
  t.ok(validate(answer.body), `${rpc} ${answer.status}: the body matches its schema in /openapi.json${validate.errors ? ": " + schemas.errorsText(validate) : ""}`);
}

const admin = await auth.headersFor("admin");
const viewer = await auth.headersFor("viewer");

t.test("responses - every walkthrough answer matches its schema in /openapi.json", async (t) => {
  const stages = ["INGEST", "DETECT", "PARSE", "ENRICH", "OUTPUT"].map((s) => ({ stage: `STAGE_${s}` }));
  checkAgainstSchema(t, "CreatePipeline", await call("POST", "/v1/pipelines?pipelineId=responses", { headers: admin, body: { displayName: "Responses", config: { stages } } }), 200);
  checkAgainstSchema(t, "GetPipeline", await call("GET", "/v1/pipelines/responses", { headers: admin }), 200);
  checkAgainstSchema(t, "ListPipelines", await call("GET", "/v1/pipelines?pageSize=5", { headers: admin }), 200);
  checkAgainstSchema(t, "ListPipelineVersions", await call("GET", "/v1/pipelines/responses/versions", { headers: admin }), 200);

  const created = await call("POST", "/v1/jobs", { headers: admin, body: { pipeline: "pipelines/responses", labels: { team: "docs" }, document: { text: "Schemas keep clients honest. ".repeat(40) } } });
  checkAgainstSchema(t, "CreateJob", created, 200);
  const name = (created.body as { job: { name: string } }).job.name;
  // The result exists once the job has succeeded: poll GetJob (a condition, not a sleep).
  let job: Answer;
  for (const deadline = Date.now() + 120_000; ; ) {
    job = await call("GET", `/v1/${name}`, { headers: admin });
    const state = (job.body as { job?: { state?: string } }).job?.state;
    if (state === "JOB_STATE_SUCCEEDED") break;
    if (state === "JOB_STATE_FAILED" || Date.now() > deadline) throw new Error(`job ${name}: ${JSON.stringify(job.body)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  checkAgainstSchema(t, "GetJob", job, 200);
  checkAgainstSchema(t, "ListJobs", await call("GET", "/v1/jobs?pageSize=10", { headers: admin }), 200);
  checkAgainstSchema(t, "GetJobResult", await call("GET", `/v1/${name}/result`, { headers: admin }), 200);

  checkAgainstSchema(t, "GetCurrentIdentity", await call("GET", "/v1/auth/whoami", { headers: admin }), 200);
  checkAgainstSchema(t, "ListUsers", await call("GET", "/v1/users", { headers: admin }), 200);
  const key = await call("POST", "/v1/apiKeys", { headers: admin, body: { displayName: "responses", roles: ["ROLE_VIEWER"] } });
  checkAgainstSchema(t, "CreateApiKey", key, 200);
  checkAgainstSchema(t, "ListApiKeys", await call("GET", "/v1/apiKeys", { headers: admin }), 200);
  checkAgainstSchema(t, "GetJwks", await call("GET", "/.well-known/jwks.json"), 200);
});

t.test("responses - the errors on the way match the error schema of their operation", async (t) => {
  checkAgainstSchema(t, "GetJob", await call("GET", "/v1/jobs/no-such-job", { headers: admin }), 404);
  checkAgainstSchema(t, "ListJobs", await call("GET", "/v1/jobs"), 401);
  checkAgainstSchema(t, "CreatePipeline", await call("POST", "/v1/pipelines?pipelineId=viewer-write", { headers: viewer, body: { config: { stages: [{ stage: "STAGE_INGEST" }] } } }), 403);
  checkAgainstSchema(t, "CreateJob", await call("POST", "/v1/jobs", { headers: admin, body: { document: { text: "x" }, noSuchField: 1 } }), 400);
  checkAgainstSchema(t, "CreateJob", await call("POST", "/v1/jobs", { headers: admin, body: { pipeline: "Not A Pipeline", document: { text: "x" } } }), 400);
  const again = { headers: admin, body: { config: { stages: [{ stage: "STAGE_INGEST" }, { stage: "STAGE_OUTPUT" }] } } };
  await call("POST", "/v1/pipelines?pipelineId=twice", again);
  checkAgainstSchema(t, "CreatePipeline", await call("POST", "/v1/pipelines?pipelineId=twice", again), 409);
  checkAgainstSchema(t, "Login", await call("POST", "/v1/auth:login", { body: { email: "nobody@example.com", password: "not-the-password", tenant: "no-such-tenant" } }), 401);

  const details = (await call("POST", "/v1/jobs", { headers: admin, body: { pipeline: "Not A Pipeline", document: { text: "x" } } })).body as { code: number; message: string; details?: unknown[] };
  t.equal(details.code, 3, "a validation error is INVALID_ARGUMENT in google.rpc.Status form");
  t.match(details.message, /pipeline/, "its message names the field");
});

t.test("responses - the check is not vacuous: a body that breaks its schema is refused", async (t) => {
  const got = await call("GET", "/v1/jobs?pageSize=1", { headers: admin });
  const job = (got.body as { jobs: Record<string, unknown>[] }).jobs[0];
  t.ok(job, "a job to corrupt");
  const validate = validatorOf("ListJobs", 200);
  t.ok(validate(got.body), "the real answer passes");
  const corrupt = (patch: Record<string, unknown>) => ({ jobs: [{ ...job, ...patch }] });
  t.notOk(validate(corrupt({ createTime: "yesterday" })), "a Timestamp that is not RFC 3339 is refused");
  t.notOk(validate(corrupt({ state: "JOB_STATE_BOGUS" })), "an enum value the proto does not have is refused");
  t.notOk(validate(corrupt({ name: 42 })), "a number where a string belongs is refused");
  t.notOk(validate({ jobs: "not a list" }), "a scalar where a list belongs is refused");
});
