/**
 * Entry "webhooks" (issue 13): how fast the delivery engine delivers, and how soon after an
 * event an attempt starts.
 *
 * The engine runs in its own process (as cmd/webhooks runs it), against a fresh database and
 * namespace; the receiver is a local HTTP server in this process that answers 200 at once. Four
 * subscriptions of one tenant (each allowed 50 in flight and 1000/s) all receive every event.
 *
 * 1. Event → first attempt: events published at a steady pace (100/s, so 400 deliveries/s) while
 *    the engine runs, after a second's warm-up at that pace; the latency of each delivery is its
 *    request's arrival at the receiver minus the event's JobEvent.event_time (the time of the
 *    state change's commit, set when the event is written).
 * 2. Deliveries/s: a backlog of events is published while no engine runs; a new engine then
 *    starts, and the rate is the deliveries received between the first and the last arrival
 *    (fan-out, claims, signed POSTs and their recording all included).
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
    const warmupSeconds = 1;
    const pacedSeconds = quick ? 2 : 8;
    const teardowns: (() => unknown)[] = [];
    ctx.progress("webhooks: fresh database, namespace and receiver");
    const world: DeliveryWorld = await createDeliveryWorld({ teardown: (fn) => teardowns.unshift(fn) });
    try {
      const receiver = await world.receiver(() => []);
      const hooks = [];
      for (let i = 0; i < subscriptions; i++) hooks.push(await world.subscribe(receiver.url, { maxConcurrency: 50, maxRatePerSecond: 1_000 }));
      const config = { timeoutMs: 5_000 };
      const deliveries = () => receiver.arrivals.length;
      const stopProcess = async (child: ReturnType<typeof world.startProcess>) => {
        child.kill("SIGTERM");
        if (child.exitCode === null) await new Promise((resolve) => child.once("exit", resolve));
      };

      // 1. Latency at a steady pace, on an engine that has run for a second at that pace (its
      //    connections open, its statements prepared): the steady state, not a cold start.
      let engine = world.startProcess(config);
      const pace = async (seconds: number): Promise<JobEvent[]> => {
        const events: JobEvent[] = [];
        const start = performance.now();
        for (let i = 0; i < pacedPerSecond * seconds; i++) {
          const wait = start + (i * 1000) / pacedPerSecond - performance.now();
          if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
          events.push(await world.publish());
        }
        return events;
      };
      ctx.progress(`webhooks: engine started; warming up at ${pacedPerSecond} events/s for ${warmupSeconds} s`);
      const warmup = await pace(warmupSeconds);
      await waitUntil(() => deliveries() >= warmup.length * subscriptions, 60_000);
      ctx.progress(`webhooks: ${pacedPerSecond} events/s for ${pacedSeconds} s, latency from event_time to arrival`);
      const before = deliveries();
      const events = await pace(pacedSeconds);
      await waitUntil(() => deliveries() >= before + events.length * subscriptions, 60_000);
      const eventTime = new Map(events.map((e) => [e.eventId, timestampMs(e.eventTime!)]));
      const latencies = receiver.arrivals.slice(before).map((a) => a.at - eventTime.get(a.id)!).sort((a, b) => a - b);
      const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
      await stopProcess(engine);

      // 2. Throughput on a backlog: published while no engine runs, then drained by a new one.
      ctx.progress(`webhooks: publishing ${backlogEvents} events (${backlogEvents * subscriptions} deliveries) with no engine running`);
      const backlogFrom = deliveries();
      const succeededBefore = await succeeded(world);
      const publishes: Promise<JobEvent>[] = [];
      for (let i = 0; i < backlogEvents; i++) {
        publishes.push(world.publish());
        if (publishes.length >= 200) await Promise.all(publishes.splice(0));
      }
      await Promise.all(publishes);
      const started = Date.now();
      engine = world.startProcess(config);
      ctx.progress("webhooks: engine started; draining the backlog");
      const total = backlogEvents * subscriptions;
      await waitUntil(() => deliveries() >= backlogFrom + total, 180_000);
      const first = receiver.arrivals[backlogFrom].at;
      const last = receiver.arrivals[backlogFrom + total - 1].at;
      const rate = (total - 1) / ((last - first) / 1000);
      await waitUntil(async () => (await succeeded(world)) >= succeededBefore + total, 60_000);
      const recordedMs = Date.now() - started;
      await stopProcess(engine);

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
