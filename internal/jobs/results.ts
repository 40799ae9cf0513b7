/**
 * Job results: the result document the output stage built, stored inline in Postgres up to
 * 1 MiB or, beyond, as its JobResult JSON in the results object store bucket; and its protobuf
 * form for GetJobResult and DownloadJobResult.
 */
import { create, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type JobResult, JobResultSchema, PiiType, ResultObjectSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import type { Queryable } from "../db/index.ts";
import type { JobResultDocument, PiiKind } from "../stages/index.ts";
import { bcp47Tag } from "../stages/language.ts";
import { jobNameOf } from "./store.ts";

/** What GetJobResult can answer without the text and structure. */
export type ResultSummary = Omit<JobResultDocument, "text" | "structure"> & { piiRedacted: boolean };

export interface ResultRow {
  media_type: string;
  summary: ResultSummary;
  inline_json: Buffer | null;
  object_key: string | null;
  size_bytes: string;
  sha256: string;
  create_time: Date;
  expire_time: Date;
}

/** The resource name of a job's result, "jobs/{id}/result". */
export const resultNameOf = (jobId: string) => `${jobNameOf(jobId)}/result`;

/** The object key of a job's large result in the results bucket. */
export const resultObjectKey = (tenantId: string, jobId: string) => `${tenantId}/${jobId}.json`;

const uuid = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
const resultKeyPattern = new RegExp(`^(${uuid})/(${uuid})\\.json$`);

/** The tenant and job a results-bucket key belongs to (resultObjectKey's inverse), if it is one. */
export function resultObjectOwner(key: string): { tenantId: string; jobId: string } | undefined {
  const m = resultKeyPattern.exec(key);
  return m ? { tenantId: m[1], jobId: m[2] } : undefined;
}

/** A result as the output stage made it: the document inline, or the key of its object. */
export interface ResultInsert {
  summary: ResultSummary;
  inlineJson?: Uint8Array;
  objectKey?: string;
  /** Size and SHA-256 of the bytes stored: the inline document, or the object. */
  size: number;
  sha256: string;
  expireTime: Date;
}

export async function insertResult(tx: Queryable, tenantId: string, jobId: string, r: ResultInsert): Promise<void> {
  await tx.query(
    `INSERT INTO job_results (tenant_id, job_id, media_type, summary, inline_json, object_key, size_bytes, sha256, expire_time)
     VALUES ($1, $2, 'application/json', $3, $4, $5, $6, $7, $8)
     ON CONFLICT (tenant_id, job_id) DO UPDATE SET summary = EXCLUDED.summary, inline_json = EXCLUDED.inline_json,
       object_key = EXCLUDED.object_key, size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256,
       expire_time = EXCLUDED.expire_time, create_time = date_trunc('milliseconds', now())`,
    [tenantId, jobId, JSON.stringify(r.summary), r.inlineJson ? Buffer.from(r.inlineJson) : null, r.objectKey ?? null, r.size, r.sha256, r.expireTime],
  );
}

export async function selectResult(db: Queryable, tenantId: string, jobId: string): Promise<ResultRow | undefined> {
  const { rows } = await db.query<ResultRow>(
    `SELECT media_type, summary, inline_json, object_key, size_bytes, sha256, create_time, expire_time
     FROM job_results WHERE tenant_id = $1 AND job_id = $2 AND expire_time > now()`,
    [tenantId, jobId],
  );
  return rows[0];
}

const piiTypes: Record<PiiKind, PiiType> = { email: PiiType.EMAIL, phone: PiiType.PHONE, card: PiiType.CARD_NUMBER, iban: PiiType.IBAN };

/**
 * The JobResult a result document makes, without what belongs to its row (object reference,
 * create and expire times): whole when `doc` is given, else what the summary holds.
 */
export function jobResultOf(name: string, s: ResultSummary, doc?: JobResultDocument): JobResult {
  return create(JobResultSchema, {
    name,
    text: doc?.text ?? "",
    structure: doc
      ? {
          headings: doc.structure.headings,
          tables: doc.structure.tables.map((t) => ({ rows: t.rows.map((cells) => ({ cells })) })),
          links: doc.structure.links.map((l) => ({ url: l.href, text: l.text })),
          pageCount: doc.pageCount ?? 0,
        }
      : undefined,
    mediaType: s.mediaType,
    encoding: s.encoding ?? "",
    language: s.language ? bcp47Tag(s.language) : "",
    sha256: s.sha256,
    counts: s.counts
      ? { characters: BigInt(s.counts.characters), words: BigInt(s.counts.words), sentences: BigInt(s.counts.sentences), paragraphs: BigInt(s.counts.paragraphs) }
      : undefined,
    keywords: (s.keywords ?? []).map((k) => ({ term: k.term, score: k.score })),
    summary: (s.summary ?? []).join(" "),
    piiFindings: (s.pii?.findings ?? []).map((f) => ({ type: piiTypes[f.kind], startOffset: BigInt(f.start), endOffset: BigInt(f.end), maskedValue: f.masked })),
    piiRedacted: s.piiRedacted,
    quality: s.quality ? { score: s.quality.score, reasons: s.quality.reasons.map((code) => ({ code })) } : undefined,
  });
}

/** The JobResult message: whole when `doc` is given, else metadata and the object reference. */
export function toJobResult(name: string, row: ResultRow, bucket: string, doc?: JobResultDocument): JobResult {
  const result = jobResultOf(name, row.summary, doc);
  if (row.object_key) {
    result.object = create(ResultObjectSchema, { bucket, key: row.object_key, sizeBytes: BigInt(row.size_bytes), sha256: row.sha256, mediaType: row.media_type });
  }
  result.createTime = timestampFromDate(row.create_time);
  result.expireTime = timestampFromDate(row.expire_time);
  return result;
}

/**
 * What the results bucket holds for a large result: the whole JobResult in its protobuf JSON
 * form, as DownloadJobResult streams it. The object reference and the times are left out: the
 * row has them, and they would make an object that names its own SHA-256, or one that differs
 * between two attempts writing the same key (see runOutput).
 */
export function resultObjectJson(name: string, summary: ResultSummary, doc: JobResultDocument): Uint8Array {
  return new TextEncoder().encode(toJsonString(JobResultSchema, jobResultOf(name, summary, doc)));
}
