/**
 * Probes that answer "is a server listening and speaking its protocol at this URL?".
 * Each one settles within PROBE_TIMEOUT_MS and never throws: a refused port, a bad URL
 * and a wrong password all mean "not up".
 */
import pg from "pg";
import { Redis } from "ioredis";
import { connect } from "@nats-io/transport-node";

/** Upper bound for one probe; the brief for `jobmesh up` allows at most 1.5 s. */
export const PROBE_TIMEOUT_MS = 1_500;
// The clients' own timeouts fire first, so they tear down their sockets themselves before
// the outer timer gives up on them.
const CLIENT_TIMEOUT_MS = PROBE_TIMEOUT_MS - 300;

/** True when `SELECT 1` succeeds against the Postgres at `url`. */
export async function isPostgresUp(url: string): Promise<boolean> {
  let client: pg.Client;
  try {
    client = new pg.Client({ connectionString: url, connectionTimeoutMillis: CLIENT_TIMEOUT_MS });
  } catch {
    return false;
  }
  client.on("error", () => {});
  const check = (async () => {
    await client.connect();
    await client.query("SELECT 1");
    return true;
  })();
  const up = await withTimeout(check);
  client.end().catch(() => {});
  return up;
}

/** True when the Redis at `url` answers PING. */
export async function isRedisUp(url: string): Promise<boolean> {
  let redis: Redis;
  try {
    redis = new Redis(url, {
      lazyConnect: true,
      connectTimeout: CLIENT_TIMEOUT_MS,
      commandTimeout: CLIENT_TIMEOUT_MS,
      // One attempt only: ioredis would otherwise reconnect and queue commands forever.
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
    });
  } catch {
    return false;
  }
  redis.on("error", () => {});
  const check = (async () => {
    await redis.connect();
    return (await redis.ping()) === "PONG";
  })();
  const up = await withTimeout(check);
  // After a refused connect the socket is gone; disconnect() would then wait out a 2 s
  // timer for a 'close' that never comes, holding the process open.
  if (redis.status !== "end") redis.disconnect();
  return up;
}

/** True when a NATS client can connect to `url`. */
export async function isNatsUp(url: string): Promise<boolean> {
  let connecting;
  try {
    connecting = connect({ servers: url, timeout: CLIENT_TIMEOUT_MS, reconnect: false });
  } catch {
    return false;
  }
  // Close even a connection that arrives after the timeout, or it would hold the process open.
  const check = connecting.then(async (nc) => {
    await nc.close();
    return true;
  });
  return withTimeout(check);
}

/**
 * Polls `probe` until it answers, `gaveUp` settles (say, the server process exited), or
 * `timeoutMs` passes; the last two reject with an error naming `what`.
 */
export async function waitUntilUp(
  what: string,
  probe: () => Promise<boolean>,
  timeoutMs: number,
  gaveUp?: Promise<string>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let reason: string | undefined;
  gaveUp?.then((r) => (reason = r), () => {});
  while (reason === undefined) {
    if (await probe()) return;
    if (Date.now() >= deadline) throw new Error(`${what} did not answer within ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${what} stopped before it answered: ${reason}`);
}

async function withTimeout(check: Promise<boolean>): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), PROBE_TIMEOUT_MS);
  });
  try {
    return await Promise.race([check.catch(() => false), late]);
  } finally {
    clearTimeout(timer);
  }
}
