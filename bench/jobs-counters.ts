/**
 * Per-job counters for jobmesh's batches in the jobs entry, read from the servers' own books so
 * that they do not depend on the machine: Postgres statements jobmesh sent, Postgres
 * transactions and rows written in jobmesh's database, WAL written, and JetStream messages stored
 * in the namespace's streams; and the CPU the Postgres and NATS servers spent meanwhile (from
 * /proc: every postgres and nats-server process, so whatever else they served counts too).
 *
 * Statements: pg_stat_statements is not loaded here, so the count comes from the client side:
 * pg's Client.prototype.query is wrapped while the counters run, and a call counts when it is
 * made on a client connected to jobmesh's own database inside a measured window. Everything of
 * jobmesh runs in the bench process, and the peers (pg-boss, Graphile Worker) use databases of
 * their own, so their polling in the same process is not counted.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { readdirSync, readFileSync } from "node:fs";
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
  /** Rows inserted, updated, deleted in jobmesh's database (pg_stat_database tup_*). */
  rows: { inserted: number; updated: number; deleted: number };
  /** WAL the server wrote (pg_current_wal_lsn delta: the whole server, every database). */
  walBytes: number;
  /** CPU of the postgres and nats-server processes, in microseconds (/proc/<pid>/stat). */
  serverCpuUs: { postgres: number; nats: number };
}

export const emptyCounts = (): JobCounts => ({ statements: 0, transactions: 0, messages: new Map(), rows: { inserted: 0, updated: 0, deleted: 0 }, walBytes: 0, serverCpuUs: { postgres: 0, nats: 0 } });

export function addCounts(into: JobCounts, more: JobCounts): void {
  into.statements += more.statements;
  into.transactions += more.transactions;
  into.rows.inserted += more.rows.inserted;
  into.rows.updated += more.rows.updated;
  into.rows.deleted += more.rows.deleted;
  into.walBytes += more.walBytes;
  into.serverCpuUs.postgres += more.serverCpuUs.postgres;
  into.serverCpuUs.nats += more.serverCpuUs.nats;
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

  /** Transactions and rows of jobmesh's database, and the server's WAL position. */
  async function books() {
    const { rows } = await stats.query<{ xacts: string; ins: string; upd: string; del: string; wal: string }>(
      `SELECT xact_commit + xact_rollback AS xacts, tup_inserted AS ins, tup_updated AS upd, tup_deleted AS del,
              pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') AS wal
       FROM pg_stat_database WHERE datname = $1`,
      [database],
    );
    const r = rows[0];
    return { transactions: Number(r.xacts), rows: { inserted: Number(r.ins), updated: Number(r.upd), deleted: Number(r.del) }, wal: Number(r.wal) };
  }

  return {
    async start() {
      if (counting) throw new Error("jobs counters: a window is already open");
      const [before, seqs] = await Promise.all([books(), lastSeqs(jsm, namespace)]);
      const cpuBefore = serverCpu();
      statements = 0;
      counting = true;
      return {
        async end() {
          await new Promise((resolve) => setTimeout(resolve, settleMs));
          const [after, seqsAfter] = await Promise.all([books(), lastSeqs(jsm, namespace)]);
          const cpuAfter = serverCpu();
          counting = false;
          const messages = new Map<string, number>();
          for (const [stream, seq] of seqsAfter) messages.set(stream, seq - (seqs.get(stream) ?? 0));
          return {
            statements,
            transactions: after.transactions - before.transactions,
            messages,
            rows: {
              inserted: after.rows.inserted - before.rows.inserted,
              updated: after.rows.updated - before.rows.updated,
              deleted: after.rows.deleted - before.rows.deleted,
            },
            walBytes: after.wal - before.wal,
            serverCpuUs: cpuBetween(cpuBefore, cpuAfter),
          };
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

/** CPU so far (µs) of every postgres and nats-server process, by pid. */
type ServerCpu = Map<string, { server: "postgres" | "nats"; us: number }>;

/**
 * CPU (user + system) of every postgres and nats-server process on the machine, by pid, from
 * /proc/<pid>/stat (clock ticks; 100 per second on Linux).
 */
function serverCpu(): ServerCpu {
  const found: ServerCpu = new Map();
  const ticksToUs = 1e6 / 100;
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    } catch {
      continue; // ended meanwhile
    }
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const server = name.startsWith("postgres") ? "postgres" : name.startsWith("nats-server") ? "nats" : undefined;
    if (!server) continue;
    // Fields after the name: state is the 1st, utime the 12th, stime the 13th.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    found.set(pid, { server, us: (Number(fields[11]) + Number(fields[12])) * ticksToUs });
  }
  return found;
}

/**
 * What the servers' processes spent between two readings: a process seen in both counts its
 * difference, one started in between all of its CPU; one that ended in between is lost (a lower bound).
 */
function cpuBetween(before: ServerCpu, after: ServerCpu): { postgres: number; nats: number } {
  const spent = { postgres: 0, nats: 0 };
  for (const [pid, now] of after) spent[now.server] += now.us - (before.get(pid)?.us ?? 0);
  return spent;
}
