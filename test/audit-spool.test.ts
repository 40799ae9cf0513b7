// The audit sink against a NATS server of its own (stopped and started again here, so no other
// test notices): events reach the audit stream with their event id as Nats-Msg-Id; with NATS
// gone they go to the spool without the caller waiting; when NATS is back the spool is replayed
// and every event is in the stream once, in the order recorded; a spool left by a closed sink,
// or by a process killed after its flush, is replayed by the next sink on the same path.
import t from "tap";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { AuditEventSchema } from "../gen/jobmesh/v1/audit_pb.js";
import { connectBus } from "../internal/bus/index.ts";
import { createAuditSink, type AuditSink, type AuditSinkLog } from "../internal/audit/sink.ts";
import { openSpool } from "../internal/audit/spool.ts";
import { createAuditTopology, provisionAuditTopology } from "../internal/bus/topology.ts";
import { isNatsUp } from "../internal/devstack/probe.ts";
import { createProcessGuard } from "../internal/devstack/process-guard.ts";
import { freePort, spawnServer, type ServerProcess } from "../internal/devstack/server-process.ts";
import { createLogger } from "../internal/telemetry/index.ts";

const dir = await mkdtemp(join(tmpdir(), "jobmesh-audit-spool-"));
const storeDir = join(dir, "nats");
const port = await freePort();
const url = `nats://127.0.0.1:${port}`;
const guard = createProcessGuard();

async function startNats(): Promise<ServerProcess> {
  const server = await spawnServer("nats-server", ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir], "nats-server", guard);
  await waitFor("nats-server up", () => isNatsUp(url));
  return server;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let nats = await startNats();
const bus = await connectBus({ url, name: "audit-spool-test", log: createLogger({ name: "audit-spool-test", level: "silent" }) });
const topology = createAuditTopology(`jm_spool${Date.now().toString(36)}`);
await provisionAuditTopology(topology, bus.jsm, { streamMaxBytes: 64 * 1024 * 1024 });
const sinks: AuditSink[] = [];
t.teardown(async () => {
  for (const sink of sinks) await sink.close().catch(() => {});
  await bus.close().catch(() => {});
  await nats.stop();
  guard.close();
  await rm(dir, { recursive: true, force: true });
});

const logged: string[] = [];
const log: AuditSinkLog = { warn: (_, message) => logged.push(message), error: (_, message) => logged.push(message) };
async function newSink(file: string): Promise<AuditSink> {
  const sink = await createAuditSink({ nc: bus.nc, js: bus.js, topology, spoolFile: join(dir, file), log });
  sinks.push(sink);
  return sink;
}

const tenants = ["9f1c0d9e-3a52-4f7e-8a0b-5d2c1e4f6a01", "2b7e4a10-8c3d-4e5f-9a6b-7c8d9e0f1a22", ""];
/** Records `count` events (three tenants, one of them unknown) and returns their ids, in order. */
function recordEvents(sink: AuditSink, count: number, label: string): string[] {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const id = randomUUID();
    ids.push(id);
    const returned: unknown = sink.record(eventOf(id, tenants[i % 3], `${label} ${i}`));
    if (returned !== undefined) throw new Error("record() returned something to wait for");
  }
  return ids;
}
const eventOf = (id: string, tenant: string, requestId: string) =>
  create(AuditEventSchema, { name: `auditEvents/${id}`, tenant, action: "jobmesh.v1.JobService.GetJob", requestId, eventTime: timestampFromDate(new Date()) });

/** Every message of the audit stream, in stream order: the event id, the Nats-Msg-Id and the subject. */
async function readStream(stream: string): Promise<{ id: string; msgId: string; subject: string }[]> {
  const total = (await bus.jsm.streams.info(stream)).state.messages;
  const consumer = await bus.js.consumers.get(stream);
  const out: { id: string; msgId: string; subject: string }[] = [];
  const deadline = Date.now() + 60_000;
  while (out.length < total && Date.now() < deadline) {
    for await (const m of await consumer.fetch({ max_messages: total - out.length, expires: 2_000 })) {
      const event = fromBinary(AuditEventSchema, m.data);
      out.push({ id: event.name.slice("auditEvents/".length), msgId: m.headers?.get("Nats-Msg-Id") ?? "", subject: m.subject });
    }
  }
  return out;
}
/** The lines of a dead-letter file. */
async function readDeadLetters(file: string): Promise<{ id: string; reason: string; bytes: number; event?: string }[]> {
  const text = await readFile(file, "utf8");
  return text.split("\n").filter(Boolean).map((line) => JSON.parse(line) as { id: string; reason: string; bytes: number; event?: string });
}

