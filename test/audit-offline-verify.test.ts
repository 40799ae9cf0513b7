// `jobmesh audit verify <export>` as a customer runs it: a child process with an empty
// environment and nothing but the file, on exports built with chain.ts and a signing key.
import t from "tap";
import { create, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { execFile } from "node:child_process";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditEventSchema, ExportAuditEventsResponseSchema, type AuditCheckpoint, type AuditEvent, type ExportAuditEventsResponse } from "../gen/jobmesh/v1/audit_pb.js";
import { auditKeyIdOf, chainHashOf, genesisHash, signCheckpoint } from "../internal/audit/chain.ts";

const repo = join(import.meta.dirname, "..");
const dir = await mkdtemp(join(tmpdir(), "jobmesh-audit-export-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const tenant = "5f0e8a52-7f0b-4a8e-9a43-2d5c0c1e7b22";

interface Signer {
  keyId: string;
  publicKey: Uint8Array;
  privateKey: KeyObject;
}
function signer(): Signer {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  const raw = new Uint8Array(Buffer.from(publicKey.export({ format: "jwk" }).x!, "base64url"));
  return { keyId: auditKeyIdOf(raw), publicKey: raw, privateKey };
}
const deployment = signer();

function rechain(events: AuditEvent[], from = 0): void {
  for (let i = from; i < events.length; i++) {
    events[i].prevHash = i === 0 ? genesisHash : events[i - 1].hash;
    events[i].hash = chainHashOf(events[i].prevHash, events[i]);
  }
}

function chainOf(n: number): AuditEvent[] {
  const events = Array.from({ length: n }, (_, i) =>
    create(AuditEventSchema, {
      name: `auditEvents/00000000-0000-4000-8000-${String(i + 1).padStart(12, "0")}`,
      sequence: BigInt(i + 1),
      tenant,
      actor: { subject: "users/admin", kind: 1, roles: ["admin"], credentialHint: "tokens/t" },
      action: i % 4 === 0 ? "jobmesh.v1.AuthService.Login" : "jobmesh.v1.PipelineService.UpdatePipeline",
      resource: `pipelines/p${i}`,
      outcome: { code: i % 4 === 0 ? 16 : 0, message: i % 4 === 0 ? "invalid credentials" : "" },
      eventTime: timestampFromDate(new Date(1_760_000_000_000 + i * 1000)),
      request: `{"email":"a@example.com","password":"[redacted]"}`,
      recorder: "auth",
    }));
  rechain(events);
  return events;
}

/** Checkpoints over the events every `every` sequences, signed by `by`. */
function checkpointsOf(events: AuditEvent[], every: number, by: Signer): AuditCheckpoint[] {
  const cps: AuditCheckpoint[] = [];
  for (let end = every; end <= events.length; end += every) {
    cps.push(signCheckpoint({ tenant, firstSequence: BigInt(end - every + 1), hashes: events.slice(end - every, end).map((e) => e.hash), time: new Date() }, by));
  }
  return cps;
}

/** The export's items: keys first, then the events, each checkpoint after the event at its sequence. */
function exportOf(events: AuditEvent[], cps: AuditCheckpoint[], keys: Signer[] = [deployment]): ExportAuditEventsResponse[] {
  const items: ExportAuditEventsResponse[] = keys.map((k) =>
    create(ExportAuditEventsResponseSchema, { item: { case: "signingKey", value: { keyId: k.keyId, publicKey: k.publicKey, createTime: timestampFromDate(new Date()) } } }));
  for (const event of events) {
    items.push(create(ExportAuditEventsResponseSchema, { item: { case: "auditEvent", value: event } }));
    for (const cp of cps) if (cp.sequence === event.sequence) items.push(create(ExportAuditEventsResponseSchema, { item: { case: "checkpoint", value: cp } }));
  }
  return items;
}

type Shape = "gateway" | "bare" | "grpcurl";
async function fileOf(items: ExportAuditEventsResponse[], shape: Shape = "gateway"): Promise<string> {
  const json = items.map((item) => toJson(ExportAuditEventsResponseSchema, item));
  const text = shape === "gateway"
    ? json.map((j) => JSON.stringify({ result: j }) + "\n").join("")
    : shape === "bare" ? json.map((j) => JSON.stringify(j) + "\n").join("") : json.map((j) => JSON.stringify(j, null, 2)).join("\n");
  const file = join(dir, `export-${Math.random().toString(36).slice(2)}.ndjson`);
  await writeFile(file, text);
  return file;
}

/** Runs the CLI with an empty environment: exit code, stdout, stderr. */
function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["cmd/jobmesh/main.ts", "audit", ...args], { cwd: repo, env: {}, timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, out: stdout.trim(), err: stderr.trim() });
    });
  });
}

