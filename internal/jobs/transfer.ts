/**
 * The streaming transfers of JobService: UploadDocument (client stream into the uploads object
 * store bucket) and DownloadJobResult (server stream of result chunks, inline or large alike).
 */
import { create, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { ObjectInfo, ObjectStore } from "@nats-io/obj";
import { createHash, randomUUID } from "node:crypto";
import { JobResultSchema, ResultFormat, type Upload, type UploadDocumentRequest, UploadSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import { inTransaction, type Pool } from "../db/index.ts";
import { DocumentTooLargeError, StorageQuotaExceededError, InvalidJobRequestError, OffsetOutOfRangeError, ResultNotFoundError } from "./errors.ts";
import type { JobDomain } from "./jobs.ts";
import { ResultTextExtractor } from "./result-text.ts";
import { checkStorageQuota, reserveStorage } from "./storage-quota.ts";

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
 * read from the bucket chunk by chunk); as text, its text (a large result's read out of that
 * JSON as it streams, see result-text.ts).
 */
export async function* downloadResult(
  deps: { jobs: Pick<JobDomain, "getResult">; results: ResultObjects },
  tenantId: string,
  name: string,
  format: ResultFormat,
  offset: bigint,
): AsyncGenerator<DownloadChunk> {
  const result = await deps.jobs.getResult(tenantId, name);
  if (result.object) {
    const { key } = result.object;
    yield* format === ResultFormat.TEXT ? objectTextChunks(deps.results, key, name, offset) : objectChunks(deps.results, key, name, offset);
    return;
  }
  // Inline: at most 1 MiB, already in memory.
  const text = format === ResultFormat.TEXT;
  const bytes = new TextEncoder().encode(text ? result.text : toJsonString(JobResultSchema, result));
  const total = BigInt(bytes.byteLength);
  if (offset > total) throw new OffsetOutOfRangeError(offset, total);
  yield* downloadMessages([bytes.subarray(Number(offset))], offset, total, text ? textMediaType : jsonMediaType);
}

const jsonMediaType = "application/json";
const textMediaType = "text/plain; charset=utf-8";

/**
 * `pieces` (the bytes from `offset` on) as download messages of up to downloadChunkBytes,
 * holding no more than one message in memory: large results reach tens of MiB.
 */
async function* downloadMessages(pieces: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, offset: bigint, total: bigint, mediaType: string): AsyncGenerator<DownloadChunk> {
  let at = offset;
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  // At least one message, so that a download from the very end still learns total_size.
  let first = true;
  const message = (): DownloadChunk => {
    const chunk = pending.length === 1 ? pending[0] : Buffer.concat(pending, pendingBytes);
    const out = { chunk, offset: at, totalSize: total, mediaType: first ? mediaType : "" };
    at += BigInt(pendingBytes);
    pending = [];
    pendingBytes = 0;
    first = false;
    return out;
  };
  for await (let part of pieces) {
    while (part.byteLength > 0) {
      const take = Math.min(part.byteLength, downloadChunkBytes - pendingBytes);
      pending.push(part.subarray(0, take));
      pendingBytes += take;
      part = part.subarray(take);
      if (pendingBytes === downloadChunkBytes) yield message();
    }
  }
  if (pendingBytes > 0 || first) yield message();
}

/** Drops the first `skip` bytes of `pieces`. */
async function* skipBytes(pieces: AsyncIterable<Uint8Array>, skip: number): AsyncGenerator<Uint8Array> {
  for await (let part of pieces) {
    if (skip > 0) {
      const dropped = Math.min(skip, part.byteLength);
      part = part.subarray(dropped);
      skip -= dropped;
    }
    if (part.byteLength > 0) yield part;
  }
}

/** What a download of a large result reads: its bucket, and the client to pull the bucket's chunks with. */
export interface ResultObjects {
  bucket: ObjectStore;
  js: JetStreamClient;
}

/** Chunks pulled at a time: the most of an object a download holds besides the message it sends. */
const chunksPerPull = 4;

/**
 * A large result's object, chunk by chunk, pulled as the download goes. ObjectStore.get pushes
 * every chunk into its stream as fast as NATS delivers them, so a slow client would make it hold
 * the whole object; an ordered pull consumer on the object's chunk subject fetches the next few
 * only when the download has sent the ones before. The SHA-256 is checked as get checks it.
 */
async function* objectBytes(objects: ResultObjects, info: ObjectInfo): AsyncGenerator<Uint8Array> {
  const sha = createHash("sha256");
  if (info.chunks > 0) {
    const consumer = await objects.js.consumers.get(`OBJ_${info.bucket}`, { filter_subjects: `$O.${info.bucket}.C.${info.nuid}` });
    for (let received = 0; received < info.chunks;) {
      const batch = await consumer.fetch({ max_messages: Math.min(chunksPerPull, info.chunks - received), expires: 10_000 });
      let got = 0;
      for await (const m of batch) {
        got++;
        received++;
        sha.update(m.data);
        yield m.data;
      }
      if (got === 0) throw new Error(`object ${info.name}: chunks stopped arriving after ${received} of ${info.chunks}`);
    }
  }
  const expected = Buffer.from(info.digest.replace(/^SHA-256=/i, ""), "base64url");
  if (!expected.equals(sha.digest())) throw new Error(`object ${info.name} is corrupt: its SHA-256 differs from its digest`);
}

async function infoOf(bucket: ObjectStore, key: string, name: string): Promise<ObjectInfo> {
  const info = await bucket.info(key);
  if (!info || info.deleted) throw new ResultNotFoundError(name);
  return info;
}

/** A large result's object from `offset`, as stored (its JobResult JSON). */
async function* objectChunks(objects: ResultObjects, key: string, name: string, offset: bigint): AsyncGenerator<DownloadChunk> {
  const info = await infoOf(objects.bucket, key, name);
  const total = BigInt(info.size);
  if (offset > total) throw new OffsetOutOfRangeError(offset, total);
  yield* downloadMessages(skipBytes(objectBytes(objects, info), Number(offset)), offset, total, jsonMediaType);
}

/** The text's UTF-8 bytes, read out of a large result's JSON object as it streams. */
async function* objectText(objects: ResultObjects, info: ObjectInfo): AsyncGenerator<Uint8Array> {
  const extractor = new ResultTextExtractor();
  for await (const chunk of objectBytes(objects, info)) {
    yield* extractor.push(chunk);
    if (extractor.done) return;
  }
}

/**
 * A large result's text from `offset`. Two reads of the object, neither holding more than a
 * chunk: the first counts the text's bytes (total_size comes in the first message), the second
 * sends them.
 */
async function* objectTextChunks(objects: ResultObjects, key: string, name: string, offset: bigint): AsyncGenerator<DownloadChunk> {
  const info = await infoOf(objects.bucket, key, name);
  let total = 0n;
  for await (const piece of objectText(objects, info)) total += BigInt(piece.byteLength);
  if (offset > total) throw new OffsetOutOfRangeError(offset, total);
  yield* downloadMessages(skipBytes(objectText(objects, info), Number(offset)), offset, total, textMediaType);
}

export async function uploadDocument(
  deps: { db: Pool; uploads: ObjectStore; maxDocumentBytes: number; storageQuotaBytes: number },
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
  // Over the tenant's storage quota: refused on the declared size before a byte is stored, else
  // as soon as the bytes received pass what is left; checked again, locked, when the row is written.
  const { used, quota } = await checkStorageQuota(deps.db, tenantId, deps.storageQuotaBytes, Number(meta.sizeBytes));
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
        if (used + size > quota) throw new StorageQuotaExceededError(quota, used, size);
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
  let rows: { create_time: Date }[];
  try {
    ({ rows } = await inTransaction(deps.db, async (tx) => {
      // Concurrent uploads each passed the check above: the one that commits second sees the first.
      await reserveStorage(tx, tenantId, deps.storageQuotaBytes, size);
      return tx.query<{ create_time: Date }>(
        `INSERT INTO uploads (tenant_id, id, filename, media_type, size_bytes, sha256, expire_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING create_time`,
        [tenantId, id, meta.filename, meta.mediaType, size, sha256, expireTime],
      );
    }));
  } catch (error) {
    await deps.uploads.delete(id).catch(() => {});
    throw error;
  }
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
