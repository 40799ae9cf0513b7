/**
 * Runs one server binary from the PATH (redis-server, nats-server) as a child process:
 * spawn it, keep the tail of its output for error messages, stop it with SIGTERM.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:net";
import type { ProcessGuard } from "./process-guard.ts";

/** A running server binary. */
export interface ServerProcess {
  pid: number;
  /** Settles with a one-line reason once the process has exited, whoever stopped it. */
  exited: Promise<string>;
  /** SIGTERM, wait for the exit, SIGKILL after `STOP_TIMEOUT_MS`. Safe to call twice. */
  stop(): Promise<void>;
}

/** How long a server gets to shut down cleanly before SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;
/** Characters of output kept for error messages. */
const TAIL_CHARS = 1_000;

/**
 * Spawns `command` and waits until the OS has started it. A missing binary fails with one
 * line naming the apt package that provides it.
 */
export async function spawnServer(
  command: string,
  args: string[],
  aptPackage: string,
  guard: ProcessGuard,
): Promise<ServerProcess> {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  let tail = "";
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString("utf8")).slice(-TAIL_CHARS);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise<string>((resolve) => {
    // 'close', not 'exit': it waits for the output pipes, so the tail holds the last words.
    child.once("close", (code, signal) => {
      resolve(`${command} exited (${signal ?? `code ${code}`}): ${lastLine(tail)}`);
    });
  });

  try {
    await once(child, "spawn");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      throw new Error(`${command} is not on the PATH; install it with: apt-get install ${aptPackage}`);
    }
    throw new Error(`could not start ${command}: ${(err as Error).message}`, { cause: err });
  }
  const pid = child.pid as number;
  guard.watch(pid, "SIGTERM");
  void exited.then(() => guard.forget(pid));

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    })();
    return stopping;
  };
  return { pid, exited, stop };
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  await once(server, "close");
  if (address === null || typeof address === "string") throw new Error("could not find a free port");
  return address.port;
}

function lastLine(text: string): string {
  const lines = text.trim().split("\n");
  return lines[lines.length - 1] ?? "";
}
