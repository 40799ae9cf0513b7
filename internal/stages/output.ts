/**
 * The output stage: assembles the job's result document from what the earlier stages produced
 * and serialises it once, so the caller can store it inline (≤ 1 MiB) or in object storage.
 * No storage I/O happens here.
 */
import type { DetectResult } from "./detect.ts";
import type { EnrichResult } from "./enrich.ts";
import type { IngestResult } from "./ingest.ts";
import { bcp47Tag } from "./language.ts";
import { MIB, resolveOutputOptions, type OutputOptions, type StageContext } from "./options.ts";
import type { ParsedDocument } from "./parsed-document.ts";

/** Results larger than this (serialised) belong in object storage, not in a Postgres row. */
export const INLINE_RESULT_LIMIT_BYTES = MIB;

/** What output needs from the stages before it; enrich is optional (a pipeline may skip it). */
export interface OutputInput {
  ingest: Pick<IngestResult, "size" | "sha256" | "filename" | "sourceKind">;
  /** Absent when the pipeline has no detect stage (e.g. [ingest, output]: store and fingerprint). */
  detect?: DetectResult;
  /** Absent when the pipeline has no parse stage: the result then has no text or structure. */
  parse?: ParsedDocument;
  enrich?: EnrichResult;
}

/** The job result a client downloads. Version 1 of its schema. */
export interface JobResultDocument {
  schemaVersion: 1;
  mediaType: string;
  encoding?: string;
  /** BCP 47 ("en"); results stored before this was so hold ISO 639-3 ("eng"). */
  language?: string;
  sha256: string;
  size: number;
  filename?: string;
  pageCount?: number;
  pagesParsed?: number;
  /** The extracted text (redacted if enrich redacted it); only when includeText. */
  text?: string;
  structure: Pick<ParsedDocument, "headings" | "tables" | "links">;
  counts?: EnrichResult["counts"];
  keywords?: EnrichResult["keywords"];
  summary?: string[];
  pii?: EnrichResult["pii"];
  quality?: EnrichResult["quality"];
}

/** The assembled result, its UTF-8 JSON and where it should be stored. */
export interface OutputResult {
  result: JobResultDocument;
  json: Uint8Array;
  /** Bytes of `json`. */
  jsonSize: number;
  /** False when jsonSize exceeds INLINE_RESULT_LIMIT_BYTES. */
  storeInline: boolean;
  /** From the options, for the caller's expiry; undefined = the service's default. */
  resultRetentionMs?: number;
}

/** Builds and serialises the result document. */
export async function outputStage(input: OutputInput, options: OutputOptions, ctx: StageContext): Promise<OutputResult> {
  const { includeText, resultRetentionMs } = resolveOutputOptions(options);
  ctx.signal.throwIfAborted();
  const { ingest, detect, parse, enrich } = input;
  // Enrich looked at the parsed text; detect only at a raw sample.
  const language = enrich?.language ?? detect?.language;
  const result: JobResultDocument = {
    schemaVersion: 1,
    mediaType: detect?.mediaType ?? "application/octet-stream",
    encoding: detect?.encoding,
    language: language && bcp47Tag(language),
    sha256: ingest.sha256,
    size: ingest.size,
    filename: ingest.filename,
    pageCount: parse?.pageCount,
    pagesParsed: parse?.pagesParsed,
    text: includeText && parse ? (enrich?.redactedText ?? parse.text) : undefined,
    structure: enrich?.redactedStructure ?? { headings: parse?.headings ?? [], tables: parse?.tables ?? [], links: parse?.links ?? [] },
    counts: enrich?.counts,
    keywords: enrich?.keywords,
    summary: enrich?.summary,
    pii: enrich?.pii,
    quality: enrich?.quality,
  };
  // JSON.stringify drops the undefined fields; the object should not carry them either.
  for (const key of Object.keys(result) as (keyof JobResultDocument)[]) {
    if (result[key] === undefined) delete result[key];
  }
  const json = new TextEncoder().encode(JSON.stringify(result));
  ctx.signal.throwIfAborted();
  const out: OutputResult = {
    result,
    json,
    jsonSize: json.byteLength,
    storeInline: json.byteLength <= INLINE_RESULT_LIMIT_BYTES,
  };
  if (resultRetentionMs !== undefined) out.resultRetentionMs = resultRetentionMs;
  return out;
}
