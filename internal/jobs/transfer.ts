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
import { DocumentTooLargeError, InvalidJobRequestError, OffsetOutOfRangeError, ResultNotFoundError } from "./errors.ts";
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

/**
 * Streams a result from `offset`: as JSON, the JobResult in its protobuf JSON form (inline, the
 * message GetJobResult returns; a large result, its object as stored, which is that JSON already,
 * read from the bucket chunk by chunk); as text, its text.
 */
export async function* downloadResult(
  deps: { jobs: JobDomain; results: ObjectStore },
  tenantId: string,
  name: string,
  format: ResultFormat,
  offset: bigint,
): AsyncGenerator<DownloadChunk> {
  const result = await deps.jobs.getResult(tenantId, name);
  if (result.object && format !== ResultFormat.TEXT) {
    yield* objectChunks(deps.results, result.object.key, name, offset);
    return;
  }
  let bytes: Uint8Array;
  let mediaType = "application/json";
  if (format === ResultFormat.TEXT) {
    const text = result.object ? fromJsonString(JobResultSchema, new TextDecoder().decode(await wholeObject(deps.results, result.object.key, name))).text : result.text;
    bytes = new TextEncoder().encode(text);
    mediaType = "text/plain; charset=utf-8";
  } else {
    bytes = new TextEncoder().encode(toJsonString(JobResultSchema, result));
  }
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

/**
 * A large result's object from `offset`, in messages of up to downloadChunkBytes, holding no
 * more than one message in memory: results reach tens of MiB.
 */
async function* objectChunks(bucket: ObjectStore, key: string, name: string, offset: bigint): AsyncGenerator<DownloadChunk> {
  const object = await bucket.get(key);
  if (!object) throw new ResultNotFoundError(name);
  const total = BigInt(object.info.size);
  const reader = object.data.getReader();
  try {
    if (offset > total) throw new OffsetOutOfRangeError(offset, total);
    let skip = Number(offset);
    let at = offset;
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    let first = true;
    const message = (): DownloadChunk => {
      const chunk = Buffer.concat(pending, pendingBytes);
      const out = { chunk, offset: at, totalSize: total, mediaType: first ? "application/json" : "" };
      at += BigInt(pendingBytes);
      pending = [];
      pendingBytes = 0;
      first = false;
      return out;
    };
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      let part = value;
      if (skip > 0) {
        const dropped = Math.min(skip, part.byteLength);
        part = part.subarray(dropped);
        skip -= dropped;
      }
      while (part.byteLength > 0) {
        const take = Math.min(part.byteLength, downloadChunkBytes - pendingBytes);
        pending.push(part.subarray(0, take));
        pendingBytes += take;
        part = part.subarray(take);
        if (pendingBytes === downloadChunkBytes) yield message();
      }
    }
    if (pendingBytes > 0 || first) yield message();
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/** A large result's object, whole (for its text). */
async function wholeObject(bucket: ObjectStore, key: string, name: string): Promise<Uint8Array> {
  const bytes = await bucket.getBlob(key);
  if (!bytes) throw new ResultNotFoundError(name);
  return bytes;
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
