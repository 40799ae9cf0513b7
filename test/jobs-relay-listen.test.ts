/**
 * The outbox relay's LISTEN connection can break (Postgres restarted, the backend terminated):
 * the process must survive it (a pg client with no 'error' listener crashes it) and the relay
 * must listen again.
 */
import t from "tap";
import pg from "pg";
import { createOutboxRelay } from "../internal/outbox/index.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const { db, bus, log, telemetry } = mesh.infra;

/** The backends of this test's database that are LISTENing to the outbox channel. */
async function listeners(): Promise<number[]> {
  const admin = new pg.Client({ connectionString: mesh.isolated.databaseUrl });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()`,
    );
    return rows.map((r) => r.pid);
  } finally {
    await admin.end();
  }
}

async function until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`not ${what} within 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test("relay - a terminated LISTEN connection neither crashes the process nor stops the relay listening", async (t) => {
  const relay = createOutboxRelay({ db, js: bus.js, log, tracer: telemetry.tracer });
  t.teardown(() => relay.stop());
  const first = await until("listening", async () => (await listeners())[0]);
  await db.query("SELECT pg_terminate_backend($1)", [first]);
  const second = await until("listening again", async () => (await listeners()).find((pid) => pid !== first));
  t.not(second, first, "a new connection listens");
  t.pass("the process survived the broken connection");
});
