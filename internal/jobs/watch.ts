/**
 * WatchJob: the job's stored events after a sequence, then new ones as they are committed.
 * Postgres (job_events) is the source of truth, so a resumed watch has no gaps or repeats; the
 * events stream only wakes a watching stream early.
 *
 * One watcher per process serves every WatchJob stream. It holds one core NATS subscription per
 * tenant that has a stream open (not one per stream), decodes each event once, and wakes only the
 * streams that watch that event's job: a stream whose job has no events costs no queries. A
 * missed wake-up (a NATS reconnect, an event published before the subscription reached the
 * server) is caught by one shared safety poll that reads the watched jobs' last sequences in one
 * query and wakes only the streams that are behind.
 *
 * Each caller (tenant and subject) may hold a bounded number of open streams in this process.
 * Counted per process, not across replicas: what a stream costs (a registration, a socket's
 * buffers, a wake-up's queries) is this process's, so the limit protects exactly the process
 * that pays, needs no round trip to open a stream, and cannot leak counts when a replica dies.
 */
import { fromBinary } from "@bufbuild/protobuf";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { type JobEvent, JobEventSchema, JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import type { Pool } from "../db/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { JobNotFoundError, WatchStreamLimitError } from "./errors.ts";
import { isTerminal, jobIdOf, selectJob } from "./store.ts";
import type { Topology } from "../bus/topology.ts";

const terminalEvents = new Set([JobEventType.JOB_SUCCEEDED, JobEventType.JOB_FAILED, JobEventType.JOB_CANCELLED]);
/** The safety poll's period: only a missed wake-up waits this long. */
const defaultSafetyPollMs = 5_000;
/** How long a new tenant subscription waits to reach the server before its first stream reads. */
const flushWaitMs = 2_000;

export interface JobWatcherOptions {
  db: Pool;
  nc: NatsConnection;
  topology: Topology;
  log: Logger;
  /** Open WatchJob streams one caller may hold in this process. */
  maxStreamsPerCaller: number;
  safetyPollMs?: number;
}

/** Who opens a stream: the limit is per tenant and subject (a user or an API key). */
export interface Watcher {
  tenantId: string;
  subject: string;
}

export interface JobWatcher {
  /** The job's events after `afterSequence`, live until its (latest) end or `signal` aborts. */
  watch(caller: Watcher, name: string, afterSequence: bigint, signal: AbortSignal): AsyncGenerator<JobEvent>;
  /** Streams open now in this process, and the NATS subscriptions that feed them (one per watched tenant). */
  stats(): { streams: number; subscriptions: number };
  close(): Promise<void>;
}

/** One open stream, as the fan-out sees it. */
interface Registration {
  tenantId: string;
  jobId: string;
  /** The last sequence the stream has read. */
  last: bigint;
  /** Set by a wake-up; cleared before the stream reads, so a wake-up between read and wait counts. */
  dirty: boolean;
  wake?: () => void;
}

interface TenantFeed {
  sub: Subscription;
  /** Resolves once the subscription has reached the server. */
  ready: Promise<void>;
  jobs: Map<string, Set<Registration>>;
}

export function createJobWatcher(options: JobWatcherOptions): JobWatcher {
  const { db, nc, topology, log } = options;
  const feeds = new Map<string, TenantFeed>();
  const perCaller = new Map<string, number>();
  let open = 0;

  function wake(reg: Registration) {
    reg.dirty = true;
    reg.wake?.();
  }

  function feedOf(tenantId: string): TenantFeed {
    let feed = feeds.get(tenantId);
    if (feed) return feed;
    const jobs = new Map<string, Set<Registration>>();
    const sub = nc.subscribe(topology.tenantEventsSubject(tenantId), {
      callback: (error, msg) => {
        if (error) return;
        let event: JobEvent;
        try {
          event = fromBinary(JobEventSchema, msg.data);
        } catch {
          return; // Not a JobEvent: nothing of ours to wake.
        }
        const regs = jobs.get(jobIdOf(event.job) ?? "");
        if (!regs) return;
        for (const reg of regs) if (event.sequence > reg.last) wake(reg);
      },
    });
    // A stream's first read may come before the server knows the subscription; the flush makes
    // an event committed after that read reach us (the safety poll covers a failed flush).
    // A disconnected client flushes only once it reconnects: the stream does not wait for that.
    const ready = Promise.race([nc.flush().catch(() => {}), new Promise<void>((resolve) => setTimeout(resolve, flushWaitMs).unref())]);
    feed = { sub, ready, jobs };
    feeds.set(tenantId, feed);
    return feed;
  }

  function register(reg: Registration): Promise<void> {
    const feed = feedOf(reg.tenantId);
    let regs = feed.jobs.get(reg.jobId);
    if (!regs) feed.jobs.set(reg.jobId, (regs = new Set()));
    regs.add(reg);
    return feed.ready;
  }

  function unregister(reg: Registration) {
    const feed = feeds.get(reg.tenantId);
    const regs = feed?.jobs.get(reg.jobId);
    if (!feed || !regs) return;
    regs.delete(reg);
    if (regs.size === 0) feed.jobs.delete(reg.jobId);
    if (feed.jobs.size === 0) {
      feed.sub.unsubscribe();
      feeds.delete(reg.tenantId);
    }
  }

  /** One query for every watched job: wakes the streams behind their job's last event. */
  async function safetyPoll(): Promise<void> {
    const tenants: string[] = [];
    const ids: string[] = [];
    for (const [tenantId, feed] of feeds) {
      for (const jobId of feed.jobs.keys()) {
        tenants.push(tenantId);
        ids.push(jobId);
      }
    }
    if (ids.length === 0) return;
    const { rows } = await db.query<{ tenant_id: string; id: string; event_seq: string }>(
      `SELECT j.tenant_id, j.id, j.event_seq FROM jobs j
       JOIN unnest($1::uuid[], $2::uuid[]) AS w(tenant_id, id) ON j.tenant_id = w.tenant_id AND j.id = w.id`,
      [tenants, ids],
    );
    const seqs = new Map(rows.map((r) => [`${r.tenant_id}/${r.id}`, BigInt(r.event_seq)]));
    tenants.forEach((tenantId, i) => {
      const seq = seqs.get(`${tenantId}/${ids[i]}`);
      // A job that is gone (deleted) wakes its streams too: they end.
      for (const reg of feeds.get(tenantId)?.jobs.get(ids[i]) ?? []) if (seq === undefined || seq > reg.last) wake(reg);
    });
  }

  let polling = false;
  const pollTimer = setInterval(() => {
    if (polling) return;
    polling = true;
    safetyPoll()
      .catch((error: unknown) => log.warn({ err: error }, "watch safety poll failed"))
      .finally(() => (polling = false));
  }, options.safetyPollMs ?? defaultSafetyPollMs);
  pollTimer.unref();

  function acquire(caller: Watcher): () => void {
    const key = `${caller.tenantId}/${caller.subject}`;
    const held = perCaller.get(key) ?? 0;
    if (held >= options.maxStreamsPerCaller) throw new WatchStreamLimitError(options.maxStreamsPerCaller);
    perCaller.set(key, held + 1);
    open++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      open--;
      const left = (perCaller.get(key) ?? 1) - 1;
      if (left > 0) perCaller.set(key, left);
      else perCaller.delete(key);
    };
  }

  async function* watch(caller: Watcher, name: string, afterSequence: bigint, signal: AbortSignal): AsyncGenerator<JobEvent> {
    const release = acquire(caller);
    const { tenantId } = caller;
    const jobId = jobIdOf(name);
    const reg: Registration = { tenantId, jobId: jobId ?? "", last: afterSequence, dirty: true };
    const onAbort = () => wake(reg);
    try {
      if (!jobId || !(await selectJob(db, tenantId, jobId))) throw new JobNotFoundError(name);
      await register(reg);
      signal.addEventListener("abort", onAbort);
      while (!signal.aborted) {
        reg.dirty = false;
        // The state is read before the events: a terminal state commits with its events, so once
        // it is seen here the query below sees them too.
        const job = await selectJob(db, tenantId, jobId);
        const { rows } = await db.query<{ sequence: string; event: Buffer }>(
          `SELECT sequence, event FROM job_events WHERE tenant_id = $1 AND job_id = $2 AND sequence > $3
           ORDER BY sequence LIMIT 500`,
          [tenantId, jobId, reg.last.toString()],
        );
        for (const row of rows) {
          const event = fromBinary(JobEventSchema, row.event);
          yield event;
          reg.last = BigInt(row.sequence);
          // A retried job has an earlier end among its events: only its latest event ends it.
          if (terminalEvents.has(event.type) && job && isTerminal(job.state) && reg.last >= BigInt(job.event_seq)) return;
        }
        if (rows.length > 0) continue;
        if (!job || isTerminal(job.state)) return;
        if (!reg.dirty && !signal.aborted) await new Promise<void>((resolve) => (reg.wake = resolve));
        reg.wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      unregister(reg);
      release();
    }
  }

  return {
    watch,
    stats: () => ({ streams: open, subscriptions: feeds.size }),
    async close() {
      clearInterval(pollTimer);
      for (const feed of feeds.values()) feed.sub.unsubscribe();
      feeds.clear();
    },
  };
}
