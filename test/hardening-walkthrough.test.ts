/**
 * Issue 10's hostile documents and key chain, as a new user meets them: every call through
 * `buf curl` (a reflection-driven CLI like grpcurl: no proto files) over native gRPC, against the
 * real services. The stage-level and identity-level details are tested in
 * test/stages-hostile.test.ts, test/worker-stage-isolation.test.ts and test/auth-key-chains.test.ts;
 * this file checks that what a user sees matches them.
 */
import t from "tap";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { docxEntries, makeFlatePdf, makeZip } from "./stages-fixtures.ts";
import { startTestMesh } from "./support/mesh.ts";

const buf = join(import.meta.dirname, "../node_modules/.bin/buf");
// A small inflate limit, so the bombs below stay small in this process too.
const inflateLimit = 1024 * 1024;
// Four large documents and a few dozen CLI calls on a loaded 2-core machine: a hang guard, not a target.
t.setTimeout(300_000);
const mesh = await startTestMesh({ JOBMESH_MAX_INFLATED_BYTES: String(inflateLimit) }, { jobs: true, auth: true, workers: 1 });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const bodyDir = await mkdtemp(join(tmpdir(), "jobmesh-walkthrough-"));
t.teardown(() => rm(bodyDir, { recursive: true, force: true }));
const admin = await auth.headersFor("admin");

type Headers = Record<string, string>;
type Message = Record<string, unknown>;
/** What buf curl printed: the response messages, or the gRPC error's code name. */
type Reply = { ok: true; messages: Message[] } | { ok: false; code: string; message: string };

