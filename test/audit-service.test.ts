/**
 * AuditService over real servers (Postgres, NATS, the audit store): admin-only, scoped to the
 * caller's tenant, filters that say what they refuse, newest first, an export shaped for the
 * offline verifier, and no secret of any call in any column of audit_events.
 */
import t from "tap";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { randomBytes } from "node:crypto";
import { AuditService, type AuditEvent, type ExportAuditEventsResponse } from "../gen/jobmesh/v1/audit_pb.js";
import { Role } from "../gen/jobmesh/v1/auth_pb.js";
import { PipelineConfigSchema, PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { testPassword } from "./support/auth.ts";
import { startTestMesh } from "./support/mesh.ts";

// A mesh with the audit store, on a loaded machine: events reach Postgres in batches, checkpoints every 2 s.
t.setTimeout(300_000);

const mesh = await startTestMesh({}, { auth: true, audit: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const audit = createClient(AuditService, createConnectTransport({ baseUrl: mesh.audit!.url, httpVersion: "1.1" }));
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));
const adminA = await auth.headersFor("admin");
const userA = await auth.userFor("admin");
const tenantB = "audit-tenant-b";
const adminB = await auth.headersFor("admin", tenantB);
const userB = await auth.userFor("admin", tenantB);
const unique = (prefix: string) => `${prefix}-${randomBytes(4).toString("hex")}`;
const config = () => create(PipelineConfigSchema, { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }] });

