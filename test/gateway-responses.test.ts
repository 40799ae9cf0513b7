/**
 * Every answer a REST client gets on the walkthrough's path (pipelines, jobs, results, identity,
 * users, keys, and the errors on the way) checked with ajv against the schema the gateway's own
 * `/openapi.json` promises for that operation and status: the document is only worth publishing
 * if what is served matches it.
 */
import t, { type Test } from "tap";
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";
import { startGatewayMesh } from "./support/gateway.ts";

t.setTimeout(240_000);
const gateway = await startGatewayMesh(t, { jobs: true });
const auth = gateway.mesh.auth!;

interface Operation {
  operationId?: string;
  responses?: Record<string, { content?: Record<string, { schema?: unknown }> }>;
}
type OpenApi = { paths: Record<string, Record<string, Operation>>; components?: { schemas?: Record<string, unknown> } };

const documentUrl = `${gateway.url}/openapi.json`;
const document = (await (await fetch(documentUrl)).json()) as OpenApi;

/** JSON pointer escaping (RFC 6901). */
const pointer = (...tokens: string[]) => tokens.map((s) => "/" + s.replaceAll("~", "~0").replaceAll("/", "~1")).join("");

/**
 * Formats the document uses, checked as proto3 JSON writes them: int64 as a decimal string,
 * int32 and double as JSON numbers, timestamps as RFC 3339. Each applies to one JSON type (ajv
 * ignores a format on a value of another type).
 */
const formats: Record<string, { type: "string"; validate: (v: string) => boolean } | { type: "number"; validate: (v: number) => boolean }> = {
  // RFC 3339 as proto3 JSON writes a Timestamp: 0, 3, 6 or 9 fractional digits, Z or an offset.
  "date-time": { type: "string", validate: (v) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/.test(v) && !Number.isNaN(Date.parse(v)) },
  int64: { type: "string", validate: (v) => /^-?\d+$/.test(v) && BigInt(v) >= -(2n ** 63n) && BigInt(v) < 2n ** 63n },
  uint64: { type: "string", validate: (v) => /^\d+$/.test(v) && BigInt(v) < 2n ** 64n },
  int32: { type: "number", validate: (v) => Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31 },
  uint32: { type: "number", validate: (v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32 },
  double: { type: "number", validate: (v) => Number.isFinite(v) },
  float: { type: "number", validate: (v) => Number.isFinite(v) },
  byte: { type: "string", validate: (v) => /^[A-Za-z0-9+/_-]*={0,2}$/.test(v) },
  duration: { type: "string", validate: (v) => /^-?\d+(\.\d{1,9})?s$/.test(v) },
  uuid: { type: "string", validate: (v) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(v) },
  uri: { type: "string", validate: (v) => URL.canParse(v) },
  email: { type: "string", validate: (v) => /^[^@\s]+@[^@\s]+$/.test(v) },
};

const ajv = new Ajv2020({ strict: false, allErrors: true });
const usedFormats = new Set<string>();
JSON.stringify(document, (key, value: unknown) => {
  if (key === "format" && typeof value === "string") usedFormats.add(value);
  return value;
});
for (const format of usedFormats) {
  // A format this file does not know (e.g. "binary", only on raw bodies) is accepted, and said so below.
  ajv.addFormat(format, formats[format] ?? true);
}
t.comment(`formats in the document: ${[...usedFormats].join(", ")}; not checked: ${[...usedFormats].filter((f) => !formats[f]).join(", ") || "none"}`);
// The whole document under its URL: `#/components/schemas/X` refs resolve against it, and any
// response schema is reached by its JSON pointer.
ajv.addSchema(document, documentUrl);

/** The operation whose operationId names the RPC (`GetJob`, `JobService_GetJob`, `jobmesh.v1.JobService.GetJob`...). */
function operationOf(rpc: string): { path: string; verb: string; operation: Operation } {
  const found: { path: string; verb: string; operation: Operation }[] = [];
  for (const [path, item] of Object.entries(document.paths)) {
    for (const [verb, operation] of Object.entries(item)) {
      const id = (operation as Operation | undefined)?.operationId;
      if (typeof id === "string" && new RegExp(`(^|[._/])${rpc}$`).test(id)) found.push({ path, verb, operation });
    }
  }
  if (found.length !== 1) throw new Error(`${found.length} operations of ${rpc} in /openapi.json: ${found.map((f) => f.operation.operationId).join(", ")}`);
  return found[0];
}

/**
 * The validator of the JSON body the document gives `rpc` for `status` (its own entry, else
 * `default`), following a `$ref` to a shared response in components.responses.
 */
function validatorOf(rpc: string, status: number): ValidateFunction {
  const { path, verb, operation } = operationOf(rpc);
  const entry = operation.responses?.[String(status)] ? String(status) : "default";
  const response = operation.responses?.[entry] as { $ref?: string; content?: Record<string, { schema?: unknown }> } | undefined;
  if (!response) throw new Error(`${rpc}: /openapi.json documents no ${status} answer (${JSON.stringify(Object.keys(operation.responses ?? {}))})`);
  let at = pointer("paths", path, verb, "responses", entry);
  let content = response.content;
  if (response.$ref) {
    if (!response.$ref.startsWith("#/")) throw new Error(`${rpc} ${status}: a $ref outside the document: ${response.$ref}`);
    at = response.$ref.slice(1);
    const target = at.split("/").slice(1).reduce<unknown>((node, token) => (node as Record<string, unknown> | undefined)?.[token.replaceAll("~1", "/").replaceAll("~0", "~")], document);
    content = (target as { content?: Record<string, { schema?: unknown }> } | undefined)?.content;
  }
  if (!content?.["application/json"]?.schema) throw new Error(`${rpc}: no application/json schema for ${status}`);
  const validate = ajv.getSchema(`${documentUrl}#${at}${pointer("content", "application/json", "schema")}`);
  if (!validate) throw new Error(`${rpc}: ajv cannot reach its ${entry} schema`);
  return validate;
}

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
  t.ok(validate(answer.body), `${rpc} ${answer.status}: the body matches its schema in /openapi.json${validate.errors ? ": " + ajv.errorsText(validate.errors) : ""}`);
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
