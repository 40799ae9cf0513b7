/**
 * The streaming transfers of JobService: UploadDocument (client stream into the uploads object
 * store bucket) and DownloadJobResult (server stream of result chunks, inline or large alike).
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ObjectStore } from "@nats-io/obj";
import { createHash, randomUUID } from "node:crypto";
import { ResultFormat, type Upload, type UploadDocumentRequest, UploadSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import type { Pool } from "../db/index.ts";
import type { JobResultDocument } from "../stages/index.ts";
import { DocumentTooLargeError, InvalidJobRequestError, OffsetOutOfRangeError } from "./errors.ts";
import type { JobDomain } from "./jobs.ts";

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

export async function* downloadResult(jobs: JobDomain, tenantId: string, name: string, format: ResultFormat, offset: bigint): AsyncGenerator<DownloadChunk> {
  const { bytes: json } = await jobs.resultBytes(tenantId, name, true);
  let bytes = json!;
  let mediaType = "application/json";
  if (format === ResultFormat.TEXT) {
    const doc = JSON.parse(Buffer.from(bytes).toString("utf8")) as JobResultDocument;
    bytes = new TextEncoder().encode(doc.text ?? "");
    mediaType = "text/plain; charset=utf-8";
  }
  const total = BigInt(bytes.byteLength);
  if (offset > total) throw new OffsetOutOfRangeError(`offset ${offset} is past the end of the result (${total} bytes)`);
  let first = true;
  for (let at = Number(offset); at < bytes.byteLength || first; at += downloadChunkBytes) {
    const chunk = bytes.subarray(at, Math.min(bytes.byteLength, at + downloadChunkBytes));
    yield { chunk, offset: BigInt(at), totalSize: total, mediaType: first ? mediaType : "" };
    first = false;
  }
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
