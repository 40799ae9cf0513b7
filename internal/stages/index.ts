/**
 * The document stages — ingest → detect → parse → enrich → output — as plain async functions of
 * (input, options, ctx). They do no Postgres/NATS/Redis I/O and import nothing of Connect; they
 * throw PermanentStageError (fail the job) or TransientStageError (retry), or the AbortSignal's
 * reason when cancelled.
 */
export {
  findStageError, isStageError, PermanentStageError, StageError, TransientStageError, type StageErrorCode,
} from "./errors.ts";
export {
  DEFAULT_MAX_INFLATED_BYTES, resolveDetectOptions, resolveEnrichOptions, resolveIngestOptions, resolveOutputOptions, resolveParseOptions,
  type DetectOptions, type EnrichOptions, type IngestOptions, type OutputOptions, type ParseOptions, type StageContext,
} from "./options.ts";

export { ingestStage, type IngestContext, type IngestResult, type IngestSource } from "./ingest.ts";
export { isForbiddenAddress, type AddressPolicy } from "../netpolicy/index.ts";
export type { FetchPolicy } from "./fetch-url.ts";

export { detectStage, OCTET_STREAM, type DetectInput, type DetectResult } from "./detect.ts";

export { DOCX, parseStage, SUPPORTED_MEDIA_TYPES, type ParseInput } from "./parse.ts";
export type { Heading, Link, ParsedDocument, Table } from "./parsed-document.ts";

export { enrichStage, type EnrichInput, type EnrichResult, type PiiReport, type RedactedStructure } from "./enrich.ts";
export { findPii, isLuhnValid, isValidIban, redactPii, type PiiFinding, type PiiKind } from "./pii.ts";
export type { Keyword } from "./keywords.ts";
export type { QualityAssessment, QualityReason } from "./quality.ts";
export type { TextCounts } from "./text-units.ts";

export {
  INLINE_RESULT_LIMIT_BYTES, outputStage, type JobResultDocument, type OutputInput, type OutputResult,
} from "./output.ts";
