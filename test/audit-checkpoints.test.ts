// Signed checkpoints against the real Postgres and JetStream: the key sealed and trusted only when
// it unseals, checkpoints stored and published, resumed from the table after a restart, and
// republished when the stream missed them.
import t from "tap";
import { create, toBinary } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { generateKeyPairSync, randomBytes, randomUUID } from "node:crypto";
import { AuditChainBreak, AuditCheckpointSchema, AuditEventSchema, type AuditCheckpoint } from "../gen/jobmesh/v1/audit_pb.js";
import { auditKeyIdOf, chainHashOf, createChainVerifier, genesisHash, type ChainVerdict } from "../internal/audit/chain.ts";
import { createCheckpointer, loadAuditSigningKey, publishedCheckpoints, trustedPublicKeys } from "../internal/audit/checkpoints.ts";
import { auditEventColumns, checkpointColumns, checkpointOfRow, eventOfRow, isoOfMicros, rowOfEvent, type AuditCheckpointRow, type AuditEventRow } from "../internal/audit/rows.ts";
import { createAuditTopology, provisionAuditTopology } from "../internal/bus/topology.ts";
import { createPool, migrate } from "../internal/db/index.ts";
import { seal } from "../internal/sealing/index.ts";
import { createLogger } from "../internal/telemetry/index.ts";
import { insertAuditEventRows } from "./support/audit-store.ts";
import { isolate, natsUrl } from "./support/isolation.ts";

const isolated = await isolate();
const log = createLogger({ name: "test", level: "silent" });
await migrate(isolated.databaseUrl, log);
const db = createPool({ url: isolated.databaseUrl });
const nc = await connect({ servers: natsUrl });
const js = jetstream(nc);
const jsm = await jetstreamManager(nc);
const topology = createAuditTopology(isolated.namespace);
const limits = { streamMaxBytes: 8 * 1024 * 1024 };
await provisionAuditTopology(topology, jsm, limits);
t.teardown(async () => {
  for (const name of [topology.eventsStream, topology.checkpointsStream, topology.headsStream]) await jsm.streams.delete(name).catch(() => false);
  await nc.close();
  await db.end();
  await isolated.drop();
});
const kek = randomBytes(32);

/** Stores `n` chained events of a tenant in audit_events, as the store does; returns their hashes. */
async function storeEvents(tenant: string, n: number): Promise<string[]> {
  const rows: AuditEventRow[] = [];
  let prev = genesisHash;
  for (let i = 1; i <= n; i++) {
    const event = create(AuditEventSchema, {
      name: `auditEvents/${randomUUID()}`, tenant, action: "jobmesh.v1.JobService.GetJob", resource: `jobs/j${i}`,
      actor: { subject: "users/u1", kind: 1, roles: ["admin"] }, outcome: { code: 0 },
      eventTime: timestampFromDate(new Date()), duration: durationFromMs(2), recorder: "jobs",
    });
    const row = rowOfEvent(event, { tenantId: tenant, eventId: event.name.slice("auditEvents/".length), arrivalUs: 0n });
    row.sequence = String(i);
    row.prev_hash = prev;
    row.hash = prev = chainHashOf(prev, eventOfRow(row));
    rows.push(row);
  }
  await db.query("SELECT audit_events_partition($1::uuid, $2::timestamptz)", [tenant, isoOfMicros(BigInt(rows[0].event_time_us))]);
  await insertAuditEventRows(db, rows);
  return rows.map((r) => r.hash);
}

/** The tenant's chain as stored, each checkpoint of the table after the event at its sequence. */
async function verifyStored(tenant: string, keys: Map<string, Uint8Array>, checkpoints?: AuditCheckpoint[]): Promise<ChainVerdict> {
  const events = await db.query<AuditEventRow>(`SELECT ${auditEventColumns} FROM audit_events WHERE tenant_id = $1 ORDER BY sequence`, [tenant]);
  const cps = checkpoints ?? (await storedCheckpoints(tenant));
  const verifier = createChainVerifier({ keys, startSequence: 1n, tenant });
  for (const row of events.rows) {
    verifier.addEvent(eventOfRow(row));
    for (const cp of cps) if (cp.sequence === BigInt(row.sequence)) verifier.addCheckpoint(cp);
  }
  return verifier.finish();
}

async function storedCheckpoints(tenant: string): Promise<AuditCheckpoint[]> {
  const { rows } = await db.query<AuditCheckpointRow>(`SELECT ${checkpointColumns} FROM audit_checkpoints WHERE tenant_id = $1 ORDER BY sequence`, [tenant]);
  return rows.map(checkpointOfRow);
}

