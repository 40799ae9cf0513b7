/**
 * Issue 12's "done when", through the real Deno gateway and the real curl binary: an admin fails
 * to log in twice, logs in, creates and updates a pipeline; then lists the failed logins and
 * every pipeline change with who made it, exports them as NDJSON, and both VerifyAuditChain and
 * `jobmesh audit verify <file>` (which needs nothing but the file) say the log is intact. Then,
 * as the Postgres superuser, one stored row is edited behind the triggers' back: both report
 * exactly that sequence.
 */
import t from "tap";
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { startGatewayMesh } from "./support/gateway.ts";

// A Deno gateway, the audit store and a dozen curl and node processes on a loaded machine: a hang guard.
t.setTimeout(300_000);
const run = promisify(execFile);
const gateway = await startGatewayMesh(t, { audit: true });
const { mesh } = gateway;
const admin = await mesh.auth!.userFor("admin");
const dir = await mkdtemp(join(tmpdir(), "jobmesh-audit-walkthrough-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

interface Reply {
  status: number;
  body: unknown;
}

/** `curl -sS [-X method] [-H ...] [-d json] <gateway><path>` as a user types it: the status and the parsed body. */
async function curl(path: string, options: { method?: string; token?: string; body?: unknown; accept?: string; output?: string } = {}): Promise<Reply> {
  const output = options.output ?? join(dir, `${randomUUID()}.body`);
  const args = ["-sS", "--max-time", "60", "-o", output, "-w", "%{http_code}"];
  if (options.method) args.push("-X", options.method);
  if (options.token) args.push("-H", `authorization: Bearer ${options.token}`);
  if (options.accept) args.push("-H", `accept: ${options.accept}`);
  if (options.body !== undefined) args.push("-H", "content-type: application/json", "-d", JSON.stringify(options.body));
  const { stdout } = await run("curl", [...args, `${gateway.url}${path}`]);
  const text = await readFile(output, "utf8");
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // NDJSON or text: the caller reads it.
  }
  return { status: Number(stdout), body };
}

/** Polls `probe` until it returns a value: the store writes events in batches after the calls answered. */
async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 90_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

interface EventJson {
  name: string;
  sequence: string;
  tenant: string;
  action: string;
  resource: string;
  actor?: { subject?: string; credentialHint?: string; roles?: string[] };
  outcome?: { code?: number };
}

const withToken = { token: "" };
/** GET /v1/auditEvents?filter=... through the gateway, once at least `count` events match. */
const listed = (filter: string, count: number) =>
  eventually(`${count} event(s) of ${filter}`, async () => {
    const reply = await curl(`/v1/auditEvents?pageSize=1000&filter=${encodeURIComponent(filter)}`, withToken);
    if (reply.status !== 200) throw new Error(`list answered ${reply.status}: ${JSON.stringify(reply.body)}`);
    const events = ((reply.body as { auditEvents?: EventJson[] }).auditEvents ?? []);
    return events.length >= count ? events : undefined;
  });

/** `jobmesh audit verify <file>`: its exit code and what it printed. */
async function verifyOffline(file: string, ...options: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [join(import.meta.dirname, "../cmd/jobmesh/main.ts"), "audit", "verify", file, ...options]);
    return { code: 0, output: stdout + stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout?: string; stderr?: string };
    return { code: failed.code ?? -1, output: `${failed.stdout ?? ""}${failed.stderr ?? ""}` };
  }
}

/** GET /v1/auditEvents:export as NDJSON into a file, as a customer would keep it. */
async function exportTo(file: string): Promise<Record<string, unknown>[]> {
  const reply = await curl("/v1/auditEvents:export", { ...withToken, accept: "application/x-ndjson", output: file });
  if (reply.status !== 200) throw new Error(`export answered ${reply.status}: ${String(reply.body)}`);
  return (await readFile(file, "utf8")).split("\n").filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>);
}

const pipelineId = `audited-${randomBytes(4).toString("hex")}`;
const startedAt = new Date(Date.now() - 60_000);
let updateSequence = "";
/** The deployment's checkpoint key, as an admin reads it from ListAuditCheckpoints: pinned offline. */
let keyId = "";

t.test("the admin's morning: two failed logins, a login, a pipeline created and updated", async (t) => {
  for (let i = 0; i < 2; i++) {
    const refused = await curl("/v1/auth:login", { body: { email: admin.email, password: `not-the-password-${i}`, tenant: admin.tenant } });
    t.equal(refused.status, 401, `failed login ${i + 1}`);
  }
  const login = await curl("/v1/auth:login", { body: { email: admin.email, password: admin.password, tenant: admin.tenant } });
  t.equal(login.status, 200);
  withToken.token = (login.body as { accessToken: string }).accessToken;
  const created = await curl(`/v1/pipelines?pipelineId=${pipelineId}`, { ...withToken, body: { displayName: "Audited", config: { stages: [{ stage: "STAGE_INGEST" }, { stage: "STAGE_OUTPUT" }] } } });
  t.equal(created.status, 200, JSON.stringify(created.body));
  const { etag } = created.body as { etag: string };
  const updated = await curl(`/v1/pipelines/${pipelineId}?updateMask=displayName`, { ...withToken, method: "PATCH", body: { etag, displayName: "Audited, renamed" } });
  t.equal(updated.status, 200, JSON.stringify(updated.body));
});

