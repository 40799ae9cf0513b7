/**
 * Turning a CreateJobRequest into a queued job: pipeline snapshot, document checks (size limit,
 * literal private URLs, known upload), request_id idempotency. Everything is checked before
 * anything is written, so a batch is all or nothing.
 */
import { toBinary, type JsonValue } from "@bufbuild/protobuf";
import { context, propagation, trace } from "@opentelemetry/api";
import { createHash, randomUUID } from "node:crypto";
import { isIP } from "node:net";
import { JobEventType, JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { type CreateJobRequest, DocumentSchema, Priority, SourceKind } from "../../gen/jobmesh/v1/jobs_pb.js";
import { type Pipeline, PipelineConfigSchema, PipelineState } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { toJson } from "@bufbuild/protobuf";
import type { Queryable } from "../db/index.ts";
import type { PipelineDomain } from "../pipelines/pipelines.ts";
import { isForbiddenAddress } from "../stages/index.ts";
import { DocumentTooLargeError, ForbiddenUrlError, JobRequestIdReusedError, PipelineUnavailableError, UploadNotFoundError } from "./errors.ts";
import type { OutboxMessage } from "../outbox/index.ts";
import { writeJobChanges } from "./change-writer.ts";
import { applyChange, changeRows } from "./outbox.ts";
import { jobColumnList, jobNameOf, stageAt, type JobRow } from "./store.ts";
import type { Topology } from "../bus/topology.ts";

export const defaultPipelineName = "pipelines/document-default";

/** A checked request, ready to insert. */
export interface PreparedJob {
  requestId: string | null;
  requestHash: string;
  pipelineId: string;
  pipelineVersion: number;
  pipelineConfig: JsonValue;
  priority: Priority;
  labels: Record<string, string>;
  sourceKind: SourceKind;
  content: Uint8Array | null;
  text: string | null;
  url: string | null;
  upload: string | null;
  mediaTypeHint: string;
  filename: string;
}

export interface PrepareDeps {
  db: Queryable;
  pipelines: Pick<PipelineDomain, "get">;
  maxDocumentBytes: number;
  allowLoopbackFetch: boolean;
}

/** A digest of everything a create request asks for: same request_id + same digest = same job. */
function requestHashOf(req: CreateJobRequest): string {
  const job = req.job!;
  const labels = Object.entries(job.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const hash = createHash("sha256");
  hash.update(JSON.stringify([job.pipeline || defaultPipelineName, job.pipelineVersion, job.priority || Priority.NORMAL, labels]));
  hash.update(toBinary(DocumentSchema, job.document!));
  return hash.digest("hex");
}

function checkUrl(raw: string, allowLoopback: boolean) {
  const host = new URL(raw).hostname.replace(/^\[(.*)\]$/, "$1");
  if (isIP(host) !== 0 && isForbiddenAddress(host, { allowLoopback })) throw new ForbiddenUrlError(host);
}

/** A pipeline version's configuration as stored with each job: one JSON form per Pipeline. */
const configJson = new WeakMap<Pipeline, JsonValue>();
function configJsonOf(pipeline: Pipeline): JsonValue {
  let json = configJson.get(pipeline);
  if (!json) configJson.set(pipeline, (json = toJson(PipelineConfigSchema, pipeline.config!)));
  return json;
}

export async function prepareJob(tenantId: string, req: CreateJobRequest, deps: PrepareDeps): Promise<PreparedJob> {
  const job = req.job!;
  const doc = job.document!;
  const pipeline = await deps.pipelines.get(tenantId, job.pipeline || defaultPipelineName, job.pipelineVersion);
  if (pipeline.state === PipelineState.DELETED) throw new PipelineUnavailableError(`pipeline ${pipeline.name} is deleted`);
  const prepared: PreparedJob = {
    requestId: req.requestId || null,
    requestHash: requestHashOf(req),
    pipelineId: pipeline.name.replace(/^pipelines\//, ""),
    pipelineVersion: pipeline.version,
    pipelineConfig: configJsonOf(pipeline),
    priority: job.priority || Priority.NORMAL,
    labels: job.labels,
    sourceKind: SourceKind.UNSPECIFIED,
    content: null,
    text: null,
    url: null,
    upload: null,
    mediaTypeHint: doc.mediaType,
    filename: doc.filename,
  };
  const limit = deps.maxDocumentBytes;
  switch (doc.source.case) {
    case "content":
      if (doc.source.value.byteLength > limit) throw new DocumentTooLargeError(doc.source.value.byteLength, limit);
      return { ...prepared, sourceKind: SourceKind.CONTENT, content: doc.source.value };
    case "text": {
      const size = Buffer.byteLength(doc.source.value);
      if (size > limit) throw new DocumentTooLargeError(size, limit);
      return { ...prepared, sourceKind: SourceKind.TEXT, text: doc.source.value };
    }
    case "url":
      checkUrl(doc.source.value, deps.allowLoopbackFetch);
      return { ...prepared, sourceKind: SourceKind.URL, url: doc.source.value };
    case "upload": {
      const id = doc.source.value.replace(/^uploads\//, "");
      const { rows } = await deps.db.query<{ size_bytes: string }>(
        "SELECT size_bytes FROM uploads WHERE tenant_id = $1 AND id::text = $2 AND expire_time > now()",
        [tenantId, id],
      );
      if (rows.length === 0) throw new UploadNotFoundError(doc.source.value);
      if (Number(rows[0].size_bytes) > limit) throw new DocumentTooLargeError(Number(rows[0].size_bytes), limit);
      return { ...prepared, sourceKind: SourceKind.UPLOAD, upload: id };
    }
    default:
      throw new Error("document without a source passed validation");
  }
}

/** Inline documents larger than this are written one job per statement, as plain parameters. */
const groupedContentLimit = 256 * 1024;

export interface InsertedJobs {
  /** The jobs in request order (an earlier job where a request_id was replayed). */
  rows: JobRow[];
  /** Per row: whether this call created it (false: a replayed request_id's earlier job). */
  created: boolean[];
  /** Outbox rows of the new jobs (job_created events and first stage tasks), to publish now. */
  outbox: OutboxMessage[];
}

/**
 * Inserts prepared jobs, each QUEUED with its JOB_CREATED event and first stage task, all in one
 * statement. A request_id used before returns that job when the request is the same and throws
 * ALREADY_EXISTS when not; `db` must then be a transaction, so that nothing of the group stays.
 * The outbox rows are due for the relay `graceSeconds` from now (0: at once).
 */
export async function insertJobs(db: Queryable, topology: Topology, tenantId: string, prepared: PreparedJob[], graceSeconds: number): Promise<InsertedJobs> {
  const span = trace.getSpan(context.active());
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  const traceId = span?.spanContext().traceId ?? "";
  const built = prepared.map((p) => {
    const id = randomUUID();
    const header = { pipelineId: p.pipelineId, pipelineVersion: p.pipelineVersion, labels: p.labels, traceId, priority: p.priority };
    const config = { pipeline_config: p.pipelineConfig, tenant_id: tenantId, pipeline_id: p.pipelineId, pipeline_version: p.pipelineVersion };
    // Inserted as version 1 with event 1 (job_created): the first task expects exactly that.
    const rows = changeRows(topology, { tenantId, jobId: id, header, stageAt: (i) => stageAt(config, i) }, JobState.QUEUED, 1n, 1n,
      [{ type: JobEventType.JOB_CREATED }], carrier, { stageIndex: 0, attempt: 1 });
    return { id, p, rows };
  });
  // job_created (job_events and outbox) and the first stage task are written only for the jobs inserted here.
  const writes = { events: built.flatMap((b) => b.rows.events), outbox: built.flatMap((b) => b.rows.outbox.map((o) => ({ ...o, key: b.id }))) };
  const rows = await writeJobChanges<JobRow>(db, writes, {
    name: "jobs-insert-many",
    gate: { from: "ins", key: "ins.id" },
    graceSeconds,
    with: `t AS (
       SELECT * FROM unnest($2::uuid[], $3::text[], $4::int[], $5::jsonb[], $6::smallint[], $7::jsonb[], $8::smallint[], $9::bytea[],
         $10::text[], $11::text[], $12::uuid[], $13::text[], $14::text[], $15::uuid[], $16::text[])
         AS t(id, pipeline_id, pipeline_version, pipeline_config, priority, labels, source_kind, source_content,
           source_text, source_url, source_upload, media_type_hint, filename, request_id, request_hash)
     ), ins AS (
       INSERT INTO jobs (tenant_id, id, pipeline_id, pipeline_version, pipeline_config, priority, state, labels, source_kind,
         source_content, source_text, source_url, source_upload, media_type_hint, filename, request_id, request_hash,
         trace_id, traceparent, event_seq, version)
       SELECT $1, id, pipeline_id, pipeline_version, pipeline_config, priority, $17::smallint, labels, source_kind,
         source_content, source_text, source_url, source_upload, media_type_hint, filename, request_id, request_hash,
         $18, $19, 1, 1
       FROM t
       ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
       RETURNING ${jobColumnList}
     )`,
    select: "SELECT * FROM ins",
    values: [
      tenantId,
      built.map((b) => b.id),
      built.map((b) => b.p.pipelineId),
      built.map((b) => b.p.pipelineVersion),
      built.map((b) => JSON.stringify(b.p.pipelineConfig)),
      built.map((b) => b.p.priority),
      built.map((b) => JSON.stringify(b.p.labels)),
      built.map((b) => b.p.sourceKind),
      built.map((b) => (b.p.content ? Buffer.from(b.p.content) : null)),
      built.map((b) => b.p.text),
      built.map((b) => b.p.url),
      built.map((b) => b.p.upload),
      built.map((b) => b.p.mediaTypeHint),
      built.map((b) => b.p.filename),
      built.map((b) => b.p.requestId),
      built.map((b) => b.p.requestHash),
      JobState.QUEUED,
      traceId,
      carrier.traceparent ?? "",
    ],
  });
  const inserted = new Map(rows.map((r) => [r.id, r]));
  const out: InsertedJobs = { rows: [], created: [], outbox: [] };
  for (const b of built) {
    const row = inserted.get(b.id);
    out.created.push(row !== undefined);
    if (row) {
      out.rows.push(row);
      out.outbox.push(...b.rows.outbox);
      continue;
    }
    // Not inserted: its request_id was used before (or earlier in this group).
    const earlier = await findByRequestId(db, tenantId, b.p);
    if (!earlier) throw new Error(`job ${b.id} was neither inserted nor found by its request_id`);
    out.rows.push(earlier);
  }
  return out;
}

/** Whether a group of prepared jobs can be written by insertJobs in one statement. */
export const insertableAtOnce = (prepared: PreparedJob[]) =>
  prepared.every((p) => (p.content?.byteLength ?? 0) <= groupedContentLimit && (p.text?.length ?? 0) <= groupedContentLimit);

/**
 * Inserts one prepared job with large inline content, as plain parameters (insertJobs passes
 * arrays, which Postgres receives as text). Same contract as insertJobs for one job.
 */
export async function insertLargeJob(tx: Queryable, topology: Topology, tenantId: string, p: PreparedJob): Promise<{ row: JobRow; created: boolean }> {
  const span = trace.getSpan(context.active());
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  const { rows } = await tx.query<JobRow>(
    `INSERT INTO jobs (tenant_id, pipeline_id, pipeline_version, pipeline_config, priority, state, labels, source_kind,
       source_content, source_text, source_url, source_upload, media_type_hint, filename, request_id, request_hash,
       trace_id, traceparent)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
     ON CONFLICT (tenant_id, request_id) WHERE request_id IS NOT NULL DO NOTHING
     RETURNING ${jobColumnList}`,
    [
      tenantId, p.pipelineId, p.pipelineVersion, JSON.stringify(p.pipelineConfig), p.priority, JobState.QUEUED, p.labels, p.sourceKind,
      p.content ? Buffer.from(p.content) : null, p.text, p.url, p.upload, p.mediaTypeHint, p.filename, p.requestId, p.requestHash,
      span?.spanContext().traceId ?? "", carrier.traceparent ?? "",
    ],
  );
  if (rows.length === 0) {
    const earlier = await findByRequestId(tx, tenantId, p);
    if (!earlier) throw new Error("a job was neither inserted nor found by its request_id");
    return { row: earlier, created: false };
  }
  return { row: await applyChange(tx, topology, rows[0], {}, [{ type: JobEventType.JOB_CREATED }], { stageIndex: 0, attempt: 1 }), created: true };
}

/** The existing job of a request_id, when the same request was made before. */
export async function findByRequestId(db: Queryable, tenantId: string, p: PreparedJob): Promise<JobRow | undefined> {
  if (!p.requestId) return undefined;
  const { rows } = await db.query<JobRow>(`SELECT ${jobColumnList} FROM jobs WHERE tenant_id = $1 AND request_id = $2`, [tenantId, p.requestId]);
  const row = rows[0];
  if (row && row.request_hash !== p.requestHash) throw new JobRequestIdReusedError(p.requestId, jobNameOf(row.id));
  return row;
}