void t.test("offline verify - an intact export, in the gateway's NDJSON, bare messages, or grpcurl's output", async (t) => {
  const events = chainOf(25);
  const items = exportOf(events, checkpointsOf(events, 10, deployment));
  const shapes = ["gateway", "bare", "grpcurl"] as const;
  // Child processes run side by side: each is a Node start-up on a possibly loaded machine.
  const runs = await Promise.all(shapes.map(async (shape) => cli("verify", await fileOf(items, shape))));
  shapes.forEach((shape, i) => t.same([runs[i].code, runs[i].out], [0, "intact: 25 events, 2 checkpoints, 5 unsigned"], shape));
  const pinned = await cli("verify", await fileOf(items), "--key", deployment.keyId);
  t.same([pinned.code, pinned.out, pinned.err], [0, "intact: 25 events, 2 checkpoints, 5 unsigned", ""]);
  const ranged = events.slice(10, 20);
  const range = await cli("verify", await fileOf(exportOf(ranged, checkpointsOf(events, 10, deployment))));
  t.same([range.code, range.out], [0, "intact: 10 events, 1 checkpoints, 0 unsigned"], "a range that starts after the first event");
});

void t.test("offline verify - an edited, deleted, swapped or re-chained event is reported at its exact sequence", async (t) => {
  const cases: [string, (events: AuditEvent[]) => AuditEvent[], string][] = [
    ["edited", (e) => { e[16].actor!.subject = "users/someone-else"; return e; }, "broken at sequence 17: stored hash does not match its content (edited)"],
    ["deleted", (e) => e.toSpliced(11, 1), "broken at sequence 12: missing"],
    ["swapped", (e) => e.with(6, e[7]).with(7, e[6]), "broken at sequence 7: "],
    ["re-chained", (e) => { e[22].resource = "pipelines/other"; rechain(e, 22); return e; }, "broken at sequence 23: hash differs from the one signed in the checkpoint at sequence 30"],
  ];
  const runs = await Promise.all(cases.map(async ([, tamper]) => {
    const events = chainOf(30);
    const cps = checkpointsOf(events, 10, deployment);
    return cli("verify", await fileOf(exportOf(tamper(events), cps)));
  }));
  cases.forEach(([name, , expected], i) => {
    t.equal(runs[i].code, 1, name);
    t.ok(runs[i].out.startsWith(expected), `${name}: ${runs[i].out}`);
  });
});

void t.test("offline verify - a chain re-signed by someone else's key passes only when the key is not pinned", async (t) => {
  const events = chainOf(20);
  events[4].outcome!.code = 0;
  rechain(events, 4);
  const forger = signer();
  const file = await fileOf(exportOf(events, checkpointsOf(events, 10, forger), [forger]));
  const unpinned = await cli("verify", file);
  t.same(unpinned.code, 0, "self-consistent: the file alone cannot tell who signed it");
  t.match(unpinned.err, new RegExp(`trusted the key\\(s\\) in the file: ${forger.keyId}`));
  const pinned = await cli("verify", file, "--key", deployment.keyId);
  t.same(pinned.code, 1);
  t.match(pinned.out, /^broken at sequence 1: the checkpoint at sequence 10 is signed by key "[0-9a-f]{16}", which is not trusted$/);
  const borrowed = await cli("verify", await fileOf(exportOf(events, checkpointsOf(events, 10, forger), [{ ...forger, keyId: deployment.keyId }])), "--key", deployment.keyId);
  t.same([borrowed.code, borrowed.err], [2, `not an audit export: item 1: key "${deployment.keyId}" is not the id of its public key`], "a key listed under the pinned id");
});

void t.test("offline verify - what is not an export is said so (exit 2), and bad usage prints the usage", async (t) => {
  const garbage = join(dir, "garbage.ndjson");
  await writeFile(garbage, "hello\n");
  t.same((await cli("verify", garbage)).code, 2);
  const truncated = join(dir, "truncated.ndjson");
  const whole = await readFile(await fileOf(exportOf(chainOf(3), [])));
  await writeFile(truncated, whole.subarray(0, whole.length - 20));
  t.match(await cli("verify", truncated), { code: 2, err: /truncated export/ });
  const failed = join(dir, "failed.ndjson");
  await writeFile(failed, `${JSON.stringify({ error: { code: "permission_denied", message: "no" } })}\n`);
  t.match(await cli("verify", failed), { code: 2, err: /ended with an error/ });
  t.match(await cli("verify", join(dir, "absent.ndjson")), { code: 2, err: /no such file/ });
  t.match(await cli("sign"), { code: 2, err: /^usage: jobmesh audit verify/ });
});
