/**
 * The worker's hot path: claims and successful commits of many stage tasks, each group in ONE
 * statement (no BEGIN/COMMIT round trips, no row locks held across round trips).
 *
 * It is optimistic. A stage task records the job's version when it was queued, and a claimed
 * attempt knows the version its claim left; the statement changes a job only when the version is
 * still that one, and writes the events, the attempt and the next task only for the jobs it
 * changed. Whatever it did not change (a duplicate delivery, a cancel in between, a task queued
 * without a version) goes to the locking path in transitions.ts, which decides as before. Fencing
 * is unchanged: stage_index, stage_attempt and state are checked as well as the version.
 *
 * The rows these statements write to the outbox are published by the caller straight after the
 * statement returns (internal/outbox/publisher.ts); the relay takes them only after its grace period.
 */
import { JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import { countFinished } from "./metrics.ts";
import type { OutboxMessage } from "../outbox/index.ts";
import { changeRows, eventSourceOf, type ChangeRows } from "./outbox.ts";
import { writeJobChanges } from "./change-writer.ts";
import type { StageTask } from "./stage-task.ts";
import { claimStep, nextStageOf, successStep } from "./state-machine.ts";
import type { ResultInsert } from "./results.ts";
import { configOf, jobColumnList, nextStageMaxAttemptSql, type JobRow } from "./store.ts";
import type { Topology } from "../bus/topology.ts";

/** A claimed job: the row after the claim, and the highest attempt its next stage has had. */
export type ClaimedRow = JobRow & { next_max_attempt: number };

/** What a stage reads: the earlier stages' outputs and, for ingest, the inline document. */
export interface StageInputs {
  outputs: Map<Stage, unknown>;
  /** The document as ingest stored it; loaded for the stages that read bytes (detect, parse). */
  ingestBytes: Buffer | null;
  /** The inline document (bytes or text); loaded for ingest. */
  sourceContent: Buffer | null;
  sourceText: string | null;
}

interface InputColumns {
  prior_outputs: Record<string, unknown>;
  ingest_bytes: Buffer | null;
  source_content: Buffer | null;
  source_text: string | null;
}

/**
 * The columns that load a stage's inputs for the job row `j` (with source_content/source_text
 * columns) and the stage `stage` (an SQL expression).
 */
const inputColumnsSql = (j: string, stage: string) => `
  (SELECT coalesce(jsonb_object_agg(o.stage, o.output), '{}'::jsonb) FROM stage_outputs o
   WHERE o.tenant_id = ${j}.tenant_id AND o.job_id = ${j}.id AND o.stage <> ${stage}) AS prior_outputs,
  (SELECT o.bytes FROM stage_outputs o
   WHERE o.tenant_id = ${j}.tenant_id AND o.job_id = ${j}.id AND o.stage = ${Stage.INGEST}
     AND ${stage} IN (${Stage.DETECT}, ${Stage.PARSE})) AS ingest_bytes,
  CASE WHEN ${stage} = ${Stage.INGEST} THEN ${j}.source_content END AS source_content,
  CASE WHEN ${stage} = ${Stage.INGEST} THEN ${j}.source_text END AS source_text`;

function inputsOf(row: InputColumns): StageInputs {
  const outputs = new Map<Stage, unknown>();
  for (const [stage, output] of Object.entries(row.prior_outputs ?? {})) outputs.set(Number(stage) as Stage, output);
  return { outputs, ingestBytes: row.ingest_bytes, sourceContent: row.source_content, sourceText: row.source_text };
}

/** The inputs of a job's stage, read on their own (after a claim on the locking path). */
export async function loadInputs(db: Queryable, tenantId: string, jobId: string, stage: Stage): Promise<StageInputs> {
  const { rows } = await db.query<InputColumns>(
    `SELECT ${inputColumnsSql("j", "$3::smallint")} FROM jobs j WHERE j.tenant_id = $1 AND j.id = $2`,
    [tenantId, jobId, stage],
  );
  return inputsOf(rows[0] ?? { prior_outputs: {}, ingest_bytes: null, source_content: null, source_text: null });
}

/** A stage task to claim, with the trace headers its outbox rows carry. */
export interface ClaimRequest {
  task: StageTask;
  headers: Record<string, string>;
}

export interface Claimed {
  row: ClaimedRow;
  inputs: StageInputs;
  /** The stage_started event, to publish once the statement returned. */
  outbox: OutboxMessage[];
}

/** Whether a task carries what the one-statement claim needs. */
const claimableFast = (task: StageTask) => task.version !== undefined && task.eventSeq !== undefined && task.job !== undefined && task.stage !== undefined;

const prefixed = (alias: string) => jobColumnList.split(",").map((c) => `${alias}.${c.trim()}`).join(", ");

/**
 * Claims every request whose job is still as its task left it, in one statement: the job turns
 * RUNNING, the attempt is recorded, the stage_started event is written. Returns one entry per
 * request, undefined where nothing was claimed (leave that task to claimAttempt).
 */
export async function claimMany(db: Queryable, topology: Topology, requests: ClaimRequest[], workerId: string, graceSeconds: number): Promise<(Claimed | undefined)[]> {
  // One request per job: a second delivery of the same task is left to the locking path.
  const seen = new Set<string>();
  const fast = requests.map((r, i) => ({ r, i })).filter(({ r }) => {
    if (!claimableFast(r.task) || seen.has(r.task.jobId)) return false;
    seen.add(r.task.jobId);
    return true;
  });
  const results: (Claimed | undefined)[] = requests.map(() => undefined);
  if (fast.length === 0) return results;
  const built = fast.map(({ r }) => {
    const task = r.task as Required<StageTask>;
    const source = {
      tenantId: task.tenantId,
      jobId: task.jobId,
      header: task.job,
      stageAt: () => task.stage,
    };
    const step = claimStep(task.stageIndex, task.attempt);
    const rows = changeRows(topology, source, step.state, BigInt(task.eventSeq) + 1n, BigInt(task.version) + 1n, step.events, r.headers);
    return { task, rows };
  });
  const event = (b: (typeof built)[number]) => b.rows.outbox[0];
  // The stage_started event is written (job_events and outbox) only for the jobs this statement claimed.
  const writes = { events: built.map((b) => b.rows.events[0]), outbox: built.map((b) => ({ ...event(b), key: b.task.jobId })) };
  const rows = await writeJobChanges<ClaimedRow & InputColumns>(db, writes, {
    // Named: each connection parses and plans it once.
    name: "jobs-claim-many",
    gate: { from: "claimed", key: "claimed.id" },
    graceSeconds,
    with: `t AS (
       SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::bigint[], $6::smallint[])
         AS t(tenant_id, job_id, stage_index, attempt, version, stage)
     ), claimed AS (
       UPDATE jobs j SET state = $8::smallint, start_time = coalesce(j.start_time, date_trunc('milliseconds', now())),
         event_seq = j.event_seq + 1, version = j.version + 1, update_time = date_trunc('milliseconds', now())
       FROM t
       WHERE j.tenant_id = t.tenant_id AND j.id = t.job_id AND j.stage_index = t.stage_index AND j.stage_attempt = t.attempt
         AND j.state = $9::smallint AND j.version = t.version
       RETURNING ${prefixed("j")}, t.stage AS claimed_stage,
         CASE WHEN t.stage = ${Stage.INGEST} THEN j.source_content END AS source_content,
         CASE WHEN t.stage = ${Stage.INGEST} THEN j.source_text END AS source_text
     ), attempts AS (
       INSERT INTO stage_attempts (tenant_id, job_id, stage_index, attempt, stage, worker_id, outcome)
       SELECT tenant_id, id, stage_index, stage_attempt, claimed_stage, $7, $10::smallint FROM claimed
     )`,
    select: `SELECT ${prefixed("c")},
       ${nextStageMaxAttemptSql("c")} AS next_max_attempt,
       ${inputColumnsSql("c", "c.claimed_stage")}
     FROM claimed c`,
    values: [
      built.map((b) => b.task.tenantId),
      built.map((b) => b.task.jobId),
      built.map((b) => b.task.stageIndex),
      built.map((b) => b.task.attempt),
      built.map((b) => b.task.version),
      built.map((b) => b.task.stage),
      workerId,
      JobState.RUNNING,
      JobState.QUEUED,
      StageAttemptOutcome.RUNNING,
    ],
  });
  const byJob = new Map(rows.map((row) => [row.id, row]));
  fast.forEach(({ i }, k) => {
    const row = byJob.get(built[k].task.jobId);
    if (!row) return;
    const { prior_outputs, ingest_bytes, source_content, source_text, ...jobRow } = row;
    results[i] = { row: jobRow as ClaimedRow, inputs: inputsOf({ prior_outputs, ingest_bytes, source_content, source_text }), outbox: built[k].rows.outbox };
  });
  return results;
}

/** What a finished stage hands on. */
export interface StageCompletion {
  output: unknown;
  bytes?: Uint8Array;
  /** Job columns the stage found out. */
  patch?: { size_bytes?: number; sha256?: string; detected_media_type?: string };
  /** Only for the last stage: the result to store (inline document or object reference). */
  result?: ResultInsert;
}

/** A successful attempt to commit: the task, the row its claim left, and what the stage made. */
export interface CompletionRequest {
  task: StageTask;
  row: ClaimedRow;
  done: StageCompletion;
  headers: Record<string, string>;
  /** The inputs the stage ran on; with `continueAs`, the next stage's inputs are built from them. */
  inputs?: StageInputs;
  /**
   * Claim the next stage for this worker in the same statement instead of queueing its task: the
   * worker runs it at once (see worker.ts). Ignored after the last stage.
   */
  continueAs?: string;
}

/** Stage outputs larger than this go through the locking path, as a plain bytea parameter. */
const fastBytesLimit = 256 * 1024;

/** The rows a successful completion writes, as the state machine says (successStep). */
function completionRows(topology: Topology, c: CompletionRequest, next: { stageIndex: number; attempt: number } | undefined, continued: boolean): ChangeRows {
  const step = successStep(next, c.task.stageIndex, c.task.attempt, continued);
  return changeRows(topology, eventSourceOf(c.row), step.state, BigInt(c.row.event_seq) + 1n, BigInt(c.row.version) + 1n, step.events, c.headers, step.task);
}

export interface Committed {
  /** The outbox rows written, to publish now. */
  outbox: OutboxMessage[];
  /** With `continueAs`: the next stage, claimed for that worker, with its task and inputs. */
  continued?: { task: StageTask; row: ClaimedRow; inputs: StageInputs };
}

/**
 * The next stage's inputs, as a claim would load them: this stage's inputs plus what this stage
 * made (as stored: JSON), without an output the next stage left in an earlier run.
 */
function inputsAfter(c: CompletionRequest, outputJson: string, nextStageIndex: number): StageInputs {
  const stages = configOf(c.row).stages;
  const stage = stages[c.task.stageIndex]!.stage;
  const outputs = new Map(c.inputs?.outputs);
  outputs.set(stage, JSON.parse(outputJson) as unknown);
  outputs.delete(stages[nextStageIndex]!.stage);
  const ingestBytes = stage === Stage.INGEST && c.done.bytes ? Buffer.from(c.done.bytes) : (c.inputs?.ingestBytes ?? null);
  return { outputs, ingestBytes, sourceContent: null, sourceText: null };
}

/**
 * Commits successful attempts whose job is still as their claim left it, in one statement:
 * attempt ended, output stored, job moved on (next stage QUEUED with its task, or RUNNING on the
 * committing worker with `continueAs`, or SUCCEEDED with its result), events written. Returns
 * one entry per request, undefined where nothing was committed (leave that one to completeStage).
 */
export async function completeMany(db: Queryable, topology: Topology, requests: CompletionRequest[], graceSeconds: number): Promise<(Committed | undefined)[]> {
  const results: (Committed | undefined)[] = requests.map(() => undefined);
  const seen = new Set<string>();
  const fast = requests.map((c, i) => ({ c, i })).filter(({ c }) => {
    if ((c.done.bytes?.byteLength ?? 0) > fastBytesLimit || (c.done.result?.inlineJson?.byteLength ?? 0) > fastBytesLimit || seen.has(c.task.jobId)) return false;
    seen.add(c.task.jobId);
    return true;
  });
  if (fast.length === 0) return results;
  const built = fast.map(({ c }) => {
    const next = nextStageOf(c.row, c.task.stageIndex, c.row.next_max_attempt);
    const continued = next !== undefined && c.continueAs !== undefined;
    const rows = completionRows(topology, c, next, continued);
    return { c, next, continued, final: next === undefined, rows, outputJson: JSON.stringify(c.done.output ?? null) };
  });
  const events = built.flatMap((b) => b.rows.events);
  const outbox = built.flatMap((b) => b.rows.outbox.map((o) => ({ ...o, key: b.c.task.jobId })));
  const withResult = built.filter((b) => b.final && b.c.done.result);
  const result = (b: (typeof built)[number]) => b.c.done.result!;
  // The events and next tasks are written (job_events, outbox) only for the jobs this statement committed.
  const rows = await writeJobChanges<{ id: string; version: string; event_seq: string; next_max_attempt: number }>(db, { events, outbox }, {
    name: "jobs-complete-many",
    gate: { from: "done d", key: "d.id" },
    graceSeconds,
    with: `t AS (
       SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::int[], $5::bigint[], $6::smallint[], $7::bool[], $8::int[], $9::int[],
         $10::bigint[], $11::text[], $12::text[], $13::jsonb[], $14::bytea[], $15::int[], $16::timestamptz[], $28::bool[], $29::smallint[], $30::text[])
         AS t(tenant_id, job_id, stage_index, attempt, version, stage, final, next_index, next_attempt,
           size_bytes, sha256, detected_media_type, output, bytes, event_count, result_expire_time, continued, next_stage, continue_as)
     ), done AS (
       UPDATE jobs j SET
         state = CASE WHEN t.final THEN $24::smallint WHEN t.continued THEN $26::smallint ELSE $25::smallint END,
         stage_index = CASE WHEN t.final THEN j.stage_index ELSE t.next_index END,
         stage_attempt = CASE WHEN t.final THEN j.stage_attempt ELSE t.next_attempt END,
         stage_attempt_base = CASE WHEN t.final THEN j.stage_attempt_base ELSE t.next_attempt END,
         size_bytes = coalesce(t.size_bytes, j.size_bytes),
         sha256 = coalesce(t.sha256, j.sha256),
         detected_media_type = coalesce(t.detected_media_type, j.detected_media_type),
         end_time = CASE WHEN t.final THEN date_trunc('milliseconds', now()) ELSE j.end_time END,
         result_expire_time = CASE WHEN t.final THEN t.result_expire_time ELSE j.result_expire_time END,
         error = CASE WHEN t.final THEN NULL ELSE j.error END,
         event_seq = j.event_seq + t.event_count, version = j.version + 1, update_time = date_trunc('milliseconds', now())
       FROM t
       WHERE j.tenant_id = t.tenant_id AND j.id = t.job_id AND j.stage_index = t.stage_index AND j.stage_attempt = t.attempt
         AND j.state = $26::smallint AND j.version = t.version
       RETURNING j.tenant_id, j.id, j.version, j.event_seq, t.stage_index AS done_index, t.attempt AS done_attempt, t.stage AS done_stage,
         t.output, t.bytes, t.continued, t.next_index, t.next_attempt, t.next_stage, t.continue_as,
         ${nextStageMaxAttemptSql("j")} AS next_max_attempt
     ), ended AS (
       UPDATE stage_attempts a SET outcome = $27::smallint, end_time = clock_timestamp(), error = NULL
       FROM done d WHERE a.tenant_id = d.tenant_id AND a.job_id = d.id AND a.stage_index = d.done_index AND a.attempt = d.done_attempt
     ), started AS (
       INSERT INTO stage_attempts (tenant_id, job_id, stage_index, attempt, stage, worker_id, outcome)
       SELECT d.tenant_id, d.id, d.next_index, d.next_attempt, d.next_stage, d.continue_as, $31::smallint FROM done d WHERE d.continued
     ), outputs AS (
       INSERT INTO stage_outputs (tenant_id, job_id, stage, output, bytes)
       SELECT d.tenant_id, d.id, d.done_stage, d.output, d.bytes FROM done d
       ON CONFLICT (tenant_id, job_id, stage) DO UPDATE SET output = EXCLUDED.output, bytes = EXCLUDED.bytes
     ), results AS (
       INSERT INTO job_results (tenant_id, job_id, media_type, summary, inline_json, object_key, size_bytes, sha256, expire_time)
       SELECT d.tenant_id, d.id, 'application/json', r.summary, r.inline_json, r.object_key, r.size_bytes, r.sha256, r.expire_time
       FROM done d JOIN unnest($17::uuid[], $18::jsonb[], $19::bytea[], $20::text[], $21::bigint[], $22::text[], $23::timestamptz[])
         AS r(job_id, summary, inline_json, object_key, size_bytes, sha256, expire_time) ON r.job_id = d.id
       ON CONFLICT (tenant_id, job_id) DO UPDATE SET summary = EXCLUDED.summary, inline_json = EXCLUDED.inline_json,
         object_key = EXCLUDED.object_key, size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256,
         expire_time = EXCLUDED.expire_time, create_time = date_trunc('milliseconds', now())
     )`,
    select: "SELECT id, version, event_seq, next_max_attempt FROM done",
    values: [
      built.map((b) => b.c.task.tenantId),
      built.map((b) => b.c.task.jobId),
      built.map((b) => b.c.task.stageIndex),
      built.map((b) => b.c.task.attempt),
      built.map((b) => b.c.row.version),
      built.map((b) => configOf(b.c.row).stages[b.c.task.stageIndex]?.stage ?? Stage.UNSPECIFIED),
      built.map((b) => b.final),
      built.map((b) => b.next?.stageIndex ?? null),
      built.map((b) => b.next?.attempt ?? null),
      built.map((b) => b.c.done.patch?.size_bytes ?? null),
      built.map((b) => b.c.done.patch?.sha256 ?? null),
      built.map((b) => b.c.done.patch?.detected_media_type ?? null),
      built.map((b) => b.outputJson),
      built.map((b) => (b.c.done.bytes ? Buffer.from(b.c.done.bytes) : null)),
      built.map((b) => b.rows.events.length),
      built.map((b) => (b.final ? (b.c.done.result?.expireTime ?? null) : null)),
      withResult.map((b) => b.c.task.jobId),
      withResult.map((b) => JSON.stringify(result(b).summary)),
      withResult.map((b) => (result(b).inlineJson ? Buffer.from(result(b).inlineJson!) : null)),
      withResult.map((b) => result(b).objectKey ?? null),
      withResult.map((b) => result(b).size),
      withResult.map((b) => result(b).sha256),
      withResult.map((b) => result(b).expireTime),
      JobState.SUCCEEDED,
      JobState.QUEUED,
      JobState.RUNNING,
      StageAttemptOutcome.SUCCEEDED,
      built.map((b) => b.continued),
      built.map((b) => (b.next ? configOf(b.c.row).stages[b.next.stageIndex]!.stage : null)),
      built.map((b) => (b.continued ? b.c.continueAs! : null)),
      StageAttemptOutcome.RUNNING,
    ],
  });
  const committed = new Map(rows.map((r) => [r.id, r]));
  fast.forEach(({ i }, k) => {
    const b = built[k];
    const after = committed.get(b.c.task.jobId);
    if (!after) return;
    if (b.final) countFinished(JobState.SUCCEEDED);
    results[i] = { outbox: b.rows.outbox };
    if (b.continued && b.next) {
      const patch = b.c.done.patch ?? {};
      const row: ClaimedRow = {
        ...b.c.row,
        ...(patch.size_bytes !== undefined && { size_bytes: String(patch.size_bytes) }),
        ...(patch.sha256 !== undefined && { sha256: patch.sha256 }),
        ...(patch.detected_media_type !== undefined && { detected_media_type: patch.detected_media_type }),
        state: JobState.RUNNING,
        stage_index: b.next.stageIndex,
        stage_attempt: b.next.attempt,
        stage_attempt_base: b.next.attempt,
        version: after.version,
        event_seq: after.event_seq,
        next_max_attempt: after.next_max_attempt,
      };
      const task: StageTask = { tenantId: b.c.task.tenantId, jobId: b.c.task.jobId, stageIndex: b.next.stageIndex, attempt: b.next.attempt };
      results[i]!.continued = { task, row, inputs: inputsAfter(b.c, b.outputJson, b.next.stageIndex) };
    }
  });
  return results;
}

