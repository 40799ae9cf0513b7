/**
 * Job rows in Postgres and their protobuf form. Every query takes the tenant.
 */
import { create, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createHash } from "node:crypto";
import { JobErrorSchema, JobState, type JobError } from "../../gen/jobmesh/v1/events_pb.js";
import { type Job, JobSchema, type Priority, SourceKind, StageAttemptOutcome, type StageAttempt } from "../../gen/jobmesh/v1/jobs_pb.js";
import { type PipelineConfig, PipelineConfigSchema, Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";

export interface JobRow {
  tenant_id: string;
  id: string;
  pipeline_id: string;
  pipeline_version: number;
  pipeline_config: JsonValue;
  priority: Priority;
  state: JobState;
  stage_index: number;
  stage_attempt: number;
  stage_attempt_base: number;
  labels: Record<string, string>;
  source_kind: SourceKind;
  source_content: Buffer | null;
  source_text: string | null;
  source_url: string | null;
  source_upload: string | null;
  media_type_hint: string;
  filename: string;
  size_bytes: string | null;
  sha256: string | null;
  detected_media_type: string | null;
  request_id: string | null;
  request_hash: string | null;
  error: JobErrorJson | null;
  trace_id: string;
  traceparent: string;
  event_seq: string;
  version: string;
  create_time: Date;
  update_time: Date;
  start_time: Date | null;
  end_time: Date | null;
  result_expire_time: Date | null;
}

/** A JobError as stored in jsonb. */
export interface JobErrorJson {
  stage: Stage;
  code: string;
  message: string;
  transient: boolean;
}

export interface AttemptRow {
  stage_index: number;
  attempt: number;
  stage: Stage;
  worker_id: string;
  outcome: StageAttemptOutcome;
  start_time: Date;
  end_time: Date | null;
  error: JobErrorJson | null;
}

export const jobNameOf = (id: string) => `jobs/${id}`;
export const pipelineNameOf = (pipelineId: string) => `pipelines/${pipelineId}`;
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The job id in "jobs/{id}" (or "jobs/{id}/result"), or undefined when it cannot be one of ours. */
export function jobIdOf(name: string): string | undefined {
  const id = /^jobs\/([^/]+)(?:\/result)?$/.exec(name)?.[1];
  return id && uuidPattern.test(id) ? id : undefined;
}

export const isTerminal = (state: JobState) =>
  state === JobState.SUCCEEDED || state === JobState.FAILED || state === JobState.CANCELLED;

export function etagOf(row: Pick<JobRow, "id" | "version">): string {
  return createHash("sha256").update(`${row.id}\0${row.version}`).digest("base64url").slice(0, 16);
}

const configCache = new WeakMap<object, PipelineConfig>();
/** Parsed configurations by tenant, pipeline and version: a version never changes. */
const versionConfigs = new Map<string, PipelineConfig>();

/** The snapshotted pipeline configuration of a job. */
export function configOf(row: Pick<JobRow, "pipeline_config"> & Partial<Pick<JobRow, "tenant_id" | "pipeline_id" | "pipeline_version">>): PipelineConfig {
  const key = row.pipeline_config as object;
  let config = configCache.get(key);
  if (config) return config;
  const version = row.tenant_id && row.pipeline_id ? `${row.tenant_id}/${row.pipeline_id}@${row.pipeline_version}` : undefined;
  config = version === undefined ? undefined : versionConfigs.get(version);
  if (!config) {
    config = fromJson(PipelineConfigSchema, row.pipeline_config);
    if (version !== undefined) {
      // Bounded: a process sees a limited set of live pipeline versions; start over past that.
      if (versionConfigs.size >= 10_000) versionConfigs.clear();
      versionConfigs.set(version, config);
    }
  }
  configCache.set(key, config);
  return config;
}

/** The stage at `index` of a job's pipeline (STAGE_UNSPECIFIED past the end). */
export function stageAt(row: Parameters<typeof configOf>[0], index: number): Stage {
  return configOf(row).stages[index]?.stage ?? Stage.UNSPECIFIED;
}

export function jobErrorOf(json: JobErrorJson | null): JobError | undefined {
  return json ? create(JobErrorSchema, json) : undefined;
}

export function toJob(row: JobRow, attempts: AttemptRow[]): Job {
  const stage = row.state === JobState.SUCCEEDED || (row.state === JobState.CANCELLED && row.start_time === null)
    ? Stage.UNSPECIFIED
    : stageAt(row, row.stage_index);
  const document = {
    mediaType: row.media_type_hint,
    filename: row.filename,
    sourceKind: row.source_kind,
    sizeBytes: row.size_bytes ? BigInt(row.size_bytes) : 0n,
    sha256: row.sha256 ?? "",
    detectedMediaType: row.detected_media_type ?? "",
    source:
      row.source_kind === SourceKind.URL ? { case: "url" as const, value: row.source_url ?? "" }
      : row.source_kind === SourceKind.UPLOAD ? { case: "upload" as const, value: `uploads/${row.source_upload}` }
      : { case: undefined },
  };
  return create(JobSchema, {
    name: jobNameOf(row.id),
    pipeline: pipelineNameOf(row.pipeline_id),
    pipelineVersion: row.pipeline_version,
    state: row.state,
    priority: row.priority,
    stage,
    attempts: attempts.map(toAttempt),
    error: row.state === JobState.FAILED ? jobErrorOf(row.error) : undefined,
    document,
    labels: row.labels,
    createTime: timestampFromDate(row.create_time),
    updateTime: timestampFromDate(row.update_time),
    startTime: row.start_time ? timestampFromDate(row.start_time) : undefined,
    endTime: row.end_time ? timestampFromDate(row.end_time) : undefined,
    etag: etagOf(row),
    traceId: row.trace_id,
    resultExpireTime: row.result_expire_time ? timestampFromDate(row.result_expire_time) : undefined,
  });
}

function toAttempt(a: AttemptRow): StageAttempt {
  return {
    $typeName: "jobmesh.v1.StageAttempt",
    stage: a.stage,
    attempt: a.attempt,
    workerId: a.worker_id,
    startTime: timestampFromDate(a.start_time),
    endTime: a.end_time ? timestampFromDate(a.end_time) : undefined,
    outcome: a.outcome,
    error: jobErrorOf(a.error),
  };
}

const jobColumns = `tenant_id, id, pipeline_id, pipeline_version, pipeline_config, priority, state, stage_index,
  stage_attempt, stage_attempt_base, labels, source_kind, source_url, source_upload, media_type_hint, filename,
  size_bytes, sha256, detected_media_type, request_id, request_hash, error, trace_id, traceparent, event_seq,
  version, create_time, update_time, start_time, end_time, result_expire_time`;
/** Columns of a job row without the inline document (which can be megabytes). */
export const jobColumnList = jobColumns;

/**
 * SQL for the highest attempt the stage after the current one has had (0 when none), for the job
 * row `j`: after RetryJob the next stage may have run before, and its attempt numbers continue.
 */
export const nextStageMaxAttemptSql = (j: string) =>
  `(SELECT coalesce(max(a.attempt), 0) FROM stage_attempts a
    WHERE a.tenant_id = ${j}.tenant_id AND a.job_id = ${j}.id AND a.stage_index = ${j}.stage_index + 1)`;

export async function selectJob(db: Queryable, tenantId: string, jobId: string, lock = false): Promise<JobRow | undefined> {
  const { rows } = await db.query<JobRow>(
    `SELECT ${jobColumns} FROM jobs WHERE tenant_id = $1 AND id = $2 ${lock ? "FOR UPDATE" : ""}`,
    [tenantId, jobId],
  );
  return rows[0];
}

export async function selectAttempts(db: Queryable, tenantId: string, jobIds: string[]): Promise<Map<string, AttemptRow[]>> {
  const byJob = new Map<string, AttemptRow[]>();
  if (jobIds.length === 0) return byJob;
  const { rows } = await db.query<AttemptRow & { job_id: string }>(
    `SELECT job_id, stage_index, attempt, stage, worker_id, outcome, start_time, end_time, error
     FROM stage_attempts WHERE tenant_id = $1 AND job_id = ANY($2::uuid[])
     ORDER BY start_time, stage_index, attempt`,
    [tenantId, jobIds],
  );
  for (const row of rows) {
    const list = byJob.get(row.job_id) ?? [];
    list.push(row);
    byJob.set(row.job_id, list);
  }
  return byJob;
}

/** The job with its attempts, as the API returns it. */
export async function loadJob(db: Queryable, tenantId: string, jobId: string): Promise<Job | undefined> {
  const row = await selectJob(db, tenantId, jobId);
  if (!row) return undefined;
  const attempts = await selectAttempts(db, tenantId, [jobId]);
  return toJob(row, attempts.get(jobId) ?? []);
}

/** The highest attempt number recorded for a stage of a job (0 when none). */
export async function maxAttemptOf(db: Queryable, tenantId: string, jobId: string, stageIndex: number): Promise<number> {
  const { rows } = await db.query<{ max: number | null }>(
    "SELECT max(attempt) AS max FROM stage_attempts WHERE tenant_id = $1 AND job_id = $2 AND stage_index = $3",
    [tenantId, jobId, stageIndex],
  );
  return rows[0]?.max ?? 0;
}

export { JobState, StageAttemptOutcome };
