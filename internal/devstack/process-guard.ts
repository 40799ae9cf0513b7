/**
 * Makes sure the servers the dev stack started die with this process, however it ends:
 * a process "exit" handler covers ordinary exits and process.exit(), and a detached
 * watchdog process covers the rest (SIGKILL, an unhandled signal, a crash in native code).
 */
import { spawn, type ChildProcess } from "node:child_process";

/** Tracks server pids and the signal that stops each one. */
export interface ProcessGuard {
  /** Stop `pid` with `signal` if this process ends before {@link forget} is called. */
  watch(pid: number, signal: NodeJS.Signals): void;
  /** The server at `pid` has been stopped on purpose; leave it alone. */
  forget(pid: number): void;
  /** Drop the exit handler and let the watchdog go (it signals any pid still watched). */
  close(): void;
}

// The watchdog learns pids over its stdin. The kernel closes that pipe when this process
// dies for any reason, so 'end' is the one dependable "parent is gone" signal.
const WATCHDOG_SOURCE = `
const pids = new Map();
let buffered = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf("\\n")) >= 0) {
    const [op, pid, signal] = buffered.slice(0, nl).split(" ");
    buffered = buffered.slice(nl + 1);
    if (op === "+") pids.set(Number(pid), signal);
    else pids.delete(Number(pid));
  }
});
const reap = () => {
  for (const [pid, signal] of pids) {
    try { process.kill(pid, signal); } catch {}
  }
  process.exit(0);
};
process.stdin.on("end", reap);
process.stdin.on("error", reap);
`;

/** Creates a guard; the watchdog process starts with the first {@link ProcessGuard.watch}. */
export function createProcessGuard(): ProcessGuard {
  const watched = new Map<number, NodeJS.Signals>();
  let watchdog: ChildProcess | undefined;

  const onExit = () => {
    for (const [pid, signal] of watched) {
      try {
        process.kill(pid, signal);
      } catch {
        // Already gone.
      }
    }
  };
  process.on("exit", onExit);

  const tell = (line: string) => {
    if (!watchdog) {
      // Detached: a terminal Ctrl-C goes to the foreground process group, and the watchdog
      // must outlive that in case this process then hangs and is killed.
      watchdog = spawn(process.execPath, ["-e", WATCHDOG_SOURCE], {
        stdio: ["pipe", "ignore", "ignore"],
        detached: true,
      });
      watchdog.on("error", () => {});
      watchdog.stdin?.on("error", () => {});
      // Neither the watchdog nor its pipe may keep this process alive.
      watchdog.unref();
      (watchdog.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    }
    watchdog.stdin?.write(line + "\n");
  };

  return {
    watch(pid, signal) {
      watched.set(pid, signal);
      tell(`+ ${pid} ${signal}`);
    },
    forget(pid) {
      if (watched.delete(pid) && watchdog) tell(`- ${pid}`);
    },
    close() {
      process.removeListener("exit", onExit);
      watchdog?.stdin?.end();
      watchdog = undefined;
    },
  };
}