async function codeOf(call: Promise<unknown> | AsyncIterable<unknown>): Promise<Code | "ok"> {
  try {
    if (Symbol.asyncIterator in call) {
      for await (const _ of call) break;
    } else {
      await call;
    }
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

/** Polls `probe` until it returns a value (events are stored asynchronously); the deadline is a hang guard. */
async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 90_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** The events of `filter` once at least `count` are stored, newest first. */
const listed = (headers: Record<string, string>, filter: string, count = 1) =>
  eventually(`${count} event(s) of ${filter}`, async () => {
    const { auditEvents } = await audit.listAuditEvents({ filter, pageSize: 1000 }, { headers });
    return auditEvents.length >= count ? auditEvents : undefined;
  });

const idOf = (event: AuditEvent) => event.name.slice("auditEvents/".length);

async function exported(headers: Record<string, string>, request: { startSequence?: bigint; endSequence?: bigint } = {}): Promise<ExportAuditEventsResponse[]> {
  const items: ExportAuditEventsResponse[] = [];
  for await (const item of audit.exportAuditEvents(request, { headers })) items.push(item);
  return items;
}

/** Waits until a signed checkpoint covers `sequence` in the caller's chain. */
const signedThrough = (headers: Record<string, string>, sequence: bigint) =>
  eventually(`a checkpoint at or after ${sequence}`, async () => {
    const { checkpoints } = await audit.listAuditCheckpoints({ pageSize: 1 }, { headers });
    return checkpoints[0] && checkpoints[0].sequence >= sequence ? checkpoints[0] : undefined;
  });

t.test("admin only - viewer and operator are PERMISSION_DENIED on every AuditService RPC; an admin is let in", async (t) => {
  const ghost = "auditEvents/00000000-0000-4000-8000-000000000000";
  const calls: Record<string, (headers: Record<string, string>) => Promise<unknown> | AsyncIterable<unknown>> = {
    listAuditEvents: (headers) => audit.listAuditEvents({}, { headers }),
    getAuditEvent: (headers) => audit.getAuditEvent({ name: ghost }, { headers }),
    verifyAuditChain: (headers) => audit.verifyAuditChain({}, { headers }),
    exportAuditEvents: (headers) => audit.exportAuditEvents({}, { headers }),
    listAuditCheckpoints: (headers) => audit.listAuditCheckpoints({}, { headers }),
  };
  t.same(Object.keys(calls).sort(), AuditService.methods.map((m) => m.localName).sort(), "every RPC of AuditService is tried");
  for (const role of ["viewer", "operator"] as const) {
    const headers = await auth.headersFor(role);
    for (const [method, call] of Object.entries(calls)) t.equal(await codeOf(call(headers)), Code.PermissionDenied, `${role}: ${method}`);
  }
  for (const [method, call] of Object.entries(calls)) {
    t.equal(await codeOf(call(adminA)), method === "getAuditEvent" ? Code.NotFound : "ok", `admin: ${method}`);
  }
});

t.test("tenants - tenant B's admin sees none of tenant A's events through List, Get, Export or Verify", async (t) => {
  const pipelineId = unique("tenant-a-only");
  await pipelines.createPipeline({ pipelineId, pipeline: { config: config() } }, { headers: adminA });
  const [eventA] = await listed(adminA, `resource = "pipelines/${pipelineId}"`);
  t.equal(eventA.tenant, userA.tenantId, "A's event is in A's chain");
  const aNames = new Set((await audit.listAuditEvents({ pageSize: 1000 }, { headers: adminA })).auditEvents.map((e) => e.name));
  const aHashes = new Set((await exported(adminA)).flatMap((i) => (i.item.case === "auditEvent" ? [i.item.value.hash] : [])));
  t.ok(aNames.has(eventA.name) && aHashes.has(eventA.hash));

  // B has events of its own (its admin's login and these calls), so an empty answer proves nothing.
  await pipelines.listPipelines({}, { headers: adminB });
  const ownB = await listed(adminB, `action = "jobmesh.v1.PipelineService.ListPipelines"`);
  t.equal(ownB[0].tenant, userB.tenantId, "B sees its own events");
  t.same((await audit.listAuditEvents({ filter: `resource = "pipelines/${pipelineId}"` }, { headers: adminB })).auditEvents, [], "B's filtered list is empty");
  const listedB = (await audit.listAuditEvents({ pageSize: 1000 }, { headers: adminB })).auditEvents;
  t.ok(listedB.length > 0);
  t.ok(listedB.every((e) => e.tenant === userB.tenantId && !aNames.has(e.name)), "B's list holds only B's events");
  t.equal(await codeOf(audit.getAuditEvent({ name: eventA.name }, { headers: adminB })), Code.NotFound, "A's event by name is NOT_FOUND for B");
  t.equal((await audit.getAuditEvent({ name: eventA.name }, { headers: adminA })).auditEvent?.name, eventA.name, "and found for A");

  const itemsB = await exported(adminB);
  const eventsB = itemsB.flatMap((i) => (i.item.case === "auditEvent" ? [i.item.value] : []));
  t.ok(eventsB.length > 0);
  t.ok(eventsB.every((e) => e.tenant === userB.tenantId && !aNames.has(e.name) && !aHashes.has(e.hash)), "B's export holds only B's events");
  t.ok(itemsB.every((i) => i.item.case !== "checkpoint" || i.item.value.tenant === userB.tenantId), "and only B's checkpoints");

  const verdict = await audit.verifyAuditChain({}, { headers: adminB });
  t.ok(verdict.intact, verdict.reason);
  t.notOk(aHashes.has(verdict.lastHash), "B's verification ends on a hash of B's chain, not A's");
  // The head B verified is one of B's own events (the list catches up with it).
  const head = await eventually("B's verified head in B's list", async () => {
    const { auditEvents } = await audit.listAuditEvents({ filter: `sequence >= ${verdict.lastSequence} AND sequence <= ${verdict.lastSequence}` }, { headers: adminB });
    return auditEvents[0];
  });
  t.equal(head.hash, verdict.lastHash);
  t.equal(head.tenant, userB.tenantId);
});

t.test("filters - a bad filter or order is INVALID_ARGUMENT naming what is wrong", async (t) => {
  const refusal = async (request: { filter?: string; orderBy?: string }) => {
    try {
      await audit.listAuditEvents(request, { headers: adminA });
      return undefined;
    } catch (error) {
      return ConnectError.from(error);
    }
  };
  const unknownField = await refusal({ filter: 'colour = "red"' });
  t.equal(unknownField?.code, Code.InvalidArgument);
  t.match(unknownField?.rawMessage, /colour/, "names the unknown field");
  const badTime = await refusal({ filter: 'event_time >= "yesterday"' });
  t.equal(badTime?.code, Code.InvalidArgument);
  t.match(badTime?.rawMessage, /yesterday|event_time/, "names the bad time");
  const badOrder = await refusal({ orderBy: "colour desc" });
  t.equal(badOrder?.code, Code.InvalidArgument);
  t.match(badOrder?.rawMessage, /colour/, "names the unknown order");
});

t.test("list - filters by action, prefix, resource, resource type, actor, outcome and time; newest first, paged", async (t) => {
  const first = unique("audit-first");
  const second = unique("audit-second");
  const missing = `pipelines/${unique("missing")}`;
  await pipelines.createPipeline({ pipelineId: first, pipeline: { config: config() } }, { headers: adminA });
  await pipelines.createPipeline({ pipelineId: second, pipeline: { config: config() } }, { headers: adminA });
  t.equal(await codeOf(pipelines.getPipeline({ name: missing }, { headers: adminA })), Code.NotFound);
  const [failed] = await listed(adminA, `resource = "${missing}"`);
  t.equal(failed.outcome?.code, Code.NotFound);
  t.equal(failed.action, "jobmesh.v1.PipelineService.GetPipeline");
  t.equal(failed.actor?.subject, userA.name);

  const creates = await listed(adminA, `action = "jobmesh.v1.PipelineService.CreatePipeline"`, 2);
  t.ok(creates.every((e) => e.action === "jobmesh.v1.PipelineService.CreatePipeline"));
  const resources = creates.map((e) => e.resource);
  t.ok(resources.indexOf(`pipelines/${second}`) >= 0 && resources.indexOf(`pipelines/${second}`) < resources.indexOf(`pipelines/${first}`), "the later create is listed first");
  t.ok(creates.every((e, i) => i === 0 || e.sequence < creates[i - 1].sequence), "newest first: sequences decrease");

  const ofService = (await audit.listAuditEvents({ filter: `action:"jobmesh.v1.PipelineService.*"`, pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(ofService.every((e) => e.action.startsWith("jobmesh.v1.PipelineService.")), "a prefix matches only that service");
  t.ok(ofService.some((e) => e.name === failed.name) && ofService.some((e) => e.resource === `pipelines/${first}`));

  const refused = (await audit.listAuditEvents({ filter: `action = "jobmesh.v1.PipelineService.GetPipeline" AND code != 0`, pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(refused.length > 0 && refused.every((e) => e.outcome!.code !== 0) && refused.some((e) => e.name === failed.name), "code != 0");
  const succeeded = (await audit.listAuditEvents({ filter: "code = 0", pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(succeeded.length > 0 && succeeded.every((e) => e.outcome!.code === 0) && !succeeded.some((e) => e.name === failed.name), "code = 0");

  const byActor = (await audit.listAuditEvents({ filter: `actor = "${userA.name}"`, pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(byActor.length >= 3 && byActor.every((e) => e.actor?.subject === userA.name), "actor");
  const createdFirst = creates.find((e) => e.resource === `pipelines/${first}`)!;
  t.equal(createdFirst.resourceType, "jobmesh.dev/Pipeline");
  const byType = (await audit.listAuditEvents({ filter: `resource_type = "jobmesh.dev/Pipeline"`, pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(byType.some((e) => e.name === createdFirst.name) && byType.every((e) => e.resourceType === "jobmesh.dev/Pipeline"), "resource_type");
  const byResource = (await audit.listAuditEvents({ filter: `resource = "pipelines/${first}"` }, { headers: adminA })).auditEvents;
  t.same(byResource.map((e) => e.name), [createdFirst.name], "resource");

  const since = createdFirst.eventTime!;
  const iso = new Date(Number(since.seconds) * 1000 + Math.floor(since.nanos / 1e6)).toISOString();
  const later = (await audit.listAuditEvents({ filter: `event_time >= "${iso}" AND action:"jobmesh.v1.PipelineService.*"`, pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(later.some((e) => e.name === createdFirst.name) && later.some((e) => e.name === failed.name), "event_time >= includes its bound");
  t.ok(later.every((e) => e.eventTime!.seconds > since.seconds || (e.eventTime!.seconds === since.seconds && e.eventTime!.nanos >= since.nanos)), "and nothing before it");
  const bySequence = (await audit.listAuditEvents({ filter: `sequence <= ${createdFirst.sequence}`, pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(bySequence.length > 0 && bySequence.every((e) => e.sequence <= createdFirst.sequence) && bySequence[0].sequence === createdFirst.sequence, "sequence <=");

  const ascending = (await audit.listAuditEvents({ filter: `action = "jobmesh.v1.PipelineService.CreatePipeline"`, orderBy: "sequence", pageSize: 1000 }, { headers: adminA })).auditEvents;
  t.ok(ascending.length >= 2 && ascending.every((e, i) => i === 0 || e.sequence > ascending[i - 1].sequence), "order_by sequence: oldest first");

  const page1 = await audit.listAuditEvents({ filter: `action = "jobmesh.v1.PipelineService.CreatePipeline"`, pageSize: 1 }, { headers: adminA });
  t.equal(page1.auditEvents.length, 1);
  t.not(page1.nextPageToken, "", "a next page token");
  const page2 = await audit.listAuditEvents({ filter: `action = "jobmesh.v1.PipelineService.CreatePipeline"`, pageSize: 1, pageToken: page1.nextPageToken }, { headers: adminA });
  t.equal(page2.auditEvents.length, 1);
  t.ok(page2.auditEvents[0].sequence < page1.auditEvents[0].sequence, "the next page is older");
});

t.test("export - the signing keys, then every event in sequence order, each checkpoint right after the event it covers", async (t) => {
  await pipelines.listPipelines({}, { headers: adminA });
  const [latest] = await listed(adminA, `action = "jobmesh.v1.PipelineService.ListPipelines"`);
  await signedThrough(adminA, latest.sequence);
  const items = await exported(adminA);
  const kinds = items.map((i) => i.item.case);
  const keys = new Set(items.flatMap((i) => (i.item.case === "signingKey" ? [i.item.value.keyId] : [])));
  t.ok(keys.size > 0, "at least one signing key");
  t.ok(kinds.lastIndexOf("signingKey") < kinds.indexOf("auditEvent"), "the keys come first");
  t.ok(items.every((i) => i.item.case !== "signingKey" || i.item.value.publicKey.length === 32), "raw 32-byte Ed25519 keys");

  let previous: AuditEvent | undefined;
  let lastCheckpoint = 0n;
  let checkpoints = 0;
  for (const { item } of items) {
    if (item.case === "auditEvent") {
      const event = item.value;
      t.equal(event.sequence, previous ? previous.sequence + 1n : 1n, `sequence ${event.sequence} follows`);
      t.equal(event.prevHash, previous ? previous.hash : "0".repeat(64), `sequence ${event.sequence} links to its predecessor`);
      t.equal(event.tenant, userA.tenantId);
      previous = event;
    } else if (item.case === "checkpoint") {
      const cp = item.value;
      checkpoints++;
      t.equal(cp.sequence, previous?.sequence, "a checkpoint comes right after the event at its sequence");
      t.equal(cp.hash, previous?.hash, "and signs that event's hash");
      t.equal(cp.firstSequence, lastCheckpoint + 1n, "and lists every hash since the previous one");
      t.equal(cp.eventHashes.length, 32 * Number(cp.sequence - cp.firstSequence + 1n));
      t.ok(keys.has(cp.keyId), "signed by an exported key");
      t.equal(cp.signature.length, 64);
      lastCheckpoint = cp.sequence;
    }
  }
  t.ok(checkpoints > 0, "checkpoints are exported");
  t.ok(previous && previous.sequence >= latest.sequence, "the export reaches the latest event");

  const range = await exported(adminA, { startSequence: 2n, endSequence: 3n });
  const rangeEvents = range.flatMap((i) => (i.item.case === "auditEvent" ? [i.item.value] : []));
  t.equal(rangeEvents[0]?.sequence, 2n, "a range starts at its start");
  t.ok(rangeEvents.every((e, i) => i === 0 || e.sequence === rangeEvents[i - 1].sequence + 1n), "contiguous");
  const end = range.at(-1)?.item;
  t.ok(end?.case === "checkpoint" && end.value.sequence >= 3n, "and runs on to the first checkpoint at or after its end");
});

t.test("secrets - the test password, a wrong password, a token, an API key's secret and a new user's password are in no column of audit_events", async (t) => {
  const wrongPassword = `wrong-password-${randomBytes(6).toString("hex")}`;
  const newUserPassword = `new-user-password-${randomBytes(6).toString("hex")}`;
  const token = await auth.tokenFor("admin");
  t.equal(await codeOf(auth.client.login({ email: userA.email, password: wrongPassword, tenant: userA.tenant })), Code.Unauthenticated);
  await auth.client.login({ email: userA.email, password: testPassword, tenant: userA.tenant });
  const email = `${unique("audited")}@example.com`;
  await auth.client.createUser({ user: { email, roles: [Role.VIEWER] }, password: newUserPassword }, { headers: adminA });
  const { secret, apiKey } = await auth.client.createApiKey({ apiKey: { displayName: unique("key"), roles: [Role.VIEWER] } }, { headers: adminA });
  await pipelines.listPipelines({}, { headers: { authorization: `Bearer ${secret}` } });
  t.match(secret, /^jmk_/);

  // Every call above is stored before the table is searched.
  const [byKey] = await listed(adminA, `actor = "${apiKey!.name}"`);
  t.equal(byKey.actor?.credentialHint, secret.slice(0, "jmk_".length + 8), "the key is named by its public prefix only");
  const [createdUser] = await listed(adminA, `action = "jobmesh.v1.AuthService.CreateUser"`);
  t.match(createdUser.request, /\[redacted\]/, "the new user's password was redacted, not dropped");
  const failedLogins = await listed(adminA, `action = "jobmesh.v1.AuthService.Login" AND code != 0`);
  t.ok(failedLogins.some((e) => e.actor?.credentialHint === `email:${userA.email}`), "the failed login is recorded with the email it tried");

  // Every column of every row, each as its own text (unescaped), joined.
  const { rows } = await mesh.infra.db.query<{ row: string }>("SELECT (SELECT string_agg(value, ' ') FROM jsonb_each_text(to_jsonb(e))) AS row FROM audit_events e");
  t.ok(rows.length >= 5, `${rows.length} rows searched`);
  t.ok(rows.some((r) => r.row.includes(createdUser.request)), "the request column is searched too");
  for (const [what, value] of Object.entries({ testPassword, wrongPassword, newUserPassword, token, secret })) {
    t.notOk(rows.some((r) => r.row.includes(value)), `${what} appears in no row`);
  }
});
