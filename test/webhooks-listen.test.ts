/**
 * Review finding 5: the fan-out's sync round trip on the LISTEN connection is time-boxed. When
 * that connection goes silent (half-open TCP: made here by a loopback proxy that drops its
 * bytes), a subscription created meanwhile (its webhooks_changed lost on the silent connection)
 * still gets the next event: the round trip gives up, the batch reads the subscriptions from the
 * database, and a new connection listens. Before the fix the fan-out waited on it for minutes.
 */
import t from "tap";
import { createPool } from "../internal/db/index.ts";
import { startPgProxy } from "./support/pg-proxy.ts";
import { createDeliveryWorld } from "./support/webhooks-delivery.ts";
import { until, waitFor } from "./support/wait.ts";

t.setTimeout(180_000);
const world = await createDeliveryWorld(t);

/** The engine's LISTEN backend: its last query is the LISTEN or the fan-out's round trip. */
async function listenBackend(): Promise<{ pid: number; client_port: number } | undefined> {
  const { rows } = await world.db.query<{ pid: number; client_port: number }>(
    `SELECT pid, client_port FROM pg_stat_activity
     WHERE datname = current_database() AND (query LIKE 'LISTEN %' OR query = 'SELECT 1') AND pid <> pg_backend_pid()`,
  );
  return rows.length === 1 ? rows[0] : undefined;
}

void t.test("fan-out - a silent LISTEN connection does not stall it: a subscription created meanwhile gets the next event", async (t) => {
  const proxy = await startPgProxy(world.isolated.databaseUrl);
  const proxied = createPool({ url: proxy.url, max: 10 });
  t.teardown(async () => {
    await world.reset(); // stops the engine, which uses `proxied`
    await proxied.end();
    await proxy.close();
  });
  const first = await world.receiver(() => []);
  // Both receivers exist before the engine starts: its network policy allows their addresses.
  const second = await world.receiver(() => []);
  await world.subscribe(first.url);
  await world.start({}, { db: proxied });
  const before = await world.publish();
  await until(t, "the first event delivered (the cache is loaded)", () => first.countOf(before.eventId) === 1);

  const backend = await waitFor(t, "the LISTEN backend found", listenBackend);
  t.ok(proxy.freezeClientPort(backend.client_port), "the LISTEN connection goes through the proxy and is silenced");
  await world.subscribe(second.url); // its webhooks_changed is lost on the silent connection
  const after = await world.publish();
  await until(t, "the new subscription got the next event", () => second.countOf(after.eventId) === 1);
  await until(t, "the old one too", () => first.countOf(after.eventId) === 1);
  await until(t, "a new connection listens", async () => {
    const now = await listenBackend();
    return now !== undefined && now.pid !== backend.pid;
  });
  // The silenced backend never hears its client go: end it so the database can be dropped.
  await world.db.query("SELECT pg_terminate_backend($1)", [backend.pid]);
});
