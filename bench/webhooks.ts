/**
 * Entry "webhooks" (issue 13): how fast the delivery engine delivers, and how soon after an
 * event an attempt starts.
 *
 * The engine runs in its own process (as cmd/webhooks runs it), against a fresh database and
 * namespace; the receiver is a local HTTP server in this process that answers 200 at once. Four
 * subscriptions of one tenant (each allowed 50 in flight and 1000/s) all receive every event.
 *
 * 1. Deliveries/s: a backlog of events is published while no engine runs; the engine then
 *    starts, and the rate is the deliveries received between the first and the last arrival
 *    (fan-out, claims, signed POSTs and their recording all included).
 * 2. Event → first attempt: events published at a steady pace while the engine runs; the latency
 *    of each delivery is its arrival at the receiver minus the event's JobEvent.event_time (the
 *    time of the state change's commit, set when the event is written).
 */
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { JobEvent } from "../gen/jobmesh/v1/events_pb.js";
import { createDeliveryWorld, type DeliveryWorld } from "../test/support/webhooks-delivery.ts";
import type { BenchEntry } from "./harness.ts";
import { formatTable } from "./table.ts";

const subscriptions = 4;
const target = { rate: 1_000, p99Ms: 50 };

export const webhooksEntry: BenchEntry = {
  name: "webhooks",
  async run(ctx) {
    const quick = ctx.timing.rounds === 1;
    const backlogEvents = quick ? 1_000 : 2_500;
    const pacedPerSecond = 100;
    const pacedSeconds = quick ? 2 : 5;
    const teardowns: (() => unknown)[] = [];
    ctx.progress("webhooks: fresh database, namespace and receiver");
    const world: DeliveryWorld = await createDeliveryWorld({ teardown: (fn) => teardowns.unshift(fn) });
    try {
      const receiver = await world.receiver(() => []);
      const hooks = [];
      for (let i = 0; i < subscriptions; i++) hooks.push(await world.subscribe(receiver.url, { maxConcurrency: 50, maxRatePerSecond: 1_000 }));
      const config = { timeoutMs: 5_000 };
      const deliveries = () => receiver.arrivals.length;

      // 1. Throughput on a backlog.
      ctx.progress(`webhooks: publishing ${backlogEvents} events (${backlogEvents * subscriptions} deliveries) with no engine running`);
      const publishes: Promise<JobEvent>[] = [];
      for (let i = 0; i < backlogEvents; i++) {
        publishes.push(world.publish());
        if (publishes.length >= 200) await Promise.all(publishes.splice(0));
      }
      await Promise.all(publishes);
      const started = Date.now();
      const engine = world.startProcess(config);
      ctx.progress("webhooks: engine started; draining the backlog");
      const total = backlogEvents * subscriptions;
      await waitUntil(() => deliveries() >= total, 180_000);
      const first = receiver.arrivals[0].at;
      const last = receiver.arrivals[total - 1].at;
      const rate = (total - 1) / ((last - first) / 1000);
      await waitUntil(async () => (await succeeded(world)) >= total, 60_000);
      const recordedMs = Date.now() - started;

      // 2. Latency at a steady pace.
      ctx.progress(`webhooks: ${pacedPerSecond} events/s for ${pacedSeconds} s, latency from event_time to arrival`);
      const before = deliveries();
      const events: JobEvent[] = [];
      const pacedStart = performance.now();
      for (let i = 0; i < pacedPerSecond * pacedSeconds; i++) {
        const due = pacedStart + (i * 1000) / pacedPerSecond;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        events.push(await world.publish());
      }
      await waitUntil(() => deliveries() >= before + events.length * subscriptions, 60_000);
      const eventTime = new Map(events.map((e) => [e.eventId, timestampMs(e.eventTime!)]));
      const latencies = receiver.arrivals.slice(before).map((a) => a.at - eventTime.get(a.id)!).sort((a, b) => a - b);
      const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
      engine.kill("SIGTERM");
      await new Promise((resolve) => engine.once("exit", resolve));

      const verdict = (ok: boolean) => (ok ? "meets target" : "BELOW target");
      return formatTable(
        [{ header: "webhooks (engine in its own process, receiver local)" }, { header: "value", align: "right" }, { header: "" }],
        [
          ["deliveries/s (backlog drain)", `${Math.round(rate)}/s`, `${total} deliveries of ${backlogEvents} events to ${subscriptions} subscriptions; all recorded ${(recordedMs / 1000).toFixed(1)} s after start; ${verdict(rate >= target.rate)} (≥${target.rate}/s)`],
          ["event → first attempt, p50", `${pct(50)} ms`, `${latencies.length} deliveries, ${pacedPerSecond} events/s × ${subscriptions} subscriptions`],
          ["event → first attempt, p99", `${pct(99)} ms`, `max ${latencies[latencies.length - 1]} ms; ${verdict(pct(99) <= target.p99Ms)} (≤${target.p99Ms} ms)`],
        ],
      );
    } finally {
      for (const fn of teardowns) await fn();
    }
  },
};

async function succeeded(world: DeliveryWorld): Promise<number> {
  const { rows } = await world.db.query<{ n: number }>("SELECT count(*)::int AS n FROM webhook_deliveries WHERE tenant_id = $1 AND status = 2", [world.tenantId]);
  return rows[0].n;
}

async function waitUntil(condition: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("webhooks bench: timed out");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
