/**
 * The streaming transfers of JobService: UploadDocument (client stream into the uploads object
 * store bucket) and DownloadJobResult (server stream of result chunks, inline or large alike).
 */
import { create, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ObjectStore } from "@nats-io/obj";
import { createHash, randomUUID } from "node:crypto";
import { JobResultSchema, ResultFormat, type Upload, type UploadDocumentRequest, UploadSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import type { Pool } from "../db/index.ts";
import type { JobResultDocument } from "../stages/index.ts";
import { DocumentTooLargeError, InvalidJobRequestError, OffsetOutOfRangeError } from "./errors.ts";
import type { JobDomain } from "./jobs.ts";
import { resultObjectJson } from "./results.ts";

/** Largest chunk of a download message. */
export const downloadChunkBytes = 1024 * 1024;
/** How long an upload no job has named is kept. */
const uploadTtlMs = 24 * 3_600_000;

export interface DownloadChunk {
  chunk: Uint8Array;
  offset: bigint;
  totalSize: bigint;
  mediaType: string;
}

/**
 * Streams a result from `offset`: as JSON, the JobResult in its protobuf JSON form (inline, the
 * message GetJobResult returns; an object, the bytes stored, as they are); as text, its text.
 */
export async function* downloadResult(jobs: JobDomain, tenantId: string, name: string, format: ResultFormat, offset: bigint): AsyncGenerator<DownloadChunk> {
  const { bytes, mediaType } = await downloadable(jobs, tenantId, name, format);
  const total = BigInt(bytes.byteLength);
  if (offset > total) throw new OffsetOutOfRangeError(offset, total);
  // At least one message, so that a download from the very end still learns total_size.
  let first = true;
  for (let at = Number(offset); at < bytes.byteLength || first; at += downloadChunkBytes) {
    const chunk = bytes.subarray(at, Math.min(bytes.byteLength, at + downloadChunkBytes));
    yield { chunk, offset: BigInt(at), totalSize: total, mediaType: first ? mediaType : "" };
    first = false;
  }
}

async function downloadable(jobs: JobDomain, tenantId: string, name: string, format: ResultFormat): Promise<{ bytes: Uint8Array; mediaType: string }> {
  // Inline (at most 1 MiB), GetJobResult's message is the whole result; large, it has only the
  // object reference, and the object is the whole result, already in JobResult JSON.
  const result = await jobs.getResult(tenantId, name);
  const json = result.object ? await objectJson(jobs, tenantId, name) : undefined;
  if (format === ResultFormat.TEXT) {
    const text = json ? fromJsonString(JobResultSchema, utf8.decode(json)).text : result.text;
    return { bytes: new TextEncoder().encode(text), mediaType: "text/plain; charset=utf-8" };
  }
  return { bytes: json ?? new TextEncoder().encode(toJsonString(JobResultSchema, result)), mediaType: "application/json" };
}

const utf8 = new TextDecoder();
/** How the result document always begins; JobResult JSON begins with the name. */
const documentStart = new TextEncoder().encode('{"schemaVersion":');

/** A large result's object: JobResult JSON, converted when stored as the result document (before it was so). */
async function objectJson(jobs: JobDomain, tenantId: string, name: string): Promise<Uint8Array> {
  const { row, bytes } = await jobs.resultBytes(tenantId, name, true);
  if (!documentStart.every((b, i) => bytes![i] === b)) return bytes!;
  return resultObjectJson(name, row.summary, JSON.parse(utf8.decode(bytes)) as JobResultDocument);
}

export async function uploadDocument(
  deps: { db: Pool; uploads: ObjectStore; maxDocumentBytes: number },
  tenantId: string,
  messages: AsyncIterable<UploadDocumentRequest>,
): Promise<Upload> {
  const iterator = messages[Symbol.asyncIterator]();
  const head = await iterator.next();
  if (head.done || head.value.part.case !== "metadata") {
    throw new InvalidJobRequestError("the first message of an upload must carry its metadata", { violations: [{ field: "metadata", description: "required in the first message" }] });
  }
  const meta = head.value.part.value;
  // Declared too large: refused before a byte is read or stored.
  if (meta.sizeBytes > BigInt(deps.maxDocumentBytes)) throw new DocumentTooLargeError(Number(meta.sizeBytes), deps.maxDocumentBytes);
  const id = randomUUID();
  const hash = createHash("sha256");
  let size = 0;
  let failure: Error | undefined;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const next = await iterator.next();
        if (next.done) return controller.close();
        if (next.value.part.case !== "chunk") throw new InvalidJobRequestError("only the first message of an upload may carry metadata");
        const chunk = next.value.part.value;
        size += chunk.byteLength;
        if (size > deps.maxDocumentBytes) throw new DocumentTooLargeError(size, deps.maxDocumentBytes);
        hash.update(chunk);
        controller.enqueue(chunk);
      } catch (error) {
        failure = error as Error;
        controller.error(error);
      }
    },
  });
  try {
    await deps.uploads.put({ name: id }, body);
  } catch (error) {
    await deps.uploads.delete(id).catch(() => {});
    throw failure ?? error;
  }
  const sha256 = hash.digest("hex");
  const mismatch =
    meta.sizeBytes !== 0n && BigInt(size) !== meta.sizeBytes ? `received ${size} bytes, metadata said ${meta.sizeBytes}`
    : meta.sha256 && meta.sha256 !== sha256 ? "the SHA-256 of the bytes received differs from metadata.sha256"
    : size === 0 ? "the upload has no bytes"
    : undefined;
  if (mismatch) {
    await deps.uploads.delete(id).catch(() => {});
    throw new InvalidJobRequestError(`upload rejected: ${mismatch}`, { violations: [{ field: "metadata", description: mismatch }] });
  }
  const expireTime = new Date(Date.now() + uploadTtlMs);
  const { rows } = await deps.db.query<{ create_time: Date }>(
    `INSERT INTO uploads (tenant_id, id, filename, media_type, size_bytes, sha256, expire_time)
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING create_time`,
    [tenantId, id, meta.filename, meta.mediaType, size, sha256, expireTime],
  );
  return create(UploadSchema, {
    name: `uploads/${id}`,
    filename: meta.filename,
    mediaType: meta.mediaType,
    sizeBytes: BigInt(size),
    sha256,
    createTime: timestampFromDate(rows[0].create_time),
    expireTime: timestampFromDate(expireTime),
  });
}
