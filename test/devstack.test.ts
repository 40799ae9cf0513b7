import t, { type Test } from "tap";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { isNatsUp, isPostgresUp, isRedisUp, startDevStack } from "../internal/devstack/index.ts";

// Loopback ports where nothing listens: every probe is refused at once.
const CLOSED = {
  databaseUrl: "postgres://postgres@127.0.0.1:1/postgres",
  redisUrl: "redis://127.0.0.1:1",
  natsUrl: "nats://127.0.0.1:1",
};
// The servers this machine runs for the rest of the test suite.
const RUNNING = {
  databaseUrl: "postgres://postgres@127.0.0.1:5432/postgres",
  redisUrl: "redis://127.0.0.1:6379",
  natsUrl: "nats://127.0.0.1:4222",
};

async function tempDataDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "jobmesh-devstack-"));
  // A postgres that a watchdog is still stopping may write its last WAL file while the directory
  // goes: retry instead of failing the teardown (ENOTEMPTY).
  t.teardown(() => rm(dir, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 }));
  return dir;
}

async function answers(urls: { databaseUrl: string; redisUrl: string; natsUrl: string }) {
  const [postgres, redis, nats] = await Promise.all([
    isPostgresUp(urls.databaseUrl),
    isRedisUp(urls.redisUrl),
    isNatsUp(urls.natsUrl),
  ]);
  return { postgres, redis, nats };
}

/** Polls until none of the servers answers, for at most `ms`. */
async function untilNoneAnswers(urls: Parameters<typeof answers>[0], ms: number) {
  const deadline = Date.now() + ms;
  for (;;) {
    const up = await answers(urls);
    if ((!up.postgres && !up.redis && !up.nats) || Date.now() > deadline) return up;
    await new Promise((r) => setTimeout(r, 200));
  }
}

t.test("closed URLs - starts postgres, redis and nats locally; stop() takes them down", async (t) => {
  const dataDir = await tempDataDir(t);
  const logged: string[] = [];
  const began = Date.now();
  const stack = await startDevStack({ dataDir, ...CLOSED, log: (msg) => logged.push(msg) });
  t.comment(`started in ${Date.now() - began} ms`);
  t.teardown(() => stack.stop());

  t.same([...stack.started].sort(), ["nats", "postgres", "redis"]);
  t.match(stack.databaseUrl, /^postgres:\/\/postgres:[^@]+@127\.0\.0\.1:\d+\/jobmesh$/);
  t.match(stack.redisUrl, /^redis:\/\/127\.0\.0\.1:\d+$/);
  t.match(stack.natsUrl, /^nats:\/\/127\.0\.0\.1:\d+$/);
  t.ok(logged.includes("DATABASE_URL does not answer; starting a local postgres"), "says why it starts postgres");
  t.same(await answers(stack), { postgres: true, redis: true, nats: true });

  await stack.stop();
  t.same(await answers(stack), { postgres: false, redis: false, nats: false });
  await stack.stop(); // twice is harmless
});

t.test("running servers - uses them as they are and starts nothing", async (t) => {
  t.same(await answers(RUNNING), { postgres: true, redis: true, nats: true }, "this machine runs postgres, redis and nats");
  const stack = await startDevStack({ dataDir: await tempDataDir(t), ...RUNNING, log: () => {} });
  t.same(stack.started, []);
  t.equal(stack.databaseUrl, RUNNING.databaseUrl);
  t.equal(stack.redisUrl, RUNNING.redisUrl);
  t.equal(stack.natsUrl, RUNNING.natsUrl);
  await stack.stop();
  t.same(await answers(RUNNING), { postgres: true, redis: true, nats: true }, "stop() leaves them running");
});

t.test("parent killed with SIGKILL - the servers it started stop too", async (t) => {
  const dataDir = await tempDataDir(t);
  const script = join(dataDir, "parent.ts");
  const index = new URL("../internal/devstack/index.ts", import.meta.url).href;
  await writeFile(
    script,
    `import { startDevStack } from ${JSON.stringify(index)};
const stack = await startDevStack({ dataDir: ${JSON.stringify(dataDir)}, ...${JSON.stringify(CLOSED)}, log: () => {} });
console.log(JSON.stringify(stack));
setInterval(() => {}, 1000);
`,
  );
  const parent = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "inherit"] });
  t.teardown(() => parent.kill("SIGKILL"));
  const [line] = (await once(createInterface({ input: parent.stdout }), "line")) as [string];
  const urls = JSON.parse(line) as Parameters<typeof answers>[0];
  t.same(await answers(urls), { postgres: true, redis: true, nats: true });

  parent.kill("SIGKILL");
  await once(parent, "exit");
  t.same(await untilNoneAnswers(urls, 15_000), { postgres: false, redis: false, nats: false });
});

t.test("missing binary - fails with one line naming the apt package", async (t) => {
  const path = process.env.PATH;
  process.env.PATH = await tempDataDir(t); // an empty directory: no redis-server in it
  t.teardown(() => {
    process.env.PATH = path;
  });
  await t.rejects(
    startDevStack({ dataDir: await tempDataDir(t), ...RUNNING, redisUrl: CLOSED.redisUrl, log: () => {} }),
    { message: "redis-server is not on the PATH; install it with: apt-get install redis-server" },
  );
});
