// The webhooks process SIGKILLed mid-delivery loses no event: deliveries it had claimed come back
// when their lease runs out, events it had read but not fanned out come back from the stream
// (acknowledged only after their rows committed), and a second process delivers everything.
import t from "tap";
import { once } from "node:events";
import type { JobEvent } from "../gen/jobmesh/v1/events_pb.js";
import { createDeliveryWorld } from "./support/webhooks-delivery.ts";
import { until } from "./support/wait.ts";

t.setTimeout(300_000);
const world = await createDeliveryWorld(t);
const total = 600;

void t.test("kill -9 of the webhooks process mid-delivery - a second process delivers every event, each delivery recorded once", async (t) => {
  let secret = "";
  const receiver = await world.receiver(() => [secret]);
  const hook = await world.subscribe(receiver.url, { maxConcurrency: 20, maxRatePerSecond: 100 });
  secret = hook.secret;
  // Slow enough that the kill finds requests in flight.
  receiver.answer = (_a, res) => void setTimeout(() => res.end("ok"), 30);
  const settings = { timeoutMs: 2_000 };
  const victim = world.startProcess(settings);

  const events: JobEvent[] = [];
  for (let i = 0; i < total / 2; i++) events.push(await world.publish());
  await until(t, "the first process is delivering", () => receiver.arrivals.length >= 40, { timeoutMs: 60_000 });
  victim.kill("SIGKILL");
  await once(victim, "exit");
  const seenAtKill = receiver.arrivals.length;
  t.ok(seenAtKill < total / 2, `killed mid-delivery, after ${seenAtKill} of ${total / 2} requests`);

  // The second half arrives while nobody runs; then a new process takes over.
  for (let i = total / 2; i < total; i++) events.push(await world.publish());
  const survivor = world.startProcess(settings);
  await until(t, "every delivery SUCCEEDED", async () => (await world.statusCounts(hook.id)).succeeded === total, { timeoutMs: 120_000 });
  await until(t, "the fan-out consumer drained", async () => {
    const info = await world.bus.jsm.consumers.info(world.topology.eventsStream, world.topology.webhooksFanoutConsumer);
    return info.num_pending + info.num_ack_pending === 0;
  }, { timeoutMs: 60_000 });

  const missing = events.filter((e) => receiver.countOf(e.eventId) === 0);
  t.same(missing.map((e) => e.eventId), [], "every event reached the receiver");
  t.ok(receiver.arrivals.every((a) => a.verified), "every request verified");
  t.same(await world.statusCounts(hook.id), { succeeded: total }, "one delivery row per event");
  const { rows } = await world.db.query<{ n: number; succeeded: number }>(
    `SELECT count(*)::int AS n, count(*) FILTER (WHERE a.outcome = 1)::int AS succeeded
     FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1`,
    [hook.id],
  );
  t.equal(rows[0].succeeded, total, "one successful attempt recorded per delivery (a lost claim's answer is not recorded twice)");
  const duplicates = receiver.arrivals.length - total;
  t.comment(`${duplicates} request(s) sent again after the kill (at least once: the killed process's answers were never recorded)`);
  t.ok(duplicates <= 20, "resent at most what the killed process had in flight (its concurrency)");

  survivor.kill("SIGTERM");
  const [code] = (await once(survivor, "exit")) as [number | null];
  t.equal(code, 0, "the survivor stops cleanly");
});
