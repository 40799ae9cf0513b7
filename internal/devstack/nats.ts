/** A local NATS with JetStream: `nats-server` from the PATH, loopback only. */
import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { LocalServer } from "./local-server.ts";
import type { ProcessGuard } from "./process-guard.ts";
import { isNatsUp, waitUntilUp } from "./probe.ts";
import { freePort, spawnServer } from "./server-process.ts";

const READY_TIMEOUT_MS = 10_000;

/**
 * Starts nats-server with JetStream on a free port, storing streams under `dataDir/nats`. Where
 * the server can (2.10 and later) JetStream fsyncs every write before acknowledging it
 * (`sync_interval: always`, as deploy/nats-server.conf); older servers fsync every two minutes,
 * so a machine crash (not a process crash) can lose the last acknowledged messages.
 */
export async function startNats(dataDir: string, guard: ProcessGuard): Promise<LocalServer> {
  const dir = join(dataDir, "nats");
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const args = ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", dir];
  if (await syncsEveryWrite()) {
    const config = join(dir, "nats-server.conf");
    await writeFile(config, `jetstream {\n  store_dir: ${JSON.stringify(dir)}\n  sync_interval: always\n}\n`);
    args.push("-c", config);
  }
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

/** Whether the nats-server on the PATH knows `sync_interval: always`. */
async function syncsEveryWrite(): Promise<boolean> {
  const { stdout } = await promisify(execFile)("nats-server", ["--version"]).catch(() => ({ stdout: "" }));
  return knowsSyncAlways(stdout);
}

/** From `nats-server --version` ("nats-server: v2.9.10"): 2.10 added `sync_interval: always`. */
export function knowsSyncAlways(version: string): boolean {
  const [major, minor] = (/v(\d+)\.(\d+)/.exec(version) ?? []).slice(1).map(Number);
  return major > 2 || (major === 2 && minor >= 10);
}
