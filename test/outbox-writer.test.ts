// The outbox's one writer on its own: rows written alone or inside a caller's statement, only for
// the rows the caller's change produced, due after their delay and the grace, gone with a
// rollback, and the relay woken on commit when asked.
import t from "tap";
import { randomUUID } from "node:crypto";
import { createPool, inTransaction, migrate } from "../internal/db/index.ts";
import { outboxChannel, writeOutbox, type KeyedOutboxMessage } from "../internal/outbox/index.ts";
import { createLogger } from "../internal/telemetry/index.ts";
import { isolate } from "./support/isolation.ts";

const isolated = await isolate();
await migrate(isolated.databaseUrl, createLogger({ name: "test", level: "warn" }));
const db = createPool({ url: isolated.databaseUrl, max: 4 });
t.teardown(async () => {
  await db.end();
  await isolated.drop();
});

const message = (over: Partial<KeyedOutboxMessage> = {}): KeyedOutboxMessage => ({
  id: randomUUID(),
  subject: "test.outbox",
  payload: Buffer.from("payload"),
  headers: { "Jobmesh-Event-Type": "job_created" },
  delayMs: 0,
  ...over,
});

interface StoredRow {
  id: string;
  subject: string;
  payload: Buffer;
  headers: Record<string, string>;
  /** Seconds from now until the row is due. */
  due_in: number;
}
async function stored(ids: string[]): Promise<Map<string, StoredRow>> {
  const { rows } = await db.query<StoredRow>(
    "SELECT id, subject, payload, headers, extract(epoch FROM available_time - now())::float8 AS due_in FROM outbox WHERE id = ANY($1::uuid[])",
    [ids],
  );
  return new Map(rows.map((r) => [r.id, r]));
}

t.test("writer - a batch written alone: every row as given, due after its delay plus the grace", async (t) => {
  const now = message();
  const delayed = message({ delayMs: 600_000, subject: "test.delayed" });
  const rows = await writeOutbox(db, [now, delayed]);
  t.same(rows, [{}], "without a SELECT of the caller's, the statement returns nothing of its own");
  const got = await stored([now.id, delayed.id]);
  t.equal(got.size, 2);
  t.equal(got.get(now.id)!.subject, "test.outbox");
  t.same(got.get(now.id)!.payload, Buffer.from("payload"));
  t.same(got.get(now.id)!.headers, { "Jobmesh-Event-Type": "job_created" });
  t.ok(got.get(now.id)!.due_in <= 0, "a row without delay is due at once");
  t.ok(got.get(delayed.id)!.due_in > 500, "a delayed row is held back for its delay");

  const graced = message();
  await writeOutbox(db, [graced], { graceSeconds: 600 });
  t.ok((await stored([graced.id])).get(graced.id)!.due_in > 500, "the grace holds a row back from the relay");
});

t.test("writer - inside a caller's statement, a message is written only when the change produced its row", async (t) => {
  const [made, skipped] = [randomUUID(), randomUUID()];
  const messages = [message({ key: made }), message({ key: made }), message({ key: skipped })];
  const rows = await writeOutbox<{ id: string; n: number }>(db, messages, {
    name: "test-outbox-gated",
    with: "made AS (SELECT x AS id FROM unnest($1::uuid[]) AS x WHERE x = ANY($2::uuid[]))",
    select: "SELECT id, $3::int AS n FROM made",
    values: [[made, skipped], [made], 7],
    gate: { from: "made m", key: "m.id" },
  });
  t.same(rows, [{ id: made, n: 7 }], "the caller's SELECT is returned, its parameters numbered first");
  const got = await stored(messages.map((m) => m.id));
  t.same([...got.keys()].sort(), [messages[0].id, messages[1].id].sort(), "only the produced row's messages are in the outbox");

  // The same named statement again: its text must not have changed.
  const again = message({ key: made });
  await writeOutbox(db, [again], {
    name: "test-outbox-gated",
    with: "made AS (SELECT x AS id FROM unnest($1::uuid[]) AS x WHERE x = ANY($2::uuid[]))",
    select: "SELECT id, $3::int AS n FROM made",
    values: [[made], [made], 8],
    gate: { from: "made m", key: "m.id" },
  });
  t.equal((await stored([again.id])).size, 1);
});

t.test("writer - rows written in a transaction that rolls back are gone", async (t) => {
  const m = message();
  await t.rejects(inTransaction(db, async (tx) => {
    await writeOutbox(tx, [m]);
    throw new Error("change rolled back");
  }), { message: "change rolled back" });
  t.equal((await stored([m.id])).size, 0);
});

t.test("writer - with notify, the commit wakes a LISTENing relay", async (t) => {
  const listener = await db.connect();
  let woken = 0;
  listener.on("notification", (n) => {
    if (n.channel === outboxChannel) woken++;
  });
  await listener.query(`LISTEN ${outboxChannel}`);
  t.teardown(async () => {
    await listener.query(`UNLISTEN ${outboxChannel}`);
    listener.release();
  });
  await writeOutbox(db, [message()]);
  const rows = await writeOutbox<{ a: number }>(db, [message()], { with: "one AS (SELECT 1 AS a)", select: "SELECT a FROM one", notify: true });
  t.equal(rows[0].a, 1, "the caller's rows come back with the NOTIFY");
  const deadline = Date.now() + 30_000;
  while (woken === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.equal(woken, 1, "one NOTIFY: the write without notify woke nobody");
});