/** The ids of `of` in the order they appear in `stream`. */
const orderIn = (stream: { id: string }[], of: string[]) => {
  const wanted = new Set(of);
  return stream.filter((m) => wanted.has(m.id)).map((m) => m.id);
};

// The steps run one after the other (tap runs a file's tests in order) and share this state.
let sinkA: AuditSink;
let sinkB: AuditSink;
const recordedA: string[] = [];
const recordedB: string[] = [];
const recordedChild = Array.from({ length: 300 }, () => randomUUID());

void t.test("publish - 1000 events are in the stream, each with its event id as Nats-Msg-Id, in the order recorded", async (t) => {
  sinkA = await newSink("a.spool");
  recordedA.push(...recordEvents(sinkA, 1000, "first"));
  await sinkA.flush();
  t.equal(sinkA.spooled, 0, "nothing spooled while NATS takes every event");
  const stream = await readStream(topology.eventsStream);
  t.same(stream.map((m) => m.id), recordedA);
  t.ok(stream.every((m) => m.msgId === m.id), "Nats-Msg-Id = the event id");
  t.same(new Set(stream.map((m) => m.subject)), new Set(tenants.map((tenant) => topology.eventsSubject(tenant))), "each on its tenant's subject");
});

/** A process of its own that records what it is told (with NATS down: into its spool), flushes and says so. */
const childSource = `
import { create } from "@bufbuild/protobuf";
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { createInterface } from "node:readline";
const [url, namespace, spoolFile] = process.argv.slice(1);
const { createAuditSink } = await import(${JSON.stringify(new URL("../internal/audit/sink.ts", import.meta.url).href)});
const { createAuditTopology } = await import(${JSON.stringify(new URL("../internal/bus/topology.ts", import.meta.url).href)});
const { AuditEventSchema } = await import(${JSON.stringify(new URL("../gen/jobmesh/v1/audit_pb.js", import.meta.url).href)});
const nc = await connect({ servers: url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
const log = { warn() {}, error() {} };
const sink = await createAuditSink({ nc, js: jetstream(nc), topology: createAuditTopology(namespace), spoolFile, log });
console.log("ready");
for await (const line of createInterface({ input: process.stdin })) {
  for (const id of JSON.parse(line)) sink.record(create(AuditEventSchema, { name: "auditEvents/" + id, action: "child" }));
  await sink.flush();
  console.log("flushed " + sink.spooled);
}
`;
let child: ChildProcess | undefined;
let childLines: AsyncIterator<string> | undefined;
t.teardown(() => {
  if (child?.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});
async function childSays(prefix: string): Promise<string> {
  for (;;) {
    const { value, done } = await childLines!.next();
    if (done) throw new Error(`the child process ended before it said "${prefix}"`);
    if (value.startsWith(prefix)) return value;
  }
}

void t.test("NATS stopped - record() returns at once, flush() ends with the events in the spool", async (t) => {
  sinkB = await newSink("b.spool");
  child = spawn(process.execPath, ["--input-type=module", "-e", childSource, url, topology.namespace, join(dir, "c.spool")], { stdio: ["pipe", "pipe", "inherit"] });
  childLines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  await childSays("ready");

  // SIGKILLed (no goodbye to its clients) while events are queued and in flight: some are
  // acknowledged, some lost with the socket.
  for (let i = 0; i < 30; i++) {
    if (i === 15) process.kill(nats.pid, "SIGKILL");
    recordedA.push(...recordEvents(sinkA, 100, `racing ${i}`));
    await new Promise((r) => setImmediate(r));
  }
  await nats.exited;
  const racingSpooled = await sinkA.flush().then(() => sinkA.spooled);
  t.comment(`${racingSpooled} of the events in flight when NATS died were spooled`);
  recordedA.push(...recordEvents(sinkA, 250, "down"));
  // Larger than a spool record can be: refused by the spool, kept in the dead letters, not in the way.
  const huge = randomUUID();
  sinkA.record(create(AuditEventSchema, { name: `auditEvents/${huge}`, action: "huge", resource: "x".repeat(5 * 1024 * 1024) }));
  recordedA.push(...recordEvents(sinkA, 250, "down"));
  await sinkA.flush();
  t.equal(sinkA.spooled, racingSpooled + 500, "every event recorded while NATS is down is in the spool, but the one too large for it");
  t.equal(sinkA.deadLettered, 1, "that one is dead-lettered");
  t.same((await readDeadLetters(join(dir, "a.spool.dead"))).map((l) => l.id), [huge], "in the dead-letter file next to the spool");

  recordedB.push(...recordEvents(sinkB, 300, "closed"));
  await sinkB.close();
  t.ok((await readFile(join(dir, "b.spool"))).length > 0, "a closed sink leaves its spool on disk");

  child.stdin!.write(JSON.stringify(recordedChild) + "\n");
  t.equal(await childSays("flushed"), "flushed 300", "the child process spooled its events");
  child.kill("SIGKILL");
  await once(child, "exit");
  t.equal((await readFile(join(dir, "c.spool.lock"), "utf8")).trim(), String(child.pid), "the killed process still holds its lock");
});

void t.test("NATS back - every event is in the stream exactly once, in the order recorded, and the spools are empty", async (t) => {
  nats = await startNats();
  // Recorded while the spool is still being replayed: these go behind it.
  recordedA.push(...recordEvents(sinkA, 200, "back"));
  const sinkB2 = await newSink("b.spool");
  const sinkC2 = await newSink("c.spool");
  await waitFor("every spool replayed", () => sinkA.spooled + sinkB2.spooled + sinkC2.spooled === 0);
  for (const sink of [sinkA, sinkB2, sinkC2]) await sink.flush();

  const stream = await readStream(topology.eventsStream);
  const ids = stream.map((m) => m.id);
  t.equal(ids.length, new Set(ids).size, "no event twice");
  t.same(new Set(ids), new Set([...recordedA, ...recordedB, ...recordedChild]), "every event recorded, nothing else");
  t.same(orderIn(stream, recordedA), recordedA, "the live sink's events in the order recorded, across the outage");
  t.same(orderIn(stream, recordedB), recordedB, "the closed sink's spool replayed in order by the next sink on its path");
  t.same(orderIn(stream, recordedChild), recordedChild, "the killed process's spool replayed in order by the next sink on its path");
  t.ok(stream.every((m) => m.msgId === m.id), "replayed with the same Nats-Msg-Id");
  await sinkC2.close();
  await t.rejects(readFile(join(dir, "c.spool")), "an empty spool is removed at close");
  await t.rejects(readFile(join(dir, "c.spool.lock")), "and its lock released");
});

void t.test("refused and overloaded - a stream that is missing, or a queue past maxQueue, sends events to the spool; they arrive in order", async (t) => {
  // No stream for these subjects yet: JetStream answers "no responders" and the events are spooled.
  const missing = createAuditTopology(`jm_spoolmissing${Date.now().toString(36)}`);
  const refused = await createAuditSink({ nc: bus.nc, js: bus.js, topology: missing, spoolFile: join(dir, "refused.spool"), log });
  sinks.push(refused);
  const refusedIds = recordEvents(refused, 300, "refused");
  await refused.flush();
  t.equal(refused.spooled, 300, "refused events are in the spool");
  await provisionAuditTopology(missing, bus.jsm, { streamMaxBytes: 16 * 1024 * 1024 });
  // Steady traffic meanwhile: it goes behind the spool, and does not hold the replay back.
  await waitFor("the refused events replayed", () => {
    refusedIds.push(...recordEvents(refused, 1, "trickle"));
    return refused.spooled === 0;
  });
  await refused.flush();
  const inMissing = await readStream(missing.eventsStream);
  t.same(inMissing.map((m) => m.id), refusedIds, "once each, in the order recorded, once the stream exists");

  // More queued than maxQueue (NATS too slow to keep up): the queue spills to the spool rather than grow.
  const spilling = await createAuditSink({ nc: bus.nc, js: bus.js, topology, spoolFile: join(dir, "spill.spool"), log, tuning: { maxQueue: 100 } });
  sinks.push(spilling);
  // 350: past maxQueue, within the hard bound (4 × maxQueue) where record() starts dropping.
  const spilledIds = recordEvents(spilling, 350, "spilled");
  await spilling.flush();
  t.equal(spilling.spooled, 350, "the queue past maxQueue went to the spool");
  await waitFor("the spilled events replayed", () => spilling.spooled === 0);
  t.same(orderIn(await readStream(topology.eventsStream), spilledIds), spilledIds, "replayed in the order recorded");
});

void t.test("disk full and no stream - memory stays bounded (drops counted and logged) and close() gives up at its deadline", async (t) => {
  // The spool file is /dev/full: every write fails with ENOSPC. No stream takes these subjects.
  const missing = createAuditTopology(`jm_spoolfull${Date.now().toString(36)}`);
  await symlink("/dev/full", join(dir, "full.spool"));
  const full = await createAuditSink({
    nc: bus.nc, js: bus.js, topology: missing, spoolFile: join(dir, "full.spool"), log, tuning: { maxQueue: 50, maxHeld: 200, retryMs: 100, closeTimeoutMs: 1_000 },
  });
  sinks.push(full);
  recordEvents(full, 10, "before");
  await waitFor("a failed spool write", () => logged.includes("audit sink: cannot write the spool; holding the events in memory"));
  // In bursts, each taken by the pump before the next: the events pile up waiting for the spool.
  for (let burst = 0; burst < 20; burst++) {
    recordEvents(full, 50, `full ${burst}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  t.ok(full.dropped >= 1010 - 200, `at most maxHeld events held, the rest dropped (dropped ${full.dropped})`);
  t.ok(logged.includes("audit sink: event dropped"), "a drop is logged");
  const closing = full.close().then(() => "closed");
  const stuck = new Promise((r) => setTimeout(r, 60_000, "still closing after 60 s").unref());
  t.equal(await Promise.race([closing, stuck]), "closed", "close() ends although nothing can be published or spooled");
  t.equal(full.dropped, 1010, "what close() gave up on is counted as dropped");
  t.ok(logged.includes("audit sink: closed with events neither published nor spooled; they are lost"), "and logged");
});

void t.test("poison - an event NATS can never take (past max_payload, an overlong subject) is dead-lettered; the events behind it are published, nothing waits in the spool", async (t) => {
  const sink = await newSink("poison.spool");
  const before = recordEvents(sink, 5, "before poison");
  const poison = randomUUID();
  sink.record(create(AuditEventSchema, { name: `auditEvents/${poison}`, action: "poison", resource: `jobs/${"a".repeat(2 * 1024 * 1024)}` }));
  const after = recordEvents(sink, 5, "after poison");
  // A subject longer than NATS's control line: published, it would make the server close the connection.
  const longSubject = randomUUID();
  sink.record(create(AuditEventSchema, { name: `auditEvents/${longSubject}`, action: "poison", tenant: "t".repeat(8 * 1024) }));
  const last = recordEvents(sink, 5, "after the long subject");
  await sink.flush();
  t.equal(sink.spooled, 0, "nothing spooled");
  t.equal(sink.deadLettered, 2);
  const published = [...before, ...after, ...last];
  t.same(orderIn(await readStream(topology.eventsStream), published), published, "the events around them are in the stream, in order");
  const [letter, second, ...more] = await readDeadLetters(join(dir, "poison.spool.dead"));
  t.same(more, [], "two dead letters");
  t.equal(second.id, longSubject);
  t.match(second.reason, /control line/);
  t.equal(letter.id, poison);
  t.match(letter.reason, /max_payload/, "it says why");
  const kept = fromBinary(AuditEventSchema, Buffer.from(letter.event!, "base64"));
  t.equal(kept.resource.length, 5 + 2 * 1024 * 1024, "the event is kept whole");
});

void t.test("poison in a spool - the replay dead-letters a record NATS refuses or that is no event, and moves on past it", async (t) => {
  const file = join(dir, "left.spool");
  const [first, last, poison] = [randomUUID(), randomUUID(), randomUUID()];
  const left = await openSpool(file);
  await left.append([
    toBinary(AuditEventSchema, eventOf(first, tenants[0], "left first")),
    toBinary(AuditEventSchema, create(AuditEventSchema, { name: `auditEvents/${poison}`, action: "poison", resource: "b".repeat(2 * 1024 * 1024) })),
    new Uint8Array([0x0a, 0x05, 0x61]), // a string field cut short: not an AuditEvent
    toBinary(AuditEventSchema, eventOf(last, tenants[1], "left last")),
  ]);
  await left.close();
  const sink = await newSink("left.spool");
  await waitFor("the left spool replayed", () => sink.spooled === 0, 30_000);
  t.same(orderIn(await readStream(topology.eventsStream), [first, last]), [first, last], "the events on either side are published, in order");
  const letters = await readDeadLetters(`${file}.dead`);
  t.same(letters.map((l) => l.id ?? null), [poison, null], "the refused event and the record that is no event are dead-lettered");
  t.match(letters[1].reason, /not an AuditEvent/);
  t.equal(sink.deadLettered, 2);
});
