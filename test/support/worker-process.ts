/**
 * The stage worker as its own process (`node cmd/worker/main.ts`), as a deployment runs it: for
 * tests that kill workers, or read a worker process's own endpoints. It is SIGKILLed when the
 * test ends, if it is still running.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";

interface Teardown {
  teardown(fn: () => void): void;
}

/** Starts a worker process with `env` (the test's isolation and its overrides); its stdout is piped with `pipeStdout`, else dropped. */
export function startWorkerProcess(t: Teardown, env: Record<string, string>, options: { pipeStdout?: boolean } = {}): ChildProcess {
  const child = spawn(process.execPath, [join(import.meta.dirname, "..", "..", "cmd", "worker", "main.ts")], {
    env: { ...process.env, ...env },
    stdio: ["ignore", options.pipeStdout ? "pipe" : "ignore", "inherit"],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  return child;
}