async function published(tenant: string): Promise<AuditCheckpoint[]> {
  const all: AuditCheckpoint[] = [];
  for await (const cp of publishedCheckpoints(js, topology, tenant)) all.push(cp);
  return all;
}

const bytesOf = (cps: AuditCheckpoint[]) => cps.map((cp) => Buffer.from(toBinary(AuditCheckpointSchema, cp)).toString("hex"));

void t.test("signing key - made once by stores starting together, its private half in no column in clear", async (t) => {
  const keys = await Promise.all([1, 2, 3].map(() => loadAuditSigningKey({ db, keyEncryptionKey: kek })));
  t.equal(new Set(keys.map((k) => k.keyId)).size, 1);
  t.equal(keys[0].keyId, auditKeyIdOf(keys[0].publicKey));
  const { rows } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_signing_keys");
  t.equal(rows[0].n, 1);
  const seed = Buffer.from(keys[0].privateKey.export({ format: "jwk" }).d!, "base64url");
  const der = keys[0].privateKey.export({ format: "der", type: "pkcs8" });
  const { rows: raw } = await db.query<{ key_id: string; public_key: Buffer; private_key_sealed: Buffer; row_text: string }>(
    "SELECT key_id, public_key, private_key_sealed, k::text AS row_text FROM audit_signing_keys k",
  );
  for (const column of [Buffer.from(raw[0].key_id), raw[0].public_key, raw[0].private_key_sealed, Buffer.from(raw[0].row_text)]) {
    t.notOk(column.includes(seed) || column.includes(der) || column.includes(seed.toString("hex")) || column.includes(seed.toString("base64")), "no private key bytes");
  }
  t.same((await trustedPublicKeys(db, randomBytes(32))).size, 0, "under another key-encryption key the key is not trusted");
});

void t.test("signing key - a row a superuser inserted is not trusted, even when it is the newest", async (t) => {
  const current = await loadAuditSigningKey({ db, keyEncryptionKey: kek });
  const forged = generateKeyPairSync("ed25519");
  const forgedPublic = Buffer.from(forged.publicKey.export({ format: "jwk" }).x!, "base64url");
  const forgedId = auditKeyIdOf(forgedPublic);
  const insert = "INSERT INTO audit_signing_keys (key_id, public_key, private_key_sealed, create_time) VALUES ($1, $2, $3, now() + interval '1 hour')";
  // Sealed under a key-encryption key Postgres never saw; or our sealed key copied beside a foreign public key.
  await db.query(insert, [forgedId, forgedPublic, seal(randomBytes(32), forgedId, forged.privateKey.export({ format: "der", type: "pkcs8" }))]);
  const { rows } = await db.query<{ private_key_sealed: Buffer }>("SELECT private_key_sealed FROM audit_signing_keys WHERE key_id = $1", [current.keyId]);
  const other = Buffer.from(generateKeyPairSync("ed25519").publicKey.export({ format: "jwk" }).x!, "base64url");
  await db.query(insert, [current.keyId.replace(/.$/, (c) => (c === "0" ? "1" : "0")), other, rows[0].private_key_sealed]);
  const trusted = await trustedPublicKeys(db, kek);
  t.same([...trusted.keys()], [current.keyId]);
  t.equal((await loadAuditSigningKey({ db, keyEncryptionKey: kek })).keyId, current.keyId, "the store keeps signing with its own key");
});

