/**
 * Per-job counters for jobmesh's batches in the jobs entry, read from the servers' own books so
 * that they do not depend on the machine: Postgres statements jobmesh sent, Postgres
 * transactions in jobmesh's database, and JetStream messages stored in the namespace's streams.
 *
 * Statements: pg_stat_statements is not loaded here, so the count comes from the client side:
 * pg's Client.prototype.query is wrapped while the counters run, and a call counts when it is
 * made on a client connected to jobmesh's own database inside a measured window. Everything of
 * jobmesh runs in the bench process, and the peers (pg-boss, Graphile Worker) use databases of
 * their own, so their polling in the same process is not counted.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import pg from "pg";
import { adminDatabaseUrl } from "../test/support/isolation.ts";
import type { TestMesh } from "../test/support/mesh.ts";

export interface JobCounts {
  /** pg Client#query calls on jobmesh's database (BEGIN and COMMIT count; one multi-statement string counts once). */
  statements: number;
  /** xact_commit + xact_rollback of jobmesh's database (pg_stat_database). */
  transactions: number;
  /** Messages stored in the namespace's streams (sum of last_seq deltas), by stream. */
  messages: Map<string, number>;
}

export const emptyCounts = (): JobCounts => ({ statements: 0, transactions: 0, messages: new Map() });

export function addCounts(into: JobCounts, more: JobCounts): void {
  into.statements += more.statements;
  into.transactions += more.transactions;
  for (const [stream, n] of more.messages) into.messages.set(stream, (into.messages.get(stream) ?? 0) + n);
}

export const totalMessages = (counts: JobCounts): number => [...counts.messages.values()].reduce((a, b) => a + b, 0);

/**
 * How long a window stays open after its batch: a Postgres backend flushes its statistics to
 * pg_stat_database at most once a second (PGSTAT_MIN_INTERVAL) and, once idle, within that
 * second. pg_stat_force_next_flush() would flush only the calling backend, not jobmesh's.
 * The relay may also still publish the batch's last events when the client has seen job_succeeded.
 */
export const settleMs = 1500;

export interface CounterWindow {
  /** Waits `settleMs`, then closes the window and returns what was counted in it. */
  end(): Promise<JobCounts>;
}

export interface JobmeshCounters {
  /** Opens a window: counts from now until its end(). One window at a time. */
  start(): Promise<CounterWindow>;
  /** Unwraps pg's query and closes the statistics connection. */
  close(): Promise<void>;
}

type Query = typeof pg.Client.prototype.query;

export async function startJobmeshCounters(mesh: TestMesh): Promise<JobmeshCounters> {
  const database = new URL(mesh.isolated.databaseUrl).pathname.slice(1);
  const namespace = mesh.isolated.namespace;
  const jsm = mesh.infra.bus.jsm;
  // Read from another database, so that these reads are neither jobmesh's transactions nor its statements.
  const stats = new pg.Client({ connectionString: adminDatabaseUrl });
  await stats.connect();

  let counting = false;
  let statements = 0;
  const query: Query = pg.Client.prototype.query;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    if (counting && this.database === database) statements++;
    return (query as (...a: unknown[]) => unknown).apply(this, args);
  } as Query;

  async function transactions(): Promise<number> {
    const { rows } = await stats.query<{ n: string }>("SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1", [database]);
    return Number(rows[0].n);
  }

  return {
    async start() {
      if (counting) throw new Error("jobs counters: a window is already open");
      const [xacts, seqs] = await Promise.all([transactions(), lastSeqs(jsm, namespace)]);
      statements = 0;
      counting = true;
      return {
        async end() {
          await new Promise((resolve) => setTimeout(resolve, settleMs));
          const [xactsAfter, seqsAfter] = await Promise.all([transactions(), lastSeqs(jsm, namespace)]);
          counting = false;
          const messages = new Map<string, number>();
          for (const [stream, seq] of seqsAfter) messages.set(stream, seq - (seqs.get(stream) ?? 0));
          return { statements, transactions: xactsAfter - xacts, messages };
        },
      };
    },
    async close() {
      counting = false;
      pg.Client.prototype.query = query;
      await stats.end();
    },
  };
}

/**
 * last_seq of every stream of the namespace, by its role: "work", "events", "audit", ... and
 * "uploads"/"results" for the object store buckets' streams (OBJ_<ns>_uploads).
 */
async function lastSeqs(jsm: JetStreamManager, namespace: string): Promise<Map<string, number>> {
  const seqs = new Map<string, number>();
  const ours = new RegExp(`^(?:OBJ_|KV_)?${namespace}_(.+)$`);
  for await (const info of jsm.streams.list()) {
    const role = ours.exec(info.config.name)?.[1];
    if (role !== undefined) seqs.set(role, info.state.last_seq);
  }
  return seqs;
}
