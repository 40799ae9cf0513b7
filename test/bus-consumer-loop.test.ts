import t from "tap";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JsMsg } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { randomBytes } from "node:crypto";
import { runDurableConsumer } from "../internal/bus/consumer-loop.ts";
import { createLogger } from "../internal/telemetry/index.ts";
import { natsUrl } from "./support/isolation.ts";
import { until, waitFor } from "./support/wait.ts";

t.setTimeout(300_000);
// Named like an isolation's namespace, so a killed run's stream is swept by the next one.
const ns = `jm_t${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
const stream = `${ns}_loop`;
const nc = await connect({ servers: natsUrl });
const js = jetstream(nc);
const jsm = await jetstreamManager(nc);
const log = createLogger({ name: "test", level: "fatal" });
await jsm.streams.add({ name: stream, subjects: [`${ns}.loop.>`], retention: RetentionPolicy.Limits, storage: StorageType.Memory, max_bytes: 16 * 1024 * 1024 });
t.teardown(async () => {
  await jsm.streams.delete(stream).catch(() => false);
  await nc.close();
});

let consumers = 0;
/** A fresh durable consumer on its own subject, with `count` messages published to it ("m0", "m1", …). */
async function consumerWith(count: number, bodies: (i: number) => string = (i) => `m${i}`, ackWaitMs = 120_000): Promise<{ name: string; subject: string }> {
  const name = `c${++consumers}`;
  const subject = `${ns}.loop.${name}`;
  // A long ack_wait: a redelivery in these tests comes from the loop's nak, never from a timeout.
  await jsm.consumers.add(stream, { durable_name: name, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, filter_subject: subject, ack_wait: ackWaitMs * 1_000_000 });
  for (let i = 0; i < count; i++) await js.publish(subject, new TextEncoder().encode(bodies(i)));
  return { name, subject };
}

/** A promise and its resolver: a handler that waits on it holds its batch. */
function gate(): { opened: Promise<void>; open(): void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

const text = (msg: JsMsg) => new TextDecoder().decode(msg.data);

t.test("a batch is acknowledged only after handle resolves", async (t) => {
  const { name } = await consumerWith(5);
  const stop = new AbortController();
  const held = gate();
  const seen: string[] = [];
  const run = runDurableConsumer({ js, stream, consumer: name, log, signal: stop.signal, handle: async (batch) => {
    seen.push(...batch.map(text));
    await held.opened;
  } });
  // The first batch is whatever had arrived when the loop woke: one message or all five.
  await until(t, "a batch in hand", () => seen.length > 0);
  const during = await jsm.consumers.info(stream, name);
  t.ok(during.num_ack_pending >= seen.length, "the batch in hand is not acknowledged while handle runs");
  t.equal(during.ack_floor.stream_seq, 0, "nothing acknowledged yet");
  held.open();
  await until(t, "the batch acknowledged", async () => (await jsm.consumers.info(stream, name)).num_ack_pending === 0);
  t.equal((await jsm.consumers.info(stream, name)).num_redelivered, 0, "nothing redelivered");
  stop.abort();
  await run;
  t.same(seen, ["m0", "m1", "m2", "m3", "m4"]);
});

t.test("a batch whose handle failed is redelivered, then acknowledged", async (t) => {
  const { name } = await consumerWith(3);
  const stop = new AbortController();
  const failed: string[] = [];
  const handled: { body: string; deliveries: number }[] = [];
  const run = runDurableConsumer({ js, stream, consumer: name, log, signal: stop.signal, handle: async (batch) => {
    if (failed.length === 0) {
      failed.push(...batch.map(text));
      throw new Error("Postgres is away");
    }
    handled.push(...batch.map((msg) => ({ body: text(msg), deliveries: msg.info.deliveryCount })));
  } });
  await until(t, "the three messages handled", () => handled.length >= 3);
  t.same(handled.map((h) => h.body).sort(), ["m0", "m1", "m2"], "each handled once");
  for (const body of failed) t.equal(handled.find((h) => h.body === body)?.deliveries, 2, `${body}, in the failed batch, handled on its second delivery`);
  await until(t, "every message acknowledged", async () => (await jsm.consumers.info(stream, name)).ack_floor.stream_seq >= 3 && (await jsm.consumers.info(stream, name)).num_ack_pending === 0);
  stop.abort();
  await run;
});

t.test("a message terminated by handle is not retried, and the others are acknowledged", async (t) => {
  const { name, subject } = await consumerWith(3, (i) => (i === 1 ? "poison" : `m${i}`));
  const stop = new AbortController();
  const seen: string[] = [];
  const run = runDurableConsumer({ js, stream, consumer: name, log, signal: stop.signal, handle: async (batch) => {
    for (const msg of batch) {
      seen.push(text(msg));
      if (text(msg) === "poison") msg.term();
    }
  } });
  await until(t, "the three messages seen", () => seen.length >= 3);
  // One more after them: once it is handled, a redelivered poison message would have come first.
  await js.publish(subject, new TextEncoder().encode("after"));
  await until(t, "the later message handled", () => seen.includes("after"));
  await until(t, "all acknowledged", async () => (await jsm.consumers.info(stream, name)).num_ack_pending === 0);
  t.same(seen, ["m0", "poison", "m2", "after"], "the poison message is seen once");
  stop.abort();
  await run;
});

t.test("stop finishes the batch in hand and gives the rest back", async (t) => {
  // 30 s, not 120: a message the server had already sent to the stopped reader's pull comes back
  // only after the ack_wait, and this test waits for it (the batch in hand is acked long before).
  const { name } = await consumerWith(3, undefined, 30_000);
  const stop = new AbortController();
  const held = gate();
  const seen: string[] = [];
  let firstSeq: number | undefined;
  let stopped = false;
  const run = runDurableConsumer({ js, stream, consumer: name, log, signal: stop.signal, maxMessages: 1, handle: async (batch) => {
    seen.push(...batch.map(text));
    firstSeq ??= batch[0].seq;
    await held.opened;
  } }).then(() => (stopped = true));
  await until(t, "the first message in hand", () => seen.length === 1);
  // The other two are read ahead (or still on the server): either way not handled by this run.
  await waitFor(t, "the rest delivered to the loop", async () => (await jsm.consumers.info(stream, name)).num_pending === 0);
  stop.abort();
  await Promise.resolve();
  t.notOk(stopped, "the loop waits for the batch in hand");
  held.open();
  await run;
  t.same(seen, ["m0"], "nothing handled after the stop");
  // An ack is a message to the server, not a request: polled for.
  await until(t, "the batch in hand acknowledged", async () => (await jsm.consumers.info(stream, name)).ack_floor.stream_seq === firstSeq);
  // The rest goes to the next reader (nak'ed; one the server had already sent to the stopped
  // reader's pull comes back after the ack_wait at worst). At least once: a repeat is allowed.
  const next = new AbortController();
  const again: string[] = [];
  const rerun = runDurableConsumer({ js, stream, consumer: name, log, signal: next.signal, handle: async (batch) => void again.push(...batch.map(text)) });
  await until(t, "the rest handled by the next reader", () => again.includes("m1") && again.includes("m2"), { timeoutMs: 90_000 });
  t.same([...new Set(again)].sort(), ["m1", "m2"], "the rest, and only it");
  next.abort();
  await rerun;
});

t.test("with concurrency 2, a second batch is handled while the first is held, a third waits, and stop waits for both", async (t) => {
  const { name } = await consumerWith(3);
  const stop = new AbortController();
  const gates = new Map<string, ReturnType<typeof gate>>();
  const started: string[] = [];
  let stopped = false;
  const run = runDurableConsumer({ js, stream, consumer: name, log, signal: stop.signal, maxMessages: 1, concurrency: 2, handle: async (batch) => {
    const body = text(batch[0]);
    started.push(body);
    const held = gate();
    gates.set(body, held);
    await held.opened;
  } }).then(() => (stopped = true));
  await until(t, "two batches in hand at once", () => started.length === 2);
  t.same(started, ["m0", "m1"]);
  await waitFor(t, "the third read ahead", async () => (await jsm.consumers.info(stream, name)).num_pending === 0);
  t.equal(started.length, 2, "the third waits while two are in hand");
  gates.get("m1")!.open();
  await until(t, "the third handled once the second finished", () => started.length === 3);
  t.same(started, ["m0", "m1", "m2"]);
  stop.abort();
  await Promise.resolve();
  t.notOk(stopped, "stop waits for the batches in hand");
  gates.get("m0")!.open();
  gates.get("m2")!.open();
  await run;
  await until(t, "all three acknowledged", async () => (await jsm.consumers.info(stream, name)).num_ack_pending === 0);
  t.equal((await jsm.consumers.info(stream, name)).num_redelivered, 0, "nothing redelivered");
});
