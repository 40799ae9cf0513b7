/** A throwaway local Redis: `redis-server` from the PATH, no persistence, loopback only. */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { LocalServer } from "./local-server.ts";
import type { ProcessGuard } from "./process-guard.ts";
import { isRedisUp, waitUntilUp } from "./probe.ts";
import { freePort, spawnServer } from "./server-process.ts";

const READY_TIMEOUT_MS = 10_000;

/** Starts redis-server on a free port with its working directory under `dataDir/redis`. */
export async function startRedis(dataDir: string, guard: ProcessGuard): Promise<LocalServer> {
  const dir = join(dataDir, "redis");
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir];
  const server = await spawnServer("redis-server", args, "redis-server", guard);
  const url = `redis://127.0.0.1:${port}`;
  try {
    await waitUntilUp(`redis-server on port ${port}`, () => isRedisUp(url), READY_TIMEOUT_MS, server.exited);
  } catch (err) {
    await server.stop();
    throw err;
  }
  return { name: "redis", url, stop: server.stop };
}