t.test("the failed logins since yesterday, and every pipeline change with who made it", async (t) => {
  const since = new Date(Date.now() - 86_400_000).toISOString();
  const failed = await listed(`action = "jobmesh.v1.AuthService.Login" AND code != 0 AND event_time >= "${since}"`, 2);
  const mine = failed.filter((e) => e.actor?.credentialHint === `email:${admin.email}`);
  t.equal(mine.length, 2, "both failed logins, named by the email they tried");
  t.ok(mine.every((e) => e.outcome?.code === 16 && e.tenant === admin.tenantId), "UNAUTHENTICATED, in the admin's tenant");

  const changes = (await listed(`action:"jobmesh.v1.PipelineService.*" AND code = 0 AND event_time >= "${startedAt.toISOString()}"`, 2))
    .filter((e) => /\.(Create|Update|Delete)Pipeline$/.test(e.action) && e.resource === `pipelines/${pipelineId}`);
  t.same(changes.map((e) => e.action), ["jobmesh.v1.PipelineService.UpdatePipeline", "jobmesh.v1.PipelineService.CreatePipeline"], "the update, then the create (newest first)");
  t.ok(changes.every((e) => e.actor?.subject === admin.name && e.actor.roles?.includes("admin")), "made by the admin, acting as admin");
  t.ok(changes.every((e) => e.actor?.credentialHint?.startsWith("tokens/")), "with the token of that login");
  updateSequence = changes[0].sequence;
});

t.test("export, VerifyAuditChain and the offline verifier: intact", async (t) => {
  // The export is most useful once a signed checkpoint covers the changes (made every 2 s).
  const signed = await eventually("a checkpoint over the pipeline update", async () => {
    const reply = await curl("/v1/auditCheckpoints?pageSize=1", withToken);
    const [newest] = (reply.body as { checkpoints?: { sequence: string; keyId: string }[] }).checkpoints ?? [];
    return newest && BigInt(newest.sequence) >= BigInt(updateSequence) ? newest : undefined;
  });
  keyId = signed.keyId;
  const file = join(dir, "intact.ndjson");
  const items = (await exportTo(file)).map((line) => line.result as Record<string, EventJson | undefined>);
  t.ok(items.length > 0 && items.every(Boolean), "one {\"result\": ...} per line");
  const events = items.flatMap((i) => (i.auditEvent ? [i.auditEvent] : []));
  t.ok(items.some((i) => i.signingKey) && items.some((i) => i.checkpoint), "with the signing keys and checkpoints");
  t.ok(events.some((e) => e.sequence === updateSequence && e.action === "jobmesh.v1.PipelineService.UpdatePipeline"), "the pipeline change is exported");
  t.equal(events.filter((e) => e.action === "jobmesh.v1.AuthService.Login" && e.outcome?.code === 16).length, 2, "and both failed logins");

  const verdict = await curl("/v1/auditEvents:verifyChain", { ...withToken, body: {} });
  t.equal(verdict.status, 200);
  t.equal((verdict.body as { intact?: boolean }).intact, true, JSON.stringify(verdict.body));
  t.ok(Number((verdict.body as { checkpointsVerified?: string }).checkpointsVerified) > 0, "signed checkpoints were checked");

  const offline = await verifyOffline(file, "--key", keyId);
  t.equal(offline.code, 0, offline.output);
  t.match(offline.output, /^intact: \d+ events, [1-9]\d* checkpoints/m, "intact, the checkpoints signed by the deployment's key");
});

t.test("a superuser edits one row behind the triggers: both verifiers name exactly its sequence", async (t) => {
  const superuser = new pg.Client({ connectionString: mesh.isolated.databaseUrl });
  await superuser.connect();
  t.teardown(() => superuser.end());
  await t.rejects(
    superuser.query("UPDATE audit_events SET actor_subject = 'users/somebody-else' WHERE tenant_id = $1 AND sequence = $2", [admin.tenantId, updateSequence]),
    /append-only/,
    "with the triggers on, even the superuser cannot edit",
  );
  await superuser.query("BEGIN");
  await superuser.query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only");
  const edited = await superuser.query("UPDATE audit_events SET actor_subject = 'users/somebody-else' WHERE tenant_id = $1 AND sequence = $2", [admin.tenantId, updateSequence]);
  await superuser.query("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only");
  await superuser.query("COMMIT");
  t.equal(edited.rowCount, 1, `row ${updateSequence} rewritten: someone else made the change`);

  const verdict = await curl("/v1/auditEvents:verifyChain", { ...withToken, body: {} });
  const body = verdict.body as { intact?: boolean; firstBrokenSequence?: string; breakKind?: string; reason?: string };
  t.equal(verdict.status, 200);
  t.equal(body.intact ?? false, false, "VerifyAuditChain: not intact");
  t.equal(body.firstBrokenSequence, updateSequence, "at exactly the edited sequence");
  t.equal(body.breakKind, "AUDIT_CHAIN_BREAK_EDITED", body.reason ?? "");

  const file = join(dir, "edited.ndjson");
  await exportTo(file);
  const offline = await verifyOffline(file, "--key", keyId);
  t.equal(offline.code, 1, "the offline verifier says broken");
  t.match(offline.output, new RegExp(`^broken at sequence ${updateSequence}:`, "m"), "at exactly the edited sequence");
  const before = await verifyOffline(join(dir, "intact.ndjson"), "--key", keyId);
  t.equal(before.code, 0, "the export taken before the edit still verifies: it needs nothing but itself");
});
