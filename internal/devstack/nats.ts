/** A local NATS with JetStream: `nats-server` from the PATH, loopback only. */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { LocalServer } from "./local-server.ts";
import type { ProcessGuard } from "./process-guard.ts";
import { isNatsUp, waitUntilUp } from "./probe.ts";
import { freePort, spawnServer } from "./server-process.ts";

const READY_TIMEOUT_MS = 10_000;

/** Starts nats-server with JetStream on a free port, storing streams under `dataDir/nats`. */
export async function startNats(dataDir: string, guard: ProcessGuard): Promise<LocalServer> {
  const dir = join(dataDir, "nats");
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const args = ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", dir];
  const server = await spawnServer("nats-server", args, "nats-server", guard);
  const url = `nats://127.0.0.1:${port}`;
  try {
    await waitUntilUp(`nats-server on port ${port}`, () => isNatsUp(url), READY_TIMEOUT_MS, server.exited);
  } catch (err) {
    await server.stop();
    throw err;
  }
  return { name: "nats", url, stop: server.stop };
}