void t.test("checkpointer - checkpoints are signed, stored, published, and verify; a flipped byte does not", async (t) => {
  const tenant = randomUUID();
  const key = await loadAuditSigningKey({ db, keyEncryptionKey: kek });
  const checkpointer = createCheckpointer({ db, js, topology, key, log });
  const hashes = await storeEvents(tenant, 7);
  hashes.slice(0, 5).forEach((h, i) => checkpointer.append(tenant, BigInt(i + 1), h));
  t.same(checkpointer.due(Date.now(), 60_000, 1000), [], "neither old nor many enough");
  t.same(checkpointer.due(Date.now(), 60_000, 5), [tenant], "maxEvents reached");
  const first = await checkpointer.sign(tenant);
  t.same([first.firstSequence, first.sequence, first.hash, first.keyId], [1n, 5n, hashes[4], key.keyId]);
  const between = new Date();
  hashes.slice(5).forEach((h, i) => checkpointer.append(tenant, BigInt(i + 6), h));
  t.same(checkpointer.due(Date.now() + 1, 0), [tenant], "due once its oldest hash is intervalMs old");
  const second = await checkpointer.sign(tenant);
  t.same([second.firstSequence, second.sequence], [6n, 7n]);
  t.same(checkpointer.due(Date.now() + 1, 0), [], "nothing left pending");

  const stored = await storedCheckpoints(tenant);
  t.same(bytesOf(stored), bytesOf([first, second]), "the table holds exactly what was signed");
  t.same(bytesOf(await published(tenant)), bytesOf([first, second]), "and so does the stream");
  const fromBetween: AuditCheckpoint[] = [];
  for await (const cp of publishedCheckpoints(js, topology, tenant, between)) fromBetween.push(cp);
  t.same(bytesOf(fromBetween), bytesOf([second]), "read from a start time, the stream gives only what was published since");
  const keys = await trustedPublicKeys(db, kek);
  const verdict = await verifyStored(tenant, keys);
  t.same([verdict.intact, verdict.checkpointsVerified, verdict.unsignedCount], [true, 2n, 0n]);

  const flipped = stored.map((cp) => create(AuditCheckpointSchema, cp));
  flipped[1].eventHashes[3] ^= 1;
  const broken = await verifyStored(tenant, keys, flipped);
  t.same([broken.intact, broken.firstBrokenSequence, broken.breakKind], [false, 6n, AuditChainBreak.CHECKPOINT_MISMATCH]);
  t.match(broken.reason, /signature .* does not verify/);
  await t.rejects(db.query("UPDATE audit_checkpoints SET hash = 'x' WHERE tenant_id = $1", [tenant]), /append-only/);
});

void t.test("checkpointer - a stale holder's overlapping checkpoint is refused (first_sequence must follow the last stored); signing goes through the session given", async (t) => {
  const tenant = randomUUID();
  const key = await loadAuditSigningKey({ db, keyEncryptionKey: kek });
  const hashes = await storeEvents(tenant, 7);
  let sessionUses = 0;
  const lockConnection = await db.connect();
  t.teardown(() => lockConnection.release());
  const session = async <T>(work: (q: typeof lockConnection) => Promise<T>) => {
    sessionUses++;
    return work(lockConnection);
  };
  const current = createCheckpointer({ db, js, topology, key, log, session });
  const stale = createCheckpointer({ db, js, topology, key, log });
  hashes.slice(0, 5).forEach((h, i) => current.append(tenant, BigInt(i + 1), h));
  hashes.forEach((h, i) => stale.append(tenant, BigInt(i + 1), h));
  const first = await current.sign(tenant);
  t.same([first.firstSequence, first.sequence], [1n, 5n]);
  t.equal(sessionUses, 1, "the insert ran on the session the store passed");
  const refused = await stale.sign(tenant);
  t.same([refused.firstSequence, refused.sequence], [1n, 5n], "the stale 1..7 is refused; the stored checkpoint stands");
  t.same((await storedCheckpoints(tenant)).map((cp) => [cp.firstSequence, cp.sequence]), [[1n, 5n]], "no overlapping checkpoint stored");
  const resumed = await stale.sign(tenant);
  t.same([resumed.firstSequence, resumed.sequence], [6n, 7n], "it re-reads the table and signs what follows");
  const verdict = await verifyStored(tenant, await trustedPublicKeys(db, kek));
  t.same([verdict.intact, verdict.checkpointsVerified, verdict.unsignedCount], [true, 2n, 0n], verdict.reason);
});

void t.test("checkpointer - after a restart it signs, from audit_events, what the previous one left unsigned", async (t) => {
  const tenant = randomUUID();
  const key = await loadAuditSigningKey({ db, keyEncryptionKey: kek });
  const hashes = await storeEvents(tenant, 9);
  const before = createCheckpointer({ db, js, topology, key, log });
  hashes.slice(0, 4).forEach((h, i) => before.append(tenant, BigInt(i + 1), h));
  await before.sign(tenant);
  hashes.slice(4).forEach((h, i) => before.append(tenant, BigInt(i + 5), h));
  // ...and the process dies before signing 5..9.
  const after = createCheckpointer({ db, js, topology, key, log });
  await after.resume(tenant);
  t.same(after.due(Date.now(), 60_000), [tenant], "the resumed hashes are due at once");
  const cp = await after.sign(tenant);
  t.same([cp.firstSequence, cp.sequence, cp.hash], [5n, 9n, hashes[8]]);
  const verdict = await verifyStored(tenant, await trustedPublicKeys(db, kek));
  t.same([verdict.intact, verdict.verifiedCount, verdict.checkpointsVerified], [true, 9n, 2n]);

  // A checkpointer that never resumed a tenant re-reads it before signing rather than sign a gap.
  const cold = createCheckpointer({ db, js, topology, key, log });
  const more = await storeEventsAfter(tenant, hashes[8], 10, 2);
  cold.append(tenant, 11n, more[1]);
  t.same(cold.due(Date.now(), 60_000), [tenant]);
  const next = await cold.sign(tenant);
  t.same([next.firstSequence, next.sequence], [10n, 11n]);
});

