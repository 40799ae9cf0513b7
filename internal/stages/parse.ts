/**
 * The parse stage: text and structure from a detected document, one parser per format.
 * Anything without a parser is a permanent unsupported_media_type.
 */
import { decodeText } from "./detect.ts";
import { PermanentStageError } from "./errors.ts";
import { resolveParseOptions, type ParseOptions, type StageContext } from "./options.ts";
import { parseCsv } from "./parse-csv.ts";
import { parseDocx } from "./parse-docx.ts";
import { parseHtml } from "./parse-html.ts";
import { parseJson } from "./parse-json.ts";
import { parseMarkdown } from "./parse-markdown.ts";
import { parsePdf } from "./parse-pdf.ts";
import { parseText } from "./parse-text.ts";
import type { ParsedDocument } from "./parsed-document.ts";

/** What parse needs: the bytes and detect's verdict (`{...ingest, ...detect}` fits). */
export interface ParseInput {
  bytes: Uint8Array;
  mediaType: string;
  encoding?: string;
}

/** The media type file-type gives a Word (OOXML) document. */
export const DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document";

type Parser = (input: ParseInput, options: Required<ParseOptions>, signal: AbortSignal) => ParsedDocument | Promise<ParsedDocument>;
const text = (input: ParseInput): string => decodeText(input.bytes, input.encoding);

const PARSERS: Record<string, Parser> = {
  "text/plain": (i) => parseText(text(i)),
  "text/markdown": (i) => parseMarkdown(text(i)),
  "text/html": (i) => parseHtml(text(i)),
  "text/csv": (i) => parseCsv(text(i)),
  "text/tab-separated-values": (i) => parseCsv(text(i), true),
  "application/json": (i) => parseJson(text(i)),
  "application/pdf": (i, o, signal) => parsePdf(i.bytes, o.maxPages, signal, o.maxInflatedBytes),
  [DOCX]: (i, o, signal) => parseDocx(i.bytes, signal, o.maxInflatedBytes),
};

/** Media types parse understands. */
export const SUPPORTED_MEDIA_TYPES: readonly string[] = Object.keys(PARSERS);

/**
 * Extracts text and structure. Throws PermanentStageError: media_type_not_allowed (not in
 * `allowedMediaTypes`), unsupported_media_type, corrupt_document, encrypted_document,
 * document_too_large (a DOCX or PDF that inflates past `maxInflatedBytes`).
 */
export async function parseStage(input: ParseInput, options: ParseOptions, ctx: StageContext): Promise<ParsedDocument> {
  const resolved = resolveParseOptions(options);
  const { allowedMediaTypes } = resolved;
  ctx.signal.throwIfAborted();
  const mediaType = input.mediaType.split(";")[0]!.trim().toLowerCase();
  if (allowedMediaTypes.length > 0 && !allowedMediaTypes.includes(mediaType)) {
    throw new PermanentStageError("media_type_not_allowed", `media type ${mediaType} is not allowed by this pipeline`);
  }
  const parser = PARSERS[mediaType];
  if (!parser) {
    throw new PermanentStageError("unsupported_media_type", `media type ${mediaType} is not supported`);
  }
  const parsed = await parser(input, resolved, ctx.signal);
  ctx.signal.throwIfAborted();
  return parsed;
}
