import { ConfigError, loadConfig, type Config } from "../config/index.ts";
import type { Logger } from "../telemetry/index.ts";

/**
 * Runs `start`, then waits for SIGTERM/SIGINT and runs the stop function it returned: the
 * common life of every binary. A failed start prints one line and exits 1; a second signal
 * during the drain exits at once.
 */
export async function runUntilSignal(log: Logger, start: () => Promise<() => Promise<void>>): Promise<void> {
  let stop: () => Promise<void>;
  try {
    stop = await start();
  } catch (error) {
    log.fatal({ err: error }, "start-up failed");
    console.error(`start-up failed: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  }
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, "shutting down");
    stop().then(
      () => process.exit(0),
      (error: unknown) => {
        log.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}

/** The configuration, or one line naming the bad variable and exit 1: how every binary starts. */
export function loadConfigOrExit(): Config {
  try {
    return loadConfig();
  } catch (error) {
    console.error(error instanceof ConfigError ? error.message : String(error));
    process.exit(1);
  }
}