void t.test("checkpointer - a row removed from the unsigned tail before a restart is signed as missing, and reported so", async (t) => {
  const tenant = randomUUID();
  const key = await loadAuditSigningKey({ db, keyEncryptionKey: kek });
  const hashes = await storeEvents(tenant, 6);
  const before = createCheckpointer({ db, js, topology, key, log });
  hashes.slice(0, 2).forEach((h, i) => before.append(tenant, BigInt(i + 1), h));
  await before.sign(tenant);
  // A superuser, while no store runs, removes sequence 4 (the triggers disabled for the session).
  const client = await db.connect();
  try {
    await client.query("SET session_replication_role = replica");
    await client.query("DELETE FROM audit_events WHERE tenant_id = $1 AND sequence = 4", [tenant]);
  } finally {
    await client.query("RESET session_replication_role");
    client.release();
  }
  const after = createCheckpointer({ db, js, topology, key, log });
  await after.resume(tenant);
  const cp = await after.sign(tenant);
  t.same([cp.firstSequence, cp.sequence], [3n, 6n], "signed through the gap: sequence 4 by the hash sequence 5 links to");
  t.equal(Buffer.from(cp.eventHashes.subarray(32, 64)).toString("hex"), hashes[3]);
  const verdict = await verifyStored(tenant, await trustedPublicKeys(db, kek));
  t.same([verdict.intact, verdict.firstBrokenSequence, verdict.breakKind], [false, 4n, AuditChainBreak.MISSING]);
});

void t.test("checkpointer - a checkpoint the stream missed is published when the stream is back", async (t) => {
  const tenant = randomUUID();
  const key = await loadAuditSigningKey({ db, keyEncryptionKey: kek });
  const checkpointer = createCheckpointer({ db, js, topology, key, log });
  const hashes = await storeEvents(tenant, 3);
  await jsm.streams.delete(topology.checkpointsStream);
  hashes.forEach((h, i) => checkpointer.append(tenant, BigInt(i + 1), h));
  const cp = await checkpointer.sign(tenant);
  t.same(bytesOf(await storedCheckpoints(tenant)), bytesOf([cp]), "stored though not published");
  await provisionAuditTopology(topology, jsm, limits);
  t.same(checkpointer.due(Date.now() + 1, 0), [tenant], "due again to be republished");
  await checkpointer.sign(tenant);
  t.same(bytesOf(await published(tenant)), bytesOf([cp]));

  // The stream lost everything (a new server, say): a restarted store republishes from the table.
  await jsm.streams.delete(topology.checkpointsStream);
  await provisionAuditTopology(topology, jsm, limits);
  await createCheckpointer({ db, js, topology, key, log }).resume(tenant);
  t.same(bytesOf(await published(tenant)), bytesOf([cp]));
});

/** Stores `n` more events of a tenant after the one whose hash is `prev`, from sequence `from`. */
async function storeEventsAfter(tenant: string, prev: string, from: number, n: number): Promise<string[]> {
  const rows: AuditEventRow[] = [];
  for (let i = 0; i < n; i++) {
    const event = create(AuditEventSchema, { name: `auditEvents/${randomUUID()}`, tenant, action: "jobmesh.v1.JobService.ListJobs", eventTime: timestampFromDate(new Date()) });
    const row = rowOfEvent(event, { tenantId: tenant, eventId: event.name.slice("auditEvents/".length), arrivalUs: 0n });
    row.sequence = String(from + i);
    row.prev_hash = prev;
    row.hash = prev = chainHashOf(prev, eventOfRow(row));
    rows.push(row);
  }
  await db.query("SELECT audit_events_partition($1::uuid, $2::timestamptz)", [tenant, isoOfMicros(BigInt(rows[0].event_time_us))]);
  await insertAuditEventRows(db, rows);
  return rows.map((r) => r.hash);
}
