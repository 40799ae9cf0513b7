/**
 * Postgres: one pg Pool per process, numbered SQL migrations applied at start, tenants.
 */
import pg from "pg";
import { runner } from "node-pg-migrate";
import { join } from "node:path";
import type { Logger } from "../telemetry/index.ts";

export type Pool = pg.Pool;
export type Queryable = pg.Pool | pg.PoolClient;

export interface DbOptions {
  url: string;
  /** Pool size; the default suits a service process on a small machine. */
  max?: number;
  applicationName?: string;
}

export function createPool(options: DbOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.max ?? 10,
    application_name: options.applicationName ?? "jobmesh",
    connectionTimeoutMillis: 5_000,
    // A peer that vanishes without closing (a host lost, a cable pulled) is noticed in about a
    // minute instead of the systems' two hours: this side by TCP keepalives on the socket, the
    // server's side by its own (asked for per connection). The audit store's lock lives on a
    // connection: its holder gone, the lock must go too for a standby to take over.
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    options: "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
  });
  // An idle client losing its connection must not crash the process; the pool replaces it.
  pool.on("error", () => {});
  return pool;
}

const migrationsDir = join(import.meta.dirname, "migrations");

/**
 * Applies pending migrations. node-pg-migrate holds a Postgres advisory lock while it runs, so
 * services starting in parallel against one database are safe: one migrates, the others wait.
 */
export async function migrate(url: string, log: Logger): Promise<void> {
  const applied = await runner({
    databaseUrl: url,
    dir: migrationsDir,
    direction: "up",
    migrationsTable: "schema_migrations",
    // The default, "fail", stopped every process but one when a deployment started them together.
    advisoryLockMode: "wait",
    log: () => {},
    verbose: false,
  });
  if (applied.length > 0) log.info({ migrations: applied.map((m) => m.name) }, "migrations applied");
}

/** Runs `work` in a transaction on one client, rolling back on any error. */
export async function inTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  // A connection lost mid-transaction (Postgres restarted, the backend terminated, the network
  // cut) fails the statement in flight, and so this call; the client then also emits 'error',
  // which, with no listener on a checked-out client, would crash the process. The pool drops
  // the client on release.
  let lost: Error | undefined;
  const onError = (error: Error) => {
    lost = error;
  };
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    const result = await work(client);
    await client.query("COMMIT");
    return result;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  } finally {
    client.removeListener("error", onError);
    client.release(lost);
  }
}

/** Resolves when Postgres answers; the readiness check. */
export async function pingDb(pool: pg.Pool): Promise<void> {
  await pool.query("SELECT 1");
}

/** Creates the tenant with this slug if missing and returns its id. */
export async function ensureTenant(pool: Queryable, slug: string): Promise<string> {
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO tenants (slug, display_name) VALUES ($1, $1)
     ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug
     RETURNING id`,
    [slug],
  );
  return rows[0].id;
}

/** Reads a per-deployment setting written by a migration. */
export async function readSetting(pool: Queryable, key: string): Promise<string> {
  const { rows } = await pool.query<{ value: string }>("SELECT value FROM settings WHERE key = $1", [key]);
  if (rows.length === 0) throw new Error(`setting ${key} is missing; have migrations run?`);
  return rows[0].value;
}
