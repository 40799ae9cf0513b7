/**
 * The local infrastructure behind `jobmesh up`: use DATABASE_URL, REDIS_URL and NATS_URL
 * where they answer, and start a local Postgres, Redis or NATS for each one that does not,
 * with data under `dataDir` (normally `.jobmesh/` in the repo root).
 */
import { mkdir } from "node:fs/promises";
import type { LocalServer } from "./local-server.ts";
import { startNats } from "./nats.ts";
import { startPostgres } from "./postgres.ts";
import { createProcessGuard, type ProcessGuard } from "./process-guard.ts";
import { isNatsUp, isPostgresUp, isRedisUp } from "./probe.ts";
import { startRedis } from "./redis.ts";

export { isNatsUp, isPostgresUp, isRedisUp } from "./probe.ts";

/** Where to look for running servers, and where to keep the data of the ones we start. */
export interface DevStackOptions {
  /** Parent directory for the data of locally started servers; created if missing. */
  dataDir: string;
  databaseUrl?: string;
  redisUrl?: string;
  natsUrl?: string;
  log: (msg: string, fields?: Record<string, unknown>) => void;
}

/** The URLs to use, and a handle on the servers this process started. */
export interface DevStack {
  databaseUrl: string;
  redisUrl: string;
  natsUrl: string;
  /** Names of the servers started here ("postgres", "redis", "nats"); empty if none. */
  started: string[];
  /** Stops exactly the servers in `started` and waits for them to exit. Safe to call twice. */
  stop(): Promise<void>;
}

interface Need {
  name: string;
  envName: string;
  url: string | undefined;
  isUp: (url: string) => Promise<boolean>;
  start: (guard: ProcessGuard) => Promise<LocalServer>;
}

/**
 * Resolves the three URLs, starting local servers in parallel where needed. If any local
 * server fails to start, the others are stopped again and the error is thrown (one line).
 */
export async function startDevStack(opts: DevStackOptions): Promise<DevStack> {
  const { dataDir, log } = opts;
  const needs: Need[] = [
    { name: "postgres", envName: "DATABASE_URL", url: opts.databaseUrl, isUp: isPostgresUp, start: (g) => startPostgres(dataDir, g, log) },
    { name: "redis", envName: "REDIS_URL", url: opts.redisUrl, isUp: isRedisUp, start: (g) => startRedis(dataDir, g) },
    { name: "nats", envName: "NATS_URL", url: opts.natsUrl, isUp: isNatsUp, start: (g) => startNats(dataDir, g) },
  ];
  await mkdir(dataDir, { recursive: true });
  const guard = createProcessGuard();

  const results = await Promise.allSettled(
    needs.map(async (need): Promise<{ url: string; server?: LocalServer }> => {
      if (need.url !== undefined) {
        if (await need.isUp(need.url)) {
          log(`using ${need.name} from ${need.envName}`, { url: redact(need.url) });
          return { url: need.url };
        }
        log(`${need.envName} does not answer; starting a local ${need.name}`, { url: redact(need.url) });
      } else {
        log(`${need.envName} is not set; starting a local ${need.name}`);
      }
      const began = Date.now();
      const server = await need.start(guard);
      log(`started local ${need.name}`, { url: redact(server.url), ms: Date.now() - began });
      return { url: server.url, server };
    }),
  );

  const servers = results.flatMap((r) => (r.status === "fulfilled" && r.value.server ? [r.value.server] : []));
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      await Promise.allSettled(servers.map((s) => s.stop()));
      guard.close();
    })();
    return stopping;
  };

  const failures = results.flatMap((r) => (r.status === "rejected" ? [r.reason as Error] : []));
  if (failures.length > 0) {
    await stop();
    // Still one line when several fail, say both redis-server and nats-server are missing.
    if (failures.length === 1) throw failures[0];
    throw new Error(failures.map((e) => e.message).join("; "), { cause: new AggregateError(failures) });
  }
  const [db, redis, nats] = results.map((r) => (r as PromiseFulfilledResult<{ url: string }>).value.url);
  return {
    databaseUrl: db!,
    redisUrl: redis!,
    natsUrl: nats!,
    started: servers.map((s) => s.name),
    stop,
  };
}

/** Hides the password in a URL before it goes to the log. */
function redact(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparsable URL)";
  }
}
