/**
 * Turning a CreateJobRequest into a queued job: pipeline snapshot, document checks (size limit,
 * literal private URLs, known upload), request_id idempotency. Everything is checked before
 * anything is written, so a batch is all or nothing.
 */
import { toBinary } from "@bufbuild/protobuf";
import { context, propagation, trace } from "@opentelemetry/api";
import { createHash } from "node:crypto";
import { isIP } from "node:net";
import { JobEventType, JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { type CreateJobRequest, DocumentSchema, Priority, SourceKind } from "../../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, PipelineState } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { toJson } from "@bufbuild/protobuf";
import type { Queryable } from "../db/index.ts";
import type { PipelineDomain } from "../pipelines/pipelines.ts";
import { isForbiddenAddress } from "../stages/index.ts";
import { DocumentTooLargeError, ForbiddenUrlError, JobRequestIdReusedError, PipelineUnavailableError, UploadNotFoundError } from "./errors.ts";
import { applyChange } from "./outbox.ts";
import { jobColumnList, jobNameOf, type JobRow } from "./store.ts";
import type { Topology } from "./topology.ts";

export const defaultPipelineName = "pipelines/document-default";

/** A checked request, ready to insert. */
export interface PreparedJob {
  requestId: string | null;
  requestHash: string;
  pipelineId: string;
  pipelineVersion: number;
  pipelineConfig: unknown;
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
  pipelines: PipelineDomain;
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
    pipelineConfig: toJson(PipelineConfigSchema, pipeline.config!),
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

/**
 * Inserts a prepared job with its JOB_CREATED event and first stage task. With a request_id
 * already used, returns that job when the request is the same and throws ALREADY_EXISTS when not.
 */
export async function insertJob(tx: Queryable, topology: Topology, tenantId: string, p: PreparedJob): Promise<JobRow> {
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
    const earlier = await tx.query<JobRow>(`SELECT ${jobColumnList} FROM jobs WHERE tenant_id = $1 AND request_id = $2`, [tenantId, p.requestId]);
    const row = earlier.rows[0];
    if (!row || row.request_hash !== p.requestHash) throw new JobRequestIdReusedError(p.requestId ?? "", row ? jobNameOf(row.id) : "another job");
    return row;
  }
  return applyChange(tx, topology, rows[0], {}, [{ type: JobEventType.JOB_CREATED }], { stageIndex: 0, attempt: 1 });
}

/** The existing job of a request_id, when the same request was made before. */
export async function findByRequestId(db: Queryable, tenantId: string, p: PreparedJob): Promise<JobRow | undefined> {
  if (!p.requestId) return undefined;
  const { rows } = await db.query<JobRow>(`SELECT ${jobColumnList} FROM jobs WHERE tenant_id = $1 AND request_id = $2`, [tenantId, p.requestId]);
  const row = rows[0];
  if (row && row.request_hash !== p.requestHash) throw new JobRequestIdReusedError(p.requestId, jobNameOf(row.id));
  return row;
}
