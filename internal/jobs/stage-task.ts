/**
 * The work-message contract: the payload of a stage task on the work stream
 * (`<ns>.work.<stage>.<priority>`), JSON. Written with the change that queues the stage (the
 * job's outbox rows), read by the worker that claims it, rebuilt by the reaper for an attempt
 * whose worker died.
 */
import type { Priority } from "../../gen/jobmesh/v1/jobs_pb.js";
import type { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { JobRow } from "./store.ts";

/**
 * What every event of a job repeats, fixed when the job is created. A stage task carries it, so
 * a worker can write the stage_started event in the same statement that claims the attempt.
 */
export interface JobHeader {
  pipelineId: string;
  pipelineVersion: number;
  labels: Record<string, string>;
  traceId: string;
  priority: Priority;
}

export function headerOf(row: JobRow): JobHeader {
  return { pipelineId: row.pipeline_id, pipelineVersion: row.pipeline_version, labels: row.labels, traceId: row.trace_id, priority: row.priority };
}

/** The payload of a stage task on the work stream. */
export interface StageTask {
  tenantId: string;
  jobId: string;
  stageIndex: number;
  attempt: number;
  /**
   * The job as the task left it: its stage, version and last event sequence when the task was
   * queued, and its header. With them a worker claims in one statement, on the condition that
   * the job has not changed since (see fast-path.ts). Absent on tasks the reaper builds.
   */
  stage?: Stage;
  version?: string;
  eventSeq?: string;
  job?: JobHeader;
}
