import t from "tap";
import { randomBytes } from "node:crypto";
import { headers } from "@nats-io/transport-node";
import { RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { connectBus, ensureStream } from "../internal/bus/index.ts";
import { createLogger } from "../internal/telemetry/index.ts";
import { natsUrl } from "./support/isolation.ts";

// A stream of this file's own on the shared NATS server.
const ns = `jm_pub_${randomBytes(4).toString("hex")}`;
const bus = await connectBus({ url: natsUrl, name: "bus-publisher-test", log: createLogger({ name: "test", level: "silent" }) });
await ensureStream(bus.jsm, { name: `${ns}_s`, subjects: [`${ns}.s.>`], retention: RetentionPolicy.Limits, storage: StorageType.Memory, duplicate_window: 60 * 1_000_000_000 });
t.teardown(async () => {
  await bus.jsm.streams.delete(`${ns}_s`).catch(() => false);
  await bus.close();
});

const withId = (id: string) => {
  const h = headers();
  h.set("Nats-Msg-Id", id);
  return h;
};

t.test("stream publisher - resolves once stored; a repeated Nats-Msg-Id is stored once", async (t) => {
  const payload = new TextEncoder().encode("hello");
  await Promise.all(Array.from({ length: 50 }, (_, i) => bus.streams.publish(`${ns}.s.a`, payload, withId(`m${i}`))));
  await bus.streams.publish(`${ns}.s.a`, payload, withId("m7"));
  const info = await bus.jsm.streams.info(`${ns}_s`);
  t.equal(info.state.messages, 50, "fifty messages, the duplicate dropped");
  const first = await bus.jsm.streams.getMessage(`${ns}_s`, { seq: 1 });
  t.equal(first?.header.get("Nats-Msg-Id"), "m0", "stored in the order published");
});

t.test("stream publisher - a subject no stream stores is an error, not a silent loss", async (t) => {
  await t.rejects(bus.streams.publish(`${ns}.nowhere`, new Uint8Array(1), withId("x")), /no stream/);
});
