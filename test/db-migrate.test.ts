// Migrations as a deployment runs them: every process migrates at start, and Kubernetes,
// compose or systemd start them together. One migrates; the others wait for it, then find
// nothing left to do.
import t from "tap";
import pg from "pg";
import { randomBytes } from "node:crypto";
import { migrate } from "../internal/db/index.ts";
import { createLogger } from "../internal/telemetry/index.ts";
import { createDatabase } from "./support/isolation.ts";

t.test("migrate - four processes starting at once on an empty database all come up", async (t) => {
  const database = await createDatabase(`jobmesh_migrate_${randomBytes(4).toString("hex")}`);
  t.teardown(() => database.drop());
  const log = createLogger({ name: "test", level: "silent" });
  const outcomes = await Promise.allSettled([1, 2, 3, 4].map(() => migrate(database.url, log)));
  t.same(outcomes.map((o) => (o.status === "rejected" ? String(o.reason) : "ok")), ["ok", "ok", "ok", "ok"]);
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  t.teardown(() => client.end());
  const { rows } = await client.query<{ name: string; n: number }>("SELECT name, count(*)::int AS n FROM schema_migrations GROUP BY name ORDER BY name");
  t.ok(rows.length >= 4, `${rows.length} migrations applied`);
  t.ok(rows.every((r) => r.n === 1), "each once");
});
