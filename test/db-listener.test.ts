/**
 * listenChannels: notifications arrive; a broken LISTEN connection is replaced and notifications
 * arrive again; ping on a connection that stopped answering (half-open TCP, made here by a
 * loopback proxy that silently drops the bytes of the connections open when it freezes) returns
 * false instead of blocking, and a new connection listens.
 */
import t from "tap";
import pg from "pg";
import { createPool } from "../internal/db/index.ts";
import { listenChannels, type ChannelListener } from "../internal/db/listener.ts";
import { createLogger } from "../internal/telemetry/index.ts";
import { isolate } from "./support/isolation.ts";
import { startPgProxy } from "./support/pg-proxy.ts";

const isolated = await isolate();
t.teardown(() => isolated.drop());
const log = createLogger({ name: "db-listener-test", level: "silent" });
const admin = new pg.Pool({ connectionString: isolated.databaseUrl, max: 2 });
t.teardown(() => admin.end());

async function until<T>(what: string, probe: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`not ${what} within 30 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The backends of this test's database that are LISTENing (their last query was the LISTEN). */
async function listeners(): Promise<number[]> {
  const { rows } = await admin.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()`,
  );
  return rows.map((r) => r.pid);
}

interface Heard {
  notifications: Array<[string, string | undefined]>;
  lost: number;
  listening: number;
}

function start(db: pg.Pool, channels: string[]): { listener: ChannelListener; heard: Heard } {
  const heard: Heard = { notifications: [], lost: 0, listening: 0 };
  const listener = listenChannels(db, channels, {
    log,
    name: "test",
    relistenMs: 100,
    onNotification: (channel, payload) => heard.notifications.push([channel, payload]),
    onLost: () => heard.lost++,
    onListening: () => heard.listening++,
  });
  return { listener, heard };
}

const notify = (channel: string, payload: string) => admin.query("SELECT pg_notify($1, $2)", [channel, payload]);
const heardPayload = (heard: Heard, channel: string, payload: string) =>
  heard.notifications.some(([c, p]) => c === channel && p === payload) || undefined;

t.test("listen - notifications on every channel arrive, empty payloads as undefined", async (t) => {
  const db = createPool({ url: isolated.databaseUrl, max: 2 });
  t.teardown(() => db.end());
  const { listener, heard } = start(db, ["chan_a", "chan_b"]);
  t.teardown(() => listener.stop());
  await listener.started;
  t.ok(listener.isListening(), "listening once started");
  t.equal(heard.listening, 1);
  await notify("chan_a", "one");
  await notify("chan_b", "");
  await notify("chan_other", "ignored");
  await until("heard both", () => heardPayload(heard, "chan_a", "one") && heard.notifications.some(([c, p]) => c === "chan_b" && p === undefined));
  t.ok(await listener.ping(10_000), "ping answers on a healthy connection");
  t.notOk(heard.notifications.some(([c]) => c === "chan_other"), "other channels are not heard");
});

t.test("listen - a terminated connection is replaced and notifications arrive again", async (t) => {
  const db = createPool({ url: isolated.databaseUrl, max: 2 });
  t.teardown(() => db.end());
  const { listener, heard } = start(db, ["chan_term"]);
  t.teardown(() => listener.stop());
  await listener.started;
  const first = await until("listening", async () => (await listeners())[0]);
  await db.query("SELECT pg_terminate_backend($1)", [first]);
  await until("lost", () => heard.lost === 1 || undefined);
  await until("listening again", () => (heard.listening === 2 && listener.isListening()) || undefined);
  t.notOk((await listeners()).includes(first), "the terminated backend is gone");
  await notify("chan_term", "after");
  await until("heard after re-listen", () => heardPayload(heard, "chan_term", "after"));
  t.pass("notifications arrive on the new connection");
});

t.test("ping - a connection that stopped answering gives false within the timeout and is replaced", async (t) => {
  const proxy = await startPgProxy(isolated.databaseUrl);
  t.teardown(() => proxy.close());
  const db = createPool({ url: proxy.url, max: 2 });
  t.teardown(() => db.end());
  const { listener, heard } = start(db, ["chan_ping"]);
  t.teardown(() => listener.stop());
  await listener.started;
  const frozenPid = (await listeners())[0];
  t.ok(await listener.ping(10_000), "answers before the freeze");

  proxy.freeze();
  // Without a time box this would wait for TCP to give up (minutes): the test's hang guard fails it.
  t.equal(await listener.ping(500), false, "a silent connection pings false");
  t.equal(heard.lost, 1, "the silent connection is reported lost");
  t.notOk(listener.isListening(), "not listening until a new connection is");

  await until("listening again", () => (heard.listening === 2 && listener.isListening()) || undefined);
  t.ok(await listener.ping(10_000), "the new connection answers");
  await notify("chan_ping", "after-freeze");
  await until("heard after re-listen", () => heardPayload(heard, "chan_ping", "after-freeze"));
  // The frozen backend still LISTENs on the server (its TCP peer never said goodbye): drop it.
  if (frozenPid !== undefined) await admin.query("SELECT pg_terminate_backend($1)", [frozenPid]);
});

t.test("ping - false when not listening, and stop ends listening", async (t) => {
  const db = createPool({ url: isolated.databaseUrl, max: 2 });
  t.teardown(() => db.end());
  const { listener } = start(db, ["chan_stop"]);
  await listener.started;
  await listener.stop();
  t.notOk(listener.isListening());
  t.equal(await listener.ping(10_000), false);
  await until("no listener left", async () => ((await listeners()).length === 0 ? true : undefined));
});

t.test("listen - a channel name that is not an identifier is refused", async (t) => {
  t.throws(() => listenChannels(admin, ["bad; DROP TABLE x"], { log, onNotification: () => {} }), /invalid channel name/);
});
