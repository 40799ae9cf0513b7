/**
 * Plain option types of the five stages, mirroring the proto messages in
 * `gen/jobmesh/v1/pipelines_pb.d.ts` (IngestOptions … OutputOptions). The worker maps a proto
 * message onto these; every field is optional and `resolveXOptions` fills the defaults.
 * Durations are milliseconds. Values outside the proto's validated range are a caller bug and
 * throw RangeError.
 */

/** What every stage receives from the worker besides its input and options. */
export interface StageContext {
  /** Aborted on cancellation or when the attempt's timeout expires. */
  signal: AbortSignal;
}

/** One mebibyte, the unit of the size limits. */
export const MIB = 1024 * 1024;

/** Options of the ingest stage (proto IngestOptions). */
export interface IngestOptions {
  /** Largest document accepted, in bytes (1..50 MiB). Default 50 MiB. */
  maxBytes?: number;
  /** Time limit for fetching a URL, redirects included (100 ms..5 min). Default 30 s. */
  fetchTimeoutMs?: number;
}

/** Options of the detect stage (proto DetectOptions). */
export interface DetectOptions {
  /** Skip language identification. Default false. */
  skipLanguage?: boolean;
}

/** Options of the parse stage (proto ParseOptions). */
export interface ParseOptions {
  /** Stop after this many pages of a paged format; 0 = no limit (at most 10000). Default 0. */
  maxPages?: number;
  /** Media types accepted; empty accepts every supported type. Default []. */
  allowedMediaTypes?: readonly string[];
  /**
   * Bytes the compressed parts of a document (DOCX zip entries, PDF Flate streams) may inflate
   * to in all; past it the stage fails with document_too_large (1 B..4 GiB). Default 256 MiB.
   */
  maxInflatedBytes?: number;
}

/** Default of ParseOptions.maxInflatedBytes: room for any real document, far from a zip bomb's gigabytes. */
export const DEFAULT_MAX_INFLATED_BYTES = 256 * MIB;

/** Options of the enrich stage (proto EnrichOptions, plus phoneRegion which the proto lacks). */
export interface EnrichOptions {
  /** Keywords to extract (0..50). Default 10. */
  keywordCount?: number;
  /** Sentences in the extractive summary (0..20). Default 3. */
  summarySentences?: number;
  /** Detect PII (emails, phone numbers, card numbers, IBANs). Default false, like the proto. */
  detectPii?: boolean;
  /** Replace detected PII in the text; implies detection. Default false. */
  redactPii?: boolean;
  /** ISO 3166 region for phone numbers written without a country code. Default "US". */
  phoneRegion?: string;
}

/** Options of the output stage (proto OutputOptions). */
export interface OutputOptions {
  /** Include the extracted (and, if enabled, redacted) text in the result. Default false. */
  includeText?: boolean;
  /** How long the result is kept (1 min..365 d); undefined = the service's default. */
  resultRetentionMs?: number;
}

function inRange(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${name} must be an integer in ${min}..${max}, got ${value}`);
  }
  return value;
}

/** Ingest options with defaults applied. */
export function resolveIngestOptions(o: IngestOptions = {}): Required<IngestOptions> {
  return {
    maxBytes: inRange("maxBytes", o.maxBytes ?? 50 * MIB, 1, 50 * MIB),
    fetchTimeoutMs: inRange("fetchTimeoutMs", o.fetchTimeoutMs ?? 30_000, 100, 300_000),
  };
}

/** Detect options with defaults applied. */
export function resolveDetectOptions(o: DetectOptions = {}): Required<DetectOptions> {
  return { skipLanguage: o.skipLanguage ?? false };
}

/** Parse options with defaults applied. */
export function resolveParseOptions(o: ParseOptions = {}): Required<ParseOptions> {
  return {
    maxPages: inRange("maxPages", o.maxPages ?? 0, 0, 10_000),
    allowedMediaTypes: o.allowedMediaTypes ?? [],
    maxInflatedBytes: inRange("maxInflatedBytes", o.maxInflatedBytes ?? DEFAULT_MAX_INFLATED_BYTES, 1, 4096 * MIB),
  };
}

/** Enrich options with defaults applied. */
export function resolveEnrichOptions(o: EnrichOptions = {}): Required<EnrichOptions> {
  return {
    keywordCount: inRange("keywordCount", o.keywordCount ?? 10, 0, 50),
    summarySentences: inRange("summarySentences", o.summarySentences ?? 3, 0, 20),
    detectPii: (o.detectPii ?? false) || (o.redactPii ?? false),
    redactPii: o.redactPii ?? false,
    phoneRegion: o.phoneRegion ?? "US",
  };
}

/** Output options with defaults applied; resultRetentionMs stays undefined when unset. */
export function resolveOutputOptions(o: OutputOptions = {}): OutputOptions & { includeText: boolean } {
  if (o.resultRetentionMs !== undefined) {
    inRange("resultRetentionMs", o.resultRetentionMs, 60_000, 365 * 24 * 3_600_000);
  }
  return { includeText: o.includeText ?? false, resultRetentionMs: o.resultRetentionMs };
}
