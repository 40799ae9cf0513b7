import t from "tap";
import { clone, create, equals, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { AuditChainBreak, AuditEventSchema, type AuditEvent } from "../gen/jobmesh/v1/audit_pb.js";
import { createAuditDomain } from "../internal/audit/domain.ts";
import { chainHashOf, createChainVerifier, genesisHash } from "../internal/audit/chain.ts";
import { trustedPublicKeys } from "../internal/audit/checkpoints.ts";
import { AuditEventNotFoundError, InvalidAuditFilterError } from "../internal/audit/errors.ts";
import { dropExpiredPartitions } from "../internal/audit/retention.ts";
import { createPageTokens } from "../internal/paging/index.ts";
import { auditEvent, createAuditStoreWorld } from "./support/audit-store.ts";

t.setTimeout(300_000);
const world = await createAuditStoreWorld(t);
const { domain, db, sink, bus, topology } = world;
const tenantA = randomUUID();
const tenantB = randomUUID();

/** Everything of a tenant, oldest first, through list's pages of `pageSize`. */
async function listAll(tenantId: string, filter = "", orderBy = "sequence", pageSize = 7): Promise<AuditEvent[]> {
  const all: AuditEvent[] = [];
  let pageToken = "";
  do {
    const page = await domain.list(tenantId, { pageSize, pageToken, filter, orderBy });
    all.push(...page.events);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

/** The event as published, with what the store adds: its tenant, sequence and links. */
function asStored(published: AuditEvent, stored: AuditEvent): AuditEvent {
  const expected = clone(AuditEventSchema, published);
  expected.tenant = stored.tenant;
  expected.sequence = stored.sequence;
  expected.prevHash = stored.prevHash;
  expected.hash = stored.hash;
  return expected;
}

const publishedA: AuditEvent[] = [];
const publishedB: AuditEvent[] = [];
const unattributed: AuditEvent[] = [];
for (let i = 0; i < 30; i++) {
  const a = auditEvent(tenantA, { action: i % 3 === 0 ? "jobmesh.v1.AuthService.Login" : "jobmesh.v1.JobService.CreateJob", code: i % 5 === 0 ? 16 : 0, subject: i % 2 ? "users/alice" : "users/bob" });
  const b = auditEvent(tenantB, { action: "jobmesh.v1.PipelineService.UpdatePipeline", subject: "apiKeys/k1" });
  publishedA.push(a);
  publishedB.push(b);
  sink.record(a);
  sink.record(b);
  if (i % 10 === 0) {
    const u = auditEvent("", { subject: "", code: 16 });
    unattributed.push(u);
    sink.record(u);
  }
}
// The same event twice under another Nats-Msg-Id (past JetStream's window): the store must dedupe.
await sink.flush();
await bus.js.publish(topology.eventsSubject(tenantA), toBinary(AuditEventSchema, publishedA[3]), { msgID: "again-" + publishedA[3].name });
const store = await world.startStore({ batchSize: 16 });
await world.until("every event stored", async () => (await world.count()) === 63);
await world.until("the store consumer drained", async () => (await store.lag()) === 0);

void t.test("store - each event stored once, chained 1..N per tenant, read back exactly as published", async (t) => {
  t.equal(await world.count(tenantA), 30, "the duplicate was skipped");
  t.equal(await world.count(tenantB), 30);
  t.equal(await world.count(world.unattributedTenantId), 3, "events without a tenant are in the unattributed chain");
  t.equal(store.stored(), 63n);
  for (const [tenant, published] of [[tenantA, publishedA], [tenantB, publishedB], [world.unattributedTenantId, unattributed]] as const) {
    const events = await listAll(tenant);
    t.same(events.map((e) => e.sequence), published.map((_, i) => BigInt(i + 1)), "sequences 1..N without a gap");
    let prev = genesisHash;
    for (const e of events) {
      if (e.prevHash !== prev || chainHashOf(prev, e) !== e.hash) t.fail(`sequence ${e.sequence} does not chain`);
      prev = e.hash;
    }
    const byName = new Map(published.map((p) => [p.name, p]));
    const exact = events.filter((e) => {
      const p = byName.get(e.name)!;
      return e.tenant === tenant && equals(AuditEventSchema, asStored(p, e), e);
    });
    t.equal(exact.length, events.length, "every field as published (ms time, µs duration, roles, request)");
  }
  const one = await domain.get(tenantA, publishedA[5].name);
  t.equal(one.name, publishedA[5].name);
  t.equal(one.tenant, tenantA);
  t.same((await domain.get(tenantA, publishedA[5].name.slice("auditEvents/".length))).hash, one.hash, "by bare id too");
});

void t.test("list - newest first by default, every event once across pages, filters, time order", async (t) => {
  const newest = await domain.list(tenantA, { pageSize: 5, pageToken: "", filter: "", orderBy: "" });
  t.same(newest.events.map((e) => e.sequence), [30n, 29n, 28n, 27n, 26n]);
  const desc = await listAll(tenantA, "", "sequence desc", 4);
  t.equal(desc.length, 30);
  t.equal(new Set(desc.map((e) => e.name)).size, 30, "no event twice across pages");
  const logins = await listAll(tenantA, 'action = "jobmesh.v1.AuthService.Login"');
  t.equal(logins.length, 10);
  const failedLogins = await listAll(tenantA, 'action:"jobmesh.v1.AuthService.*" AND code != 0');
  t.same(failedLogins.map((e) => e.outcome?.code), [16, 16], "failed logins (sequences 1 and 16)");
  t.same(failedLogins.map((e) => e.sequence), [1n, 16n]);
  t.equal((await listAll(tenantA, 'actor = "users/bob"')).length, 15);
  t.equal((await listAll(tenantA, "actor_kind = USER AND code = UNAUTHENTICATED")).length, 6);
  t.same((await listAll(tenantA, "sequence > 10 AND sequence <= 12")).map((e) => e.sequence), [11n, 12n]);
  const hourAgo = new Date(Date.now() - 3_600_000).toISOString();
  t.equal((await listAll(tenantA, `event_time >= "${hourAgo}"`, "event_time desc", 6)).length, 30, "event_time filter and order");
  t.equal((await listAll(tenantA, `event_time < "${hourAgo}"`)).length, 0);
  await t.rejects(domain.list(tenantA, { pageSize: 5, pageToken: "", filter: 'actor = "x" AND colour = red', orderBy: "" }), InvalidAuditFilterError);
  await t.rejects(domain.list(tenantA, { pageSize: 5, pageToken: newest.nextPageToken, filter: "code = 0", orderBy: "" }), { message: /page_token/ }, "a token is bound to its filter");
  await t.rejects(domain.list(tenantB, { pageSize: 5, pageToken: newest.nextPageToken, filter: "", orderBy: "" }), { message: /page_token/ }, "and to its tenant");
  const cps = await domain.listCheckpoints(tenantA, { pageSize: 1, pageToken: "" });
  if (cps.nextPageToken) await t.rejects(domain.listCheckpoints(tenantB, { pageSize: 1, pageToken: cps.nextPageToken }), { message: /page_token/ }, "a checkpoints token too");
});

void t.test("cross-tenant - list, get, verify and export of A show nothing of B", async (t) => {
  const namesB = new Set(publishedB.map((e) => e.name));
  t.notOk((await listAll(tenantA)).some((e) => namesB.has(e.name)));
  t.equal((await listAll(tenantA, 'actor = "apiKeys/k1"')).length, 0, "a filter does not reach B");
  await t.rejects(domain.get(tenantA, publishedB[0].name), AuditEventNotFoundError);
  await t.rejects(domain.get(tenantA, "auditEvents/not-a-uuid"), AuditEventNotFoundError);
  const verdict = await domain.verify(tenantA, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.lastSequence, 30n, "A's chain only");
  for await (const item of domain.export(tenantA, { startSequence: 0n, endSequence: 0n })) {
    if (item.item.case === "auditEvent" && item.item.value.tenant !== tenantA) t.fail("B's event in A's export");
    if (item.item.case === "checkpoint" && item.item.value.tenant !== tenantA) t.fail("B's checkpoint in A's export");
  }
  t.equal((await domain.listCheckpoints(tenantB, { pageSize: 100, pageToken: "" })).checkpoints.every((c) => c.tenant === tenantB), true);
});

void t.test("verify and export - signed checkpoints cover the chain; the export verifies with only what it holds", async (t) => {
  await world.until("checkpoints cover A's head", async () => (await domain.listCheckpoints(tenantA, { pageSize: 1, pageToken: "" })).checkpoints[0]?.sequence === 30n);
  const verdict = await domain.verify(tenantA, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, true, verdict.reason);
  t.equal(verdict.verifiedCount, 30n);
  t.ok(verdict.checkpointsVerified >= 1n);
  t.equal(verdict.unsignedCount, 0n);
  const part = await domain.verify(tenantA, { startSequence: 10n, endSequence: 20n });
  t.equal(part.intact, true, part.reason);
  t.ok(part.lastSequence >= 20n, "runs on to the checkpoint after the end");

  const items = [];
  for await (const item of domain.export(tenantA, { startSequence: 0n, endSequence: 0n })) items.push(item);
  t.equal(items[0].item.case, "signingKey", "keys first");
  const keys = new Map<string, Uint8Array>();
  const verifier = createChainVerifier({ keys, startSequence: 1n, tenant: tenantA });
  let lastEvent = 0n;
  for (const { item } of items) {
    if (item.case === "signingKey") keys.set(item.value.keyId, item.value.publicKey);
    else if (item.case === "auditEvent") verifier.addEvent((lastEvent = item.value.sequence, item.value));
    else if (item.case === "checkpoint") {
      t.equal(item.value.sequence, lastEvent, "a checkpoint right after the event at its sequence");
      verifier.addCheckpoint(item.value);
    }
  }
  t.same(keys, await trustedPublicKeys(db, world.keyEncryptionKey));
  const offline = verifier.finish();
  t.equal(offline.intact, true, offline.reason);
  t.equal(offline.verifiedCount, 30n);
  t.equal(offline.unsignedCount, 0n);

  const byTime: bigint[] = [];
  const from = publishedA[10].eventTime!;
  for await (const { item } of domain.export(tenantA, { startSequence: 0n, endSequence: 0n, startTime: from })) if (item.case === "auditEvent") byTime.push(item.value.sequence);
  t.ok(byTime[0] <= 11n && byTime.at(-1) === 30n, "a time range becomes the sequences that bound it");
});

void t.test("retention - whole month partitions go; verification starts where the kept chain starts, when a signed checkpoint proves it", async (t) => {
  const tenantC = randomUUID();
  const old = [0, 1, 2].map((d) => auditEvent(tenantC, { time: new Date(Date.UTC(2020, 0, 10 + d)) }));
  for (const e of old) sink.record(e);
  await sink.flush();
  await world.until("the old events stored", async () => (await world.count(tenantC)) === 3);
  const recent = [0, 1, 2].map(() => auditEvent(tenantC));
  for (const e of recent) sink.record(e);
  await sink.flush();
  await world.until("the recent events stored", async () => (await world.count(tenantC)) === 6);
  await world.until("checkpoints cover C", async () => (await domain.listCheckpoints(tenantC, { pageSize: 1, pageToken: "" })).checkpoints[0]?.sequence === 6n);
  // D: an event filed in an older month BETWEEN recent ones (a recorder's clock behind).
  const tenantD = randomUUID();
  for (const time of [new Date(), new Date(Date.UTC(2020, 0, 10)), new Date()]) {
    sink.record(auditEvent(tenantD, { time }));
    await sink.flush();
    const n = await world.count(tenantD);
    await world.until("D's event stored", async () => (await world.count(tenantD)) === n + 1);
  }
  await world.until("checkpoints cover D", async () => (await domain.listCheckpoints(tenantD, { pageSize: 1, pageToken: "" })).checkpoints[0]?.sequence === 3n);

  t.same(await dropExpiredPartitions(db, new Date(), 0), [], "0 days keeps everything");
  const dropped = await dropExpiredPartitions(db, new Date(), 365);
  t.same(dropped.map((d) => [d.tenantId, d.month]), [[tenantC, "2020-01"]], "only C's January 2020 goes: D's holds sequence 2, above its lowest kept (1)");
  t.equal(await world.count(tenantC), 3);
  t.equal(await world.count(tenantD), 3, "D keeps all three");
  const d = await domain.verify(tenantD, { startSequence: 0n, endSequence: 0n });
  t.same([d.intact, d.verifiedCount], [true, 3n], `D intact, no hole: ${d.reason}`);

  // C's horizon (4) rests on a checkpoint signed seconds ago: not older than a 400-day cutoff, so
  // not trusted (an event from 2020 stored today), and what it hides is MISSING.
  const strict = await domain.verify(tenantC, { startSequence: 0n, endSequence: 0n });
  t.same([strict.intact, strict.firstBrokenSequence, strict.breakKind], [false, 1n, AuditChainBreak.MISSING], strict.reason);
  t.match(strict.reason, /retention horizon at sequence 4: not trusted: .* not older than the retention cutoff/);

  // Once the checkpoint is older than the retention (here 10 ms), the horizon is trusted.
  const later = createAuditDomain({ db, js: bus.js, jsm: bus.jsm, topology, pageTokens: createPageTokens("test"), keyEncryptionKey: world.keyEncryptionKey, log: world.log, retentionDays: 10 / 86_400_000 });
  const verdict = await later.verify(tenantC, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, true, verdict.reason);
  t.equal(verdict.verifiedCount, 3n, "the kept events 4..6");
  t.equal(verdict.lastSequence, 6n);
  t.match(verdict.reason, /retention horizon at sequence 4: the hash before it signed in the checkpoint at sequence \d+ \(published\)/, "the horizon and its proof are in the verdict");

  // The first kept row removed is not mistaken for retention.
  const attacker = await db.connect();
  try {
    await attacker.query("SET session_replication_role = replica");
    await attacker.query("DELETE FROM audit_events WHERE tenant_id = $1 AND sequence = 4", [tenantC]);
  } finally {
    await attacker.query("RESET session_replication_role");
    attacker.release();
  }
  const after = await later.verify(tenantC, { startSequence: 0n, endSequence: 0n });
  t.equal(after.intact, false);
  t.equal(after.firstBrokenSequence, 4n);
  t.equal(after.breakKind, AuditChainBreak.MISSING, after.reason);
});

void t.test("store - an event without a usable time or id is still stored, with the arrival time and a stable id", async (t) => {
  const odd = create(AuditEventSchema, { name: "auditEvents/NOT-A-UUID", tenant: tenantB, action: "x\u0000y", eventTime: timestampFromDate(new Date(Date.UTC(1969, 0, 1))) });
  await bus.js.publish(topology.eventsSubject(tenantB), toBinary(AuditEventSchema, odd), { msgID: "odd-1" });
  await world.until("the odd event stored", async () => (await world.count(tenantB)) === 31);
  const [stored] = (await domain.list(tenantB, { pageSize: 1, pageToken: "", filter: "", orderBy: "" })).events;
  t.equal(stored.action, "x\uFFFDy", "a NUL (which Postgres text cannot hold) is stored as U+FFFD");
  t.ok(stored.eventTime!.seconds > 1_700_000_000n, "the arrival time replaces a time before 1970");
  t.match(stored.name, /^auditEvents\/[0-9a-f-]{36}$/);
  t.equal(chainHashOf(stored.prevHash, stored), stored.hash, "and it chains as read back");
  const verdict = await domain.verify(tenantB, { startSequence: 0n, endSequence: 0n });
  t.equal(verdict.intact, true, verdict.reason);
});
