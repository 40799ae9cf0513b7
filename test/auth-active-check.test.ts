/**
 * The identity check behind every call with a token or key: concurrent calls of one principal
 * share one lookup when the answer has expired, so a burst (2,000 WatchJob streams opened at
 * once) costs one Postgres read, not one pool connection per call.
 */
import t from "tap";
import { createActiveCheck } from "../internal/auth/active-check.ts";
import { cacheMacOf } from "../internal/auth/cache-mac.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const { db, cache } = mesh.infra;

function checkWithCountedLoads(kind: string) {
  let loads = 0;
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => (release = r));
  const check = createActiveCheck({
    cache,
    mac: cacheMacOf(db),
    kind,
    maxCacheMs: 5_000,
    async load() {
      loads++;
      await gate;
      const { rows } = await db.query<{ ok: string }>("SELECT 'active' AS ok");
      return { value: rows[0].ok, cacheMs: 5_000 };
    },
  });
  return { check, loads: () => loads, release };
}

t.test("active check - 2,000 concurrent calls of one principal share one lookup", async (t) => {
  const { check, loads, release } = checkWithCountedLoads(`burst-${Date.now()}`);
  const calls = Array.from({ length: 2_000 }, () => check.current("tenant-a", "principal-1"));
  await new Promise((r) => setTimeout(r, 50));
  release();
  const answers = await Promise.all(calls);
  t.ok(answers.every((a) => a === "active"), "every call got the answer");
  t.equal(loads(), 1, "Postgres was read once");
});

t.test("active check - a forget during a lookup is not undone by it", async (t) => {
  const { check, loads, release } = checkWithCountedLoads(`forget-${Date.now()}`);
  const before = check.current("tenant-a", "principal-2");
  await new Promise((r) => setTimeout(r, 20));
  await check.forget("tenant-a", "principal-2");
  const after = check.current("tenant-a", "principal-2");
  release();
  await Promise.all([before, after]);
  t.equal(loads(), 2, "a call after the forget does not join the lookup that started before it");
});