/** One call, as a user types it: `buf curl --protocol grpc -H ... -d '<json>' <url>/<service>/<method>`. */
async function curl(baseUrl: string, service: string, method: string, body: unknown, headers: Headers): Promise<Reply> {
  // Large documents do not fit in an argument: the body goes in a file, as `-d @file`.
  const bodyFile = join(bodyDir, `${randomUUID()}.json`);
  await writeFile(bodyFile, JSON.stringify(body));
  const args = ["curl", "--http2-prior-knowledge", "--protocol", "grpc", "-d", `@${bodyFile}`];
  for (const [name, value] of Object.entries(headers)) args.push("-H", `${name}: ${value}`);
  args.push(`${baseUrl}/jobmesh.v1.${service}/${method}`);
  try {
    const { stdout } = await promisify(execFile)(buf, args, { encoding: "utf8", timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
    const text = stdout.trim();
    return { ok: true, messages: text ? text.split(/\n(?=\{)/).map((m) => JSON.parse(m) as Message) : [] };
  } catch (error) {
    // buf curl prints the status as JSON on stderr and exits non-zero.
    const stderr = String((error as { stderr?: string }).stderr ?? "");
    const status = /\{[\s\S]*\}/.exec(stderr);
    if (!status) throw error;
    const parsed = JSON.parse(status[0]) as { code: string; message?: string };
    return { ok: false, code: parsed.code, message: parsed.message ?? "" };
  } finally {
    await rm(bodyFile, { force: true });
  }
}

const jobs = (method: string, body: unknown, headers: Headers = admin) => curl(mesh.jobs!.url, "JobService", method, body, headers);
const authCall = (method: string, body: unknown, headers: Headers = admin) => curl(auth.server.url, "AuthService", method, body, headers);
const pipelines = (method: string, body: unknown, headers: Headers = admin) => curl(mesh.pipelines.url, "PipelineService", method, body, headers);

function messages(reply: Reply, what: string): Message[] {
  if (!reply.ok) throw new Error(`${what}: ${reply.code} ${reply.message}`);
  return reply.messages;
}

t.test("hostile documents - each ends within its stage timeout, and a neighbour's job still succeeds", async (t) => {
  // The README's invoices pipeline (PII detection and redaction on), with one attempt, so a stage
  // that ran away would end the job TIMED_OUT at the default 60 s timeout, not hang the test.
  const stage = (name: string, options?: unknown) => ({ stage: `STAGE_${name}`, timeout: "60s", retry: { maxAttempts: 1 }, ...(options ? { options } : {}) });
  messages(await pipelines("CreatePipeline", {
    pipeline_id: "hostile",
    pipeline: { config: { stages: [stage("INGEST"), stage("DETECT"), stage("PARSE"), stage("ENRICH", { enrich: { detect_pii: true, redact_pii: true } }), stage("OUTPUT")] } },
  }), "CreatePipeline");

  const documents: { what: string; document: Message; outcome: "JOB_STATE_SUCCEEDED" | "JOB_STATE_FAILED"; code?: string }[] = [
    // O(n²) overlap filter before: ran for minutes.
    { what: "550,000 e-mail addresses", document: { text: "a@b.cc ".repeat(550_000) }, outcome: "JOB_STATE_SUCCEEDED" },
    // An <a> left open under <b>: every later text was appended to every open link.
    { what: "HTML with 50,000 unclosed links", document: { content: Buffer.from("<html>" + "<a href=x><b>".repeat(5e4) + "y<i>".repeat(2e4)).toString("base64"), filename: "links.html" }, outcome: "JOB_STATE_SUCCEEDED" },
    { what: "a DOCX whose XML inflates past the limit", document: { content: makeZip(docxEntries(Buffer.alloc(4 * inflateLimit, "a"), 1000)).toString("base64"), filename: "bomb.docx" }, outcome: "JOB_STATE_FAILED", code: "DOCUMENT_TOO_LARGE" },
    { what: "a PDF whose Flate stream inflates past the limit", document: { content: makeFlatePdf(Buffer.alloc(4 * inflateLimit)).toString("base64"), filename: "bomb.pdf" }, outcome: "JOB_STATE_FAILED", code: "DOCUMENT_TOO_LARGE" },
  ];
  const created = await Promise.all(documents.map(async (d) => {
    const [reply] = messages(await jobs("CreateJob", { job: { pipeline: "pipelines/hostile", document: d.document } }), `CreateJob ${d.what}`);
    return (reply.job as { name: string }).name;
  }));
  // Another tenant's user, at the same moment, on the same worker.
  const neighbour = await auth.headersFor("operator", "walkthrough-neighbour");
  // A new tenant starts without pipelines: the neighbour makes its own, as a user would.
  const allStages = ["INGEST", "DETECT", "PARSE", "ENRICH", "OUTPUT"].map((s) => ({ stage: `STAGE_${s}` }));
  messages(await pipelines("CreatePipeline", { pipeline_id: "notes", pipeline: { config: { stages: allStages } } }, neighbour), "neighbour's CreatePipeline");
  const [neighbourReply] = messages(await jobs("CreateJob", { job: { pipeline: "pipelines/notes", document: { text: "A short note from another tenant. ".repeat(60) } } }, neighbour), "neighbour's CreateJob");
  const neighbourJob = (neighbourReply.job as { name: string }).name;

  // WatchJob ends when the job does: that is how a user waits.
  const ended = await Promise.all([...created.map((name) => ({ name, headers: admin })), { name: neighbourJob, headers: neighbour }].map(async ({ name, headers }) => {
    messages(await jobs("WatchJob", { name }, headers), `WatchJob ${name}`);
    const [{ job }] = messages(await jobs("GetJob", { name }, headers), `GetJob ${name}`);
    return job as { state: string; error?: { code?: string; message?: string } };
  }));
  documents.forEach((d, i) => {
    t.equal(ended[i].state, d.outcome, `${d.what}: ${d.outcome}`);
    if (d.code) t.equal(ended[i].error?.code, d.code, `${d.what}: the error says why (${ended[i].error?.message})`);
  });
  t.equal(ended.at(-1)!.state, "JOB_STATE_SUCCEEDED", "the other tenant's job succeeded meanwhile");
  const { rows } = await mesh.infra.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM stage_attempts WHERE outcome = $1`, [StageAttemptOutcome.ABANDONED]);
  t.equal(rows[0].n, 0, "no attempt was abandoned: the worker kept heartbeating through all of it");
});

t.test("key chains - a key made by a key dies with its root user's role and with any key above it", async (t) => {
  const email = `walkthrough-${Date.now()}@example.com`;
  const password = "a-long-passphrase-for-u";
  const [{ user }] = messages(await authCall("CreateUser", { user: { email, roles: ["ROLE_ADMIN"] }, password }), "CreateUser");
  const userName = (user as { name: string }).name;
  const [login] = messages(await authCall("Login", { email, password }, {}), "Login");
  let maker: Headers = { authorization: `Bearer ${login.accessToken as string}` };
  const keys: { name: string; secret: string }[] = [];
  for (const label of ["K1", "K2", "K3"]) {
    const [reply] = messages(await authCall("CreateApiKey", { api_key: { display_name: label, roles: ["ROLE_ADMIN"] } }, maker), `CreateApiKey ${label}`);
    keys.push({ name: (reply.apiKey as { name: string }).name, secret: reply.secret as string });
    maker = { "x-api-key": reply.secret as string };
  }
  const k3: Headers = { "x-api-key": keys[2].secret };
  const write = async (headers: Headers) => {
    const reply = await pipelines("CreatePipeline", { pipeline_id: `w-${Math.random().toString(16).slice(2, 10)}`, pipeline: { config: { stages: [{ stage: "STAGE_INGEST" }, { stage: "STAGE_OUTPUT" }] } } }, headers);
    return reply.ok ? "ok" : reply.code;
  };
  const read = async (headers: Headers) => {
    const reply = await jobs("ListJobs", {}, headers);
    return reply.ok ? "ok" : reply.code;
  };
  t.equal(await write(k3), "ok", "K3 (made with K2, made with K1, made by U) writes");

  // Demote U: K3 acts for U, so it may read but not write. The checks promise about a second.
  const [{ user: current }] = messages(await authCall("GetUser", { name: userName }), "GetUser");
  messages(await authCall("UpdateUser", { user: { name: userName, etag: (current as { etag: string }).etag, roles: ["ROLE_VIEWER"] }, update_mask: "roles" }), "UpdateUser");
  await new Promise((r) => setTimeout(r, 1_500));
  t.equal(await read(k3), "ok", "K3 still reads after U became a viewer");
  t.equal(await write(k3), "permission_denied", "K3 no longer writes");

  // Revoke K1: K2 and K3 go with it.
  messages(await authCall("RevokeApiKey", { name: keys[0].name }), "RevokeApiKey K1");
  await new Promise((r) => setTimeout(r, 1_500));
  for (const [label, key] of [["K2", keys[1]], ["K3", keys[2]]] as const) {
    t.equal(await read({ "x-api-key": key.secret }), "unauthenticated", `${label} is refused once K1 is revoked`);
    const exchanged = await authCall("ExchangeApiKey", { secret: key.secret }, {});
    t.equal(exchanged.ok ? "ok" : exchanged.code, "unauthenticated", `${label} cannot be exchanged for a token either`);
  }
});
