/**
 * Isolation for tests that share the machine's Postgres, Redis and NATS: each test file gets
 * its own database, its own namespace (JetStream stream/subject prefix and Redis key prefix),
 * and removes them when it ends.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { loadConfig, type Config } from "../../internal/config/index.ts";

export const adminDatabaseUrl = process.env.JOBMESH_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
export const redisUrl = process.env.JOBMESH_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
export const natsUrl = process.env.JOBMESH_TEST_NATS_URL ?? "nats://127.0.0.1:4222";

export interface Isolated {
  /** Unique per test file: database name suffix, namespace, tenant slug. */
  id: string;
  databaseUrl: string;
  namespace: string;
  /** Environment for a child process running a jobmesh binary in this isolation. */
  env: Record<string, string>;
  config: Config;
  drop(): Promise<void>;
}

/** A new empty database on the test server: its URL, and how to drop it (connections and all). */
export async function createDatabase(name: string): Promise<{ url: string; drop(): Promise<void> }> {
  const admin = async (sql: string) => {
    const client = new pg.Client({ connectionString: adminDatabaseUrl });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(adminDatabaseUrl);
  url.pathname = `/${name}`;
  return { url: url.href, drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/**
 * A test file that was killed (its timeout, a CI run stopped half-way) never drops what it made.
 * Its streams keep their max_bytes reserved on the shared JetStream server, and enough of them
 * leave no storage for the next run's streams; its database stays too. So each test process
 * first removes what test namespaces left behind: an id starts with its creation time, and
 * anything older than `staleAfterMs` (four times the longest file's hang guard) is nobody's.
 */
const staleAfterMs = 20 * 60_000;
const testId = /^t([0-9a-z]{8,9})[0-9a-f]{6}$/;
const isStaleId = (id: string) => {
  const match = testId.exec(id);
  return match !== null && Date.now() - parseInt(match[1], 36) > staleAfterMs;
};
let swept: Promise<void> | undefined;

async function sweepStaleIsolations(): Promise<void> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    for await (const name of jsm.streams.names()) {
      const id = /^(?:OBJ_)?jm_(t[0-9a-z]+)_/.exec(name)?.[1];
      if (id && isStaleId(id)) await jsm.streams.delete(name).catch(() => false);
    }
  } finally {
    await nc.close();
  }
  const admin = new pg.Client({ connectionString: adminDatabaseUrl });
  await admin.connect();
  try {
    const { rows } = await admin.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE datname LIKE 'jobmesh\\_t%'`);
    for (const { datname } of rows) {
      if (isStaleId(datname.slice("jobmesh_".length))) await admin.query(`DROP DATABASE IF EXISTS ${datname} WITH (FORCE)`).catch(() => {});
    }
  } finally {
    await admin.end();
  }
}

/** Creates a fresh database and namespace; ports default to 0 (free ports). */
export async function isolate(overrides: Record<string, string> = {}): Promise<Isolated> {
  swept ??= sweepStaleIsolations();
  await swept;
  const id = `t${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
  const database = await createDatabase(`jobmesh_${id}`);
  const env: Record<string, string> = {
    DATABASE_URL: database.url,
    REDIS_URL: redisUrl,
    NATS_URL: natsUrl,
    JOBMESH_NAMESPACE: `jm_${id}`,
    JOBMESH_LOG_LEVEL: "warn",
    JOBMESH_HOST: "127.0.0.1",
    JOBMESH_JOBS_PORT: "0",
    JOBMESH_PIPELINES_PORT: "0",
    JOBMESH_AUTH_PORT: "0",
    JOBMESH_AUDIT_PORT: "0",
    JOBMESH_WEBHOOKS_PORT: "0",
    JOBMESH_GATEWAY_PORT: "0",
    JOBMESH_WORKER_METRICS_PORT: "0",
    // Audit spools are per process on disk: a test's never meets another's.
    JOBMESH_AUDIT_SPOOL_DIR: join(tmpdir(), `jobmesh-audit-spool-${id}`),
    // JetStream reserves every stream's max_bytes on the shared server: test namespaces keep theirs
    // small (the largest object a test stores is about 25 MiB).
    JOBMESH_STREAM_MAX_BYTES: String(64 * 1024 * 1024),
    JOBMESH_BUCKET_MAX_BYTES: String(256 * 1024 * 1024),
    // The audit checkpoints stream defaults to 10 GiB: a few meshes at once would reserve more
    // than the server has ("insufficient storage resources available").
    JOBMESH_AUDIT_CHECKPOINT_STREAM_MAX_BYTES: String(64 * 1024 * 1024),
    ...overrides,
  };
  return {
    id,
    databaseUrl: database.url,
    namespace: env.JOBMESH_NAMESPACE,
    env,
    config: loadConfig(env),
    drop: database.drop,
  };
}
