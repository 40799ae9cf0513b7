/**
 * WatchJob: the job's stored events after a sequence, then new ones as they are committed.
 * Postgres (job_events) is the source of truth, so a resumed watch has no gaps or repeats; the
 * events stream only wakes the watcher early, and a short poll covers a missed wake-up.
 */
import { fromBinary } from "@bufbuild/protobuf";
import type { NatsConnection } from "@nats-io/transport-node";
import { type JobEvent, JobEventSchema, JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import type { Pool } from "../db/index.ts";
import { JobNotFoundError } from "./errors.ts";
import { isTerminal, jobIdOf, selectJob } from "./store.ts";
import type { Topology } from "./topology.ts";

const terminalEvents = new Set([JobEventType.JOB_SUCCEEDED, JobEventType.JOB_FAILED, JobEventType.JOB_CANCELLED]);
const pollMs = 1000;

export async function* watchJob(
  deps: { db: Pool; nc: NatsConnection; topology: Topology },
  tenantId: string,
  name: string,
  afterSequence: bigint,
  signal: AbortSignal,
): AsyncGenerator<JobEvent> {
  const jobId = jobIdOf(name);
  if (!jobId || !(await selectJob(deps.db, tenantId, jobId))) throw new JobNotFoundError(name);
  let wake: (() => void) | undefined;
  const sub = deps.nc.subscribe(deps.topology.tenantEventsSubject(tenantId), { callback: () => wake?.() });
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  let last = afterSequence;
  try {
    while (!signal.aborted) {
      // The state is read before the events: a terminal state commits with its events, so once
      // it is seen here the query below sees them too.
      const job = await selectJob(deps.db, tenantId, jobId);
      const { rows } = await deps.db.query<{ sequence: string; event: Buffer }>(
        `SELECT sequence, event FROM job_events WHERE tenant_id = $1 AND job_id = $2 AND sequence > $3
         ORDER BY sequence LIMIT 500`,
        [tenantId, jobId, last.toString()],
      );
      for (const row of rows) {
        const event = fromBinary(JobEventSchema, row.event);
        yield event;
        last = BigInt(row.sequence);
        // A retried job has an earlier end among its events: only its latest event ends it.
        if (terminalEvents.has(event.type) && job && isTerminal(job.state) && last >= BigInt(job.event_seq)) return;
      }
      if (rows.length > 0) continue;
      if (!job || isTerminal(job.state)) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, pollMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    sub.unsubscribe();
  }
}
