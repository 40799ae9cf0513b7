/**
 * Job metrics, on the process-wide OpenTelemetry meter (served at /metrics): jobs created and
 * finished by outcome, stage retries, lost and reaped attempts, and waiting stage tasks per stage and
 * priority.
 */
import { metrics, type Counter } from "@opentelemetry/api";
import { JobState } from "../../gen/jobmesh/v1/events_pb.js";
import type { JetStreamManager } from "@nats-io/jetstream";
import { prioritiesInOrder, priorityToken, type Topology } from "../bus/topology.ts";

interface JobCounters {
  created: Counter;
  finished: Counter;
  retries: Counter;
  reaped: Counter;
  losses: Counter;
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
      reaped: meter.createCounter("jobmesh.stage.reaped", { description: "Stage attempts requeued because their worker stopped heartbeating, by stage" }),
      losses: meter.createCounter("jobmesh.stage.losses", { description: "Stage attempts lost with their worker or thread (not the stage's own failures), by stage and code" }),
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

/**
 * Registers the queue-depth gauge: stage tasks waiting in the work stream, per stage and
 * priority, read from the stream's per-subject counts (`<ns>.work.<stage>.<priority>`). It asks
 * JetStream, not Postgres: a count over the jobs table would scan it on every scrape.
 */
export function registerQueueDepth(jsm: JetStreamManager, topology: Topology): void {
  const gauge = metrics.getMeter("jobmesh").createObservableGauge("jobmesh.queue.depth", {
    description: "Stage tasks waiting in the work stream, by stage and priority",
  });
  gauge.addCallback(async (result) => {
    const info = await jsm.streams.info(topology.workStream, { subjects_filter: `${topology.namespace}.work.>` });
    // Every stage and priority is reported, zeros included, so an emptied queue reads 0.
    const depth = new Map<string, number>();
    for (const stage of ["ingest", "detect", "parse", "enrich", "output"]) {
      for (const priority of prioritiesInOrder) depth.set(`${stage}/${priorityToken(priority)}`, 0);
    }
    for (const [subject, n] of Object.entries((info.state.subjects ?? {}) as Record<string, number>)) {
      const [stage, priority] = subject.split(".").slice(-2);
      depth.set(`${stage}/${priority}`, (depth.get(`${stage}/${priority}`) ?? 0) + n);
    }
    for (const [key, n] of depth) {
      const [stage, priority] = key.split("/");
      result.observe(n, { stage, priority });
    }
  });
}
