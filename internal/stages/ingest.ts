/**
 * The ingest stage: turns a job's source into bytes, with a size limit and a SHA-256 digest.
 * Storing the original is the caller's business; nothing here touches storage.
 */
import { createHash } from "node:crypto";
import { PermanentStageError } from "./errors.ts";
import { fetchUrl, tooLarge, type FetchPolicy } from "./fetch-url.ts";
import { resolveIngestOptions, type IngestOptions, type StageContext } from "./options.ts";

/** Where a document comes from. Uploaded objects are read by the caller (bytes-provider). */
export type IngestSource =
  | { kind: "inline"; bytes: Uint8Array; filename?: string; mediaTypeHint?: string }
  | { kind: "text"; text: string; filename?: string; mediaTypeHint?: string }
  | { kind: "url"; url: string }
  | { kind: "bytes-provider"; read(): Promise<Uint8Array>; filename?: string; mediaTypeHint?: string };

/** Context of the ingest stage: the signal plus the worker's fetch policy. */
export interface IngestContext extends StageContext {
  fetchPolicy?: FetchPolicy;
}

/** What ingest hands to detect. */
export interface IngestResult {
  bytes: Uint8Array;
  size: number;
  /** Lowercase hex SHA-256 of `bytes`. */
  sha256: string;
  filename?: string;
  /** Media type the source declared (Content-Type, upload metadata); only a hint for detect. */
  mediaTypeHint?: string;
  sourceKind: IngestSource["kind"];
  /** The URL the document finally came from, after redirects. */
  finalUrl?: string;
}

/**
 * Reads the source into memory. Throws PermanentStageError `document_too_large` past
 * `maxBytes` (a URL download is aborted as soon as it passes the limit), the fetch errors of
 * fetch-url.ts for URLs, or the signal's reason when cancelled.
 */
export async function ingestStage(
  source: IngestSource,
  options: IngestOptions,
  ctx: IngestContext,
): Promise<IngestResult> {
  const { maxBytes, fetchTimeoutMs } = resolveIngestOptions(options);
  ctx.signal.throwIfAborted();
  let bytes: Uint8Array;
  let meta: Pick<IngestResult, "filename" | "mediaTypeHint" | "finalUrl"> = {};
  switch (source.kind) {
    case "inline":
      bytes = source.bytes;
      meta = { filename: source.filename, mediaTypeHint: source.mediaTypeHint };
      break;
    case "text":
      if (typeof source.text !== "string") throw new PermanentStageError("invalid_source", "text source without text");
      // A UTF-8 encoding is never smaller than the string's length, so this bounds the work.
      if (source.text.length > maxBytes) throw tooLarge(maxBytes);
      bytes = new TextEncoder().encode(source.text);
      meta = { filename: source.filename, mediaTypeHint: source.mediaTypeHint };
      break;
    case "bytes-provider":
      bytes = await source.read();
      meta = { filename: source.filename, mediaTypeHint: source.mediaTypeHint };
      break;
    case "url": {
      const fetched = await fetchUrl(source.url, { maxBytes, timeoutMs: fetchTimeoutMs }, ctx.fetchPolicy ?? {}, ctx.signal);
      bytes = fetched.bytes;
      meta = { filename: fetched.filename, mediaTypeHint: fetched.mediaTypeHint, finalUrl: fetched.finalUrl };
      break;
    }
    default:
      throw new PermanentStageError("invalid_source", `unknown source kind ${(source as { kind: unknown }).kind}`);
  }
  ctx.signal.throwIfAborted();
  if (!(bytes instanceof Uint8Array)) throw new PermanentStageError("invalid_source", "the source gave no bytes");
  if (bytes.byteLength > maxBytes) throw tooLarge(maxBytes);
  return {
    bytes,
    size: bytes.byteLength,
    sha256: createHash("sha256").update(bytes).digest("hex"),
    ...withoutUndefined(meta),
    sourceKind: source.kind,
  };
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
