/**
 * Job metrics, on the process-wide OpenTelemetry meter (served at /metrics): jobs created and
 * finished by outcome, stage retries, reaped attempts, and queued jobs per stage and priority.
 */
import { metrics, type Counter } from "@opentelemetry/api";
import { JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { Priority } from "../../gen/jobmesh/v1/jobs_pb.js";
import type { Pool } from "../db/index.ts";

interface JobCounters {
  created: Counter;
  finished: Counter;
  retries: Counter;
  reaped: Counter;
}

let counters: JobCounters | undefined;

/** The job counters, created on first use against the global meter provider. */
export function jobCounters(): JobCounters {
  if (!counters) {
    const meter = metrics.getMeter("jobmesh");
    counters = {
      created: meter.createCounter("jobmesh.jobs.created", { description: "Jobs created, by priority" }),
      finished: meter.createCounter("jobmesh.jobs.finished", { description: "Jobs that reached a terminal state, by outcome" }),
      retries: meter.createCounter("jobmesh.stage.retries", { description: "Stage attempts scheduled again after a transient failure, by stage" }),
      reaped: meter.createCounter("jobmesh.stage.reaped", { description: "Stage attempts requeued because their worker stopped heartbeating" }),
    };
  }
  return counters;
}

/** Counts a job reaching `state` when it is terminal. */
export function countFinished(state: JobState): void {
  if (state === JobState.SUCCEEDED || state === JobState.FAILED || state === JobState.CANCELLED) {
    jobCounters().finished.add(1, { outcome: JobState[state].toLowerCase() });
  }
}

/** Registers the queue-depth gauge: queued jobs per next stage and priority, read from Postgres. */
export function registerQueueDepth(db: Pool): void {
  const gauge = metrics.getMeter("jobmesh").createObservableGauge("jobmesh.queue.depth", {
    description: "Jobs waiting for a worker, by the stage they wait for and their priority",
  });
  gauge.addCallback(async (result) => {
    const { rows } = await db.query<{ stage: string | null; priority: Priority; n: number }>(
      `SELECT pipeline_config -> 'stages' -> stage_index ->> 'stage' AS stage, priority, count(*)::int AS n
       FROM jobs WHERE state = $1 GROUP BY 1, 2`,
      [JobState.QUEUED],
    );
    // Every stage and priority is reported, zeros included, so an emptied queue reads 0.
    const depth = new Map<string, number>();
    for (const stage of ["ingest", "detect", "parse", "enrich", "output"]) {
      for (const priority of ["high", "normal", "low"]) depth.set(`${stage}/${priority}`, 0);
    }
    for (const r of rows) {
      const key = `${(r.stage ?? "unknown").replace(/^STAGE_/, "").toLowerCase()}/${(Priority[r.priority] ?? "unknown").toLowerCase()}`;
      depth.set(key, (depth.get(key) ?? 0) + r.n);
    }
    for (const [key, n] of depth) {
      const [stage, priority] = key.split("/");
      result.observe(n, { stage, priority });
    }
  });
}
